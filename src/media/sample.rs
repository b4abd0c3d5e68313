//! Frame sampling as qwen-vl-utils does it: how many frames (`smart_nframes`), which ones
//! (`torch.linspace(0, total-1, n).round()` in float32), the resulting fps, and the per-frame
//! pixel budget of a video.

use super::Preset;

/// Per-video sampling requests (the `fps` / `nframes` / `min_frames` / `max_frames` keys of a
/// qwen-vl-utils message element). `fps` and `nframes` are mutually exclusive.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FrameRequest {
    pub fps: Option<f64>,
    pub nframes: Option<f64>,
    pub min_frames: Option<f64>,
    pub max_frames: Option<f64>,
}

/// Number of frames to sample from a video of `total_frames` frames at `video_fps`.
pub fn smart_nframes(
    req: &FrameRequest,
    total_frames: u64,
    video_fps: f64,
    preset: &Preset,
) -> Result<u64, String> {
    let ff = preset.frame_factor as f64;
    let total = total_frames as f64;
    let n = if let Some(nf) = req.nframes {
        if req.fps.is_some() {
            return Err("give either fps or nframes, not both".into());
        }
        (nf / ff).round_ties_even() * ff
    } else {
        let fps = req.fps.unwrap_or(preset.fps);
        let min_frames = (req.min_frames.unwrap_or(preset.fps_min_frames as f64) / ff).ceil() * ff;
        let max_frames = (req
            .max_frames
            .unwrap_or_else(|| (preset.fps_max_frames as f64).min(total))
            / ff)
            .floor()
            * ff;
        let n = total / video_fps * fps;
        let n = n.max(min_frames).min(max_frames).min(total);
        (n / ff).floor() * ff
    };
    if !(n >= ff && n <= total) {
        return Err(format!(
            "nframes should be in [{ff}, {total_frames}], got {n} (video has {total_frames} frames at {video_fps} fps)"
        ));
    }
    Ok(n as u64)
}

/// `torch.linspace(0, total-1, n, dtype=float32).round().long()` as the PyTorch CPU kernel
/// computes it: step = (end - start) / (n - 1) in f32; an element before n/2 is
/// `start + step*i`, one after is `end - step*(n-1-i)`. The kernel's vectorized body
/// (`vector_width` lanes, two vectors per iteration) instead computes a lane as
/// `base + k*step` from the first lane's value `base`, choosing the half by the first lane;
/// the tail after the last whole pair of vectors is scalar. `vector_width` 1 is the pure
/// scalar formula. Rounding is half-to-even.
pub fn linspace_indices_f32(total_frames: u64, n: u64, vector_width: usize) -> Vec<u64> {
    if n == 0 {
        return Vec::new();
    }
    let start = 0f32;
    let end = (total_frames.saturating_sub(1)) as f32;
    if n == 1 {
        return vec![start.round_ties_even() as u64];
    }
    let steps = n as i64;
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    let scalar = |i: i64| -> f32 {
        if i < halfway {
            start + step * i as f32
        } else {
            end - step * (steps - i - 1) as f32
        }
    };
    let mut out = vec![0f32; n as usize];
    let mut i: i64 = 0;
    if vector_width > 1 {
        let w = vector_width as i64;
        while i + 2 * w <= steps {
            for v in 0..2 {
                let first = i + v * w;
                let base = scalar(first);
                for k in 0..w {
                    let val = if k == 0 { base } else { base + k as f32 * step };
                    out[(first + k) as usize] = val;
                }
            }
            i += 2 * w;
        }
    }
    while i < steps {
        out[i as usize] = scalar(i);
        i += 1;
    }
    out.into_iter()
        .map(|x| x.round_ties_even() as u64)
        .collect()
}

/// The frame indices qwen-vl-utils samples: float32 linspace over [0, total-1], rounded
/// half-to-even. Uses the 8-lane (AVX2) vectorized kernel, which matches the reference
/// tables (see tests/media.rs).
pub fn frame_indices(total_frames: u64, n: u64) -> Vec<u64> {
    linspace_indices_f32(total_frames, n, LINSPACE_VECTOR_WIDTH)
}

/// Lanes of PyTorch's vectorized linspace body on the machine the references came from.
pub const LINSPACE_VECTOR_WIDTH: usize = 8;

/// `nframes / total_frames * video_fps` (f64), the fps of the sampled frames.
pub fn sample_fps(nframes: u64, total_frames: u64, video_fps: f64) -> f64 {
    nframes as f64 / (total_frames as f64).max(1e-6) * video_fps
}

/// `temporal_patch_size / sample_fps` rounded to f32, as the 4.49 processor reports
/// `second_per_grid_ts`.
pub fn second_per_grid_ts(temporal_patch_size: u32, sample_fps: f64) -> f32 {
    (temporal_patch_size as f64 / sample_fps) as f32
}

/// Pixel limits of a video element (the `min_pixels` / `max_pixels` / `total_pixels` keys).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VideoPixelRequest {
    pub min_pixels: Option<f64>,
    pub max_pixels: Option<f64>,
    pub total_pixels: Option<f64>,
}

/// (max_pixels, min_pixels) per frame for a video of `nframes` sampled frames:
/// `max = max(min(VIDEO_MAX_PIXELS, total_pixels/n*FRAME_FACTOR), int(min_pixels*1.05))`,
/// then capped by a requested `max_pixels`.
pub fn video_frame_pixels(nframes: u64, req: &VideoPixelRequest, preset: &Preset) -> (f64, f64) {
    let min_p = req.min_pixels.unwrap_or(preset.video_min_pixels);
    let total_p = req.total_pixels.unwrap_or(preset.video_total_pixels);
    let budget =
        (total_p / nframes as f64 * preset.frame_factor as f64).min(preset.video_max_pixels);
    let mx = budget.max((min_p * 1.05).trunc());
    let mx = match req.max_pixels {
        Some(m) => m.min(mx),
        None => mx,
    };
    (mx, min_p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_example_24_frames_6fps() {
        let p = Preset::video_r1();
        let n = smart_nframes(&FrameRequest::default(), 24, 6.0, &p).unwrap();
        assert_eq!(n, 8);
        assert_eq!(frame_indices(24, n), vec![0, 3, 7, 10, 13, 16, 20, 23]);
        assert_eq!(sample_fps(n, 24, 6.0), 2.0);
        assert!(smart_nframes(
            &FrameRequest {
                nframes: Some(32.0),
                ..Default::default()
            },
            24,
            6.0,
            &p
        )
        .is_err());
    }

    #[test]
    fn video_r1_budget_is_clamped() {
        let p = Preset::video_r1();
        let req = VideoPixelRequest {
            max_pixels: Some(200704.0),
            ..Default::default()
        };
        assert_eq!(video_frame_pixels(32, &req, &p), (105369.0, 100352.0));
    }
}
