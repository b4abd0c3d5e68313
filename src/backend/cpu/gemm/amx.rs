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
use super::{with_scratch, Epi, Post, Slot};
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
    let per_tile = k.div_ceil(32) * A_STEP;
    let full = pre.map_or(0, |p| p.full());
    let rest = if pre.is_some() { n - full * NR } else { 0 };
    let tiles = m.div_ceil(16);
    let run = |extra: SPtr| {
        // Activations packed as [row tile][K step][16 rows × 32 elements], zero-padded past M
        // and K: each tile step one contiguous KiB (a stream for the prefetchers, no rows
        // split across cache lines).
        with_scratch(Slot::A, tiles * per_tile, false, |abuf| {
            let ap = SPtr(abuf);
            (0..tiles)
                .into_par_iter()
                .for_each(|t| pack_a(x, m, k, t, ap.get().add(t * per_tile)));
            let b = match pre {
                Some(p) => Weights::Panels(p, extra),
                None => Weights::Stored(w),
            };
            tiles_over(b, ap, m, n, k, epi, out);
        })
    };
    if rest > 0 {
        // The last partial panel of prepacked weights, packed like the others.
        with_scratch(Slot::B, units * B_ROW, false, |extra| {
            avx512::pack_b(Kind::Dp, w, full * NR, rest, 0, k, extra as *mut u32);
            run(SPtr(extra))
        })
    } else {
        // (The work units take this thread's B buffer for stored weights.)
        run(SPtr(std::ptr::null_mut()))
    }
}

/// Where the B tiles come from.
#[derive(Clone, Copy)]
enum Weights<'a> {
    /// The panels packed at load, and the partial panel packed for this call.
    Panels(&'a Panels, SPtr),
    /// The stored rows: each work unit packs its columns' panels (`[unit][NR]`, from its first
    /// column) into a per-thread buffer first.
    Stored(&'a View),
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
            (Weights::Stored(_), None) => unreachable!("stored weights are packed per unit"),
        }
    };
    let (rpairs, cpairs) = (tiles.div_ceil(2), col_tiles.div_ceil(2));
    // Row chunks of at least MIN_PAIRS row pairs (each column pair's weights serve them all),
    // and K in outer blocks so that a chunk's activations for one outer block stay in L2 while
    // every column pair of the unit passes over them; the sums of every (row pair, column
    // pair) then wait in a per-thread buffer between outer blocks. Column groups until every
    // thread has several units (an odd tile at the end of a pair is computed twice and stored
    // once).
    let per_chunk = (CHUNK_STEPS / steps).max(MIN_PAIRS).min(rpairs);
    let outer = (CHUNK_STEPS / per_chunk).div_ceil(KC_STEPS).max(1) * KC_STEPS;
    let outers = steps.div_ceil(outer);
    let chunks = rpairs.div_ceil(per_chunk);
    let groups = (UNITS_PER_THREAD * rayon::current_num_threads())
        .div_ceil(chunks)
        .clamp(1, cpairs);
    let mut per_group = cpairs.div_ceil(groups);
    if let Weights::Stored(_) = wts {
        // Bounds the per-thread buffer of packed weights (32 column pairs: 2048 · K bytes).
        per_group = per_group.min(32);
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
            Weights::Stored(_) => (c1 - c0).div_ceil(NR),
            Weights::Panels(..) => 0,
        };
        with_scratch(Slot::B, own * panel_bytes, false, |buf| {
            if let Weights::Stored(w) = wts {
                for j in 0..own {
                    let n0 = c0 + j * NR;
                    let dst = buf.add(j * panel_bytes) as *mut u32;
                    avx512::pack_b(Kind::Dp, w, n0, NR.min(c1 - n0), 0, k, dst);
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
