//! Row-interleaved quantized weights for the AVX-512 GEMV: Q8_0 / Q4_K / Q6_K rows regrouped at
//! load time sixteen at a time, so that one zmm holds the same four bytes of one block of sixteen rows
//! (lane = row). The GEMV then needs no shuffles: each `vpdpbusd` dots sixteen rows with four
//! activation bytes broadcast from memory, and the per-row scales sit in lanes like the data.
//! Each thread also reads one forward stream, in the order it computes, instead of four short
//! rows at a time; the hardware prefetcher follows it without software prefetches. (On the
//! stored rows the GEMVs ran at ~18 GB/s, compute-bound; interleaved, at the read bandwidth.)
//!
//! Layout of group `g` (rows `16g..16g + 16`), block `s`, at `(g · nb + s) · 16 · W` bytes:
//! `W / 4` lines of 64 bytes; lane `r` of line [`line_of`]`(w)` holds 32-bit word `w` of row
//! `16g + r`'s block `s`. `W` is the block size (Q4_K: 144, all of it), the first 208 bytes
//! of a Q6_K block (quants and scales) or the 32 quants of a Q8_0 block, stored as `q + 128`
//! (unsigned, what `vpdpbusd` takes: `Σ (q + 128)·a − 128·Σ a` is the exact `Σ q·a`); the Q6_K
//! and Q8_0 `d` values follow all groups as `[g][s][16]` u16. Rows past the last full group are
//! not copied: the stored rows serve them (and every other op).
//!
//! Exactness: the same integers per block as `quant::vec_dot_quantized_scalar`, and its float
//! steps in its order per lane, so the outputs are bit-identical to it.

use super::Line;
use crate::quant::q4_k;
use crate::quant::q8_0::{self, BlockQ8_0};
use crate::quant::q8_k::BlockQ8K;
use crate::tensor::DType;
use rayon::prelude::*;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Rows per group: one per i32 lane of a zmm.
pub const G: usize = 16;
/// Interleaved bytes of one Q6_K block of one row (its `d` is stored apart).
const Q6_W: usize = 208;

/// A Q8_0, Q4_K or Q6_K weight `[n, k]` with its full groups of sixteen rows interleaved.
pub struct X16 {
    pub dtype: DType,
    pub n: usize,
    pub k: usize,
    /// Full groups (`n / 16`).
    pub groups: usize,
    data: Vec<Line>,
}

impl X16 {
    /// Bytes of one block of one row in the interleaved part.
    fn w(dtype: DType) -> usize {
        match dtype {
            DType::Q4K => q4_k::BLOCK_BYTES,
            DType::Q8_0 => q8_0::QK8_0,
            _ => Q6_W,
        }
    }

    /// Offset of a block's first interleaved byte in its stored form (past a Q8_0 block's `d`).
    fn w0(dtype: DType) -> usize {
        if dtype == DType::Q8_0 {
            2
        } else {
            0
        }
    }

    /// Offset of a block's `d` in its stored form, where it is stored apart.
    fn d_at(dtype: DType) -> Option<usize> {
        match dtype {
            DType::Q6K => Some(Q6_W),
            DType::Q8_0 => Some(0),
            _ => None,
        }
    }

    /// Bytes of the copy.
    pub fn bytes(&self) -> usize {
        self.data.len() * 64
    }

    /// Blocks per row.
    pub fn nb(&self) -> usize {
        self.k / self.dtype.block_len()
    }

    /// Bytes from one interleaved block of a group to the next.
    pub fn block_stride(&self) -> usize {
        G * Self::w(self.dtype)
    }

    /// Start of group `g`'s interleaved blocks.
    pub fn group(&self, g: usize) -> *const u8 {
        let bytes = g * self.nb() * G * Self::w(self.dtype);
        unsafe { (self.data.as_ptr() as *const u8).add(bytes) }
    }

    /// Q6_K, Q8_0: the sixteen `d` values (u16) of group `g`, block 0; blocks follow 32 bytes
    /// apart.
    pub fn dvals(&self, g: usize) -> *const u8 {
        let blocks = self.groups * self.nb() * G * Self::w(self.dtype);
        unsafe { (self.data.as_ptr() as *const u8).add(blocks + g * self.nb() * 2 * G) }
    }
}

