//! AMX bf16 GEMM for more than a few rows (prefill, the vision tower, batched decode):
//! `out[M, N] = x[M, K] · w[N, K]ᵀ` with `tdpbf16ps` on 16 × 16 tiles of f32 sums.
//!
//! Operands:
//! - B (weights): the bf16 panels packed at load for the AVX-512 kernel ([`Panels`]). A panel's
//!   `[unit][48]` bf16 pairs are three 16-column B tiles in the layout `tdpbf16ps` takes (one
//!   64-byte row per two K elements), rows 192 bytes apart, 16 units (32 K elements) per tile;
//!   the panels are zero-padded to a multiple of 16 units. The last partial panel is packed per
//!   call, zero-padded likewise. Weights without panels (past the memory budget for them, or
//!   `REEL_CPU_REPACK=0`) are packed into the same panels per work unit, its columns only.
//! - Quantized weights ([`gemm_quant`]): each work unit dequantizes its columns as the scalar
//!   reference does, rounds them to bf16 and packs them into the same panels (few columns per
//!   unit, so that they stay in L2; one row chunk of up to 1,024 rows, so that each weight is
//!   dequantized once per call).
//! - A (activations): packed per call into 1 KiB tiles of 16 rows × 32 K elements, zero-padded
//!   past M and K (a copy of M · K · 2 bytes, small next to the work).
//!
//! The kernel keeps a 32 × 32 block of sums in four tiles (two row tiles × two column tiles)
//! and per 32 K elements loads two A and two B tiles for four `tdpbf16ps`. Threads take (row
//! chunk, column group) units sized so that a chunk's activations (for long rows, those of one
//! outer K block) stay in L2; within a unit, K runs in blocks of [`KC_STEPS`] · 32 elements, a
//! column pair's block of weights serving every row pair of the chunk before the next, the sums
//! parked in a per-thread buffer between blocks. The next block's weights and a block's output lines are prefetched while the tiles
//! run; a finished block goes through the epilogue while the next one computes.
//!
//! Sums: each `tdpbf16ps` adds its 32 products per output into the f32 sum (denormals flushed,
//! round to nearest even) in an order of its own, so the results are not the bits of the
//! `vdpbf16ps` kernel; they are held to the same error bound in the tests. A row's result does
//! not depend on the other rows of the call.

#![cfg(target_arch = "x86_64")]

use std::arch::asm;

use rayon::prelude::*;

use super::super::{SPtr, View};
use super::avx512::{self, Kind, Panels, NR};
use super::qavx512::f16_to_f32;
use super::{with_scratch, Epi, Post, Slot};
use crate::quant;
use crate::tensor::DType;
use std::arch::x86_64::*;

/// Tile palette 1 with all eight tiles at 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

static CONFIG: TileConfig = {
    let mut c = [0u8; 64];
    c[0] = 1;
    let mut i = 0;
    while i < 8 {
        c[16 + 2 * i] = 64;
        c[48 + i] = 16;
        i += 1;
    }
    TileConfig(c)
};

/// Loads [`CONFIG`] on this thread; [`release`] ends the tile use (so a context switch saves
/// no tile data).
///
/// # Safety
/// The CPU has AMX and the process was granted the tile state (`isa::features().amx_bf16`).
unsafe fn configure() {
    asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly));
}

unsafe fn release() {
    asm!("tilerelease", options(nostack, nomem));
}

/// `iters` rounds of four independent `tdpbf16ps` (16 × 16 × 32 multiply-adds each): the
/// compute-peak probe.
///
/// # Safety
/// As [`configure`].
pub unsafe fn peak_loop(iters: u64) {
    configure();
    asm!(
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        "tilezero tmm4",
        "tilezero tmm5",
        "tilezero tmm6",
        "tilezero tmm7",
        options(nostack, nomem)
    );
    for _ in 0..iters {
        asm!(
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            options(nostack, nomem)
        );
    }
    release();
}

