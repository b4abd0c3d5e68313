//! Qwen2.5-VL's tensors: canonical (transformers 4.x on-disk) names, exact shapes, roles.
//!
//! `model.*` is the language model, `visual.*` the vision tower, `lm_head.weight` the output
//! head (absent when tied to the embedding). Files saved by newer transformers use the
//! in-memory names `model.language_model.*` and `model.visual.*`; both spellings are accepted.
//! Rows are in the order the loaders and the old field order used: the text model's single
//! tensors, its layers, then the vision tower's single tensors and its blocks.

use super::config::ModelConfig;
use crate::model::inventory::{Inventory, Role::*, TensorClass, TensorDef, TensorSpec, Tower::*};

pub use crate::model::inventory::Part;

/// Hidden size, q width, kv width and MLP width of the language model.
fn text_dims(c: &ModelConfig) -> (usize, usize, usize, usize) {
    let t = &c.text;
    (
        t.hidden_size,
        t.num_attention_heads * t.head_dim,
        t.num_key_value_heads * t.head_dim,
        t.intermediate_size,
    )
}

/// Width of one merged unit (`merge²` patches side by side).
fn merged(c: &ModelConfig) -> usize {
    c.vision.hidden_size * c.vision.spatial_merge_size * c.vision.spatial_merge_size
}

const TENSORS: &[TensorDef<ModelConfig>] = &[
    TensorDef::new(Text, Embed, "model.embed_tokens.weight", |c| {
        vec![c.text.vocab_size, c.text.hidden_size]
    }),
    TensorDef::new(Text, FinalNorm, "model.norm.weight", |c| {
        vec![c.text.hidden_size]
    }),
    TensorDef {
        present: |c| !c.text.tie_word_embeddings,
        ..TensorDef::new(Text, LmHead, "lm_head.weight", |c| {
            vec![c.text.vocab_size, c.text.hidden_size]
        })
    },
    TensorDef::new(
        Text,
        AttnNorm,
        "model.layers.{i}.input_layernorm.weight",
        |c| vec![c.text.hidden_size],
    ),
    TensorDef::new(
        Text,
        AttnQ,
        "model.layers.{i}.self_attn.q_proj.weight",
        |c| {
            let (d, q, _, _) = text_dims(c);
            vec![q, d]
        },
    ),
    TensorDef::new(
        Text,
        AttnQBias,
        "model.layers.{i}.self_attn.q_proj.bias",
        |c| vec![text_dims(c).1],
    ),
    TensorDef::new(
        Text,
        AttnK,
        "model.layers.{i}.self_attn.k_proj.weight",
        |c| {
            let (d, _, kv, _) = text_dims(c);
            vec![kv, d]
        },
    ),
    TensorDef::new(
        Text,
        AttnKBias,
        "model.layers.{i}.self_attn.k_proj.bias",
        |c| vec![text_dims(c).2],
    ),
    TensorDef::new(
        Text,
        AttnV,
        "model.layers.{i}.self_attn.v_proj.weight",
        |c| {
            let (d, _, kv, _) = text_dims(c);
            vec![kv, d]
        },
    ),
    TensorDef::new(
        Text,
        AttnVBias,
        "model.layers.{i}.self_attn.v_proj.bias",
        |c| vec![text_dims(c).2],
    ),
    TensorDef::new(
        Text,
        AttnO,
        "model.layers.{i}.self_attn.o_proj.weight",
        |c| {
            let (d, q, _, _) = text_dims(c);
            vec![d, q]
        },
    ),
    TensorDef::new(
        Text,
        MlpNorm,
        "model.layers.{i}.post_attention_layernorm.weight",
        |c| vec![c.text.hidden_size],
    ),
    TensorDef::new(
        Text,
        MlpGate,
        "model.layers.{i}.mlp.gate_proj.weight",
        |c| {
            let (d, _, _, f) = text_dims(c);
            vec![f, d]
        },
    ),
    TensorDef::new(Text, MlpUp, "model.layers.{i}.mlp.up_proj.weight", |c| {
        let (d, _, _, f) = text_dims(c);
        vec![f, d]
    }),
    TensorDef::new(
        Text,
        MlpDown,
        "model.layers.{i}.mlp.down_proj.weight",
        |c| {
            let (d, _, _, f) = text_dims(c);
            vec![d, f]
        },
    ),
    TensorDef::new(
        Vision,
        VisionPatchEmbed,
        "visual.patch_embed.proj.weight",
        |c| {
            let v = &c.vision;
            let p = v.patch_size;
            vec![v.hidden_size, v.in_channels, v.temporal_patch_size, p, p]
        },
    ),
    TensorDef::new(Vision, MergerNorm, "visual.merger.ln_q.weight", |c| {
        vec![c.vision.hidden_size]
    }),
    TensorDef::new(Vision, MergerFc1, "visual.merger.mlp.0.weight", |c| {
        vec![merged(c), merged(c)]
    }),
    TensorDef::new(Vision, MergerFc1Bias, "visual.merger.mlp.0.bias", |c| {
        vec![merged(c)]
    }),
    TensorDef::new(Vision, MergerFc2, "visual.merger.mlp.2.weight", |c| {
        vec![c.vision.out_hidden_size, merged(c)]
    }),
    TensorDef::new(Vision, MergerFc2Bias, "visual.merger.mlp.2.bias", |c| {
        vec![c.vision.out_hidden_size]
    }),
    TensorDef::new(Vision, VisionNorm1, "visual.blocks.{i}.norm1.weight", |c| {
        vec![c.vision.hidden_size]
    }),
    TensorDef::new(Vision, VisionNorm2, "visual.blocks.{i}.norm2.weight", |c| {
        vec![c.vision.hidden_size]
    }),
    TensorDef::new(
        Vision,
        VisionQkv,
        "visual.blocks.{i}.attn.qkv.weight",
        |c| vec![3 * c.vision.hidden_size, c.vision.hidden_size],
    ),
    TensorDef::new(
        Vision,
        VisionQkvBias,
        "visual.blocks.{i}.attn.qkv.bias",
        |c| vec![3 * c.vision.hidden_size],
    ),
    TensorDef::new(
        Vision,
        VisionProj,
        "visual.blocks.{i}.attn.proj.weight",
        |c| vec![c.vision.hidden_size, c.vision.hidden_size],
    ),
    TensorDef::new(
        Vision,
        VisionProjBias,
        "visual.blocks.{i}.attn.proj.bias",
        |c| vec![c.vision.hidden_size],
    ),
    TensorDef::new(
        Vision,
        VisionGate,
        "visual.blocks.{i}.mlp.gate_proj.weight",
        |c| vec![c.vision.intermediate_size, c.vision.hidden_size],
    ),
    TensorDef::new(
        Vision,
        VisionGateBias,
        "visual.blocks.{i}.mlp.gate_proj.bias",
        |c| vec![c.vision.intermediate_size],
    ),
    TensorDef::new(
        Vision,
        VisionUp,
        "visual.blocks.{i}.mlp.up_proj.weight",
        |c| vec![c.vision.intermediate_size, c.vision.hidden_size],
    ),
    TensorDef::new(
        Vision,
        VisionUpBias,
        "visual.blocks.{i}.mlp.up_proj.bias",
        |c| vec![c.vision.intermediate_size],
    ),
    TensorDef::new(
        Vision,
        VisionDown,
        "visual.blocks.{i}.mlp.down_proj.weight",
        |c| vec![c.vision.hidden_size, c.vision.intermediate_size],
    ),
    TensorDef::new(
        Vision,
        VisionDownBias,
        "visual.blocks.{i}.mlp.down_proj.bias",
        |c| vec![c.vision.hidden_size],
    ),
];

