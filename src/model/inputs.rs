//! Model inputs before any architecture looks at them: media decoded, sampled, resized and
//! cut into patch rows, and the prompt with its vision pads expanded. Each architecture's
//! `prepare` fills these (see `Architecture::prepare`).

use crate::media::{PixelRows, Preset};
use crate::prompt::VisionKind;
use std::path::PathBuf;

/// How a video's temporal M-RoPE step is derived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VideoTime {
    /// `s = temporal_patch_size / sample_fps`: what Video-R1's evaluation passes (fps=[sample_fps]).
    Sampled,
    /// `s = 1.0`: what its training saw (the processor's default fps 2.0).
    Fixed,
}

#[derive(Clone, Debug)]
pub struct MediaOptions {
    /// qwen-vl-utils constants (defaults: Video-R1's evaluation settings).
    pub preset: Preset,
    pub video_time: VideoTime,
}

impl Default for MediaOptions {
    /// Video-R1's evaluation settings: frames up to 256·28·28 pixels, fps 2, up to 32 frames;
    /// images up to 256·28·28 pixels.
    fn default() -> Self {
        let mut preset = Preset::video_r1();
        preset.video_max_pixels = 256.0 * 784.0;
        preset.fps_max_frames = 32;
        MediaOptions {
            preset,
            video_time: VideoTime::Sampled,
        }
    }
}

/// One image or video, ready for the vision tower.
#[derive(Clone, Debug)]
pub struct VisionInput {
    pub kind: VisionKind,
    pub path: PathBuf,
    pub rows: PixelRows,
    /// Seconds per temporal patch (0 for images).
    pub second_per_grid_t: f32,
    /// Frames sampled from a video (None for images).
    pub frames_sampled: Option<usize>,
    /// Frame size fed to the patcher (height, width).
    pub size: (usize, usize),
    /// Vision tokens (pad tokens) the item occupies in the prompt.
    pub tokens: usize,
}

/// A tokenized prompt with its vision inputs in prompt order.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub prompt_tokens: Vec<u32>,
    pub vision: Vec<VisionInput>,
    /// Reading and decoding the files, frame sampling and resizing.
    pub decode_s: f64,
    /// Normalizing and patchifying, rendering and tokenizing the prompt.
    pub preprocess_s: f64,
}
