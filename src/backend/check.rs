//! The contract of every op: the element types, shapes and strides a backend may be handed, one
//! function per op, called by every backend before it computes. Each validates the operands
//! and returns the dimensions the op works with, so a backend keeps only what is its own
//! (alignment for wide loads, pointer lookups, launch limits, checks of values it reads).
//!
//! Errors name the op and the operand (`matmul: x [3, 5] and w [5, 4] do not fit: ...`).
//! Layout rules shared by all ops are in the module docs of [`super`]: row-major, a first
//! dimension stride (`row_stride`), contiguous below it.

use super::{Epilogue, PagedKv, TRef};
use crate::error::{Error, Result};
use crate::tensor::DType;

fn bad(op: &str, msg: impl std::fmt::Display) -> Error {
    Error::Other(format!("{op}: {msg}"))
}

/// `Ok(())` when `cond` holds, else the error `msg()` names.
fn need(cond: bool, op: &str, msg: impl FnOnce() -> String) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(bad(op, msg()))
    }
}

/// An activation: f32 or bf16, and f16, which every element converter also handles.
pub fn act(op: &str, name: &str, t: &TRef) -> Result<()> {
    need(t.dtype.is_float(), op, || {
        format!("{name} must be f32 or bf16 (or f16), got {}", t.dtype)
    })
}

/// A float weight (bf16, f16, f32), for operands that have no quantized form.
pub fn float_weight(op: &str, name: &str, t: &TRef) -> Result<()> {
    need(t.dtype.is_float(), op, || {
        format!("{name} must be a float weight type, got {}", t.dtype)
    })
}

fn i32_of(op: &str, name: &str, t: &TRef) -> Result<()> {
    need(t.dtype == DType::I32, op, || {
        format!("{name} must be i32, got {}", t.dtype)
    })
}

fn dims(op: &str, name: &str, t: &TRef, want: &[usize]) -> Result<()> {
    need(t.shape.dims() == want, op, || {
        format!("{name} has shape {:?}, expected {want:?}", t.shape)
    })
}

/// Bytes per row of a quantized `[rows, k]` weight, after checking that `dt` is a block type
/// and that K fills whole blocks.
pub fn quant_row_bytes(op: &str, dt: DType, k: usize) -> Result<usize> {
    need(dt.is_quantized(), op, || {
        format!("{dt} is not a quantized weight type")
    })?;
    need(k > 0 && k.is_multiple_of(dt.block_len()), op, || {
        format!(
            "K = {k} is not a positive multiple of the {dt} block size {}",
            dt.block_len()
        )
    })?;
    Ok(dt.bytes_for(k))
}

/// `out[t, :] = table[ids[t], :]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmbeddingDims {
    pub vocab: usize,
    pub dim: usize,
    pub tokens: usize,
    /// Bytes per table row, for quantized tables (contiguous rows).
    pub quant_row_bytes: Option<usize>,
}

/// table [V, D] (float, or quantized with contiguous rows of whole blocks), ids [T] i32,
/// out [T, D] activations. Ids outside the table are the backend's to report or zero-fill.
pub fn embedding(table: &TRef, ids: &TRef, out: &TRef) -> Result<EmbeddingDims> {
    const OP: &str = "embedding";
    need(table.shape.rank() == 2, OP, || {
        format!("table must be [V, D], got {:?}", table.shape)
    })?;
    let (vocab, dim) = (table.shape.dim(0), table.shape.dim(1));
    let quant_row_bytes = if table.dtype.is_quantized() {
        need(table.is_contiguous(), OP, || {
            format!("{} table must be contiguous", table.dtype)
        })?;
        Some(quant_row_bytes(OP, table.dtype, dim)?)
    } else {
        float_weight(OP, "table", table)?;
        None
    };
    i32_of(OP, "ids", ids)?;
    need(ids.shape.rank() == 1, OP, || {
        format!("ids must be [T], got {:?}", ids.shape)
    })?;
    let tokens = ids.shape.dim(0);
    act(OP, "out", out)?;
    dims(OP, "out", out, &[tokens, dim])?;
    Ok(EmbeddingDims {
        vocab,
        dim,
        tokens,
        quant_row_bytes,
    })
}

/// RMSNorm over vectors of D elements: `slices` first-dimension slices (`row_stride` apart) of
/// `per_slice` contiguous vectors each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NormDims {
    pub d: usize,
    pub slices: usize,
    pub per_slice: usize,
}

