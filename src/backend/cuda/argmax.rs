//! Launcher for kernels/argmax.cu.

use super::launch::{kernels, Launch};
use super::params::ReelArgmaxParams;
use super::{dt_code, fits_i32, CudaBackend};
use crate::backend::{check, TRef};
use crate::error::Result;

kernels! {
    ARGMAX = "argmax" / "argmax";
}

impl CudaBackend {
    pub(super) fn op_argmax(&mut self, x: TRef, out: TRef) -> Result<()> {
        let d = check::argmax(&x, &out)?;
        fits_i32("argmax", &[d.rows, d.cols])?;
        if d.rows == 0 {
            return Ok(());
        }
        let p = ReelArgmaxParams {
            x: self.ptr(&x, "argmax x")?,
            out: self.ptr_mut(&out, "argmax out")?,
            rows: d.rows as i32,
            cols: d.cols as i32,
            x_stride: x.row_stride as i64,
            x_dt: dt_code(x.dtype, "argmax x")?,
            pad_: 0,
        };
        self.launch(
            ARGMAX,
            Launch {
                grid: (d.rows as u32, 1, 1),
                block: 1024,
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
        fn argmax(
            &mut self,
            x: $crate::backend::TRef,
            out: $crate::backend::TRef,
        ) -> $crate::error::Result<()> {
            self.op_argmax(x, out)
        }
    };
}
pub(super) use backend_ops;