/// The line that holds a block's 32-bit word `w`. Q4_K: the stored order (the GEMV reads it
/// front to back). Q6_K: in the order the GEMV reads them, so that its loads run forward
/// through memory: the four scale words, then per half `h` and step `t` the words of `ql`
/// (bytes 4t and 32 + 4t of the half) and of `qh` that make sixteen quants each.
pub fn line_of(dtype: DType, w: usize) -> usize {
    if dtype != DType::Q6K {
        return w;
    }
    match w {
        48.. => w - 48,
        32.. => 4 + 24 * ((w - 32) / 8) + 3 * ((w - 32) % 8) + 2,
        _ => 4 + 24 * (w / 16) + 3 * (w % 8) + (w % 16) / 8,
    }
}

/// Interleaves the full groups of `w` (`n` stored rows of `k` elements), or `None` when the
/// type or shape has no interleaved kernel (other types, fewer than sixteen rows).
pub fn interleave(dtype: DType, w: &[u8], n: usize, k: usize) -> Option<X16> {
    let bl = dtype.block_len();
    if !matches!(dtype, DType::Q8_0 | DType::Q4K | DType::Q6K) || n < G || !k.is_multiple_of(bl) {
        return None;
    }
    let (rb, bb, ww) = (dtype.bytes_for(k), dtype.block_bytes(), X16::w(dtype));
    let (groups, nb) = (n / G, k / bl);
    let main = groups * nb * G * ww;
    let (w0, d_at) = (X16::w0(dtype), X16::d_at(dtype));
    let dbytes = if d_at.is_some() {
        groups * nb * 2 * G
    } else {
        0
    };
    // Q8_0's signed quants become `q + 128`.
    let flip = if dtype == DType::Q8_0 { 0x8080_8080 } else { 0 };
    let mut data = vec![Line([0; 16]); (main + dbytes).div_ceil(64)];
    let dst = super::super::SPtr(data.as_mut_ptr() as *mut u8);
    (0..groups).into_par_iter().for_each(|g| {
        let out = dst.get();
        for s in 0..nb {
            let o = unsafe { out.add((g * nb + s) * G * ww) } as *mut u32;
            for r in 0..G {
                let src = &w[(G * g + r) * rb + s * bb..][..bb];
                for wd in 0..ww / 4 {
                    let at = w0 + 4 * wd;
                    let v = u32::from_le_bytes(src[at..at + 4].try_into().unwrap()) ^ flip;
                    unsafe { o.add(line_of(dtype, wd) * G + r).write(v) };
                }
                if let Some(da) = d_at {
                    let d = unsafe { out.add(main + ((g * nb + s) * G + r) * 2) };
                    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr().add(da), d, 2) };
                }
            }
        }
    });
    Some(X16 {
        dtype,
        n,
        k,
        groups,
        data,
    })
}

/// What the Q8_0 GEMV needs of the activation row besides its blocks: per block `128 · Σ a`
/// (the unsigned weights' offset) and `d` as f32.
pub struct Q8Act {
    asum: Vec<i32>,
    d: Vec<f32>,
}

pub fn q8_0_act(y: &[BlockQ8_0]) -> Q8Act {
    Q8Act {
        asum: y
            .iter()
            .map(|b| 128 * b.qs.iter().map(|&q| q as i32).sum::<i32>())
            .collect(),
        d: y.iter()
            .map(|b| half::f16::from_bits(b.d).to_f32())
            .collect(),
    }
}

