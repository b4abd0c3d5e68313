//! AVX2 + FMA dot products. Callers must check [`super::has_avx2_fma`] (which also requires F16C)
//! first.
//!
//! The f32-activation dots compute the same sum as their scalar twins in a different order and
//! with fused multiply-adds, so they agree to float rounding, not bit for bit. The integer dots
//! against quantized activations (`*_q8_*`) form the same exact integers as their scalar twins
//! and combine them in the same float operations in the same order: they agree bit for bit.

#![cfg(target_arch = "x86_64")]

use super::q8_0::BlockQ8_0;
use super::q8_k::BlockQ8K;
use super::{q4_k, q6_k, q8_0};
use std::arch::x86_64::*;

/// Sum of the eight i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    _mm_cvtsi128_si32(s)
}

/// Lane `i` of the result is the sum of the eight lanes of `v[i]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum8_i32(v: &[__m256i; 8]) -> __m256i {
    let h0 = _mm256_hadd_epi32(v[0], v[1]);
    let h1 = _mm256_hadd_epi32(v[2], v[3]);
    let h2 = _mm256_hadd_epi32(v[4], v[5]);
    let h3 = _mm256_hadd_epi32(v[6], v[7]);
    // Per 128-bit half: [v0, v1, v2, v3] and [v4, v5, v6, v7] partial sums.
    let g0 = _mm256_hadd_epi32(h0, h1);
    let g1 = _mm256_hadd_epi32(h2, h3);
    _mm256_add_epi32(
        _mm256_permute2x128_si256(g0, g1, 0x20),
        _mm256_permute2x128_si256(g0, g1, 0x31),
    )
}

/// Q8_0 x Q8_0: eight blocks at a time, their exact integer sums gathered into one vector, times
/// `f16(dw) * f16(da)`, added lane-wise (block `b` in lane `b % 8`); see
/// [`q8_0::vec_dot_q8_0_q8_0_scalar`] for the order this reproduces.
///
/// # Safety
/// AVX2, FMA and F16C must be available; `w.len() == a.len() * 34`; every activation quant is
/// in -127..=127 (as [`q8_0::quantize_row_q8_0_act`] makes them).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q8_0_q8_0(w: &[u8], a: &[BlockQ8_0]) -> f32 {
    debug_assert!(w.len() == a.len() * q8_0::BLOCK_BYTES);
    let nb = a.len();
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    let mut b = 0;
    while b + 8 <= nb {
        let mut v = [_mm256_setzero_si256(); 8];
        let mut dw = [0u16; 8];
        let mut da = [0u16; 8];
        for (i, vi) in v.iter_mut().enumerate() {
            let wp = w.as_ptr().add((b + i) * q8_0::BLOCK_BYTES);
            let ab = a.get_unchecked(b + i);
            dw[i] = (wp as *const u16).read_unaligned();
            da[i] = ab.d;
            let qw = _mm256_loadu_si256(wp.add(2) as *const __m256i);
            let qa = _mm256_loadu_si256(ab.qs.as_ptr() as *const __m256i);
            // |qw| (unsigned, -128 -> 128) times qa with qw's sign: exact, as |qa| <= 127 keeps
            // each pair sum within i16.
            let p = _mm256_maddubs_epi16(_mm256_sign_epi8(qw, qw), _mm256_sign_epi8(qa, qw));
            *vi = _mm256_madd_epi16(p, ones);
        }
        let sums = _mm256_cvtepi32_ps(hsum8_i32(&v));
        let d = _mm256_mul_ps(
            _mm256_cvtph_ps(_mm_loadu_si128(dw.as_ptr() as *const __m128i)),
            _mm256_cvtph_ps(_mm_loadu_si128(da.as_ptr() as *const __m128i)),
        );
        acc = _mm256_add_ps(acc, _mm256_mul_ps(sums, d));
        b += 8;
    }
    let mut lanes = [0.0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
    for (i, ab) in a.iter().enumerate().skip(b) {
        let wb = &w[i * q8_0::BLOCK_BYTES..(i + 1) * q8_0::BLOCK_BYTES];
        let d = fp16(wb[0], wb[1]) * _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(ab.d as i32)));
        lanes[i % 8] += q8_0::block_dot_i32(wb, ab) as f32 * d;
    }
    q8_0::reduce8(lanes)
}

