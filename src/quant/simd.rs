//! AVX2 + FMA dot products. Each computes the same sum as its scalar twin, in a different order
//! and with fused multiply-adds, so results agree to float rounding, not bit for bit.
//! Callers must check [`super::has_avx2_fma`] (which also requires F16C) first.

#![cfg(target_arch = "x86_64")]

use super::{q4_k, q6_k, q8_0};
use std::arch::x86_64::*;

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
