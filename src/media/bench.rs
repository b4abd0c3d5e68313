//! Timing of the media path (decode + sample + resize + patchify), for `reel bench`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use super::{PatchParams, Preset, VideoRequest};
use crate::{Error, Result};

/// Wall-clock seconds of each stage of one video's preprocessing.
#[derive(Clone, Debug)]
pub struct MediaTimings {
    pub probe_and_decode_s: f64,
    pub resize_s: f64,
    pub patchify_s: f64,
    pub frames_total: u64,
    pub frames_sampled: usize,
    pub source_size: (u32, u32),
    pub resized_size: (usize, usize),
    pub rows: usize,
}

impl MediaTimings {
    pub fn total_s(&self) -> f64 {
        self.probe_and_decode_s + self.resize_s + self.patchify_s
    }
}

/// Writes a synthetic H.264 clip with the `ffmpeg` command-line tool (testsrc2 pattern,
/// yuv420p, libx264 default GOP) and returns its path.
pub fn make_test_clip(
    dir: &Path,
    seconds: u32,
    width: u32,
    height: u32,
    fps: u32,
) -> Result<PathBuf> {
    let out = dir.join(format!("testsrc2_{seconds}s_{width}x{height}_{fps}fps.mp4"));
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!(
            "testsrc2=duration={seconds}:size={width}x{height}:rate={fps}"
        ))
        .args([
            "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "veryfast",
        ])
        .arg(&out)
        .status()
        .map_err(|e| Error::media(&out, format!("cannot run the ffmpeg CLI: {e}")))?;
    if !status.success() {
        return Err(Error::media(&out, format!("ffmpeg CLI failed ({status})")));
    }
    Ok(out)
}

/// Times decode (one forward pass over the sampled frames), the torchvision-style resize and
/// patchify of one video.
#[cfg(feature = "video")]
pub fn time_video(
    path: &Path,
    preset: &Preset,
    req: &VideoRequest,
    params: &PatchParams,
) -> Result<MediaTimings> {
    let t0 = Instant::now();
    let decoded = super::decode::decode_sampled(path, |info| {
        super::plan_video(info, preset, req).map(|p| p.0)
    })?;
    let t1 = Instant::now();
    let f = &decoded.frames;
    let ((th, tw), _) = super::video_target_size(f.h as u32, f.w as u32, f.t as u64, preset, req)
        .map_err(|m| Error::media(path, m))?;
    let resized = super::resize_tv::resize_frames(f, th as usize, tw as usize);
    let t2 = Instant::now();
    let rows = super::pixels::patchify(&resized, params)?;
    let t3 = Instant::now();
    Ok(MediaTimings {
        probe_and_decode_s: (t1 - t0).as_secs_f64(),
        resize_s: (t2 - t1).as_secs_f64(),
        patchify_s: (t3 - t2).as_secs_f64(),
        frames_total: decoded.info.frames,
        frames_sampled: f.t,
        source_size: (decoded.info.height, decoded.info.width),
        resized_size: (th as usize, tw as usize),
        rows: rows.n_rows(),
    })
}

/// The standard media benchmark: a 60 s 1280x720 30 fps H.264 clip generated in `dir`, then
/// [`time_video`] with the given preset and default requests.
#[cfg(feature = "video")]
pub fn bench_720p_minute(dir: &Path, preset: &Preset) -> Result<MediaTimings> {
    let clip = make_test_clip(dir, 60, 1280, 720, 30)?;
    time_video(
        &clip,
        preset,
        &VideoRequest::default(),
        &PatchParams::qwen2_vl(),
    )
}
