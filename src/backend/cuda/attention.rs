//! Launchers for kernels/attention.cu: paged decode (split-KV + merge), paged prefill, varlen
//! (ViT) attention and kv_append; and for kernels/attention_mma.cu, the tensor-core paged prefill
//! (bf16, head_dim 128) and varlen attention (bf16, head_dim 80) that take over those shapes.

use super::launch::{Kernel, Launch};
use super::params::{
    ReelAttnMergeParams, ReelAttnParams, ReelKvAppendParams, ReelPagedKv, REEL_DECODE_SPLITS,
    REEL_FA_BM, REEL_FA_BN, REEL_FA_PAD, REEL_FA_PAGED_D, REEL_FA_THREADS, REEL_FA_VARLEN_D,
};
use super::{dt_code, need, CudaBackend};
use crate::backend::{Backend, PagedKv, TRef};
use crate::error::Result;
use crate::tensor::DType;

/// Largest head_dim the attention kernels stage in shared memory (DMAX in attention.cu).
pub(crate) const ATTN_DMAX: usize = 128;
/// Query rows per CTA: 4 warps x rows per warp (2 for decode, 4 for prefill and varlen).
pub(crate) const DECODE_ROWS: usize = 8;
pub(crate) const PREFILL_ROWS: usize = 16;

/// Dynamic shared memory of the tensor-core kernels at head_dim `d`: a Q tile and two stages
/// of K and V tiles, rows padded to d + 8 bf16 (87,040 B at d = 128, 56,320 B at d = 80).
pub(crate) fn fa_smem_bytes(d: usize) -> usize {
    (REEL_FA_BM as usize + 4 * REEL_FA_BN as usize) * (d + REEL_FA_PAD as usize) * 2
}

/// cp.async copies 16-byte chunks: the base and every row must be 16-byte aligned.
fn rows_16b(ptr: u64, row_stride: usize) -> bool {
    ptr % 16 == 0 && row_stride % 8 == 0
}

/// Bytes of split partials: o [splits][rows][d] f32 then lse [splits][rows] f32.
pub(crate) fn partial_bytes(splits: usize, rows: usize, d: usize) -> (usize, usize) {
    let o = splits * rows * d * 4;
    (o, o + splits * rows * 4)
}

fn check_i32(t: &TRef, what: &str, min: usize) -> Result<()> {
    need(t.dtype == DType::I32 && t.shape.numel() >= min, || {
        format!(
            "{what}: {:?} {} must be i32 with at least {min} element(s)",
            t.shape, t.dtype
        )
    })
}

impl CudaBackend {
    fn paged_params(&self, kv: &PagedKv, layer: usize, what: &str) -> Result<ReelPagedKv> {
        let l = &kv.layout;
        let dt = dt_code(l.dtype, &format!("{what} KV pool"))?;
        need(layer < l.n_layers, || {
            format!("{what}: layer {layer} of {}", l.n_layers)
        })?;
        need(l.head_dim > 0 && l.head_dim <= ATTN_DMAX, || {
            format!("{what}: head_dim {} must be in 1..={ATTN_DMAX}", l.head_dim)
        })?;
        need(l.page_size > 0 && l.n_kv_heads > 0, || {
            format!("{what}: empty page geometry")
        })?;
        let pool = self.buf(l.buf)?;
        need(pool.len >= l.total_bytes(), || {
            format!(
                "{what}: KV buffer of {} bytes is smaller than the layout's {}",
                pool.len,
                l.total_bytes()
            )
        })?;
        check_i32(&kv.indptr, &format!("{what} indptr"), 2)?;
        check_i32(&kv.indices, &format!("{what} indices"), 0)?;
        check_i32(&kv.last_page_len, &format!("{what} last_page_len"), 1)?;
        need(l.n_pages <= i32::MAX as usize, || {
            format!("{what}: {} pages", l.n_pages)
        })?;
        Ok(ReelPagedKv {
            pool: pool.ptr,
            indptr: self.ptr(&kv.indptr, what)?,
            indices: if kv.indices.shape.numel() == 0 {
                0
            } else {
                self.ptr(&kv.indices, what)?
            },
            last_page_len: self.ptr(&kv.last_page_len, what)?,
            n_pages: l.n_pages as i32,
            page_size: l.page_size as i32,
            kv_heads: l.n_kv_heads as i32,
            head_dim: l.head_dim as i32,
            layer: layer as i32,
            dt,
        })
    }

