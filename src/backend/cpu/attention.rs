//! Paged KV append, causal paged GQA attention and segment (varlen) attention: fast paths.
//!
//! Work units: (query row, KV head) for paged attention, so the query heads of a GQA group
//! share every K/V row they load; each row reads its own sequence's pages (a step may hold
//! several sequences, see `PagedKv`) and its result does not depend on the other rows; (segment, head, 32-query block) for varlen attention, with the
//! segment's K/V widened to f32 once per unit. Scores, softmax and the P·V sums are f32; the
//! output is rounded once.

use super::simd::{load, store};
use super::{op_err, CpuBackend, SPtr};
use crate::backend::{check, KvLayout, PagedKv, TRef};
use crate::error::Result;
use crate::tensor::{DType, Shape};
use rayon::prelude::*;

/// One sequence of a step: its rows, length and pages (validated against the pool).
pub(crate) struct Seq {
    pub q0: usize,
    pub n: usize,
    pub kv_len: usize,
    pub pages: Vec<usize>,
}

/// Reads the step's CSR tables (the layout is checked by the op's `check`), validates their
/// values for a step of `tokens` rows, and returns each sequence with the pool's base pointer.
pub(crate) fn read_seqs(
    be: &CpuBackend,
    op: &str,
    kv: &PagedKv,
    tokens: usize,
) -> Result<(Vec<Seq>, SPtr)> {
    let l: &KvLayout = &kv.layout;
    let total = l.n_layers * 2 * l.n_pages * l.page_elems();
    let pool = TRef::new(l.buf, 0, l.dtype, Shape::new(&[total.max(1)]));
    let base = be.view_mut(&pool)?.p;
    let qo = be.read_i32(op, "qo_indptr", &kv.qo_indptr)?;
    let indptr = be.read_i32(op, "indptr", &kv.indptr)?;
    let indices = be.read_i32(op, "indices", &kv.indices)?;
    let last = be.read_i32(op, "last_page_len", &kv.last_page_len)?;
    let seqs = check::paged_values(op, kv, tokens, &qo, &indptr, &indices, &last)
        .map_err(|e| op_err(op, e.to_string().trim_start_matches(&format!("{op}: "))))?;
    let seqs = seqs
        .into_iter()
        .map(|s| Seq {
            q0: s.q0,
            n: s.n,
            kv_len: s.kv_len,
            pages: indices[s.p0..s.p0 + s.pages]
                .iter()
                .map(|&p| p as usize)
                .collect(),
        })
        .collect();
    Ok((seqs, base))
}

/// The sequence of each row and the row's position in it.
fn row_map(seqs: &[Seq], tokens: usize) -> Vec<(usize, usize)> {
    let mut m = vec![(0, 0); tokens];
    for (b, s) in seqs.iter().enumerate() {
        for i in 0..s.n {
            m[s.q0 + i] = (b, s.kv_len - s.n + i);
        }
    }
    m
}

pub(super) fn kv_append(
    be: &CpuBackend,
    k: TRef,
    v: TRef,
    kv: &PagedKv,
    layer: usize,
) -> Result<()> {
    const OP: &str = "kv_append";
    let l = kv.layout;
    let t = check::kv_append(&k, &v, kv, layer)?;
    let (seqs, base) = read_seqs(be, OP, kv, t)?;
    let rows = row_map(&seqs, t);
    let (kv_, vv) = (be.view(&k)?, be.view(&v)?);
    let row = l.n_kv_heads * l.head_dim;
    let mut buf = vec![0f32; row];
    for (i, &(b, p)) in rows.iter().enumerate() {
        let (page, slot) = (seqs[b].pages[p / l.page_size], p % l.page_size);
        for (which, src) in [(0, &kv_), (1, &vv)] {
            let e = l.elem_index(layer, which, page, slot, 0);
            unsafe {
                load(src.at(i, 0), src.dt, &mut buf);
                store(base.0.add(l.dtype.bytes_for(e)), l.dtype, &buf);
            }
        }
    }
    Ok(())
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut part = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (at, bt) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            part[l] += x[l] * y[l];
        }
    }
    let mut s: f32 = part.iter().sum();
    for (x, y) in at.iter().zip(bt) {
        s += x * y;
    }
    s
}

