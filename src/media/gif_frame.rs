//! The first frame of a GIF as Pillow shows it.
//!
//! Pillow opens a GIF at frame 0 in mode "P" (or "L" when the palette is the identity grey
//! ramp) on a canvas of the logical screen size, widened to hold the frame if the frame
//! reaches past it. Pixels outside the frame's rectangle hold the frame's transparent index
//! when it has one, else index 0; inside, every decoded index is kept (transparent ones
//! too). `convert("RGB")` then looks each index up in the local palette, else the global
//! one; an index past the palette's end reads Pillow's default palette entry (i, i, i).

use std::io::Cursor;

use super::image::ImageLimits;
use super::Frames;

pub(crate) fn decode(bytes: &[u8], limits: &ImageLimits) -> Result<Frames, String> {
    let mut opts = ::gif::DecodeOptions::new();
    opts.set_color_output(::gif::ColorOutput::Indexed);
    opts.set_memory_limit(::gif::MemoryLimit::Bytes(
        std::num::NonZeroU64::new(limits.max_alloc.max(1)).unwrap(),
    ));
    let mut dec = opts
        .read_info(Cursor::new(bytes))
        .map_err(|e| format!("cannot decode GIF: {e}"))?;
    let (sw, sh) = (dec.width() as usize, dec.height() as usize);
    let global = dec.global_palette().map(<[u8]>::to_vec);
    let frame = dec
        .read_next_frame()
        .map_err(|e| format!("cannot decode GIF: {e}"))?
        .ok_or("GIF has no image (image not found in GIF frame)")?;
    let (x0, y0) = (frame.left as usize, frame.top as usize);
    let (fw, fh) = (frame.width as usize, frame.height as usize);
    let (w, h) = (sw.max(x0 + fw), sh.max(y0 + fh));
    if w == 0 || h == 0 {
        return Err(format!("image has a zero side ({w}x{h})"));
    }
    if w as u64 * h as u64 > limits.max_pixels {
        return Err(format!(
            "image claims {w}x{h} = {} pixels, over the limit of {} (possible decompression bomb)",
            w as u64 * h as u64,
            limits.max_pixels
        ));
    }
    let fill = frame.transparent.unwrap_or(0);
    let mut idx = vec![fill; w * h];
    if frame.buffer.len() < fw * fh {
        return Err("cannot decode GIF: frame data is shorter than the frame".into());
    }
    for y in 0..fh {
        let row = &frame.buffer[y * fw..(y + 1) * fw];
        idx[(y0 + y) * w + x0..(y0 + y) * w + x0 + fw].copy_from_slice(row);
    }
    let pal: &[u8] = frame
        .palette
        .as_deref()
        .or(global.as_deref())
        .unwrap_or(&[]);
    let mut data = super::image::rgb_buffer(w, h)?;
    for &i in &idx {
        let i = i as usize;
        match pal.get(i * 3..i * 3 + 3) {
            Some(c) => data.extend_from_slice(c),
            None => data.extend([i as u8; 3]),
        }
    }
    Ok(Frames { t: 1, h, w, data })
}
