//! JPEG to uint8 RGB exactly as Pillow decodes it.
//!
//! Pillow decodes JPEG with libjpeg-turbo and the library's defaults: integer slow DCT
//! (`JDCT_ISLOW`), fancy (triangular) chroma upsampling, the colour space the file declares.
//! It maps the frame's component count to a mode: 1 → "L", 3 → "RGB", 4 → "CMYK" read with
//! rawmode "CMYK;I", i.e. every sample inverted whether or not the file carries an Adobe
//! marker ("assume adobe conventions"), and YCCK converted to CMYK by libjpeg first. Then
//! `convert("RGB")`: L is replicated; CMYK goes through `cmyk2rgb`
//! (`nk = 255 − K; out = nk − MULDIV255(C, nk)`). It refuses precisions other than 8 bits and
//! component counts other than 1, 3 and 4.
//!
//! reel loads the system's TurboJPEG library (libjpeg-turbo; Debian `libturbojpeg0`) at run
//! time and asks for exactly those settings (flags 0: no fast DCT, no fast upsampling). Loading
//! at run time rather than linking keeps the build independent of the library: a binary built
//! anywhere decodes exactly where the library is installed, and elsewhere falls back to the
//! pure-Rust decoder of the `image` crate (zune-jpeg) with a one-line warning. That decoder
//! differs from libjpeg-turbo by a few levels (up to 4 on the goldens, mostly at 4:2:0 chroma
//! edges) and has no arithmetic decoding.
//! `REEL_JPEG=image` forces the fallback; `REEL_JPEG=turbo` makes a missing library an error.

use std::ffi::{c_char, c_int, c_uchar, c_ulong, c_void, CStr};
use std::io::Cursor;
use std::sync::OnceLock;

use super::image::{cmyk_to_rgb, ImageLimits};
use super::Frames;

/// Which decoder turns JPEG bytes into pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JpegDecoder {
    /// libjpeg-turbo through TurboJPEG if it loads, else the `image` crate (with a warning).
    Auto,
    /// libjpeg-turbo through TurboJPEG; an error if the library cannot be loaded.
    Turbo,
    /// The `image` crate's pure-Rust decoder (not bit-exact with Pillow).
    Image,
}

impl JpegDecoder {
    /// From the value of `REEL_JPEG` (unset or empty → Auto).
    pub fn parse(v: Option<&str>) -> Result<JpegDecoder, String> {
        match v.map(str::trim) {
            None | Some("") | Some("auto") => Ok(JpegDecoder::Auto),
            Some("turbo") | Some("libjpeg-turbo") => Ok(JpegDecoder::Turbo),
            Some("image") => Ok(JpegDecoder::Image),
            Some(o) => Err(format!("REEL_JPEG={o:?} is not one of auto, turbo, image")),
        }
    }

    /// The choice made by the environment (`REEL_JPEG`).
    pub fn from_env() -> Result<JpegDecoder, String> {
        JpegDecoder::parse(std::env::var("REEL_JPEG").ok().as_deref())
    }
}

/// What a JPEG's frame header says (the first SOFn segment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JpegHeader {
    pub precision: u8,
    pub components: u8,
    pub width: u32,
    pub height: u32,
    /// The SOF marker's low nibble: 0 baseline, 1 extended, 2 progressive, 3 lossless, 9+ arithmetic.
    pub process: u8,
    /// Whether the header segments are complete up to a start-of-scan marker.
    pub has_scan: bool,
}

/// Walks the markers up to the first frame header and on to the first scan, skipping what
/// Pillow's parser skips (fill bytes and junk between segments).
pub fn parse_header(b: &[u8]) -> Result<JpegHeader, String> {
    if b.len() < 3 || b[0] != 0xFF || b[1] != 0xD8 {
        return Err("not a JPEG file (no SOI marker)".into());
    }
    let mut i = 2;
    let mut sof: Option<JpegHeader> = None;
    loop {
        // Find the next 0xFF xx with xx not a fill byte.
        while i < b.len() && b[i] != 0xFF {
            i += 1;
        }
        while i < b.len() && b[i] == 0xFF {
            i += 1;
        }
        let truncated = |sof: Option<JpegHeader>| match sof {
            Some(h) => Ok(JpegHeader {
                has_scan: false,
                ..h
            }),
            None => Err(
                "JPEG is truncated: no frame header (SOF) before the end of the file".to_string(),
            ),
        };
        if i >= b.len() {
            return truncated(sof);
        }
        let m = b[i];
        i += 1;
        match m {
            0x00 | 0x01 | 0xD0..=0xD7 => continue,
            0xD9 | 0xDA => {
                return match sof {
                    Some(h) if m == 0xDA => Ok(JpegHeader {
                        has_scan: true,
                        ..h
                    }),
                    Some(h) => Ok(h),
                    None => Err("JPEG has no frame header (SOF) before its scan data".into()),
                };
            }
            _ => {}
        }
        if i + 2 > b.len() {
            return truncated(sof);
        }
        let len = u16::from_be_bytes([b[i], b[i + 1]]) as usize;
        if len < 2 || i + len > b.len() {
            return truncated(sof);
        }
        let seg = &b[i + 2..i + len];
        if sof.is_none() && (0xC0..=0xCF).contains(&m) && !matches!(m, 0xC4 | 0xC8 | 0xCC) {
            if seg.len() < 6 {
                return Err("JPEG frame header (SOF) is too short".into());
            }
            sof = Some(JpegHeader {
                precision: seg[0],
                height: u16::from_be_bytes([seg[1], seg[2]]) as u32,
                width: u16::from_be_bytes([seg[3], seg[4]]) as u32,
                components: seg[5],
                process: m & 0x0F,
                has_scan: false,
            });
        }
        i += len;
    }
}