/// Softmax attention of `g` query rows (`q`, g×d) over the first `nk` keys and values of `kf`
/// and `vf` (rows of d f32). Writes the unrounded f32 result to `o` (g×d).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attend(
    q: &[f32],
    g: usize,
    d: usize,
    nk: usize,
    scale: f32,
    kf: &[f32],
    vf: &[f32],
    scores: &mut Vec<f32>,
    o: &mut [f32],
    exp: fn(&mut [f32], f32),
) {
    scores.clear();
    scores.resize(g * nk, 0.0);
    for j in 0..nk {
        let kj = &kf[j * d..(j + 1) * d];
        for h in 0..g {
            scores[h * nk + j] = dot(&q[h * d..(h + 1) * d], kj) * scale;
        }
    }
    let mut inv = [0f32; 64];
    for h in 0..g {
        let s = &mut scores[h * nk..(h + 1) * nk];
        let m = s.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        exp(s, m);
        let sum: f32 = s.iter().fold(0.0, |a, &x| a + x);
        inv[h] = if sum > 0.0 { 1.0 / sum } else { 0.0 };
    }
    o.fill(0.0);
    for j in 0..nk {
        let vj = &vf[j * d..(j + 1) * d];
        for h in 0..g {
            let p = scores[h * nk + j];
            for (oo, &vv) in o[h * d..(h + 1) * d].iter_mut().zip(vj) {
                *oo += p * vv;
            }
        }
    }
    for h in 0..g {
        for oo in &mut o[h * d..(h + 1) * d] {
            *oo *= inv[h];
        }
    }
}

/// `s[j] = e^(s[j] - m)` with libm's `expf`.
fn exp_libm(s: &mut [f32], m: f32) {
    for x in s.iter_mut() {
        *x = (*x - m).exp();
    }
}

/// `s[j] = e^(s[j] - m)`, sixteen at a time (`elementwise::avx512::exp`, within 2 ulp of libm).
#[cfg(target_arch = "x86_64")]
fn exp_avx512(s: &mut [f32], m: f32) {
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn run(s: &mut [f32], m: f32) {
        use std::arch::x86_64::*;
        let mv = _mm512_set1_ps(m);
        for c in s.chunks_mut(16) {
            let k = ((1u32 << c.len()) - 1) as u16;
            let v = _mm512_maskz_loadu_ps(k, c.as_ptr());
            let e = super::elementwise::avx512::exp(_mm512_sub_ps(v, mv));
            _mm512_mask_storeu_ps(c.as_mut_ptr(), k, e);
        }
    }
    // SAFETY: only chosen by units that run on the AVX-512 path.
    unsafe { run(s, m) }
}

/// Query rows per paged-attention unit during prefill: each unit widens its sequence's keys
/// and values to f32 once for this many rows.
const PB: usize = 64;

/// One unit of paged attention: rows `rs` (consecutive rows of one sequence, the last one
/// seeing the most keys) × KV head `kh`.
///
/// # Safety
/// The views and pages are checked by the op.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn paged_unit(
    u: &PagedUnit,
    rs: std::ops::Range<usize>,
    kh: usize,
    pages: &[usize],
    first_pos: usize,
    bufs: &mut Bufs,
) {
    let (g, d) = (u.g, u.d);
    let nk_max = first_pos + rs.len();
    load_kv(u, kh, pages, nk_max, bufs, nk_max);
    for (i, ti) in rs.enumerate() {
        load(u.q.at(ti, kh * g * d), u.q.dt, &mut bufs.qb);
        let nk = first_pos + i + 1;
        attend(
            &bufs.qb,
            g,
            d,
            nk,
            u.scale,
            &bufs.kf,
            &bufs.vf,
            &mut bufs.scores,
            &mut bufs.ob,
            exp_libm,
        );
        store(u.o.at(ti, kh * g * d), u.o.dt, &bufs.ob);
    }
}

