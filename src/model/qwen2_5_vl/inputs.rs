//! From a conversation to Qwen2.5-VL inputs: media files are decoded, sampled, resized and cut
//! into patch rows exactly as qwen-vl-utils + the transformers processor do, the chat template
//! is rendered, and each vision pad is expanded to the item's merged-token count.

use super::config::ModelConfig;
use crate::error::{Error, Result};
use crate::media::{self, PatchParams};
use crate::model::inputs::{MediaOptions, Prepared, VideoTime, VisionInput};
use crate::model::Model;
use crate::prompt::messages::{ContentItem, Message};
use crate::prompt::{encode_prompt, expand_pads, PadIds, RenderOptions, VisionKind};
use std::time::Instant;

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
    cfg: &ModelConfig,
    model: &Model,
    messages: &[Message],
    system: Option<&str>,
    opts: &MediaOptions,
) -> Result<Prepared> {
    let mut decode_s = 0.0;
    let t0 = Instant::now();
    let params = patch_params(model);
    let merge = cfg.vision.spatial_merge_size;
    // t·h·w / merge² tokens per item.
    let tokens = |rows: &media::PixelRows| {
        let [t, h, w] = rows.grid_thw;
        t * (h / merge) * (w / merge)
    };
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
                        tokens: tokens(&rows),
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
                        tokens: tokens(&rows),
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
    let counts: Vec<(VisionKind, usize)> = vision.iter().map(|v| (v.kind, v.tokens)).collect();
    let pads = PadIds {
        image_pad: cfg.tokens.image_pad,
        video_pad: cfg.tokens.video_pad,
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