/// Bytes of one packed A tile step (16 rows × 32 bf16).
const A_STEP: usize = 1024;
/// Bytes between a B tile's rows (one panel unit: [`NR`] lanes of 4 bytes).
const B_ROW: usize = NR * 4;
/// Bytes from one K step (16 units) of a B tile to the next.
const B_STEP: usize = 16 * B_ROW;
/// K steps (32 elements each) per K block: a B column pair's block is 32 KiB, under L1.
const KC_STEPS: usize = 16;
/// K steps of one row pair (2 KiB each) that a row chunk's activations may span: 1 MiB, which
/// stays in L2 across the chunk's column pairs.
const CHUNK_STEPS: usize = 512;
/// Row pairs per chunk at least (each column pair's weights are fetched once per chunk).
const MIN_PAIRS: usize = 8;
/// Row pairs per chunk over quantized weights.
const QUANT_PAIRS: usize = 32;
/// Column pairs per work unit over quantized weights: their dequantized panels (three at
/// K = 3584, 1 MiB) stay in L2 beside the activations' outer K block.
const QUANT_GROUP: usize = 4;
/// Work units per thread (load balance against re-reading a chunk's activations per unit).
const UNITS_PER_THREAD: usize = 8;

/// Sums of a 32 × 32 block over K steps `s0..s1`: A tiles `a[i] + 1024 s` (packed, rows 64
/// bytes apart), B tiles `b[j] + B_STEP s`; tiles 0..4 start from `c` (32 rows of 32 f32) or from
/// zero where `first`, and go back to `c`.
///
/// # Safety
/// Tiles configured; every tile address valid for 16 rows of 64 bytes at its stride.
#[inline(always)]
unsafe fn block(
    a: [*const u8; 2],
    b: [*const u8; 2],
    s0: usize,
    s1: usize,
    c: *mut f32,
    first: bool,
) {
    const CS: usize = 32 * 4;
    let (c1, c2, c3) = (c.add(16), c.add(16 * 32), c.add(16 * 32 + 16));
    if first {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        );
    } else {
        asm!(
            "tileloadd tmm0, [{c0} + {s}*1]",
            "tileloadd tmm1, [{c1} + {s}*1]",
            "tileloadd tmm2, [{c2} + {s}*1]",
            "tileloadd tmm3, [{c3} + {s}*1]",
            c0 = in(reg) c, c1 = in(reg) c1, c2 = in(reg) c2, c3 = in(reg) c3, s = in(reg) CS,
            options(nostack, readonly)
        );
    }
    for s in s0..s1 {
        let (a0, a1) = (a[0].add(A_STEP * s), a[1].add(A_STEP * s));
        asm!(
            "tileloadd tmm4, [{a0} + {sa}*1]",
            "tileloadd tmm6, [{b0} + {sb}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {sb}*1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1} + {sa}*1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a0 = in(reg) a0, a1 = in(reg) a1, sa = in(reg) 64usize,
            b0 = in(reg) b[0].add(s * B_STEP), b1 = in(reg) b[1].add(s * B_STEP), sb = in(reg) B_ROW,
            options(nostack, readonly)
        );
    }
    asm!(
        "tilestored [{c0} + {s}*1], tmm0",
        "tilestored [{c1} + {s}*1], tmm1",
        "tilestored [{c2} + {s}*1], tmm2",
        "tilestored [{c3} + {s}*1], tmm3",
        c0 = in(reg) c, c1 = in(reg) c1, c2 = in(reg) c2, c3 = in(reg) c3, s = in(reg) CS,
        options(nostack)
    );
}

