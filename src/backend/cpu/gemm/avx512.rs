//! AVX-512 float GEMM: `out[M, N] = x[M, K] · w[N, K]ᵀ`, f32 accumulation.
//!
//! Two element kinds share one structure:
//! - [`Dp`]: bf16 activations × bf16 weights with `vdpbf16ps` (AVX512_BF16). Each 32-bit lane
//!   holds a pair of consecutive K elements; products of two bf16 values are exact in f32, and
//!   the instruction adds the two products into the f32 accumulator (rounding each add to
//!   nearest even, with denormal inputs and outputs flushed to zero). Only used where the
//!   activations already are bf16, so nothing is rounded that the reference does not round.
//! - [`F32`]: f32 activations (bf16 ones widened first) × bf16/f16/f32 weights widened to f32
//!   while packing, with FMA.
//!
//! Large M (prefill, the vision tower): weights are packed one panel of [`NR`] = 48 columns × a
//! K block at a time, laid out `[k][48]` so the microkernel reads it contiguously (per call into
//! a thread-local buffer, or once at load: [`Panels`]); activations are packed once per call into
//! `[k][MR]` tiles. The `MR × 48` microkernel (MR = 8) keeps 24 zmm accumulators and issues 24
//! multiply-adds per three vector loads and eight broadcasts: one multiply-add per cycle, the
//! core's peak, on the 2-core Zen 4 it was tuned on (MR × NR of 12 × 32, 8 × 48 and 6 × 64 ran
//! alike). A tile's last rows and a panel's last columns run in a microkernel of their size.
//! Threads take (panel, row chunk) units; with the panels packed at load the rows are split
//! until the units share evenly among the threads; packing per call, only until every thread
//! has work, so the weights are read once for the whole batch.
//!
//! Small M (decode, short batches): where the bf16 panels exist and K is one block, the same
//! microkernel for the few rows (one forward stream per panel; each row's result the bits it has
//! in any batch). Otherwise no packing: each task dots tiles of up to 4 activation rows × 6 weight rows (1 × 8
//! for decode) over its [`RN`]-row group of the weights, straight from their stored layout
//! (lanes over K, masked tails, a horizontal sum at the end). The first pass reads the six rows
//! from memory; the passes for further activation rows find them in L2.

#![cfg(target_arch = "x86_64")]

use super::super::elementwise::avx512::{bf16_bits, ld_bf16};
use super::super::{SPtr, View};
use super::{with_scratch, Epi, Post, Slot};

/// [`super::store_row`] for f32 and bf16 outputs (and a residual in either type): bias added in
/// f32, bf16 rounded to nearest even as `simd::f32_to_bf16_bits` does (NaN kept quiet), sixteen
/// lanes at a time. GELU and other types take the generic post step.
///
/// # Safety
/// AVX-512 F/BW must be available; as [`super::store_row`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn store_row(row: &mut [f32], epi: Epi, out: &View, r: usize, j0: usize) {
    let dt = out.dt;
    if !matches!(dt, DType::F32 | DType::BF16) {
        return super::store_row(row, epi, out, r, j0);
    }
    let res = match epi.post {
        Post::None => None,
        Post::Add(v) if matches!(v.dt, DType::F32 | DType::BF16) => Some(v),
        Post::Gelu => {
            // The generic step, inlined here and so compiled for AVX-512; then a plain store.
            if let Some(b) = epi.bias {
                for (o, &bj) in row.iter_mut().zip(&b[j0..]) {
                    *o += bj;
                }
            }
            super::post(row, Post::Gelu, dt, r, j0);
            return store_row(row, Epi::default(), out, r, j0);
        }
        _ => return super::store_row(row, epi, out, r, j0),
    };
    let dst = out.at(r, j0);
    let rp = res.map(|v| (v.at(r, j0), v.dt));
    let n = row.len();
    let mut i = 0;
    while i < n {
        let k = mask16(n - i);
        let mut v = _mm512_maskz_loadu_ps(k, row.as_ptr().add(i));
        if let Some(b) = epi.bias {
            v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, b.as_ptr().add(j0 + i)));
        }
        if let Some((p, rdt)) = rp {
            // The unfused matmul's stored value, then the add.
            if dt == DType::BF16 {
                v = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(bf16_bits(v)));
            }
            let x = if rdt == DType::F32 {
                _mm512_maskz_loadu_ps(k, (p as *const f32).add(i))
            } else {
                ld_bf16((p as *const i16).add(i) as *const u8, k)
            };
            v = _mm512_add_ps(v, x);
        }
        if dt == DType::F32 {
            _mm512_mask_storeu_ps((dst as *mut f32).add(i), k, v);
        } else {
            let h = _mm512_cvtepi32_epi16(bf16_bits(v));
            _mm256_mask_storeu_epi16((dst as *mut i16).add(i), k, h);
        }
        i += 16;
    }
}