impl NormDims {
    pub fn vectors(&self) -> usize {
        self.slices * self.per_slice
    }
}

/// x [.., D] and out of x's shape (activations), w [D] a float weight, D > 0.
pub fn rms_norm(x: &TRef, w: &TRef, out: &TRef) -> Result<NormDims> {
    const OP: &str = "rms_norm";
    act(OP, "x", x)?;
    act(OP, "out", out)?;
    float_weight(OP, "w", w)?;
    need(w.shape.rank() == 1, OP, || {
        format!("w must be [D], got {:?}", w.shape)
    })?;
    let d = w.shape.dim(0);
    need(d > 0 && x.shape.dim(-1) == d, OP, || {
        format!("x {:?} does not end in D = {d}", x.shape)
    })?;
    need(out.shape == x.shape, OP, || {
        format!("out {:?} differs from x {:?}", out.shape, x.shape)
    })?;
    let (slices, per_slice) = if x.shape.rank() == 1 {
        (1, 1)
    } else {
        (x.shape.rows(), x.shape.row_len() / d)
    };
    Ok(NormDims {
        d,
        slices,
        per_slice,
    })
}

/// `out[M, N] = x[M, K] @ w[N, K]^T (+ bias)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulDims {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// Bytes per weight row for quantized weights (contiguous rows).
    pub quant_row_bytes: Option<usize>,
}

/// x [M, K] and out [M, N] activations (rows may be strided), w [N, K] (float, or quantized
/// with contiguous rows of whole blocks), bias [N] a float weight.
pub fn matmul(x: &TRef, w: &TRef, bias: Option<&TRef>, out: &TRef) -> Result<MatmulDims> {
    const OP: &str = "matmul";
    act(OP, "x", x)?;
    act(OP, "out", out)?;
    need(w.shape.rank() == 2, OP, || {
        format!("w must be [N, K], got {:?}", w.shape)
    })?;
    let (n, k) = (w.shape.dim(0), w.shape.dim(1));
    let quant_row_bytes = if w.dtype.is_quantized() {
        need(w.is_contiguous(), OP, || {
            format!(
                "{} w must be a contiguous [N, K], got {:?}",
                w.dtype, w.shape
            )
        })?;
        Some(quant_row_bytes(OP, w.dtype, k)?)
    } else {
        float_weight(OP, "w", w)?;
        None
    };
    // x is [M, K]: dimensions between the first and the last (if any) are 1.
    need(x.shape.row_len() == k && x.shape.dim(-1) == k, OP, || {
        format!(
            "x {:?} and w {:?} do not fit: x rows must hold K = {k}",
            x.shape, w.shape
        )
    })?;
    let m = x.shape.rows();
    need(
        out.shape.rows() == m && out.shape.row_len() == n && out.shape.dim(-1) == n,
        OP,
        || format!("out {:?} is not [{m}, {n}]", out.shape),
    )?;
    if let Some(b) = bias {
        float_weight(OP, "bias", b)?;
        need(b.shape.dims() == [n], OP, || {
            format!("bias {:?} is not [{n}]", b.shape)
        })?;
    }
    Ok(MatmulDims {
        m,
        n,
        k,
        quant_row_bytes,
    })
}

/// Whether two tensors share bytes (same buffer, intersecting byte ranges).
pub fn overlaps(a: &TRef, b: &TRef) -> bool {
    a.buf == b.buf
        && a.span_bytes() > 0
        && b.span_bytes() > 0
        && a.offset < b.offset + b.span_bytes()
        && b.offset < a.offset + a.span_bytes()
}

/// `out = epi(round(x @ w^T + bias))`: the dimensions of the matmul (`n` = rows of w; for
/// SwiGLU that is 2F and out has F columns).
pub fn matmul_fused(
    x: &TRef,
    w: &TRef,
    bias: Option<&TRef>,
    epi: &Epilogue,
    out: &TRef,
) -> Result<MatmulDims> {
    const OP: &str = "matmul_fused";
    act(OP, "out", out)?;
    let n = if w.shape.rank() == 2 {
        w.shape.dim(0)
    } else {
        0
    };
    let y = match epi {
        Epilogue::SwiGlu => {
            need(n % 2 == 0, OP, || {
                format!(
                    "SwiGLU needs w = [gate; up] with an even row count, got {:?}",
                    w.shape
                )
            })?;
            need(out.shape.row_len() == n / 2, OP, || {
                format!(
                    "SwiGLU out {:?} must have {} columns (half of w's {n} rows)",
                    out.shape,
                    n / 2
                )
            })?;
            TRef {
                shape: crate::tensor::Shape::new(&[out.shape.rows(), n]),
                ..*out
            }
        }
        _ => *out,
    };
    // The matmul's own contract, on the [M, N] intermediate the epilogue reads.
    let d = matmul(x, w, bias, &y)
        .map_err(|e| bad(OP, e.to_string().trim_start_matches("matmul: ")))?;
    if let Epilogue::Add(r) = epi {
        act(OP, "res", r)?;
        need(r.shape == out.shape, OP, || {
            format!("res {:?} differs from out {:?}", r.shape, out.shape)
        })?;
        need(!overlaps(r, out), OP, || "res must not overlap out".into())?;
    }
    Ok(d)
}

