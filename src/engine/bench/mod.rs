//! `reel bench`: end-to-end speed on synthetic weights of the real model shape, every figure
//! printed beside its ceiling.
//!
//! What one run measures (the language model always, the rest on request):
//! - prefill of `prompt_len` tokens (tokens/s, TFLOP/s) and decode right after it;
//! - decode at chosen context lengths (`decode_at`), the cache filled by
//!   [`TextRunner::advance`] instead of a prefill (decode cost does not depend on the values);
//! - the Video-R1 evaluation input (`video_r1`): vision tower over 32 frames of 448×448
//!   (256·28·28 px), prefill of its 4096 visual + ~150 text tokens with the vision rows
//!   scattered in, and the first sampled token, i.e. time to first token split by stage.
//!
//! Weights are the model's tensor inventory filled with deterministic pseudo-random values in
//! the preset's per-tensor storage types ([`choose_type`], the rule `reel-quantize` applies),
//! quantized in memory and loaded through the same checks and uploads as a checkpoint
//! ([`SyntheticStore`]); each tensor repeats a block of 64 distinct rows, which keeps
//! generating 7B-sized weights quick ([`synthetic`]). Ceilings ([`report::Ceilings`]): on the
//! CPU the host read bandwidth measured in the same run; on CUDA the datasheet DRAM bandwidth
//! and dense bf16 tensor throughput of the device.
//! Runs with fewer layers or blocks than the model also print full-depth figures, extrapolated
//! at the measured GB/s (decode) or TFLOP/s (vision, prefill), and say so.

mod batch;
mod report;
mod synthetic;

pub use report::*;
pub use synthetic::*;

use super::sampling::{Sampler, SamplingParams};
use super::{open_backend, EngineOptions, TextRunner};
use crate::backend::{Backend, MemStats};
use crate::error::{Error, Result};
use crate::model::config::TextConfig;
use crate::model::qwen2_5_vl::positions::{self, VisionKind, VisionSpan};
use crate::model::qwen2_5_vl::vision::{self, VisionWeightRefs};
use crate::model::qwen2_5_vl::{self as qwen, VisionConfig};
use crate::quantize::preset::Preset;
use crate::tensor::DType;
use rayon::prelude::*;
use std::fmt::Write;
use std::time::Instant;

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// `7b` or `tiny`.
    pub shape: String,
    /// Decoder layers to instantiate (None: all on CUDA, 4 on the CPU).
    pub layers: Option<usize>,
    /// `bf16`, `q8_0` or `q4_k_m`.
    pub weights: String,
    pub prompt_len: usize,
    pub decode_tokens: usize,
    /// Context lengths to time decode at.
    pub decode_at: Vec<usize>,
    /// KV capacity in tokens (None: just enough for every measurement).
    pub ctx: Option<usize>,
    /// Also time the Video-R1 evaluation input.
    pub video_r1: bool,
    /// Vision blocks for `video_r1` (None: all on CUDA, 4 on the CPU).
    pub vision_layers: Option<usize>,
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    /// Text tokens around the video in the Video-R1 prompt.
    pub text_tokens: usize,
    /// Batch sizes to time batched decode at (each sequence at `prompt_len` cached tokens).
    pub batch: Vec<usize>,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            shape: "7b".into(),
            layers: None,
            weights: "bf16".into(),
            prompt_len: 128,
            decode_tokens: 16,
            decode_at: Vec::new(),
            ctx: None,
            video_r1: false,
            vision_layers: None,
            // Video-R1's evaluation: 32 frames at 256·28·28 px (448×448 when square).
            frames: 32,
            height: 448,
            width: 448,
            text_tokens: 150,
            batch: Vec::new(),
        }
    }
}