/// The first `nk` keys and values of KV head `kh` widened to f32 rows in `bufs.kf` / `bufs.vf`;
/// `kf` holds `k_rows` (≥ `nk`) rows.
///
/// # Safety
/// The pages are checked by the op and hold `nk` positions.
#[inline(always)]
unsafe fn load_kv(
    u: &PagedUnit,
    kh: usize,
    pages: &[usize],
    nk: usize,
    bufs: &mut Bufs,
    k_rows: usize,
) {
    let (d, l) = (u.d, &u.layout);
    bufs.kf.resize(k_rows * d, 0.0);
    bufs.vf.resize(nk * d, 0.0);
    for j in 0..nk {
        for (which, dst) in [(0, &mut bufs.kf), (1, &mut bufs.vf)] {
            let e = l.elem_index(u.layer, which, pages[j / l.page_size], j % l.page_size, kh);
            let src = u.base.get().add(l.dtype.bytes_for(e));
            load(src, l.dtype, &mut dst[j * d..(j + 1) * d]);
        }
    }
}

/// Whether the AVX-512 attention core serves head dim `d` (the text model's 128, the ViT's 80).
fn fast_dim(d: usize) -> bool {
    d == 128 || d == 80
}

/// [`paged_unit`] for AVX-512 at a [`fast_dim`] head dim: the sequence's keys and values widened
/// once, then [`block_core`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn paged_unit_avx512(
    u: &PagedUnit,
    rs: std::ops::Range<usize>,
    kh: usize,
    pages: &[usize],
    first_pos: usize,
    bufs: &mut Bufs,
) {
    let (g, d) = (u.g, u.d);
    let n = rs.len();
    let nk_max = first_pos + n;
    load_kv(u, kh, pages, nk_max, bufs, nk_max.div_ceil(16) * 16);
    // Queries: vector v = i · g + h.
    let nq = n * g;
    bufs.qb.resize(nq.div_ceil(4) * 4 * d, 0.0);
    for (i, ti) in rs.clone().enumerate() {
        let q = &mut bufs.qb[i * g * d..(i + 1) * g * d];
        load(u.q.at(ti, kh * g * d), u.q.dt, q);
    }
    let valid = |v: usize| (first_pos + v / g + 1).min(nk_max);
    match d {
        128 => block_core::<128>(bufs, nk_max, nq, valid, u.scale, u.pairs),
        _ => block_core::<80>(bufs, nk_max, nq, valid, u.scale, u.pairs),
    }
    for (i, ti) in rs.enumerate() {
        let o = &bufs.ob[i * g * d..(i + 1) * g * d];
        store(u.o.at(ti, kh * g * d), u.o.dt, o);
    }
}

/// Keys per block of the transposed keys in [`block_core`].
const KB: usize = 32;

