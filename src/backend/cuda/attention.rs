//! Launchers for kernels/attention.cu: paged decode (split-KV + merge), paged prefill, varlen
//! (ViT) attention and kv_append; and for kernels/attention_mma.cu, the tensor-core paged prefill
//! (bf16, head_dim 128) and varlen attention (bf16, head_dim 80) that take over those shapes.
//! cp.async and the 16-byte staging loads need rows that start on 16-byte boundaries.

use super::launch::{kernels, Launch};
use super::params::{
    ReelAttentionMergeParams, ReelAttentionParams, ReelKvAppendParams, ReelPagedKv,
    REEL_DECODE_SPLITS, REEL_FA_BM, REEL_FA_BN, REEL_FA_PAD, REEL_FA_PAGED_D, REEL_FA_THREADS,
    REEL_FA_VARLEN_D,
};
use super::{dt_code, fits_i32, need, rows_16b, CudaBackend};
use crate::backend::{check, Backend, PagedKv, TRef};
use crate::error::Result;
use crate::tensor::DType;

kernels! {
    KV_APPEND = "attention" / "kv_append";
    ATTENTION_PAGED_DECODE = "attention" / "attention_paged_decode";
    ATTENTION_PAGED_PREFILL = "attention" / "attention_paged_prefill";
    ATTENTION_VARLEN = "attention" / "attention_varlen";
    ATTENTION_MERGE = "attention" / "attention_merge";
    ATTENTION_PAGED_PREFILL_MMA = "attention_mma" / "attention_paged_prefill_mma";
    ATTENTION_VARLEN_MMA = "attention_mma" / "attention_varlen_mma";
}

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

/// Bytes of split partials: o [splits][rows][d] f32 then lse [splits][rows] f32.
pub(crate) fn partial_bytes(splits: usize, rows: usize, d: usize) -> (usize, usize) {
    let o = splits * rows * d * 4;
    (o, o + splits * rows * 4)
}

impl CudaBackend {
    /// The pool and page table of a paged op whose `check` has passed.
    fn paged_params(&self, kv: &PagedKv, layer: usize, what: &str) -> Result<ReelPagedKv> {
        let l = &kv.layout;
        let dt = dt_code(l.dtype, &format!("{what} KV pool"))?;
        need(l.head_dim <= ATTN_DMAX, || {
            format!("{what}: head_dim {} must be in 1..={ATTN_DMAX}", l.head_dim)
        })?;
        let pool = self.buf(l.buf)?;
        need(pool.len >= l.total_bytes(), || {
            format!(
                "{what}: KV buffer of {} bytes is smaller than the layout's {}",
                pool.len,
                l.total_bytes()
            )
        })?;
        fits_i32(what, &[l.n_pages, l.page_size, l.n_kv_heads, layer])?;
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
        let t = check::kv_append(&k, &v, kv, layer)?;
        let pk = self.paged_params(kv, layer, "kv_append")?;
        let hkv = kv.layout.n_kv_heads;
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
        self.launch(KV_APPEND, l, &p)
    }

