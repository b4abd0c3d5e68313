//! AVX-512 VNNI kernels for quantized weights against int8 activations (`vpdpbusd`: unsigned
//! bytes × signed bytes, four products summed exactly into each i32 lane).
//!
//! Exactness: every integer the scalar reference forms (per block of Q8_0, per super-block of
//! Q4_K / Q6_K) is formed exactly here too, in another order; the float steps are the scalar
//! reference's, in its order, lane by lane (multiplies and adds rounded separately, never
//! fused), so outputs are bit-identical to `quant::vec_dot_quantized_scalar`.
//!
//! Two shapes of work:
//! - GEMV (one activation row, decode) on stored rows: [`q4k_row`], [`q6k_row`] read the blocks
//!   directly with lanes over K; per super-block the sub-block sums are scaled with one
//!   `vpmulld` per vector and reduced to the block's integer. Weights prepared at load take the
//!   interleaved GEMV of `x16.rs` instead (whole groups of sixteen rows); these serve the rest.
//! - GEMM (M ≥ 2, batched decode, prefill): weights are packed per call, 16 columns at a time
//!   (from the interleaved copy where there is one: no transposes),
//!   into unpacked bytes `[k/4][16 columns][4]` plus per-column scales as i32 lanes, so one
//!   `vpdpbusd` serves 16 columns × 4 K for one activation row, the activation's four bytes
//!   broadcast from a packed `[k/4][MR]` tile. One panel's weights are read from memory once per
//!   call and reused from cache by every activation row.
//!   - Q4_K: sub-block sums (32 K) × scale, summed to `isum`; `imin = Σ m_j·(bsum pairs)` with
//!     `vpdpwssd`; `sumf += d·isum; sumf -= dmin·imin`.
//!   - Q6_K: sub-block sums (16 K) × scale, minus `32·Σ sc_j·bsums_j`; `sumf += d·isum`.
//!   - Q8_0: weights stored as `q + 128` (unsigned), so `Σ q·a = Σ (q + 128)·a − 128·Σ a`; the
//!     scalar reference keeps eight partial sums (block `b` into `b % 8`), so blocks are packed
//!     residue by residue and each partial sum is one accumulator in turn.

#![cfg(target_arch = "x86_64")]

use super::super::View;
use super::avx512::{store_row, transpose16};
use super::x16::{self, X16};
use super::{with_scratch, Epi, Slot};
use crate::quant::q8_0::{BlockQ8_0, BLOCK_BYTES as Q8_0_BYTES};
use crate::quant::q8_k::BlockQ8K;
use crate::quant::{q4_k, q6_k, QuantizedRow};
use crate::tensor::DType;
use rayon::prelude::*;
use std::arch::x86_64::*;

/// Columns per packed panel (one zmm of i32 lanes).
const NR: usize = 16;
/// Activation rows per microkernel call.
pub const MR: usize = 8;

/// fp16 bits → f32 with F16C (exact, as every conversion of an fp16 value is); the `half`
/// crate's conversion checks for F16C on every call.
#[inline(always)]
pub(super) unsafe fn f16_to_f32(lo: u8, hi: u8) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
        u16::from_le_bytes([lo, hi]) as i32,
    )))
}

// ---------------------------------------------------------------------------------------------
// GEMV: one activation row, stored weight blocks.

/// Per-row data a Q4_K GEMV needs besides the Q8_K blocks: each block's quants reordered to
/// the nibble layout (sub-blocks 0, 2, 1, 3, 4, 6, 5, 7), and the eight pair sums
/// `bsums[2j] + bsums[2j + 1]`.
pub struct Q4kAct {
    perm: Vec<[i8; 256]>,
    pairs: Vec<[i16; 8]>,
}

pub fn q4k_act(a: &[BlockQ8K]) -> Q4kAct {
    const ORDER: [usize; 8] = [0, 2, 1, 3, 4, 6, 5, 7];
    let mut perm = vec![[0i8; 256]; a.len()];
    let mut pairs = vec![[0i16; 8]; a.len()];
    for ((y, p), s) in a.iter().zip(&mut perm).zip(&mut pairs) {
        for (slot, &j) in ORDER.iter().enumerate() {
            p[32 * slot..32 * slot + 32].copy_from_slice(&y.qs[32 * j..32 * j + 32]);
        }
        for (j, sj) in s.iter_mut().enumerate() {
            *sj = y.bsums[2 * j] + y.bsums[2 * j + 1];
        }
    }
    Q4kAct { perm, pairs }
}

/// Sum of the sixteen i32 lanes.
#[inline(always)]
unsafe fn hsum_i32(v: __m512i) -> i32 {
    let s = _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v));
    let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0x4E>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0xB1>(s));
    _mm_cvtsi128_si32(s)
}

