//! Quantization presets for whole checkpoints (what reel-quantize applies): which storage type
//! each tensor gets, and the row-parallel conversion of one tensor.
//!
//! Tensors are told apart by their role in the model and their layer (`model::inventory`), not
//! by name. Rules, following llama.cpp's llama-quant.cpp where it has one:
//! - Tensors of rank 1 (norm weights, biases) stay F32 in every preset, as in llama.cpp.
//! - `bf16`: every other float tensor is stored BF16 (lossless for a bf16 checkpoint).
//! - `q8_0`: every other float tensor is Q8_0, the token embedding and lm_head included.
//! - `q4_k_m`: Q4_K by default (token embedding included); Q6_K for the output head
//!   ([`Role::LmHead`], or the embedding when tied) and for the attention value and MLP down
//!   projections ([`Role::AttnV`], [`Role::MlpDown`]) of the decoder layers chosen by llama.cpp's
//!   `use_more_bits` rule: the first and last eighth of the layers and every third layer in
//!   between.
//! - The vision tower stays BF16 unless `quantize_vision` is set, then it follows the same
//!   preset (without the per-layer bumps, which concern the language model).
//! - A row whose length does not fill whole blocks falls back: K-quant -> Q8_0 if the row is a
//!   multiple of 32, else BF16 (llama.cpp goes to Q5_0/Q8_0 then F16; reel has no Q5_0 and keeps
//!   bf16 checkpoints lossless). The vision MLP's 3420-wide rows hit this.

use crate::error::{Error, Result};
use crate::model::inventory::{Role, TensorClass, Tower};
use crate::quant::{dequantize_row, quantize_row, row_bytes};
use crate::tensor::DType;
use rayon::prelude::*;
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    Bf16,
    Q8_0,
    Q4KM,
}

