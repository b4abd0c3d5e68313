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
//! generating 7B-sized weights quick. Ceilings: on the CPU
//! the host read bandwidth measured in the same run; on CUDA the datasheet DRAM bandwidth and
//! dense bf16 tensor throughput of the device (see [`crate::backend::cuda::bench::device_peaks`]).
//! Runs with fewer layers or blocks than the model also print full-depth figures, extrapolated
//! at the measured GB/s (decode) or TFLOP/s (vision, prefill), and say so.

use super::sampling::{Sampler, SamplingParams};
use super::{open_backend, EngineOptions, TextRunner};
use crate::backend::{Backend, HostBytes, MemStats};
use crate::error::{Error, Result};
use crate::model::config::TextConfig;
use crate::model::inventory::{Part, Role, TensorSpec};
use crate::model::qwen2_5_vl::inventory::expected;
use crate::model::qwen2_5_vl::positions::{self, VisionKind, VisionSpan};
use crate::model::qwen2_5_vl::vision::{self, VisionWeightRefs};
use crate::model::qwen2_5_vl::weights::TextRefs;
use crate::model::qwen2_5_vl::{self as qwen, ModelConfig, VisionConfig};
use crate::quant::preset::{choose_type, convert_rows, ModelFacts, Preset};
use crate::store::{TensorInfo, WeightStore};
use crate::tensor::DType;
use rayon::prelude::*;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt::Write;
use std::time::Instant;

/// The Qwen2.5-VL-7B language model with `layers` decoder layers.
pub fn text_config_7b(layers: usize) -> TextConfig {
    TextConfig {
        num_hidden_layers: layers,
        ..ModelConfig::qwen2_5_vl_7b().text
    }
}

/// The Qwen2.5-VL-7B vision tower with `depth` blocks (the full-attention blocks past the
/// depth dropped).
pub fn vision_config_7b(depth: usize) -> VisionConfig {
    let full = ModelConfig::qwen2_5_vl_7b().vision;
    VisionConfig {
        depth,
        fullatt_block_indexes: full
            .fullatt_block_indexes
            .iter()
            .copied()
            .filter(|&i| i < depth)
            .collect(),
        ..full
    }
}

/// A model shape to synthesize: the full-depth configs and the special token ids the Video-R1
/// prompt needs.
#[derive(Clone, Debug)]
pub struct SyntheticShape {
    pub name: &'static str,
    pub text: TextConfig,
    pub vision: VisionConfig,
    pub vision_start: u32,
    pub vision_end: u32,
    pub video_pad: u32,
}

impl SyntheticShape {
    /// `7b` (Qwen2.5-VL-7B), or `tiny`: a few-MB model through the same code, for tests.
    pub fn parse(name: &str) -> Result<SyntheticShape> {
        match name {
            "7b" => Ok(SyntheticShape {
                name: "7b",
                text: text_config_7b(28),
                vision: vision_config_7b(32),
                vision_start: 151652,
                vision_end: 151653,
                video_pad: 151656,
            }),
            "tiny" => Ok(SyntheticShape {
                name: "tiny",
                text: TextConfig {
                    hidden_size: 256,
                    num_hidden_layers: 2,
                    num_attention_heads: 4,
                    num_key_value_heads: 2,
                    head_dim: 64,
                    intermediate_size: 512,
                    vocab_size: 4096,
                    mrope_section: [8, 12, 12],
                    ..text_config_7b(2)
                },
                vision: VisionConfig {
                    depth: 2,
                    hidden_size: 64,
                    num_heads: 4,
                    intermediate_size: 96,
                    out_hidden_size: 256,
                    fullatt_block_indexes: vec![1],
                    tokens_per_second: 2.0,
                    ..VisionConfig::default()
                },
                vision_start: 4000,
                vision_end: 4001,
                video_pad: 4002,
            }),
            _ => Err(Error::flag(
                "--synthetic",
                format!("unknown shape {name:?} (known: 7b)"),
            )),
        }
    }

    fn label(&self) -> &'static str {
        match self.name {
            "7b" => "Qwen2.5-VL-7B",
            _ => "tiny test",
        }
    }
}

