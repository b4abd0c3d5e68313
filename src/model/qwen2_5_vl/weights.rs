//! Qwen2.5-VL's weights as typed structs, built from the inventory: checked checkpoint tensors
//! (`T = TensorInfo`) or tensors on a backend (`T = TRef`).

use super::config::ModelConfig;
use super::inventory::{expected, INVENTORY};
use crate::backend::{Backend, TRef};
use crate::error::{Error, Result};
use crate::model::checkpoint;
use crate::model::inventory::{Role, TensorSpec};
use crate::store::{TensorInfo, WeightStore};
use std::collections::HashMap;

pub use super::inventory::{alternate_name, Part};
pub use crate::model::checkpoint::store_summary;

/// The tensor under its canonical name or its newer alias. Tensors in a type reel cannot read
/// count as absent here; [`fetch`] reports them.
pub fn resolve(store: &dyn WeightStore, canonical: &str) -> Option<TensorInfo> {
    try_resolve(store, canonical).ok().flatten()
}

/// Like [`resolve`], but a tensor in an unreadable type is an error naming it.
pub fn try_resolve(store: &dyn WeightStore, canonical: &str) -> Result<Option<TensorInfo>> {
    checkpoint::try_resolve(&INVENTORY, store, canonical)
}

/// The tensor `canonical`, checked: present, a weight type (float or quantized), exact shape,
/// and a byte length that matches. Errors name the tensor, what was expected and the file.
pub fn fetch(store: &dyn WeightStore, canonical: &str, shape: &[usize]) -> Result<TensorInfo> {
    checkpoint::fetch(&INVENTORY, store, canonical, shape)
}

/// Checks that every tensor `which` needs is present, in a weight type, with its exact shape.
/// The first problem is the error; it names the tensor, the expectation and the file.
pub fn validate(store: &dyn WeightStore, cfg: &ModelConfig, which: Part) -> Result<()> {
    for e in expected(cfg, which) {
        fetch(store, &e.name, &e.shape)?;
    }
    Ok(())
}

/// One inventory tensor, checked, in the form the model code uses: the patch embedding's
/// Conv3d kernel `[hidden, C, T, P, P]` becomes the matrix `[hidden, C·T·P·P]` (the same
/// bytes), so patch embedding is one matmul of the flattened patches against it.
pub fn load_tensor(store: &dyn WeightStore, spec: &TensorSpec) -> Result<TensorInfo> {
    let t = fetch(store, &spec.name, &spec.shape)?;
    if spec.role != Role::VisionPatchEmbed {
        return Ok(t);
    }
    let cols: usize = t.shape[1..].iter().product();
    if t.dtype.is_quantized() && !cols.is_multiple_of(t.dtype.block_len()) {
        return Err(Error::Checkpoint(format!(
            "tensor `{}` in {}: {} blocks do not fit its {cols}-wide matrix rows",
            t.name,
            store.origin(&t.name),
            t.dtype
        )));
    }
    Ok(TensorInfo {
        shape: vec![t.shape[0], cols],
        ..t
    })
}

/// Loads, checks and puts one tensor on `be`, telling it which are matmul weights.
fn upload(be: &mut dyn Backend, store: &dyn WeightStore, spec: &TensorSpec) -> Result<TRef> {
    let t = checkpoint::upload(be, &load_tensor(store, spec)?)?;
    if spec.role.is_matmul_weight() {
        be.prepare_matmul_weight(&t)?;
    }
    Ok(t)
}

/// Tensors by (role, layer), made one inventory row at a time.
struct ByRole<T>(HashMap<(Role, Option<usize>), T>);

impl<T> ByRole<T> {
    /// Makes every tensor of `which` in inventory order; the first error stops.
    fn make(
        cfg: &ModelConfig,
        which: Part,
        mut make: impl FnMut(&TensorSpec) -> Result<T>,
    ) -> Result<Self> {
        let mut m = HashMap::new();
        for spec in expected(cfg, which) {
            let t = make(&spec)?;
            m.insert((spec.role, spec.layer), t);
        }
        Ok(ByRole(m))
    }

    fn get(&mut self, role: Role, layer: Option<usize>) -> Option<T> {
        self.0.remove(&(role, layer))
    }

    /// A tensor the inventory lists for every configuration.
    fn take(&mut self, role: Role, layer: Option<usize>) -> T {
        self.get(role, layer)
            .unwrap_or_else(|| panic!("the inventory lists {role:?} (layer {layer:?})"))
    }
}

/// One decoder layer. Linear weights are `[out, in]`.
#[derive(Clone, Debug)]
pub struct LayerTensors<T> {
    pub input_norm: T,
    pub q: T,
    pub q_bias: T,
    pub k: T,
    pub k_bias: T,
    pub v: T,
    pub v_bias: T,
    pub o: T,
    pub post_norm: T,
    pub gate: T,
    pub up: T,
    pub down: T,
}

/// The language model.
#[derive(Clone, Debug)]
pub struct TextTensors<T> {
    pub embed: T,
    pub layers: Vec<LayerTensors<T>>,
    pub norm: T,
    /// `lm_head.weight`, or the embedding table when the config ties them.
    pub lm_head: T,
}

