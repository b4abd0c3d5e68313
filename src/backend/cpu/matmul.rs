//! Matmul fast path: `out[M, N] = x[M, K] @ w[N, K]^T (+ bias)`, f32 accumulation, rounded once.
//!
//! Work is split into (64-row block of x) × (16-row tile of w) units run on rayon. Inside a unit
//! an AVX2+FMA micro-kernel computes R activation rows against C weight rows at once (R×C
//! accumulators), so every weight vector loaded is reused R times: 1×4 for decode (GEMV,
//! memory-bound: weights widen from bf16 to f32 in registers), 4×3 for prefill. For M > 1 the
//! K dimension is blocked so the active part of x and of the weight tile stay in L2.

use super::simd::{self, load, store};
use super::{CpuBackend, SPtr, View};
use crate::backend::{check, TRef};
use crate::error::Result;
use crate::tensor::DType;
use rayon::prelude::*;

/// Weight rows per work unit.
const NT: usize = 16;
/// Activation rows per work unit.
const MB: usize = 64;
/// K block for M > 1.
const KB: usize = 1024;

pub(super) fn matmul(
    be: &CpuBackend,
    x: TRef,
    w: TRef,
    bias: Option<TRef>,
    out: TRef,
    simd_on: bool,
) -> Result<()> {
    let d = check::matmul(&x, &w, bias.as_ref(), &out)?;
    if d.quant_row_bytes.is_some() {
        return quantized(be, x, w, bias, out, d);
    }
    let (m, n, k) = (d.m, d.n, d.k);
    let bias_f = bias_f32(be, bias.as_ref(), n)?;
    let (xv, wv, ov) = (be.view(&x)?, be.view(&w)?, be.view_mut(&out)?);
    if m == 0 || n == 0 {
        return Ok(());
    }
    // Activations widened once to contiguous f32 (M·K·4 bytes; small next to the weights).
    let mut xf = vec![0f32; m * k];
    xf.par_chunks_mut(k.max(1))
        .enumerate()
        .for_each(|(r, row)| unsafe { load(xv.at(r, 0), xv.dt, row) });
    let use_avx = simd_on && (wv.dt != DType::F16 || simd::has_f16c());
    let ntiles = n.div_ceil(NT);
    let mblocks = m.div_ceil(MB);
    let xp = SPtr(xf.as_ptr() as *mut u8);
    (0..mblocks * ntiles).into_par_iter().for_each_init(
        || vec![0f32; MB * NT],
        |acc, u| {
            let (mb, t) = (u / ntiles, u % ntiles);
            let (r0, n0) = (mb * MB, t * NT);
            let rows = MB.min(m - r0);
            let cnt = NT.min(n - n0);
            let acc = &mut acc[..rows * cnt];
            acc.fill(0.0);
            let xr = unsafe { (xp.get() as *const f32).add(r0 * k) };
            unsafe { tile(use_avx, xr, k, rows, &wv, n0, cnt, acc) };
            for r in 0..rows {
                let row = &mut acc[r * cnt..(r + 1) * cnt];
                if let Some(b) = &bias_f {
                    for (o, &bj) in row.iter_mut().zip(&b[n0..n0 + cnt]) {
                        *o += bj;
                    }
                }
                unsafe { store(ov.at(r0 + r, n0), ov.dt, row) };
            }
        },
    );
    Ok(())
}

/// The bias (a float [n] vector: `check::matmul`) widened to f32.
fn bias_f32(be: &CpuBackend, bias: Option<&TRef>, n: usize) -> Result<Option<Vec<f32>>> {
    let Some(b) = bias else { return Ok(None) };
    let bv = be.view(b)?;
    let mut v = vec![0f32; n];
    unsafe { load(bv.at(0, 0), bv.dt, &mut v) };
    Ok(Some(v))
}