/// The AMX GEMM: `x` bf16 `[m, k]`, `w` bf16 `[n, k]` with its panels `pre`, `out` `[m, n]`.
///
/// # Safety
/// The CPU has AMX-BF16 and AVX-512 BF16 and the tile state was granted; the views are checked.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm(
    x: &View,
    w: &View,
    pre: Option<&Panels>,
    m: usize,
    n: usize,
    k: usize,
    epi: Epi,
    out: &View,
) {
    let units = k.div_ceil(32) * 16;
    debug_assert!(pre.is_none_or(|p| p.units_padded() == units));
    let full = pre.map_or(0, |p| p.full());
    let rest = if pre.is_some() { n - full * NR } else { 0 };
    match pre {
        Some(p) if rest > 0 => {
            // The last partial panel of prepacked weights, packed like the others.
            with_scratch(Slot::B, units * B_ROW, false, |extra| {
                avx512::pack_b(Kind::Dp, w, full * NR, rest, 0, k, extra as *mut u32);
                let wts = Weights::Panels(p, SPtr(extra));
                with_packed_a(x, m, k, |ap| tiles_over(wts, ap, m, n, k, epi, out))
            })
        }
        Some(p) => {
            let wts = Weights::Panels(p, SPtr(std::ptr::null_mut()));
            with_packed_a(x, m, k, |ap| tiles_over(wts, ap, m, n, k, epi, out))
        }
        // (The work units take this thread's B buffer for stored weights.)
        None => with_packed_a(x, m, k, |ap| {
            tiles_over(Weights::Stored(w), ap, m, n, k, epi, out)
        }),
    }
}

/// The AMX GEMM over quantized weights (`w`: `n` rows of `k` elements in `dtype` blocks): each
/// work unit dequantizes its columns and packs them, rounded to bf16, into panels of its own.
///
/// # Safety
/// As [`gemm`]; `w` holds the `n` rows.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_quant(
    x: &View,
    w: &[u8],
    dtype: DType,
    m: usize,
    n: usize,
    k: usize,
    epi: Epi,
    out: &View,
) {
    debug_assert_eq!(w.len(), n * dtype.bytes_for(k));
    with_packed_a(x, m, k, |ap| {
        tiles_over(Weights::Quant(w, dtype), ap, m, n, k, epi, out)
    })
}

/// Runs `f` over `x` (`[m, k]` bf16) packed as [row tile][K step][16 rows × 32 elements],
/// zero-padded past M and K: each tile step one contiguous KiB (a stream for the prefetchers,
/// no rows split across cache lines).
unsafe fn with_packed_a(x: &View, m: usize, k: usize, f: impl FnOnce(SPtr)) {
    let per_tile = k.div_ceil(32) * A_STEP;
    let tiles = m.div_ceil(16);
    with_scratch(Slot::A, tiles * per_tile, false, |abuf| {
        let ap = SPtr(abuf);
        (0..tiles)
            .into_par_iter()
            .for_each(|t| pack_a(x, m, k, t, ap.get().add(t * per_tile)));
        f(ap)
    })
}

/// Where the B tiles come from.
#[derive(Clone, Copy)]
enum Weights<'a> {
    /// The panels packed at load, and the partial panel packed for this call.
    Panels(&'a Panels, SPtr),
    /// The stored rows: each work unit packs its columns' panels (`[unit][NR]`, from its first
    /// column) into a per-thread buffer first.
    Stored(&'a View),
    /// Quantized rows, dequantized and packed per work unit like stored rows.
    Quant(&'a [u8], DType),
}

/// K elements per dequantized chunk in [`pack_quant`] (a Q4_K / Q6_K super-block).
const QCHUNK: usize = 256;

/// Packs quantized rows `n0..n0 + cnt` (cnt ≤ [`NR`]; `dtype` blocks, `k` elements each) into
/// one panel at `bp` as [`avx512::pack_b`] packs bf16 rows: chunk by chunk of [`QCHUNK`]
/// elements, each row's chunk dequantized ([`dequant_bf16`]) into a small bf16 block first.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,f16c")]
unsafe fn pack_quant(w: &[u8], dtype: DType, n0: usize, cnt: usize, k: usize, bp: *mut u32) {
    let rb = dtype.bytes_for(k);
    let mut t = [[0u16; QCHUNK]; NR];
    for k0 in (0..k).step_by(QCHUNK) {
        let len = QCHUNK.min(k - k0);
        let (b0, b1) = (dtype.bytes_for(k0), dtype.bytes_for(k0 + len));
        for (c, tc) in t.iter_mut().enumerate().take(cnt) {
            let row = &w[(n0 + c) * rb..(n0 + c + 1) * rb];
            // This row's next chunk on its way in (48 strided streams are more than the
            // hardware prefetchers follow); past the row's end it is the next row's start.
            let next = row.as_ptr().wrapping_add(b1 + (b1 - b0));
            for l in (0..b1 - b0).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(l) as *const i8);
            }
            dequant_bf16(dtype, &row[b0..b1], &mut tc[..len]);
        }
        let tv = View {
            p: SPtr(t.as_mut_ptr() as *mut u8),
            dt: DType::BF16,
            rows: NR,
            row_len: QCHUNK,
            stride: QCHUNK,
        };
        avx512::pack_b(Kind::Dp, &tv, 0, cnt, 0, len, bp.add(k0 / 2 * NR));
    }
}

