//! RMSNorm fast path (threaded over rows).

use super::simd::{load, round_to, store};
use super::CpuBackend;
use crate::backend::{check, TRef};
use crate::error::Result;
use rayon::prelude::*;

/// Qwen2RMSNorm over the last dimension (size D = w's length) of x, which may be [D], [rows, D]
/// or [rows, .., D]; out has x's shape.
pub(super) fn rms_norm(
    be: &CpuBackend,
    x: TRef,
    w: TRef,
    out: TRef,
    eps: f32,
    _simd: bool,
) -> Result<()> {
    let nd = check::rms_norm(&x, &w, &out)?;
    let d = nd.d;
    let (xv, wv, ov) = (be.view(&x)?, be.view(&w)?, be.view_mut(&out)?);
    let mut wf = vec![0f32; d];
    unsafe { load(wv.at(0, 0), wv.dt, &mut wf) };
    let per_row = nd.per_slice;
    let odt = ov.dt;
    (0..nd.vectors())
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