/// A row-wise map: `rows` first-dimension slices of `cols` contiguous elements (each operand
/// with its own row stride).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapDims {
    pub rows: usize,
    pub cols: usize,
}

/// Every input has out's shape; all are activations (their element types may differ).
fn map(op: &str, ins: &[(&str, &TRef)], out: &TRef) -> Result<MapDims> {
    act(op, "out", out)?;
    for (name, t) in ins {
        act(op, name, t)?;
        need(t.shape == out.shape, op, || {
            format!(
                "{name} has shape {:?}, which differs from out {:?}",
                t.shape, out.shape
            )
        })?;
    }
    Ok(MapDims {
        rows: out.shape.rows(),
        cols: out.shape.row_len(),
    })
}

/// `out = round(a + b)`.
pub fn add(a: &TRef, b: &TRef, out: &TRef) -> Result<MapDims> {
    map("add", &[("a", a), ("b", b)], out)
}

/// `out = round(round(silu(gate)) * up)`.
pub fn swiglu(gate: &TRef, up: &TRef, out: &TRef) -> Result<MapDims> {
    map("swiglu", &[("gate", gate), ("up", up)], out)
}

pub fn gelu(x: &TRef, out: &TRef) -> Result<MapDims> {
    map("gelu", &[("x", x)], out)
}

/// Element type conversion between activation types.
pub fn cast(x: &TRef, out: &TRef) -> Result<MapDims> {
    map("cast", &[("x", x)], out)
}

/// Rotary embeddings over x [T, H, d].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RopeDims {
    pub tokens: usize,
    pub heads: usize,
    pub head_dim: usize,
}

/// x [T, H, d] and out of x's shape, activations, d even.
fn rope_x(op: &str, x: &TRef, out: &TRef) -> Result<RopeDims> {
    act(op, "x", x)?;
    act(op, "out", out)?;
    need(x.shape.rank() == 3, op, || {
        format!("x must be [T, H, d], got {:?}", x.shape)
    })?;
    need(out.shape == x.shape, op, || {
        format!("out {:?} differs from x {:?}", out.shape, x.shape)
    })?;
    let (tokens, heads, head_dim) = (x.shape.dim(0), x.shape.dim(1), x.shape.dim(2));
    need(head_dim % 2 == 0, op, || {
        format!("head_dim {head_dim} must be even")
    })?;
    Ok(RopeDims {
        tokens,
        heads,
        head_dim,
    })
}

/// x [T, H, d], pos [3, T] i32, sections summing to d / 2.
pub fn rope_mrope(x: &TRef, pos: &TRef, out: &TRef, sections: [usize; 3]) -> Result<RopeDims> {
    const OP: &str = "rope_mrope";
    let r = rope_x(OP, x, out)?;
    need(sections.iter().sum::<usize>() == r.head_dim / 2, OP, || {
        format!(
            "sections {sections:?} must sum to head_dim/2 = {}",
            r.head_dim / 2
        )
    })?;
    i32_of(OP, "pos", pos)?;
    dims(OP, "pos", pos, &[3, r.tokens])?;
    Ok(r)
}

/// x [N, H, d] with d a multiple of 4, pos [N, 2] i32 (row, col).
pub fn rope_vision(x: &TRef, pos: &TRef, out: &TRef) -> Result<RopeDims> {
    const OP: &str = "rope_vision";
    let r = rope_x(OP, x, out)?;
    need(r.head_dim % 4 == 0, OP, || {
        format!("head_dim {} must be a multiple of 4", r.head_dim)
    })?;
    i32_of(OP, "pos", pos)?;
    dims(OP, "pos", pos, &[r.tokens, 2])?;
    Ok(r)
}