/// Whole `dtype` blocks `src` dequantized as the scalar reference does (`quant::dequantize_row`:
/// the same f32 operations in the same order) and rounded to bf16 bits in `dst` (to nearest even;
/// `vcvtneps2bf16` flushes denormals, as the tiles do on input anyway).
///
/// # Safety
/// AVX-512 F/BW/VL and BF16; `dst.len()` elements are `src`'s whole blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,f16c")]
pub(crate) unsafe fn dequant_bf16(dtype: DType, src: &[u8], dst: &mut [u16]) {
    debug_assert_eq!(src.len(), dtype.bytes_for(dst.len()));
    // 16 f32 lanes to bf16 at `dst + i`.
    #[inline(always)]
    unsafe fn put(dst: &mut [u16], i: usize, y: __m512) {
        let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(y));
        _mm256_storeu_si256(dst.as_mut_ptr().add(i) as *mut __m256i, h);
    }
    let p = src.as_ptr();
    match dtype {
        DType::Q4K => {
            use quant::q4_k::{block_scales, BLOCK_BYTES, QK_K};
            for (bi, b) in src.chunks_exact(BLOCK_BYTES).enumerate() {
                let s = block_scales(b);
                let qs = b.as_ptr().add(16);
                let o = bi * QK_K;
                for c in 0..4 {
                    let ((d1, m1), (d2, m2)) = (s[2 * c], s[2 * c + 1]);
                    for h in 0..2 {
                        let q = _mm512_cvtepu8_epi32(_mm_loadu_si128(
                            qs.add(32 * c + 16 * h) as *const __m128i
                        ));
                        let lo = _mm512_cvtepi32_ps(_mm512_and_si512(q, _mm512_set1_epi32(15)));
                        let hi = _mm512_cvtepi32_ps(_mm512_srli_epi32::<4>(q));
                        let ylo = _mm512_sub_ps(
                            _mm512_mul_ps(_mm512_set1_ps(d1), lo),
                            _mm512_set1_ps(m1),
                        );
                        let yhi = _mm512_sub_ps(
                            _mm512_mul_ps(_mm512_set1_ps(d2), hi),
                            _mm512_set1_ps(m2),
                        );
                        put(dst, o + 64 * c + 16 * h, ylo);
                        put(dst, o + 64 * c + 32 + 16 * h, yhi);
                    }
                }
            }
        }
        DType::Q6K => {
            use quant::q6_k::{BLOCK_BYTES, QK_K};
            for (bi, b) in src.chunks_exact(BLOCK_BYTES).enumerate() {
                let d = f16_to_f32(b[208], b[209]);
                let o = bi * QK_K;
                let (ql, qh) = (b.as_ptr(), b.as_ptr().add(128));
                let m4 = _mm512_set1_epi32(15);
                // (Plain code, no closures: a closure's intrinsics may not inherit this
                // function's target features.)
                for h in 0..2 {
                    for l0 in [0, 16] {
                        let a = _mm512_cvtepu8_epi32(_mm_loadu_si128(
                            ql.add(64 * h + l0) as *const __m128i
                        ));
                        let bb = _mm512_cvtepu8_epi32(_mm_loadu_si128(
                            ql.add(64 * h + 32 + l0) as *const __m128i
                        ));
                        let hb = _mm512_cvtepu8_epi32(_mm_loadu_si128(
                            qh.add(32 * h + l0) as *const __m128i
                        ));
                        // Bits 2t, 2t + 1 of qh moved to bits 4, 5.
                        let m30 = _mm512_set1_epi32(0x30);
                        let q = [
                            _mm512_ternarylogic_epi32::<0xF8>(
                                _mm512_and_si512(a, m4),
                                _mm512_slli_epi32::<4>(hb),
                                m30,
                            ),
                            _mm512_ternarylogic_epi32::<0xF8>(
                                _mm512_and_si512(bb, m4),
                                _mm512_slli_epi32::<2>(hb),
                                m30,
                            ),
                            _mm512_ternarylogic_epi32::<0xF8>(_mm512_srli_epi32::<4>(a), hb, m30),
                            _mm512_ternarylogic_epi32::<0xF8>(
                                _mm512_srli_epi32::<4>(bb),
                                _mm512_srli_epi32::<2>(hb),
                                m30,
                            ),
                        ];
                        for (t, qt) in q.into_iter().enumerate() {
                            let i = 128 * h + 32 * t + l0;
                            let sc = d * b[192 + i / 16] as i8 as f32;
                            let qf =
                                _mm512_cvtepi32_ps(_mm512_sub_epi32(qt, _mm512_set1_epi32(32)));
                            put(dst, o + i, _mm512_mul_ps(_mm512_set1_ps(sc), qf));
                        }
                    }
                }
            }
        }
        DType::Q8_0 => {
            use quant::q8_0::{BLOCK_BYTES, QK8_0};
            for bi in 0..src.len() / BLOCK_BYTES {
                let b = p.add(bi * BLOCK_BYTES);
                let d = _mm512_set1_ps(f16_to_f32(*b, *b.add(1)));
                for h in 0..2 {
                    let q =
                        _mm512_cvtepi8_epi32(_mm_loadu_si128(b.add(2 + 16 * h) as *const __m128i));
                    put(
                        dst,
                        bi * QK8_0 + 16 * h,
                        _mm512_mul_ps(_mm512_cvtepi32_ps(q), d),
                    );
                }
            }
        }
        _ => unreachable!("quantized weights only"),
    }
}