/// The Qwen2.5-VL tensor table.
pub static INVENTORY: Inventory<ModelConfig> = Inventory {
    defs: TENSORS,
    layers: |c, tower| match tower {
        Text => c.text.num_hidden_layers,
        Vision => c.vision.depth,
    },
    aliases: &[
        ("visual.", "model.visual."),
        ("model.", "model.language_model."),
    ],
    tower_prefixes: &[("visual.", Vision)],
};

/// Every tensor `which` needs, with exact shapes, under canonical names.
pub fn expected(cfg: &ModelConfig, which: Part) -> Vec<TensorSpec> {
    INVENTORY.expand(cfg, which)
}

/// The other spelling of a canonical name (`model.x` ↔ `model.language_model.x`,
/// `visual.x` ↔ `model.visual.x`), if it has one.
pub fn alternate_name(canonical: &str) -> Option<String> {
    INVENTORY.alternate_name(canonical)
}

/// Role, tower and layer of a tensor named in either spelling.
pub fn classify(name: &str) -> TensorClass {
    INVENTORY.classify(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::inventory::Role;

    #[test]
    fn every_expanded_name_classifies_back_to_its_row() {
        let mut cfg = ModelConfig::qwen2_5_vl_7b();
        cfg.text.num_hidden_layers = 3;
        cfg.vision.depth = 12;
        for spec in expected(&cfg, Part::Both) {
            assert_eq!(classify(&spec.name), spec.class(), "{}", spec.name);
            let alt = alternate_name(&spec.name);
            if let Some(alt) = alt {
                assert_eq!(classify(&alt), spec.class(), "{alt}");
            }
        }
        // Unlisted tensors are `Other`, in the tower their prefix names; a layer index must be
        // a plain number.
        for (name, tower) in [
            ("visual.extra", Vision),
            ("model.visual.extra", Vision),
            ("model.layers.0.mlp.extra.weight", Text),
            ("model.layers.x1.mlp.down_proj.weight", Text),
            ("model.layers.+1.mlp.down_proj.weight", Text),
        ] {
            let c = classify(name);
            assert_eq!(
                (c.role, c.tower, c.layer),
                (Role::Other, tower, None),
                "{name}"
            );
        }
        let c = classify("model.language_model.layers.11.mlp.down_proj.weight");
        assert_eq!((c.role, c.layer), (Role::MlpDown, Some(11)));
    }
}
