//! The checkpoint tensor inventory: expected names, shapes and types, and their validation.
//!
//! Names are the on-disk (transformers 4.x) names: `model.*` for the language model, `visual.*`
//! for the vision tower, `lm_head.weight`. Files saved by newer transformers may use the
//! in-memory names `model.language_model.*` and `model.visual.*`; [`resolve`] accepts both.

use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::store::{TensorInfo, WeightStore};
use std::collections::BTreeMap;

/// Which part of the model to check or load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Text,
    Vision,
    Both,
}

/// One tensor the model needs: canonical name and exact shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    pub name: String,
    pub shape: Vec<usize>,
}

fn ex(name: String, shape: &[usize]) -> Expected {
    Expected {
        name,
        shape: shape.to_vec(),
    }
}

/// The other spelling of a canonical name (`model.x` ↔ `model.language_model.x`,
/// `visual.x` ↔ `model.visual.x`), if it has one.
pub fn alternate_name(canonical: &str) -> Option<String> {
    if let Some(rest) = canonical.strip_prefix("visual.") {
        Some(format!("model.visual.{rest}"))
    } else {
        canonical
            .strip_prefix("model.")
            .map(|rest| format!("model.language_model.{rest}"))
    }
}

/// The tensor under its canonical name or its newer alias. Tensors in a type reel cannot read
/// count as absent here; [`fetch`] reports them.
pub fn resolve(store: &dyn WeightStore, canonical: &str) -> Option<TensorInfo> {
    try_resolve(store, canonical).ok().flatten()
}

/// Like [`resolve`], but a tensor in an unreadable type is an error naming it.
pub fn try_resolve(store: &dyn WeightStore, canonical: &str) -> Result<Option<TensorInfo>> {
    if let Some(t) = store.lookup(canonical)? {
        return Ok(Some(t));
    }
    match alternate_name(canonical) {
        Some(alt) => store.lookup(&alt),
        None => Ok(None),
    }
}

/// The tensor `canonical`, checked: present, a weight type (float or quantized), exact shape,
/// and a byte length that matches. Errors name the tensor, what was expected and the file.
pub fn fetch(store: &dyn WeightStore, canonical: &str, shape: &[usize]) -> Result<TensorInfo> {
    let Some(t) = try_resolve(store, canonical)? else {
        let also = alternate_name(canonical)
            .map(|a| format!(" (or `{a}`)"))
            .unwrap_or_default();
        return Err(Error::Checkpoint(format!(
            "tensor `{canonical}`{also} is missing from {}; expected shape {shape:?}",
            store.describe()
        )));
    };
    let origin = || store.origin(&t.name);
    if !(t.dtype.is_float() || t.dtype.is_quantized()) {
        return Err(Error::Checkpoint(format!(
            "tensor `{}` in {} has dtype {}; weights must be bf16, f16, f32 or a quantized type",
            t.name,
            origin(),
            t.dtype
        )));
    }
    if t.shape != shape {
        return Err(Error::Checkpoint(format!(
            "tensor `{}` in {}: expected shape {shape:?}, found {:?}",
            t.name,
            origin(),
            t.shape
        )));
    }
    let numel = t.numel();
    let block = t.dtype.block_len();
    let row = shape.last().copied().unwrap_or(1);
    if row % block != 0 || numel % block != 0 {
        return Err(Error::Checkpoint(format!(
            "tensor `{}` in {}: {} blocks of {block} do not fit rows of {row}",
            t.name,
            origin(),
            t.dtype
        )));
    }
    if t.bytes.len() != t.dtype.bytes_for(numel) {
        return Err(Error::Checkpoint(format!(
            "tensor `{}` in {}: {} bytes, but {shape:?} of {} needs {}",
            t.name,
            origin(),
            t.bytes.len(),
            t.dtype,
            t.dtype.bytes_for(numel)
        )));
    }
    Ok(t)
}