/// Q4_K row × Q8_K row; the same bits as `q4_k::vec_dot_q4_k_q8_k_scalar`.
///
/// # Safety
/// AVX-512 F/BW/VL and VNNI must be available; `w.len() == y.len() * 144`, `act` made from `y`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
pub unsafe fn q4k_row(w: &[u8], y: &[BlockQ8K], act: &Q4kAct) -> f32 {
    let m4 = _mm512_set1_epi8(0xF);
    // Lanes 0..8 take the first sub-block of a vector, 8..16 the second.
    let idx = |a: i32, b: i32| _mm512_setr_epi32(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b);
    let (i_lo0, i_hi0, i_lo1, i_hi1) = (idx(0, 2), idx(1, 3), idx(4, 6), idx(5, 7));
    let mut sumf = 0.0f32;
    for (i, b) in w.chunks_exact(q4_k::BLOCK_BYTES).enumerate() {
        let p = b.as_ptr();
        let (sc, mn) = q4_k::scales_mins_k4(&b[4..16]);
        let sc32 = _mm512_cvtepu8_epi32(_mm_loadl_epi64(sc.as_ptr() as *const __m128i));
        let q0 = _mm512_loadu_si512(p.add(16) as *const _);
        let q1 = _mm512_loadu_si512(p.add(80) as *const _);
        let yp = act.perm.get_unchecked(i).as_ptr();
        let z = _mm512_setzero_si512();
        let d0 = _mm512_dpbusd_epi32(
            z,
            _mm512_and_si512(q0, m4),
            _mm512_loadu_si512(yp as *const _),
        );
        let d1 = _mm512_dpbusd_epi32(
            z,
            _mm512_and_si512(_mm512_srli_epi16::<4>(q0), m4),
            _mm512_loadu_si512(yp.add(64) as *const _),
        );
        let d2 = _mm512_dpbusd_epi32(
            z,
            _mm512_and_si512(q1, m4),
            _mm512_loadu_si512(yp.add(128) as *const _),
        );
        let d3 = _mm512_dpbusd_epi32(
            z,
            _mm512_and_si512(_mm512_srli_epi16::<4>(q1), m4),
            _mm512_loadu_si512(yp.add(192) as *const _),
        );
        let s = _mm512_add_epi32(
            _mm512_add_epi32(
                _mm512_mullo_epi32(d0, _mm512_permutexvar_epi32(i_lo0, sc32)),
                _mm512_mullo_epi32(d1, _mm512_permutexvar_epi32(i_hi0, sc32)),
            ),
            _mm512_add_epi32(
                _mm512_mullo_epi32(d2, _mm512_permutexvar_epi32(i_lo1, sc32)),
                _mm512_mullo_epi32(d3, _mm512_permutexvar_epi32(i_hi1, sc32)),
            ),
        );
        let isum = hsum_i32(s);
        let mins = _mm_cvtepu8_epi16(_mm_loadl_epi64(mn.as_ptr() as *const __m128i));
        let pr = _mm_loadu_si128(act.pairs.get_unchecked(i).as_ptr() as *const __m128i);
        let m = _mm_madd_epi16(mins, pr);
        let m = _mm_add_epi32(m, _mm_shuffle_epi32::<0x4E>(m));
        let imin = _mm_cvtsi128_si32(_mm_add_epi32(m, _mm_shuffle_epi32::<0xB1>(m)));
        let yd = y.get_unchecked(i).d;
        let d = f16_to_f32(b[0], b[1]) * yd;
        let dmin = f16_to_f32(b[2], b[3]) * yd;
        sumf += d * isum as f32;
        sumf -= dmin * imin as f32;
    }
    sumf
}

/// Per 256-bit half, the shifts that move qh's bit pairs to bits 4..6: q1 wants qh << 4 and
/// q2 qh << 2 (`vpsllvw`), q3 qh and q4 qh >> 2 (`vpsrlvw`).
#[inline(always)]
unsafe fn q6_shifts() -> (__m512i, __m512i) {
    let (four, two) = (0x0004_0004_0004_0004i64, 0x0002_0002_0002_0002i64);
    (
        _mm512_setr_epi64(four, four, four, four, two, two, two, two),
        _mm512_setr_epi64(0, 0, 0, 0, two, two, two, two),
    )
}

/// Lane → sub-block (of 16) for the four 64-quant vectors of a block.
#[inline(always)]
unsafe fn q6_index() -> [__m512i; 4] {
    let mut ix = [_mm512_setzero_si512(); 4];
    for (v, x) in ix.iter_mut().enumerate() {
        let b = 4 * v as i32;
        *x = _mm512_setr_epi32(
            b,
            b,
            b,
            b,
            b + 1,
            b + 1,
            b + 1,
            b + 1,
            b + 2,
            b + 2,
            b + 2,
            b + 2,
            b + 3,
            b + 3,
            b + 3,
            b + 3,
        );
    }
    ix
}

/// One Q6_K block's `isum` spread over sixteen i32 lanes: Σ sc_j·q·y over the block minus
/// 32·Σ sc_j·bsums_j (in lanes 0..8). `ya` holds the activation's 256 quants.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn q6k_block(
    p: *const u8,
    ya: &[__m512i; 4],
    bsums: __m256i,
    m4: __m512i,
    m30: __m512i,
    sh12: __m512i,
    sh34: __m512i,
    ix: &[__m512i; 4],
) -> __m512i {
    let scb = _mm_loadu_si128(p.add(192) as *const __m128i);
    let sc32 = _mm512_cvtepi8_epi32(scb);
    let mut s = _mm512_setzero_si512();
    for h in 0..2 {
        let l = _mm512_loadu_si512(p.add(64 * h) as *const _);
        let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(p.add(128 + 32 * h) as *const __m256i));
        let q12 = _mm512_or_si512(
            _mm512_and_si512(l, m4),
            _mm512_and_si512(_mm512_sllv_epi16(qh, sh12), m30),
        );
        let q34 = _mm512_or_si512(
            _mm512_and_si512(_mm512_srli_epi16::<4>(l), m4),
            _mm512_and_si512(_mm512_srlv_epi16(qh, sh34), m30),
        );
        let z = _mm512_setzero_si512();
        let d12 = _mm512_dpbusd_epi32(z, q12, ya[2 * h]);
        let d34 = _mm512_dpbusd_epi32(z, q34, ya[2 * h + 1]);
        s = _mm512_add_epi32(
            s,
            _mm512_add_epi32(
                _mm512_mullo_epi32(d12, _mm512_permutexvar_epi32(ix[2 * h], sc32)),
                _mm512_mullo_epi32(d34, _mm512_permutexvar_epi32(ix[2 * h + 1], sc32)),
            ),
        );
    }
    // 32·Σ_j sc_j·bsums_j, the -32 offset of every quant.
    let corr = _mm256_madd_epi16(_mm256_cvtepi8_epi16(scb), bsums);
    _mm512_sub_epi32(s, _mm512_zextsi256_si512(_mm256_slli_epi32::<5>(corr)))
}