/// One vision block. Linear weights are `[out, in]`; every linear has a bias.
#[derive(Clone, Debug)]
pub struct BlockTensors<T> {
    pub norm1: T,
    pub norm2: T,
    /// `[3·hidden, hidden]`: rows are q, then k, then v.
    pub qkv: T,
    pub qkv_bias: T,
    pub proj: T,
    pub proj_bias: T,
    pub gate: T,
    pub gate_bias: T,
    pub up: T,
    pub up_bias: T,
    pub down: T,
    pub down_bias: T,
}

/// The vision tower.
#[derive(Clone, Debug)]
pub struct VisionTensors<T> {
    /// The Conv3d kernel viewed as a matrix `[hidden, in_channels·temporal·patch·patch]`
    /// (`[1280, 1176]` for 7B); see [`load_tensor`].
    pub patch_embed: T,
    pub blocks: Vec<BlockTensors<T>>,
    pub merger_ln: T,
    /// `[hidden·merge², hidden·merge²]`.
    pub merger_fc1: T,
    pub merger_fc1_bias: T,
    /// `[out_hidden, hidden·merge²]`.
    pub merger_fc2: T,
    pub merger_fc2_bias: T,
}

pub type LayerWeights = LayerTensors<TensorInfo>;
pub type TextWeights = TextTensors<TensorInfo>;
pub type VisionBlockWeights = BlockTensors<TensorInfo>;
pub type VisionWeights = VisionTensors<TensorInfo>;
pub type LayerRefs = LayerTensors<TRef>;
pub type TextRefs = TextTensors<TRef>;
pub type VisionBlockRefs = BlockTensors<TRef>;
pub type VisionWeightRefs = VisionTensors<TRef>;

impl<T: Clone> TextTensors<T> {
    /// The language model from one `make(spec)` per inventory tensor, in inventory order.
    pub fn assemble(cfg: &ModelConfig, make: impl FnMut(&TensorSpec) -> Result<T>) -> Result<Self> {
        use Role::*;
        let mut m = ByRole::make(cfg, Part::Text, make)?;
        let layers = (0..cfg.text.num_hidden_layers)
            .map(|i| {
                let mut t = |role| m.take(role, Some(i));
                LayerTensors {
                    input_norm: t(AttnNorm),
                    q: t(AttnQ),
                    q_bias: t(AttnQBias),
                    k: t(AttnK),
                    k_bias: t(AttnKBias),
                    v: t(AttnV),
                    v_bias: t(AttnVBias),
                    o: t(AttnO),
                    post_norm: t(MlpNorm),
                    gate: t(MlpGate),
                    up: t(MlpUp),
                    down: t(MlpDown),
                }
            })
            .collect();
        let embed = m.take(Embed, None);
        let lm_head = m.get(LmHead, None).unwrap_or_else(|| embed.clone());
        Ok(TextTensors {
            layers,
            norm: m.take(FinalNorm, None),
            lm_head,
            embed,
        })
    }
}

impl<T> VisionTensors<T> {
    /// The vision tower from one `make(spec)` per inventory tensor, in inventory order.
    pub fn assemble(cfg: &ModelConfig, make: impl FnMut(&TensorSpec) -> Result<T>) -> Result<Self> {
        use Role::*;
        let mut m = ByRole::make(cfg, Part::Vision, make)?;
        let blocks = (0..cfg.vision.depth)
            .map(|i| {
                let mut t = |role| m.take(role, Some(i));
                BlockTensors {
                    norm1: t(VisionNorm1),
                    norm2: t(VisionNorm2),
                    qkv: t(VisionQkv),
                    qkv_bias: t(VisionQkvBias),
                    proj: t(VisionProj),
                    proj_bias: t(VisionProjBias),
                    gate: t(VisionGate),
                    gate_bias: t(VisionGateBias),
                    up: t(VisionUp),
                    up_bias: t(VisionUpBias),
                    down: t(VisionDown),
                    down_bias: t(VisionDownBias),
                }
            })
            .collect();
        Ok(VisionTensors {
            patch_embed: m.take(VisionPatchEmbed, None),
            blocks,
            merger_ln: m.take(MergerNorm, None),
            merger_fc1: m.take(MergerFc1, None),
            merger_fc1_bias: m.take(MergerFc1Bias, None),
            merger_fc2: m.take(MergerFc2, None),
            merger_fc2_bias: m.take(MergerFc2Bias, None),
        })
    }
}

impl TextWeights {
    /// Loads and checks every language-model tensor.
    pub fn load(store: &dyn WeightStore, cfg: &ModelConfig) -> Result<TextWeights> {
        TextTensors::assemble(cfg, |s| load_tensor(store, s))
    }
}

impl TextRefs {
    /// Loads, checks and puts the language model on `be` (a tied lm_head shares the
    /// embedding's buffer).
    pub fn load(
        be: &mut dyn Backend,
        store: &dyn WeightStore,
        cfg: &ModelConfig,
    ) -> Result<TextRefs> {
        TextTensors::assemble(cfg, |s| upload(be, store, s))
    }
}

impl VisionWeights {
    /// Loads and checks every vision-tower tensor.
    pub fn load(store: &dyn WeightStore, cfg: &ModelConfig) -> Result<VisionWeights> {
        VisionTensors::assemble(cfg, |s| load_tensor(store, s))
    }
}

impl VisionWeightRefs {
    /// Loads, checks and puts the vision tower on `be`.
    pub fn load(
        be: &mut dyn Backend,
        store: &dyn WeightStore,
        cfg: &ModelConfig,
    ) -> Result<VisionWeightRefs> {
        VisionTensors::assemble(cfg, |s| upload(be, store, s))
    }
}