/// Q4_K x Q8_K; see [`q4_k::vec_dot_q4_k_q8_k_scalar`] for the integers and the float order.
///
/// # Safety
/// AVX2, FMA and F16C must be available; `w.len() == a.len() * 144`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q4_k_q8_k(w: &[u8], a: &[BlockQ8K]) -> f32 {
    debug_assert!(w.len() == a.len() * q4_k::BLOCK_BYTES);
    let m4 = _mm256_set1_epi8(0xF);
    // Byte shuffles broadcasting i16 scale j (bytes 2j, 2j + 1) over a whole vector.
    let bcast: [__m256i; 8] =
        std::array::from_fn(|j| _mm256_set1_epi16((2 * j as i16) | ((2 * j as i16 + 1) << 8)));
    let mut sumf = 0.0f32;
    for (b, y) in w.chunks_exact(q4_k::BLOCK_BYTES).zip(a) {
        let (sc, mn) = q4_k::scales_mins_k4(&b[4..16]);
        // The eight 6-bit scales as i16 in both 128-bit halves.
        let sc16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_loadl_epi64(
            sc.as_ptr() as *const __m128i
        )));
        let qs = b.as_ptr().add(16);
        let q8 = y.qs.as_ptr();
        let mut acc = _mm256_setzero_si256();
        for c in 0..4 {
            let q4 = _mm256_loadu_si256(qs.add(32 * c) as *const __m256i);
            let lo = _mm256_and_si256(q4, m4);
            let hi = _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4);
            let y0 = _mm256_loadu_si256(q8.add(64 * c) as *const __m256i);
            let y1 = _mm256_loadu_si256(q8.add(64 * c + 32) as *const __m256i);
            // Nibble x int8 pair sums are at most 2 * 15 * 128: no i16 saturation.
            let p0 = _mm256_madd_epi16(
                _mm256_maddubs_epi16(lo, y0),
                _mm256_shuffle_epi8(sc16, bcast[2 * c]),
            );
            let p1 = _mm256_madd_epi16(
                _mm256_maddubs_epi16(hi, y1),
                _mm256_shuffle_epi8(sc16, bcast[2 * c + 1]),
            );
            acc = _mm256_add_epi32(acc, _mm256_add_epi32(p0, p1));
        }
        let isum = hsum_i32(acc);
        // Σ_j m_j (bsums_2j + bsums_2j+1): pair sums fit i16 (|.| <= 2 * 16 * 127).
        let bs = _mm256_loadu_si256(y.bsums.as_ptr() as *const __m256i);
        let pairs = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
        let mins = _mm_cvtepu8_epi16(_mm_loadl_epi64(mn.as_ptr() as *const __m128i));
        let m = _mm_madd_epi16(pairs, mins);
        let m = _mm_add_epi32(m, _mm_shuffle_epi32(m, 0x4E));
        let imin = _mm_cvtsi128_si32(_mm_add_epi32(m, _mm_shuffle_epi32(m, 0xB1)));
        let d = fp16(b[0], b[1]) * y.d;
        let dmin = fp16(b[2], b[3]) * y.d;
        sumf += d * isum as f32;
        sumf -= dmin * imin as f32;
    }
    sumf
}

/// A byte shuffle that spreads i16 element `2g` over the low 128-bit half and `2g + 1` over the
/// high half.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn spread(g: i8) -> __m256i {
    let (a, b) = (4 * g, 4 * g + 2);
    let lo = _mm_setr_epi8(
        a,
        a + 1,
        a,
        a + 1,
        a,
        a + 1,
        a,
        a + 1,
        a,
        a + 1,
        a,
        a + 1,
        a,
        a + 1,
        a,
        a + 1,
    );
    let hi = _mm_add_epi8(lo, _mm_set1_epi8(b - a));
    _mm256_set_m128i(hi, lo)
}

