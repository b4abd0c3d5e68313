//! Rotary embeddings (fast paths): text M-RoPE and the vision 2-D RoPE, threaded over tokens.
//!
//! Angles are the f32 product `f32(pos) · inv_freq_f32`, as torch forms them; cos/sin of that
//! f32 angle are taken in f64 and rounded to f32, which matches torch's f32 cos/sin to ≤ 1 ulp
//! even for angles of 1e4+ radians.

use super::simd::{load, round_to, store};
use super::CpuBackend;
use crate::backend::{check, MropeParams, TRef};
use crate::error::Result;
use crate::tensor::DType;
use rayon::prelude::*;

/// `1 / theta^(2i/dim)` for i < dim/2, with each step in f32 like
/// `1.0 / (theta ** (arange(0, dim, 2).float() / dim))`.
fn inv_freq(theta: f32, dim: usize) -> Vec<f32> {
    (0..dim / 2)
        .map(|i| {
            let e = (2 * i) as f32 / dim as f32;
            1.0 / ((theta as f64).powf(e as f64) as f32)
        })
        .collect()
}

pub(super) fn mrope(be: &CpuBackend, x: TRef, pos: TRef, out: TRef, p: MropeParams) -> Result<()> {
    const OP: &str = "rope_mrope";
    let check::RopeDims {
        tokens: t,
        heads: h,
        head_dim: d,
    } = check::rope_mrope(&x, &pos, &out, p.sections)?;
    let half = d / 2;
    let pv = be.read_i32(OP, "pos", &pos)?;
    let inv = inv_freq(p.theta, d);
    // Position row of each channel pair: t, h, w over contiguous sections of the global index.
    let row_of: Vec<usize> = (0..half)
        .map(|j| {
            if j < p.sections[0] {
                0
            } else if j < p.sections[0] + p.sections[1] {
                1
            } else {
                2
            }
        })
        .collect();
    let (xv, ov) = (be.view(&x)?, be.view_mut(&out)?);
    let odt = ov.dt;
    let r = |v: f32| round_to(v, odt);
    #[cfg(target_arch = "x86_64")]
    let avx512 = be.isa.avx512();
    (0..t).into_par_iter().for_each_init(
        || (vec![0f32; half], vec![0f32; half], vec![0f32; d]),
        |(cs, sn, buf), ti| {
            for j in 0..half {
                let ang = pv[row_of[j] * t + ti] as f32 * inv[j];
                cs[j] = r((ang as f64).cos() as f32);
                sn[j] = r((ang as f64).sin() as f32);
            }
            let (xs, os) = (unsafe { xv.at(ti, 0) }, unsafe { ov.at(ti, 0) });
            let (xd, rnd) = ((xv.dt, xv.dt.bytes_for(d)), Some(odt));
            #[cfg(target_arch = "x86_64")]
            if avx512 {
                return unsafe { heads_avx512(xs, xd, os, odt, h, cs, sn, buf, rnd) };
            }
            unsafe { heads(xs, xd, os, odt, h, cs, sn, buf, rnd) }
        },
    );
    Ok(())
}

/// Rotates the `h` heads of one token: `x` (its type and the bytes from head to head) to `o`;
/// `rnd`: the type every product and sum is rounded to (M-RoPE rounds like torch's bf16 ops),
/// or none (the vision RoPE stays in f32).
///
/// # Safety
/// `x` and `o` hold `h` heads of `buf.len()` elements.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn heads(
    x: *const u8,
    (xdt, xstep): (DType, usize),
    o: *mut u8,
    odt: DType,
    h: usize,
    cs: &[f32],
    sn: &[f32],
    buf: &mut [f32],
    rnd: Option<DType>,
) {
    let half = buf.len() / 2;
    let ostep = odt.bytes_for(buf.len());
    for hh in 0..h {
        load(x.add(hh * xstep), xdt, buf);
        let (lo, hi) = buf.split_at_mut(half);
        // The rounding picked outside the loops, so that each loop vectorizes.
        match rnd {
            Some(DType::BF16) => rotate_rounded(lo, hi, cs, sn, |v| round_to(v, DType::BF16)),
            Some(DType::F16) => rotate_rounded(lo, hi, cs, sn, |v| round_to(v, DType::F16)),
            Some(_) => rotate_rounded(lo, hi, cs, sn, |v| v),
            None => {
                for j in 0..half {
                    let (a, b) = (lo[j], hi[j]);
                    lo[j] = a * cs[j] + -b * sn[j];
                    hi[j] = b * cs[j] + a * sn[j];
                }
            }
        }
        store(o.add(hh * ostep), odt, buf);
    }
}