    pub(super) fn op_kv_append(
        &mut self,
        k: TRef,
        v: TRef,
        kv: &PagedKv,
        layer: usize,
    ) -> Result<()> {
        let pk = self.paged_params(kv, layer, "kv_append")?;
        let (hkv, d) = (kv.layout.n_kv_heads, kv.layout.head_dim);
        for (t, name) in [(&k, "k"), (&v, "v")] {
            need(
                t.dtype.is_float() && t.shape.rank() == 3 && t.shape.dims()[1..] == [hkv, d],
                || {
                    format!(
                        "kv_append: {name} {:?} {} must be [T, {hkv}, {d}]",
                        t.shape, t.dtype
                    )
                },
            )?;
        }
        need(k.shape == v.shape, || {
            format!("kv_append: k {:?} and v {:?} differ", k.shape, v.shape)
        })?;
        let t = k.shape.dim(0);
        if t == 0 {
            return Ok(());
        }
        let p = ReelKvAppendParams {
            k: self.ptr(&k, "kv_append k")?,
            v: self.ptr(&v, "kv_append v")?,
            kv: pk,
            tokens: t as i32,
            k_dt: dt_code(k.dtype, "kv_append k")?,
            k_stride: k.row_stride as i64,
            v_stride: v.row_stride as i64,
            v_dt: dt_code(v.dtype, "kv_append v")?,
            pad_: 0,
        };
        let l = Launch {
            grid: (t as u32, hkv as u32, 1),
            block: 128,
            dyn_smem: 0,
        };
        self.launch(Kernel::KvAppend, l, &p)
    }