/// Q6_K row × Q8_K row; the same bits as `q6_k::vec_dot_q6_k_q8_k_scalar`.
///
/// # Safety
/// AVX-512 F/BW/VL and VNNI must be available; `w.len() == y.len() * 210`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
pub unsafe fn q6k_row(w: &[u8], y: &[BlockQ8K]) -> f32 {
    let m4 = _mm512_set1_epi8(0xF);
    let m30 = _mm512_set1_epi8(0x30);
    let (sh12, sh34) = q6_shifts();
    let ix = q6_index();
    let mut sumf = 0.0f32;
    for (b, yb) in w.chunks_exact(q6_k::BLOCK_BYTES).zip(y) {
        let yq = yb.qs.as_ptr();
        let ya = load4(yq as *const u8);
        let bs = _mm256_loadu_si256(yb.bsums.as_ptr() as *const __m256i);
        let s = q6k_block(b.as_ptr(), &ya, bs, m4, m30, sh12, sh34, &ix);
        let d = f16_to_f32(b[208], b[209]) * yb.d;
        sumf += d * hsum_i32(s) as f32;
    }
    sumf
}

/// How far ahead of the block being dotted the multi-row GEMVs prefetch each row (bytes): a
/// block or two. Decode q4_k_m ran ~15% faster with 256-384 than without on the 2-core Zen 4
/// (768 and more lost the gain). The addresses may run past the weights' end (`wrapping_add`):
/// a prefetch never faults.
const QPF: usize = 256;

/// Four consecutive zmm at `p`. (No closures in the kernels: a closure does not inherit its
/// function's target features, so its intrinsics would become calls.)
#[inline(always)]
unsafe fn load4(p: *const u8) -> [__m512i; 4] {
    [
        _mm512_loadu_si512(p as *const _),
        _mm512_loadu_si512(p.add(64) as *const _),
        _mm512_loadu_si512(p.add(128) as *const _),
        _mm512_loadu_si512(p.add(192) as *const _),
    ]
}

/// The four rows' i32 vectors summed to one lane per row: `[Σ t0, Σ t1, Σ t2, Σ t3]`.
#[inline(always)]
unsafe fn reduce4(t: [__m512i; 4]) -> __m128i {
    let mut h = [_mm256_setzero_si256(); 4];
    for (hi, v) in h.iter_mut().zip(t) {
        *hi = _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v));
    }
    let v = _mm256_hadd_epi32(_mm256_hadd_epi32(h[0], h[1]), _mm256_hadd_epi32(h[2], h[3]));
    _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v))
}

/// Four Q4_K rows × one Q8_K row: [`q4k_row`] for each, with the scale unpacking, the
/// horizontal sums and the float steps done for the four rows at once (lane = row; each lane
/// runs the scalar reference's float operations in its order).
///
/// # Safety
/// As [`q4k_row`], for each of the four rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
pub unsafe fn q4k_rows4(w: [&[u8]; 4], y: &[BlockQ8K], act: &Q4kAct) -> [f32; 4] {
    let m4 = _mm512_set1_epi8(0xF);
    let idx = |a: i32, b: i32| _mm512_setr_epi32(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b);
    let ix = [idx(0, 2), idx(1, 3), idx(4, 6), idx(5, 7)];
    let (k1, k2, k3) = (
        _mm_set1_epi32(0x3f3f_3f3f),
        _mm_set1_epi32(0x0f0f_0f0f),
        _mm_set1_epi32(0x0303_0303),
    );
    // Low halves (d) of the four header words, then the high halves (dmin).
    let dsplit = _mm_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
    let mut sumf = _mm_setzero_ps();
    for (i, yb) in y.iter().enumerate() {
        let off = i * q4_k::BLOCK_BYTES;
        let p = [
            w[0].as_ptr().add(off),
            w[1].as_ptr().add(off),
            w[2].as_ptr().add(off),
            w[3].as_ptr().add(off),
        ];
        for pr in p {
            for line in 0..3 {
                _mm_prefetch::<_MM_HINT_T0>(pr.wrapping_add(QPF + 64 * line) as *const i8);
            }
        }
        let yp = act.perm.get_unchecked(i).as_ptr();
        let ya = load4(yp as *const u8);
        // Headers (d, dmin, 12 scale bytes) transposed: lane = row.
        let h = [
            _mm_loadu_si128(p[0] as *const __m128i),
            _mm_loadu_si128(p[1] as *const __m128i),
            _mm_loadu_si128(p[2] as *const __m128i),
            _mm_loadu_si128(p[3] as *const __m128i),
        ];
        let (a, b) = (
            _mm_unpacklo_epi32(h[0], h[1]),
            _mm_unpackhi_epi32(h[0], h[1]),
        );
        let (c, d) = (
            _mm_unpacklo_epi32(h[2], h[3]),
            _mm_unpackhi_epi32(h[2], h[3]),
        );
        let w0 = _mm_unpacklo_epi64(a, c);
        let (u0, u1, u2) = (
            _mm_unpackhi_epi64(a, c),
            _mm_unpacklo_epi64(b, d),
            _mm_unpackhi_epi64(b, d),
        );
        let sc_lo = _mm_and_si128(u0, k1);
        let sc_hi = _mm_or_si128(
            _mm_and_si128(u2, k2),
            _mm_slli_epi32::<4>(_mm_and_si128(_mm_srli_epi32::<6>(u0), k3)),
        );
        let mn_lo = _mm_and_si128(u1, k1);
        let mn_hi = _mm_or_si128(
            _mm_and_si128(_mm_srli_epi32::<4>(u2), k2),
            _mm_slli_epi32::<4>(_mm_and_si128(_mm_srli_epi32::<6>(u1), k3)),
        );
        // Row r's eight scales (mins) are the 8 bytes at 8·(r % 2) of sc[r / 2] (mn[r / 2]).
        let sc = [
            _mm_unpacklo_epi32(sc_lo, sc_hi),
            _mm_unpackhi_epi32(sc_lo, sc_hi),
        ];
        let mn = [
            _mm_unpacklo_epi32(mn_lo, mn_hi),
            _mm_unpackhi_epi32(mn_lo, mn_hi),
        ];
        let pairs = _mm_loadu_si128(act.pairs.get_unchecked(i).as_ptr() as *const __m128i);
        let mut t = [_mm512_setzero_si512(); 4];
        let mut mm = [_mm_setzero_si128(); 4];
        for r in 0..4 {
            let (s8, m8) = if r % 2 == 0 {
                (sc[r / 2], mn[r / 2])
            } else {
                (
                    _mm_srli_si128::<8>(sc[r / 2]),
                    _mm_srli_si128::<8>(mn[r / 2]),
                )
            };
            let sc32 = _mm512_cvtepu8_epi32(s8);
            let q0 = _mm512_loadu_si512(p[r].add(16) as *const _);
            let q1 = _mm512_loadu_si512(p[r].add(80) as *const _);
            let z = _mm512_setzero_si512();
            let q = [
                _mm512_and_si512(q0, m4),
                _mm512_and_si512(_mm512_srli_epi16::<4>(q0), m4),
                _mm512_and_si512(q1, m4),
                _mm512_and_si512(_mm512_srli_epi16::<4>(q1), m4),
            ];
            let mut s = z;
            for j in 0..4 {
                let dj = _mm512_dpbusd_epi32(z, q[j], ya[j]);
                s = _mm512_add_epi32(
                    s,
                    _mm512_mullo_epi32(dj, _mm512_permutexvar_epi32(ix[j], sc32)),
                );
            }
            t[r] = s;
            mm[r] = _mm_madd_epi16(_mm_cvtepu8_epi16(m8), pairs);
        }
        let isum = reduce4(t);
        let imin = _mm_hadd_epi32(_mm_hadd_epi32(mm[0], mm[1]), _mm_hadd_epi32(mm[2], mm[3]));
        let dd = _mm_shuffle_epi8(w0, dsplit);
        let yd = _mm_set1_ps(yb.d);
        let dv = _mm_mul_ps(_mm_cvtph_ps(dd), yd);
        let dm = _mm_mul_ps(_mm_cvtph_ps(_mm_srli_si128::<8>(dd)), yd);
        sumf = _mm_add_ps(sumf, _mm_mul_ps(dv, _mm_cvtepi32_ps(isum)));
        sumf = _mm_sub_ps(sumf, _mm_mul_ps(dm, _mm_cvtepi32_ps(imin)));
    }
    let mut o = [0f32; 4];
    _mm_storeu_ps(o.as_mut_ptr(), sumf);
    o
}