/// Quantized weights (Q8_0, Q4_K, Q6_K): each activation row is quantized to int8 blocks once
/// (Q8_0 or Q8_K, as llama.cpp does) and multiplied with integer block dot products (`quant`).
fn quantized(
    be: &CpuBackend,
    x: TRef,
    w: TRef,
    bias: Option<TRef>,
    out: TRef,
    d: check::MatmulDims,
) -> Result<()> {
    let (n, k, m) = (d.n, d.k, d.m);
    let xv = be.view(&x)?;
    let mut xf = vec![0f32; m * k];
    for (r, row) in xf.chunks_mut(k.max(1)).enumerate() {
        unsafe { load(xv.at(r, 0), xv.dt, row) };
    }
    let wbytes = unsafe { std::slice::from_raw_parts(be.ptr(&w)?, w.dtype.bytes_for(n * k)) };
    let mut of = vec![0f32; m * n];
    crate::quant::matmul(wbytes, w.dtype, n, k, &xf, m, &mut of)?;
    if let Some(bf) = bias_f32(be, bias.as_ref(), n)? {
        for row in of.chunks_mut(n) {
            for (o, bj) in row.iter_mut().zip(&bf) {
                *o += bj;
            }
        }
    }
    let ov = be.view_mut(&out)?;
    for (r, row) in of.chunks(n.max(1)).enumerate() {
        unsafe { store(ov.at(r, 0), ov.dt, row) };
    }
    Ok(())
}

/// Accumulates `acc[r·cnt + j] += x[r, :] · w[n0 + j, :]` for `rows` contiguous rows of x.
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    use_avx: bool,
    x: *const f32,
    k: usize,
    rows: usize,
    w: &View,
    n0: usize,
    cnt: usize,
    acc: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if use_avx {
        match w.dt {
            DType::BF16 => return avx::tile::<avx::Bf16>(x, k, rows, w, n0, cnt, acc),
            DType::F16 => return avx::tile::<avx::F16>(x, k, rows, w, n0, cnt, acc),
            _ => return avx::tile::<avx::F32>(x, k, rows, w, n0, cnt, acc),
        }
    }
    let _ = use_avx;
    tile_portable(x, k, rows, w, n0, cnt, acc)
}