    pub(super) fn op_attention_paged(
        &mut self,
        q: TRef,
        kv: &PagedKv,
        layer: usize,
        out: TRef,
        scale: f32,
    ) -> Result<()> {
        let pk = self.paged_params(kv, layer, "attention_paged")?;
        let (hkv, d) = (kv.layout.n_kv_heads, kv.layout.head_dim);
        need(
            q.dtype.is_float() && q.shape.rank() == 3 && q.shape.dim(2) == d,
            || {
                format!(
                    "attention_paged: q {:?} {} must be [T, Hq, {d}]",
                    q.shape, q.dtype
                )
            },
        )?;
        need(out.shape == q.shape && out.dtype.is_float(), || {
            format!(
                "attention_paged: out {:?} {} must match q {:?}",
                out.shape, out.dtype, q.shape
            )
        })?;
        let (t, hq) = (q.shape.dim(0), q.shape.dim(1));
        need(hq % hkv == 0 && hq > 0, || {
            format!("attention_paged: {hq} q heads is not a multiple of {hkv} KV heads")
        })?;
        if t == 0 {
            return Ok(());
        }
        let g = hq / hkv;
        let (qp, op) = (
            self.ptr(&q, "attention_paged q")?,
            self.ptr_mut(&out, "attention_paged out")?,
        );
        // Prefill in bf16 at the LLM's head_dim goes to tensor cores; f32/f16 activations,
        // other head dims and decode stay on the CUDA-core kernels.
        let mma = t > 1
            && d == REEL_FA_PAGED_D as usize
            && q.dtype == DType::BF16
            && out.dtype == DType::BF16
            && kv.layout.dtype == DType::BF16
            && rows_16b(qp, q.row_stride)
            && rows_16b(op, out.row_stride)
            && fa_smem_bytes(d) as u32 <= self.info.smem_optin
            // Its row tiles go on grid.y (limit 65535); the CUDA-core kernel puts them on x.
            && (t * g).div_ceil(REEL_FA_BM as usize) <= 65535;
        let (splits, rows_per_cta, kern) = if mma {
            (1, REEL_FA_BM as usize, Kernel::AttnPagedPrefillMma)
        } else if t == 1 {
            (
                REEL_DECODE_SPLITS as usize,
                DECODE_ROWS,
                Kernel::AttnPagedDecode,
            )
        } else {
            (1, PREFILL_ROWS, Kernel::AttnPagedPrefill)
        };
        let rows = t * hq;
        let (lse_off, total) = partial_bytes(splits, rows, d);
        let part = if splits > 1 { self.scratch(total)? } else { 0 };
        let p = ReelAttnParams {
            q: qp,
            k: 0,
            v: 0,
            out: op,
            cu_seqlens: 0,
            part_o: part,
            part_lse: if part != 0 { part + lse_off as u64 } else { 0 },
            kv: pk,
            tokens: t as i32,
            q_heads: hq as i32,
            kv_heads: hkv as i32,
            head_dim: d as i32,
            splits: splits as i32,
            segments: 0,
            q_stride: q.row_stride as i64,
            k_stride: 0,
            v_stride: 0,
            out_stride: out.row_stride as i64,
            scale_log2: scale * std::f32::consts::LOG2_E,
            q_dt: dt_code(q.dtype, "attention_paged q")?,
            kv_dt: pk.dt,
            out_dt: dt_code(out.dtype, "attention_paged out")?,
            // Pool rows start head_dim elements apart from a 256-byte aligned base.
            vec16: (kv.layout.dtype == DType::BF16 && d % 8 == 0) as i32,
            pad_: 0,
        };
        let gx = (t * g).div_ceil(rows_per_cta);
        need(gx <= i32::MAX as usize, || {
            "attention_paged: too many rows".into()
        })?;
        // The tensor-core kernel puts the KV head on x (see attention_mma.cu).
        let grid = if mma {
            (hkv as u32, gx as u32, 1)
        } else {
            (gx as u32, hkv as u32, splits as u32)
        };
        let l = Launch {
            grid,
            block: if mma { REEL_FA_THREADS } else { 128 },
            dyn_smem: if mma { fa_smem_bytes(d) as u32 } else { 0 },
        };
        self.launch(kern, l, &p)?;
        if splits > 1 {
            let mp = ReelAttnMergeParams {
                part_o: p.part_o,
                part_lse: p.part_lse,
                out: p.out,
                rows: rows as i32,
                q_heads: hq as i32,
                head_dim: d as i32,
                splits: splits as i32,
                out_stride: p.out_stride,
                out_dt: p.out_dt,
                pad_: 0,
            };
            let l = Launch {
                grid: (rows as u32, 1, 1),
                block: 128,
                dyn_smem: 0,
            };
            self.launch(Kernel::AttnMerge, l, &mp)?;
        }
        Ok(())
    }