// TurboJPEG 2.x API (also exported, unchanged, by libjpeg-turbo 3.x).
type TjHandle = *mut c_void;
type InitFn = unsafe extern "C" fn() -> TjHandle;
type HeaderFn = unsafe extern "C" fn(
    TjHandle,
    *const c_uchar,
    c_ulong,
    *mut c_int,
    *mut c_int,
    *mut c_int,
    *mut c_int,
) -> c_int;
type DecompressFn = unsafe extern "C" fn(
    TjHandle,
    *const c_uchar,
    c_ulong,
    *mut c_uchar,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
) -> c_int;
type ErrStrFn = unsafe extern "C" fn(TjHandle) -> *mut c_char;
type ErrCodeFn = unsafe extern "C" fn(TjHandle) -> c_int;
type DestroyFn = unsafe extern "C" fn(TjHandle) -> c_int;

const TJPF_RGB: c_int = 0;
const TJPF_GRAY: c_int = 6;
const TJPF_CMYK: c_int = 11;
const TJERR_WARNING: c_int = 0;

struct Turbo {
    _lib: libloading::Library,
    soname: &'static str,
    init: InitFn,
    header: HeaderFn,
    decompress: DecompressFn,
    err_str: ErrStrFn,
    err_code: ErrCodeFn,
    destroy: DestroyFn,
}

const SONAMES: &[&str] = &[
    "libturbojpeg.so.0",
    "libturbojpeg.so",
    "libturbojpeg.0.dylib",
    "libturbojpeg.dylib",
    "turbojpeg.dll",
];

fn load_turbo() -> Result<Turbo, String> {
    let mut errs = Vec::new();
    for &soname in SONAMES {
        // SAFETY: loading libturbojpeg runs no initialisers with preconditions.
        let lib = match unsafe { libloading::Library::new(soname) } {
            Ok(l) => l,
            Err(e) => {
                errs.push(e.to_string());
                continue;
            }
        };
        // SAFETY: the symbols have these C signatures in TurboJPEG 2.0 and later; the
        // function pointers stay valid because `_lib` is kept alive beside them.
        unsafe {
            let sym = |n: &[u8]| -> Result<*const c_void, String> {
                lib.get::<*const c_void>(n)
                    .map(|s| *s)
                    .map_err(|e| format!("{soname}: {e}"))
            };
            let t = Turbo {
                soname,
                init: std::mem::transmute::<*const c_void, InitFn>(sym(b"tjInitDecompress\0")?),
                header: std::mem::transmute::<*const c_void, HeaderFn>(sym(
                    b"tjDecompressHeader3\0",
                )?),
                decompress: std::mem::transmute::<*const c_void, DecompressFn>(sym(
                    b"tjDecompress2\0",
                )?),
                err_str: std::mem::transmute::<*const c_void, ErrStrFn>(sym(b"tjGetErrorStr2\0")?),
                err_code: std::mem::transmute::<*const c_void, ErrCodeFn>(sym(
                    b"tjGetErrorCode\0",
                )?),
                destroy: std::mem::transmute::<*const c_void, DestroyFn>(sym(b"tjDestroy\0")?),
                _lib: lib,
            };
            return Ok(t);
        }
    }
    Err(errs.first().cloned().unwrap_or_default())
}

fn turbo() -> Result<&'static Turbo, &'static str> {
    static T: OnceLock<Result<Turbo, String>> = OnceLock::new();
    T.get_or_init(load_turbo).as_ref().map_err(|e| e.as_str())
}

/// The library behind [`JpegDecoder::Auto`] on this machine, e.g. "libturbojpeg.so.0", or why
/// it is missing.
pub fn turbo_library() -> Result<&'static str, String> {
    turbo().map(|t| t.soname).map_err(str::to_string)
}

