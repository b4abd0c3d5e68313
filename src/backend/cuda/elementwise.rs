//! Launchers for kernels/elementwise.cu (add, swiglu, gelu, cast, embedding, gather_rows,
//! scatter_rows) and for the quantized-table embedding of kernels/quant.cu.

use super::launch::{kernels, Kernel, Launch};
use super::matmul::qtype_code;
use super::params::{ReelEltParams, ReelEmbeddingParams, ReelEmbeddingQuantParams, ReelRowsParams};
use super::{dt_code, fits_i32, need, CudaBackend};
use crate::backend::check::{self, MapDims, RowsDims};
use crate::backend::TRef;
use crate::error::Result;

kernels! {
    ADD = "elementwise" / "add";
    SWIGLU = "elementwise" / "swiglu";
    GELU = "elementwise" / "gelu";
    CAST = "elementwise" / "cast";
    EMBEDDING = "elementwise" / "embedding";
    EMBEDDING_QUANT = "quant" / "embedding_quant";
    GATHER_ROWS_16 = "elementwise" / "gather_rows_16";
    GATHER_ROWS_4 = "elementwise" / "gather_rows_4";
    GATHER_ROWS_1 = "elementwise" / "gather_rows_1";
    SCATTER_ROWS_16 = "elementwise" / "scatter_rows_16";
    SCATTER_ROWS_4 = "elementwise" / "scatter_rows_4";
    SCATTER_ROWS_1 = "elementwise" / "scatter_rows_1";
}

/// The widest copy unit (16, 4 or 1 bytes) dividing every length, stride and address.
pub(crate) fn copy_unit(values: &[u64]) -> u64 {
    [16u64, 4]
        .into_iter()
        .find(|u| values.iter().all(|v| v % u == 0))
        .unwrap_or(1)
}

impl CudaBackend {
    pub(super) fn op_add(&mut self, a: TRef, b: TRef, out: TRef) -> Result<()> {
        let d = check::add(&a, &b, &out)?;
        self.launch_map(ADD, d, a, Some(b), out)
    }

    pub(super) fn op_swiglu(&mut self, gate: TRef, up: TRef, out: TRef) -> Result<()> {
        let d = check::swiglu(&gate, &up, &out)?;
        self.launch_map(SWIGLU, d, gate, Some(up), out)
    }

    pub(super) fn op_gelu(&mut self, x: TRef, out: TRef) -> Result<()> {
        let d = check::gelu(&x, &out)?;
        self.launch_map(GELU, d, x, None, out)
    }

    pub(super) fn op_cast(&mut self, x: TRef, out: TRef) -> Result<()> {
        let d = check::cast(&x, &out)?;
        self.launch_map(CAST, d, x, None, out)
    }

