//! Launchers for kernels/gemv.cu, and the matmul dispatch: GEMV for M <= 8 (decode), the
//! tensor-core GEMM (gemm.rs) for larger M, the scalar GEMV for shapes the 16-byte paths
//! cannot take (K % 8 != 0, unaligned rows).

use super::launch::{Kernel, Launch};
use super::params::ReelMatmulParams;
use super::{dt_code, err, last_dim_rows, need, CudaBackend};
use crate::backend::TRef;
use crate::error::Result;
use crate::tensor::DType;

/// Rows of x one GEMV launch slice covers (GEMV_ROWS in gemv.cu).
pub(crate) const GEMV_ROWS: usize = 8;

/// Which kernel runs a matmul of this shape; pure, so the dispatch is unit-tested. `bf16` says
/// x and w are both bf16, the only types of the 16-byte GEMV and the GEMM.
pub(crate) fn pick_matmul(
    m: usize,
    k: usize,
    bf16: bool,
    ptrs: &[u64],
    strides: &[usize],
) -> Kernel {
    let aligned =
        k % 8 == 0 && ptrs.iter().all(|p| p % 16 == 0) && strides.iter().all(|s| s % 8 == 0);
    if !aligned || !bf16 {
        Kernel::GemvScalar
    } else if m <= GEMV_ROWS {
        Kernel::GemvV16
    } else {
        Kernel::GemmMma
    }
}

impl CudaBackend {
    pub(super) fn op_matmul(
        &mut self,
        x: TRef,
        w: TRef,
        bias: Option<TRef>,
        out: TRef,
    ) -> Result<()> {
        let (m, k, xs) = last_dim_rows(&x, "matmul x")?;
        need(w.shape.rank() == 2, || {
            format!("matmul: weight {:?} must be [N, K]", w.shape)
        })?;
        let (n, wk) = (w.shape.dim(0), w.shape.dim(1));
        need(wk == k, || {
            format!(
                "matmul: x {:?} has K = {k} but weight {:?} has K = {wk}",
                x.shape, w.shape
            )
        })?;
        let (om, on, os) = last_dim_rows(&out, "matmul out")?;
        need(om == m && on == n, || {
            format!("matmul: out {:?} must be [{m}, {n}]", out.shape)
        })?;
        let x_dt = dt_code(x.dtype, "matmul x")?;
        if w.dtype.is_quantized() {
            return Err(err(format!(
                "matmul: {} weights are not supported by the CUDA backend yet (float weights only)",
                w.dtype
            )));
        }
        let w_dt = dt_code(w.dtype, "matmul w")?;
        need(matches!(out.dtype, DType::BF16 | DType::F32), || {
            format!("matmul: out type {}", out.dtype)
        })?;
        need(
            m <= i32::MAX as usize && n <= i32::MAX as usize && k <= i32::MAX as usize,
            || "matmul: too large".into(),
        )?;
        let (bias_ptr, bias_dt) = self.matmul_bias(bias.as_ref(), n)?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        let p = ReelMatmulParams {
            x: self.ptr(&x, "matmul x")?,
            w: self.ptr(&w, "matmul w")?,
            bias: bias_ptr,
            out: self.ptr_mut(&out, "matmul out")?,
            M: m as i32,
            N: n as i32,
            K: k as i32,
            bias_dt,
            x_stride: xs as i64,
            w_stride: w.row_stride as i64,
            out_stride: os as i64,
            out_dt: dt_code(out.dtype, "matmul out")?,
            x_dt,
            w_dt,
            pad_: 0,
        };
        let bf16 = x.dtype == DType::BF16 && w.dtype == DType::BF16;
        match pick_matmul(m, k, bf16, &[p.x, p.w], &[xs, w.row_stride]) {
            Kernel::GemmMma => self.launch_gemm(&p),
            kern => self.launch_gemv(kern, &p),
        }
    }

    pub(super) fn launch_gemv(&mut self, kern: Kernel, p: &ReelMatmulParams) -> Result<()> {
        let gx = (p.N as usize).div_ceil(8) as u32;
        let gy = (p.M as usize).div_ceil(GEMV_ROWS);
        need(gy <= 65535, || {
            format!("matmul: M = {} too large for the GEMV path", p.M)
        })?;
        self.launch(
            kern,
            Launch {
                grid: (gx, gy as u32, 1),
                block: 256,
                dyn_smem: 0,
            },
            p,
        )
    }
}