/// Attention of `nq` query vectors (`bufs.qb`, rows of `D`, room for a multiple of four) over
/// keys and values (`bufs.kf`, `bufs.vf`, rows of `D`), query `v` seeing the first `valid(v)`
/// keys; results (normalized, f32) to `bufs.ob` rows.
///
/// Keys are transposed once into blocks of [`KB`] keys (`[block][dim][KB]`: a score tile reads
/// one contiguous stretch, never rows 4 KiB apart that share an L1 set). Then four queries at a
/// time: their scores (tiles of four queries × 32 keys, sixteen scores per FMA chain), softmax
/// with the vector `exp`, and P·V with each value row loaded once for all four. Each score is
/// one fixed-order sum over the head dim and each output one fixed-order sum over the keys
/// (keys past a query's own get p = 0, which adds exactly nothing), so a query's result does not
/// depend on the other queries of its unit. With `pairs` (bf16 queries and keys, AVX512_BF16)
/// the scores come from [`block_core_pairs`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn block_core<const D: usize>(
    bufs: &mut Bufs,
    nk_max: usize,
    nq: usize,
    valid: impl Fn(usize) -> usize,
    scale: f32,
    pairs: bool,
) {
    use std::arch::x86_64::*;
    let np = nk_max.div_ceil(KB) * KB;
    bufs.kf.resize(np * D, 0.0);
    bufs.kf[nk_max * D..].fill(0.0);
    bufs.kt.resize(D * np, 0.0);
    if pairs {
        return block_core_pairs::<D>(bufs, nk_max, nq, valid, scale);
    }
    // kt[(j / KB) · D · KB + dd · KB + j % KB] = k[j][dd], 16 × 16 at a time.
    for j0 in (0..np).step_by(16) {
        let blk = bufs.kt.as_mut_ptr().add((j0 / KB) * D * KB + j0 % KB);
        for d0 in (0..D).step_by(16) {
            let mut r = [_mm512_setzero_si512(); 16];
            for (i, ri) in r.iter_mut().enumerate() {
                *ri = _mm512_loadu_si512(bufs.kf.as_ptr().add((j0 + i) * D + d0) as *const _);
            }
            super::gemm::avx512::transpose16(&mut r);
            for (i, ri) in r.iter().enumerate() {
                _mm512_storeu_si512(blk.add((d0 + i) * KB) as *mut _, *ri);
            }
        }
    }
    prepare_rows::<D>(bufs, nq, np);
    let (qp, kt, sp) = (bufs.qb.as_ptr(), bufs.kt.as_ptr(), bufs.scores.as_mut_ptr());
    let (vf, op) = (bufs.vf.as_ptr(), bufs.ob.as_mut_ptr());
    let sc = _mm512_set1_ps(scale);
    for v0 in (0..nq).step_by(4) {
        let nv = 4.min(nq - v0);
        let kmax = (0..nv).map(|a| valid(v0 + a)).max().unwrap_or(0);
        // Scores of the four queries (the padding ones are zero), 32 keys per tile where there
        // are (where not, the second half repeats the first and is dropped).
        let mut j0 = 0;
        while j0 < kmax {
            let two = j0 + 16 < kmax;
            let blk = kt.add((j0 / KB) * D * KB);
            let h1 = if two { 16 } else { 0 };
            let mut acc = [_mm512_setzero_ps(); 8];
            for dd in 0..D {
                let k0 = _mm512_loadu_ps(blk.add(dd * KB));
                let k1 = _mm512_loadu_ps(blk.add(dd * KB + h1));
                for a in 0..4 {
                    let q = _mm512_set1_ps(*qp.add((v0 + a) * D + dd));
                    acc[2 * a] = _mm512_fmadd_ps(q, k0, acc[2 * a]);
                    acc[2 * a + 1] = _mm512_fmadd_ps(q, k1, acc[2 * a + 1]);
                }
            }
            store_tile(sp, np, j0, two, &acc, sc);
            j0 += if two { 32 } else { 16 };
        }
        softmax_pv::<D>(sp, np, nv, kmax, |a| valid(v0 + a), vf, op.add(v0 * D));
    }
}

/// Query vectors padded with zeros to a multiple of four, room for four score rows of `np` keys
/// and for the outputs.
#[inline(always)]
fn prepare_rows<const D: usize>(bufs: &mut Bufs, nq: usize, np: usize) {
    let nq4 = nq.div_ceil(4) * 4;
    bufs.qb.resize(nq4 * D, 0.0);
    bufs.qb[nq * D..].fill(0.0);
    bufs.scores.resize(4 * np, 0.0);
    bufs.ob.resize(nq4 * D, 0.0);
}

/// A score tile (four queries × 16 or 32 keys from `j0`; `acc[2a]`, `acc[2a + 1]`) scaled into
/// the four score rows.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn store_tile(
    sp: *mut f32,
    np: usize,
    j0: usize,
    two: bool,
    acc: &[std::arch::x86_64::__m512; 8],
    sc: std::arch::x86_64::__m512,
) {
    use std::arch::x86_64::*;
    for a in 0..4 {
        let row = sp.add(a * np + j0);
        _mm512_storeu_ps(row, _mm512_mul_ps(acc[2 * a], sc));
        if two {
            _mm512_storeu_ps(row.add(16), _mm512_mul_ps(acc[2 * a + 1], sc));
        }
    }
}

