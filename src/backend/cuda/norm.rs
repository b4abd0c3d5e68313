//! Launcher for kernels/norm.cu.

use super::launch::{Kernel, Launch};
use super::params::ReelRmsNormParams;
use super::{dt_code, last_dim_rows, need, CudaBackend};
use crate::backend::TRef;
use crate::error::Result;

impl CudaBackend {
    pub(super) fn op_rms_norm(&mut self, x: TRef, w: TRef, out: TRef, eps: f32) -> Result<()> {
        let (rows, cols, xs) = last_dim_rows(&x, "rms_norm x")?;
        let (orows, ocols, os) = last_dim_rows(&out, "rms_norm out")?;
        need(rows == orows && cols == ocols, || {
            format!("rms_norm: x {:?} but out {:?}", x.shape, out.shape)
        })?;
        need(w.shape.numel() == cols, || {
            format!("rms_norm: weight {:?} for rows of {cols}", w.shape)
        })?;
        need(rows <= i32::MAX as usize, || {
            format!("rms_norm: {rows} rows")
        })?;
        if rows == 0 || cols == 0 {
            return Ok(());
        }
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