/// Checks every flag against the shape before anything is allocated.
fn validate(cfg: &BenchConfig, shape: &SyntheticShape) -> Result<Preset> {
    let preset: Preset = cfg.weights.parse().map_err(|e: String| {
        Error::flag("--weights", e.replace("quantization type", "weights type"))
    })?;
    let full = shape.text.num_hidden_layers;
    if let Some(l) = cfg.layers {
        if l == 0 || l > full {
            return Err(Error::flag(
                "--layers",
                format!("must be in 1..={full}, got {l}"),
            ));
        }
    }
    if cfg.prompt_len == 0 {
        return Err(Error::flag("--prompt-len", "must be at least 1"));
    }
    if cfg.decode_tokens == 0 {
        return Err(Error::flag("--decode-tokens", "must be at least 1"));
    }
    if cfg.batch.contains(&0) {
        return Err(Error::flag("--batch", "batch sizes must be at least 1"));
    }
    if cfg.decode_at.contains(&0) {
        return Err(Error::flag(
            "--decode-at",
            "context lengths must be at least 1",
        ));
    }
    if let Some(ctx) = cfg.ctx {
        if cfg.prompt_len + cfg.decode_tokens > ctx {
            return Err(Error::flag(
                "--ctx",
                format!(
                    "{ctx} tokens cannot hold --prompt-len {} + --decode-tokens {}",
                    cfg.prompt_len, cfg.decode_tokens
                ),
            ));
        }
        if let Some(&c) = cfg.decode_at.iter().find(|&&c| c + cfg.decode_tokens > ctx) {
            return Err(Error::flag(
                "--decode-at",
                format!(
                    "context {c} + {} decode tokens exceeds --ctx {ctx}",
                    cfg.decode_tokens
                ),
            ));
        }
    }
    if cfg.video_r1 {
        let vfull = shape.vision.depth;
        if let Some(l) = cfg.vision_layers {
            if l == 0 || l > vfull {
                return Err(Error::flag(
                    "--vision-layers",
                    format!("must be in 1..={vfull}, got {l}"),
                ));
            }
        }
        check_frames(cfg.frames, cfg.height, cfg.width)?;
        if cfg.text_tokens < 4 {
            return Err(Error::flag(
                "--text-tokens",
                "the prompt needs at least 4 text tokens around the video",
            ));
        }
        if let Some(ctx) = cfg.ctx {
            let need = video_r1_tokens(cfg, shape) + 1;
            if need > ctx {
                return Err(Error::flag(
                    "--ctx",
                    format!("the Video-R1 prompt needs {need} tokens but --ctx is {ctx}"),
                ));
            }
        }
    } else if cfg.vision_layers.is_some() {
        return Err(Error::flag("--vision-layers", "needs --video-r1"));
    }
    Ok(preset)
}

/// Frames of the synthetic video: pairs (the temporal patch), sides whole 28-pixel merge units.
fn check_frames(frames: usize, height: usize, width: usize) -> Result<()> {
    if frames == 0
        || !frames.is_multiple_of(2)
        || height == 0
        || width == 0
        || !height.is_multiple_of(28)
        || !width.is_multiple_of(28)
    {
        return Err(Error::flag(
            "--frames/--height/--width",
            "need an even frame count and sides that are positive multiples of 28",
        ));
    }
    Ok(())
}

fn video_r1_grid(cfg: &BenchConfig, shape: &SyntheticShape) -> [usize; 3] {
    let v = &shape.vision;
    [
        cfg.frames / v.temporal_patch_size,
        cfg.height / v.patch_size,
        cfg.width / v.patch_size,
    ]
}

fn video_r1_tokens(cfg: &BenchConfig, shape: &SyntheticShape) -> usize {
    let g = video_r1_grid(cfg, shape);
    let m = shape.vision.spatial_merge_size;
    g[0] * g[1] * g[2] / (m * m) + cfg.text_tokens
}