/// Sixteen Q8_0 rows (group base `b`, its `d` values at `dp`) × one Q8_0 row: `out[r]` as
/// `q8_0::vec_dot_q8_0_q8_0_scalar` gives it for row `r` (the block sums go into eight
/// accumulators by block index mod 8, reduced as `q8_0::reduce8` does, lane by lane).
///
/// # Safety
/// AVX-512 F/BW/VL + VNNI; `b` and `dp` hold `y.len()` interleaved blocks; `act` made from `y`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
pub unsafe fn q8_0(b: *const u8, dp: *const u8, y: &[BlockQ8_0], act: &Q8Act, out: &mut [f32; 16]) {
    const BB: usize = G * q8_0::QK8_0;
    let mut acc = [_mm512_setzero_ps(); 8];
    let nb = y.len();
    // Block `s` into accumulator `u` = s % 8 (an index known at compile time in the
    // unrolled body).
    #[inline(always)]
    unsafe fn blk(b: *const u8, dp: *const u8, y: &[BlockQ8_0], act: &Q8Act, s: usize) -> __m512 {
        let (p, q) = (b.add(s * BB), y.get_unchecked(s).qs.as_ptr());
        let mut isum = _mm512_set1_epi32(-act.asum.get_unchecked(s));
        for t in 0..8 {
            isum = _mm512_dpbusd_epi32(isum, ld(p, t), ybc(q, t));
        }
        let dh = _mm256_loadu_si256(dp.add(s * 2 * G) as *const __m256i);
        let d = _mm512_mul_ps(_mm512_cvtph_ps(dh), _mm512_set1_ps(*act.d.get_unchecked(s)));
        _mm512_mul_ps(_mm512_cvtepi32_ps(isum), d)
    }
    let mut s = 0;
    while s + 8 <= nb {
        for (u, a) in acc.iter_mut().enumerate() {
            *a = _mm512_add_ps(*a, blk(b, dp, y, act, s + u));
        }
        s += 8;
    }
    for (u, a) in acc.iter_mut().enumerate().take(nb - s) {
        *a = _mm512_add_ps(*a, blk(b, dp, y, act, s + u));
    }
    let s4: [__m512; 4] = std::array::from_fn(|i| _mm512_add_ps(acc[i], acc[i + 4]));
    let s2 = [_mm512_add_ps(s4[0], s4[2]), _mm512_add_ps(s4[1], s4[3])];
    _mm512_storeu_ps(out.as_mut_ptr(), _mm512_add_ps(s2[0], s2[1]));
}

/// The Q4_K min terms' activation side, per block: the pair sums `P_j = bsums[2j] + bsums[2j+1]`
/// as i16 pairs `(P0, P2), (P1, P3), (P4, P6), (P5, P7)` (what `vpmaddwd` takes against the
/// mins' even and odd bytes).
pub fn q4k_min_pairs(y: &[BlockQ8K]) -> Vec<[i32; 4]> {
    y.iter()
        .map(|b| {
            let p = |j: usize| (b.bsums[2 * j] + b.bsums[2 * j + 1]) as u16 as u32;
            let w = |a: usize, c: usize| (p(a) | p(c) << 16) as i32;
            [w(0, 2), w(1, 3), w(4, 6), w(5, 7)]
        })
        .collect()
}

/// ggml's 6-bit Q4_K scales and mins (`q4_k::scales_mins_k4`) of sixteen blocks at once, from
/// words 1, 2, 3 of their headers (lane = block): scales 0..4, scales 4..8, mins 0..4, mins 4..8,
/// a byte each.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub unsafe fn q4k_scales_mins(u0: __m512i, u1: __m512i, u2: __m512i) -> [__m512i; 4] {
    let k1 = _mm512_set1_epi32(0x3f3f_3f3f);
    let k2 = _mm512_set1_epi32(0x0f0f_0f0f);
    let k3 = _mm512_set1_epi32(0x0303_0303);
    // Bits 6, 7 of each byte of `u`, moved to bits 4, 5 (no closure: it would not inherit the
    // caller's target features).
    let (h0, h1) = (
        _mm512_slli_epi32::<4>(_mm512_and_si512(_mm512_srli_epi32::<6>(u0), k3)),
        _mm512_slli_epi32::<4>(_mm512_and_si512(_mm512_srli_epi32::<6>(u1), k3)),
    );
    [
        _mm512_and_si512(u0, k1),
        _mm512_or_si512(_mm512_and_si512(u2, k2), h0),
        _mm512_and_si512(u1, k1),
        _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32::<4>(u2), k2), h1),
    ]
}

/// Dword `i` of a Q8_K block's quants, broadcast.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn ybc(q: *const i8, i: usize) -> __m512i {
    _mm512_set1_epi32((q.add(4 * i) as *const i32).read_unaligned())
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn ld(p: *const u8, line: usize) -> __m512i {
    _mm512_loadu_si512(p.add(64 * line) as *const _)
}