/// Softmax of four queries' score rows over their own keys (`valid(a)` of them; p = 0 past
/// them and for padding queries), then P·V to `out` (four rows of `D`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn softmax_pv<const D: usize>(
    sp: *mut f32,
    np: usize,
    nv: usize,
    kmax: usize,
    valid: impl Fn(usize) -> usize,
    vf: *const f32,
    out: *mut f32,
) {
    let mut inv = [0f32; 4];
    for (a, ia) in inv.iter_mut().enumerate() {
        let row = sp.add(a * np);
        let n = if a < nv { valid(a) } else { 0 };
        *ia = softmax_row(row, n);
        std::slice::from_raw_parts_mut(row.add(n), kmax - n).fill(0.0);
    }
    // Each value row loaded once for the four queries (two at a time at D = 128, where four
    // would need more accumulators than there are registers).
    if D <= 80 {
        pv::<D, 4>(sp, np, 0, kmax, vf, &inv, out);
    } else {
        pv::<D, 2>(sp, np, 0, kmax, vf, &inv, out);
        pv::<D, 2>(sp, np, 2, kmax, vf, &inv, out.add(2 * D));
    }
}

/// [`block_core`] for queries and keys that are bf16 values (widened exactly to f32): the
/// scores as `vdpbf16ps` dots of bf16 pairs, half the instructions of the f32 FMAs. Each
/// product of two bf16 values is exact in f32 and the sums are f32 (the instruction flushes
/// denormals), a fixed order per score as before; softmax and P·V are the f32 ones.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)]
unsafe fn block_core_pairs<const D: usize>(
    bufs: &mut Bufs,
    nk_max: usize,
    nq: usize,
    valid: impl Fn(usize) -> usize,
    scale: f32,
) {
    use std::arch::x86_64::*;
    let pn = D / 2;
    let np = nk_max.div_ceil(KB) * KB;
    // kt as u32: [(j / KB) · pn · KB + i · KB + j % KB] = the bf16 pair k[j][2i], k[j][2i + 1].
    let kt = bufs.kt.as_mut_ptr() as *mut u32;
    for j0 in (0..np).step_by(16) {
        let blk = kt.add((j0 / KB) * pn * KB + j0 % KB);
        for i0 in (0..pn).step_by(16) {
            let mut r = [_mm512_setzero_si512(); 16];
            for (jj, rj) in r.iter_mut().enumerate() {
                let row = bufs.kf.as_ptr().add((j0 + jj) * D + 2 * i0);
                let left = 2 * (pn - i0);
                let m = |o: usize| -> u16 {
                    if left >= o + 16 {
                        0xffff
                    } else if left > o {
                        ((1u32 << (left - o)) - 1) as u16
                    } else {
                        0
                    }
                };
                let lo = _mm512_maskz_loadu_ps(m(0), row);
                let hi = _mm512_maskz_loadu_ps(m(16), row.add(16));
                // Exact: the values are bf16 already.
                *rj = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
            }
            super::gemm::avx512::transpose16(&mut r);
            for (ii, ri) in r.iter().enumerate().take(pn - i0) {
                _mm512_storeu_si512(blk.add((i0 + ii) * KB) as *mut _, *ri);
            }
        }
    }
    prepare_rows::<D>(bufs, nq, np);
    let (qp, kt, sp) = (bufs.qb.as_ptr(), kt as *const u32, bufs.scores.as_mut_ptr());
    let (vf, op) = (bufs.vf.as_ptr(), bufs.ob.as_mut_ptr());
    let sc = _mm512_set1_ps(scale);
    let mut qpair = [[0u32; 64]; 4];
    for v0 in (0..nq).step_by(4) {
        let nv = 4.min(nq - v0);
        let kmax = (0..nv).map(|a| valid(v0 + a)).max().unwrap_or(0);
        for (a, qa) in qpair.iter_mut().enumerate() {
            let q = qp.add((v0 + a) * D);
            for (i, e) in qa.iter_mut().enumerate().take(pn) {
                let (x, y) = ((*q.add(2 * i)).to_bits(), (*q.add(2 * i + 1)).to_bits());
                *e = (y & 0xffff_0000) | (x >> 16);
            }
        }
        let mut j0 = 0;
        while j0 < kmax {
            let two = j0 + 16 < kmax;
            let blk = kt.add((j0 / KB) * pn * KB);
            let h1 = if two { 16 } else { 0 };
            let mut acc = [_mm512_setzero_ps(); 8];
            for i in 0..pn {
                let k0 = std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                    blk.add(i * KB) as *const _,
                ));
                let k1 = std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                    blk.add(i * KB + h1) as *const _,
                ));
                for a in 0..4 {
                    let q = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(
                        qpair[a][i] as i32,
                    ));
                    acc[2 * a] = _mm512_dpbf16_ps(acc[2 * a], q, k0);
                    acc[2 * a + 1] = _mm512_dpbf16_ps(acc[2 * a + 1], q, k1);
                }
            }
            store_tile(sp, np, j0, two, &acc, sc);
            j0 += if two { 32 } else { 16 };
        }
        softmax_pv::<D>(sp, np, nv, kmax, |a| valid(v0 + a), vf, op.add(v0 * D));
    }
}

