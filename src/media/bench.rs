//! Timing of the media path (decode + sample + resize + patchify), for `reel bench --media`.
//!
//! [`compare`] times the forward decode (every frame up to the last sampled one, one decoder
//! with FFmpeg's own threads) against the indexed path (decode runs from keyframes on all
//! threads) on the same generated clip, alternating the two, and checks that they give the
//! same frames.

#[cfg(feature = "video")]
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
#[cfg(feature = "video")]
use std::time::Instant;

#[cfg(feature = "video")]
use super::decode::DecodeOptions;
use super::Preset;
#[cfg(feature = "video")]
use super::{PatchParams, VideoRequest};
use crate::{Error, Result};

/// Wall-clock seconds of each stage of one video's preprocessing.
#[derive(Clone, Debug)]
pub struct MediaTimings {
    /// Opening and probing the file (and indexing its packets, when seeking).
    pub probe_s: f64,
    /// Decoding the sampled frames to RGB.
    pub decode_s: f64,
    pub probe_and_decode_s: f64,
    pub resize_s: f64,
    pub patchify_s: f64,
    pub frames_total: u64,
    pub frames_sampled: usize,
    pub source_size: (u32, u32),
    pub resized_size: (usize, usize),
    pub rows: usize,
    /// Frames the decoders returned (all of them up to the last sampled one, on the forward
    /// path).
    pub frames_decoded: u64,
    /// How the frames were decoded, in words.
    pub path: String,
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

/// Times decode, the torchvision-style resize and patchify of one video with the default
/// decoding options.
#[cfg(feature = "video")]
pub fn time_video(
    path: &Path,
    preset: &Preset,
    req: &VideoRequest,
    params: &PatchParams,
) -> Result<MediaTimings> {
    time_video_with(path, preset, req, params, &super::video_decode_options()).map(|r| r.0)
}

/// [`time_video`] with explicit decoding options; also returns the resized frames.
#[cfg(feature = "video")]
pub fn time_video_with(
    path: &Path,
    preset: &Preset,
    req: &VideoRequest,
    params: &PatchParams,
    opts: &DecodeOptions,
) -> Result<(MediaTimings, super::Frames)> {
    let v = super::load_video_with(path, preset, req, opts)?;
    let t = Instant::now();
    let rows = super::pixels::patchify(&v.frames, params)?;
    let patchify_s = t.elapsed().as_secs_f64();
    let tm = &v.timings;
    Ok((
        MediaTimings {
            probe_s: tm.probe_s,
            decode_s: tm.decode_s,
            probe_and_decode_s: tm.probe_s + tm.decode_s,
            resize_s: tm.resize_s,
            patchify_s,
            frames_total: v.info.frames,
            frames_sampled: v.frames.t,
            source_size: (v.info.height, v.info.width),
            resized_size: (v.frames.h, v.frames.w),
            rows: rows.n_rows(),
            frames_decoded: tm.frames_decoded,
            path: tm.path.clone(),
        },
        v.frames,
    ))
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

/// The clips `reel bench --media-clip` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchClip {
    /// 60 s, 1280x720, 30 fps.
    Minute720p,
    /// 600 s, 1920x1080, 30 fps (an evaluation-length video).
    TenMinutes1080p,
}

impl std::str::FromStr for BenchClip {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "1m720p" => Ok(BenchClip::Minute720p),
            "10m1080p" => Ok(BenchClip::TenMinutes1080p),
            _ => Err(format!("unknown clip {s:?} (1m720p or 10m1080p)")),
        }
    }
}

impl BenchClip {
    /// (seconds, width, height, fps)
    pub fn shape(self) -> (u32, u32, u32, u32) {
        match self {
            BenchClip::Minute720p => (60, 1280, 720, 30),
            BenchClip::TenMinutes1080p => (600, 1920, 1080, 30),
        }
    }

    /// The clip, generated with the ffmpeg CLI on first use and kept in
    /// `$TMPDIR/reel-media-cache` for later runs.
    pub fn path(self) -> Result<PathBuf> {
        let dir = std::env::temp_dir().join("reel-media-cache");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let (s, w, h, fps) = self.shape();
        let name = format!("testsrc2_{s}s_{w}x{h}_{fps}fps.mp4");
        let done = dir.join(&name);
        if done.exists() {
            return Ok(done);
        }
        // Written under another name and renamed, so an interrupted run leaves no clip behind.
        let part = dir.join(format!("partial-{}", std::process::id()));
        std::fs::create_dir_all(&part).map_err(|e| Error::io(&part, e))?;
        eprintln!(
            "generating {} with the ffmpeg CLI (once)...",
            done.display()
        );
        let res = make_test_clip(&part, s, w, h, fps)
            .and_then(|p| std::fs::rename(&p, &done).map_err(|e| Error::io(&done, e)));
        let _ = std::fs::remove_dir_all(&part);
        res.map(|_| done)
    }
}