/// Four Q6_K rows × one Q8_K row: [`q6k_row`] for each, sharing the activation loads, with the
/// horizontal sums and the float steps done for the four rows at once (lane = row).
///
/// # Safety
/// As [`q6k_row`], for each of the four rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
pub unsafe fn q6k_rows4(w: [&[u8]; 4], y: &[BlockQ8K]) -> [f32; 4] {
    let m4 = _mm512_set1_epi8(0xF);
    let m30 = _mm512_set1_epi8(0x30);
    let (sh12, sh34) = q6_shifts();
    let ix = q6_index();
    let mut sumf = _mm_setzero_ps();
    for (i, yb) in y.iter().enumerate() {
        let off = i * q6_k::BLOCK_BYTES;
        let yq = yb.qs.as_ptr();
        let ya = load4(yq as *const u8);
        let bs = _mm256_loadu_si256(yb.bsums.as_ptr() as *const __m256i);
        let mut t = [_mm512_setzero_si512(); 4];
        let mut dh = [0i16; 4];
        for r in 0..4 {
            let p = w[r].as_ptr().add(off);
            for line in 0..4 {
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(QPF + 64 * line) as *const i8);
            }
            t[r] = q6k_block(p, &ya, bs, m4, m30, sh12, sh34, &ix);
            dh[r] = (p.add(208) as *const i16).read_unaligned();
        }
        let isum = reduce4(t);
        let d = _mm_cvtph_ps(_mm_setr_epi16(dh[0], dh[1], dh[2], dh[3], 0, 0, 0, 0));
        let dv = _mm_mul_ps(d, _mm_set1_ps(yb.d));
        sumf = _mm_add_ps(sumf, _mm_mul_ps(dv, _mm_cvtepi32_ps(isum)));
    }
    let mut o = [0f32; 4];
    _mm_storeu_ps(o.as_mut_ptr(), sumf);
    o
}

// ---------------------------------------------------------------------------------------------
// GEMM: packed panels.

/// Loads 64 bytes at byte `off` of each of the panel's columns (zero for missing ones) and
/// transposes them: lane `n` of result `i` is 32-bit word `i` of column `n`.
#[inline(always)]
unsafe fn load_t(col: &[*const u8; NR], cnt: usize, off: usize) -> [__m512i; 16] {
    let mut r = [_mm512_setzero_si512(); 16];
    for (c, rc) in r.iter_mut().enumerate().take(cnt) {
        *rc = _mm512_loadu_si512(col[c].add(off) as *const _);
    }
    transpose16(&mut r);
    r
}

/// Like [`load_t`] for the first `bytes` (< 64) bytes at byte `off` only (the rest zero), so a
/// load never reaches past a row's last block.
#[inline(always)]
unsafe fn load_t_bytes(
    col: &[*const u8; NR],
    cnt: usize,
    off: usize,
    bytes: usize,
) -> [__m512i; 16] {
    let mut r = [_mm512_setzero_si512(); 16];
    let k = (1u64 << bytes) - 1;
    for (c, rc) in r.iter_mut().enumerate().take(cnt) {
        *rc = _mm512_maskz_loadu_epi8(k, col[c].add(off) as *const i8);
    }
    transpose16(&mut r);
    r
}

/// Byte `i` of every 32-bit lane, zero-extended.
#[inline(always)]
unsafe fn byte(x: __m512i, i: u32) -> __m512i {
    _mm512_and_si512(
        _mm512_srlv_epi32(x, _mm512_set1_epi32(8 * i as i32)),
        _mm512_set1_epi32(0xFF),
    )
}