/// The pool layout and the CSR tensors' types and sizes for a step of `tokens` rows; returns
/// the sequence count B (their values are checked by [`paged_values`] where a backend reads
/// them: see `cpu::attention::read_seqs`).
fn paged_kv(op: &str, kv: &PagedKv, layer: usize) -> Result<usize> {
    let l = &kv.layout;
    need(l.dtype.is_float(), op, || {
        format!("KV pool must be f32 or bf16 (or f16), got {}", l.dtype)
    })?;
    need(layer < l.n_layers, op, || {
        format!("layer {layer} out of range (pool has {})", l.n_layers)
    })?;
    need(
        l.page_size > 0 && l.n_kv_heads > 0 && l.head_dim > 0,
        op,
        || "KV layout has a zero dimension".into(),
    )?;
    i32_of(op, "qo_indptr", &kv.qo_indptr)?;
    need(kv.qo_indptr.shape.numel() >= 2, op, || {
        format!(
            "qo_indptr {:?} needs B + 1 >= 2 entries",
            kv.qo_indptr.shape
        )
    })?;
    let b = kv.batch();
    for (name, t, min) in [
        ("indptr", &kv.indptr, b + 1),
        ("indices", &kv.indices, 0),
        ("last_page_len", &kv.last_page_len, b),
    ] {
        i32_of(op, name, t)?;
        need(t.shape.numel() >= min, op, || {
            format!(
                "{name} {:?} needs at least {min} entries for {b} sequences",
                t.shape
            )
        })?;
    }
    Ok(b)
}

/// One sequence of a paged step, from the CSR values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PagedSeq {
    /// Its first row in q / k / v / out.
    pub q0: usize,
    /// Its rows in the step (its last `n` tokens).
    pub n: usize,
    pub kv_len: usize,
    /// `indices[p0 .. p0 + pages]` are its pages.
    pub p0: usize,
    pub pages: usize,
}

/// The CSR values of a paged step of `tokens` rows: `qo_indptr` rises from 0 to `tokens`,
/// every page range lies inside `indices` and every page id inside the pool, last page lengths
/// are in `1..=page_size`, and each sequence holds at least its step rows. Backends that read
/// the tables on the host call this; kernels skip what would fail it.
pub fn paged_values(
    op: &str,
    kv: &PagedKv,
    tokens: usize,
    qo: &[i32],
    indptr: &[i32],
    indices: &[i32],
    last: &[i32],
) -> Result<Vec<PagedSeq>> {
    let l = &kv.layout;
    let b = qo.len().saturating_sub(1);
    let ok = qo.first() == Some(&0)
        && qo.last().is_some_and(|&e| e >= 0 && e as usize == tokens)
        && qo.windows(2).all(|w| w[0] <= w[1]);
    need(ok, op, || {
        format!("qo_indptr {qo:?} must rise from 0 to the {tokens} rows of the step")
    })?;
    need(indptr.len() > b && last.len() >= b, op, || {
        format!("indptr / last_page_len are too short for {b} sequences")
    })?;
    let mut seqs = Vec::with_capacity(b);
    for s in 0..b {
        let (a, e) = (indptr[s], indptr[s + 1]);
        need(a >= 0 && e >= a && e as usize <= indices.len(), op, || {
            format!(
                "indptr [{a}, {e}] of sequence {s} is not a range inside indices ({})",
                indices.len()
            )
        })?;
        for (i, &p) in indices[a as usize..e as usize].iter().enumerate() {
            need(p >= 0 && (p as usize) < l.n_pages, op, || {
                format!(
                    "page index {p} (entry {}) outside the pool of {} pages",
                    a as usize + i,
                    l.n_pages
                )
            })?;
        }
        let pages = (e - a) as usize;
        let kv_len = if pages == 0 {
            0
        } else {
            let lp = last[s];
            need(lp >= 1 && lp as usize <= l.page_size, op, || {
                format!(
                    "last_page_len {lp} of sequence {s} outside 1..={}",
                    l.page_size
                )
            })?;
            (pages - 1) * l.page_size + lp as usize
        };
        let n = (qo[s + 1] - qo[s]) as usize;
        need(n <= kv_len, op, || {
            format!("sequence {s} has {n} rows in the step but the page table holds only {kv_len} tokens")
        })?;
        seqs.push(PagedSeq {
            q0: qo[s] as usize,
            n,
            kv_len,
            p0: a as usize,
            pages,
        });
    }
    Ok(seqs)
}

