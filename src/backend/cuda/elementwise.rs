//! Launchers for kernels/elementwise.cu: add, swiglu, gelu, cast, embedding, gather/scatter.

use super::launch::{Kernel, Launch};
use super::params::{ReelCopyRowsParams, ReelEltParams, ReelEmbeddingParams};
use super::{dt_code, need, CudaBackend};
use crate::backend::TRef;
use crate::error::Result;
use crate::tensor::DType;

/// The widest copy unit (16, 4 or 1 bytes) dividing every length, stride and address.
pub(crate) fn copy_unit(values: &[u64]) -> u64 {
    [16u64, 4]
        .into_iter()
        .find(|u| values.iter().all(|v| v % u == 0))
        .unwrap_or(1)
}

impl CudaBackend {
    /// add / swiglu (binary) and gelu / cast (unary) over same-shaped [rows, row_len] views.
    pub(super) fn op_eltwise(
        &mut self,
        k: Kernel,
        what: &str,
        a: TRef,
        b: Option<TRef>,
        out: TRef,
    ) -> Result<()> {
        need(a.shape == out.shape, || {
            format!("{what}: input {:?} but out {:?}", a.shape, out.shape)
        })?;
        if let Some(b) = &b {
            need(b.shape == a.shape, || {
                format!("{what}: inputs {:?} and {:?} differ", a.shape, b.shape)
            })?;
        }
        let rows = a.shape.rows();
        let cols = a.shape.row_len();
        let total = rows * cols;
        if total == 0 {
            return Ok(());
        }
        let p = ReelEltParams {
            a: self.ptr(&a, what)?,
            b: match &b {
                Some(b) => self.ptr(b, what)?,
                None => 0,
            },
            out: self.ptr_mut(&out, what)?,
            rows: rows as i64,
            cols: cols as i64,
            a_stride: a.row_stride as i64,
            b_stride: b.map_or(0, |b| b.row_stride as i64),
            out_stride: out.row_stride as i64,
            a_dt: dt_code(a.dtype, what)?,
            b_dt: match &b {
                Some(b) => dt_code(b.dtype, what)?,
                None => 0,
            },
            out_dt: dt_code(out.dtype, what)?,
            pad_: 0,
        };
        let grid = self.stride_grid(total, 256);
        self.launch(
            k,
            Launch {
                grid: (grid, 1, 1),
                block: 256,
                dyn_smem: 0,
            },
            &p,
        )
    }

    pub(super) fn op_embedding(&mut self, table: TRef, ids: TRef, out: TRef) -> Result<()> {
        need(table.shape.rank() == 2, || {
            format!("embedding: table {:?} must be [V, D]", table.shape)
        })?;
        let (v, d) = (table.shape.dim(0), table.shape.dim(1));
        let t = ids.shape.numel();
        need(ids.dtype == DType::I32, || {
            format!("embedding: ids are {}, not i32", ids.dtype)
        })?;
        need(out.shape.rank() == 2 && out.shape.dims() == [t, d], || {
            format!("embedding: out {:?} must be [{t}, {d}]", out.shape)
        })?;
        need(v <= i32::MAX as usize && d <= i32::MAX as usize, || {
            "embedding: table too large".into()
        })?;
        if t == 0 || d == 0 {
            return Ok(());
        }
        let p = ReelEmbeddingParams {
            table: self.ptr(&table, "embedding table")?,
            ids: self.ptr(&ids, "embedding ids")?,
            out: self.ptr_mut(&out, "embedding out")?,
            tokens: t as i32,
            dim: d as i32,
            vocab: v as i32,
            table_dt: dt_code(table.dtype, "embedding table")?,
            table_stride: table.row_stride as i64,
            out_stride: out.row_stride as i64,
            out_dt: dt_code(out.dtype, "embedding out")?,
            pad_: 0,
        };
        self.launch(
            Kernel::Embedding,
            Launch {
                grid: (t as u32, 1, 1),
                block: 256,
                dyn_smem: 0,
            },
            &p,
        )
    }

    /// gather (dst[i] = src[idx[i]]) or scatter (dst[idx[i]] = src[i]) of whole rows.
    pub(super) fn op_copy_rows(
        &mut self,
        src: TRef,
        idx: TRef,
        dst: TRef,
        scatter: bool,
    ) -> Result<()> {
        let what = if scatter {
            "scatter_rows"
        } else {
            "gather_rows"
        };
        need(idx.dtype == DType::I32, || {
            format!("{what}: indices are {}, not i32", idx.dtype)
        })?;
        need(src.dtype == dst.dtype, || {
            format!("{what}: {} rows into {}", src.dtype, dst.dtype)
        })?;
        need(src.shape.row_len() == dst.shape.row_len(), || {
            format!("{what}: rows of {:?} and {:?} differ", src.shape, dst.shape)
        })?;
        let n = idx.shape.numel();
        let (idx_rows, other_rows) = if scatter {
            (src.shape.rows(), dst.shape.rows())
        } else {
            (dst.shape.rows(), src.shape.rows())
        };
        need(n == idx_rows, || {
            format!("{what}: {n} indices for {idx_rows} rows")
        })?;
        if n == 0 {
            return Ok(());
        }
        let row_bytes = src.dtype.bytes_for(src.shape.row_len()) as u64;
        let ss = src.dtype.bytes_for(src.row_stride) as u64;
        let ds = dst.dtype.bytes_for(dst.row_stride) as u64;
        let sp = self.ptr(&src, what)?;
        let dp = self.ptr_mut(&dst, what)?;
        let unit = copy_unit(&[row_bytes, ss, ds, sp, dp]);
        let k = match unit {
            16 => Kernel::CopyRows16,
            4 => Kernel::CopyRows4,
            _ => Kernel::CopyRows1,
        };
        let p = ReelCopyRowsParams {
            src: sp,
            idx: self.ptr(&idx, what)?,
            dst: dp,
            n_idx: n as i32,
            scatter: scatter as i32,
            row_bytes: row_bytes as i64,
            src_stride_bytes: ss as i64,
            dst_stride_bytes: ds as i64,
            src_rows: (if scatter { idx_rows } else { other_rows }) as i64,
            dst_rows: (if scatter { other_rows } else { idx_rows }) as i64,
        };
        self.launch(
            k,
            Launch {
                grid: (n as u32, 1, 1),
                block: 128,
                dyn_smem: 0,
            },
            &p,
        )
    }
}
