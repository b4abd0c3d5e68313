//! Launcher for kernels/argmax.cu.

use super::launch::{Kernel, Launch};
use super::params::ReelArgmaxParams;
use super::{dt_code, last_dim_rows, need, CudaBackend};
use crate::backend::TRef;
use crate::error::Result;
use crate::tensor::DType;

impl CudaBackend {
    pub(super) fn op_argmax(&mut self, x: TRef, out: TRef) -> Result<()> {
        let (rows, cols, xs) = last_dim_rows(&x, "argmax x")?;
        need(out.dtype == DType::I32 && out.shape.numel() == rows, || {
            format!(
                "argmax: out {:?} {} must be {rows} i32",
                out.shape, out.dtype
            )
        })?;
        need(cols > 0 && cols <= i32::MAX as usize, || {
            format!("argmax: rows of {cols} elements")
        })?;
        if rows == 0 {
            return Ok(());
        }
        let p = ReelArgmaxParams {
            x: self.ptr(&x, "argmax x")?,
            out: self.ptr_mut(&out, "argmax out")?,
            rows: rows as i32,
            cols: cols as i32,
            x_stride: xs as i64,
            x_dt: dt_code(x.dtype, "argmax x")?,
            pad_: 0,
        };
        self.launch(
            Kernel::Argmax,
            Launch {
                grid: (rows as u32, 1, 1),
                block: 1024,
                dyn_smem: 0,
            },
            &p,
        )
    }
}