/// Decodes JPEG bytes to RGB as Pillow + qwen-vl-utils' `to_rgb` do.
pub fn decode(bytes: &[u8], limits: &ImageLimits, which: JpegDecoder) -> Result<Frames, String> {
    let h = parse_header(bytes)?;
    // Pillow's SOF handler refuses these before decoding.
    if h.precision != 8 {
        return Err(format!(
            "cannot decode a {}-bit JPEG (only 8-bit samples are supported, as in Pillow)",
            h.precision
        ));
    }
    if !matches!(h.components, 1 | 3 | 4) {
        return Err(format!(
            "cannot decode a JPEG with {} components (1, 3 or 4 are supported, as in Pillow)",
            h.components
        ));
    }
    if h.width == 0 || h.height == 0 {
        return Err(format!(
            "JPEG has a zero side ({}x{}; DNL-defined heights are not supported)",
            h.width, h.height
        ));
    }
    if !h.has_scan {
        return Err("JPEG is truncated: the file ends inside its header segments".into());
    }
    let pixels = h.width as u64 * h.height as u64;
    if pixels > limits.max_pixels {
        return Err(format!(
            "image claims {}x{} = {pixels} pixels, over the limit of {} (possible decompression bomb)",
            h.width, h.height, limits.max_pixels
        ));
    }
    // Output buffer, plus the whole-image coefficient buffers libjpeg keeps for progressive
    // and multi-scan files (2 bytes per sample).
    let need = pixels * (h.components as u64) * if h.process & 3 == 2 { 3 } else { 1 };
    if need > limits.max_alloc {
        return Err(format!(
            "decoding this {}x{} JPEG needs about {need} bytes, over the limit of {}",
            h.width, h.height, limits.max_alloc
        ));
    }
    let turbo = match which {
        JpegDecoder::Image => None,
        JpegDecoder::Turbo => Some(turbo().map_err(|e| {
            format!(
                "REEL_JPEG=turbo but libturbojpeg cannot be loaded ({e}); install libturbojpeg0"
            )
        })?),
        JpegDecoder::Auto => match turbo() {
            Ok(t) => Some(t),
            Err(e) => {
                warn_fallback(e);
                None
            }
        },
    };
    match turbo {
        Some(t) => decode_turbo(t, bytes, &h),
        None => decode_image_crate(bytes, limits),
    }
}

fn warn_fallback(why: &str) {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        eprintln!(
            "reel: warning: libturbojpeg not found ({why}); JPEGs are decoded by a pure-Rust \
             decoder whose pixels differ from Pillow's by a few levels (install libturbojpeg0)"
        )
    });
}

struct Handle<'a>(&'a Turbo, TjHandle);

impl Drop for Handle<'_> {
    fn drop(&mut self) {
        // SAFETY: the handle came from tjInitDecompress and is destroyed once.
        unsafe { (self.0.destroy)(self.1) };
    }
}

impl Handle<'_> {
    fn error(&self) -> (c_int, String) {
        // SAFETY: the handle is live; tjGetErrorStr2 returns a NUL-terminated string owned by
        // the library (per handle or thread-local), copied out at once.
        unsafe {
            let code = (self.0.err_code)(self.1);
            let s = (self.0.err_str)(self.1);
            let msg = if s.is_null() {
                String::new()
            } else {
                CStr::from_ptr(s).to_string_lossy().trim().to_string()
            };
            (code, msg)
        }
    }
}

fn decode_turbo(t: &Turbo, bytes: &[u8], h: &JpegHeader) -> Result<Frames, String> {
    // SAFETY: plain constructor; a null handle is checked.
    let raw = unsafe { (t.init)() };
    if raw.is_null() {
        return Err("libturbojpeg: cannot create a decompressor".into());
    }
    let handle = Handle(t, raw);
    let (mut w, mut hh, mut sub, mut cs) = (0, 0, 0, 0);
    // SAFETY: `bytes` is valid for its length; the out-pointers are live locals.
    let rc = unsafe {
        (t.header)(
            raw,
            bytes.as_ptr(),
            bytes.len() as c_ulong,
            &mut w,
            &mut hh,
            &mut sub,
            &mut cs,
        )
    };
    if rc != 0 {
        let (code, msg) = handle.error();
        if !benign_warning(code, &msg) {
            return Err(turbo_error(&msg));
        }
    }
    if (w as u32, hh as u32) != (h.width, h.height) {
        return Err(format!(
            "cannot decode JPEG: libjpeg reads {w}x{hh}, the frame header says {}x{}",
            h.width, h.height
        ));
    }
    let (pf, ch) = match h.components {
        1 => (TJPF_GRAY, 1),
        3 => (TJPF_RGB, 3),
        _ => (TJPF_CMYK, 4),
    };
    let (wu, hu) = (w as usize, hh as usize);
    let n = wu * hu * ch;
    let mut out = Vec::new();
    out.try_reserve_exact(n)
        .map_err(|_| format!("cannot allocate {n} bytes for a {wu}x{hu} JPEG"))?;
    out.resize(n, 0);
    // SAFETY: `out` holds width × height × channels bytes, which is what tjDecompress2 writes
    // with pitch 0 (tightly packed) for this pixel format.
    let rc = unsafe {
        (t.decompress)(
            raw,
            bytes.as_ptr(),
            bytes.len() as c_ulong,
            out.as_mut_ptr(),
            w,
            0,
            hh,
            pf,
            0,
        )
    };
    if rc != 0 {
        let (code, msg) = handle.error();
        if !benign_warning(code, &msg) {
            return Err(turbo_error(&msg));
        }
    }
    let data = match ch {
        3 => out,
        1 => out.iter().flat_map(|&v| [v; 3]).collect(),
        _ => {
            // "CMYK;I": Pillow inverts every sample, then converts.
            out.iter_mut().for_each(|v| *v = 255 - *v);
            cmyk_to_rgb(&out)
        }
    };
    Ok(Frames {
        t: 1,
        h: hu,
        w: wu,
        data,
    })
}

