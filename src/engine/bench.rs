//! `reel bench`: prefill and decode speed on synthetic weights of the real model shape, printed
//! beside the memory-bandwidth bound measured on the same machine.

use super::{open_backend, EngineOptions, TextRunner};
use crate::backend::{Backend, HostBytes, TRef};
use crate::error::{Error, Result};
use crate::model::config::{TextConfig, VisionConfig};
use crate::model::text::{LayerRefs, TextRefs};
use crate::model::vision::{VisionBlockWeights, VisionWeightRefs};
use crate::tensor::{DType, Shape};
use rayon::prelude::*;
use std::fmt::Write;
use std::time::Instant;

/// The Qwen2.5-VL-7B language model with `layers` decoder layers.
pub fn text_config_7b(layers: usize) -> TextConfig {
    TextConfig {
        hidden_size: 3584,
        num_hidden_layers: layers,
        num_attention_heads: 28,
        num_key_value_heads: 4,
        head_dim: 128,
        intermediate_size: 18944,
        vocab_size: 152064,
        rms_norm_eps: 1e-6,
        rope_theta: 1_000_000.0,
        mrope_section: [16, 24, 24],
        max_position_embeddings: 128000,
        tie_word_embeddings: false,
    }
}

/// Deterministic bf16 values uniform in [-scale, scale] (+ `center`), filled in parallel.
fn synthetic_bf16(n: usize, scale: f32, center: f32, seed: u64) -> HostBytes {
    let mut v = vec![0u16; n];
    v.par_chunks_mut(1 << 16)
        .enumerate()
        .for_each(|(ci, chunk)| {
            let mut s =
                seed ^ (ci as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
            for x in chunk.iter_mut() {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let u = (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
                *x = half::bf16::from_f32(center + u * scale).to_bits();
            }
        });
    HostBytes::from_vec(bytemuck::cast_slice(&v).to_vec())
}

fn weight(be: &mut dyn Backend, shape: &[usize], seed: u64) -> Result<TRef> {
    let n: usize = shape.iter().product();
    let fan_in = *shape.last().unwrap() as f32;
    // Uniform with the variance of randn / sqrt(fan_in).
    let bytes = synthetic_bf16(n, (3.0 / fan_in).sqrt(), 0.0, seed);
    let buf = be.load_weight(bytes)?;
    Ok(TRef::new(buf, 0, DType::BF16, Shape::new(shape)))
}

fn vector(be: &mut dyn Backend, n: usize, center: f32, scale: f32, seed: u64) -> Result<TRef> {
    let buf = be.load_weight(synthetic_bf16(n, scale, center, seed))?;
    Ok(TRef::new(buf, 0, DType::BF16, Shape::new(&[n])))
}

/// Synthetic language-model weights of `cfg`'s shape on `be`.
pub fn synthetic_text(be: &mut dyn Backend, cfg: &TextConfig) -> Result<TextRefs> {
    let (d, kvd, f) = (
        cfg.hidden_size,
        cfg.num_key_value_heads * cfg.head_dim,
        cfg.intermediate_size,
    );
    let mut layers = Vec::new();
    for i in 0..cfg.num_hidden_layers {
        let s = 1000 * (i as u64 + 1);
        layers.push(LayerRefs {
            input_norm: vector(be, d, 1.0, 0.1, s + 1)?,
            q: weight(be, &[d, d], s + 2)?,
            q_bias: vector(be, d, 0.0, 0.1, s + 3)?,
            k: weight(be, &[kvd, d], s + 4)?,
            k_bias: vector(be, kvd, 0.0, 0.1, s + 5)?,
            v: weight(be, &[kvd, d], s + 6)?,
            v_bias: vector(be, kvd, 0.0, 0.1, s + 7)?,
            o: weight(be, &[d, d], s + 8)?,
            post_norm: vector(be, d, 1.0, 0.1, s + 9)?,
            gate: weight(be, &[f, d], s + 10)?,
            up: weight(be, &[f, d], s + 11)?,
            down: weight(be, &[d, f], s + 12)?,
        });
    }
    Ok(TextRefs {
        embed: weight(be, &[cfg.vocab_size, d], 7)?,
        layers,
        norm: vector(be, d, 1.0, 0.1, 8)?,
        lm_head: weight(be, &[cfg.vocab_size, d], 9)?,
    })
}

/// Weight bytes one decode step reads: every layer, the final norm and lm_head (the embedding
/// table contributes one row).
pub fn decode_bytes_per_token(cfg: &TextConfig, wbytes: usize) -> usize {
    let (d, kvd, f) = (
        cfg.hidden_size,
        cfg.num_key_value_heads * cfg.head_dim,
        cfg.intermediate_size,
    );
    let layer = d * d * 2 + 2 * kvd * d + 3 * d * f;
    (cfg.num_hidden_layers * layer + cfg.vocab_size * d + d) * wbytes
}

/// Host memory bandwidth in bytes/s, best of a few runs over 512 MiB (far larger than the
/// caches): (a parallel copy counted as read + write bytes, a parallel read-only pass). A GEMV
/// only reads, so the read-only figure is its ceiling.
pub fn host_bandwidth() -> (f64, f64) {
    let n = 512 << 20;
    let src: Vec<u64> = (0..n as u64 / 8).collect();
    let mut dst = vec![0u64; n / 8];
    let chunk = 1 << 17;
    let (mut copy, mut read) = (0.0f64, 0.0f64);
    for _ in 0..5 {
        let t = Instant::now();
        dst.par_chunks_mut(chunk)
            .zip(src.par_chunks(chunk))
            .for_each(|(d, s)| d.copy_from_slice(s));
        copy = copy.max(2.0 * n as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        let x = src
            .par_chunks(chunk)
            .map(|c| c.iter().fold(0u64, |a, &b| a ^ b))
            .reduce(|| 0, |a, b| a ^ b);
        std::hint::black_box(x);
        read = read.max(n as f64 / t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    (copy, read)
}

/// Runs the synthetic benchmark and returns a printable report.
pub fn run_synthetic(
    shape: &str,
    layers: usize,
    prompt_len: usize,
    decode_tokens: usize,
    opts: EngineOptions,
) -> Result<String> {
    if shape != "7b" {
        return Err(Error::flag(
            "--synthetic",
            format!("unknown shape {shape:?} (known: 7b)"),
        ));
    }
    if layers == 0 || layers > 28 {
        return Err(Error::flag("--layers", "must be in 1..=28"));
    }
    if prompt_len == 0 || decode_tokens == 0 {
        return Err(Error::flag(
            "--prompt-len/--decode-tokens",
            "must be at least 1",
        ));
    }
    let cfg = text_config_7b(layers);
    let mut be = open_backend(opts.device)?;
    let t0 = Instant::now();
    let refs = synthetic_text(be.as_mut(), &cfg)?;
    let gen_s = t0.elapsed().as_secs_f64();
    let mut runner = TextRunner::new(
        be.as_mut(),
        cfg.clone(),
        refs,
        opts.act,
        prompt_len + decode_tokens + 1,
        opts.page_size,
    )?;

    let ids: Vec<u32> = (0..prompt_len as u32)
        .map(|i| (i * 7919) % 150000)
        .collect();
    let pos: Vec<i32> = (0..3).flat_map(|_| 0..prompt_len as i32).collect();
    let t1 = Instant::now();
    runner.forward(be.as_mut(), &ids, &pos, None)?;
    be.sync()?;
    let prefill_s = t1.elapsed().as_secs_f64();

    let mut step_s = Vec::new();
    for i in 0..decode_tokens {
        let p = (prompt_len + i) as i32;
        let t = Instant::now();
        runner.forward(be.as_mut(), &[(i as u32 * 31) % 150000], &[p, p, p], None)?;
        be.sync()?;
        step_s.push(t.elapsed().as_secs_f64());
    }
    step_s.sort_by(f64::total_cmp);
    let median = step_s[step_s.len() / 2];
    let bytes = decode_bytes_per_token(&cfg, 2);
    let (copy_bw, bw) = host_bandwidth();
    let flops_prefill = 2.0 * (bytes / 2) as f64 * prompt_len as f64;

    let mut r = String::new();
    let _ = writeln!(r, "backend: {}", be.name());
    let _ = writeln!(
        r,
        "model: synthetic Qwen2.5-VL-7B language model, {layers} of 28 layers, bf16 weights, {} activations (weights generated in {gen_s:.1} s)",
        opts.act
    );
    let _ = writeln!(
        r,
        "prefill: {prompt_len} tokens in {:.3} s = {:.1} tokens/s ({:.1} GFLOP/s)",
        prefill_s,
        prompt_len as f64 / prefill_s,
        flops_prefill / prefill_s / 1e9
    );
    let _ = writeln!(
        r,
        "decode: median {:.2} ms/token = {:.2} tokens/s over {decode_tokens} steps; reads {:.2} GB/token = {:.1} GB/s",
        median * 1e3,
        1.0 / median,
        bytes as f64 / 1e9,
        bytes as f64 / median / 1e9
    );
    let _ = writeln!(
        r,
        "bound: host read bandwidth {:.1} GB/s (copy {:.1} GB/s read+write) -> {:.2} tokens/s; decode achieves {:.0}% of it",
        bw / 1e9,
        copy_bw / 1e9,
        bw / bytes as f64,
        100.0 * (bytes as f64 / median) / bw
    );
    Ok(r)
}

/// The Qwen2.5-VL-7B vision tower with `depth` blocks.
pub fn vision_config_7b(depth: usize) -> VisionConfig {
    VisionConfig {
        depth,
        hidden_size: 1280,
        fullatt_block_indexes: [7, 15, 23, 31].into_iter().filter(|&i| i < depth).collect(),
        tokens_per_second: 2.0,
        ..VisionConfig::default()
    }
}

/// Synthetic vision-tower weights of `cfg`'s shape on `be`.
pub fn synthetic_vision(be: &mut dyn Backend, cfg: &VisionConfig) -> Result<VisionWeightRefs> {
    let (d, f) = (cfg.hidden_size, cfg.intermediate_size);
    let row = cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size * cfg.patch_size;
    let merged = d * cfg.spatial_merge_size * cfg.spatial_merge_size;
    let mut blocks = Vec::new();
    for i in 0..cfg.depth {
        let s = 50_000 + 100 * i as u64;
        blocks.push(VisionBlockWeights {
            norm1: vector(be, d, 1.0, 0.1, s + 1)?,
            qkv_w: weight(be, &[3 * d, d], s + 2)?,
            qkv_b: vector(be, 3 * d, 0.0, 0.1, s + 3)?,
            proj_w: weight(be, &[d, d], s + 4)?,
            proj_b: vector(be, d, 0.0, 0.1, s + 5)?,
            norm2: vector(be, d, 1.0, 0.1, s + 6)?,
            gate_w: weight(be, &[f, d], s + 7)?,
            gate_b: vector(be, f, 0.0, 0.1, s + 8)?,
            up_w: weight(be, &[f, d], s + 9)?,
            up_b: vector(be, f, 0.0, 0.1, s + 10)?,
            down_w: weight(be, &[d, f], s + 11)?,
            down_b: vector(be, d, 0.0, 0.1, s + 12)?,
        });
    }
    Ok(VisionWeightRefs {
        patch_embed: weight(be, &[d, row], 41)?,
        blocks,
        ln_q: vector(be, d, 1.0, 0.1, 42)?,
        merger_fc1_w: weight(be, &[merged, merged], 43)?,
        merger_fc1_b: vector(be, merged, 0.0, 0.1, 44)?,
        merger_fc2_w: weight(be, &[cfg.out_hidden_size, merged], 45)?,
        merger_fc2_b: vector(be, cfg.out_hidden_size, 0.0, 0.1, 46)?,
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
    if frames == 0
        || frames % 2 != 0
        || height % 28 != 0
        || width % 28 != 0
        || height == 0
        || width == 0
    {
        return Err(Error::flag(
            "--frames/--height/--width",
            "need an even frame count and sides that are positive multiples of 28",
        ));
    }
    let cfg = vision_config_7b(depth);
    let mut be = open_backend(opts.device)?;
    let w = synthetic_vision(be.as_mut(), &cfg)?;
    let grid = [frames / 2, height / 14, width / 14];
    let n = grid.iter().product::<usize>();
    let rows: Vec<f32> = (0..n * 1176)
        .map(|i| ((i * 2_654_435_761) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let t = Instant::now();
    let out = crate::model::vision::encode(be.as_mut(), &w, &cfg, &rows, &[grid], opts.act)?;
    be.sync()?;
    let s = t.elapsed().as_secs_f64();
    let tokens = out.len() / cfg.out_hidden_size;
    let full = s * 32.0 / depth as f64;
    let flops_per_patch_block = 2.0 * (4.0 * 1280.0 * 1280.0 + 3.0 * 1280.0 * 3420.0);
    let flops = flops_per_patch_block * n as f64 * depth as f64;
    let mut r = String::new();
    let _ = writeln!(r, "backend: {}", be.name());
    let _ = writeln!(
        r,
        "vision: synthetic Qwen2.5-VL-7B ViT, {depth} of 32 blocks, {frames} frames of {height}x{width} -> {n} patches, {tokens} visual tokens, {} activations",
        opts.act
    );
    let _ = writeln!(
        r,
        "time {s:.3} s = {:.1} ms/frame, {:.2} ms/visual token ({:.1} GFLOP/s in the blocks); all 32 blocks: ~{:.2} s = {:.1} ms/frame",
        s * 1e3 / frames as f64,
        s * 1e3 / tokens as f64,
        flops / s / 1e9,
        full,
        full * 1e3 / frames as f64
    );
    Ok(r)
}
