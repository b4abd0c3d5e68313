//! `matmul`: the choice of kernel and the launchers of kernels/gemv.cu (bf16 and scalar GEMV),
//! kernels/gemm.cu (bf16 tensor-core GEMM) and the matmul kernels of kernels/quant.cu (Q8_0,
//! Q4_K and Q6_K weights).
//!
//! Dispatch ([`pick`], a pure function of the shape, the types and the alignment):
//! - float weights: bf16 x and w take the 16-byte GEMV for M <= 8 (decode, memory-bound) when
//!   K % 8 == 0 and rows are 16-byte aligned, and the tensor-core GEMM (gemm_bf16_mma) otherwise:
//!   it reads any K (zero-filled tails) at any row alignment (the ViT MLP's K = 3420), so no
//!   bf16 shape falls to the scalar kernel (`REEL_GEMM` may swap the GEMM for a candidate,
//!   gemm.rs); f32/f16 x or w take the scalar GEMV, in slices of 8 rows;
//! - quantized weights: M <= 8 takes the dequant-fused GEMV (weights streamed once through
//!   16-byte loads, exact dequantization, f32 sums); larger M with bf16 activations in 16-byte
//!   aligned rows takes the tensor-core GEMM (weight tiles dequantized to bf16 in smem); larger
//!   M with f32/f16 activations takes the GEMV in slices of 8 rows (re-reads the weights per
//!   slice, but stays exact).
//!
//! ptxas (CUDA 13.0, -O3), registers per kernel, no spills and no stack frame on sm_80/86/89/90a:
//! qgemv_* 72-80 (`__launch_bounds__(256, 2)`: without the occupancy hint ptxas capped the Q8_0
//! GEMV at 64 registers and spilled), qgemm_* 125-128, gemm_bf16_mma 128. Static smem 40 KB for
//! the quantized GEMV (8 x 2 KB weight windows + 24 KB of x) and both GEMMs; the candidate GEMMs
//! are in gemm.rs.

use super::launch::{kernels, Kernel, Launch};
use super::params::{
    ReelMatmulParams, REEL_DT_NONE, REEL_GEMM_BM, REEL_GEMM_BN, REEL_GEMM_THREADS, REEL_QGEMV_ROWS,
    REEL_QGEMV_WARPS, REEL_QT_Q4_K, REEL_QT_Q6_K, REEL_QT_Q8_0,
};
use super::{dt_code, err, fits_i32, need, rows_16b, CudaBackend};
use crate::backend::{check, Epilogue, TRef};
use crate::error::Result;
use crate::tensor::DType;

kernels! {
    GEMV_V16 = "gemv" / "gemv_bf16_v16";
    GEMV_SCALAR = "gemv" / "gemv_scalar";
    GEMM_MMA = "gemm" / "gemm_bf16_mma";
    QGEMV_Q8_0_BF16 = "quant" / "qgemv_q8_0_bf16";
    QGEMV_Q8_0_F32 = "quant" / "qgemv_q8_0_f32";
    QGEMV_Q4_K_BF16 = "quant" / "qgemv_q4_k_bf16";
    QGEMV_Q4_K_F32 = "quant" / "qgemv_q4_k_f32";
    QGEMV_Q6_K_BF16 = "quant" / "qgemv_q6_k_bf16";
    QGEMV_Q6_K_F32 = "quant" / "qgemv_q6_k_f32";
    QGEMM_Q8_0 = "quant" / "qgemm_q8_0";
    QGEMM_Q4_K = "quant" / "qgemm_q4_k";
    QGEMM_Q6_K = "quant" / "qgemm_q6_k";
}

/// Rows of x one GEMV launch slice covers (GEMV_ROWS in gemv.cu, REEL_QGEMV_ROWS in quant.cu).
pub(crate) const GEMV_ROWS: usize = 8;
const _: () = assert!(GEMV_ROWS == REEL_QGEMV_ROWS as usize && REEL_QGEMV_WARPS == 8);

/// The block types quant.cu decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QType {
    Q8_0,
    Q4K,
    Q6K,
}

impl QType {
    pub fn of(dt: DType) -> Option<QType> {
        match dt {
            DType::Q8_0 => Some(QType::Q8_0),
            DType::Q4K => Some(QType::Q4K),
            DType::Q6K => Some(QType::Q6K),
            DType::F32 | DType::F16 | DType::BF16 | DType::I32 | DType::U8 => None,
        }
    }

    /// The kernels' REEL_QT_* code.
    pub fn code(self) -> i32 {
        (match self {
            QType::Q8_0 => REEL_QT_Q8_0,
            QType::Q4K => REEL_QT_Q4_K,
            QType::Q6K => REEL_QT_Q6_K,
        }) as i32
    }
}

