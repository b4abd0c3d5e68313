//! From a conversation to model inputs: media files are decoded, sampled, resized and cut into
//! patch rows exactly as qwen-vl-utils + the transformers processor do, the chat template is
//! rendered, and each vision pad is expanded to the item's merged-token count.

use crate::error::{Error, Result};
use crate::media::{self, PatchParams, PixelRows, Preset};
use crate::model::positions::{VisionKind as SpanKind, VisionSpan};
use crate::model::Model;
use crate::prompt::messages::{ContentItem, Message};
use crate::prompt::{encode_prompt, expand_pads, PadIds, RenderOptions, VisionKind};
use std::path::PathBuf;
use std::time::Instant;

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
}

impl VisionInput {
    /// Tokens this item occupies in the prompt (t·h·w / merge²).
    pub fn n_tokens(&self, merge: usize) -> usize {
        let [t, h, w] = self.rows.grid_thw;
        t * (h / merge) * (w / merge)
    }

    pub fn span(&self) -> VisionSpan {
        VisionSpan {
            kind: match self.kind {
                VisionKind::Image => SpanKind::Image,
                VisionKind::Video => SpanKind::Video,
            },
            grid_thw: self.rows.grid_thw,
            second_per_grid_t: self.second_per_grid_t,
        }
    }
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

fn opt_f64(v: Option<u64>) -> Option<f64> {
    v.map(|x| x as f64)
}

fn patch_params(model: &Model) -> PatchParams {
    let p = &model.preprocessor;
    PatchParams {
        patch_size: p.patch_size,
        temporal_patch_size: p.temporal_patch_size,
        merge_size: p.merge_size,
        rescale_factor: 1.0 / 255.0,
        mean: p.image_mean,
        std: p.image_std,
    }
}

/// Loads every image and video of `messages` and tokenizes the conversation.
pub fn prepare(
    model: &Model,
    messages: &[Message],
    system: Option<&str>,
    opts: &MediaOptions,
) -> Result<Prepared> {
    let mut decode_s = 0.0;
    let t0 = Instant::now();
    let params = patch_params(model);
    let merge = model.config.vision.spatial_merge_size;
    let mut vision = Vec::new();
    for msg in messages {
        for item in &msg.content {
            match item {
                ContentItem::Text(_) => {}
                ContentItem::Image(im) => {
                    let req = media::ImageRequest {
                        min_pixels: opt_f64(im.min_pixels),
                        max_pixels: opt_f64(im.max_pixels),
                        resized: im
                            .resized_height
                            .zip(im.resized_width)
                            .map(|(h, w)| (h as u32, w as u32)),
                    };
                    let td = Instant::now();
                    let loaded = media::load_image(&im.path, &opts.preset, &req)?;
                    decode_s += td.elapsed().as_secs_f64();
                    let size = (loaded.frames.h, loaded.frames.w);
                    let rows = media::pixels::patchify(&loaded.frames, &params)?;
                    vision.push(VisionInput {
                        kind: VisionKind::Image,
                        path: im.path.clone(),
                        rows,
                        second_per_grid_t: 0.0,
                        frames_sampled: None,
                        size,
                    });
                }
                ContentItem::Video(v) => {
                    let req = media::VideoRequest {
                        frames: media::FrameRequest {
                            fps: v.fps,
                            nframes: opt_f64(v.nframes),
                            min_frames: opt_f64(v.min_frames),
                            max_frames: opt_f64(v.max_frames),
                        },
                        pixels: media::VideoPixelRequest {
                            min_pixels: opt_f64(v.min_pixels),
                            max_pixels: opt_f64(v.max_pixels),
                            total_pixels: v.total_pixels,
                        },
                        resized: v
                            .resized_height
                            .zip(v.resized_width)
                            .map(|(h, w)| (h as u32, w as u32)),
                    };
                    let td = Instant::now();
                    let loaded = media::load_video(&v.path, &opts.preset, &req)?;
                    decode_s += td.elapsed().as_secs_f64();
                    let size = (loaded.frames.h, loaded.frames.w);
                    let n = loaded.frames.t;
                    let rows = media::pixels::patchify(&loaded.frames, &params)?;
                    let s = match opts.video_time {
                        VideoTime::Sampled => media::sample::second_per_grid_ts(
                            params.temporal_patch_size as u32,
                            loaded.sample_fps,
                        ),
                        VideoTime::Fixed => 1.0,
                    };
                    vision.push(VisionInput {
                        kind: VisionKind::Video,
                        path: v.path.clone(),
                        rows,
                        second_per_grid_t: s,
                        frames_sampled: Some(n),
                        size,
                    });
                }
            }
        }
    }
    let messages = crate::prompt::template::apply_system_prompt(messages.to_vec(), system)?;
    let enc = encode_prompt(
        &model.tokenizer,
        &model.template,
        &messages,
        &RenderOptions::default(),
    )?;
    let counts: Vec<(VisionKind, usize)> =
        vision.iter().map(|v| (v.kind, v.n_tokens(merge))).collect();
    let pads = PadIds {
        image_pad: model.config.tokens.image_pad,
        video_pad: model.config.tokens.video_pad,
    };
    let prompt_tokens = if counts.is_empty() {
        enc.ids
    } else {
        expand_pads(&enc.ids, pads, &counts)?
    };
    if prompt_tokens.is_empty() {
        return Err(Error::Prompt("the prompt is empty".into()));
    }
    Ok(Prepared {
        prompt_tokens,
        vision,
        decode_s,
        preprocess_s: t0.elapsed().as_secs_f64() - decode_s,
    })
}

/// Decode + preprocess time of a 1-minute 720p 30 fps H.264 clip (generated in `dir` with the
/// ffmpeg CLI) at the default (Video-R1 evaluation) settings, as a printable line.
#[cfg(not(feature = "video"))]
pub fn bench_media(dir: &std::path::Path) -> Result<String> {
    Err(Error::media(
        dir,
        "this build has no video support (cargo feature `video` is off)",
    ))
}

/// Decode + preprocess time of a 1-minute 720p 30 fps H.264 clip (generated in `dir` with the
/// ffmpeg CLI) at the default (Video-R1 evaluation) settings, as a printable line.
#[cfg(feature = "video")]
pub fn bench_media(dir: &std::path::Path) -> Result<String> {
    let t = media::bench::bench_720p_minute(dir, &MediaOptions::default().preset)?;
    Ok(format!(
        "media: 60 s 1280x720 30 fps H.264 ({} frames) -> {} sampled frames at {}x{} ({} patch rows): decode {:.3} s, resize {:.3} s, patchify {:.3} s, total {:.3} s",
        t.frames_total,
        t.frames_sampled,
        t.resized_size.1,
        t.resized_size.0,
        t.rows,
        t.probe_and_decode_s,
        t.resize_s,
        t.patchify_s,
        t.total_s()
    ))
}