/// `t` is [rows (any, or exactly `rows`), heads, d], activations.
fn heads(op: &str, name: &str, t: &TRef, rows: Option<usize>, h: usize, d: usize) -> Result<()> {
    act(op, name, t)?;
    let s = t.shape.dims();
    need(
        s.len() == 3 && s[1] == h && s[2] == d && rows.is_none_or(|r| r == s[0]),
        op,
        || {
            let rows = rows.map_or("T".to_string(), |r| r.to_string());
            format!(
                "{name} has shape {:?}, expected [{rows}, {h}, {d}]",
                t.shape
            )
        },
    )
}

/// Writes k, v [T, Hkv, d] (activations) into the pool; the pool is the layout's. Returns T.
pub fn kv_append(k: &TRef, v: &TRef, kv: &PagedKv, layer: usize) -> Result<usize> {
    const OP: &str = "kv_append";
    paged_kv(OP, kv, layer)?;
    let l = &kv.layout;
    heads(OP, "k", k, None, l.n_kv_heads, l.head_dim)?;
    let tokens = k.shape.dim(0);
    heads(OP, "v", v, Some(tokens), l.n_kv_heads, l.head_dim)?;
    Ok(tokens)
}

/// Causal GQA attention of q [T, Hq, d] over the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PagedDims {
    pub tokens: usize,
    /// Sequences in the step (B).
    pub seqs: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// q and out [T, Hq, d] activations with d the pool's head_dim and Hq a multiple of its KV
/// heads.
pub fn attention_paged(q: &TRef, kv: &PagedKv, layer: usize, out: &TRef) -> Result<PagedDims> {
    const OP: &str = "attention_paged";
    let seqs = paged_kv(OP, kv, layer)?;
    let (hkv, d) = (kv.layout.n_kv_heads, kv.layout.head_dim);
    act(OP, "q", q)?;
    let s = q.shape.dims();
    need(s.len() == 3 && s[2] == d, OP, || {
        format!("q has shape {:?}, expected [T, Hq, {d}]", q.shape)
    })?;
    let (tokens, q_heads) = (s[0], s[1]);
    need(q_heads > 0 && q_heads % hkv == 0, OP, || {
        format!("{q_heads} query heads are not a multiple of {hkv} KV heads")
    })?;
    heads(OP, "out", out, Some(tokens), q_heads, d)?;
    Ok(PagedDims {
        tokens,
        seqs,
        q_heads,
        kv_heads: hkv,
        head_dim: d,
    })
}

/// Segment attention over q, k, v [N, H, d].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VarlenDims {
    pub tokens: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub segments: usize,
}

/// q, k, v, out [N, H, d] activations, cu_seqlens [S + 1] i32 (its values: [`cu_seqlens`]).
pub fn attention_varlen(q: &TRef, k: &TRef, v: &TRef, cu: &TRef, out: &TRef) -> Result<VarlenDims> {
    const OP: &str = "attention_varlen";
    act(OP, "q", q)?;
    need(q.shape.rank() == 3, OP, || {
        format!("q must be [N, H, d], got {:?}", q.shape)
    })?;
    let (n, h, d) = (q.shape.dim(0), q.shape.dim(1), q.shape.dim(2));
    heads(OP, "k", k, Some(n), h, d)?;
    heads(OP, "v", v, Some(n), h, d)?;
    heads(OP, "out", out, Some(n), h, d)?;
    i32_of(OP, "cu_seqlens", cu)?;
    need(cu.shape.rank() == 1 && cu.shape.dim(0) >= 1, OP, || {
        format!("cu_seqlens must be [S + 1], got {:?}", cu.shape)
    })?;
    Ok(VarlenDims {
        tokens: n,
        heads: h,
        head_dim: d,
        segments: cu.shape.dim(0) - 1,
    })
}

/// The values of cu_seqlens: they rise from 0 to N. Returns the longest segment.
pub fn cu_seqlens(bounds: &[i32], n: usize) -> Result<usize> {
    let ok = bounds.first() == Some(&0)
        && bounds.last().is_some_and(|&e| e as usize == n)
        && bounds.windows(2).all(|w| w[0] <= w[1]);
    need(ok, "attention_varlen", || {
        format!("cu_seqlens {bounds:?} must rise from 0 to N = {n}")
    })?;
    Ok(bounds
        .windows(2)
        .map(|w| (w[1] - w[0]) as usize)
        .max()
        .unwrap_or(0))
}

