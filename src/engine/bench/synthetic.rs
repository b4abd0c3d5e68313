//! Synthetic weights of the real model shape: the 7B configs, the inventory filled with
//! deterministic pseudo-random values in each preset's storage types, and the FLOP and byte
//! counts the report divides by.

use crate::backend::{Backend, HostBytes};
use crate::error::{Error, Result};
use crate::model::config::TextConfig;
use crate::model::inventory::{Part, Role, TensorSpec};
use crate::model::qwen2_5_vl::inventory::expected;
use crate::model::qwen2_5_vl::vision::{self, VisionWeightRefs};
use crate::model::qwen2_5_vl::weights::TextRefs;
use crate::model::qwen2_5_vl::{ModelConfig, VisionConfig};
use crate::quantize::preset::{choose_type, convert_rows, ModelFacts, Preset};
use crate::store::{TensorInfo, WeightStore};
use crate::tensor::DType;
use rayon::prelude::*;
use std::collections::HashMap;

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

    pub(super) fn label(&self) -> &'static str {
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
}