/// The byte at bit `SH` of every lane, zero-extended.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn ubyte<const SH: u32>(x: __m512i) -> __m512i {
    _mm512_and_si512(_mm512_srli_epi32::<SH>(x), _mm512_set1_epi32(0xFF))
}

/// Q6_K scale `j` of every lane (signed), from the block's four scale lines. (A function, not
/// a closure: closures do not inherit the kernel's target features.)
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn sc6(scw: &[__m512i; 4], j: usize) -> __m512i {
    match j % 4 {
        0 => sbyte::<24>(scw[j / 4]),
        1 => sbyte::<16>(scw[j / 4]),
        2 => sbyte::<8>(scw[j / 4]),
        _ => sbyte::<0>(scw[j / 4]),
    }
}

/// Signed byte at bits `24 - L .. 32 - L` of every lane (`L` = 24 - 8 · byte index).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn sbyte<const L: u32>(x: __m512i) -> __m512i {
    _mm512_srai_epi32::<24>(_mm512_slli_epi32::<L>(x))
}

/// Sixteen Q4_K rows (group base `b`, `y.len()` blocks) × one Q8_K row: `out[r]` as
/// `q4_k::vec_dot_q4_k_q8_k_scalar` gives it for row `r`.
///
/// # Safety
/// AVX-512 F/BW/VL + VNNI; `b` holds `y.len()` interleaved blocks; `mins` from `y`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
pub unsafe fn q4k(b: *const u8, y: &[BlockQ8K], mins: &[[i32; 4]], out: &mut [f32; 16]) {
    const BB: usize = G * q4_k::BLOCK_BYTES;
    let m4 = _mm512_set1_epi8(0xF);
    let lo8 = _mm512_set1_epi16(0xFF);
    let mut sumf = _mm512_setzero_ps();
    for (s, yb) in y.iter().enumerate() {
        let p = b.add(s * BB);
        let q = yb.qs.as_ptr();
        let h0 = ld(p, 0);
        let [sc_lo, sc_hi, mn_lo, mn_hi] = q4k_scales_mins(ld(p, 1), ld(p, 2), ld(p, 3));
        let sc = [
            ubyte::<0>(sc_lo),
            ubyte::<8>(sc_lo),
            ubyte::<16>(sc_lo),
            ubyte::<24>(sc_lo),
            ubyte::<0>(sc_hi),
            ubyte::<8>(sc_hi),
            ubyte::<16>(sc_hi),
            ubyte::<24>(sc_hi),
        ];
        let mut isum = _mm512_setzero_si512();
        for c in 0..4 {
            // Chunk c: bytes 32c..32c + 32, low nibbles sub-block 2c, high nibbles 2c + 1.
            let (mut a0, mut a1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
            for t in 0..8 {
                let v = ld(p, 4 + 8 * c + t);
                a0 = _mm512_dpbusd_epi32(a0, _mm512_and_si512(v, m4), ybc(q, 16 * c + t));
                a1 = _mm512_dpbusd_epi32(
                    a1,
                    _mm512_and_si512(_mm512_srli_epi16::<4>(v), m4),
                    ybc(q, 16 * c + 8 + t),
                );
            }
            isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(a0, sc[2 * c]));
            isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(a1, sc[2 * c + 1]));
        }
        // imin = Σ_j m_j · P_j: the mins' even bytes against (P0, P2) / (P4, P6), odd bytes
        // against (P1, P3) / (P5, P7).
        let mp = mins.get_unchecked(s);
        let mut imin = _mm512_madd_epi16(_mm512_and_si512(mn_lo, lo8), _mm512_set1_epi32(mp[0]));
        imin = _mm512_add_epi32(
            imin,
            _mm512_madd_epi16(_mm512_srli_epi16::<8>(mn_lo), _mm512_set1_epi32(mp[1])),
        );
        imin = _mm512_add_epi32(
            imin,
            _mm512_madd_epi16(_mm512_and_si512(mn_hi, lo8), _mm512_set1_epi32(mp[2])),
        );
        imin = _mm512_add_epi32(
            imin,
            _mm512_madd_epi16(_mm512_srli_epi16::<8>(mn_hi), _mm512_set1_epi32(mp[3])),
        );
        let yd = _mm512_set1_ps(yb.d);
        let d = _mm512_mul_ps(_mm512_cvtph_ps(_mm512_cvtepi32_epi16(h0)), yd);
        let dmin = _mm512_mul_ps(
            _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(h0))),
            yd,
        );
        sumf = _mm512_add_ps(sumf, _mm512_mul_ps(d, _mm512_cvtepi32_ps(isum)));
        sumf = _mm512_sub_ps(sumf, _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(imin)));
    }
    _mm512_storeu_ps(out.as_mut_ptr(), sumf);
}

