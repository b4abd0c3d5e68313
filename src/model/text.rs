//! What one pass of a language model is, as the engine asks for it: the graph every
//! architecture's text model builds has these inputs and this output.

use crate::backend::TRef;

/// What one forward pass computes.
#[derive(Clone, Debug)]
pub struct TextPass {
    /// Tokens fed in this pass (the prompt for prefill, 1 for decode).
    pub tokens: usize,
    /// Rows that need logits (usually just the last).
    pub logit_rows: usize,
    /// Vision embeddings [n, hidden] (a tensor the caller owns) to scatter into the rows named
    /// by the input `vision_rows`; None for text-only passes.
    pub vision: Option<TRef>,
    /// Keep every layer's output (`llm.layer.{i}`), `llm.inputs_embeds` and `llm.final_norm`.
    pub taps: bool,
}

/// Token ids `[T]` I32.
pub const IN_IDS: &str = "ids";
/// Position ids, `[rows, T]` I32 row-major (three rows t, h, w for M-RoPE).
pub const IN_POS: &str = "pos";
/// The rows that get logits, `[R]` I32.
pub const IN_LOGIT_ROWS: &str = "logit_rows";
/// The prompt rows that take the vision embeddings, `[n]` I32 (only with `TextPass::vision`).
pub const IN_VISION_ROWS: &str = "vision_rows";
/// Logits `[R, vocab]` F32.
pub const OUT_LOGITS: &str = "logits";