/// `row[..n] = e^(row - max)`; returns `1 / Σ` (0 where the sum is 0). Sixteen lanes at a time:
/// the max is exact in any order, the sum is one fixed order for a given `n`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn softmax_row(row: *mut f32, n: usize) -> f32 {
    use std::arch::x86_64::*;
    if n == 0 {
        return 0.0;
    }
    let mask = |i: usize| -> u16 {
        let left = n - i;
        if left >= 16 {
            0xffff
        } else {
            ((1u32 << left) - 1) as u16
        }
    };
    let mut mv = _mm512_set1_ps(f32::NEG_INFINITY);
    for i in (0..n).step_by(16) {
        let k = mask(i);
        mv = _mm512_mask_max_ps(mv, k, mv, _mm512_maskz_loadu_ps(k, row.add(i)));
    }
    let m = _mm512_set1_ps(_mm512_reduce_max_ps(mv));
    let mut sum = _mm512_setzero_ps();
    for i in (0..n).step_by(16) {
        let k = mask(i);
        let e =
            super::elementwise::avx512::exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, row.add(i)), m));
        let e = _mm512_maskz_mov_ps(k, e);
        _mm512_mask_storeu_ps(row.add(i), k, e);
        sum = _mm512_add_ps(sum, e);
    }
    let total = _mm512_reduce_add_ps(sum);
    if total > 0.0 {
        1.0 / total
    } else {
        0.0
    }
}

/// `out[a] = inv[a0 + a] · Σ_j p[a0 + a][j] · v[j]` for `Q` queries over `kmax` keys (score rows
/// `np` apart from `sp`, value rows of `D`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::needless_range_loop)]
unsafe fn pv<const D: usize, const Q: usize>(
    sp: *const f32,
    np: usize,
    a0: usize,
    kmax: usize,
    vf: *const f32,
    inv: &[f32; 4],
    out: *mut f32,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 8]; Q];
    for j in 0..kmax {
        let vr = vf.add(j * D);
        let p: [__m512; Q] = std::array::from_fn(|a| _mm512_set1_ps(*sp.add((a0 + a) * np + j)));
        for c in 0..D / 16 {
            let v = _mm512_loadu_ps(vr.add(16 * c));
            for a in 0..Q {
                acc[a][c] = _mm512_fmadd_ps(p[a], v, acc[a][c]);
            }
        }
    }
    for a in 0..Q {
        let s = _mm512_set1_ps(inv[a0 + a]);
        for c in 0..D / 16 {
            _mm512_storeu_ps(out.add(a * D + 16 * c), _mm512_mul_ps(acc[a][c], s));
        }
    }
}

/// What every unit of one paged-attention call shares.
struct PagedUnit {
    /// Queries and cached keys are bf16 and the CPU has the bf16 dot: scores from bf16 pairs.
    pairs: bool,
    g: usize,
    d: usize,
    layer: usize,
    scale: f32,
    layout: KvLayout,
    base: SPtr,
    q: super::View,
    o: super::View,
}

/// Per-thread scratch of the attention units.
#[derive(Default)]
struct Bufs {
    kf: Vec<f32>,
    vf: Vec<f32>,
    /// Keys transposed (the AVX-512 unit).
    kt: Vec<f32>,
    qb: Vec<f32>,
    ob: Vec<f32>,
    scores: Vec<f32>,
}