/// Byte `i` of every 32-bit lane, sign-extended.
#[inline(always)]
unsafe fn sbyte(x: __m512i, i: u32) -> __m512i {
    _mm512_srai_epi32::<24>(_mm512_sllv_epi32(x, _mm512_set1_epi32(24 - 8 * i as i32)))
}

/// fp16 values in the low 16 bits of each lane → f32.
#[inline(always)]
unsafe fn cvt_lo16(v: __m512i) -> __m512 {
    _mm512_cvtph_ps(_mm512_cvtepi32_epi16(v))
}

#[inline(always)]
unsafe fn st(p: *mut u8, v: __m512i) {
    _mm512_storeu_si512(p as *mut _, v)
}

/// Where a panel's sixteen columns come from: stored rows (`cnt` of them, blocks of `bb` bytes),
/// or one interleaved group (`x16.rs`: lines of `16 × 4` bytes, already lane = column).
#[derive(Clone, Copy)]
enum Src<'a> {
    Rows {
        col: &'a [*const u8; NR],
        cnt: usize,
        bb: usize,
    },
    X16 {
        group: *const u8,
        /// Interleaved bytes per block of the group.
        gb: usize,
        /// Q6_K: the group's `d` values, `[block][16]` u16.
        d: *const u8,
        dtype: DType,
    },
}

impl Src<'_> {
    /// 32-bit words `w0..w0 + n` (n ≤ 16) of block `s` of the sixteen columns, lane = column;
    /// the other vectors (and missing columns) zero.
    #[inline(always)]
    unsafe fn words(self, s: usize, w0: usize, n: usize) -> [__m512i; 16] {
        match self {
            Src::Rows { col, cnt, bb } if n == 16 => load_t(col, cnt, s * bb + 4 * w0),
            Src::Rows { col, cnt, bb } => load_t_bytes(col, cnt, s * bb + 4 * w0, 4 * n),
            Src::X16 {
                group, gb, dtype, ..
            } => {
                let mut r = [_mm512_setzero_si512(); 16];
                for (i, ri) in r.iter_mut().enumerate().take(n) {
                    let line = x16::line_of(dtype, w0 + i);
                    *ri = _mm512_loadu_si512(group.add(s * gb + 64 * line) as *const _);
                }
                r
            }
        }
    }

    /// Q6_K: block `s`'s `d` (fp16 bits) in the low half of each lane.
    #[inline(always)]
    unsafe fn q6_d(self, s: usize) -> __m512i {
        match self {
            Src::Rows { col, cnt, bb } => load_t_bytes(col, cnt, s * bb + 208, 2)[0],
            Src::X16 { d, .. } => {
                _mm512_cvtepu16_epi32(_mm256_loadu_si256(d.add(32 * s) as *const __m256i))
            }
        }
    }
}

/// Bytes of one packed Q4_K super-block panel: quants `[64][16][4]`, scales `[8][16]` i32,
/// min pairs `[4][16]` (two i16), d and dmin `[16]` f32.
const P4_BYTES: usize = 4096 + 512 + 256 + 128;
/// Q6_K: quants `[64][16][4]`, scales `[16][16]` i32, scale pairs `[8][16]` (two i16),
/// d `[16]` f32.
const P6_BYTES: usize = 4096 + 1024 + 512 + 64;
/// Q8_0 per block: quants + 128 `[8][16][4]`, d `[16]` f32.
const P8_BYTES: usize = 512 + 64;

