//! Image files to uint8 RGB, the way qwen-vl-utils' `to_rgb` sees them through Pillow.
//!
//! Pillow mode "RGBA" (PNG colour type 6, WebP or BMP with alpha) is pasted onto white with
//! the alpha as mask: `out = DIV255(255·(255−a) + c·a)` where `DIV255(x) = ((x+128)>>8 +
//! (x+128))>>8`. Every other mode goes through `convert("RGB")`, which drops alpha (grey+alpha
//! PNGs, palette PNGs with a tRNS chunk, GIF). 16-bit samples keep their high byte, as Pillow's
//! 16-bit PNG unpackers do.

use std::io::Cursor;
use std::path::Path;

use ::image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};

use super::Frames;
use crate::{Error, Result};

/// Guards against decompression bombs: a header may claim any size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest width × height accepted.
    pub max_pixels: u64,
    /// Largest total allocation the decoder may make, in bytes.
    pub max_alloc: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits {
            max_pixels: 1 << 28,
            max_alloc: 3 << 30,
        }
    }
}

/// Pillow's `DIV255` blend of an RGBA pixel onto white.
#[inline]
fn over_white(c: u8, a: u8) -> u8 {
    let x = 255 * (255 - a as u32) + c as u32 * a as u32 + 128;
    (((x >> 8) + x) >> 8) as u8
}

/// Reads an image file as one RGB frame.
pub fn read_rgb(path: &Path, limits: &ImageLimits) -> Result<Frames> {
    let bytes =
        std::fs::read(path).map_err(|e| Error::media(path, format!("cannot read image: {e}")))?;
    decode_rgb(&bytes, limits).map_err(|m| Error::media(path, m))
}

/// Decodes image bytes as one RGB frame (errors as messages; [`read_rgb`] adds the path).
pub fn decode_rgb(bytes: &[u8], limits: &ImageLimits) -> Result<Frames, String> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot read image: {e}"))?;
    let format = reader
        .format()
        .ok_or_else(|| "not a recognized image format (PNG, JPEG, WebP, BMP, GIF)".to_string())?;
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| format!("cannot decode {format:?} image: {e}"))?;
    let (w, h) = decoder.dimensions();
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
    let mut l = ::image::Limits::default();
    l.max_alloc = Some(limits.max_alloc);
    decoder
        .set_limits(l)
        .map_err(|e| format!("image exceeds decoder limits: {e}"))?;
    let img = DynamicImage::from_decoder(decoder)
        .map_err(|e| format!("cannot decode {format:?} image: {e}"))?;
    // Pillow opens these as "RGBA"; everything else with alpha is a mode whose alpha
    // convert("RGB") drops.
    let pil_rgba = match format {
        ImageFormat::Png => png_color_type(bytes) == Some(6),
        ImageFormat::WebP | ImageFormat::Bmp => img.color().has_alpha(),
        _ => false,
    };
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut data = Vec::with_capacity(w * h * 3);
    let hi = |v: u16| (v >> 8) as u8;
    match &img {
        DynamicImage::ImageLuma8(b) => b.pixels().for_each(|p| data.extend([p.0[0]; 3])),
        DynamicImage::ImageLumaA8(b) => b.pixels().for_each(|p| data.extend([p.0[0]; 3])),
        DynamicImage::ImageRgb8(b) => data.extend_from_slice(b.as_raw()),
        DynamicImage::ImageRgba8(b) => {
            for p in b.pixels() {
                let [r, g, bl, a] = p.0;
                if pil_rgba {
                    data.extend([over_white(r, a), over_white(g, a), over_white(bl, a)]);
                } else {
                    data.extend([r, g, bl]);
                }
            }
        }
        DynamicImage::ImageLuma16(b) => b.pixels().for_each(|p| data.extend([hi(p.0[0]); 3])),
        DynamicImage::ImageLumaA16(b) => b.pixels().for_each(|p| data.extend([hi(p.0[0]); 3])),
        DynamicImage::ImageRgb16(b) => b.pixels().for_each(|p| data.extend(p.0.map(hi))),
        DynamicImage::ImageRgba16(b) => {
            for p in b.pixels() {
                let [r, g, bl, a] = p.0.map(hi);
                if pil_rgba {
                    data.extend([over_white(r, a), over_white(g, a), over_white(bl, a)]);
                } else {
                    data.extend([r, g, bl]);
                }
            }
        }
        other => data.extend_from_slice(other.to_rgb8().as_raw()),
    }
    Ok(Frames { t: 1, h, w, data })
}

/// PNG colour type from the IHDR chunk (6 = RGBA).
fn png_color_type(bytes: &[u8]) -> Option<u8> {
    (bytes.len() > 25 && &bytes[12..16] == b"IHDR").then(|| bytes[25])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pillow_blend_on_white() {
        assert_eq!(over_white(0, 255), 0);
        assert_eq!(over_white(0, 0), 255);
        assert_eq!(over_white(10, 128), 132);
        assert_eq!(over_white(200, 1), 255);
    }

    #[test]
    fn rgba_png_is_composited_and_la_png_is_not() {
        let mut buf = Vec::new();
        let img = ::image::RgbaImage::from_raw(2, 1, vec![0, 0, 0, 128, 10, 20, 30, 255]).unwrap();
        img.write_to(&mut Cursor::new(&mut buf), ImageFormat::Png)
            .unwrap();
        let f = decode_rgb(&buf, &ImageLimits::default()).unwrap();
        assert_eq!(f.data, vec![127, 127, 127, 10, 20, 30]);

        let mut buf = Vec::new();
        let img = ::image::GrayAlphaImage::from_raw(1, 1, vec![40, 0]).unwrap();
        img.write_to(&mut Cursor::new(&mut buf), ImageFormat::Png)
            .unwrap();
        let f = decode_rgb(&buf, &ImageLimits::default()).unwrap();
        assert_eq!(f.data, vec![40, 40, 40]);
    }
}
