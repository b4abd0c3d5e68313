//! Image files to uint8 RGB, the way qwen-vl-utils' `fetch_image` sees them through Pillow:
//! `Image.open(path)` then `to_rgb`, which pastes mode "RGBA" onto white with the alpha as
//! mask (`out = DIV255(255·(255−a) + c·a)`, `DIV255(x) = ((x+128)>>8 + (x+128))>>8`) and
//! sends every other mode through `convert("RGB")`. Every golden in tests/fixtures/images
//! decodes to Pillow's exact bytes.
//!
//! Per format, what Pillow does and reel reproduces:
//! - JPEG: libjpeg-turbo with Pillow's settings, CMYK/YCCK inverted then `cmyk2rgb` (see
//!   [`super::jpeg`]).
//! - PNG: L, LA (alpha dropped), P with or without tRNS (palette colours, alpha dropped), 1-bit
//!   (0/255), 2/4-bit grey (scaled), RGB with tRNS (alpha dropped), "I;16" (16-bit grey:
//!   values over 255 clip to 255, Pillow's `I16_RGB`), 16-bit RGB (high byte), RGBA and
//!   16-bit RGBA / grey+alpha (Pillow opens both as "RGBA": high bytes, composited). APNG: the
//!   default image, as Pillow's frame 0.
//! - GIF: frame 0 on the logical screen (see [`super::gif_frame`]).
//! - WebP: RGBA (alpha or animated; first frame) composited, else RGB. BMP: as the file says;
//!   32-bit BI_RGB is RGB (the fourth byte ignored).
//!
//! EXIF orientation is not applied: qwen-vl-utils never calls `exif_transpose`, so the model
//! sees the stored pixel grid, not the upright picture.

use std::io::Cursor;
use std::path::Path;

use ::image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};

use super::jpeg::JpegDecoder;
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

/// Largest image file read (a compressed image this large is far past the pixel limit).
pub const MAX_IMAGE_FILE: u64 = 1 << 30;

/// Reads an image file as one RGB frame.
pub fn read_rgb(path: &Path, limits: &ImageLimits) -> Result<Frames> {
    let bytes =
        crate::fence::read_bounded(path, MAX_IMAGE_FILE, "an image file").map_err(|e| match e {
            Error::File { path, msg } => Error::Media { path, msg },
            Error::Io { path, source } => {
                Error::media(path, format!("cannot read image: {source}"))
            }
            other => other,
        })?;
    let jpeg = JpegDecoder::from_env().map_err(|m| Error::media(path, m))?;
    decode_rgb_with(&bytes, limits, jpeg).map_err(|m| Error::media(path, m))
}

/// Decodes image bytes as one RGB frame (errors as messages; [`read_rgb`] adds the path).
/// JPEG goes through the decoder `REEL_JPEG` picks (see [`super::jpeg`]).
pub fn decode_rgb(bytes: &[u8], limits: &ImageLimits) -> Result<Frames, String> {
    decode_rgb_with(bytes, limits, JpegDecoder::from_env()?)
}

/// An RGB buffer for `w`×`h` pixels, or an error naming the size.
pub(crate) fn rgb_buffer(w: usize, h: usize) -> Result<Vec<u8>, String> {
    let n = w
        .checked_mul(h)
        .and_then(|p| p.checked_mul(3))
        .ok_or_else(|| format!("a {w}x{h} RGB image does not fit in memory"))?;
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| format!("cannot allocate {n} bytes for a {w}x{h} RGB image"))?;
    Ok(v)
}

/// Formats Pillow opens but reel does not, by their leading bytes, for a clear error.
const UNSUPPORTED: &[(&[u8], &str)] = &[
    (b"II*\0", "TIFF"),
    (b"MM\0*", "TIFF"),
    (b"\0\0\x01\0", "ICO"),
    (b"\0\0\x02\0", "CUR"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"DDS ", "DDS"),
    (b"icns", "ICNS"),
    (b"qoif", "QOI"),
    (b"P1", "PBM/PGM/PPM"),
    (b"P2", "PBM/PGM/PPM"),
    (b"P3", "PBM/PGM/PPM"),
    (b"P4", "PBM/PGM/PPM"),
    (b"P5", "PBM/PGM/PPM"),
    (b"P6", "PBM/PGM/PPM"),
    (b"%!PS", "EPS"),
];

/// As [`decode_rgb`], with the JPEG decoder given. The decoders run behind
/// [`crate::fence::guard`]: a panic inside one is an error.
pub fn decode_rgb_with(
    bytes: &[u8],
    limits: &ImageLimits,
    jpeg: JpegDecoder,
) -> Result<Frames, String> {
    crate::fence::guard(|| decode_unfenced(bytes, limits, jpeg))
        .map_err(|p| format!("the image decoder panicked: {p}"))?
}