    pub(super) fn op_attention_varlen(
        &mut self,
        q: TRef,
        k: TRef,
        v: TRef,
        cu: TRef,
        out: TRef,
        scale: f32,
    ) -> Result<()> {
        for (t, name) in [(&q, "q"), (&k, "k"), (&v, "v"), (&out, "out")] {
            need(
                t.dtype.is_float() && t.shape.rank() == 3 && t.shape == q.shape,
                || {
                    format!(
                        "attention_varlen: {name} {:?} {} must be [N, H, d] like q {:?}",
                        t.shape, t.dtype, q.shape
                    )
                },
            )?;
        }
        need(k.dtype == v.dtype, || {
            format!("attention_varlen: k is {} but v is {}", k.dtype, v.dtype)
        })?;
        let (n, h, d) = (q.shape.dim(0), q.shape.dim(1), q.shape.dim(2));
        need(d > 0 && d <= ATTN_DMAX, || {
            format!("attention_varlen: head_dim {d} must be in 1..={ATTN_DMAX}")
        })?;
        need(h <= 65535, || format!("attention_varlen: {h} heads"))?;
        need(cu.dtype == DType::I32 && cu.shape.numel() >= 1, || {
            format!(
                "attention_varlen: cu_seqlens {:?} {} must be [S+1] i32",
                cu.shape, cu.dtype
            )
        })?;
        let (kp, vp) = (
            self.ptr(&k, "attention_varlen k")?,
            self.ptr(&v, "attention_varlen v")?,
        );
        // 16-byte staging loads need bf16 rows that are 16-byte aligned.
        let vec16 = k.dtype == DType::BF16
            && d % 8 == 0
            && kp % 16 == 0
            && vp % 16 == 0
            && k.row_stride % 8 == 0
            && v.row_stride % 8 == 0;
        // The grid needs the longest segment: read the (small) boundary list back.
        let segs = cu.shape.numel() - 1;
        let mut raw = vec![0u8; (segs + 1) * 4];
        self.read(cu.buf, cu.offset, &mut raw)?;
        let bounds: Vec<i32> = raw
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        need(bounds[0] == 0 && bounds[segs] as usize == n, || {
            format!("attention_varlen: cu_seqlens {bounds:?} must run from 0 to N = {n}")
        })?;
        let mut max_len = 0usize;
        for s in 0..segs {
            let (a, b) = (bounds[s], bounds[s + 1]);
            need(a <= b, || {
                format!("attention_varlen: cu_seqlens {bounds:?} is not non-decreasing")
            })?;
            max_len = max_len.max((b - a) as usize);
        }
        if segs == 0 || max_len == 0 || h == 0 {
            return Ok(());
        }
        need(segs <= 65535, || {
            format!("attention_varlen: {segs} segments (limit 65535)")
        })?;
        let (qp, op) = (
            self.ptr(&q, "attention_varlen q")?,
            self.ptr_mut(&out, "attention_varlen out")?,
        );
        // bf16 at the ViT's head_dim goes to tensor cores.
        let mma = d == REEL_FA_VARLEN_D as usize
            && [&q, &k, &v, &out].iter().all(|t| t.dtype == DType::BF16)
            && rows_16b(qp, q.row_stride)
            && rows_16b(kp, k.row_stride)
            && rows_16b(vp, v.row_stride)
            && rows_16b(op, out.row_stride)
            && fa_smem_bytes(d) as u32 <= self.info.smem_optin;
        let p = ReelAttnParams {
            q: qp,
            k: kp,
            v: vp,
            out: op,
            cu_seqlens: self.ptr(&cu, "attention_varlen cu_seqlens")?,
            part_o: 0,
            part_lse: 0,
            kv: ReelPagedKv::default(),
            tokens: n as i32,
            q_heads: h as i32,
            kv_heads: h as i32,
            head_dim: d as i32,
            splits: 1,
            segments: segs as i32,
            q_stride: q.row_stride as i64,
            k_stride: k.row_stride as i64,
            v_stride: v.row_stride as i64,
            out_stride: out.row_stride as i64,
            scale_log2: scale * std::f32::consts::LOG2_E,
            q_dt: dt_code(q.dtype, "attention_varlen q")?,
            kv_dt: dt_code(k.dtype, "attention_varlen k")?,
            out_dt: dt_code(out.dtype, "attention_varlen out")?,
            vec16: vec16 as i32,
            pad_: 0,
        };
        let (rows_per_cta, kern, block, dyn_smem) = if mma {
            (
                REEL_FA_BM as usize,
                Kernel::AttnVarlenMma,
                REEL_FA_THREADS,
                fa_smem_bytes(d) as u32,
            )
        } else {
            (PREFILL_ROWS, Kernel::AttnVarlen, 128, 0)
        };
        let gx = max_len.div_ceil(rows_per_cta) as u32;
        let l = Launch {
            grid: (gx, segs as u32, h as u32),
            block,
            dyn_smem,
        };
        self.launch(kern, l, &p)
    }
}
