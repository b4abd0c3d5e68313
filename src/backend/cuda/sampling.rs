//! Launcher for kernels/sampling.cu (`Backend::sample`).

use super::launch::{kernels, Launch};
use super::params::{ReelSampleParams, REEL_SAMPLE_THREADS};
use super::{dt_code, CudaBackend};
use crate::backend::{check, TRef};
use crate::error::Result;

kernels! {
    SAMPLE = "sampling" / "sample";
}

impl CudaBackend {
    pub(super) fn op_sample(&mut self, logits: TRef, args: TRef, out: TRef) -> Result<()> {
        let d = check::sample(&logits, &args, &out)?;
        if d.rows == 0 {
            return Ok(());
        }
        let p = ReelSampleParams {
            x: self.ptr(&logits, "sample logits")?,
            args: self.ptr(&args, "sample args")?,
            out: self.ptr_mut(&out, "sample out")?,
            x_stride: d.stride as i64,
            rows: d.rows as i32,
            cols: d.vocab as i32,
            x_dt: dt_code(logits.dtype, "sample logits")?,
            pad_: 0,
        };
        // One block per row; the grid does not depend on the values, so the launch can be
        // captured in a decode graph.
        self.launch(
            SAMPLE,
            Launch {
                grid: (d.rows as u32, 1, 1),
                block: REEL_SAMPLE_THREADS,
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
        fn sample(
            &mut self,
            logits: $crate::backend::TRef,
            args: $crate::backend::TRef,
            out: $crate::backend::TRef,
        ) -> $crate::error::Result<()> {
            self.op_sample(logits, args, out)
        }
    };
}
pub(super) use backend_ops;
