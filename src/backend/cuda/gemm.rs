//! Launcher for kernels/gemm.cu (mma.sync bf16 GEMM, 128 x 128 x 32 CTA tiles).

use super::launch::{Kernel, Launch};
use super::params::{ReelMatmulParams, REEL_GEMM_BM, REEL_GEMM_BN, REEL_GEMM_THREADS};
use super::{need, CudaBackend};
use crate::error::Result;

impl CudaBackend {
    /// Preconditions (checked by `pick_matmul`): K % 8 == 0, 16-byte aligned x/w rows.
    pub(super) fn launch_gemm(&mut self, p: &ReelMatmulParams) -> Result<()> {
        need(
            p.K % 8 == 0
                && p.x % 16 == 0
                && p.w % 16 == 0
                && p.x_stride % 8 == 0
                && p.w_stride % 8 == 0,
            || format!("gemm: K = {} and rows must be 16-byte aligned", p.K),
        )?;
        let gx = (p.N as usize).div_ceil(REEL_GEMM_BN as usize) as u32;
        let gy = (p.M as usize).div_ceil(REEL_GEMM_BM as usize);
        need(gy <= 65535, || format!("gemm: M = {} too large", p.M))?;
        self.launch(
            Kernel::GemmMma,
            Launch {
                grid: (gx, gy as u32, 1),
                block: REEL_GEMM_THREADS,
                dyn_smem: 0,
            },
            p,
        )
    }
}