/// Times the forward decode against the indexed path on `clip` (default requests, `preset`),
/// `rounds` rounds alternating which goes first, checks that both give the same frames and
/// returns a side-by-side report of each path's fastest round.
#[cfg(feature = "video")]
pub fn compare(clip: BenchClip, preset: &Preset, rounds: usize) -> Result<String> {
    let path = clip.path()?;
    let req = VideoRequest::default();
    let params = PatchParams::qwen2_vl();
    let threads = rayon::current_num_threads();
    let forward = DecodeOptions {
        seek: false,
        threads: 0,
    };
    let seeking = super::video_decode_options();
    let seeking = DecodeOptions {
        seek: true,
        ..seeking
    };
    let ix_t = Instant::now();
    let ix = super::decode::index(&path)?;
    let ix_s = ix_t.elapsed().as_secs_f64();
    let mut best: [Option<MediaTimings>; 2] = [None, None];
    let mut totals = [Vec::new(), Vec::new()];
    let mut first_frames: Option<super::Frames> = None;
    for r in 0..rounds.max(1) {
        let order = if r % 2 == 0 { [0, 1] } else { [1, 0] };
        for which in order {
            let opts = if which == 0 { &forward } else { &seeking };
            let t = Instant::now();
            let (tm, frames) = time_video_with(&path, preset, &req, &params, opts)?;
            let total = t.elapsed().as_secs_f64();
            match &first_frames {
                None => first_frames = Some(frames),
                Some(f) if *f != frames => {
                    return Err(Error::media(
                        &path,
                        "the forward and indexed decodes gave different frames",
                    ))
                }
                Some(_) => {}
            }
            totals[which].push(total);
            if best[which]
                .as_ref()
                .is_none_or(|b| tm.total_s() < b.total_s())
            {
                best[which] = Some(tm);
            }
        }
    }
    let [Some(a), Some(b)] = best else {
        unreachable!("every round times both paths")
    };
    let (s, w, h, fps) = clip.shape();
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "media: {s} s {w}x{h} {fps} fps H.264 ({} frames, {} keyframes, {:.0} MB; packet index {:.3} s) -> {} sampled frames at {}x{} ({} patch rows), {threads} threads",
        a.frames_total,
        ix.start_count(),
        bytes as f64 / 1e6,
        ix_s,
        a.frames_sampled,
        a.resized_size.1,
        a.resized_size.0,
        a.rows,
    );
    let _ = writeln!(
        out,
        "fastest of {} alternating rounds each:    forward (all frames)   indexed (keyframe runs)",
        rounds.max(1)
    );
    let row = |out: &mut String, name: &str, x: f64, y: f64| {
        let _ = writeln!(out, "  {name:<14} {x:>22.3} s {y:>22.3} s");
    };
    row(&mut out, "probe/index", a.probe_s, b.probe_s);
    row(&mut out, "decode", a.decode_s, b.decode_s);
    row(&mut out, "resize", a.resize_s, b.resize_s);
    row(&mut out, "patchify", a.patchify_s, b.patchify_s);
    row(&mut out, "total", a.total_s(), b.total_s());
    let _ = writeln!(
        out,
        "  {:<14} {:>24} {:>24}",
        "frames decoded", a.frames_decoded, b.frames_decoded
    );
    // The decoders' own rate bounds each path: decode time ~ frames decoded / rate.
    let _ = writeln!(
        out,
        "  {:<14} {:>20.1} f/s {:>20.1} f/s",
        "decode rate",
        a.frames_decoded as f64 / a.decode_s,
        b.frames_decoded as f64 / b.decode_s
    );
    let _ = writeln!(
        out,
        "speedup {:.2}x total, {:.2}x decode; frames identical; indexed path: {}",
        a.total_s() / b.total_s(),
        a.decode_s / b.decode_s,
        b.path
    );
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = write!(
        out,
        "every round's wall time: forward [{}] s, indexed [{}] s",
        fmt(&totals[0]),
        fmt(&totals[1])
    );
    Ok(out)
}

/// Without the `video` feature there is nothing to time.
#[cfg(not(feature = "video"))]
pub fn compare(clip: BenchClip, _preset: &Preset, _rounds: usize) -> Result<String> {
    Err(Error::Other(format!(
        "{clip:?}: this build has no video support (cargo feature `video` is off)"
    )))
}
