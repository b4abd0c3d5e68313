//! Pixels in: video decoding (FFmpeg), frame sampling, resizing, normalization, patchify.
//!
//! This module knows nothing about the model. It turns files into uint8 RGB frames
//! ([`Frames`], T×H×W×3; video frames are decoded from the nearest keyframes, see
//! [`seek`]), resizes them with the two reference kernels (Pillow bicubic for
//! images, torchvision's antialiased bicubic for video), and turns them into normalized patch
//! rows ([`PixelRows`]) from plain parameters ([`PatchParams`]). The sizing and sampling rules
//! follow qwen-vl-utils; both its upstream constants and the Video-R1 fork's are [`Preset`]s.
//!
//! Typical use:
//! ```no_run
//! # fn main() -> reel::Result<()> {
//! use reel::media::{self, PatchParams, Preset, VideoRequest};
//! let preset = Preset::video_r1();
//! let video = media::load_video(std::path::Path::new("clip.mp4"), &preset, &VideoRequest::default())?;
//! let rows = media::pixels::patchify(&video.frames, &PatchParams::qwen2_vl())?;
//! # Ok(()) }
//! ```

pub mod bench;
#[cfg(feature = "video")]
pub mod decode;
#[cfg(feature = "video")]
pub mod ffmpeg_guard;
mod gif_frame;
pub mod image;
pub mod jpeg;
pub mod pixels;
pub mod resize_pil;
pub mod resize_tv;
pub mod sample;
pub mod seek;
pub mod size;

use std::path::Path;

use crate::{Error, Result};

pub use pixels::{PatchParams, PixelRows};
pub use sample::{FrameRequest, VideoPixelRequest};

/// Most frames a video element may sample.
pub const MAX_SAMPLED_FRAMES: u64 = 1 << 14;
/// Most pixels of one video frame (as [`image::ImageLimits`] allows an image).
pub const MAX_FRAME_PIXELS: u64 = 1 << 28;
/// Most bytes of RGB frames one media element may hold, decoded or resized.
pub const MAX_MEDIA_BYTES: u64 = 8 << 30;

/// Fails unless `t` frames of `h`×`w` RGB fit [`MAX_MEDIA_BYTES`].
fn check_frames_size(t: u64, h: u64, w: u64) -> Result<(), String> {
    let bytes = t.saturating_mul(h).saturating_mul(w).saturating_mul(3);
    if bytes > MAX_MEDIA_BYTES {
        return Err(format!(
            "{t} frame(s) of {w}x{h} would take {bytes} bytes, over the limit of {MAX_MEDIA_BYTES}"
        ));
    }
    Ok(())
}

/// The qwen-vl-utils constants. Two sets exist: upstream (PyPI 0.0.14) and the copy inside
/// Video-R1 (`src/qwen-vl-utils`, as committed, which is what its models were trained with).
#[derive(Clone, Debug, PartialEq)]
pub struct Preset {
    /// Sides are multiples of this (patch 14 × merge 2).
    pub image_factor: u32,
    pub min_pixels: f64,
    pub max_pixels: f64,
    pub max_ratio: f64,
    pub video_min_pixels: f64,
    pub video_max_pixels: f64,
    /// Sampled frame counts are multiples of this.
    pub frame_factor: u32,
    pub fps: f64,
    pub fps_min_frames: u32,
    pub fps_max_frames: u32,
    pub video_total_pixels: f64,
    /// Upstream asserts `max_pixels >= min_pixels` in smart_resize; the fork does not.
    pub require_min_le_max: bool,
}

impl Preset {
    /// Video-R1's committed copy of qwen-vl-utils.
    pub fn video_r1() -> Preset {
        Preset {
            image_factor: 28,
            min_pixels: 4.0 * 784.0,
            max_pixels: 256.0 * 784.0,
            max_ratio: 200.0,
            video_min_pixels: 128.0 * 784.0,
            video_max_pixels: 128.0 * 784.0,
            frame_factor: 2,
            fps: 2.0,
            fps_min_frames: 4,
            fps_max_frames: 16,
            video_total_pixels: 90316800.0,
            require_min_le_max: false,
        }
    }

    /// PyPI qwen-vl-utils 0.0.14 (MODEL_SEQ_LEN 128000).
    pub fn upstream() -> Preset {
        Preset {
            max_pixels: 16384.0 * 784.0,
            video_max_pixels: 768.0 * 784.0,
            fps_max_frames: 768,
            require_min_le_max: true,
            ..Preset::video_r1()
        }
    }
}

/// uint8 RGB frames, T×H×W×3, row-major (what decoders and image files give).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frames {
    pub t: usize,
    pub h: usize,
    pub w: usize,
    pub data: Vec<u8>,
}

impl Frames {
    pub fn frame(&self, i: usize) -> &[u8] {
        let n = self.h * self.w * 3;
        &self.data[i * n..(i + 1) * n]
    }
}

