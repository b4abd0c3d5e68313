//! RMSNorm fast path (threaded over rows).

use super::simd::{load, round_to, store};
use super::CpuBackend;
use crate::backend::{check, TRef};
use crate::error::Result;
use crate::tensor::DType;
use rayon::prelude::*;

/// Qwen2RMSNorm over the last dimension (size D = w's length) of x, which may be [D], [rows, D]
/// or [rows, .., D]; out has x's shape.
pub(super) fn rms_norm(be: &CpuBackend, x: TRef, w: TRef, out: TRef, eps: f32) -> Result<()> {
    let nd = check::rms_norm(&x, &w, &out)?;
    let d = nd.d;
    let (xv, wv, ov) = (be.view(&x)?, be.view(&w)?, be.view_mut(&out)?);
    let mut wf = vec![0f32; d];
    unsafe { load(wv.at(0, 0), wv.dt, &mut wf) };
    let per_row = nd.per_slice;
    let odt = ov.dt;
    #[cfg(target_arch = "x86_64")]
    let avx512 = be.isa.avx512();
    (0..nd.vectors())
        .into_par_iter()
        .with_min_len(4)
        .for_each_init(
            || vec![0f32; d],
            |buf, u| {
                let (r, s) = (u / per_row, (u % per_row) * d);
                let (x, o) = unsafe { (xv.at(r, s), ov.at(r, s)) };
                #[cfg(target_arch = "x86_64")]
                if avx512 {
                    return unsafe { norm_avx512(x, xv.dt, buf, &wf, eps, o, odt) };
                }
                unsafe { norm(x, xv.dt, buf, &wf, eps, o, odt) }
            },
        );
    Ok(())
}

/// One vector, read from `x` (via `buf`), normalized, `w · round(x / rms(x))`, written to `o`.
///
/// # Safety
/// `x` and `o` hold `buf.len()` elements of their types.
#[inline(always)]
unsafe fn norm(
    x: *const u8,
    xdt: DType,
    buf: &mut [f32],
    wf: &[f32],
    eps: f32,
    o: *mut u8,
    odt: DType,
) {
    load(x, xdt, buf);
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
    let inv = 1.0 / (ss / buf.len() as f32 + eps).sqrt();
    // The rounding picked outside the loop, so that it vectorizes.
    match odt {
        DType::BF16 => scale_round(buf, wf, inv, |v| round_to(v, DType::BF16)),
        DType::F16 => scale_round(buf, wf, inv, |v| round_to(v, DType::F16)),
        _ => scale_round(buf, wf, inv, |v| v),
    }
    store(o, odt, buf);
}

/// `v = w · r(v · inv)` over the vector.
#[inline(always)]
fn scale_round(buf: &mut [f32], wf: &[f32], inv: f32, r: impl Fn(f32) -> f32) {
    for (v, &wj) in buf.iter_mut().zip(wf) {
        *v = wj * r(*v * inv);
    }
}

/// [`norm`] compiled for AVX-512: the same operations in the same order (no fused
/// multiply-adds are formed), so the same bits, several times faster than the baseline build.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn norm_avx512(
    x: *const u8,
    xdt: DType,
    buf: &mut [f32],
    wf: &[f32],
    eps: f32,
    o: *mut u8,
    odt: DType,
) {
    norm(x, xdt, buf, wf, eps, o, odt)
}
