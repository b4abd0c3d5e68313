//! The figures of a `reel bench` run, their ceilings, and the text report.

use super::synthetic::SyntheticShape;
use crate::backend::harness::perf::{datasheet_peaks, host_bandwidth, tflops};
use crate::backend::Backend;
use serde::Serialize;
use std::fmt::Write;

/// Where the ceilings come from and what they are.
#[derive(Clone, Debug, Serialize)]
pub struct Ceilings {
    /// Memory bandwidth a decode step can read at, GB/s.
    pub bandwidth_gbps: Option<f64>,
    /// `measured host read` (CPU) or `datasheet` (CUDA).
    pub bandwidth_source: String,
    /// CPU only: the parallel copy figure (read + write bytes), GB/s.
    pub host_copy_gbps: Option<f64>,
    /// Dense bf16 multiply-add throughput, TFLOP/s (CUDA: datasheet; CPU: measured).
    pub compute_tflops: Option<f64>,
    /// `datasheet`, or what the CPU measured.
    pub compute_source: String,
    /// CPU with an int8 dot instruction: its peak, TOP/s, and what was measured.
    pub int8_tops: Option<f64>,
    pub int8_source: String,
}

impl Ceilings {
    /// The compute ceiling of a run over `quantized` weights or not: quantized weights may take
    /// the int8 dots or the bf16 path (the CPU's tiles, CUDA's tensor cores) by shape, so theirs
    /// is the higher of the two peaks.
    pub fn compute_for(&self, quantized: bool) -> Option<f64> {
        match (self.compute_tflops, self.int8_tops.filter(|_| quantized)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// On CUDA the device's datasheet peaks; on the CPU the host bandwidth measured over
    /// `host_bytes` (far larger than the caches for a real measurement).
    pub fn of(be: &dyn Backend, host_bytes: usize) -> Ceilings {
        let name = be.name();
        if name.starts_with("cuda") {
            let (bw, tf) = datasheet_peaks(&name);
            return Ceilings {
                bandwidth_gbps: bw,
                bandwidth_source: "datasheet".into(),
                host_copy_gbps: None,
                compute_tflops: tf,
                compute_source: "datasheet".into(),
                int8_tops: None,
                int8_source: String::new(),
            };
        }
        let (copy, read) = host_bandwidth(host_bytes);
        let peak = be.measured_compute_peak();
        let int8 = be.measured_int8_peak();
        Ceilings {
            bandwidth_gbps: Some(read / 1e9),
            bandwidth_source: "measured host read".into(),
            host_copy_gbps: Some(copy / 1e9),
            compute_tflops: peak.as_ref().map(|p| p.0),
            compute_source: peak.map_or_else(String::new, |p| p.1),
            int8_tops: int8.as_ref().map(|p| p.0),
            int8_source: int8.map_or_else(String::new, |p| p.1),
        }
    }
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

/// Decode of `batch` sequences at once, one token each per step.
#[derive(Clone, Debug, Serialize)]
pub struct BatchReport {
    pub batch: usize,
    /// Tokens in each sequence's cache at the first timed step.
    pub context: usize,
    pub steps: usize,
    /// Median step: every sequence's latency per token.
    pub step_ms: f64,
    /// Aggregate: batch / step.
    pub tokens_per_s: f64,
    /// Weights once plus every sequence's KV.
    pub bytes_per_step: u64,
    pub gbps: f64,
    /// Aggregate tokens/s if a step only had to read its bytes at the ceiling bandwidth.
    pub bound_tokens_per_s: Option<f64>,
    /// All layers, extrapolated at the measured GB/s.
    pub full_bytes_per_step: u64,
    pub full_step_ms: f64,
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
    /// Batched decode at each `--batch` size.
    pub batched: Vec<BatchReport>,
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
            format!("{} dense bf16 ({})", tflops(t), c.compute_source)
        });
        let i8 = c.int8_tops.map_or(String::new(), |t| {
            format!("; {t:.2} TOP/s int8 ({})", c.int8_source)
        });
        let _ = writeln!(r, "ceilings: {bw}; {tf}{i8}");
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
        let base = self.batched.iter().find(|b| b.batch == 1);
        for b in &self.batched {
            let vs1 = base.map_or(String::new(), |one| {
                format!(", {:.2}x batch 1", b.tokens_per_s / one.tokens_per_s)
            });
            let _ = writeln!(
                r,
                "batched decode: {} sequences at context {} ({} steps): {:.1} ms per step = {:.2} tokens/s aggregate{vs1}; {} per step = {:.1} GB/s; bandwidth bound {}",
                b.batch,
                b.context,
                b.steps,
                b.step_ms,
                b.tokens_per_s,
                gb(b.bytes_per_step as f64),
                b.gbps,
                b.bound_tokens_per_s
                    .map_or("unknown".into(), |x| format!("{x:.2} tokens/s"))
            );
            if m.layers < m.full_layers {
                let _ = writeln!(
                    r,
                    "  all {} layers (extrapolated at the same GB/s): {} per step -> ~{:.0} ms per step, ~{:.2} tokens/s aggregate; bound {}",
                    m.full_layers,
                    gb(b.full_bytes_per_step as f64),
                    b.full_step_ms,
                    b.full_tokens_per_s,
                    b.full_bound_tokens_per_s
                        .map_or("unknown".into(), |x| format!("{x:.2} tokens/s"))
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

/// The process's peak resident set (VmHWM), where the OS reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