/// Deterministic bf16 values uniform in [-scale, scale] (+ `center`), filled in parallel.
fn synthetic_bf16(n: usize, scale: f32, center: f32, seed: u64) -> Vec<u8> {
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
    bytemuck::cast_slice(&v).to_vec()
}

/// Distinct rows per synthetic tensor; the rest repeat them. Speed does not depend on the
/// values, and copying keeps generating (and quantizing) 7B-sized tensors at memcpy speed.
const DISTINCT_ROWS: usize = 64;

/// One synthetic tensor: an inventory entry and the type the preset stores it in.
#[derive(Clone, Debug)]
pub struct SyntheticTensor {
    pub spec: TensorSpec,
    pub dtype: DType,
}

impl SyntheticTensor {
    pub fn bytes(&self) -> usize {
        self.dtype.bytes_for(self.spec.numel())
    }

    /// The tensor's bytes: matrices uniform with the variance of randn/sqrt(fan_in), norm
    /// weights around 1, biases around 0; rows repeat every [`DISTINCT_ROWS`].
    fn generate(&self, seed: u64) -> Result<Vec<u8>> {
        let shape = &self.spec.shape;
        // Rows as the model reads them (the patch embedding's Conv3d kernel as a matrix).
        let row: usize = if shape.len() >= 2 {
            shape[1..].iter().product()
        } else {
            shape[0]
        };
        let rows = self.spec.numel() / row;
        let norm = matches!(
            self.spec.role,
            Role::AttnNorm
                | Role::MlpNorm
                | Role::FinalNorm
                | Role::VisionNorm1
                | Role::VisionNorm2
                | Role::MergerNorm
        );
        let (scale, center) = match (shape.len(), norm) {
            (1, true) => (0.1, 1.0),
            (1, false) => (0.1, 0.0),
            _ => ((3.0 / row as f32).sqrt(), 0.0),
        };
        let distinct = rows.min(DISTINCT_ROWS);
        let bf = synthetic_bf16(distinct * row, scale, center, seed);
        let rb = crate::quant::row_bytes(self.dtype, row)?;
        let block = if self.dtype == DType::BF16 {
            bf
        } else {
            let mut out = vec![0u8; distinct * rb];
            convert_rows(DType::BF16, &bf, self.dtype, row, &mut out)?;
            out
        };
        let mut bytes = vec![0u8; rows * rb];
        bytes
            .par_chunks_mut(block.len())
            .for_each(|c| c.copy_from_slice(&block[..c.len()]));
        Ok(bytes)
    }
}

/// The inventory tensors of `part` of `cfg`, each in the type `preset` gives it in a model of
/// `full_layers` decoder layers (the layers that get more bits depend on the full depth). The
/// vision tower keeps the types reel-quantize gives it by default.
pub fn synthetic_specs(
    cfg: &ModelConfig,
    part: Part,
    full_layers: usize,
    preset: Preset,
) -> Vec<SyntheticTensor> {
    let facts = ModelFacts {
        n_layers: full_layers,
        tied_embeddings: cfg.text.tie_word_embeddings,
    };
    expected(cfg, part)
        .into_iter()
        .map(|spec| {
            let dtype = choose_type(preset, spec.class(), &spec.shape, DType::BF16, facts, false);
            SyntheticTensor {
                dtype: dtype.dtype,
                spec,
            }
        })
        .collect()
}

/// Synthetic weights as a checkpoint: each tensor is generated when the loader asks for it,
/// so they go through the same checks and uploads as a real checkpoint's, one at a time.
pub struct SyntheticStore {
    tensors: HashMap<String, (u64, SyntheticTensor)>,
}

impl SyntheticStore {
    pub fn new(tensors: &[SyntheticTensor]) -> SyntheticStore {
        let tensors = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.spec.name.clone(), (1000 + i as u64, t.clone())))
            .collect();
        SyntheticStore { tensors }
    }
}

impl WeightStore for SyntheticStore {
    fn get(&self, name: &str) -> Option<TensorInfo> {
        self.lookup(name).ok().flatten()
    }