/// Runs the benchmark on the backend `opts` names.
pub fn run(cfg: &BenchConfig, opts: &EngineOptions) -> Result<BenchReport> {
    let shape = SyntheticShape::parse(&cfg.shape)?;
    let preset = validate(cfg, &shape)?;
    let max_decode_ctx = cfg.decode_at.iter().copied().max().unwrap_or(0);
    let mut need = (cfg.prompt_len.max(max_decode_ctx)) + cfg.decode_tokens;
    if cfg.video_r1 {
        need = need.max(video_r1_tokens(cfg, &shape) + 1);
    }
    let ctx = cfg.ctx.unwrap_or(need);
    let opts = EngineOptions {
        ctx,
        ..opts.clone()
    };
    opts.validate()?;
    let mut be = open_backend(opts.device)?;
    let on_cuda = be.name().starts_with("cuda");
    let full = shape.text.num_hidden_layers;
    // The whole model fits a GPU; on the CPU a few layers keep a run to seconds.
    let layers = cfg
        .layers
        .unwrap_or(if on_cuda { full } else { full.min(4) });

    // Far larger than the caches; the tiny test shape only checks the plumbing.
    let host_bytes = if shape.name == "tiny" {
        16 << 20
    } else {
        512 << 20
    };
    let ceilings = Ceilings::of(be.as_ref(), host_bytes);

    let t0 = Instant::now();
    let (refs, specs) = synthetic_text(be.as_mut(), &shape.text, layers, preset)?;
    let vision = if cfg.video_r1 {
        let vfull = shape.vision.depth;
        let depth = cfg
            .vision_layers
            .unwrap_or(if on_cuda { vfull } else { vfull.min(4) });
        let vcfg = VisionConfig {
            depth,
            fullatt_block_indexes: shape
                .vision
                .fullatt_block_indexes
                .iter()
                .copied()
                .filter(|&i| i < depth)
                .collect(),
            ..shape.vision.clone()
        };
        let w = synthetic_vision(be.as_mut(), &vcfg)?;
        Some((vcfg, w))
    } else {
        None
    };
    be.sync()?;
    let generate_s = t0.elapsed().as_secs_f64();

    let mut counts: Vec<(String, usize)> = Vec::new();
    for s in &specs {
        match counts.iter_mut().find(|(t, _)| t == s.dtype.name()) {
            Some(c) => c.1 += 1,
            None => counts.push((s.dtype.name().to_string(), 1)),
        }
    }
    let model = ModelReport {
        shape: shape.name.into(),
        layers,
        full_layers: full,
        weights: preset.name().into(),
        activations: opts.act.name().into(),
        tensor_types: counts,
        weight_bytes: specs.iter().map(|s| s.bytes() as u64).sum(),
        generate_s,
    };

    let text_cfg = TextConfig {
        num_hidden_layers: layers,
        ..shape.text.clone()
    };
    let text_model = qwen::Text {
        cfg: text_cfg.clone(),
        weights: refs,
    };
    let mut runner = TextRunner::new(
        be.as_mut(),
        Box::new(text_model),
        opts.act,
        ctx,
        opts.page_size,
    )?;
    let kv_pool_bytes = runner.kv_pool_bytes() as u64;

    let video_r1 = match &vision {
        Some((vcfg, w)) => Some(run_video_r1(
            be.as_mut(),
            &mut runner,
            &text_cfg,
            &shape,
            vcfg,
            w,
            cfg,
            opts.act,
            &ceilings,
        )?),
        None => None,
    };

    // Prefill, then decode from there.
    runner.reset(be.as_mut())?;
    let vocab = shape.text.vocab_size as u32;
    let ids: Vec<u32> = (0..cfg.prompt_len as u32)
        .map(|i| (i * 7919) % vocab)
        .collect();
    let pos: Vec<i32> = (0..3).flat_map(|_| 0..cfg.prompt_len as i32).collect();
    // One untimed prefill first (as llama-bench warms up): the first run of each shape pays
    // for one-time work (scratch buffers and their page faults, kernel loads) a user pays once.
    runner.forward(be.as_mut(), &ids, &pos, None)?;
    be.sync()?;
    runner.reset(be.as_mut())?;
    let t1 = Instant::now();
    runner.forward(be.as_mut(), &ids, &pos, None)?;
    be.sync()?;
    let prefill_s = t1.elapsed().as_secs_f64();
    let pf = prefill_flops(&text_cfg, layers, cfg.prompt_len);
    let prefill = PrefillReport {
        tokens: cfg.prompt_len,
        seconds: prefill_s,
        tokens_per_s: cfg.prompt_len as f64 / prefill_s,
        tflops: pf / prefill_s / 1e12,
        compute_fraction: ceilings
            .compute_for(preset != Preset::Bf16)
            .map(|p| pf / prefill_s / 1e12 / p),
    };

    let full_specs = text_specs(&shape.text, full, preset);
    let (wbytes, full_wbytes) = (
        decode_weight_bytes(&specs),
        decode_weight_bytes(&full_specs),
    );
    let kv_per_token_layer =
        2 * shape.text.num_key_value_heads * opts.act.bytes_for(shape.text.head_dim);
    let mut decode = Vec::new();
    let mut contexts = vec![cfg.prompt_len];
    contexts.extend_from_slice(&cfg.decode_at);
    for (i, &context) in contexts.iter().enumerate() {
        if i > 0 {
            runner.reset(be.as_mut())?;
            runner.advance(be.as_mut(), context)?;
        }
        let mut step_s = Vec::with_capacity(cfg.decode_tokens);
        for s in 0..cfg.decode_tokens {
            let p = (context + s) as i32;
            let t = Instant::now();
            runner.forward(
                be.as_mut(),
                &[(s as u32 * 31 + 17) % vocab],
                &[p, p, p],
                None,
            )?;
            be.sync()?;
            step_s.push(t.elapsed().as_secs_f64());
        }
        step_s.sort_by(f64::total_cmp);
        let median = step_s[step_s.len() / 2];
        // Attention reads the cache as it stands at each step: on average the middle one.
        let avg_ctx = context + cfg.decode_tokens / 2 + 1;
        let kv = (layers * avg_ctx * kv_per_token_layer) as u64;
        let full_kv = (full * avg_ctx * kv_per_token_layer) as u64;
        let bytes = wbytes as f64 + kv as f64;
        let full_bytes = full_wbytes as f64 + full_kv as f64;
        let gbps = bytes / median / 1e9;
        decode.push(DecodeReport {
            context,
            steps: cfg.decode_tokens,
            median_ms: median * 1e3,
            tokens_per_s: 1.0 / median,
            weight_bytes_per_token: wbytes as u64,
            kv_bytes_per_token: kv,
            gbps,
            bound_tokens_per_s: ceilings.bandwidth_gbps.map(|b| b * 1e9 / bytes),
            bandwidth_fraction: ceilings.bandwidth_gbps.map(|b| gbps / b),
            full_bytes_per_token: full_bytes as u64,
            full_tokens_per_s: gbps * 1e9 / full_bytes,
            full_bound_tokens_per_s: ceilings.bandwidth_gbps.map(|b| b * 1e9 / full_bytes),
        });
    }

    let batched = if cfg.batch.is_empty() {
        Vec::new()
    } else {
        batch::run(
            be.as_mut(),
            runner.model(),
            &batch::BatchShape {
                cfg: &text_cfg,
                layers,
                full_layers: full,
                weight_bytes: wbytes as u64,
                full_weight_bytes: full_wbytes as u64,
            },
            opts.act,
            opts.page_size,
            &cfg.batch,
            cfg.prompt_len,
            cfg.decode_tokens,
            &ceilings,
        )?
    };

    let memory = MemoryReport {
        peak_device_bytes: be.memory_stats().map(|m: MemStats| m.peak_bytes),
        peak_rss_bytes: peak_rss_bytes(),
        kv_pool_bytes,
    };
    Ok(BenchReport {
        backend: be.name(),
        model,
        ceilings,
        prefill,
        decode,
        batched,
        video_r1,
        memory,
    })
}