#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn pack_q4k(src: Src, nsb: usize, out: *mut u8) {
    let m4 = _mm512_set1_epi8(0xF);
    for s in 0..nsb {
        let o = out.add(s * P4_BYTES);
        for half in 0..2 {
            let v = src.words(s, 4 + 16 * half, 16);
            for (i, vi) in v.iter().enumerate() {
                // Word 8c + t holds groups 16c + t (low nibbles) and 16c + 8 + t (high).
                let word = 16 * half + i;
                let (c, t) = (word / 8, word % 8);
                st(o.add(64 * (16 * c + t)), _mm512_and_si512(*vi, m4));
                st(
                    o.add(64 * (16 * c + 8 + t)),
                    _mm512_and_si512(_mm512_srli_epi32::<4>(*vi), m4),
                );
            }
        }
        // d, dmin and the 12 scale bytes of every column, lanes = columns; then ggml's word
        // shuffle (`q4_k::scales_mins_k4`) on all sixteen at once.
        let h = src.words(s, 0, 4);
        let [sc_lo, sc_hi, mn_lo, mn_hi] = x16::q4k_scales_mins(h[1], h[2], h[3]);
        for j in 0..4u32 {
            st(o.add(4096 + 64 * j as usize), byte(sc_lo, j));
            st(o.add(4096 + 64 * (j as usize + 4)), byte(sc_hi, j));
        }
        for p in 0..4usize {
            let x = if p < 2 { mn_lo } else { mn_hi };
            let q = 2 * (p % 2) as u32;
            let pair = _mm512_or_si512(byte(x, q), _mm512_slli_epi32::<16>(byte(x, q + 1)));
            st(o.add(4096 + 512 + 64 * p), pair);
        }
        let dd = o.add(4096 + 768) as *mut f32;
        _mm512_storeu_ps(dd, cvt_lo16(h[0]));
        _mm512_storeu_ps(dd.add(NR), cvt_lo16(_mm512_srli_epi32::<16>(h[0])));
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn pack_q6k(src: Src, nsb: usize, out: *mut u8) {
    let m4 = _mm512_set1_epi8(0xF);
    let m30 = _mm512_set1_epi8(0x30);
    for s in 0..nsb {
        let o = out.add(s * P6_BYTES);
        let ql0 = src.words(s, 0, 16);
        let ql1 = src.words(s, 16, 16);
        let qh = src.words(s, 32, 16);
        for h in 0..2 {
            for t in 0..8 {
                let ql = if h == 0 { &ql0 } else { &ql1 };
                let (a, c, hb) = (ql[t], ql[8 + t], qh[8 * h + t]);
                let g = 32 * h + t;
                let q1 = _mm512_or_si512(
                    _mm512_and_si512(a, m4),
                    _mm512_and_si512(_mm512_slli_epi32::<4>(hb), m30),
                );
                let q2 = _mm512_or_si512(
                    _mm512_and_si512(c, m4),
                    _mm512_and_si512(_mm512_slli_epi32::<2>(hb), m30),
                );
                let q3 = _mm512_or_si512(
                    _mm512_and_si512(_mm512_srli_epi32::<4>(a), m4),
                    _mm512_and_si512(hb, m30),
                );
                let q4 = _mm512_or_si512(
                    _mm512_and_si512(_mm512_srli_epi32::<4>(c), m4),
                    _mm512_and_si512(_mm512_srli_epi32::<2>(hb), m30),
                );
                st(o.add(64 * g), q1);
                st(o.add(64 * (g + 8)), q2);
                st(o.add(64 * (g + 16)), q3);
                st(o.add(64 * (g + 24)), q4);
            }
        }
        // The sixteen int8 scales (words 0..4) of every column, and d.
        let h = src.words(s, 48, 4);
        for j in 0..16 {
            st(o.add(4096 + 64 * j), sbyte(h[j / 4], (j % 4) as u32));
        }
        let lo16 = _mm512_set1_epi32(0xFFFF);
        for p in 0..8 {
            let pair = _mm512_or_si512(
                _mm512_and_si512(sbyte(h[p / 2], 2 * (p % 2) as u32), lo16),
                _mm512_slli_epi32::<16>(sbyte(h[p / 2], 2 * (p % 2) as u32 + 1)),
            );
            st(o.add(4096 + 1024 + 64 * p), pair);
        }
        _mm512_storeu_ps(o.add(4096 + 1536) as *mut f32, cvt_lo16(src.q6_d(s)));
    }
}

/// The order in which Q8_0 blocks are packed: residue 0 (blocks 0, 8, 16, ...), then 1, ...
fn q8_order(nb: usize) -> Vec<usize> {
    (0..8).flat_map(|r| (r..nb).step_by(8)).collect()
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn pack_q8_0(col: &[*const u8; NR], cnt: usize, rb: usize, pos: &[usize], out: *mut u8) {
    let flip = _mm512_set1_epi8(-128);
    let nb = pos.len();
    // Row offsets from column 0 (rows are `rb` bytes apart) for the scale gathers.
    let vidx = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(rb as i32),
    );
    let live = ((1u32 << cnt) - 1) as u16;
    // Blocks in stored order (sequential reads), each written to its residue-major position.
    for b in (0..nb).step_by(2) {
        let two = b + 1 < nb;
        let mut r = [_mm512_setzero_si512(); 16];
        for (c, rc) in r.iter_mut().enumerate().take(cnt) {
            let p = col[c].add(b * Q8_0_BYTES);
            _mm_prefetch::<_MM_HINT_T0>(p.add(8 * Q8_0_BYTES) as *const i8);
            let lo = _mm256_loadu_si256(p.add(2) as *const __m256i);
            let hi = if two {
                _mm256_loadu_si256(p.add(Q8_0_BYTES + 2) as *const __m256i)
            } else {
                _mm256_setzero_si256()
            };
            *rc = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
        }
        transpose16(&mut r);
        for h in 0..1 + two as usize {
            let o = out.add(pos[b + h] * P8_BYTES);
            for g in 0..8 {
                st(o.add(64 * g), _mm512_xor_si512(r[8 * h + g], flip));
            }
            let d = _mm512_mask_i32gather_epi32::<1>(
                _mm512_setzero_si512(),
                live,
                vidx,
                col[0].add((b + h) * Q8_0_BYTES) as *const i32,
            );
            _mm512_storeu_ps(o.add(512) as *mut f32, cvt_lo16(d));
        }
    }
}

/// Packed activations of one tile of MR rows for the K-quants, per super-block: quants
/// `[64][MR]` (4 bytes each), `d` `[MR]` f32, pairs `[8][MR]` (two i16: Q4_K the sums of bsum
/// pairs `P_2p, P_2p+1`; Q6_K `bsums_2p, bsums_2p+1`).
const AK_BYTES: usize = (64 + 1 + 8) * 4 * MR;
/// Q8_0 per block: quants `[8][MR]`, `d` `[MR]` f32, `128·Σ q` `[MR]` i32.
const A8_BYTES: usize = (8 + 2) * 4 * MR;

/// Writes the packed tile at `base` (`nsb · AK_BYTES` bytes, zeroed by the caller).
fn pack_act_k(dtype: DType, rows: &[&[BlockQ8K]], nsb: usize, base: *mut u8) {
    for s in 0..nsb {
        let o = unsafe { base.add(s * AK_BYTES) } as *mut u32;
        for (i, r) in rows.iter().enumerate() {
            let y = &r[s];
            for g in 0..64 {
                let q = &y.qs[4 * g..4 * g + 4];
                unsafe {
                    *o.add(g * MR + i) =
                        u32::from_le_bytes([q[0] as u8, q[1] as u8, q[2] as u8, q[3] as u8])
                };
            }
            unsafe { *(o.add(64 * MR + i) as *mut f32) = y.d };
            let pair = |a: i16, b: i16| (a as u16) as u32 | ((b as u16) as u32) << 16;
            for p in 0..8 {
                let w = if dtype == DType::Q4K {
                    if p < 4 {
                        let pj = |j: usize| y.bsums[2 * j] + y.bsums[2 * j + 1];
                        pair(pj(2 * p), pj(2 * p + 1))
                    } else {
                        0
                    }
                } else {
                    pair(y.bsums[2 * p], y.bsums[2 * p + 1])
                };
                unsafe { *o.add((65 + p) * MR + i) = w };
            }
        }
    }
}

/// Writes the packed tile at `base` (`order.len() · A8_BYTES` bytes, zeroed by the caller).
#[target_feature(enable = "avx2,f16c")]
unsafe fn pack_act_q8_0(rows: &[&[BlockQ8_0]], order: &[usize], base: *mut u8) {
    for (pos, &b) in order.iter().enumerate() {
        let o = unsafe { base.add(pos * A8_BYTES) } as *mut u32;
        for (i, r) in rows.iter().enumerate() {
            let y = &r[b];
            for g in 0..8 {
                let q = &y.qs[4 * g..4 * g + 4];
                unsafe {
                    *o.add(g * MR + i) =
                        u32::from_le_bytes([q[0] as u8, q[1] as u8, q[2] as u8, q[3] as u8])
                };
            }
            let sum: i32 = y.qs.iter().map(|&q| q as i32).sum();
            unsafe {
                *(o.add(8 * MR + i) as *mut f32) = f16_to_f32(y.d as u8, (y.d >> 8) as u8);
                *(o.add(9 * MR + i) as *mut i32) = 128 * sum;
            }
        }
    }
}

#[inline(always)]
unsafe fn ldi(p: *const u8) -> __m512i {
    _mm512_loadu_si512(p as *const _)
}

#[inline(always)]
unsafe fn bc(p: *const u32) -> __m512i {
    _mm512_set1_epi32(*p as i32)
}

/// Q4_K: `c[i][0..16] = Σ` over the panel's super-blocks, in the scalar reference's order.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn ukr_q4k(nsb: usize, a: *const u8, b: *const u8, c: *mut f32) {
    let mut sumf = [_mm512_setzero_ps(); MR];
    for s in 0..nsb {
        let (ap, bp) = (a.add(s * AK_BYTES) as *const u32, b.add(s * P4_BYTES));
        let mut isum = [_mm512_setzero_si512(); MR];
        for j in 0..8 {
            let mut acc = [_mm512_setzero_si512(); MR];
            for g in 8 * j..8 * j + 8 {
                let q = ldi(bp.add(64 * g));
                for (i, ai) in acc.iter_mut().enumerate() {
                    *ai = _mm512_dpbusd_epi32(*ai, q, bc(ap.add(g * MR + i)));
                }
            }
            let sc = ldi(bp.add(4096 + 64 * j));
            for i in 0..MR {
                isum[i] = _mm512_add_epi32(isum[i], _mm512_mullo_epi32(acc[i], sc));
            }
        }
        let d = _mm512_loadu_ps(bp.add(4096 + 768) as *const f32);
        let dmin = _mm512_loadu_ps(bp.add(4096 + 832) as *const f32);
        for i in 0..MR {
            let mut imin = _mm512_setzero_si512();
            for p in 0..4 {
                imin = _mm512_dpwssd_epi32(
                    imin,
                    ldi(bp.add(4096 + 512 + 64 * p)),
                    bc(ap.add((65 + p) * MR + i)),
                );
            }
            let yd = _mm512_set1_ps(*(ap.add(64 * MR + i) as *const f32));
            let t = _mm512_mul_ps(_mm512_mul_ps(d, yd), _mm512_cvtepi32_ps(isum[i]));
            sumf[i] = _mm512_add_ps(sumf[i], t);
            let t = _mm512_mul_ps(_mm512_mul_ps(dmin, yd), _mm512_cvtepi32_ps(imin));
            sumf[i] = _mm512_sub_ps(sumf[i], t);
        }
    }
    for (i, s) in sumf.iter().enumerate() {
        _mm512_storeu_ps(c.add(i * NR), *s);
    }
}