    fn lookup(&self, name: &str) -> Result<Option<TensorInfo>> {
        let Some((seed, t)) = self.tensors.get(name) else {
            return Ok(None);
        };
        Ok(Some(TensorInfo {
            name: name.to_string(),
            dtype: t.dtype,
            shape: t.spec.shape.clone(),
            bytes: HostBytes::from_vec(t.generate(*seed)?),
        }))
    }

    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.tensors.keys().cloned().collect();
        v.sort();
        v
    }

    fn describe(&self) -> String {
        format!("synthetic weights ({} tensors)", self.tensors.len())
    }
}

/// Every tensor of the first `layers` of the `full` language model (plus embedding, final norm
/// and lm_head), with the storage type `preset` gives it in the full model.
pub fn text_specs(full: &TextConfig, layers: usize, preset: Preset) -> Vec<SyntheticTensor> {
    let cfg = first_layers(full, layers);
    synthetic_specs(&cfg, Part::Text, full.num_hidden_layers, preset)
}

/// A configuration whose language model is the first `layers` of `full`.
fn first_layers(full: &TextConfig, layers: usize) -> ModelConfig {
    ModelConfig {
        text: TextConfig {
            num_hidden_layers: layers,
            ..full.clone()
        },
        ..ModelConfig::qwen2_5_vl_7b()
    }
}

/// Weight bytes one decode step reads: everything but the embedding table, of which it reads
/// one row.
pub fn decode_weight_bytes(specs: &[SyntheticTensor]) -> usize {
    specs
        .iter()
        .map(|s| {
            if s.spec.role == Role::Embed {
                s.dtype.bytes_for(s.spec.shape[1])
            } else {
                s.bytes()
            }
        })
        .sum()
}

/// Multiply-accumulate count of one layer's projections (per token).
fn layer_macs(cfg: &TextConfig) -> f64 {
    let (d, kvd, f) = (
        cfg.hidden_size as f64,
        (cfg.num_key_value_heads * cfg.head_dim) as f64,
        cfg.intermediate_size as f64,
    );
    2.0 * d * d + 2.0 * kvd * d + 3.0 * d * f
}

/// FLOPs of a prefill of `t` tokens through `layers` layers: projections, causal attention
/// (`2·t²·head_dim` per head and layer: QKᵀ and PV over the lower triangle) and lm_head on the
/// last row only.
pub fn prefill_flops(cfg: &TextConfig, layers: usize, t: usize) -> f64 {
    let t = t as f64;
    let attn = 2.0 * t * t * (cfg.head_dim * cfg.num_attention_heads) as f64;
    layers as f64 * (2.0 * t * layer_macs(cfg) + attn)
        + 2.0 * (cfg.vocab_size * cfg.hidden_size) as f64
}

/// Synthetic language-model weights for the first `layers` of `full`, stored per `preset`.
/// Returns the refs and the specs of what was made.
pub fn synthetic_text(
    be: &mut dyn Backend,
    full: &TextConfig,
    layers: usize,
    preset: Preset,
) -> Result<(TextRefs, Vec<SyntheticTensor>)> {
    let specs = text_specs(full, layers, preset);
    let cfg = first_layers(full, layers);
    let refs = TextRefs::load(be, &SyntheticStore::new(&specs), &cfg)?;
    Ok((refs, specs))
}

/// Synthetic vision-tower weights of `cfg`'s shape on `be`, in the types every preset keeps
/// them in (bf16 matrices, f32 vectors).
pub fn synthetic_vision(be: &mut dyn Backend, cfg: &VisionConfig) -> Result<VisionWeightRefs> {
    let mc = ModelConfig {
        vision: cfg.clone(),
        ..ModelConfig::qwen2_5_vl_7b()
    };
    let specs = synthetic_specs(&mc, Part::Vision, 0, Preset::Bf16);
    VisionWeightRefs::load(be, &SyntheticStore::new(&specs), &mc)
}