/// How the quantized GEMV stages x in shared memory: bf16 activations as bf16, f32 and f16
/// ones as f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XStage {
    Bf16,
    F32,
}

/// The matmul kernel families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulKernel {
    /// gemv_bf16_v16: bf16 x and w, 16-byte loads, M <= 8.
    GemvV16,
    /// gemv_scalar: any float types, K, strides and alignment; slices of 8 rows.
    GemvScalar,
    /// gemm_bf16_mma: bf16 x and w on tensor cores, any K and row alignment (REEL_GEMM
    /// candidates in gemm.rs).
    GemmMma,
    /// qgemv_<type>_<stage>: quantized weights, slices of 8 rows.
    QGemv(QType, XStage),
    /// qgemm_<type>: quantized weights dequantized to bf16 tiles, bf16 x, M > 8.
    QGemm(QType),
}

/// What the choice of kernel depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulCase {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// Weight and activation types.
    pub w: DType,
    pub x: DType,
    /// Rows of x (of w) start on 16-byte boundaries: the base address and the row stride.
    pub x_rows_16b: bool,
    pub w_rows_16b: bool,
}

/// The kernel that runs a matmul (see the module docs); every kernel masks the N tail, so N
/// does not enter the choice today.
pub fn pick(c: &MatmulCase) -> MatmulKernel {
    if let Some(q) = QType::of(c.w) {
        let bf16 = c.x == DType::BF16;
        return if c.m > GEMV_ROWS && bf16 && c.x_rows_16b {
            MatmulKernel::QGemm(q)
        } else if bf16 {
            MatmulKernel::QGemv(q, XStage::Bf16)
        } else {
            MatmulKernel::QGemv(q, XStage::F32)
        };
    }
    let bf16 = c.x == DType::BF16 && c.w == DType::BF16;
    let v16 = bf16 && c.k.is_multiple_of(8) && c.x_rows_16b && c.w_rows_16b;
    if v16 && c.m <= GEMV_ROWS {
        MatmulKernel::GemvV16
    } else if bf16 {
        MatmulKernel::GemmMma
    } else {
        MatmulKernel::GemvScalar
    }
}

impl MatmulKernel {
    pub fn kernel(self) -> Kernel {
        use MatmulKernel::*;
        use QType::*;
        match self {
            GemvV16 => GEMV_V16,
            GemvScalar => GEMV_SCALAR,
            GemmMma => GEMM_MMA,
            QGemv(Q8_0, XStage::Bf16) => QGEMV_Q8_0_BF16,
            QGemv(Q8_0, XStage::F32) => QGEMV_Q8_0_F32,
            QGemv(Q4K, XStage::Bf16) => QGEMV_Q4_K_BF16,
            QGemv(Q4K, XStage::F32) => QGEMV_Q4_K_F32,
            QGemv(Q6K, XStage::Bf16) => QGEMV_Q6_K_BF16,
            QGemv(Q6K, XStage::F32) => QGEMV_Q6_K_F32,
            QGemm(Q8_0) => QGEMM_Q8_0,
            QGemm(Q4K) => QGEMM_Q4_K,
            QGemm(Q6K) => QGEMM_Q6_K,
        }
    }

    /// Launch shape for an [M, N] output: (grid, block). GEMVs: one warp per output column, 8
    /// per block, grid.y walks M in slices of 8 rows; GEMMs: 128 x 128 output tiles.
    pub fn grid(self, m: usize, n: usize) -> Result<((u32, u32, u32), u32)> {
        let (gx, gy, block) = match self {
            MatmulKernel::GemmMma | MatmulKernel::QGemm(_) => (
                n.div_ceil(REEL_GEMM_BN as usize),
                m.div_ceil(REEL_GEMM_BM as usize),
                REEL_GEMM_THREADS,
            ),
            _ => (
                n.div_ceil(REEL_QGEMV_WARPS as usize),
                m.div_ceil(GEMV_ROWS),
                32 * REEL_QGEMV_WARPS,
            ),
        };
        need(gy <= 65535 && gx <= i32::MAX as usize, || {
            format!(
                "matmul: M = {m}, N = {n} is too large for {}",
                self.kernel().name
            )
        })?;
        Ok(((gx as u32, gy as u32, 1), block))
    }
}

/// The REEL_QT_* code of a quantized weight type.
pub(crate) fn qtype_code(dt: DType) -> Result<i32> {
    QType::of(dt)
        .map(QType::code)
        .ok_or_else(|| err(format!("no kernel decodes {dt} weights")))
}