/// Q6_K, as [`ukr_q4k`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn ukr_q6k(nsb: usize, a: *const u8, b: *const u8, c: *mut f32) {
    let mut sumf = [_mm512_setzero_ps(); MR];
    for s in 0..nsb {
        let (ap, bp) = (a.add(s * AK_BYTES) as *const u32, b.add(s * P6_BYTES));
        let mut isum = [_mm512_setzero_si512(); MR];
        for j in 0..16 {
            let mut acc = [_mm512_setzero_si512(); MR];
            for g in 4 * j..4 * j + 4 {
                let q = ldi(bp.add(64 * g));
                for (i, ai) in acc.iter_mut().enumerate() {
                    *ai = _mm512_dpbusd_epi32(*ai, q, bc(ap.add(g * MR + i)));
                }
            }
            let sc = ldi(bp.add(4096 + 64 * j));
            for i in 0..MR {
                isum[i] = _mm512_add_epi32(isum[i], _mm512_mullo_epi32(acc[i], sc));
            }
        }
        let d = _mm512_loadu_ps(bp.add(4096 + 1536) as *const f32);
        for i in 0..MR {
            let mut corr = _mm512_setzero_si512();
            for p in 0..8 {
                corr = _mm512_dpwssd_epi32(
                    corr,
                    ldi(bp.add(4096 + 1024 + 64 * p)),
                    bc(ap.add((65 + p) * MR + i)),
                );
            }
            let is = _mm512_sub_epi32(isum[i], _mm512_slli_epi32::<5>(corr));
            let yd = _mm512_set1_ps(*(ap.add(64 * MR + i) as *const f32));
            let t = _mm512_mul_ps(_mm512_mul_ps(d, yd), _mm512_cvtepi32_ps(is));
            sumf[i] = _mm512_add_ps(sumf[i], t);
        }
    }
    for (i, s) in sumf.iter().enumerate() {
        _mm512_storeu_ps(c.add(i * NR), *s);
    }
}