/// FLOPs of the vision tower with `depth` blocks over one grid (t, h, w patches): patch
/// embedding, per block the projections and exact attention over its windows (or whole frames
/// in the full-attention blocks), and the merger.
pub fn vision_flops(cfg: &VisionConfig, grid: [usize; 3], depth: usize) -> Result<f64> {
    let n = (grid[0] * grid[1] * grid[2]) as f64;
    let (d, f) = (cfg.hidden_size as f64, cfg.intermediate_size as f64);
    let row = (cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size * cfg.patch_size) as f64;
    let (_, cu_win) = vision::window_index(
        &[grid],
        cfg.spatial_merge_size,
        cfg.window_size,
        cfg.patch_size,
    )?;
    let win_sq: f64 = cu_win
        .windows(2)
        .map(|w| ((w[1] - w[0]) as f64).powi(2))
        .sum();
    let full_sq = grid[0] as f64 * ((grid[1] * grid[2]) as f64).powi(2);
    let mut blocks = 0.0;
    for b in 0..depth {
        let sq = if cfg.fullatt_block_indexes.contains(&b) {
            full_sq
        } else {
            win_sq
        };
        blocks += 2.0 * n * (4.0 * d * d + 3.0 * d * f) + 4.0 * sq * d;
    }
    let m = (cfg.spatial_merge_size * cfg.spatial_merge_size) as f64;
    let merger = 2.0 * (n / m) * (d * m * d * m + d * m * cfg.out_hidden_size as f64);
    Ok(2.0 * n * row * d + blocks + merger)
}

/// Host memory bandwidth in bytes/s, best of a few runs over `bytes` (keep it far larger than
/// the caches): (a parallel copy counted as read + write bytes, a parallel read-only pass). A
/// GEMV only reads, so the read-only figure is its ceiling.
pub fn host_bandwidth(bytes: usize) -> (f64, f64) {
    let n = bytes / 8 * 8;
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

/// The process's peak resident set (VmHWM), where the OS reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

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
        }
    }
}