/// One head's pairs rotated with every product and sum rounded by `r`.
#[inline(always)]
fn rotate_rounded(lo: &mut [f32], hi: &mut [f32], cs: &[f32], sn: &[f32], r: impl Fn(f32) -> f32) {
    for (((a, b), &c), &s) in lo.iter_mut().zip(hi.iter_mut()).zip(cs).zip(sn) {
        let (x, y) = (*a, *b);
        *a = r(r(x * c) + r(-y * s));
        *b = r(r(y * c) + r(x * s));
    }
}

/// [`heads`] compiled for AVX-512: the same operations, vectorized.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn heads_avx512(
    x: *const u8,
    xd: (DType, usize),
    o: *mut u8,
    odt: DType,
    h: usize,
    cs: &[f32],
    sn: &[f32],
    buf: &mut [f32],
    rnd: Option<DType>,
) {
    heads(x, xd, o, odt, h, cs, sn, buf, rnd)
}

pub(super) fn vision(be: &CpuBackend, x: TRef, pos: TRef, out: TRef, theta: f32) -> Result<()> {
    const OP: &str = "rope_vision";
    let check::RopeDims {
        tokens: n,
        heads: h,
        head_dim: d,
    } = check::rope_vision(&x, &pos, &out)?;
    let pv = be.read_i32(OP, "pos", &pos)?;
    let (half, q) = (d / 2, d / 4);
    let inv = inv_freq(theta, half);
    let (xv, ov) = (be.view(&x)?, be.view_mut(&out)?);
    #[cfg(target_arch = "x86_64")]
    let avx512 = be.isa.avx512();
    // Rows and columns take few values (a frame's patch grid): cos and sin of p · inv[j] for
    // each value p once, the same numbers as per token, unless the values are many.
    let (lo, hi) = (pv.iter().copied().min(), pv.iter().copied().max());
    let table = match (lo, hi) {
        (Some(lo), Some(hi)) if lo >= 0 && (hi as usize + 1) * q <= n * half => {
            let vals = hi as usize + 1;
            let mut t = vec![(0f32, 0f32); vals * q];
            t.par_chunks_mut(q.max(1)).enumerate().for_each(|(p, tp)| {
                for (j, e) in tp.iter_mut().enumerate() {
                    let ang = p as f32 * inv[j];
                    *e = ((ang as f64).cos() as f32, (ang as f64).sin() as f32);
                }
            });
            Some(t)
        }
        _ => None,
    };
    (0..n).into_par_iter().for_each_init(
        || (vec![0f32; half], vec![0f32; half], vec![0f32; d]),
        |(cs, sn, buf), ti| {
            let (row, col) = (pv[2 * ti], pv[2 * ti + 1]);
            for j in 0..half {
                // The ladder restarts for the column half.
                let (p, jj) = if j < q { (row, j) } else { (col, j - q) };
                (cs[j], sn[j]) = match &table {
                    Some(t) => t[p as usize * q + jj],
                    None => {
                        let ang = p as f32 * inv[jj];
                        ((ang as f64).cos() as f32, (ang as f64).sin() as f32)
                    }
                };
            }
            let (xs, os) = (unsafe { xv.at(ti, 0) }, unsafe { ov.at(ti, 0) });
            let xd = (xv.dt, xv.dt.bytes_for(d));
            #[cfg(target_arch = "x86_64")]
            if avx512 {
                return unsafe { heads_avx512(xs, xd, os, ov.dt, h, cs, sn, buf, None) };
            }
            unsafe { heads(xs, xd, os, ov.dt, h, cs, sn, buf, None) }
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn inv_freq_ladder() {
        let inv = super::inv_freq(1e6, 128);
        assert_eq!(inv.len(), 64);
        assert_eq!(inv[0], 1.0);
        // 1e6^(-2·32/128) = 1e-3
        assert!((inv[32] - 1e-3).abs() < 1e-9);
    }
}