/// Whether a failed TurboJPEG call only warned. Its error code says "warning" even when a
/// fatal error followed a warning, so the message decides: the library keeps the first
/// warning's text unless a fatal error overwrote it. libjpeg's warnings that Pillow shrugs
/// off (its message handler is silent) are accepted; running out of data is not, because
/// Pillow then fails with "image file is truncated".
fn benign_warning(code: c_int, msg: &str) -> bool {
    const WARNINGS: &[&str] = &[
        "Corrupt JPEG data",
        "Warning:",
        "Inconsistent progression sequence",
        "Invalid SOS parameters for sequential JPEG",
        "Unknown Adobe color transform",
    ];
    code == TJERR_WARNING && WARNINGS.iter().any(|w| msg.starts_with(w))
}

fn turbo_error(msg: &str) -> String {
    if msg.contains("Premature end") {
        format!("JPEG is truncated (libjpeg: {msg})")
    } else {
        format!("cannot decode JPEG (libjpeg: {msg})")
    }
}

fn decode_image_crate(bytes: &[u8], limits: &ImageLimits) -> Result<Frames, String> {
    use ::image::{DynamicImage, ImageDecoder};
    let mut dec = ::image::codecs::jpeg::JpegDecoder::new(Cursor::new(bytes))
        .map_err(|e| format!("cannot decode JPEG: {e}"))?;
    let mut l = ::image::Limits::default();
    l.max_alloc = Some(limits.max_alloc);
    dec.set_limits(l)
        .map_err(|e| format!("image exceeds decoder limits: {e}"))?;
    let img = DynamicImage::from_decoder(dec).map_err(|e| format!("cannot decode JPEG: {e}"))?;
    let rgb = img.to_rgb8();
    Ok(Frames {
        t: 1,
        h: rgb.height() as usize,
        w: rgb.width() as usize,
        data: rgb.into_raw(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values() {
        assert_eq!(JpegDecoder::parse(None), Ok(JpegDecoder::Auto));
        assert_eq!(JpegDecoder::parse(Some("")), Ok(JpegDecoder::Auto));
        assert_eq!(JpegDecoder::parse(Some("image")), Ok(JpegDecoder::Image));
        assert_eq!(JpegDecoder::parse(Some("turbo")), Ok(JpegDecoder::Turbo));
        let e = JpegDecoder::parse(Some("zune")).unwrap_err();
        assert!(e.contains("REEL_JPEG") && e.contains("zune"), "{e}");
    }

    #[test]
    fn header_walk() {
        // SOI, APP0 (len 4), fill bytes, SOF0 8-bit 3×2 with 3 components.
        let b = [
            0xFF, 0xD8, 0xFF, 0xE0, 0, 4, 1, 2, 0xFF, 0xFF, 0xC0, 0, 8, 8, 0, 2, 0, 3, 3,
        ];
        let h = parse_header(&b).unwrap();
        assert_eq!((h.precision, h.width, h.height, h.components), (8, 3, 2, 3));
        assert_eq!(h.process, 0);
        assert!(!h.has_scan);
        let mut with_sos = b.to_vec();
        with_sos.extend([0xFF, 0xDA, 0, 2]);
        assert!(parse_header(&with_sos).unwrap().has_scan);
        assert!(parse_header(&b[..12]).unwrap_err().contains("truncated"));
        assert!(parse_header(b"GIF89a").unwrap_err().contains("SOI"));
        // DHT (0xC4) is not a frame header.
        let b2 = [0xFF, 0xD8, 0xFF, 0xC4, 0, 2, 0xFF, 0xDA, 0, 2];
        assert!(parse_header(&b2).unwrap_err().contains("no frame header"));
    }
}