/// Q8_0: the eight residue partial sums, then the reference's fixed reduction tree.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn ukr_q8_0(nb: usize, a: *const u8, b: *const u8, c: *mut f32) {
    let mut part = [[_mm512_setzero_ps(); MR]; 8];
    let mut pos = 0;
    for (r, pr) in part.iter_mut().enumerate() {
        let cnt = (nb + 7 - r) / 8;
        for _ in 0..cnt {
            let (ap, bp) = (a.add(pos * A8_BYTES) as *const u32, b.add(pos * P8_BYTES));
            let mut acc = [_mm512_setzero_si512(); MR];
            for g in 0..8 {
                let q = ldi(bp.add(64 * g));
                for (i, ai) in acc.iter_mut().enumerate() {
                    *ai = _mm512_dpbusd_epi32(*ai, q, bc(ap.add(g * MR + i)));
                }
            }
            let dw = _mm512_loadu_ps(bp.add(512) as *const f32);
            for i in 0..MR {
                let isum = _mm512_sub_epi32(acc[i], bc(ap.add(9 * MR + i)));
                let d = _mm512_mul_ps(dw, _mm512_set1_ps(*(ap.add(8 * MR + i) as *const f32)));
                pr[i] = _mm512_add_ps(pr[i], _mm512_mul_ps(_mm512_cvtepi32_ps(isum), d));
            }
            pos += 1;
        }
    }
    #[allow(clippy::needless_range_loop)] // i indexes the second axis of `part`
    for i in 0..MR {
        let s4 = [
            _mm512_add_ps(part[0][i], part[4][i]),
            _mm512_add_ps(part[1][i], part[5][i]),
            _mm512_add_ps(part[2][i], part[6][i]),
            _mm512_add_ps(part[3][i], part[7][i]),
        ];
        let s2 = [_mm512_add_ps(s4[0], s4[2]), _mm512_add_ps(s4[1], s4[3])];
        _mm512_storeu_ps(c.add(i * NR), _mm512_add_ps(s2[0], s2[1]));
    }
}

/// The packed GEMM for M ≥ 2. `acts` are the quantized activation rows (`m` of them).
#[allow(clippy::too_many_arguments)]
pub fn packed(
    dtype: DType,
    acts: &[QuantizedRow],
    w: &[u8],
    x16: Option<&X16>,
    m: usize,
    n: usize,
    k: usize,
    epi: Epi,
    out: &View,
) {
    let rb = dtype.bytes_for(k);
    let nblk = k / dtype.block_len();
    let order = q8_order(nblk);
    let mut pos = vec![0usize; nblk];
    for (i, &b) in order.iter().enumerate() {
        pos[b] = i;
    }
    let tiles = m.div_ceil(MR);
    let tile_bytes = match dtype {
        DType::Q8_0 => order.len() * A8_BYTES,
        _ => nblk * AK_BYTES,
    };
    let panel_bytes = match dtype {
        DType::Q4K => nblk * P4_BYTES,
        DType::Q6K => nblk * P6_BYTES,
        _ => nblk.div_ceil(2) * 2 * P8_BYTES,
    };
    // Activation tiles, packed once per call (zeroed: rows past M stay zero).
    with_scratch(Slot::A, tiles * tile_bytes, true, |abuf| {
        let ap = super::super::SPtr(abuf);
        (0..tiles).into_par_iter().for_each(|t| {
            let rows = &acts[t * MR..((t + 1) * MR).min(m)];
            let base = unsafe { ap.get().add(t * tile_bytes) };
            match dtype {
                DType::Q8_0 => {
                    let r: Vec<&[BlockQ8_0]> = rows
                        .iter()
                        .map(|a| match a {
                            QuantizedRow::Q8_0(b) => &b[..],
                            _ => unreachable!("Q8_0 activations"),
                        })
                        .collect();
                    unsafe { pack_act_q8_0(&r, &order, base) }
                }
                _ => {
                    let r: Vec<&[BlockQ8K]> = rows
                        .iter()
                        .map(|a| match a {
                            QuantizedRow::Q8K(b) => &b[..],
                            _ => unreachable!("Q8_K activations"),
                        })
                        .collect();
                    pack_act_k(dtype, &r, nblk, base)
                }
            }
        });
        let panels = n.div_ceil(NR);
        let threads = rayon::current_num_threads();
        let chunks = (2 * threads).div_ceil(panels).clamp(1, tiles);
        let tiles_per_chunk = tiles.div_ceil(chunks);
        let chunks = tiles.div_ceil(tiles_per_chunk);
        let out = *out;
        let wp = super::super::SPtr(w.as_ptr() as *mut u8);
        (0..panels * chunks).into_par_iter().for_each(|unit| {
            let (j, ch) = (unit / chunks, unit % chunks);
            let n0 = j * NR;
            let cnt = NR.min(n - n0);
            let col: [*const u8; NR] = std::array::from_fn(|c| unsafe {
                wp.get().add((n0 + c.min(cnt - 1)) * rb) as *const u8
            });
            // Panels that are a whole interleaved group read it directly.
            let src = |col| match x16 {
                Some(x) if j < x.groups => Src::X16 {
                    group: x.group(j),
                    gb: x.block_stride(),
                    dtype,
                    d: if dtype == DType::Q6K {
                        x.dvals(j)
                    } else {
                        std::ptr::null()
                    },
                },
                _ => Src::Rows {
                    col,
                    cnt,
                    bb: dtype.block_bytes(),
                },
            };
            let t0 = ch * tiles_per_chunk;
            let t1 = (t0 + tiles_per_chunk).min(tiles);
            with_scratch(Slot::B, panel_bytes, false, |bpp| {
                with_scratch(Slot::C, tiles_per_chunk * MR * NR * 4, false, |cb| {
                    let cbuf = cb as *mut f32;
                    unsafe {
                        match dtype {
                            DType::Q4K => pack_q4k(src(&col), nblk, bpp),
                            DType::Q6K => pack_q6k(src(&col), nblk, bpp),
                            _ => pack_q8_0(&col, cnt, rb, &pos, bpp),
                        }
                        for t in t0..t1 {
                            let at = ap.get().add(t * tile_bytes) as *const u8;
                            let cp = cbuf.add((t - t0) * MR * NR);
                            match dtype {
                                DType::Q4K => ukr_q4k(nblk, at, bpp, cp),
                                DType::Q6K => ukr_q6k(nblk, at, bpp, cp),
                                _ => ukr_q8_0(nblk, at, bpp, cp),
                            }
                        }
                    }
                    for r in t0 * MR..(t1 * MR).min(m) {
                        let c = unsafe {
                            std::slice::from_raw_parts_mut(cbuf.add((r - t0 * MR) * NR), cnt)
                        };
                        unsafe { store_row(c, epi, &out, r, n0) };
                    }
                })
            })
        });
    });
}
