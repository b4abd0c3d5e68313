//! Rotary embeddings (fast paths): text M-RoPE and the vision 2-D RoPE, threaded over tokens.
//!
//! Angles are the f32 product `f32(pos) · inv_freq_f32`, as torch forms them; cos/sin of that
//! f32 angle are taken in f64 and rounded to f32, which matches torch's f32 cos/sin to ≤ 1 ulp
//! even for angles of 1e4+ radians.

use super::simd::{load, round_to, store};
use super::CpuBackend;
use crate::backend::{check, MropeParams, TRef};
use crate::error::Result;
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
    (0..t).into_par_iter().for_each_init(
        || (vec![0f32; half], vec![0f32; half], vec![0f32; d]),
        |(cs, sn, buf), ti| {
            for j in 0..half {
                let ang = pv[row_of[j] * t + ti] as f32 * inv[j];
                cs[j] = r((ang as f64).cos() as f32);
                sn[j] = r((ang as f64).sin() as f32);
            }
            for hh in 0..h {
                unsafe { load(xv.at(ti, hh * d), xv.dt, buf) };
                for j in 0..half {
                    let (a, b) = (buf[j], buf[j + half]);
                    buf[j] = r(r(a * cs[j]) + r(-b * sn[j]));
                    buf[j + half] = r(r(b * cs[j]) + r(a * sn[j]));
                }
                unsafe { store(ov.at(ti, hh * d), odt, buf) };
            }
        },
    );
    Ok(())
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
    (0..n).into_par_iter().for_each_init(
        || (vec![0f32; half], vec![0f32; half], vec![0f32; d]),
        |(cs, sn, buf), ti| {
            let (row, col) = (pv[2 * ti] as f32, pv[2 * ti + 1] as f32);
            for j in 0..half {
                // The ladder restarts for the column half.
                let ang = if j < q {
                    row * inv[j]
                } else {
                    col * inv[j - q]
                };
                cs[j] = (ang as f64).cos() as f32;
                sn[j] = (ang as f64).sin() as f32;
            }
            for hh in 0..h {
                unsafe { load(xv.at(ti, hh * d), xv.dt, buf) };
                for j in 0..half {
                    let (a, b) = (buf[j], buf[j + half]);
                    buf[j] = a * cs[j] + -b * sn[j];
                    buf[j + half] = b * cs[j] + a * sn[j];
                }
                unsafe { store(ov.at(ti, hh * d), ov.dt, buf) };
            }
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
