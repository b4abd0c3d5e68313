//! What the engine asks of a model architecture. Each architecture lives in its own folder
//! under `model/` and is registered once in [`super::ARCHITECTURES`]; the engine, the CLI and
//! `reel-quantize` reach it only through these traits.

use crate::backend::{Backend, TRef};
use crate::error::Result;
use crate::graph::Graph;
use crate::kv::KvSpec;
use crate::model::inputs::{MediaOptions, Prepared, VisionInput};
use crate::model::text::TextPass;
use crate::model::Model;
use crate::prompt::messages::Message;
use crate::store::WeightStore;
use crate::tensor::DType;

/// One architecture, bound to a checkpoint's parsed configuration.
pub trait Architecture: Send + Sync {
    /// Checks the language model's tensors in `store` and puts them on `be`.
    fn load_text(
        &self,
        be: &mut dyn Backend,
        store: &dyn WeightStore,
    ) -> Result<Box<dyn TextModel>>;

    /// Checks the vision tower's tensors in `store` and puts them on `be` (the engine does this
    /// on the first request with media).
    fn load_vision(
        &self,
        be: &mut dyn Backend,
        store: &dyn WeightStore,
    ) -> Result<Box<dyn VisionModel>>;

    /// Decodes and preprocesses the media of a conversation and tokenizes it with the
    /// checkpoint's chat template, each vision pad expanded to its item's token count.
    fn prepare(
        &self,
        model: &Model,
        messages: &[Message],
        system: Option<&str>,
        opts: &MediaOptions,
    ) -> Result<Prepared>;

    /// Positions of a prepared prompt and the rows its vision embeddings go to.
    fn prompt_layout(&self, prompt: &[u32], media: &[VisionInput]) -> Result<PromptLayout>;

    /// Position ids (the `pos` input of a one-token pass) of the token at cache position
    /// `cache_pos` during decode.
    fn decode_positions(&self, cache_pos: usize, rope_delta: i32) -> [i32; 3];
}

/// Where a prompt's tokens sit.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptLayout {
    /// The `pos` input of the prefill pass, row-major.
    pub positions: Vec<i32>,
    /// Offset of decode positions from cache positions.
    pub rope_delta: i32,
    /// Prompt rows that take the vision embeddings, in the order [`VisionModel::encode`]
    /// returns them.
    pub vision_rows: Vec<i32>,
}

/// A language model whose weights are on a backend.
pub trait TextModel {
    /// The KV cache the model needs, in entries of `dtype`.
    fn kv_spec(&self, dtype: DType) -> KvSpec;

    /// The graph of one pass (inputs and output as `crate::model::text` names them).
    fn build(&self, pass: &TextPass, act: DType) -> Graph;
}

/// A vision tower whose weights are on a backend.
pub trait VisionModel {
    /// Runs the tower over `media` (prompt order) and returns the embeddings `[n, hidden]` in
    /// `act`, in a buffer of their own on `be` that the caller frees once the prefill has read
    /// them.
    fn encode(&self, be: &mut dyn Backend, media: &[VisionInput], act: DType) -> Result<TRef>;
}