impl Preset {
    pub fn name(self) -> &'static str {
        match self {
            Preset::Bf16 => "bf16",
            Preset::Q8_0 => "q8_0",
            Preset::Q4KM => "q4_k_m",
        }
    }

    /// llama.cpp's `general.file_type` (llama_ftype) for the preset.
    pub fn file_type(self) -> u32 {
        match self {
            Preset::Bf16 => 32,
            Preset::Q8_0 => 7,
            Preset::Q4KM => 15,
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preset {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Preset, String> {
        match s.to_ascii_lowercase().as_str() {
            "bf16" => Ok(Preset::Bf16),
            "q8_0" => Ok(Preset::Q8_0),
            "q4_k_m" => Ok(Preset::Q4KM),
            _ => Err(format!(
                "unknown quantization type `{s}` (expected q8_0, q4_k_m or bf16)"
            )),
        }
    }
}

/// llama.cpp's `use_more_bits(i_layer, n_layers)`: the first and last eighth of the layers, and
/// every third layer in between. (C's `%` truncates like Rust's, so negative left operands agree.)
pub fn use_more_bits(i_layer: usize, n_layers: usize) -> bool {
    let (i, n) = (i_layer as i64, n_layers as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// What a tensor will be stored as, and why if it is not the preset's first choice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub dtype: DType,
    /// Set when a fallback replaced the preferred type.
    pub fallback: Option<String>,
}

/// Facts about the checkpoint the rules need.
#[derive(Clone, Copy, Debug)]
pub struct ModelFacts {
    /// Decoder layers of the language model.
    pub n_layers: usize,
    /// Whether lm_head shares the token embedding (then the embedding gets lm_head's type).
    pub tied_embeddings: bool,
}

/// Storage type for a tensor of class `class` and HF shape `shape`, stored in the checkpoint as
/// `src`.
pub fn choose_type(
    preset: Preset,
    class: TensorClass,
    shape: &[usize],
    src: DType,
    facts: ModelFacts,
    quantize_vision: bool,
) -> Choice {
    let keep = Choice {
        dtype: src,
        fallback: None,
    };
    if !src.is_float() {
        return keep;
    }
    if shape.len() <= 1 {
        return Choice {
            dtype: DType::F32,
            fallback: None,
        };
    }
    let vision = class.tower == Tower::Vision;
    let want = match preset {
        Preset::Bf16 => DType::BF16,
        _ if vision && !quantize_vision => DType::BF16,
        Preset::Q8_0 => DType::Q8_0,
        Preset::Q4KM => {
            let is_output =
                class.role == Role::LmHead || (facts.tied_embeddings && class.role == Role::Embed);
            let bumped = !vision
                && matches!(class.role, Role::AttnV | Role::MlpDown)
                && class
                    .layer
                    .is_some_and(|i| use_more_bits(i, facts.n_layers));
            if is_output || bumped {
                DType::Q6K
            } else {
                DType::Q4K
            }
        }
    };
    let row = *shape.last().unwrap();
    if row.is_multiple_of(want.block_len()) {
        return Choice {
            dtype: want,
            fallback: None,
        };
    }
    let dtype = if want.is_quantized()
        && want != DType::Q8_0
        && row.is_multiple_of(DType::Q8_0.block_len())
    {
        DType::Q8_0
    } else {
        DType::BF16
    };
    Choice {
        dtype,
        fallback: Some(format!(
            "row length {row} is not a multiple of the {want} block size {}: stored as {dtype}",
            want.block_len()
        )),
    }
}

/// Converts a tensor whose rows have `row_len` elements from `src_dtype` bytes to `dst` bytes,
/// rows in parallel. `src` must be whole rows; `out` receives `row_bytes(dst, row_len)` per row.
pub fn convert_rows(
    src_dtype: DType,
    src: &[u8],
    dst: DType,
    row_len: usize,
    out: &mut [u8],
) -> Result<()> {
    let sb = row_bytes(src_dtype, row_len)?;
    let db = row_bytes(dst, row_len)?;
    if sb == 0 || !src.len().is_multiple_of(sb) || out.len() != src.len() / sb * db {
        return Err(Error::Other(format!(
            "quant: converting rows of {row_len} from {src_dtype} ({} bytes) to {dst} ({} bytes): sizes do not fit",
            src.len(),
            out.len()
        )));
    }
    if src_dtype == dst {
        out.copy_from_slice(src);
        return Ok(());
    }
    // Blocks of rows per task so tiny rows do not cost one task each.
    let rows_per_task = (1 << 16) / row_len.max(1) + 1;
    src.par_chunks(sb * rows_per_task)
        .zip(out.par_chunks_mut(db * rows_per_task))
        .try_for_each(|(s, o)| {
            let mut f = vec![0.0f32; row_len];
            for (sr, or) in s.chunks_exact(sb).zip(o.chunks_exact_mut(db)) {
                dequantize_row(src_dtype, sr, &mut f)?;
                quantize_row(dst, &f, or)?;
            }
            Ok(())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::classify_tensor as class;

    const FACTS: ModelFacts = ModelFacts {
        n_layers: 28,
        tied_embeddings: false,
    };

    #[test]
    fn use_more_bits_matches_llama_cpp_for_28_layers() {
        // n/8 = 3, 7n/8 = 24: layers 0-2, 24-27, and 5, 8, ..., 23.
        let got: Vec<usize> = (0..28).filter(|&i| use_more_bits(i, 28)).collect();
        assert_eq!(got, vec![0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26, 27]);
    }

    #[test]
    fn q4_k_m_mix() {
        let c = |name: &str, shape: &[usize]| {
            choose_type(Preset::Q4KM, class(name), shape, DType::BF16, FACTS, false)
        };
        assert_eq!(c("lm_head.weight", &[152064, 3584]).dtype, DType::Q6K);
        assert_eq!(
            c("model.embed_tokens.weight", &[152064, 3584]).dtype,
            DType::Q4K
        );
        assert_eq!(
            c("model.layers.0.self_attn.v_proj.weight", &[512, 3584]).dtype,
            DType::Q6K
        );
        assert_eq!(
            c("model.layers.3.self_attn.v_proj.weight", &[512, 3584]).dtype,
            DType::Q4K
        );
        assert_eq!(
            c("model.layers.5.mlp.down_proj.weight", &[3584, 18944]).dtype,
            DType::Q6K
        );
        assert_eq!(
            c("model.layers.6.mlp.down_proj.weight", &[3584, 18944]).dtype,
            DType::Q4K
        );
        assert_eq!(
            c("model.layers.5.mlp.up_proj.weight", &[18944, 3584]).dtype,
            DType::Q4K
        );
        assert_eq!(
            c("model.layers.5.self_attn.q_proj.bias", &[3584]).dtype,
            DType::F32
        );
        assert_eq!(c("model.norm.weight", &[3584]).dtype, DType::F32);
        // Vision stays bf16 by default; quantized on request, with the 3420-wide fallback.
        assert_eq!(
            c("visual.blocks.0.attn.qkv.weight", &[3840, 1280]).dtype,
            DType::BF16
        );
        let v = |name: &str, shape: &[usize]| {
            choose_type(Preset::Q4KM, class(name), shape, DType::BF16, FACTS, true)
        };
        assert_eq!(
            v("visual.blocks.0.attn.qkv.weight", &[3840, 1280]).dtype,
            DType::Q4K
        );
        let fb = v("visual.blocks.0.mlp.down_proj.weight", &[1280, 3420]);
        assert_eq!(fb.dtype, DType::BF16);
        assert!(fb.fallback.unwrap().contains("3420"));
        // 1176 = 3*2*14*14 is a multiple of 8 but not 32 or 256.
        assert_eq!(
            v("visual.patch_embed.proj.weight", &[1280, 3, 2, 14, 14]).dtype,
            DType::BF16
        );
        // A K-quant row of 32*k falls back to Q8_0.
        assert_eq!(
            v("visual.merger.mlp.0.weight", &[5120, 5120 + 32]).dtype,
            DType::Q8_0
        );
        // Tied embeddings take lm_head's type.
        let tied = ModelFacts {
            n_layers: 28,
            tied_embeddings: true,
        };
        assert_eq!(
            choose_type(
                Preset::Q4KM,
                class("model.embed_tokens.weight"),
                &[1000, 256],
                DType::BF16,
                tied,
                false
            )
            .dtype,
            DType::Q6K
        );
    }

    #[test]
    fn q8_0_and_bf16_presets() {
        let q = |name: &str, shape: &[usize]| {
            choose_type(Preset::Q8_0, class(name), shape, DType::BF16, FACTS, false)
        };
        assert_eq!(
            q("model.embed_tokens.weight", &[152064, 3584]).dtype,
            DType::Q8_0
        );
        assert_eq!(q("lm_head.weight", &[152064, 3584]).dtype, DType::Q8_0);
        assert_eq!(
            q("model.layers.0.input_layernorm.weight", &[3584]).dtype,
            DType::F32
        );
        assert_eq!(
            q("visual.blocks.0.attn.qkv.weight", &[3840, 1280]).dtype,
            DType::BF16
        );
        let b = |name: &str, shape: &[usize]| {
            choose_type(Preset::Bf16, class(name), shape, DType::F32, FACTS, false)
        };
        assert_eq!(b("lm_head.weight", &[152064, 3584]).dtype, DType::BF16);
        assert_eq!(b("model.norm.weight", &[3584]).dtype, DType::F32);
        // Integer tensors are kept as they are.
        assert_eq!(q("x", &[4, 4]).dtype, DType::BF16);
        assert_eq!(
            choose_type(
                Preset::Q8_0,
                class("ids"),
                &[4, 32],
                DType::I32,
                FACTS,
                false
            )
            .dtype,
            DType::I32
        );
        assert_eq!("Q4_K_M".parse::<Preset>().unwrap(), Preset::Q4KM);
        assert!("q5_k".parse::<Preset>().unwrap_err().contains("q5_k"));
    }

    /// The storage type the README documents for a tensor, stated on names so that it does not
    /// share the role table it checks: 1-D tensors F32; `bf16` BF16; the vision tower
    /// (`visual.*`) BF16 unless quantized on request; `q8_0` Q8_0; `q4_k_m` Q6_K for
    /// `lm_head.weight` (the embedding when tied) and for `v_proj` / `down_proj` of llama.cpp's
    /// layers (for 28 layers: 0-2, 24-27 and every third from 5), else Q4_K; a row that fills no
    /// block falls back K-quant -> Q8_0 -> BF16.
    fn documented(preset: Preset, name: &str, shape: &[usize], tied: bool, vision: bool) -> DType {
        const MORE_BITS_28: [usize; 14] = [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26, 27];
        if shape.len() == 1 {
            return DType::F32;
        }
        let want = match preset {
            Preset::Bf16 => DType::BF16,
            _ if name.starts_with("visual.") && !vision => DType::BF16,
            Preset::Q8_0 => DType::Q8_0,
            Preset::Q4KM => {
                let layer = name
                    .strip_prefix("model.layers.")
                    .and_then(|r| r.split('.').next())
                    .and_then(|n| n.parse::<usize>().ok());
                let bumped = (name.ends_with(".self_attn.v_proj.weight")
                    || name.ends_with(".mlp.down_proj.weight"))
                    && layer.is_some_and(|l| MORE_BITS_28.contains(&l));
                let output =
                    name == "lm_head.weight" || (tied && name == "model.embed_tokens.weight");
                if output || bumped {
                    DType::Q6K
                } else {
                    DType::Q4K
                }
            }
        };
        let row = *shape.last().unwrap();
        if row.is_multiple_of(want.block_len()) {
            want
        } else if matches!(want, DType::Q4K | DType::Q6K) && row.is_multiple_of(32) {
            DType::Q8_0
        } else {
            DType::BF16
        }
    }

    /// Every tensor of the Qwen2.5-VL-7B inventory (both name spellings, tied or not) gets the
    /// documented type from the role rules, in every preset.
    #[test]
    fn role_rules_give_the_documented_types_on_7b() {
        use crate::model::qwen2_5_vl::inventory::{alternate_name, expected, Part};
        use crate::model::qwen2_5_vl::ModelConfig;
        let mut seen = std::collections::BTreeMap::new();
        for tied in [false, true] {
            let mut cfg = ModelConfig::qwen2_5_vl_7b();
            cfg.text.tie_word_embeddings = tied;
            let facts = ModelFacts {
                n_layers: 28,
                tied_embeddings: tied,
            };
            let specs = expected(&cfg, Part::Both);
            assert_eq!(specs.len(), 3 + 28 * 12 + 6 + 32 * 12 - tied as usize);
            for preset in [Preset::Bf16, Preset::Q8_0, Preset::Q4KM] {
                for vision in [false, true] {
                    for t in &specs {
                        let want = documented(preset, &t.name, &t.shape, tied, vision);
                        let names = [Some(t.name.clone()), alternate_name(&t.name)];
                        for name in names.iter().flatten() {
                            let got = choose_type(
                                preset,
                                class(name),
                                &t.shape,
                                DType::BF16,
                                facts,
                                vision,
                            );
                            assert_eq!(
                                got.dtype, want,
                                "{preset} {name} tied {tied} vision {vision}"
                            );
                        }
                        *seen.entry((preset.name(), want.name())).or_insert(0) += 1;
                    }
                }
            }
        }
        // 14 bumped layers x (v_proj, down_proj) + the output head, per (tied, vision) pair.
        assert_eq!(seen[&("q4_k_m", "q6_k")], 2 * 2 * (28 + 1));
    }

    #[test]
    fn convert_rows_matches_per_row_quantization() {
        let (rows, k) = (5, 512);
        let x: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3)
            .collect();
        let mut bf = vec![0u8; rows * k * 2];
        quantize_row(DType::BF16, &x, &mut bf).unwrap();
        for dst in [DType::Q8_0, DType::Q4K, DType::Q6K, DType::F32, DType::BF16] {
            let mut out = vec![0u8; rows * row_bytes(dst, k).unwrap()];
            convert_rows(DType::BF16, &bf, dst, k, &mut out).unwrap();
            let mut xf = vec![0.0f32; rows * k];
            dequantize_row(DType::BF16, &bf, &mut xf).unwrap();
            let mut want = vec![0u8; out.len()];
            quantize_row(dst, &xf, &mut want).unwrap();
            assert_eq!(out, want, "{dst}");
        }
        let mut out = vec![0u8; 10];
        assert!(convert_rows(DType::BF16, &bf, DType::Q8_0, k, &mut out).is_err());
    }
}