/// gather_rows / scatter_rows: `n_idx` rows of `row_len` elements move between the indexed
/// tensor and the dense one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowsDims {
    pub n_idx: usize,
    pub row_len: usize,
    /// Rows of the indexed tensor (valid indices are below it).
    pub indexed_rows: usize,
}

/// `indexed` is the tensor idx points into, `dense` the one read or written in order: same
/// plain element type, same row length; idx i32 with one entry per dense row.
fn index_rows(op: &str, indexed: &TRef, dense: &TRef, idx: &TRef) -> Result<RowsDims> {
    need(
        indexed.dtype == dense.dtype && !indexed.dtype.is_quantized(),
        op,
        || {
            format!(
                "element types {} and {} must match (plain types)",
                indexed.dtype, dense.dtype
            )
        },
    )?;
    need(indexed.shape.row_len() == dense.shape.row_len(), op, || {
        format!(
            "row shapes differ: {:?} vs {:?}",
            indexed.shape, dense.shape
        )
    })?;
    i32_of(op, "idx", idx)?;
    let n_idx = idx.shape.numel();
    need(n_idx == dense.shape.rows(), op, || {
        format!("idx has {n_idx} entries for {} rows", dense.shape.rows())
    })?;
    Ok(RowsDims {
        n_idx,
        row_len: dense.shape.row_len(),
        indexed_rows: indexed.shape.rows(),
    })
}

/// `out[i, :] = x[idx[i], :]`.
pub fn gather_rows(x: &TRef, idx: &TRef, out: &TRef) -> Result<RowsDims> {
    index_rows("gather_rows", x, out, idx)
}

/// `dst[idx[i], :] = src[i, :]`.
pub fn scatter_rows(src: &TRef, idx: &TRef, dst: &TRef) -> Result<RowsDims> {
    index_rows("scatter_rows", dst, src, idx)
}

/// Rows of a [R, N] tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArgmaxDims {
    pub rows: usize,
    pub cols: usize,
}

/// x [R, N] activations with N > 0, out [R] i32.
pub fn argmax(x: &TRef, out: &TRef) -> Result<ArgmaxDims> {
    const OP: &str = "argmax";
    act(OP, "x", x)?;
    need(x.shape.rank() == 2, OP, || {
        format!("x must be [R, N], got {:?}", x.shape)
    })?;
    let (rows, cols) = (x.shape.dim(0), x.shape.dim(1));
    need(cols > 0, OP, || "x has empty rows".into())?;
    i32_of(OP, "out", out)?;
    dims(OP, "out", out, &[rows])?;
    Ok(ArgmaxDims { rows, cols })
}

/// Rows of logits to sample from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleDims {
    pub rows: usize,
    pub vocab: usize,
    /// Elements between the starts of consecutive rows.
    pub stride: usize,
    /// Words between consecutive rows' arguments: `WORDS` for per-row arguments, 0 when every
    /// row reads the one set.
    pub args_stride: usize,
}