/// Q6_K x Q8_K; see [`q6_k::vec_dot_q6_k_q8_k_scalar`] for the integers and the float order.
/// The -32 offset is applied through the activation's `bsums`: `Σ sc·(q - 32)·y =
/// Σ sc·q·y - 32·Σ_j sc_j·bsums_j`.
///
/// # Safety
/// AVX2, FMA and F16C must be available; `w.len() == a.len() * 210`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q6_k_q8_k(w: &[u8], a: &[BlockQ8K]) -> f32 {
    debug_assert!(w.len() == a.len() * q6_k::BLOCK_BYTES);
    let m4 = _mm256_set1_epi8(0xF);
    let m2 = _mm256_set1_epi8(3);
    let sh = [spread(0), spread(1), spread(2), spread(3)];
    let mut sumf = 0.0f32;
    for (b, y) in w.chunks_exact(q6_k::BLOCK_BYTES).zip(a) {
        let p = b.as_ptr();
        let q8 = y.qs.as_ptr();
        let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(192) as *const __m128i));
        let bs = _mm256_loadu_si256(y.bsums.as_ptr() as *const __m256i);
        // 32·Σ_j sc_j·bsums_j, subtracted at the start.
        let mut acc = _mm256_sub_epi32(
            _mm256_setzero_si256(),
            _mm256_slli_epi32(_mm256_madd_epi16(sc16, bs), 5),
        );
        for h in 0..2 {
            let ql0 = _mm256_loadu_si256(p.add(64 * h) as *const __m256i);
            let ql1 = _mm256_loadu_si256(p.add(64 * h + 32) as *const __m256i);
            let qh = _mm256_loadu_si256(p.add(128 + 32 * h) as *const __m256i);
            // The two high bits of each group, moved to bits 4..6 of each byte.
            let hi = [
                _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4),
                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4),
                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4),
                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4),
            ];
            let q = [
                _mm256_or_si256(_mm256_and_si256(ql0, m4), hi[0]),
                _mm256_or_si256(_mm256_and_si256(ql1, m4), hi[1]),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), hi[2]),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), hi[3]),
            ];
            // Scales 8h..8h + 8 in both 128-bit halves.
            let sch = if h == 0 {
                _mm256_permute4x64_epi64(sc16, 0x44)
            } else {
                _mm256_permute4x64_epi64(sc16, 0xEE)
            };
            for (g, qg) in q.iter().enumerate() {
                let yv = _mm256_loadu_si256(q8.add(128 * h + 32 * g) as *const __m256i);
                // 6-bit unsigned x int8 pair sums are at most 2 * 63 * 128: no saturation.
                let prod = _mm256_maddubs_epi16(*qg, yv);
                let s = _mm256_shuffle_epi8(sch, sh[g]);
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(prod, s));
            }
        }
        let d = fp16(b[208], b[209]) * y.d;
        sumf += d * hsum_i32(acc) as f32;
    }
    sumf
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// fp16 bits -> f32 with the F16C instruction (half's conversion is an out-of-line call here).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn fp16(lo: u8, hi: u8) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
        u16::from_le_bytes([lo, hi]) as i32,
    )))
}

/// Eight unsigned bytes at `p` widened to i32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_u8x8(p: *const u8) -> __m256i {
    _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i))
}

/// # Safety
/// AVX2, FMA and F16C must be available; `w.len() == x.len() / 32 * 34`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q8_0(w: &[u8], x: &[f32]) -> f32 {
    debug_assert!(w.len() == x.len() / q8_0::QK8_0 * q8_0::BLOCK_BYTES);
    let mut acc = _mm256_setzero_ps();
    for (b, xs) in w
        .chunks_exact(q8_0::BLOCK_BYTES)
        .zip(x.chunks_exact(q8_0::QK8_0))
    {
        let d = fp16(b[0], b[1]);
        let q = b.as_ptr().add(2);
        let xp = xs.as_ptr();
        let ld = |g: usize| {
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                q.add(8 * g) as *const __m128i
            )))
        };
        let s0 = _mm256_mul_ps(ld(0), _mm256_loadu_ps(xp));
        let s1 = _mm256_mul_ps(ld(1), _mm256_loadu_ps(xp.add(8)));
        let s0 = _mm256_fmadd_ps(ld(2), _mm256_loadu_ps(xp.add(16)), s0);
        let s1 = _mm256_fmadd_ps(ld(3), _mm256_loadu_ps(xp.add(24)), s1);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_add_ps(s0, s1), acc);
    }
    hsum(acc)
}

/// # Safety
/// AVX2, FMA and F16C must be available; `w.len() == x.len() / 256 * 144`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q4_k(w: &[u8], x: &[f32]) -> f32 {
    debug_assert!(w.len() == x.len() / q4_k::QK_K * q4_k::BLOCK_BYTES);
    let mask = _mm256_set1_epi32(0xF);
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    for (b, xs) in w
        .chunks_exact(q4_k::BLOCK_BYTES)
        .zip(x.chunks_exact(q4_k::QK_K))
    {
        let (d, dmin) = (fp16(b[0], b[1]), fp16(b[2], b[3]));
        let mut s = [(0.0f32, 0.0f32); 8];
        for (j, o) in s.iter_mut().enumerate() {
            let (sc, m) = q4_k::get_scale_min_k4(j, &b[4..16]);
            *o = (d * sc as f32, dmin * m as f32);
        }
        let qs = b.as_ptr().add(16);
        let xp = xs.as_ptr();
        for c in 0..4 {
            let (d1, m1) = (_mm256_set1_ps(s[2 * c].0), _mm256_set1_ps(s[2 * c].1));
            let (d2, m2) = (
                _mm256_set1_ps(s[2 * c + 1].0),
                _mm256_set1_ps(s[2 * c + 1].1),
            );
            for g in 0..4 {
                let v = load_u8x8(qs.add(32 * c + 8 * g));
                let lo = _mm256_cvtepi32_ps(_mm256_and_si256(v, mask));
                let hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4));
                let wlo = _mm256_fmsub_ps(lo, d1, m1);
                let whi = _mm256_fmsub_ps(hi, d2, m2);
                acc0 = _mm256_fmadd_ps(wlo, _mm256_loadu_ps(xp.add(64 * c + 8 * g)), acc0);
                acc1 = _mm256_fmadd_ps(whi, _mm256_loadu_ps(xp.add(64 * c + 32 + 8 * g)), acc1);
            }
        }
    }
    hsum(_mm256_add_ps(acc0, acc1))
}

