//! Batched decode: B sequences, each holding `context` cached tokens, decode one token each per
//! step in one forward (the weights read once for B tokens). The figures are aggregate tokens/s
//! (B / step time), the per-sequence latency (the step time) and the bytes one step reads
//! (weights once, every sequence's KV) beside the bandwidth bound.

use super::report::{BatchReport, Ceilings};
use crate::backend::Backend;
use crate::error::Result;
use crate::graph::Executor;
use crate::kv::{KvPool, SeqId};
use crate::model::config::TextConfig;
use crate::model::text::{self, TextPass};
use crate::model::TextModel;
use crate::tensor::DType;
use std::time::Instant;

/// What one batched measurement needs to know about the model.
pub(super) struct BatchShape<'a> {
    pub cfg: &'a TextConfig,
    pub layers: usize,
    pub full_layers: usize,
    /// Weight bytes one decode step reads (the layers that ran, and all of them).
    pub weight_bytes: u64,
    pub full_weight_bytes: u64,
}

/// Times `steps` decode steps at each batch size.
#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    be: &mut dyn Backend,
    model: &dyn TextModel,
    shape: &BatchShape,
    act: DType,
    page_size: usize,
    batches: &[usize],
    context: usize,
    steps: usize,
    ceilings: &Ceilings,
) -> Result<Vec<BatchReport>> {
    let cfg = shape.cfg;
    let kv_per_token_layer = 2 * cfg.num_key_value_heads * act.bytes_for(cfg.head_dim);
    let vocab = cfg.vocab_size as i32;
    let mut out = Vec::new();
    for &b in batches {
        // Every sequence's context and steps, plus a page of slack per sequence.
        let ctx_tokens = b * (context + steps + page_size);
        let mut kv = KvPool::new(be, model.kv_spec(act), ctx_tokens, page_size, b)?;
        let ids_of: Vec<SeqId> = (0..b as SeqId).collect();
        for &id in &ids_of {
            kv.add_seq(id, &[], 0)?;
            // The cached context's values do not matter to the timing: lengths only.
            kv.begin_step(be, &[(id, context)])?;
        }
        let g = model.build(
            &TextPass {
                tokens: b,
                logit_rows: b,
                vision: None,
                taps: false,
            },
            act,
        );
        let exec = Executor::new(be, g)?;
        let rows: Vec<i32> = (0..b as i32).collect();
        let step: Vec<(SeqId, usize)> = ids_of.iter().map(|&id| (id, 1)).collect();
        let mut step_s = Vec::with_capacity(steps);
        for s in 0..steps {
            let p = (context + s) as i32;
            let ids: Vec<i32> = (0..b as i32)
                .map(|i| (i * 7919 + s as i32 * 31 + 17).rem_euclid(vocab))
                .collect();
            let pos = vec![p; 3 * b];
            let t = Instant::now();
            let paged = kv.begin_step(be, &step)?;
            exec.write_i32(be, text::IN_IDS, &ids)?;
            exec.write_i32(be, text::IN_POS, &pos)?;
            exec.write_i32(be, text::IN_LOGIT_ROWS, &rows)?;
            exec.run(be, Some(&paged))?;
            be.sync()?;
            step_s.push(t.elapsed().as_secs_f64());
        }
        exec.free(be);
        kv.free(be);
        step_s.sort_by(f64::total_cmp);
        let median = step_s[step_s.len() / 2];
        let avg_ctx = context + steps / 2 + 1;
        let kv_bytes = (b * shape.layers * avg_ctx * kv_per_token_layer) as u64;
        let full_kv = (b * shape.full_layers * avg_ctx * kv_per_token_layer) as u64;
        let bytes = (shape.weight_bytes + kv_bytes) as f64;
        let full_bytes = (shape.full_weight_bytes + full_kv) as f64;
        let gbps = bytes / median / 1e9;
        out.push(BatchReport {
            batch: b,
            context,
            steps,
            step_ms: median * 1e3,
            tokens_per_s: b as f64 / median,
            bytes_per_step: bytes as u64,
            gbps,
            bound_tokens_per_s: ceilings
                .bandwidth_gbps
                .map(|bw| b as f64 * bw * 1e9 / bytes),
            full_bytes_per_step: full_bytes as u64,
            full_step_ms: full_bytes / (gbps * 1e9) * 1e3,
            full_tokens_per_s: b as f64 * gbps * 1e9 / full_bytes,
            full_bound_tokens_per_s: ceilings
                .bandwidth_gbps
                .map(|bw| b as f64 * bw * 1e9 / full_bytes),
        });
    }
    Ok(out)
}