/// Size requests of an image element (`min_pixels`, `max_pixels`, `resized_height/width`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImageRequest {
    pub min_pixels: Option<f64>,
    pub max_pixels: Option<f64>,
    /// (height, width); still rounded by smart_resize with the preset's image limits.
    pub resized: Option<(u32, u32)>,
}

/// Requests of a video element.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VideoRequest {
    pub frames: FrameRequest,
    pub pixels: VideoPixelRequest,
    /// (height, width); as in qwen-vl-utils this goes through smart_resize with the preset's
    /// *image* limits, not the video budget.
    pub resized: Option<(u32, u32)>,
}

/// An image after qwen-vl-utils' `fetch_image`: RGB, resized with Pillow bicubic.
#[derive(Clone, Debug)]
pub struct LoadedImage {
    /// (height, width) of the file.
    pub original: (u32, u32),
    /// One frame at the resized size.
    pub frames: Frames,
}

fn nonzero((h, w): (u32, u32)) -> Result<(u32, u32), String> {
    if h == 0 || w == 0 {
        return Err(format!(
            "resizes to an empty {h}x{w} frame (pixel limits too small for this aspect ratio)"
        ));
    }
    Ok((h, w))
}

/// Target size of an image element.
pub fn image_target_size(
    h: u32,
    w: u32,
    preset: &Preset,
    req: &ImageRequest,
) -> Result<(u32, u32), String> {
    match req.resized {
        Some((rh, rw)) => size::smart_resize(rh, rw, preset.min_pixels, preset.max_pixels, preset),
        None => size::smart_resize(
            h,
            w,
            req.min_pixels.unwrap_or(preset.min_pixels),
            req.max_pixels.unwrap_or(preset.max_pixels),
            preset,
        ),
    }
}

/// Reads an image file and resizes it as qwen-vl-utils does (RGBA composited on white,
/// smart_resize, Pillow bicubic).
pub fn load_image(path: &Path, preset: &Preset, req: &ImageRequest) -> Result<LoadedImage> {
    let rgb = image::read_rgb(path, &image::ImageLimits::default())?;
    resize_image(rgb, path, preset, req)
}

/// [`load_image`] on the bytes of an image file (`origin` names it in errors), with the
/// decoder limits and the JPEG decoder given.
pub fn load_image_bytes(
    bytes: &[u8],
    origin: &Path,
    limits: &image::ImageLimits,
    jpeg: jpeg::JpegDecoder,
    preset: &Preset,
    req: &ImageRequest,
) -> Result<LoadedImage> {
    let rgb = image::decode_rgb_with(bytes, limits, jpeg).map_err(|m| Error::media(origin, m))?;
    resize_image(rgb, origin, preset, req)
}

fn resize_image(
    rgb: Frames,
    path: &Path,
    preset: &Preset,
    req: &ImageRequest,
) -> Result<LoadedImage> {
    let (h, w) = (rgb.h as u32, rgb.w as u32);
    let (th, tw) = image_target_size(h, w, preset, req)
        .and_then(nonzero)
        .and_then(|(th, tw)| check_frames_size(1, th as u64, tw as u64).map(|_| (th, tw)))
        .map_err(|m| Error::media(path, m))?;
    let data = resize_pil::resize_bicubic(&rgb.data, rgb.h, rgb.w, 3, th as usize, tw as usize);
    Ok(LoadedImage {
        original: (h, w),
        frames: Frames {
            t: 1,
            h: th as usize,
            w: tw as usize,
            data,
        },
    })
}

/// A video after qwen-vl-utils' `fetch_video`: sampled, decoded, resized.
#[derive(Clone, Debug)]
pub struct LoadedVideo {
    pub info: VideoInfo,
    /// Indices of the sampled frames in the decoded stream.
    pub indices: Vec<u64>,
    /// fps of the sampled frames (`n / total * fps`).
    pub sample_fps: f64,
    /// Per-frame pixel limit used by smart_resize.
    pub max_pixels: f64,
    /// The sampled frames after the torchvision bicubic-antialias resize.
    pub frames: Frames,
    pub timings: VideoTimings,
}

/// Where the time of loading one video went.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VideoTimings {
    /// Opening and probing the file, and indexing its packets when seeking.
    pub probe_s: f64,
    /// Decoding and converting the sampled frames to RGB.
    pub decode_s: f64,
    pub resize_s: f64,
    /// Frames the decoders returned.
    pub frames_decoded: u64,
    /// How the frames were decoded, in words (forward pass, or decode runs from keyframes).
    pub path: String,
}