/// # Safety
/// AVX2, FMA and F16C must be available; `w.len() == x.len() / 256 * 210`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q6_k(w: &[u8], x: &[f32]) -> f32 {
    debug_assert!(w.len() == x.len() / q6_k::QK_K * q6_k::BLOCK_BYTES);
    let m4 = _mm256_set1_epi32(0xF);
    let m2 = _mm256_set1_epi32(3);
    let off = _mm256_set1_epi32(32);
    let mut acc = [_mm256_setzero_ps(); 4];
    for (b, xs) in w
        .chunks_exact(q6_k::BLOCK_BYTES)
        .zip(x.chunks_exact(q6_k::QK_K))
    {
        let d = fp16(b[208], b[209]);
        let sc = &b[192..208];
        let xp = xs.as_ptr();
        for h in 0..2 {
            let ql = b.as_ptr().add(64 * h);
            let qh = b.as_ptr().add(128 + 32 * h);
            for g in 0..4 {
                let is = 8 * h + g / 2;
                let a = load_u8x8(ql.add(8 * g));
                let c = load_u8x8(ql.add(32 + 8 * g));
                let hb = load_u8x8(qh.add(8 * g));
                let q = [
                    _mm256_or_si256(
                        _mm256_and_si256(a, m4),
                        _mm256_slli_epi32(_mm256_and_si256(hb, m2), 4),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(c, m4),
                        _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(hb, 2), m2), 4),
                    ),
                    _mm256_or_si256(
                        _mm256_srli_epi32(a, 4),
                        _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(hb, 4), m2), 4),
                    ),
                    _mm256_or_si256(
                        _mm256_srli_epi32(c, 4),
                        _mm256_slli_epi32(_mm256_srli_epi32(hb, 6), 4),
                    ),
                ];
                for (k, qk) in q.iter().enumerate() {
                    let scale = _mm256_set1_ps(d * sc[is + 2 * k] as i8 as f32);
                    let wv = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(*qk, off)), scale);
                    let xv = _mm256_loadu_ps(xp.add(128 * h + 32 * k + 8 * g));
                    acc[k] = _mm256_fmadd_ps(wv, xv, acc[k]);
                }
            }
        }
    }
    hsum(_mm256_add_ps(
        _mm256_add_ps(acc[0], acc[1]),
        _mm256_add_ps(acc[2], acc[3]),
    ))
}

/// # Safety
/// AVX2, FMA and F16C must be available; `a.len() == b.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, a_k) in acc.iter_mut().enumerate() {
            *a_k = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 8 * k)),
                _mm256_loadu_ps(pb.add(i + 8 * k)),
                *a_k,
            );
        }
        i += 32;
    }
    while i + 8 <= n {
        acc[0] = _mm256_fmadd_ps(
            _mm256_loadu_ps(pa.add(i)),
            _mm256_loadu_ps(pb.add(i)),
            acc[0],
        );
        i += 8;
    }
    let mut s = hsum(_mm256_add_ps(
        _mm256_add_ps(acc[0], acc[1]),
        _mm256_add_ps(acc[2], acc[3]),
    ));
    while i < n {
        s += a[i] * b[i];
        i += 1;
    }
    s
}

/// Dot of a little-endian bf16 row with `x`.
///
/// # Safety
/// AVX2, FMA and F16C must be available; `w.len() == 2 * x.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_bf16(w: &[u8], x: &[f32]) -> f32 {
    let n = x.len().min(w.len() / 2);
    let (pw, px) = (w.as_ptr(), x.as_ptr());
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut i = 0;
    while i + 16 <= n {
        let v = _mm256_loadu_si256(pw.add(2 * i) as *const __m256i);
        let lo = _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm256_castsi256_si128(v)),
            16,
        ));
        let hi = _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm256_extracti128_si256(v, 1)),
            16,
        ));
        acc0 = _mm256_fmadd_ps(lo, _mm256_loadu_ps(px.add(i)), acc0);
        acc1 = _mm256_fmadd_ps(hi, _mm256_loadu_ps(px.add(i + 8)), acc1);
        i += 16;
    }
    let mut s = hsum(_mm256_add_ps(acc0, acc1));
    while i < n {
        s += f32::from_bits((u16::from_le_bytes([w[2 * i], w[2 * i + 1]]) as u32) << 16) * x[i];
        i += 1;
    }
    s
}
