//! RMSNorm fast path (threaded over rows).

use super::simd::{load, round_to, store};
use super::{check_act, check_weight, op_err, CpuBackend};
use crate::backend::TRef;
use crate::error::Result;
use rayon::prelude::*;

/// Qwen2RMSNorm over the last dimension (size D = w's length) of x, which may be [rows, D] or
/// [rows, .., D]; out has x's shape.
pub(super) fn rms_norm(
    be: &CpuBackend,
    x: TRef,
    w: TRef,
    out: TRef,
    eps: f32,
    _simd: bool,
) -> Result<()> {
    const OP: &str = "rms_norm";
    check_act(OP, "x", &x)?;
    check_act(OP, "out", &out)?;
    check_weight(OP, "w", &w)?;
    if w.shape.rank() != 1 {
        return Err(op_err(OP, format!("w must be [D], got {:?}", w.shape)));
    }
    let d = w.shape.dim(0);
    if x.shape.dim(-1) != d || d == 0 {
        return Err(op_err(
            OP,
            format!("x {:?} does not end in D = {d}", x.shape),
        ));
    }
    if x.shape != out.shape {
        return Err(op_err(
            OP,
            format!("out {:?} differs from x {:?}", out.shape, x.shape),
        ));
    }
    let (xv, wv, ov) = (be.view(&x)?, be.view(&w)?, be.view_mut(&out)?);
    let mut wf = vec![0f32; d];
    unsafe { load(wv.at(0, 0), wv.dt, &mut wf) };
    let per_row = xv.row_len / d;
    let odt = ov.dt;
    (0..xv.rows * per_row)
        .into_par_iter()
        .with_min_len(4)
        .for_each_init(
            || vec![0f32; d],
            |buf, u| {
                let (r, s) = (u / per_row, (u % per_row) * d);
                unsafe { load(xv.at(r, s), xv.dt, buf) };
                // Eight partial sums: vectorizes and keeps f32 rounding error small.
                let mut acc = [0f32; 8];
                let mut ch = buf.chunks_exact(8);
                for c in &mut ch {
                    for (a, v) in acc.iter_mut().zip(c) {
                        *a += v * v;
                    }
                }
                let mut ss: f32 = ch.remainder().iter().map(|v| v * v).sum();
                ss += acc.iter().sum::<f32>();
                let inv = 1.0 / (ss / d as f32 + eps).sqrt();
                for (v, &wj) in buf.iter_mut().zip(&wf) {
                    *v = wj * round_to(*v * inv, odt);
                }
                unsafe { store(ov.at(r, s), odt, buf) };
            },
        );
    Ok(())
}