/// logits [R, V] or [V] (f32, bf16, f16) with 0 < V < 2^24; args i32, either [R, WORDS]
/// (contiguous, a set per row) or exactly WORDS elements (one set for all rows), WORDS =
/// [`SampleArgs::WORDS`](super::SampleArgs::WORDS); out R contiguous i32.
pub fn sample(logits: &TRef, args: &TRef, out: &TRef) -> Result<SampleDims> {
    const OP: &str = "sample";
    need(logits.dtype.is_float(), OP, || {
        format!("logits are {}, not f32/bf16/f16", logits.dtype)
    })?;
    let (rows, vocab) = match logits.shape.rank() {
        1 => (1, logits.shape.dim(0)),
        2 => (logits.shape.dim(0), logits.shape.dim(1)),
        _ => return Err(bad(OP, format!("logits {:?} must be [R, V]", logits.shape))),
    };
    // Weights are at most 2^40 and their sums are u64: below 2^24 entries they cannot wrap.
    need(vocab > 0 && vocab < 1 << 24, OP, || {
        format!("a vocabulary of {vocab} entries (1 to 2^24 - 1 supported)")
    })?;
    let words = super::SampleArgs::WORDS;
    let per_row = args.shape.rank() == 2 && args.shape.dims() == [rows, words];
    need(
        args.dtype == DType::I32
            && args.is_contiguous()
            && (per_row || args.shape.numel() == words),
        OP,
        || {
            format!(
                "args {:?} {} must be i32 [{rows}, {words}] (a set per row) or [{words}]",
                args.shape, args.dtype
            )
        },
    )?;
    need(
        out.dtype == DType::I32 && out.shape.numel() == rows && out.is_contiguous(),
        OP,
        || {
            format!(
                "out {:?} {} must be {rows} contiguous i32",
                out.shape, out.dtype
            )
        },
    )?;
    let stride = if logits.shape.rank() == 1 {
        vocab
    } else {
        logits.row_stride
    };
    Ok(SampleDims {
        rows,
        vocab,
        stride,
        args_stride: if per_row && rows > 1 { words } else { 0 },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BufId;
    use crate::tensor::Shape;

    fn t(dt: DType, dims: &[usize]) -> TRef {
        TRef::new(BufId(0), 0, dt, Shape::new(dims))
    }

    fn msg<T: std::fmt::Debug>(r: Result<T>) -> String {
        r.expect_err("must be an error").to_string()
    }

    #[test]
    fn sample_bounds_the_vocabulary() {
        let (args, out) = (t(DType::I32, &[8]), t(DType::I32, &[1]));
        let ok = sample(&t(DType::F32, &[1, (1 << 24) - 1]), &args, &out).unwrap();
        assert_eq!(
            (ok.rows, ok.vocab, ok.stride, ok.args_stride),
            (1, (1 << 24) - 1, (1 << 24) - 1, 0)
        );
        // 2^24 weights of 2^40 (all-equal logits) would wrap the u64 total.
        let e = msg(sample(&t(DType::F32, &[1, 1 << 24]), &args, &out));
        assert!(e.contains("vocabulary"), "{e}");
    }

    /// Arguments are one set for all rows, or one set per row; nothing in between.
    #[test]
    fn sample_args_per_row_or_shared() {
        let x = t(DType::F32, &[3, 10]);
        let out = t(DType::I32, &[3]);
        let per_row = sample(&x, &t(DType::I32, &[3, 8]), &out).unwrap();
        assert_eq!(per_row.args_stride, 8);
        let shared = sample(&x, &t(DType::I32, &[8]), &out).unwrap();
        assert_eq!(shared.args_stride, 0);
        for bad in [&[2, 8][..], &[3, 7], &[9], &[24]] {
            let e = msg(sample(&x, &t(DType::I32, bad), &out));
            assert!(e.contains("sample: args") && e.contains("[3, 8]"), "{e}");
        }
        let e = msg(sample(&x, &t(DType::F32, &[3, 8]), &out));
        assert!(e.contains("args"), "{e}");
    }

    /// The CSR values of a paged step: each failure names what is wrong.
    #[test]
    fn paged_values_checks() {
        use crate::backend::KvLayout;
        let i = |n: usize| t(DType::I32, &[n]);
        let kv = PagedKv {
            layout: KvLayout {
                buf: BufId(0),
                dtype: DType::F32,
                n_layers: 1,
                n_pages: 4,
                page_size: 4,
                n_kv_heads: 1,
                head_dim: 8,
            },
            qo_indptr: i(3),
            indptr: i(3),
            indices: i(3),
            last_page_len: i(2),
        };
        let seqs = paged_values("op", &kv, 3, &[0, 1, 3], &[0, 2, 3], &[3, 0, 1], &[1, 2]).unwrap();
        assert_eq!(
            seqs,
            vec![
                PagedSeq {
                    q0: 0,
                    n: 1,
                    kv_len: 5,
                    p0: 0,
                    pages: 2
                },
                PagedSeq {
                    q0: 1,
                    n: 2,
                    kv_len: 2,
                    p0: 2,
                    pages: 1
                },
            ]
        );
        type Csr<'a> = (&'a [i32], &'a [i32], &'a [i32], &'a [i32], &'a str);
        let cases: [Csr; 5] = [
            (
                &[0, 1, 2],
                &[0, 2, 3],
                &[3, 0, 1],
                &[1, 2],
                "rise from 0 to the 3 rows",
            ),
            (&[0, 2, 1], &[0, 2, 3], &[3, 0, 1], &[1, 2], "qo_indptr"),
            (
                &[0, 1, 3],
                &[0, 2, 4],
                &[3, 0, 1],
                &[1, 2],
                "not a range inside indices",
            ),
            (&[0, 1, 3], &[0, 2, 3], &[3, 9, 1], &[1, 2], "page index 9"),
            (
                &[0, 1, 3],
                &[0, 2, 3],
                &[3, 0, 1],
                &[1, 1],
                "holds only 1 tokens",
            ),
        ];
        for (qo, ip, idx, last, want) in cases {
            let e = msg(paged_values("op", &kv, 3, qo, ip, idx, last));
            assert!(e.starts_with("op: ") && e.contains(want), "{e}");
        }
        let e = msg(paged_values(
            "op",
            &kv,
            3,
            &[0, 1, 3],
            &[0, 2, 3],
            &[3, 0, 1],
            &[1, 5],
        ));
        assert!(e.contains("last_page_len 5 of sequence 1"), "{e}");
    }

    /// K must fill whole blocks; a plain type is not a quantized weight.
    #[test]
    fn quantized_rows_fill_whole_blocks() {
        assert_eq!(
            quant_row_bytes("matmul", DType::Q8_0, 3584).unwrap(),
            112 * 34
        );
        assert_eq!(
            quant_row_bytes("matmul", DType::Q4K, 3584).unwrap(),
            14 * 144
        );
        assert_eq!(
            quant_row_bytes("matmul", DType::Q6K, 18944).unwrap(),
            74 * 210
        );
        assert_eq!(quant_row_bytes("matmul", DType::Q8_0, 96).unwrap(), 3 * 34);
        let e = msg(quant_row_bytes("matmul", DType::Q4K, 3420));
        assert!(
            e.contains("matmul")
                && e.contains("K = 3420")
                && e.contains("q4_k")
                && e.contains("256"),
            "{e}"
        );
        let e = msg(quant_row_bytes("matmul", DType::Q8_0, 48));
        assert!(e.contains("K = 48") && e.contains("32"), "{e}");
        assert!(quant_row_bytes("embedding", DType::Q6K, 0).is_err());
        assert!(msg(quant_row_bytes("matmul", DType::BF16, 64)).contains("bf16"));
    }

    /// Dimensions come back parsed; strided views of wider buffers are fine.
    #[test]
    fn matmul_dims_and_errors() {
        let x = TRef {
            row_stride: 4608,
            ..t(DType::BF16, &[7, 3584])
        };
        let w = t(DType::Q4K, &[512, 3584]);
        let d = matmul(
            &x,
            &w,
            Some(&t(DType::F32, &[512])),
            &t(DType::F32, &[7, 512]),
        )
        .unwrap();
        assert_eq!(
            (d.m, d.n, d.k, d.quant_row_bytes),
            (7, 512, 3584, Some(14 * 144))
        );
        let o = t(DType::BF16, &[7, 512]);
        let e = msg(matmul(&x, &w, Some(&t(DType::I32, &[512])), &o));
        assert!(e.starts_with("matmul: bias must be a float"), "{e}");
        let e = msg(matmul(&x, &w, Some(&t(DType::BF16, &[1, 512])), &o));
        assert!(e.contains("bias [1, 512] is not [512]"), "{e}");
        let strided_w = TRef {
            row_stride: 4096,
            ..w
        };
        assert!(msg(matmul(&x, &strided_w, None, &o)).contains("contiguous"));
        // x [T, H, d] is not [M, K] even when H·d = K.
        let e = msg(matmul(&t(DType::BF16, &[7, 28, 128]), &w, None, &o));
        assert!(e.contains("do not fit"), "{e}");
    }

    #[test]
    fn norm_dims_cover_rank_one_and_three() {
        let w = t(DType::BF16, &[128]);
        let x = t(DType::BF16, &[128]);
        assert_eq!(rms_norm(&x, &w, &x).unwrap().vectors(), 1);
        let x = TRef {
            row_stride: 3 * 28 * 128,
            ..t(DType::BF16, &[5, 28, 128])
        };
        let d = rms_norm(&x, &w, &x).unwrap();
        assert_eq!((d.slices, d.per_slice, d.d), (5, 28, 128));
        let e = msg(rms_norm(&x, &t(DType::Q8_0, &[128]), &x));
        assert!(e.contains("w must be a float weight type, got q8_0"), "{e}");
    }

    #[test]
    fn cu_seqlens_values() {
        assert_eq!(cu_seqlens(&[0, 64, 112, 128, 128, 185], 185).unwrap(), 64);
        assert_eq!(cu_seqlens(&[0], 0).unwrap(), 0);
        for bad in [&[0, 3][..], &[1, 4], &[0, 3, 2, 4], &[]] {
            let e = msg(cu_seqlens(bad, 4));
            assert!(e.contains("attention_varlen: cu_seqlens"), "{e}");
        }
    }
}
