//! AVX2 + FMA float GEMM tiles: R activation rows against C weight rows at once (R×C
//! accumulators, lanes over K), so every weight vector loaded is reused R times: 1×4 for decode
//! (memory-bound: weights widen from bf16 to f32 in registers), 4×3 for prefill, with K blocked
//! for M > 1 so the active part of x and of the weight tile stay in L2.

#![cfg(target_arch = "x86_64")]

use super::super::View;
use crate::tensor::DType;
use std::arch::x86_64::*;

/// K block for M > 1.
const KB: usize = 1024;

/// Accumulates `acc[r·cnt + j] += x[r, :] · w[n0 + j, :]` for `rows` contiguous f32 rows of x.
///
/// # Safety
/// AVX2, FMA and F16C must be available; `x` holds `rows · k` floats and `w` rows
/// `n0..n0 + cnt` of `k` elements.
#[allow(clippy::too_many_arguments)]
pub unsafe fn tile(
    x: *const f32,
    k: usize,
    rows: usize,
    w: &View,
    n0: usize,
    cnt: usize,
    acc: &mut [f32],
) {
    match w.dt {
        DType::BF16 => tile_t::<Bf16>(x, k, rows, w, n0, cnt, acc),
        DType::F16 => tile_t::<F16>(x, k, rows, w, n0, cnt, acc),
        _ => tile_t::<F32>(x, k, rows, w, n0, cnt, acc),
    }
}

/// Loads 8 weights at element `k` widened to f32 (and one, for tails).
trait WLoad {
    unsafe fn ld8(p: *const u8, k: usize) -> __m256;
    unsafe fn ld1(p: *const u8, k: usize) -> f32;
}
struct Bf16;
struct F16;
struct F32;

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
unsafe fn tile_t<W: WLoad>(
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