// ---------------------------------------------------------------------------------------------
// Inventory. Each list is in a fixed order that the loaders below destructure, so the loaders
// and `validate` cannot disagree about names or shapes.

/// `model.embed_tokens.weight`, `model.norm.weight`, and `lm_head.weight` unless tied.
fn text_globals(cfg: &ModelConfig) -> Vec<Expected> {
    let t = &cfg.text;
    let mut v = vec![
        ex(
            "model.embed_tokens.weight".into(),
            &[t.vocab_size, t.hidden_size],
        ),
        ex("model.norm.weight".into(), &[t.hidden_size]),
    ];
    if !t.tie_word_embeddings {
        v.push(ex("lm_head.weight".into(), &[t.vocab_size, t.hidden_size]));
    }
    v
}

/// The 12 tensors of text layer `i`, in [`LayerWeights`] field order.
fn text_layer(cfg: &ModelConfig, i: usize) -> Vec<Expected> {
    let t = &cfg.text;
    let (d, q, kv, f) = (
        t.hidden_size,
        t.num_attention_heads * t.head_dim,
        t.num_key_value_heads * t.head_dim,
        t.intermediate_size,
    );
    let p = format!("model.layers.{i}.");
    vec![
        ex(format!("{p}input_layernorm.weight"), &[d]),
        ex(format!("{p}self_attn.q_proj.weight"), &[q, d]),
        ex(format!("{p}self_attn.q_proj.bias"), &[q]),
        ex(format!("{p}self_attn.k_proj.weight"), &[kv, d]),
        ex(format!("{p}self_attn.k_proj.bias"), &[kv]),
        ex(format!("{p}self_attn.v_proj.weight"), &[kv, d]),
        ex(format!("{p}self_attn.v_proj.bias"), &[kv]),
        ex(format!("{p}self_attn.o_proj.weight"), &[d, q]),
        ex(format!("{p}post_attention_layernorm.weight"), &[d]),
        ex(format!("{p}mlp.gate_proj.weight"), &[f, d]),
        ex(format!("{p}mlp.up_proj.weight"), &[f, d]),
        ex(format!("{p}mlp.down_proj.weight"), &[d, f]),
    ]
}

/// Patch embedding, merger (ln_q, mlp.0, mlp.2), in [`VisionWeights`] field order.
fn vision_globals(cfg: &ModelConfig) -> Vec<Expected> {
    let v = &cfg.vision;
    let d = v.hidden_size;
    let m = d * v.spatial_merge_size * v.spatial_merge_size;
    vec![
        ex(
            "visual.patch_embed.proj.weight".into(),
            &[
                d,
                v.in_channels,
                v.temporal_patch_size,
                v.patch_size,
                v.patch_size,
            ],
        ),
        ex("visual.merger.ln_q.weight".into(), &[d]),
        ex("visual.merger.mlp.0.weight".into(), &[m, m]),
        ex("visual.merger.mlp.0.bias".into(), &[m]),
        ex("visual.merger.mlp.2.weight".into(), &[v.out_hidden_size, m]),
        ex("visual.merger.mlp.2.bias".into(), &[v.out_hidden_size]),
    ]
}

/// The 12 tensors of vision block `i`, in [`VisionBlockWeights`] field order.
fn vision_block(cfg: &ModelConfig, i: usize) -> Vec<Expected> {
    let v = &cfg.vision;
    let (d, f) = (v.hidden_size, v.intermediate_size);
    let p = format!("visual.blocks.{i}.");
    vec![
        ex(format!("{p}norm1.weight"), &[d]),
        ex(format!("{p}norm2.weight"), &[d]),
        ex(format!("{p}attn.qkv.weight"), &[3 * d, d]),
        ex(format!("{p}attn.qkv.bias"), &[3 * d]),
        ex(format!("{p}attn.proj.weight"), &[d, d]),
        ex(format!("{p}attn.proj.bias"), &[d]),
        ex(format!("{p}mlp.gate_proj.weight"), &[f, d]),
        ex(format!("{p}mlp.gate_proj.bias"), &[f]),
        ex(format!("{p}mlp.up_proj.weight"), &[f, d]),
        ex(format!("{p}mlp.up_proj.bias"), &[f]),
        ex(format!("{p}mlp.down_proj.weight"), &[d, f]),
        ex(format!("{p}mlp.down_proj.bias"), &[d]),
    ]
}