/// Sixteen Q6_K rows (group base `b`, its `d` values at `dp`) × one Q8_K row: `out[r]` as
/// `q6_k::vec_dot_q6_k_q8_k_scalar` gives it for row `r`.
///
/// # Safety
/// AVX-512 F/BW/VL + VNNI; `b` and `dp` hold `y.len()` interleaved blocks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
pub unsafe fn q6k(b: *const u8, dp: *const u8, y: &[BlockQ8K], out: &mut [f32; 16]) {
    const BB: usize = G * Q6_W;
    let m4 = _mm512_set1_epi8(0xF);
    let m30 = _mm512_set1_epi8(0x30);
    let mut sumf = _mm512_setzero_ps();
    for (s, yb) in y.iter().enumerate() {
        let p = b.add(s * BB);
        let q = yb.qs.as_ptr();
        // Lines 0..4: the sixteen int8 scales; then `ql`, `ql + 32`, `qh` words per step.
        let scw = [ld(p, 0), ld(p, 1), ld(p, 2), ld(p, 3)];
        let mut isum = _mm512_setzero_si512();
        for h in 0..2 {
            // Sub-block 8h + u starts at -32 · its bsum: the quants' -32 offset.
            let mut acc = [_mm512_setzero_si512(); 8];
            for (u, a) in acc.iter_mut().enumerate() {
                *a = _mm512_set1_epi32(-32 * yb.bsums[8 * h + u] as i32);
            }
            for t in 0..8 {
                let line = 4 + 24 * h + 3 * t;
                let (a, c, hb) = (ld(p, line), ld(p, line + 1), ld(p, line + 2));
                let q1 = _mm512_ternarylogic_epi32::<0xF8>(
                    _mm512_and_si512(a, m4),
                    _mm512_slli_epi16::<4>(hb),
                    m30,
                );
                let q2 = _mm512_ternarylogic_epi32::<0xF8>(
                    _mm512_and_si512(c, m4),
                    _mm512_slli_epi16::<2>(hb),
                    m30,
                );
                let q3 = _mm512_ternarylogic_epi32::<0xF8>(
                    _mm512_and_si512(_mm512_srli_epi16::<4>(a), m4),
                    hb,
                    m30,
                );
                let q4 = _mm512_ternarylogic_epi32::<0xF8>(
                    _mm512_and_si512(_mm512_srli_epi16::<4>(c), m4),
                    _mm512_srli_epi16::<2>(hb),
                    m30,
                );
                // K = 128h + 4t (+ 32, 64, 96): sub-blocks 8h + t/4 (+ 2, 4, 6).
                let (u, i) = (t / 4, 32 * h + t);
                acc[u] = _mm512_dpbusd_epi32(acc[u], q1, ybc(q, i));
                acc[u + 2] = _mm512_dpbusd_epi32(acc[u + 2], q2, ybc(q, i + 8));
                acc[u + 4] = _mm512_dpbusd_epi32(acc[u + 4], q3, ybc(q, i + 16));
                acc[u + 6] = _mm512_dpbusd_epi32(acc[u + 6], q4, ybc(q, i + 24));
            }
            for (u, a) in acc.iter().enumerate() {
                isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(*a, sc6(&scw, 8 * h + u)));
            }
        }
        let dh = _mm256_loadu_si256(dp.add(s * 2 * G) as *const __m256i);
        let d = _mm512_mul_ps(_mm512_cvtph_ps(dh), _mm512_set1_ps(yb.d));
        sumf = _mm512_add_ps(sumf, _mm512_mul_ps(d, _mm512_cvtepi32_ps(isum)));
    }
    _mm512_storeu_ps(out.as_mut_ptr(), sumf);
}
