//! Launcher for kernels/norm.cu.

use super::launch::{kernels, Launch};
use super::params::ReelRmsNormParams;
use super::{dt_code, fits_i32, CudaBackend};
use crate::backend::{check, TRef};
use crate::error::Result;

kernels! {
    RMS_NORM = "norm" / "rms_norm";
}

impl CudaBackend {
    pub(super) fn op_rms_norm(&mut self, x: TRef, w: TRef, out: TRef, eps: f32) -> Result<()> {
        let d = check::rms_norm(&x, &w, &out)?;
        let rows = d.vectors();
        fits_i32("rms_norm", &[rows, d.d, d.per_slice])?;
        if rows == 0 {
            return Ok(());
        }
        let p = ReelRmsNormParams {
            x: self.ptr(&x, "rms_norm x")?,
            w: self.ptr(&w, "rms_norm w")?,
            out: self.ptr_mut(&out, "rms_norm out")?,
            rows: rows as i32,
            cols: d.d as i32,
            x_stride: x.row_stride as i64,
            out_stride: out.row_stride as i64,
            eps,
            x_dt: dt_code(x.dtype, "rms_norm x")?,
            w_dt: dt_code(w.dtype, "rms_norm w")?,
            out_dt: dt_code(out.dtype, "rms_norm out")?,
            inner: d.per_slice as i32,
            pad_: 0,
        };
        self.launch(
            RMS_NORM,
            Launch {
                grid: (rows as u32, 1, 1),
                block: 256,
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
        fn rms_norm(
            &mut self,
            x: $crate::backend::TRef,
            w: $crate::backend::TRef,
            out: $crate::backend::TRef,
            eps: f32,
        ) -> $crate::error::Result<()> {
            self.op_rms_norm(x, w, out, eps)
        }
    };
}
pub(super) use backend_ops;