pub(super) fn paged(
    be: &CpuBackend,
    q: TRef,
    kv: &PagedKv,
    layer: usize,
    out: TRef,
    scale: f32,
) -> Result<()> {
    const OP: &str = "attention_paged";
    let pd = check::attention_paged(&q, kv, layer, &out)?;
    let (t, hq, hkv, d) = (pd.tokens, pd.q_heads, pd.kv_heads, pd.head_dim);
    let (seqs, base) = read_seqs(be, OP, kv, t)?;
    let g = hq / hkv;
    if g > 64 {
        return Err(op_err(
            OP,
            format!("{g} query heads per KV head (at most 64)"),
        ));
    }
    let u = PagedUnit {
        pairs: super::isa::has_bf16_dot(be.isa)
            && q.dtype == DType::BF16
            && kv.layout.dtype == DType::BF16,
        g,
        d,
        layer,
        scale,
        layout: kv.layout,
        base,
        q: be.view(&q)?,
        o: be.view_mut(&out)?,
    };
    // Units: blocks of up to PB consecutive rows of one sequence, × KV heads.
    let mut blocks = Vec::new();
    for (b, s) in seqs.iter().enumerate() {
        let mut i = 0;
        while i < s.n {
            let n = PB.min(s.n - i);
            blocks.push((b, s.q0 + i, n, s.kv_len - s.n + i));
            i += n;
        }
    }
    #[cfg(target_arch = "x86_64")]
    let avx512 = be.isa.avx512() && fast_dim(d);
    (0..blocks.len() * hkv).into_par_iter().for_each_init(
        || Bufs {
            qb: vec![0f32; g * d],
            ob: vec![0f32; g * d],
            ..Default::default()
        },
        |bufs, x| {
            let ((b, r0, n, p0), kh) = (blocks[x / hkv], x % hkv);
            let pages = &seqs[b].pages;
            #[cfg(target_arch = "x86_64")]
            if avx512 {
                return unsafe { paged_unit_avx512(&u, r0..r0 + n, kh, pages, p0, bufs) };
            }
            unsafe { paged_unit(&u, r0..r0 + n, kh, pages, p0, bufs) }
        },
    );
    Ok(())
}

/// Query rows per varlen work unit: each unit widens and transposes its segment's keys once, so
/// long segments (the ViT's full-attention blocks) take many rows per unit (512 ran 3% faster
/// than 128 there); a 1,024-patch segment still makes 2 units per head, 32 per call.
const QB: usize = 512;