/// Vision tower, prefill with the vision rows scattered in, first sampled token.
#[allow(clippy::too_many_arguments)]
fn run_video_r1(
    be: &mut dyn Backend,
    runner: &mut TextRunner,
    text_cfg: &TextConfig,
    shape: &SyntheticShape,
    vcfg: &VisionConfig,
    vw: &VisionWeightRefs,
    cfg: &BenchConfig,
    act: DType,
    ceilings: &Ceilings,
) -> Result<VideoR1Report> {
    let grid = video_r1_grid(cfg, shape);
    let patches = grid.iter().product::<usize>();
    let m = vcfg.spatial_merge_size;
    let visual = patches / (m * m);
    let row = vcfg.in_channels * vcfg.temporal_patch_size * vcfg.patch_size * vcfg.patch_size;
    let pixels: Vec<f32> = (0..patches * row)
        .into_par_iter()
        .map(|i| ((i * 2_654_435_761) % 1000) as f32 / 500.0 - 1.0)
        .collect();

    // The chat template's shape: a header, <|vision_start|>, the pads, <|vision_end|>, the
    // question and the Video-R1 instructions.
    let vocab = shape.text.vocab_size as u32;
    let head = 14.min(cfg.text_tokens - 2);
    let mut ids: Vec<u32> = (0..head as u32)
        .map(|i| (i * 7919 + 3) % 150_000 % vocab)
        .collect();
    ids.push(shape.vision_start);
    let pads_at = ids.len();
    ids.extend(std::iter::repeat_n(shape.video_pad, visual));
    ids.push(shape.vision_end);
    let tail = cfg.text_tokens - head - 2;
    ids.extend((0..tail as u32).map(|i| (i * 104_729 + 11) % 150_000 % vocab));
    let pads: Vec<i32> = (pads_at..pads_at + visual).map(|i| i as i32).collect();
    let span = VisionSpan {
        kind: VisionKind::Video,
        grid_thw: grid,
        second_per_grid_t: 1.0,
    };
    let (rows, _) = positions::rope_index(
        &ids,
        &[span],
        u32::MAX,
        shape.video_pad,
        m,
        vcfg.tokens_per_second,
        false,
    )?;
    let pos = positions::to_row_major(&rows);

    runner.reset(be)?;
    let tv = Instant::now();
    let t = vision::encode(be, vw, vcfg, &pixels, &[grid], act)?;
    be.sync()?;
    let vision_s = tv.elapsed().as_secs_f64();

    let tp = Instant::now();
    let logits = runner.forward(be, &ids, &pos, Some((t, pads.as_slice())));
    be.free(t.buf);
    let logits = logits?;
    let prefill_s = tp.elapsed().as_secs_f64();

    let tf = Instant::now();
    let mut sampler = Sampler::new(SamplingParams::default())?;
    std::hint::black_box(sampler.sample(&logits, &ids)?);
    let first_token_s = tf.elapsed().as_secs_f64();

    let layers = text_cfg.num_hidden_layers;
    let full_layers = shape.text.num_hidden_layers;
    let vflops = vision_flops(vcfg, grid, vcfg.depth)?;
    let vflops_full = vision_flops(&shape.vision, grid, shape.vision.depth)?;
    let pflops = prefill_flops(text_cfg, layers, ids.len());
    let pflops_full = prefill_flops(&shape.text, full_layers, ids.len());
    let full_vision_s = vision_s * vflops_full / vflops;
    let full_prefill_s = prefill_s * pflops_full / pflops;
    let frac = |flops: f64, s: f64| ceilings.compute_tflops.map(|p| flops / s / 1e12 / p);
    Ok(VideoR1Report {
        frames: cfg.frames,
        height: cfg.height,
        width: cfg.width,
        grid_thw: grid,
        patches,
        visual_tokens: visual,
        text_tokens: cfg.text_tokens,
        prompt_tokens: ids.len(),
        vision_layers: vcfg.depth,
        vision_full_layers: shape.vision.depth,
        text_layers: layers,
        text_full_layers: full_layers,
        vision_s,
        prefill_s,
        first_token_s,
        ttft_s: vision_s + prefill_s + first_token_s,
        prefill_tokens_per_s: ids.len() as f64 / prefill_s,
        vision_tflops: vflops / vision_s / 1e12,
        prefill_tflops: pflops / prefill_s / 1e12,
        vision_compute_fraction: frac(vflops, vision_s),
        prefill_compute_fraction: frac(pflops, prefill_s),
        extrapolated: vcfg.depth < shape.vision.depth || layers < full_layers,
        full_vision_s,
        full_prefill_s,
        full_ttft_s: full_vision_s + full_prefill_s + first_token_s,
    })
}