/// Where the ceilings come from and what they are.
#[derive(Clone, Debug, Serialize)]
pub struct Ceilings {
    /// Memory bandwidth a decode step can read at, GB/s.
    pub bandwidth_gbps: Option<f64>,
    /// `measured host read` (CPU) or `datasheet` (CUDA).
    pub bandwidth_source: String,
    /// CPU only: the parallel copy figure (read + write bytes), GB/s.
    pub host_copy_gbps: Option<f64>,
    /// Dense bf16 tensor throughput, TFLOP/s (CUDA datasheet; unknown on the CPU).
    pub compute_tflops: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ModelReport {
    pub shape: String,
    pub layers: usize,
    pub full_layers: usize,
    pub weights: String,
    pub activations: String,
    /// Tensor count per storage type.
    pub tensor_types: Vec<(String, usize)>,
    /// Bytes of the instantiated weights.
    pub weight_bytes: u64,
    pub generate_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct PrefillReport {
    pub tokens: usize,
    pub seconds: f64,
    pub tokens_per_s: f64,
    pub tflops: f64,
    /// Achieved share of the compute ceiling, when known.
    pub compute_fraction: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DecodeReport {
    /// Tokens in the cache at the first timed step.
    pub context: usize,
    pub steps: usize,
    pub median_ms: f64,
    pub tokens_per_s: f64,
    pub weight_bytes_per_token: u64,
    /// K and V of every cached token, every layer, read once per step.
    pub kv_bytes_per_token: u64,
    pub gbps: f64,
    /// Ceiling bandwidth / bytes per token.
    pub bound_tokens_per_s: Option<f64>,
    pub bandwidth_fraction: Option<f64>,
    /// All layers: the full model's bytes per token and, when fewer layers ran, its tokens/s
    /// at the measured GB/s.
    pub full_bytes_per_token: u64,
    pub full_tokens_per_s: f64,
    pub full_bound_tokens_per_s: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct VideoR1Report {
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    pub grid_thw: [usize; 3],
    pub patches: usize,
    pub visual_tokens: usize,
    pub text_tokens: usize,
    pub prompt_tokens: usize,
    pub vision_layers: usize,
    pub vision_full_layers: usize,
    pub text_layers: usize,
    pub text_full_layers: usize,
    /// Vision tower (its output stays on the device for the prefill).
    pub vision_s: f64,
    pub prefill_s: f64,
    /// Sampling the first token from the prefill's logits.
    pub first_token_s: f64,
    pub ttft_s: f64,
    pub prefill_tokens_per_s: f64,
    pub vision_tflops: f64,
    pub prefill_tflops: f64,
    pub vision_compute_fraction: Option<f64>,
    pub prefill_compute_fraction: Option<f64>,
    /// Set when fewer blocks or layers ran than the model has.
    pub extrapolated: bool,
    /// Full depth, each stage scaled by its FLOPs at the measured TFLOP/s (equal to the
    /// measured figures when nothing was cut).
    pub full_vision_s: f64,
    pub full_prefill_s: f64,
    pub full_ttft_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct MemoryReport {
    /// Device memory high-water mark (CUDA).
    pub peak_device_bytes: Option<u64>,
    /// Process peak RSS (on the CPU it holds the weights).
    pub peak_rss_bytes: Option<u64>,
    pub kv_pool_bytes: u64,
}

/// Every figure of a run.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub backend: String,
    pub model: ModelReport,
    pub ceilings: Ceilings,
    pub prefill: PrefillReport,
    /// Decode after the prefill, then at each `decode_at` context.
    pub decode: Vec<DecodeReport>,
    pub video_r1: Option<VideoR1Report>,
    pub memory: MemoryReport,
}

fn gb(b: f64) -> String {
    if b >= 1e8 {
        format!("{:.2} GB", b / 1e9)
    } else {
        format!("{:.2} MB", b / 1e6)
    }
}

fn pct(f: Option<f64>) -> String {
    f.map_or("peak unknown".into(), |f| {
        format!("{:.0}% of peak", f * 100.0)
    })
}

impl BenchReport {
    /// The human-readable report.
    pub fn to_text(&self) -> String {
        let mut r = String::new();
        let m = &self.model;
        let c = &self.ceilings;
        let _ = writeln!(r, "backend: {}", self.backend);
        let types: Vec<String> = m
            .tensor_types
            .iter()
            .map(|(t, n)| format!("{n} {t}"))
            .collect();
        let _ = writeln!(
            r,
            "model: synthetic {} language model, {} of {} layers, {} weights ({}; {}), {} activations (weights generated in {:.1} s)",
            SyntheticShape::parse(&m.shape).map_or("?", |s| s.label()),
            m.layers,
            m.full_layers,
            m.weights,
            types.join(", "),
            gb(m.weight_bytes as f64),
            m.activations,
            m.generate_s
        );
        let bw = match (c.bandwidth_gbps, c.host_copy_gbps) {
            (Some(b), Some(copy)) => format!(
                "{b:.1} GB/s {} (copy {copy:.1} GB/s read+write)",
                c.bandwidth_source
            ),
            (Some(b), None) => format!("{b:.0} GB/s {}", c.bandwidth_source),
            _ => "bandwidth unknown".into(),
        };
        let tf = c.compute_tflops.map_or("compute peak unknown".into(), |t| {
            format!("{t:.0} TFLOP/s dense bf16 (datasheet)")
        });
        let _ = writeln!(r, "ceilings: {bw}; {tf}");
        let p = &self.prefill;
        let _ = writeln!(
            r,
            "prefill: {} tokens in {:.3} s = {:.1} tokens/s, {:.3} TFLOP/s ({})",
            p.tokens,
            p.seconds,
            p.tokens_per_s,
            p.tflops,
            pct(p.compute_fraction)
        );
        for d in &self.decode {
            let bytes = (d.weight_bytes_per_token + d.kv_bytes_per_token) as f64;
            let bound = match (d.bound_tokens_per_s, d.bandwidth_fraction) {
                (Some(b), Some(f)) => format!(
                    "{:.0}% of the bandwidth bound of {b:.2} tokens/s",
                    f * 100.0
                ),
                _ => "bound unknown".into(),
            };
            let _ = writeln!(
                r,
                "decode @ {} ctx: median {:.2} ms/token = {:.2} tokens/s over {} steps; reads {} (weights {} + KV {}) = {:.1} GB/s, {bound}",
                d.context,
                d.median_ms,
                d.tokens_per_s,
                d.steps,
                gb(bytes),
                gb(d.weight_bytes_per_token as f64),
                gb(d.kv_bytes_per_token as f64),
                d.gbps
            );
            if m.layers < m.full_layers {
                let _ = writeln!(
                    r,
                    "  all {} layers (extrapolated at the same GB/s): {} per token -> ~{:.2} tokens/s; bound {}",
                    m.full_layers,
                    gb(d.full_bytes_per_token as f64),
                    d.full_tokens_per_s,
                    d.full_bound_tokens_per_s
                        .map_or("unknown".into(), |b| format!("{b:.2} tokens/s"))
                );
            }
        }
        if let Some(v) = &self.video_r1 {
            let _ = writeln!(
                r,
                "video-r1 input: {} frames of {}x{} -> grid {}x{}x{} = {} patches -> {} visual + {} text = {} prompt tokens",
                v.frames,
                v.height,
                v.width,
                v.grid_thw[0],
                v.grid_thw[1],
                v.grid_thw[2],
                v.patches,
                v.visual_tokens,
                v.text_tokens,
                v.prompt_tokens
            );
            let _ = writeln!(
                r,
                "  vision: {} of {} blocks in {:.3} s, {:.3} TFLOP/s ({})",
                v.vision_layers,
                v.vision_full_layers,
                v.vision_s,
                v.vision_tflops,
                pct(v.vision_compute_fraction)
            );
            let _ = writeln!(
                r,
                "  prefill: {} tokens through {} of {} layers in {:.3} s = {:.1} tokens/s, {:.3} TFLOP/s ({})",
                v.prompt_tokens,
                v.text_layers,
                v.text_full_layers,
                v.prefill_s,
                v.prefill_tokens_per_s,
                v.prefill_tflops,
                pct(v.prefill_compute_fraction)
            );
            let _ = writeln!(
                r,
                "  time to first token: {:.3} s = vision {:.3} + prefill {:.3} + first token {:.4}",
                v.ttft_s, v.vision_s, v.prefill_s, v.first_token_s
            );
            if v.extrapolated {
                let _ = writeln!(
                    r,
                    "  EXTRAPOLATED to {} blocks and {} layers (each stage scaled by its FLOPs at the measured TFLOP/s): vision ~{:.2} s + prefill ~{:.2} s -> time to first token ~{:.2} s",
                    v.vision_full_layers,
                    v.text_full_layers,
                    v.full_vision_s,
                    v.full_prefill_s,
                    v.full_ttft_s
                );
            }
        }
        let mem = &self.memory;
        let mut parts = Vec::new();
        if let Some(b) = mem.peak_device_bytes {
            parts.push(format!("peak device memory {}", gb(b as f64)));
        }
        if let Some(b) = mem.peak_rss_bytes {
            parts.push(format!("peak RSS {}", gb(b as f64)));
        }
        parts.push(format!("KV pool {}", gb(mem.kv_pool_bytes as f64)));
        let _ = writeln!(r, "memory: {}", parts.join(", "));
        r
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
    if cfg.decode_at.contains(&0) {
        return Err(Error::flag(
            "--decode-at",
            "context lengths must be at least 1",
        ));
    }
    if cfg.ctx == Some(0) {
        return Err(Error::flag("--ctx", "must be at least 1"));
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
        if cfg.frames == 0
            || cfg.frames % 2 != 0
            || cfg.height == 0
            || cfg.width == 0
            || cfg.height % 28 != 0
            || cfg.width % 28 != 0
        {
            return Err(Error::flag(
                "--frames/--height/--width",
                "need an even frame count and sides that are positive multiples of 28",
            ));
        }
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
    if !matches!(opts.act, DType::F32 | DType::BF16) {
        return Err(Error::flag("--dtype", "activations must be f32 or bf16"));
    }
    let mut be = open_backend(opts.device)?;
    let on_cuda = be.name().starts_with("cuda");
    let full = shape.text.num_hidden_layers;
    // The whole model fits a GPU; on the CPU a few layers keep a run to seconds.
    let layers = cfg
        .layers
        .unwrap_or(if on_cuda { full } else { full.min(4) });
    let max_decode_ctx = cfg.decode_at.iter().copied().max().unwrap_or(0);
    let mut need = (cfg.prompt_len.max(max_decode_ctx)) + cfg.decode_tokens;
    if cfg.video_r1 {
        need = need.max(video_r1_tokens(cfg, &shape) + 1);
    }
    let ctx = cfg.ctx.unwrap_or(need);

    let ceilings = if on_cuda {
        let (bw, tf) = crate::backend::cuda::bench::device_peaks(&be.name());
        Ceilings {
            bandwidth_gbps: bw,
            bandwidth_source: "datasheet".into(),
            host_copy_gbps: None,
            compute_tflops: tf,
        }
    } else {
        // Far larger than the caches; the tiny test shape only checks the plumbing.
        let bytes = if shape.name == "tiny" {
            16 << 20
        } else {
            512 << 20
        };
        let (copy, read) = host_bandwidth(bytes);
        Ceilings {
            bandwidth_gbps: Some(read / 1e9),
            bandwidth_source: "measured host read".into(),
            host_copy_gbps: Some(copy / 1e9),
            compute_tflops: None,
        }
    };

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
        compute_fraction: ceilings.compute_tflops.map(|p| pf / prefill_s / 1e12 / p),
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
    let out = vision::encode(be.as_mut(), &w, &cfg, &rows, &[grid], opts.act)?;
    be.sync()?;
    let s = t.elapsed().as_secs_f64();
    be.free(out.buf);
    let tokens = out.shape.rows();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_k_m_bytes_per_token_match_the_preset_mix() {
        let full = text_config_7b(28);
        let specs = text_specs(&full, 28, Preset::Q4KM);
        let count = |t: DType| specs.iter().filter(|s| s.dtype == t).count();
        // 14 bumped layers x (v_proj, down_proj) + lm_head are Q6_K; 2 norms + 3 biases per
        // layer and the final norm stay F32.
        assert_eq!(count(DType::Q6K), 29);
        assert_eq!(count(DType::F32), 28 * 5 + 1);
        assert_eq!(count(DType::Q4K), specs.len() - 29 - 141);
        let bf16 = decode_weight_bytes(&text_specs(&full, 28, Preset::Bf16));
        // 7.07 G params read per token (kernels.md §0), plus F32 vectors instead of bf16.
        assert!((bf16 as f64 / 14.14e9 - 1.0).abs() < 0.01, "{bf16}");
        let q8 = decode_weight_bytes(&text_specs(&full, 28, Preset::Q8_0));
        assert!((q8 as f64 / bf16 as f64 - 34.0 / 64.0).abs() < 0.01, "{q8}");
        let q4 = decode_weight_bytes(&specs) as f64;
        // Between pure Q4_K (4.5 bpw) and pure Q6_K (6.5625 bpw).
        assert!(q4 > 7.07e9 * 4.5 / 8.0 && q4 < 7.07e9 * 5.2 / 8.0, "{q4}");
    }

    #[test]
    fn flop_counts_match_the_spec() {
        let full = text_config_7b(28);
        // kernels.md §0: causal attention is 2·T²·128·28·28 at T = 4096.
        let t = 4096;
        let attn = prefill_flops(&full, 28, t) - 28.0 * 2.0 * t as f64 * layer_macs(&full);
        let want = 2.0 * (t * t) as f64 * 128.0 * 28.0 * 28.0 + 2.0 * 152064.0 * 3584.0;
        assert!((attn / want - 1.0).abs() < 1e-9);
        // ViT over 16,384 patches: ~645 GFLOP per block in the projections (kernels.md §0).
        let v = vision_config_7b(32);
        let one = vision_flops(&v, [16, 32, 32], 1).unwrap();
        let zero = vision_flops(&v, [16, 32, 32], 0).unwrap();
        let proj = 2.0 * 16384.0 * (4.0 * 1280.0f64.powi(2) + 3.0 * 1280.0 * 3420.0);
        assert!((proj / 645e9 - 1.0).abs() < 0.01);
        // Windows of 8x8 patches: 16 windows of 64 patches per frame pair, 16 pairs.
        let win = 4.0 * 16.0 * 16.0 * 64.0f64.powi(2) * 1280.0;
        assert!(((one - zero) / (proj + win) - 1.0).abs() < 1e-9);
    }

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