/// Every tensor `which` needs, with exact shapes (canonical names).
pub fn expected(cfg: &ModelConfig, which: Part) -> Vec<Expected> {
    let mut out = Vec::new();
    if which != Part::Vision {
        out.extend(text_globals(cfg));
        for i in 0..cfg.text.num_hidden_layers {
            out.extend(text_layer(cfg, i));
        }
    }
    if which != Part::Text {
        out.extend(vision_globals(cfg));
        for i in 0..cfg.vision.depth {
            out.extend(vision_block(cfg, i));
        }
    }
    out
}

/// Checks that every tensor `which` needs is present, in a weight type, with its exact shape.
/// The first problem is the error; it names the tensor, the expectation and the file.
pub fn validate(store: &dyn WeightStore, cfg: &ModelConfig, which: Part) -> Result<()> {
    for e in expected(cfg, which) {
        fetch(store, &e.name, &e.shape)?;
    }
    Ok(())
}

fn fetch_all(store: &dyn WeightStore, list: Vec<Expected>) -> Result<Vec<TensorInfo>> {
    list.iter()
        .map(|e| fetch(store, &e.name, &e.shape))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Typed accessors for the model code.

/// One decoder layer. Linear weights are `[out, in]`.
#[derive(Clone, Debug)]
pub struct LayerWeights {
    pub input_norm: TensorInfo,
    pub q: TensorInfo,
    pub q_bias: TensorInfo,
    pub k: TensorInfo,
    pub k_bias: TensorInfo,
    pub v: TensorInfo,
    pub v_bias: TensorInfo,
    pub o: TensorInfo,
    pub post_norm: TensorInfo,
    pub gate: TensorInfo,
    pub up: TensorInfo,
    pub down: TensorInfo,
}

/// The language model's weights.
#[derive(Clone, Debug)]
pub struct TextWeights {
    pub embed: TensorInfo,
    pub layers: Vec<LayerWeights>,
    pub norm: TensorInfo,
    /// `lm_head.weight`, or the embedding table when the config ties them.
    pub lm_head: TensorInfo,
}

impl TextWeights {
    /// Loads and validates every language-model tensor.
    pub fn load(store: &dyn WeightStore, cfg: &ModelConfig) -> Result<TextWeights> {
        let mut g = fetch_all(store, text_globals(cfg))?.into_iter();
        let embed = g.next().expect("inventory");
        let norm = g.next().expect("inventory");
        let lm_head = g.next().unwrap_or_else(|| embed.clone());
        let mut layers = Vec::with_capacity(cfg.text.num_hidden_layers);
        for i in 0..cfg.text.num_hidden_layers {
            let t: [TensorInfo; 12] = fetch_all(store, text_layer(cfg, i))?
                .try_into()
                .expect("12 tensors per layer");
            let [input_norm, q, q_bias, k, k_bias, v, v_bias, o, post_norm, gate, up, down] = t;
            layers.push(LayerWeights {
                input_norm,
                q,
                q_bias,
                k,
                k_bias,
                v,
                v_bias,
                o,
                post_norm,
                gate,
                up,
                down,
            });
        }
        Ok(TextWeights {
            embed,
            layers,
            norm,
            lm_head,
        })
    }
}

/// One vision block. Linear weights are `[out, in]`; every linear has a bias.
#[derive(Clone, Debug)]
pub struct VisionBlockWeights {
    pub norm1: TensorInfo,
    pub norm2: TensorInfo,
    /// `[3·hidden, hidden]`: rows are q, then k, then v.
    pub qkv: TensorInfo,
    pub qkv_bias: TensorInfo,
    pub proj: TensorInfo,
    pub proj_bias: TensorInfo,
    pub gate: TensorInfo,
    pub gate_bias: TensorInfo,
    pub up: TensorInfo,
    pub up_bias: TensorInfo,
    pub down: TensorInfo,
    pub down_bias: TensorInfo,
}

/// The vision tower's weights.
#[derive(Clone, Debug)]
pub struct VisionWeights {
    /// The Conv3d kernel viewed as a matrix `[hidden, in_channels·temporal·patch·patch]`
    /// (`[1280, 1176]` for 7B): the same bytes, so patch embedding is one matmul of the
    /// flattened patches against it.
    pub patch_embed: TensorInfo,
    pub blocks: Vec<VisionBlockWeights>,
    pub merger_ln: TensorInfo,
    /// `[hidden·merge², hidden·merge²]`.
    pub merger_fc1: TensorInfo,
    pub merger_fc1_bias: TensorInfo,
    /// `[out_hidden, hidden·merge²]`.
    pub merger_fc2: TensorInfo,
    pub merger_fc2_bias: TensorInfo,
}

impl VisionWeights {
    /// Loads and validates every vision-tower tensor.
    pub fn load(store: &dyn WeightStore, cfg: &ModelConfig) -> Result<VisionWeights> {
        let g: [TensorInfo; 6] = fetch_all(store, vision_globals(cfg))?
            .try_into()
            .expect("6 vision globals");
        let [conv, merger_ln, merger_fc1, merger_fc1_bias, merger_fc2, merger_fc2_bias] = g;
        let cols: usize = conv.shape[1..].iter().product();
        if conv.dtype.is_quantized() && cols % conv.dtype.block_len() != 0 {
            return Err(Error::Checkpoint(format!(
                "tensor `{}` in {}: {} blocks do not fit its {cols}-wide matrix rows",
                conv.name,
                store.origin(&conv.name),
                conv.dtype
            )));
        }
        let patch_embed = TensorInfo {
            shape: vec![conv.shape[0], cols],
            ..conv
        };
        let mut blocks = Vec::with_capacity(cfg.vision.depth);
        for i in 0..cfg.vision.depth {
            let t: [TensorInfo; 12] = fetch_all(store, vision_block(cfg, i))?
                .try_into()
                .expect("12 tensors per block");
            let [norm1, norm2, qkv, qkv_bias, proj, proj_bias, gate, gate_bias, up, up_bias, down, down_bias] =
                t;
            blocks.push(VisionBlockWeights {
                norm1,
                norm2,
                qkv,
                qkv_bias,
                proj,
                proj_bias,
                gate,
                gate_bias,
                up,
                up_bias,
                down,
                down_bias,
            });
        }
        Ok(VisionWeights {
            patch_embed,
            blocks,
            merger_ln,
            merger_fc1,
            merger_fc1_bias,
            merger_fc2,
            merger_fc2_bias,
        })
    }
}

/// Tensor count and bytes by dtype, for `reel info`.
pub fn store_summary(store: &dyn WeightStore) -> String {
    let names = store.names();
    let mut by_type: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    for n in &names {
        let dt = store.file_dtype(n).unwrap_or_else(|| "?".into());
        let slot = by_type.entry(dt).or_default();
        slot.0 += 1;
        if let Some(t) = store.get(n) {
            slot.1 += t.bytes.len();
            slot.2 += t.numel();
        }
    }
    let total_bytes: usize = by_type.values().map(|v| v.1).sum();
    let total_params: usize = by_type.values().map(|v| v.2).sum();
    let mut s = format!(
        "{} tensors, {} parameters, {:.1} MiB",
        names.len(),
        total_params,
        total_bytes as f64 / (1024.0 * 1024.0)
    );
    for (dt, (count, bytes, _)) in by_type {
        s.push_str(&format!("\n  {dt}: {count} tensors, {bytes} bytes"));
    }
    s
}