impl CudaBackend {
    /// What the quantized kernels' reads need beyond the contract: a 2-byte aligned base (fp16
    /// scales and quant pairs are read with 16-bit loads) and, for the GEMV, which reads whole
    /// aligned 16-byte chunks up to 15 bytes past the last row, a buffer that covers them
    /// (load_weight pads for that; a plain alloc of an odd size does not).
    fn check_quant_weight(
        &self,
        w: &TRef,
        wp: u64,
        kern: MatmulKernel,
        bytes: usize,
    ) -> Result<()> {
        need(wp.is_multiple_of(2), || {
            format!("matmul: {} weight at an odd address", w.dtype)
        })?;
        if matches!(kern, MatmulKernel::QGemv(..)) {
            let b = self.buf(w.buf)?;
            let end = (wp + bytes as u64).next_multiple_of(16);
            need(end <= b.ptr + b.mem.len() as u64, || {
                format!(
                    "matmul: the 16-byte chunk holding the last byte of the {} weight {:?} \
                     runs past its buffer (quantized weights must come from load_weight)",
                    w.dtype, w.shape
                )
            })?;
        }
        Ok(())
    }

    pub(super) fn op_matmul(
        &mut self,
        x: TRef,
        w: TRef,
        bias: Option<TRef>,
        out: TRef,
    ) -> Result<()> {
        const OP: &str = "matmul";
        let d = check::matmul(&x, &w, bias.as_ref(), &out)?;
        need(matches!(out.dtype, DType::BF16 | DType::F32), || {
            format!(
                "matmul: out is {}; the CUDA kernels write bf16 or f32",
                out.dtype
            )
        })?;
        fits_i32(OP, &[d.m, d.n, d.k])?;
        let bias_ref = bias;
        // Decode (M = 1) on a ring GEMV candidate when REEL_GEMV / REEL_QGEMV select one
        // (decode.rs).
        if self.try_ring(&x, &w, bias_ref.as_ref(), None, &out, &d)? {
            return Ok(());
        }
        let (bias, bias_dt) = match &bias {
            Some(b) => (
                self.ptr(b, "matmul bias")?,
                dt_code(b.dtype, "matmul bias")?,
            ),
            None => (0, REEL_DT_NONE),
        };
        let (xp, wp) = (self.ptr(&x, "matmul x")?, self.ptr(&w, "matmul w")?);
        let op = self.ptr_mut(&out, "matmul out")?;
        if d.m == 0 || d.n == 0 {
            return Ok(());
        }
        // A single row's stride is never used: count it as packed.
        let xs = if d.m <= 1 { d.k } else { x.row_stride };
        let kern = pick(&MatmulCase {
            m: d.m,
            n: d.n,
            k: d.k,
            w: w.dtype,
            x: x.dtype,
            x_rows_16b: rows_16b(xp, xs, x.dtype),
            w_rows_16b: rows_16b(wp, w.row_stride, w.dtype),
        });
        if kern == MatmulKernel::GemmMma {
            // A REEL_GEMM candidate, when one is selected and takes these operands.
            if let Some(imp) = self.gemm_candidate(&x, &w, &out)? {
                if self.gemm(imp, x, w, bias_ref, Epilogue::None, out, d.m, d.n, d.k)? {
                    return Ok(());
                }
            }
        }
        let (grid, block) = kern.grid(d.m, d.n)?;
        let l = Launch {
            grid,
            block,
            dyn_smem: 0,
        };
        let (w_stride, w_dt) = match d.quant_row_bytes {
            None => (w.row_stride, dt_code(w.dtype, "matmul w")?),
            Some(row_bytes) => {
                self.check_quant_weight(&w, wp, kern, d.n * row_bytes)?;
                (row_bytes, qtype_code(w.dtype)?)
            }
        };
        let p = ReelMatmulParams {
            x: xp,
            w: wp,
            bias,
            out: op,
            M: d.m as i32,
            N: d.n as i32,
            K: d.k as i32,
            bias_dt,
            x_stride: xs as i64,
            w_stride: w_stride as i64,
            out_stride: out.row_stride as i64,
            out_dt: dt_code(out.dtype, "matmul out")?,
            x_dt: dt_code(x.dtype, "matmul x")?,
            w_dt,
            pad_: 0,
        };
        self.launch(kern.kernel(), l, &p)
    }
}

/// This file's ops in `impl Backend for CudaBackend` (cuda/mod.rs expands it there, as
/// `KERNEL_TABLES` takes the file's `kernels!` table).
macro_rules! backend_ops {
    () => {
        fn matmul(
            &mut self,
            x: $crate::backend::TRef,
            w: $crate::backend::TRef,
            bias: Option<$crate::backend::TRef>,
            out: $crate::backend::TRef,
        ) -> $crate::error::Result<()> {
            self.op_matmul(x, w, bias, out)
        }
    };
}
pub(super) use backend_ops;