/// What a probe of a video file reports.
#[derive(Clone, Debug, PartialEq)]
pub struct VideoInfo {
    /// Frame count: the stream's nb_frames, else a count of its packets, else duration×fps.
    pub frames: u64,
    /// Average frame rate of the stream.
    pub fps: f64,
    /// Seconds.
    pub duration: f64,
    /// Upright size (after the display rotation).
    pub width: u32,
    pub height: u32,
    /// Display rotation applied to the frames, degrees clockwise (0, 90, 180, 270).
    pub rotation: u32,
    /// FFmpeg's codec name.
    pub codec: String,
}

/// Frame count, indices and size of a video element given its probe (pure; no decoding).
pub fn plan_video(
    info: &VideoInfo,
    preset: &Preset,
    req: &VideoRequest,
) -> Result<(Vec<u64>, f64), String> {
    let pixels = info.width as u64 * info.height as u64;
    if pixels > MAX_FRAME_PIXELS {
        return Err(format!(
            "video frames of {}x{} = {pixels} pixels are over the limit of {MAX_FRAME_PIXELS}",
            info.width, info.height
        ));
    }
    let n = sample::smart_nframes(&req.frames, info.frames, info.fps, preset)?;
    if n > MAX_SAMPLED_FRAMES {
        return Err(format!(
            "{n} sampled frames are over the limit of {MAX_SAMPLED_FRAMES}"
        ));
    }
    check_frames_size(n, info.height as u64, info.width as u64)?;
    Ok((
        sample::frame_indices(info.frames, n),
        sample::sample_fps(n, info.frames, info.fps),
    ))
}

/// Target size of the frames of a video element with `nframes` sampled frames.
pub fn video_target_size(
    h: u32,
    w: u32,
    nframes: u64,
    preset: &Preset,
    req: &VideoRequest,
) -> Result<((u32, u32), f64), String> {
    let (max_p, min_p) = sample::video_frame_pixels(nframes, &req.pixels, preset);
    let size = match req.resized {
        Some((rh, rw)) => size::smart_resize(rh, rw, preset.min_pixels, preset.max_pixels, preset)?,
        None => size::smart_resize(h, w, min_p, max_p, preset)?,
    };
    Ok((size, max_p))
}

/// Decoding options for [`load_video`]: seeking on unless `REEL_VIDEO_SEEK=0`, threads from
/// rayon's global pool (the CLI's `--threads`, else all cores).
#[cfg(feature = "video")]
pub fn video_decode_options() -> decode::DecodeOptions {
    let seek = std::env::var("REEL_VIDEO_SEEK").map_or(true, |v| v.trim() != "0");
    let n = rayon::current_num_threads();
    let all = std::thread::available_parallelism().map_or(n, |c| c.get());
    decode::DecodeOptions {
        seek,
        // All cores: let FFmpeg size a single decoder's frame threads as it always has.
        threads: if n == all { 0 } else { n },
    }
}

/// Decodes a video, samples it and resizes the frames as qwen-vl-utils does.
#[cfg(feature = "video")]
pub fn load_video(path: &Path, preset: &Preset, req: &VideoRequest) -> Result<LoadedVideo> {
    load_video_with(path, preset, req, &video_decode_options())
}

/// [`load_video`] with explicit decoding options.
#[cfg(feature = "video")]
pub fn load_video_with(
    path: &Path,
    preset: &Preset,
    req: &VideoRequest,
    opts: &decode::DecodeOptions,
) -> Result<LoadedVideo> {
    let mut plan_out = None;
    let decoded = decode::decode_sampled_with(
        path,
        |info| {
            let (idx, fps) = plan_video(info, preset, req)?;
            plan_out = Some(fps);
            Ok(idx)
        },
        opts,
    )?;
    let sample_fps = plan_out.unwrap_or(0.0);
    let f = &decoded.frames;
    let t = std::time::Instant::now();
    let ((th, tw), max_pixels) = video_target_size(f.h as u32, f.w as u32, f.t as u64, preset, req)
        .and_then(|r| check_frames_size(f.t as u64, r.0 .0 as u64, r.0 .1 as u64).map(|_| r))
        .map_err(|m| Error::media(path, m))?;
    let frames = resize_tv::resize_frames(f, th as usize, tw as usize);
    let st = &decoded.stats;
    Ok(LoadedVideo {
        info: decoded.info,
        indices: decoded.indices,
        sample_fps,
        max_pixels,
        frames,
        timings: VideoTimings {
            probe_s: st.probe_s,
            decode_s: st.decode_s,
            resize_s: t.elapsed().as_secs_f64(),
            frames_decoded: st.frames_decoded,
            path: st.describe(),
        },
    })
}

/// Without the `video` feature there is no decoder.
#[cfg(not(feature = "video"))]
pub fn load_video(path: &Path, _preset: &Preset, _req: &VideoRequest) -> Result<LoadedVideo> {
    Err(Error::media(
        path,
        "this build has no video support (cargo feature `video` is off)",
    ))
}