    pub(super) fn op_attention_paged(
        &mut self,
        q: TRef,
        kv: &PagedKv,
        layer: usize,
        out: TRef,
        scale: f32,
    ) -> Result<()> {
        let pd = check::attention_paged(&q, kv, layer, &out)?;
        let pk = self.paged_params(kv, layer, "attention_paged")?;
        let (t, hq, hkv, d) = (pd.tokens, pd.q_heads, pd.kv_heads, pd.head_dim);
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
            && rows_16b(qp, q.row_stride, q.dtype)
            && rows_16b(op, out.row_stride, out.dtype)
            && fa_smem_bytes(d) as u32 <= self.info.smem_optin
            // Its row tiles go on grid.y (limit 65535); the CUDA-core kernel puts them on x.
            && (t * g).div_ceil(REEL_FA_BM as usize) <= 65535;
        let (splits, rows_per_cta, kern) = if mma {
            (1, REEL_FA_BM as usize, ATTENTION_PAGED_PREFILL_MMA)
        } else if t == 1 {
            (
                REEL_DECODE_SPLITS as usize,
                DECODE_ROWS,
                ATTENTION_PAGED_DECODE,
            )
        } else {
            (1, PREFILL_ROWS, ATTENTION_PAGED_PREFILL)
        };
        let rows = t * hq;
        let (lse_off, total) = partial_bytes(splits, rows, d);
        let part = if splits > 1 { self.scratch(total)? } else { 0 };
        let p = ReelAttentionParams {
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
            let mp = ReelAttentionMergeParams {
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
            self.launch(ATTENTION_MERGE, l, &mp)?;
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
        let vd = check::attention_varlen(&q, &k, &v, &cu, &out)?;
        let (n, h, d, segs) = (vd.tokens, vd.heads, vd.head_dim, vd.segments);
        // One kv_dt code covers k and v in the kernels.
        need(k.dtype == v.dtype, || {
            format!("attention_varlen: k is {} but v is {}", k.dtype, v.dtype)
        })?;
        need(d > 0 && d <= ATTN_DMAX, || {
            format!("attention_varlen: head_dim {d} must be in 1..={ATTN_DMAX}")
        })?;
        need(h <= 65535 && segs <= 65535, || {
            format!("attention_varlen: {h} heads and {segs} segments (limit 65535 each)")
        })?;
        let (kp, vp) = (
            self.ptr(&k, "attention_varlen k")?,
            self.ptr(&v, "attention_varlen v")?,
        );
        // 16-byte staging loads need bf16 rows that are 16-byte aligned.
        let vec16 = k.dtype == DType::BF16
            && d % 8 == 0
            && rows_16b(kp, k.row_stride, k.dtype)
            && rows_16b(vp, v.row_stride, v.dtype);
        // The grid needs the longest segment: read the (small) boundary list back.
        let mut raw = vec![0u8; (segs + 1) * 4];
        self.read(cu.buf, cu.offset, &mut raw)?;
        let bounds: Vec<i32> = raw
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let max_len = check::cu_seqlens(&bounds, n)?;
        if segs == 0 || max_len == 0 || h == 0 {
            return Ok(());
        }
        let (qp, op) = (
            self.ptr(&q, "attention_varlen q")?,
            self.ptr_mut(&out, "attention_varlen out")?,
        );
        // bf16 at the ViT's head_dim goes to tensor cores.
        let mma = d == REEL_FA_VARLEN_D as usize
            && [&q, &k, &v, &out].iter().all(|t| t.dtype == DType::BF16)
            && rows_16b(qp, q.row_stride, q.dtype)
            && rows_16b(kp, k.row_stride, k.dtype)
            && rows_16b(vp, v.row_stride, v.dtype)
            && rows_16b(op, out.row_stride, out.dtype)
            && fa_smem_bytes(d) as u32 <= self.info.smem_optin;
        let p = ReelAttentionParams {
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
                ATTENTION_VARLEN_MMA,
                REEL_FA_THREADS,
                fa_smem_bytes(d) as u32,
            )
        } else {
            (PREFILL_ROWS, ATTENTION_VARLEN, 128, 0)
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

/// This file's ops in `impl Backend for CudaBackend` (cuda/mod.rs expands it there, as
/// `KERNEL_TABLES` takes the file's `kernels!` table).
macro_rules! backend_ops {
    () => {
        fn kv_append(
            &mut self,
            k: $crate::backend::TRef,
            v: $crate::backend::TRef,
            kv: &$crate::backend::PagedKv,
            layer: usize,
        ) -> $crate::error::Result<()> {
            self.op_kv_append(k, v, kv, layer)
        }
        fn attention_paged(
            &mut self,
            q: $crate::backend::TRef,
            kv: &$crate::backend::PagedKv,
            layer: usize,
            out: $crate::backend::TRef,
            scale: f32,
        ) -> $crate::error::Result<()> {
            self.op_attention_paged(q, kv, layer, out, scale)
        }
        fn attention_varlen(
            &mut self,
            q: $crate::backend::TRef,
            k: $crate::backend::TRef,
            v: $crate::backend::TRef,
            cu_seqlens: $crate::backend::TRef,
            out: $crate::backend::TRef,
            scale: f32,
        ) -> $crate::error::Result<()> {
            self.op_attention_varlen(q, k, v, cu_seqlens, out, scale)
        }
    };
}
pub(super) use backend_ops;