use crate::tensor::DType;
use rayon::prelude::*;
use std::arch::x86_64::*;

/// Weight columns per packed panel (NV zmm of 16 lanes).
pub const NR: usize = 16 * NV;
/// zmm vectors per panel row.
const NV: usize = 3;
/// Activation rows per microkernel call.
pub const MR: usize = 8;
/// Largest K block, in 4-byte units (bf16 pairs or f32), whose packed panel (KCU · NR · 4 bytes)
/// stays in L2.
const KCU: usize = 2048;

/// Whether a bf16 GEMM of `k` columns runs as one K block: few rows then read the panels (one
/// stream per thread, which keeps up with memory for rows of this length), longer rows the
/// stored layout (eight long streams per thread, faster for the MLP down projection).
pub fn one_block(k: usize) -> bool {
    k.div_ceil(2) <= KCU
}
/// Weight rows per small-M task (a multiple of every tile width below).
const RN: usize = 24;

/// Which products the kernel computes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// bf16 × bf16 pairs, `vdpbf16ps`.
    Dp,
    /// f32 × f32, FMA.
    F32,
}

impl Kind {
    /// K elements per 4-byte unit.
    fn per_unit(self) -> usize {
        match self {
            Kind::Dp => 2,
            Kind::F32 => 1,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Packing

/// 16×16 transpose of 32-bit elements (also the quantized panels' in `qavx512`).
#[inline(always)]
pub(crate) unsafe fn transpose16(r: &mut [__m512i; 16]) {
    let mut a = [_mm512_setzero_si512(); 16];
    for i in 0..8 {
        a[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        a[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    let mut b = [_mm512_setzero_si512(); 16];
    for i in 0..4 {
        b[4 * i] = _mm512_unpacklo_epi64(a[4 * i], a[4 * i + 2]);
        b[4 * i + 1] = _mm512_unpackhi_epi64(a[4 * i], a[4 * i + 2]);
        b[4 * i + 2] = _mm512_unpacklo_epi64(a[4 * i + 1], a[4 * i + 3]);
        b[4 * i + 3] = _mm512_unpackhi_epi64(a[4 * i + 1], a[4 * i + 3]);
    }
    // b[4i + j], 128-bit lane L, holds rows 4i..4i+4 of column 4L + j.
    for j in 0..4 {
        let d0 = _mm512_shuffle_i32x4::<0x88>(b[j], b[4 + j]);
        let d1 = _mm512_shuffle_i32x4::<0xDD>(b[j], b[4 + j]);
        let e0 = _mm512_shuffle_i32x4::<0x88>(b[8 + j], b[12 + j]);
        let e1 = _mm512_shuffle_i32x4::<0xDD>(b[8 + j], b[12 + j]);
        r[j] = _mm512_shuffle_i32x4::<0x88>(d0, e0);
        r[8 + j] = _mm512_shuffle_i32x4::<0xDD>(d0, e0);
        r[4 + j] = _mm512_shuffle_i32x4::<0x88>(d1, e1);
        r[12 + j] = _mm512_shuffle_i32x4::<0xDD>(d1, e1);
    }
}

/// Mask of the first `n` (≤ 32) lanes.
#[inline(always)]
fn mask32(n: usize) -> u32 {
    if n >= 32 {
        u32::MAX
    } else {
        (1u32 << n) - 1
    }
}

#[inline(always)]
fn mask16(n: usize) -> u16 {
    if n >= 16 {
        u16::MAX
    } else {
        (1u16 << n) - 1
    }
}

/// Sixteen K units of one weight row from element `e` (of `left` remaining elements) as 32-bit
/// lanes: bf16 pairs for [`Kind::Dp`], f32 values for [`Kind::F32`]. Lanes past the row are 0.
#[inline(always)]
unsafe fn load_w16(kind: Kind, dt: DType, p: *const u8, left: usize) -> __m512i {
    match (kind, dt) {
        (Kind::Dp, _) => _mm512_maskz_loadu_epi16(mask32(left), p as *const i16),
        (Kind::F32, DType::BF16) => {
            let h = _mm256_maskz_loadu_epi16(mask16(left), p as *const i16);
            _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h))
        }
        (Kind::F32, DType::F16) => {
            let h = _mm256_maskz_loadu_epi16(mask16(left), p as *const i16);
            _mm512_castps_si512(_mm512_cvtph_ps(h))
        }
        (Kind::F32, _) => _mm512_maskz_loadu_epi32(mask16(left), p as *const i32),
    }
}

/// Packs weight rows `n0..n0 + cnt` (cnt ≤ NR; missing columns are zero), K elements
/// `k0..k1`, into `bp` as `[unit][NR]` 32-bit lanes, zero units up to a multiple of 16 (`bp`
/// has room for them).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
pub(crate) unsafe fn pack_b(
    kind: Kind,
    w: &View,
    n0: usize,
    cnt: usize,
    k0: usize,
    k1: usize,
    bp: *mut u32,
) {
    let pu = kind.per_unit();
    let es = w.dt.bytes_for(1);
    let units = (k1 - k0).div_ceil(pu);
    let col: [*const u8; NR] = std::array::from_fn(|c| w.at(n0 + c.min(cnt - 1), k0) as *const u8);
    // Sixteen rows at a time (sixteen sequential streams for the prefetchers), each read
    // a few lines ahead.
    for half in 0..NV {
        for g in 0..units.div_ceil(16) {
            let e = 16 * pu * g;
            let left = (k1 - k0 - e).min(16 * pu);
            let u0 = 16 * g;
            let mut r = [_mm512_setzero_si512(); 16];
            for (c, rc) in r.iter_mut().enumerate() {
                let cc = 16 * half + c;
                if cc < cnt {
                    let p = col[cc].add(e * es);
                    _mm_prefetch::<_MM_HINT_T0>(p.add(512) as *const i8);
                    *rc = load_w16(kind, w.dt, p, left);
                }
            }
            transpose16(&mut r);
            let dst = bp.add(u0 * NR + 16 * half);
            for (j, rj) in r.iter().enumerate() {
                _mm512_storeu_si512(dst.add(j * NR) as *mut _, *rj);
            }
        }
    }
}

/// Packs activations into `data` as `[tile][unit][ml]` 32-bit lanes, tiles of `ml` rows (MR, or
/// all `m` where fewer; missing rows zero): for [`Kind::Dp`] from bf16 rows, for [`Kind::F32`] from f32 rows.
fn pack_a(
    kind: Kind,
    m: usize,
    ml: usize,
    k: usize,
    row: impl Fn(usize) -> *const u8 + Sync,
    data: &mut [u32],
) {
    let units = k.div_ceil(kind.per_unit());
    let per_tile = units * ml;
    data.par_chunks_mut(per_tile)
        .enumerate()
        .for_each(|(t, dt)| {
            let valid = ml.min(m - t * ml);
            if valid < ml {
                dt.fill(0);
            }
            for i in 0..valid {
                let p = row(t * ml + i);
                match kind {
                    Kind::Dp => {
                        let s = p as *const u16;
                        for u in 0..k / 2 {
                            dt[u * ml + i] =
                                unsafe { (s.add(2 * u) as *const u32).read_unaligned() };
                        }
                        if k % 2 == 1 {
                            dt[(units - 1) * ml + i] = unsafe { *s.add(k - 1) } as u32;
                        }
                    }
                    Kind::F32 => {
                        let s = p as *const u32;
                        for u in 0..k {
                            dt[u * ml + i] = unsafe { *s.add(u) };
                        }
                    }
                }
            }
        });
}

// ---------------------------------------------------------------------------------------------
// Microkernel

#[inline(always)]
unsafe fn madd(kind: Kind, acc: __m512, a: __m512i, b: __m512i) -> __m512 {
    match kind {
        Kind::Dp => _mm512_dpbf16_ps(
            acc,
            std::mem::transmute::<__m512i, __m512bh>(a),
            std::mem::transmute::<__m512i, __m512bh>(b),
        ),
        Kind::F32 => _mm512_fmadd_ps(_mm512_castsi512_ps(a), _mm512_castsi512_ps(b), acc),
    }
}

/// `c[i][0..16 V] (+)= Σ_u a[u][i] · b[u][0..16 V]` for `R` rows (≤ MR; `a` units are `al`
/// lanes apart) and `V` vectors (≤ NV; `b` units and `c` rows are NR lanes apart). Each row and column
/// is one fixed sequence of operations whatever `R` and `V`, so a row's result does not depend
/// on the rows beside it.
#[inline(always)]
unsafe fn ukr<const R: usize, const V: usize>(
    kind: Kind,
    units: usize,
    a: *const u32,
    al: usize,
    b: *const u32,
    c: *mut f32,
    first: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    if !first {
        for (i, ai) in acc.iter_mut().enumerate() {
            for (v, a) in ai.iter_mut().enumerate() {
                *a = _mm512_loadu_ps(c.add(i * NR + 16 * v));
            }
        }
    }
    for u in 0..units {
        let mut bv = [_mm512_setzero_si512(); V];
        for (v, x) in bv.iter_mut().enumerate() {
            *x = _mm512_loadu_si512(b.add(u * NR + 16 * v) as *const _);
        }
        if R <= 2 {
            // Few rows stream the panel from memory once: fetch ahead of it.
            for v in 0..V {
                _mm_prefetch::<_MM_HINT_T0>(b.add((u + PF_UNITS) * NR + 16 * v) as *const i8);
            }
        }
        let au = a.add(u * al);
        for (i, ai) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_epi32(*au.add(i) as i32);
            for v in 0..V {
                ai[v] = madd(kind, ai[v], av, bv[v]);
            }
        }
    }
    for (i, ai) in acc.iter().enumerate() {
        for (v, a) in ai.iter().enumerate() {
            _mm512_storeu_ps(c.add(i * NR + 16 * v), *a);
        }
    }
}

/// How far ahead (in units) [`ukr`] fetches a panel it streams from memory.
const PF_UNITS: usize = 32;

/// [`ukr`] for `rows` (1..=MR) rows and `vecs` (1..=NV) vectors.
macro_rules! ukr_for {
    ($kind:expr, $rows:expr, $vecs:expr, $args:tt) => {
        ukr_for!(@rows $kind, $rows, $vecs, $args, 1 2 3 4 5 6 7 8)
    };
    (@rows $kind:expr, $rows:expr, $vecs:expr, ($u:expr, $a:expr, $al:expr, $b:expr, $c:expr, $f:expr), $($r:literal)*) => {
        match ($rows, $vecs) {
            $(
                ($r, 1) => ukr::<$r, 1>($kind, $u, $a, $al, $b, $c, $f),
                ($r, 2) => ukr::<$r, 2>($kind, $u, $a, $al, $b, $c, $f),
            )*
            $(($r, _) => ukr::<$r, NV>($kind, $u, $a, $al, $b, $c, $f),)*
            _ => unreachable!("tile of more than MR rows"),
        }
    };
}

/// An entry compiled for one kind's instruction set: [`ukr`] at a tile's rows and vectors.
macro_rules! ukr_entry {
    ($name:ident, $features:literal, $kind:expr) => {
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name(
            rows: usize,
            vecs: usize,
            units: usize,
            a: *const u32,
            al: usize,
            b: *const u32,
            c: *mut f32,
            first: bool,
        ) {
            ukr_for!($kind, rows, vecs, (units, a, al, b, c, first))
        }
    };
}
ukr_entry!(ukr_dp, "avx512f,avx512bw,avx512vl,avx512bf16", Kind::Dp);
ukr_entry!(ukr_f32, "avx512f,avx512bw,avx512vl", Kind::F32);

// ---------------------------------------------------------------------------------------------
// Drivers

/// K blocks: at most KCU units each, equal sizes, multiples of 16 units.
fn k_blocks(kind: Kind, k: usize) -> Vec<(usize, usize)> {
    let pu = kind.per_unit();
    let units = k.div_ceil(pu);
    let nb = units.div_ceil(KCU).max(1);
    let per = units.div_ceil(nb).div_ceil(16) * 16;
    (0..nb)
        .map(|b| ((b * per * pu).min(k), ((b + 1) * per * pu).min(k)))
        .filter(|(a, b)| a < b)
        .collect()
}

/// bf16 weights packed once, at load, into the large-M kernel's panels: each full panel of
/// [`NR`] rows as its K blocks in order, each `[unit][NR]` exactly as [`pack_b`] writes it per
/// call (it is what writes them), then zero units up to a multiple of 16 (the AMX kernel reads
/// K in steps of 16 units). The [`Kind::Dp`] GEMM then reads them instead of packing.
pub struct Panels {
    pub n: usize,
    pub k: usize,
    /// K units (bf16 pairs) per panel: the row's, rounded up to a multiple of 16.
    units: usize,
    /// Full panels (`n / NR`); the rows past them are packed per call.
    panels: usize,
    data: Vec<super::Line>,
}

impl Panels {
    /// Panel `j`'s block starting at element `k0`.
    fn block(&self, j: usize, k0: usize) -> *const u32 {
        unsafe { (self.data.as_ptr() as *const u32).add((j * self.units + k0 / 2) * NR) }
    }

    pub fn bytes(&self) -> usize {
        self.data.len() * 64
    }

    /// Full panels (`n / NR`); the rows past them are packed per call.
    pub fn full(&self) -> usize {
        self.panels
    }

    /// Panel `j` (`j < full()`): `units_padded()` units of [`NR`] lanes.
    pub fn panel(&self, j: usize) -> *const u32 {
        self.block(j, 0)
    }

    /// Units per panel, a multiple of 16.
    pub fn units_padded(&self) -> usize {
        self.units
    }
}

/// The [`Panels`] of the bf16 weight `w` (`[n, k]`), or `None` where there is no full panel.
pub fn prepack(w: &View, n: usize, k: usize) -> Option<Panels> {
    if w.dt != DType::BF16 || n < NR || k == 0 {
        return None;
    }
    let (units, panels) = (k.div_ceil(32) * 16, n / NR);
    let mut data = vec![super::Line([0; 16]); (panels * units * NR * 4).div_ceil(64)];
    let dst = SPtr(data.as_mut_ptr() as *mut u8);
    let blocks = k_blocks(Kind::Dp, k);
    let w = *w;
    (0..panels).into_par_iter().for_each(|j| {
        for &(k0, k1) in &blocks {
            // SAFETY: only called where AVX-512 runs; the panel's slot is this task's alone.
            unsafe {
                let bp = (dst.get() as *mut u32).add((j * units + k0 / 2) * NR);
                pack_b(Kind::Dp, &w, j * NR, NR, k0, k1, bp)
            }
        }
    });
    Some(Panels {
        n,
        k,
        units,
        panels,
        data,
    })
}

/// Tiles of MR rows per work unit of [`packed`] (units are panel × row chunk). With the panels
/// packed at load a chunk costs nothing extra, so the rows are split until the units share
/// evenly among the threads; packing per call, only until every thread has work.
fn row_chunk(panels: usize, tiles: usize, threads: usize, prepacked: bool) -> usize {
    if !prepacked {
        let chunks = (2 * threads).div_ceil(panels).clamp(1, tiles);
        return tiles.div_ceil(chunks);
    }
    // Even chunks only; the longest thread's tiles (units handed out in turn), fewest chunks
    // among the best.
    (1..=tiles.min(8))
        .filter(|&c| tiles.is_multiple_of(c))
        .min_by_key(|&c| ((panels * c).div_ceil(threads) * (tiles / c), c))
        .map_or(tiles, |c| tiles / c)
}

/// Packed large-M GEMM. `x` holds bf16 rows for [`Kind::Dp`] and f32 rows (`xf`, contiguous)
/// for [`Kind::F32`]; `pre`, `w` packed at load (used by [`Kind::Dp`]).
#[allow(clippy::too_many_arguments)]
pub fn packed(
    kind: Kind,
    x: &View,
    xf: Option<&[f32]>,
    w: &View,
    pre: Option<&Panels>,
    m: usize,
    n: usize,
    k: usize,
    epi: Epi,
    out: &View,
) {
    let xp = SPtr(x.p.get());
    let (xdt, xstride) = (x.dt, x.stride);
    let xfp = SPtr(xf.map_or(std::ptr::null_mut(), |v| v.as_ptr() as *mut u8));
    let units_k = k.div_ceil(kind.per_unit());
    // Rows per tile: MR, or all of them where fewer (no zero lanes to stream past).
    let ml = m.min(MR);
    let tiles = m.div_ceil(ml);
    with_scratch(Slot::A, tiles * units_k * ml * 4, false, |abuf| {
        let a = unsafe { std::slice::from_raw_parts_mut(abuf as *mut u32, tiles * units_k * ml) };
        pack_a(
            kind,
            m,
            ml,
            k,
            |r| match kind {
                Kind::Dp => unsafe { xp.get().add(xdt.bytes_for(r * xstride)) },
                Kind::F32 => unsafe { xfp.get().add(4 * r * k) },
            },
            a,
        );
        let ap = SPtr(abuf);
        let blocks = k_blocks(kind, k);
        let panels = n.div_ceil(NR);
        let threads = rayon::current_num_threads();
        let mut tiles_per_chunk =
            row_chunk(panels, tiles, threads, pre.is_some() && kind == Kind::Dp);
        if blocks.len() > 1 {
            // Sums kept across K blocks: at most 32 tiles' worth (48 KiB).
            tiles_per_chunk = tiles_per_chunk.min(32);
        }
        let chunks = tiles.div_ceil(tiles_per_chunk);
        let max_units = blocks
            .iter()
            .map(|(a, b)| (b - a).div_ceil(kind.per_unit()))
            .max()
            .unwrap_or(0);
        let (w, out) = (*w, *out);
        (0..panels * chunks).into_par_iter().for_each(|unit| {
            let (j, ch) = (unit / chunks, unit % chunks);
            let n0 = j * NR;
            let cnt = NR.min(n - n0);
            let t0 = ch * tiles_per_chunk;
            let t1 = (t0 + tiles_per_chunk).min(tiles);
            let bbytes = max_units.div_ceil(16) * 16 * NR * 4;
            with_scratch(Slot::B, bbytes, false, |bpp| {
                // One K block: each tile's sums go out as soon as they are done, from L1.
                let ctiles = if blocks.len() == 1 { 1 } else { t1 - t0 };
                with_scratch(Slot::C, ctiles * ml * NR * 4, false, |cb| {
                    let bpp = bpp as *mut u32;
                    let cbuf = cb as *mut f32;
                    let pre = pre.filter(|p| kind == Kind::Dp && j < p.panels);
                    let last = blocks.len() - 1;
                    for (bi, &(k0, k1)) in blocks.iter().enumerate() {
                        let units = (k1 - k0).div_ceil(kind.per_unit());
                        let u0 = k0 / kind.per_unit();
                        unsafe {
                            let bsrc = match pre {
                                Some(p) => p.block(j, k0),
                                None => {
                                    pack_b(kind, &w, n0, cnt, k0, k1, bpp);
                                    bpp as *const u32
                                }
                            };
                            // Only the tile's real rows and the panel's real columns.
                            let vecs = cnt.div_ceil(16);
                            for t in t0..t1 {
                                let rows = ml.min(m - t * ml);
                                let at = (ap.get() as *const u32).add((t * units_k + u0) * ml);
                                let cp = cbuf.add(((t - t0) % ctiles) * ml * NR);
                                let f = bi == 0;
                                match kind {
                                    Kind::Dp => ukr_dp(rows, vecs, units, at, ml, bsrc, cp, f),
                                    Kind::F32 => ukr_f32(rows, vecs, units, at, ml, bsrc, cp, f),
                                }
                                if bi == last {
                                    for i in 0..rows {
                                        let c = std::slice::from_raw_parts_mut(cp.add(i * NR), cnt);
                                        store_row(c, epi, &out, t * ml + i, n0);
                                    }
                                }
                            }
                        }
                    }
                })
            })
        });
    })
}

// ---------------------------------------------------------------------------------------------
// Small M: lanes over K, straight from the stored rows.

/// 16 (F32) or 32 (Dp) K elements of a row from element `e`, `left` remaining, as the kernel's
/// operand (zero past the end).
#[inline(always)]
unsafe fn load_k(kind: Kind, dt: DType, p: *const u8, left: usize) -> __m512i {
    load_w16(kind, dt, p, left)
}

/// Dots `R` activation rows with `C` weight rows over all K; `res[r][c]`.
#[inline(always)]
unsafe fn dots<const R: usize, const C: usize>(
    kind: Kind,
    xdt: DType,
    x: [*const u8; R],
    wdt: DType,
    w: [*const u8; C],
    k: usize,
    next: Option<[*const u8; C]>,
) -> [[f32; C]; R] {
    let step = 16 * kind.per_unit();
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    let mut e = 0;
    while e < k {
        let left = k - e;
        let mut wv = [_mm512_setzero_si512(); C];
        for c in 0..C {
            wv[c] = load_k(kind, wdt, w[c].add(wdt.bytes_for(e)), left);
        }
        if let Some(nx) = next {
            for p in nx {
                _mm_prefetch::<_MM_HINT_T1>(p.add(wdt.bytes_for(e)) as *const i8);
            }
        }
        for r in 0..R {
            let xv = load_k(kind, xdt, x[r].add(xdt.bytes_for(e)), left);
            for c in 0..C {
                acc[r][c] = madd(kind, acc[r][c], xv, wv[c]);
            }
        }
        e += step;
    }
    let mut res = [[0f32; C]; R];
    for r in 0..R {
        for c in 0..C {
            res[r][c] = _mm512_reduce_add_ps(acc[r][c]);
        }
    }
    res
}

/// Rows `j0..j1` of w against every activation row; `out` is `[m][j1 - j0]`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn small_rows(
    kind: Kind,
    xrow: &dyn Fn(usize) -> *const u8,
    xdt: DType,
    m: usize,
    w: &View,
    j0: usize,
    j1: usize,
    k: usize,
    out: &mut [f32],
) {
    let cnt = j1 - j0;
    // Tiles of (activation rows × weight rows): one row (decode) takes eight weight rows per
    // pass to keep more loads in flight; more rows take 4 × 6 (24 accumulators, six weight
    // streams; the second pass of a batch of eight finds the six rows in L2). Of 8 × 3, 4 × 4,
    // 2 × 8 and 4 × 6, this ran fastest at batch 8 on the 2-core Zen 4.
    let (rm, wide) = if m == 1 { (1, 8) } else { (4, 6) };
    let mut j = j0;
    while j < j1 {
        let nc = if j1 - j >= wide { wide } else { 1 };
        let mut r = 0;
        while r < m {
            let nr = rm.min(m - r);
            macro_rules! go {
                ($R:literal, $C:literal) => {{
                    let xs: [*const u8; $R] = std::array::from_fn(|i| xrow(r + i));
                    let ws: [*const u8; $C] = std::array::from_fn(|i| w.at(j + i, 0) as *const u8);
                    // The last pass over these weight rows (of several) prefetches the next
                    // rows into L2 at the pace it consumes its own, so the next first pass
                    // does not wait for memory.
                    let next = (m > rm && r + nr >= m).then(|| {
                        std::array::from_fn(|i| w.at((j + nc + i).min(j1 - 1), 0) as *const u8)
                    });
                    let res = dots::<$R, $C>(kind, xdt, xs, w.dt, ws, k, next);
                    for i in 0..$R {
                        for c in 0..$C {
                            out[(r + i) * cnt + (j - j0) + c] = res[i][c];
                        }
                    }
                }};
            }
            match (nr, nc) {
                (1, 8) => go!(1, 8),
                (4, 6) => go!(4, 6),
                (3, 6) => go!(3, 6),
                (2, 6) => go!(2, 6),
                (1, 6) => go!(1, 6),
                (4, _) => go!(4, 1),
                (3, _) => go!(3, 1),
                (2, _) => go!(2, 1),
                _ => go!(1, 1),
            }
            r += nr;
        }
        j += nc;
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn small_rows_dp(
    xrow: &dyn Fn(usize) -> *const u8,
    xdt: DType,
    m: usize,
    w: &View,
    j0: usize,
    j1: usize,
    k: usize,
    out: &mut [f32],
) {
    small_rows(Kind::Dp, xrow, xdt, m, w, j0, j1, k, out)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn small_rows_f32(
    xrow: &dyn Fn(usize) -> *const u8,
    xdt: DType,
    m: usize,
    w: &View,
    j0: usize,
    j1: usize,
    k: usize,
    out: &mut [f32],
) {
    small_rows(Kind::F32, xrow, xdt, m, w, j0, j1, k, out)
}

/// Small-M GEMM: tasks over weight rows, each dotting its rows with all M activation rows.
#[allow(clippy::too_many_arguments)]
pub fn small(
    kind: Kind,
    x: &View,
    xf: Option<&[f32]>,
    w: &View,
    m: usize,
    n: usize,
    k: usize,
    epi: Epi,
    out: &View,
) {
    let xp = SPtr(x.p.get());
    let (xdt0, xstride) = (x.dt, x.stride);
    let xfp = SPtr(xf.map_or(std::ptr::null_mut(), |v| v.as_ptr() as *mut u8));
    let xdt = if kind == Kind::Dp { xdt0 } else { DType::F32 };
    let threads = rayon::current_num_threads();
    // ~4 tasks per thread, whole groups of RN rows.
    let chunk = (n.div_ceil(4 * threads).div_ceil(RN) * RN).max(RN);
    let (w, out) = (*w, *out);
    (0..n.div_ceil(chunk)).into_par_iter().for_each_init(
        || vec![0f32; m * chunk],
        |buf, c| {
            let (j0, j1) = (c * chunk, ((c + 1) * chunk).min(n));
            let cnt = j1 - j0;
            let xrow = |r: usize| -> *const u8 {
                match kind {
                    Kind::Dp => unsafe { xp.get().add(xdt0.bytes_for(r * xstride)) },
                    Kind::F32 => unsafe { xfp.get().add(4 * r * k) },
                }
            };
            let o = &mut buf[..m * cnt];
            unsafe {
                match kind {
                    Kind::Dp => small_rows_dp(&xrow, xdt, m, &w, j0, j1, k, o),
                    Kind::F32 => small_rows_f32(&xrow, xdt, m, &w, j0, j1, k, o),
                }
            }
            for r in 0..m {
                let row = &mut o[r * cnt..(r + 1) * cnt];
                unsafe { store_row(row, epi, &out, r, j0) };
            }
        },
    );
}