/// Packs row tile `t` of `x` (`[m, k]` bf16) into `dst`: K steps of 16 rows × 32 elements.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pack_a(x: &View, m: usize, k: usize, t: usize, dst: *mut u8) {
    for i in 0..16 {
        let r = 16 * t + i;
        let (src, len) = if r < m {
            (x.at(r, 0) as *const i16, k)
        } else {
            (std::ptr::null(), 0)
        };
        for st in 0..k.div_ceil(32) {
            let left = len.saturating_sub(32 * st);
            let mask = if left >= 32 {
                u32::MAX
            } else {
                (1u32 << left) - 1
            };
            let v = _mm512_maskz_loadu_epi16(mask, src.wrapping_add(32 * st));
            _mm512_store_si512(dst.add(st * A_STEP + 64 * i) as *mut _, v);
        }
    }
}

/// The tile blocks over packed activations `ap`, weights from `wts`.
#[allow(clippy::too_many_arguments)]
unsafe fn tiles_over(wts: Weights, ap: SPtr, m: usize, n: usize, k: usize, epi: Epi, out: &View) {
    let (steps, tiles) = (k.div_ceil(32), m.div_ceil(16));
    let per_tile = steps * A_STEP;
    let col_tiles = n.div_ceil(16);
    let panel_bytes = steps * 16 * B_ROW;
    // 16-column tile `g` (global): a third of a panel, of those packed at load and the partial
    // one, or of the unit's own (`local`: its buffer and its first column tile).
    let b_tile = |g: usize, local: Option<(SPtr, usize)>| -> *const u8 {
        let g = g.min(col_tiles - 1);
        match (wts, local) {
            (_, Some((buf, g0))) => {
                let l = g - g0;
                (buf.get() as *const u8).add((l / 3) * panel_bytes + 64 * (l % 3))
            }
            (Weights::Panels(pre, extra), None) => {
                let fp = pre.full();
                if g < 3 * fp {
                    (pre.panel(g / 3) as *const u8).add(64 * (g % 3))
                } else {
                    (extra.get() as *const u8).add(64 * (g - 3 * fp))
                }
            }
            (Weights::Stored(_) | Weights::Quant(..), None) => {
                unreachable!("stored weights are packed per unit")
            }
        }
    };
    let (rpairs, cpairs) = (tiles.div_ceil(2), col_tiles.div_ceil(2));
    // Row chunks of at least MIN_PAIRS row pairs (each column pair's weights serve them all),
    // and K in outer blocks so that a chunk's activations for one outer block stay in L2 while
    // every column pair of the unit passes over them; the sums of every (row pair, column
    // pair) then wait in a per-thread buffer between outer blocks. Column groups until every
    // thread has several units (an odd tile at the end of a pair is computed twice and stored
    // once).
    // Quantized weights: their dequantization costs more than the re-reads of activations
    // from L3, so one chunk takes many rows (each unit dequantizes its columns once per chunk).
    let per_chunk = match wts {
        Weights::Quant(..) => QUANT_PAIRS,
        _ => (CHUNK_STEPS / steps).max(MIN_PAIRS),
    }
    .min(rpairs);
    let outer = (CHUNK_STEPS / per_chunk).div_ceil(KC_STEPS).max(1) * KC_STEPS;
    let outers = steps.div_ceil(outer);
    let chunks = rpairs.div_ceil(per_chunk);
    let groups = (UNITS_PER_THREAD * rayon::current_num_threads())
        .div_ceil(chunks)
        .clamp(1, cpairs);
    let mut per_group = cpairs.div_ceil(groups);
    match wts {
        // Bounds the per-thread buffer of packed weights (32 column pairs: 2048 · K bytes).
        Weights::Stored(_) => per_group = per_group.min(32),
        Weights::Quant(..) => per_group = per_group.min(QUANT_GROUP),
        Weights::Panels(..) => {}
    }
    let groups = cpairs.div_ceil(per_group);
    let out = *out;
    (0..chunks * groups).into_par_iter().for_each(|unit| {
        let (ch, gr) = (unit / groups, unit % groups);
        let (p0, p1) = (ch * per_chunk, ((ch + 1) * per_chunk).min(rpairs));
        let (q0, q1) = (gr * per_group, ((gr + 1) * per_group).min(cpairs));
        let rows = |p: usize| (m - 32 * p).min(32);
        // One 32 × 32 block of sums per row pair (per row and column pair across outer blocks).
        let blocks = (p1 - p0) * if outers > 1 { q1 - q0 } else { 1 };
        // Stored weights: the unit's columns packed into panels of its own first.
        let (c0, c1) = (32 * q0, (32 * q1).min(n));
        let own = match wts {
            Weights::Stored(_) | Weights::Quant(..) => (c1 - c0).div_ceil(NR),
            Weights::Panels(..) => 0,
        };
        with_scratch(Slot::B, own * panel_bytes, false, |buf| {
            for j in 0..own {
                let n0 = c0 + j * NR;
                let dst = buf.add(j * panel_bytes) as *mut u32;
                match wts {
                    Weights::Stored(w) => {
                        avx512::pack_b(Kind::Dp, w, n0, NR.min(c1 - n0), 0, k, dst)
                    }
                    Weights::Quant(w, dt) => pack_quant(w, dt, n0, NR.min(c1 - n0), k, dst),
                    Weights::Panels(..) => {}
                }
            }
            let local = (own > 0).then_some((SPtr(buf), 2 * q0));
            with_scratch(Slot::C, blocks * 32 * 32 * 4, false, |sums| {
                let sums = sums as *mut f32;
                let sum = |p: usize, q: usize| {
                    let qi = if outers > 1 { q - q0 } else { 0 };
                    sums.add((qi * (p1 - p0) + p - p0) * 32 * 32)
                };
                configure();
                for o0 in (0..steps).step_by(outer) {
                    let o1 = (o0 + outer).min(steps);
                    for q in q0..q1 {
                        let b = [b_tile(2 * q, local), b_tile(2 * q + 1, local)];
                        let (j0, cols) = (32 * q, (n - 32 * q).min(32));
                        for s0 in (o0..o1).step_by(KC_STEPS) {
                            let s1 = (s0 + KC_STEPS).min(o1);
                            let last = s1 == steps;
                            // The next block's weights (this pair's next K block, or the next
                            // pair's first) on their way into L2, a share per row pair, so that
                            // its first pass does not wait on L3.
                            let next = if s1 < o1 {
                                Some((b, s1, (s1 + KC_STEPS).min(o1)))
                            } else if q + 1 < q1 {
                                let nb = [b_tile(2 * q + 2, local), b_tile(2 * q + 3, local)];
                                Some((nb, o0, (o0 + KC_STEPS).min(o1)))
                            } else {
                                None
                            };
                            let lines = next.map_or(0, |(_, a, b)| 2 * 16 * (b - a));
                            let per_p = lines.div_ceil(p1 - p0);
                            for p in p0..p1 {
                                if let Some((nb, ns0, _)) = next {
                                    for l in (p - p0) * per_p..((p - p0 + 1) * per_p).min(lines) {
                                        let (tile, step, row) =
                                            (l & 1, ns0 + (l >> 5), (l >> 1) & 15);
                                        _mm_prefetch::<_MM_HINT_T1>(
                                            nb[tile].add(step * B_STEP + row * B_ROW) as *const i8,
                                        );
                                    }
                                }
                                if last {
                                    // The rows' output (and residual) lines on their way in while
                                    // the tiles run.
                                    for i in 0..rows(p) {
                                        let r = 32 * p + i;
                                        touch::<_MM_HINT_ET0>(
                                            out.at(r, j0),
                                            cols * out.dt.bytes_for(1),
                                        );
                                        if let Post::Add(res) = epi.post {
                                            touch::<_MM_HINT_T0>(
                                                res.at(r, j0),
                                                cols * res.dt.bytes_for(1),
                                            );
                                        }
                                    }
                                }
                                let a = [
                                    ap.get().add(2 * p * per_tile) as *const u8,
                                    ap.get().add((2 * p + 1).min(tiles - 1) * per_tile)
                                        as *const u8,
                                ];
                                block(a, b, s0, s1, sum(p, q), s0 == 0);
                                // The previous pair's finished block through the epilogue (its
                                // sums settled while this block's tiles ran).
                                if last && p > p0 {
                                    let r0 = 32 * (p - 1);
                                    store_block(
                                        sum(p - 1, q),
                                        rows(p - 1),
                                        cols,
                                        epi,
                                        &out,
                                        r0,
                                        j0,
                                    );
                                }
                            }
                        }
                        if o1 == steps {
                            let r0 = 32 * (p1 - 1);
                            store_block(sum(p1 - 1, q), rows(p1 - 1), cols, epi, &out, r0, j0);
                        }
                    }
                }
                release();
            })
        })
    });
}

/// Rows `r0..r0 + rows`, columns `j0..j0 + cols` of `out` from a 32 × 32 block of sums.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn store_block(
    c: *mut f32,
    rows: usize,
    cols: usize,
    epi: Epi,
    out: &View,
    r0: usize,
    j0: usize,
) {
    for i in 0..rows {
        let row = std::slice::from_raw_parts_mut(c.add(32 * i), cols);
        avx512::store_row(row, epi, out, r0 + i, j0);
    }
}

/// Prefetches the lines of `len` bytes at `p` with hint `H`.
#[inline(always)]
unsafe fn touch<const H: i32>(p: *const u8, len: usize) {
    let end = p.add(len);
    let mut l = (p as usize & !63) as *const u8;
    while l < end {
        _mm_prefetch::<H>(l as *const i8);
        l = l.add(64);
    }
}
