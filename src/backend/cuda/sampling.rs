//! Launcher for kernels/sampling.cu (`Backend::sample`).

use super::launch::{Kernel, Launch};
use super::params::{ReelSampleParams, REEL_SAMPLE_THREADS};
use super::{dt_code, CudaBackend};
use crate::backend::{sample_shapes, TRef};
use crate::error::Result;

impl CudaBackend {
    pub(super) fn op_sample(&mut self, logits: TRef, args: TRef, out: TRef) -> Result<()> {
        let (rows, cols, stride) = sample_shapes(&logits, &args, &out)?;
        if rows == 0 {
            return Ok(());
        }
        let p = ReelSampleParams {
            x: self.ptr(&logits, "sample logits")?,
            args: self.ptr(&args, "sample args")?,
            out: self.ptr_mut(&out, "sample out")?,
            x_stride: stride as i64,
            rows: rows as i32,
            cols: cols as i32,
            x_dt: dt_code(logits.dtype, "sample logits")?,
            pad_: 0,
        };
        // One block per row; the grid does not depend on the values, so the launch can be
        // captured in a decode graph.
        self.launch(
            Kernel::Sample,
            Launch {
                grid: (rows as u32, 1, 1),
                block: REEL_SAMPLE_THREADS,
                dyn_smem: 0,
            },
            &p,
        )
    }
}