#[allow(clippy::too_many_arguments)]
pub(super) fn varlen(
    be: &CpuBackend,
    q: TRef,
    k: TRef,
    v: TRef,
    cu: TRef,
    out: TRef,
    scale: f32,
    _simd: bool,
) -> Result<()> {
    const OP: &str = "attention_varlen";
    let vd = check::attention_varlen(&q, &k, &v, &cu, &out)?;
    let (n, h, d) = (vd.tokens, vd.heads, vd.head_dim);
    let cuv = be.read_i32(OP, "cu_seqlens", &cu)?;
    check::cu_seqlens(&cuv, n)?;
    let (qv, kv_, vv, ov) = (be.view(&q)?, be.view(&k)?, be.view(&v)?, be.view_mut(&out)?);
    // Units: (segment, head, block of QB queries).
    let mut units = Vec::new();
    for s in 0..cuv.len() - 1 {
        let (a, b) = (cuv[s] as usize, cuv[s + 1] as usize);
        for hh in 0..h {
            let mut i = a;
            while i < b {
                units.push((a, b, hh, i, (i + QB).min(b)));
                i += QB;
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    let avx512 = be.isa.avx512();
    let pairs =
        super::isa::has_bf16_dot(be.isa) && q.dtype == DType::BF16 && k.dtype == DType::BF16;
    units.into_par_iter().for_each_init(
        || {
            (
                (
                    Vec::new(),
                    Vec::new(),
                    vec![0f32; d],
                    vec![0f32; d],
                    Vec::new(),
                ),
                Bufs::default(),
            )
        },
        |((kf, vf, qb, ob, scores), core), (a, b, hh, i0, i1)| {
            let vs = VarlenUnit {
                pairs,
                q: &qv,
                k: &kv_,
                v: &vv,
                o: &ov,
                d,
                scale,
            };
            let bufs = (kf, vf, qb, ob, scores);
            #[cfg(target_arch = "x86_64")]
            if avx512 {
                return unsafe { varlen_unit_avx512(&vs, (a, b, hh, i0, i1), bufs, core) };
            }
            unsafe { varlen_unit(&vs, (a, b, hh, i0, i1), bufs, exp_libm) }
        },
    );
    Ok(())
}

/// What the units of one varlen call share.
struct VarlenUnit<'a> {
    /// Queries and keys are bf16 and the CPU has the bf16 dot: scores from bf16 pairs.
    pairs: bool,
    q: &'a super::View,
    k: &'a super::View,
    v: &'a super::View,
    o: &'a super::View,
    d: usize,
    scale: f32,
}

type VarlenBufs<'a> = (
    &'a mut Vec<f32>,
    &'a mut Vec<f32>,
    &'a mut Vec<f32>,
    &'a mut Vec<f32>,
    &'a mut Vec<f32>,
);

/// Queries `i0..i1` of segment `a..b`, head `hh`: the segment's keys and values widened once.
///
/// # Safety
/// The views are checked by the op and the unit lies inside them.
#[inline(always)]
unsafe fn varlen_unit(
    u: &VarlenUnit,
    (a, b, hh, i0, i1): (usize, usize, usize, usize, usize),
    (kf, vf, qb, ob, scores): VarlenBufs,
    exp: fn(&mut [f32], f32),
) {
    let (nk, d) = (b - a, u.d);
    kf.resize(nk * d, 0.0);
    vf.resize(nk * d, 0.0);
    for j in 0..nk {
        load(u.k.at(a + j, hh * d), u.k.dt, &mut kf[j * d..(j + 1) * d]);
        load(u.v.at(a + j, hh * d), u.v.dt, &mut vf[j * d..(j + 1) * d]);
    }
    for i in i0..i1 {
        load(u.q.at(i, hh * d), u.q.dt, qb);
        attend(qb, 1, d, nk, u.scale, kf, vf, scores, ob, exp);
        store(u.o.at(i, hh * d), u.o.dt, ob);
    }
}

/// [`varlen_unit`] compiled for AVX-512 with the vector `exp`; at a [`fast_dim`] head dim the
/// queries go through [`block_core`] together.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn varlen_unit_avx512(
    u: &VarlenUnit,
    unit: (usize, usize, usize, usize, usize),
    bufs: VarlenBufs,
    core: &mut Bufs,
) {
    let (a, b, hh, i0, i1) = unit;
    let (nk, d) = (b - a, u.d);
    if !fast_dim(d) {
        return varlen_unit(u, unit, bufs, exp_avx512);
    }
    core.vf.resize(nk * d, 0.0);
    core.kf.resize(nk.div_ceil(16) * 16 * d, 0.0);
    for j in 0..nk {
        load(
            u.k.at(a + j, hh * d),
            u.k.dt,
            &mut core.kf[j * d..(j + 1) * d],
        );
        load(
            u.v.at(a + j, hh * d),
            u.v.dt,
            &mut core.vf[j * d..(j + 1) * d],
        );
    }
    let nq = i1 - i0;
    core.qb.resize(nq.div_ceil(4) * 4 * d, 0.0);
    for i in 0..nq {
        load(
            u.q.at(i0 + i, hh * d),
            u.q.dt,
            &mut core.qb[i * d..(i + 1) * d],
        );
    }
    match d {
        128 => block_core::<128>(core, nk, nq, |_| nk, u.scale, u.pairs),
        _ => block_core::<80>(core, nk, nq, |_| nk, u.scale, u.pairs),
    }
    for i in 0..nq {
        store(u.o.at(i0 + i, hh * d), u.o.dt, &core.ob[i * d..(i + 1) * d]);
    }
}