/// Times the vision tower on `frames` frames of `height`×`width` pixels (multiples of 28),
/// with `depth` of the 32 blocks; reports time per frame and per visual token, and the
/// extrapolation to all 32 blocks.
pub fn run_vision_synthetic(
    depth: usize,
    frames: usize,
    height: usize,
    width: usize,
    opts: EngineOptions,
) -> Result<String> {
    if depth == 0 || depth > 32 {
        return Err(Error::flag(
            "--layers",
            "the vision tower has 1..=32 blocks",
        ));
    }
    check_frames(frames, height, width)?;
    opts.validate()?;
    let cfg = vision_config_7b(depth);
    let mut be = open_backend(opts.device)?;
    let w = synthetic_vision(be.as_mut(), &cfg)?;
    let grid = [frames / 2, height / 14, width / 14];
    let n = grid.iter().product::<usize>();
    let rows: Vec<f32> = (0..n * 1176)
        .map(|i| ((i * 2_654_435_761) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    // One untimed run first, as the text bench warms up: thread pools, per-thread scratch.
    let warm = vision::encode(be.as_mut(), &w, &cfg, &rows, &[grid], opts.act)?;
    be.sync()?;
    be.free(warm.buf);
    let t = Instant::now();
    let out = vision::encode(be.as_mut(), &w, &cfg, &rows, &[grid], opts.act)?;
    be.sync()?;
    let s = t.elapsed().as_secs_f64();
    be.free(out.buf);
    let tokens = out.shape.rows();
    let full = s * 32.0 / depth as f64;
    // All the work timed: patch embedding, projections, attention, merger.
    let flops = vision_flops(&cfg, grid, depth)?;
    let peak = be.measured_compute_peak();
    let mut r = String::new();
    let _ = writeln!(r, "backend: {}", be.name());
    let _ = writeln!(
        r,
        "vision: synthetic Qwen2.5-VL-7B ViT, {depth} of 32 blocks, {frames} frames of {height}x{width} -> {n} patches, {tokens} visual tokens, {} activations",
        opts.act
    );
    let _ = writeln!(
        r,
        "time {s:.3} s = {:.1} ms/frame, {:.2} ms/visual token ({:.1} GFLOP/s{}); all 32 blocks: ~{:.2} s = {:.1} ms/frame",
        s * 1e3 / frames as f64,
        s * 1e3 / tokens as f64,
        flops / s / 1e9,
        peak.as_ref().map_or(String::new(), |(tf, what)| format!(
            ", {:.0}% of {} ({what})",
            100.0 * flops / s / (tf * 1e12),
            crate::backend::harness::perf::tflops(*tf)
        )),
        full,
        full * 1e3 / frames as f64
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_flags_are_refused_before_any_work() {
        let tiny = SyntheticShape::parse("tiny").unwrap();
        let check = |c: BenchConfig, flag: &str| {
            let e = validate(&c, &tiny).unwrap_err().to_string();
            assert!(e.contains(flag), "{e}");
        };
        let base = BenchConfig {
            shape: "tiny".into(),
            ..BenchConfig::default()
        };
        check(
            BenchConfig {
                weights: "q5_k".into(),
                ..base.clone()
            },
            "--weights",
        );
        check(
            BenchConfig {
                layers: Some(3),
                ..base.clone()
            },
            "--layers",
        );
        check(
            BenchConfig {
                decode_at: vec![0],
                ..base.clone()
            },
            "--decode-at",
        );
        check(
            BenchConfig {
                batch: vec![1, 0],
                ..base.clone()
            },
            "--batch",
        );
        check(
            BenchConfig {
                decode_at: vec![100],
                ctx: Some(200),
                prompt_len: 4,
                decode_tokens: 101,
                ..base.clone()
            },
            "--decode-at",
        );
        check(
            BenchConfig {
                video_r1: true,
                frames: 3,
                ..base.clone()
            },
            "--frames",
        );
        check(
            BenchConfig {
                vision_layers: Some(1),
                ..base.clone()
            },
            "--vision-layers",
        );
        assert!(validate(&base, &tiny).is_ok());
    }
}

#[cfg(test)]
mod ceiling_tests {
    use super::report::Ceilings;

    fn ceilings(bf16: Option<f64>, int8: Option<f64>) -> Ceilings {
        Ceilings {
            bandwidth_gbps: None,
            bandwidth_source: String::new(),
            host_copy_gbps: None,
            compute_tflops: bf16,
            compute_source: String::new(),
            int8_tops: int8,
            int8_source: String::new(),
        }
    }

    #[test]
    fn quantized_runs_are_measured_against_the_higher_peak() {
        // An AVX-512 CPU: the int8 dot outruns the bf16 dot; an AMX one: the tiles outrun both.
        let c = ceilings(Some(0.2), Some(0.77));
        assert_eq!(c.compute_for(true), Some(0.77));
        assert_eq!(c.compute_for(false), Some(0.2));
        let c = ceilings(Some(6.0), Some(0.77));
        assert_eq!(c.compute_for(true), Some(6.0));
        assert_eq!(ceilings(None, Some(0.5)).compute_for(false), None);
        assert_eq!(ceilings(None, Some(0.5)).compute_for(true), Some(0.5));
    }
}