    /// A binary (add, swiglu) or unary (gelu, cast) map over [rows, cols] views.
    fn launch_map(
        &mut self,
        k: Kernel,
        d: MapDims,
        a: TRef,
        b: Option<TRef>,
        out: TRef,
    ) -> Result<()> {
        let total = d.rows * d.cols;
        if total == 0 {
            return Ok(());
        }
        let p = ReelEltParams {
            a: self.ptr(&a, k.name)?,
            b: match &b {
                Some(b) => self.ptr(b, k.name)?,
                None => 0,
            },
            out: self.ptr_mut(&out, k.name)?,
            rows: d.rows as i64,
            cols: d.cols as i64,
            a_stride: a.row_stride as i64,
            b_stride: b.map_or(0, |b| b.row_stride as i64),
            out_stride: out.row_stride as i64,
            a_dt: dt_code(a.dtype, k.name)?,
            b_dt: match &b {
                Some(b) => dt_code(b.dtype, k.name)?,
                None => 0,
            },
            out_dt: dt_code(out.dtype, k.name)?,
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

    /// Float tables copy (and convert) rows; quantized tables are decoded (quant.cu). Ids
    /// outside the table write zeros.
    pub(super) fn op_embedding(&mut self, table: TRef, ids: TRef, out: TRef) -> Result<()> {
        const OP: &str = "embedding";
        let d = check::embedding(&table, &ids, &out)?;
        fits_i32(OP, &[d.vocab, d.dim, d.tokens])?;
        let tp = self.ptr(&table, "embedding table")?;
        let ip = self.ptr(&ids, "embedding ids")?;
        let op = self.ptr_mut(&out, "embedding out")?;
        if d.tokens == 0 || d.dim == 0 {
            return Ok(());
        }
        let l = Launch {
            grid: (d.tokens as u32, 1, 1),
            block: 256,
            dyn_smem: 0,
        };
        let out_dt = dt_code(out.dtype, "embedding out")?;
        let Some(row_bytes) = d.quant_row_bytes else {
            let p = ReelEmbeddingParams {
                table: tp,
                ids: ip,
                out: op,
                tokens: d.tokens as i32,
                dim: d.dim as i32,
                vocab: d.vocab as i32,
                table_dt: dt_code(table.dtype, "embedding table")?,
                table_stride: table.row_stride as i64,
                out_stride: out.row_stride as i64,
                out_dt,
                pad_: 0,
            };
            return self.launch(EMBEDDING, l, &p);
        };
        // Decoders read fp16 scales and quant pairs with 16-bit loads.
        need(tp % 2 == 0, || "embedding: table at an odd address".into())?;
        let p = ReelEmbeddingQuantParams {
            table: tp,
            ids: ip,
            out: op,
            row_bytes: row_bytes as i64,
            out_stride: out.row_stride as i64,
            tokens: d.tokens as i32,
            dim: d.dim as i32,
            vocab: d.vocab as i32,
            qtype: qtype_code(table.dtype)?,
            out_dt,
            pad_: 0,
        };
        self.launch(EMBEDDING_QUANT, l, &p)
    }

    /// `out[i] = x[idx[i]]`, whole rows; indices outside x skip their row.
    pub(super) fn op_gather_rows(&mut self, x: TRef, idx: TRef, out: TRef) -> Result<()> {
        let d = check::gather_rows(&x, &idx, &out)?;
        let kernels = [GATHER_ROWS_16, GATHER_ROWS_4, GATHER_ROWS_1];
        self.launch_rows(
            "gather_rows",
            kernels,
            d,
            x,
            idx,
            out,
            (d.indexed_rows, d.n_idx),
        )
    }

    /// `dst[idx[i]] = src[i]`, whole rows; indices outside dst skip their row.
    pub(super) fn op_scatter_rows(&mut self, src: TRef, idx: TRef, dst: TRef) -> Result<()> {
        let d = check::scatter_rows(&src, &idx, &dst)?;
        let kernels = [SCATTER_ROWS_16, SCATTER_ROWS_4, SCATTER_ROWS_1];
        self.launch_rows(
            "scatter_rows",
            kernels,
            d,
            src,
            idx,
            dst,
            (d.n_idx, d.indexed_rows),
        )
    }

    /// One block per index, copying in the widest unit (16, 4 or 1 bytes: `kernels` in that
    /// order) that divides the row length, both strides and both addresses. `rows`: the rows
    /// of src and of dst (indices past them skip).
    #[allow(clippy::too_many_arguments)]
    fn launch_rows(
        &mut self,
        what: &str,
        kernels: [Kernel; 3],
        d: RowsDims,
        src: TRef,
        idx: TRef,
        dst: TRef,
        (src_rows, dst_rows): (usize, usize),
    ) -> Result<()> {
        if d.n_idx == 0 {
            return Ok(());
        }
        fits_i32(what, &[d.n_idx])?;
        let row_bytes = src.dtype.bytes_for(d.row_len) as u64;
        let ss = src.dtype.bytes_for(src.row_stride) as u64;
        let ds = dst.dtype.bytes_for(dst.row_stride) as u64;
        let sp = self.ptr(&src, what)?;
        let dp = self.ptr_mut(&dst, what)?;
        let k = match copy_unit(&[row_bytes, ss, ds, sp, dp]) {
            16 => kernels[0],
            4 => kernels[1],
            _ => kernels[2],
        };
        let p = ReelRowsParams {
            src: sp,
            idx: self.ptr(&idx, what)?,
            dst: dp,
            n_idx: d.n_idx as i32,
            pad_: 0,
            row_bytes: row_bytes as i64,
            src_stride_bytes: ss as i64,
            dst_stride_bytes: ds as i64,
            src_rows: src_rows as i64,
            dst_rows: dst_rows as i64,
        };
        self.launch(
            k,
            Launch {
                grid: (d.n_idx as u32, 1, 1),
                block: 128,
                dyn_smem: 0,
            },
            &p,
        )
    }
}

/// This file's ops in `impl Backend for CudaBackend` (cuda/mod.rs expands it there, as
/// `KERNEL_TABLES` takes the file's `kernels!` table).
macro_rules! backend_ops {
    () => {
        fn embedding(
            &mut self,
            table: $crate::backend::TRef,
            ids: $crate::backend::TRef,
            out: $crate::backend::TRef,
        ) -> $crate::error::Result<()> {
            self.op_embedding(table, ids, out)
        }
        fn add(
            &mut self,
            a: $crate::backend::TRef,
            b: $crate::backend::TRef,
            out: $crate::backend::TRef,
        ) -> $crate::error::Result<()> {
            self.op_add(a, b, out)
        }
        fn swiglu(
            &mut self,
            gate: $crate::backend::TRef,
            up: $crate::backend::TRef,
            out: $crate::backend::TRef,
        ) -> $crate::error::Result<()> {
            self.op_swiglu(gate, up, out)
        }
        fn gelu(
            &mut self,
            x: $crate::backend::TRef,
            out: $crate::backend::TRef,
        ) -> $crate::error::Result<()> {
            self.op_gelu(x, out)
        }
        fn gather_rows(
            &mut self,
            x: $crate::backend::TRef,
            idx: $crate::backend::TRef,
            out: $crate::backend::TRef,
        ) -> $crate::error::Result<()> {
            self.op_gather_rows(x, idx, out)
        }
        fn scatter_rows(
            &mut self,
            src: $crate::backend::TRef,
            idx: $crate::backend::TRef,
            dst: $crate::backend::TRef,
        ) -> $crate::error::Result<()> {
            self.op_scatter_rows(src, idx, dst)
        }
        fn cast(
            &mut self,
            x: $crate::backend::TRef,
            out: $crate::backend::TRef,
        ) -> $crate::error::Result<()> {
            self.op_cast(x, out)
        }
    };
}
pub(super) use backend_ops;