/// Portable path: each weight row is widened to f32 once, then dotted with every x row using
/// eight independent partial sums (which the compiler vectorizes for the baseline target).
unsafe fn tile_portable(
    x: *const f32,
    k: usize,
    rows: usize,
    w: &View,
    n0: usize,
    cnt: usize,
    acc: &mut [f32],
) {
    let mut wrow = vec![0f32; k];
    for j in 0..cnt {
        load(w.at(n0 + j, 0), w.dt, &mut wrow);
        for r in 0..rows {
            let xr = std::slice::from_raw_parts(x.add(r * k), k);
            let mut part = [0f32; 8];
            let (xc, wc) = (xr.chunks_exact(8), wrow.chunks_exact(8));
            let (xt, wt) = (xc.remainder(), wc.remainder());
            for (a, b) in xc.zip(wc) {
                for l in 0..8 {
                    part[l] += a[l] * b[l];
                }
            }
            let mut s: f32 = part.iter().sum();
            for (a, b) in xt.iter().zip(wt) {
                s += a * b;
            }
            acc[r * cnt + j] += s;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use super::super::View;
    use super::KB;
    use std::arch::x86_64::*;

    /// Loads 8 weights at element `k` widened to f32 (and one, for tails).
    pub trait WLoad {
        unsafe fn ld8(p: *const u8, k: usize) -> __m256;
        unsafe fn ld1(p: *const u8, k: usize) -> f32;
    }
    pub struct Bf16;
    pub struct F16;
    pub struct F32;

    impl WLoad for Bf16 {
        #[inline(always)]
        unsafe fn ld8(p: *const u8, k: usize) -> __m256 {
            // bf16 is the top half of an f32: zero-extend to 32 bits, shift left 16.
            let v = _mm_lddqu_si128(p.add(2 * k) as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(v)))
        }
        #[inline(always)]
        unsafe fn ld1(p: *const u8, k: usize) -> f32 {
            f32::from_bits((*(p as *const u16).add(k) as u32) << 16)
        }
    }
    impl WLoad for F16 {
        #[inline(always)]
        unsafe fn ld8(p: *const u8, k: usize) -> __m256 {
            _mm256_cvtph_ps(_mm_lddqu_si128(p.add(2 * k) as *const __m128i))
        }
        #[inline(always)]
        unsafe fn ld1(p: *const u8, k: usize) -> f32 {
            (*(p as *const half::f16).add(k)).to_f32()
        }
    }
    impl WLoad for F32 {
        #[inline(always)]
        unsafe fn ld8(p: *const u8, k: usize) -> __m256 {
            ldu_ps((p as *const f32).add(k))
        }
        #[inline(always)]
        unsafe fn ld1(p: *const u8, k: usize) -> f32 {
            *(p as *const f32).add(k)
        }
    }

    /// Unaligned 8×f32 load. `lddqu` rather than `loadu`: same speed, and it is an LLVM
    /// intrinsic, so builds with debug assertions (the test profile) do not wrap every load in
    /// `copy_nonoverlapping` precondition checks and stack round trips.
    #[inline(always)]
    unsafe fn ldu_ps(p: *const f32) -> __m256 {
        _mm256_castsi256_ps(_mm256_lddqu_si256(p as *const __m256i))
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }

    /// Dot products of R activation rows with C weight rows over `[k0, k1)`.
    #[inline(always)]
    unsafe fn block<W: WLoad, const R: usize, const C: usize>(
        x: &[*const f32; R],
        w: &[*const u8; C],
        k0: usize,
        k1: usize,
    ) -> [[f32; C]; R] {
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let mut k = k0;
        while k + 8 <= k1 {
            let mut wv = [_mm256_setzero_ps(); C];
            for c in 0..C {
                wv[c] = W::ld8(w[c], k);
            }
            for r in 0..R {
                let xv = ldu_ps(x[r].add(k));
                for c in 0..C {
                    acc[r][c] = _mm256_fmadd_ps(xv, wv[c], acc[r][c]);
                }
            }
            k += 8;
        }
        let mut out = [[0f32; C]; R];
        for r in 0..R {
            for c in 0..C {
                let mut s = hsum(acc[r][c]);
                for kk in k..k1 {
                    s += *x[r].add(kk) * W::ld1(w[c], kk);
                }
                out[r][c] = s;
            }
        }
        out
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn tile<W: WLoad>(
        x: *const f32,
        k: usize,
        rows: usize,
        w: &View,
        n0: usize,
        cnt: usize,
        acc: &mut [f32],
    ) {
        let kb = if rows <= 4 { k.max(1) } else { KB };
        let mut k0 = 0;
        while k0 < k {
            let k1 = (k0 + kb).min(k);
            let mut r = 0;
            while r < rows {
                let rr = (rows - r).min(4);
                let mut j = 0;
                while j < cnt {
                    macro_rules! go {
                        ($R:literal, $C:literal) => {{
                            let xs: [*const f32; $R] = std::array::from_fn(|i| x.add((r + i) * k));
                            let ws: [*const u8; $C] =
                                std::array::from_fn(|i| w.at(n0 + j + i, 0) as *const u8);
                            let res = block::<W, $R, $C>(&xs, &ws, k0, k1);
                            for i in 0..$R {
                                for c in 0..$C {
                                    acc[(r + i) * cnt + j + c] += res[i][c];
                                }
                            }
                            j += $C;
                        }};
                    }
                    let left = cnt - j;
                    match (rr, left) {
                        (1, 4..) => go!(1, 4),
                        (1, _) => go!(1, 1),
                        (2, 2..) => go!(2, 2),
                        (2, _) => go!(2, 1),
                        (3, 2..) => go!(3, 2),
                        (3, _) => go!(3, 1),
                        (_, 3..) => go!(4, 3),
                        (_, 2) => go!(4, 2),
                        (_, _) => go!(4, 1),
                    }
                }
                r += rr;
            }
            k0 = k1;
        }
    }
}
