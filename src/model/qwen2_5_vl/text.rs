//! The Qwen2.5-VL language model as a graph: embeddings (with vision rows scattered in),
//! pre-norm decoder layers with M-RoPE and GQA attention over the paged cache, final norm and
//! lm_head on the positions that need logits.

use super::weights::TextRefs;
use crate::backend::{MropeParams, TRef};
use crate::graph::Graph;
use crate::model::config::TextConfig;
use crate::model::text::{TextPass, IN_IDS, IN_LOGIT_ROWS, IN_POS, IN_VISION_ROWS, OUT_LOGITS};
use crate::tensor::DType;

/// Builds the graph of one pass. Inputs: `ids` [T] I32, `pos` [3, T] I32 (rows t, h, w),
/// `logit_rows` [R] I32, and `vision_rows` [n] I32 when `pass.vision` is set. Output:
/// `logits` [R, vocab] F32 (rounded to the activation type first, as transformers' bf16 lm_head).
pub fn build(cfg: &TextConfig, w: &TextRefs, pass: &TextPass, act: DType) -> Graph {
    let mut g = Graph::new(act);
    let t = pass.tokens;
    let (hq, hkv, d) = (
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
    );
    let ids = g.input(IN_IDS, &[t], DType::I32);
    let pos = g.input(IN_POS, &[3, t], DType::I32);
    let logit_rows = g.input(IN_LOGIT_ROWS, &[pass.logit_rows], DType::I32);
    let ext = |g: &mut Graph, r: &TRef| g.external(*r);

    let embed = ext(&mut g, &w.embed);
    let mut x = g.embedding(embed, ids);
    if let Some(vis) = pass.vision {
        let rows = g.input(IN_VISION_ROWS, &[vis.shape.rows()], DType::I32);
        let src = g.external(vis);
        g.scatter_rows(src, rows, x);
    }
    if pass.taps {
        g.keep(x, "llm.inputs_embeds");
    }

    let rope = MropeParams {
        theta: cfg.rope_theta,
        sections: cfg.mrope_section,
    };
    let scale = 1.0 / (d as f32).sqrt();
    for (i, l) in w.layers.iter().enumerate() {
        let ln1 = ext(&mut g, &l.input_norm);
        let h = g.rms_norm(x, ln1, cfg.rms_norm_eps);
        let proj = |g: &mut Graph, wt: &TRef, b: Option<&TRef>| {
            let wv = g.external(*wt);
            let bv = b.map(|b| g.external(*b));
            g.matmul(h, wv, bv)
        };
        let q = proj(&mut g, &l.q, Some(&l.q_bias));
        let k = proj(&mut g, &l.k, Some(&l.k_bias));
        let v = proj(&mut g, &l.v, Some(&l.v_bias));
        let q = g.reshape(q, &[t, hq, d]);
        let k = g.reshape(k, &[t, hkv, d]);
        let v = g.reshape(v, &[t, hkv, d]);
        let q = g.rope_mrope(q, pos, rope);
        let k = g.rope_mrope(k, pos, rope);
        g.kv_append(k, v, i);
        let a = g.attention_paged(q, i, scale);
        let a = g.reshape(a, &[t, hq * d]);
        let o = ext(&mut g, &l.o);
        x = g.matmul_add(a, o, None, x);

        let ln2 = ext(&mut g, &l.post_norm);
        let h = g.rms_norm(x, ln2, cfg.rms_norm_eps);
        let (gw, uw, dw) = (
            ext(&mut g, &l.gate),
            ext(&mut g, &l.up),
            ext(&mut g, &l.down),
        );
        let gate = g.matmul(h, gw, None);
        let up = g.matmul(h, uw, None);
        let m = g.swiglu(gate, up);
        x = g.matmul_add(m, dw, None, x);
        if pass.taps {
            g.keep(x, &format!("llm.layer.{i}"));
        }
    }

    let norm = ext(&mut g, &w.norm);
    // RMSNorm is row-wise, so normalising only the rows that need logits is exact.
    let normed = if pass.taps {
        let all = g.rms_norm(x, norm, cfg.rms_norm_eps);
        g.keep(all, "llm.final_norm");
        g.gather_rows(all, logit_rows)
    } else {
        let last = g.gather_rows(x, logit_rows);
        g.rms_norm(last, norm, cfg.rms_norm_eps)
    };
    let head = ext(&mut g, &w.lm_head);
    let logits = g.matmul(normed, head, None);
    let logits = if act == DType::F32 {
        logits
    } else {
        g.cast(logits, DType::F32)
    };
    g.keep(logits, OUT_LOGITS);
    g
}
