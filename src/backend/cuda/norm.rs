//! Launcher for kernels/norm.cu.

use super::launch::{Kernel, Launch};
use super::params::ReelRmsNormParams;
use super::{dt_code, need, CudaBackend};
use crate::backend::TRef;
use crate::error::Result;

impl CudaBackend {
    pub(super) fn op_rms_norm(&mut self, x: TRef, w: TRef, out: TRef, eps: f32) -> Result<()> {
        need(x.shape == out.shape, || {
            format!("rms_norm: x {:?} but out {:?}", x.shape, out.shape)
        })?;
        let cols = x.shape.dim(-1);
        need(w.shape.numel() == cols, || {
            format!("rms_norm: weight {:?} for rows of D = {cols}", w.shape)
        })?;
        let rows = x.shape.numel().checked_div(cols).unwrap_or(0);
        need(
            rows <= i32::MAX as usize && cols <= i32::MAX as usize,
            || format!("rms_norm: {rows} rows of {cols}"),
        )?;
        if rows == 0 {
            return Ok(());
        }
        // Rows of the last dimension per first-dimension slice (1 for rank 2).
        let inner = if x.shape.rank() == 1 {
            rows
        } else {
            x.shape.row_len() / cols
        };
        let (xs, os) = if x.shape.rank() == 1 {
            (0, 0)
        } else {
            (x.row_stride, out.row_stride)
        };
        let p = ReelRmsNormParams {
            x: self.ptr(&x, "rms_norm x")?,
            w: self.ptr(&w, "rms_norm w")?,
            out: self.ptr_mut(&out, "rms_norm out")?,
            rows: rows as i32,
            cols: cols as i32,
            x_stride: xs as i64,
            out_stride: os as i64,
            eps,
            x_dt: dt_code(x.dtype, "rms_norm x")?,
            w_dt: dt_code(w.dtype, "rms_norm w")?,
            out_dt: dt_code(out.dtype, "rms_norm out")?,
            inner: inner as i32,
            pad_: 0,
        };
        self.launch(
            Kernel::RmsNorm,
            Launch {
                grid: (rows as u32, 1, 1),
                block: 256,
                dyn_smem: 0,
            },
            &p,
        )
    }
}