fn decode_unfenced(
    bytes: &[u8],
    limits: &ImageLimits,
    jpeg: JpegDecoder,
) -> Result<Frames, String> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return super::jpeg::decode(bytes, limits, jpeg);
    }
    if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        return super::gif_frame::decode(bytes, limits);
    }
    if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
        return Err("HEIF/AVIF images are not supported (PNG, JPEG, WebP, BMP, GIF are)".into());
    }
    if let Some((_, name)) = UNSUPPORTED.iter().find(|(m, _)| bytes.starts_with(m)) {
        return Err(format!(
            "{name} images are not supported (PNG, JPEG, WebP, BMP, GIF are)"
        ));
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot read image: {e}"))?;
    let format = match reader.format() {
        Some(f @ (ImageFormat::Png | ImageFormat::WebP | ImageFormat::Bmp)) => f,
        Some(f) => {
            return Err(format!(
                "{f:?} images are not supported (PNG, JPEG, WebP, BMP, GIF are)"
            ))
        }
        None => return Err("not a recognized image format (PNG, JPEG, WebP, BMP, GIF)".to_string()),
    };
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
    // Pillow opens these as "RGBA" (composited on white by to_rgb); everything else with
    // alpha is a mode whose alpha convert("RGB") drops.
    let pil_rgba = match format {
        // Colour type 6, and 16-bit grey+alpha (Pillow's rawmode "LA;16B" fills an RGBA image).
        ImageFormat::Png => matches!(png_ihdr(bytes), Some((6, _)) | Some((4, 16))),
        ImageFormat::WebP | ImageFormat::Bmp => img.color().has_alpha(),
        _ => false,
    };
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut data = rgb_buffer(w, h)?;
    let hi = |v: u16| (v >> 8) as u8;
    // Pillow's "I;16" → "RGB" (I16_RGB) clips at 255 instead of taking the high byte.
    let clip16 = |v: u16| if v >> 8 == 0 { v as u8 } else { 255 };
    let push_rgba = |data: &mut Vec<u8>, [r, g, b, a]: [u8; 4]| {
        if pil_rgba {
            data.extend([over_white(r, a), over_white(g, a), over_white(b, a)]);
        } else {
            data.extend([r, g, b]);
        }
    };
    match &img {
        DynamicImage::ImageLuma8(b) => b.pixels().for_each(|p| data.extend([p.0[0]; 3])),
        DynamicImage::ImageLumaA8(b) => b.pixels().for_each(|p| data.extend([p.0[0]; 3])),
        DynamicImage::ImageRgb8(b) => data.extend_from_slice(b.as_raw()),
        DynamicImage::ImageRgba8(b) => b.pixels().for_each(|p| push_rgba(&mut data, p.0)),
        DynamicImage::ImageLuma16(b) => b.pixels().for_each(|p| data.extend([clip16(p.0[0]); 3])),
        DynamicImage::ImageLumaA16(b) => {
            for p in b.pixels() {
                let [v, a] = p.0;
                if pil_rgba {
                    push_rgba(&mut data, [hi(v), hi(v), hi(v), hi(a)]);
                } else {
                    // 16-bit grey with a tRNS entry: Pillow's mode "I;16".
                    data.extend([clip16(v); 3]);
                }
            }
        }
        DynamicImage::ImageRgb16(b) => b.pixels().for_each(|p| data.extend(p.0.map(hi))),
        DynamicImage::ImageRgba16(b) => b.pixels().for_each(|p| push_rgba(&mut data, p.0.map(hi))),
        other => data.extend_from_slice(other.to_rgb8().as_raw()),
    }
    Ok(Frames { t: 1, h, w, data })
}

/// Pillow's `cmyk2rgb` on packed CMYK samples (as Pillow holds them, after its "CMYK;I"
/// inversion for JPEG): `nk = 255 − K; out = nk − MULDIV255(C, nk)`.
pub(crate) fn cmyk_to_rgb(cmyk: &[u8]) -> Vec<u8> {
    let muldiv255 = |a: u32, b: u32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    let mut out = Vec::with_capacity(cmyk.len() / 4 * 3);
    for p in cmyk.chunks_exact(4) {
        let nk = 255 - p[3] as u32;
        out.extend(p[..3].iter().map(|&c| (nk - muldiv255(c as u32, nk)) as u8));
    }
    out
}

/// PNG (colour type, bit depth) from the IHDR chunk.
fn png_ihdr(bytes: &[u8]) -> Option<(u8, u8)> {
    (bytes.len() > 25 && &bytes[12..16] == b"IHDR").then(|| (bytes[25], bytes[24]))
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
