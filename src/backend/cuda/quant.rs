//! Launchers for kernels/quant.cu: matmul and embedding with Q8_0 / Q4_K / Q6_K weights.
//!
//! Dispatch: M <= 8 takes the dequant-fused GEMV (weights streamed once through 16-byte loads,
//! exact dequantization, f32 sums); larger M with bf16 activations takes the tensor-core GEMM
//! (weight tiles dequantized to bf16 in smem); larger M with f32/f16 activations takes the GEMV
//! in slices of 8 rows (re-reads the weights per slice, but stays exact).
//!
//! ptxas (CUDA 13.0, -O3), registers per kernel, no spills and no stack frame on sm_80/86/89/90a:
//! qgemv_* 72-80 (`__launch_bounds__(256, 2)`: without the occupancy hint ptxas capped the Q8_0
//! GEMV at 64 registers and spilled), qgemm_* 125-128, qembedding 31-32. Static smem 40 KB for
//! the GEMV (8 x 2 KB weight windows + 24 KB of x) and the GEMM.

use super::launch::{Kernel, Launch};
use super::params::{
    ReelQEmbeddingParams, ReelQMatmulParams, REEL_GEMM_BM, REEL_GEMM_BN, REEL_GEMM_THREADS,
    REEL_QGEMV_ROWS, REEL_QGEMV_WARPS, REEL_QT_Q4_K, REEL_QT_Q6_K, REEL_QT_Q8_0,
};
use super::{dt_code, last_dim_rows, need, CudaBackend};
use crate::backend::TRef;
use crate::error::Result;
use crate::tensor::DType;

/// Kernel code of a quantized weight type, or None for the types quant.cu does not decode.
pub(crate) fn qtype_code(dt: DType) -> Option<i32> {
    match dt {
        DType::Q8_0 => Some(REEL_QT_Q8_0 as i32),
        DType::Q4K => Some(REEL_QT_Q4_K as i32),
        DType::Q6K => Some(REEL_QT_Q6_K as i32),
        _ => None,
    }
}

/// Bytes per row of a `[n, k]` quantized weight after checking that the type is one quant.cu
/// decodes and that K fills whole blocks.
pub(crate) fn check_qweight(what: &str, dt: DType, k: usize) -> Result<usize> {
    need(qtype_code(dt).is_some(), || {
        format!("{what}: {dt} weights are not supported by the CUDA backend")
    })?;
    need(k > 0 && k % dt.block_len() == 0, || {
        format!(
            "{what}: K = {k} is not a positive multiple of the {dt} block size {}",
            dt.block_len()
        )
    })?;
    Ok(dt.bytes_for(k))
}

/// The kernel for a quantized matmul of M rows; pure, so the dispatch is unit-tested.
/// `x_bf16` says the activations are bf16 (the GEMM's operand type and the GEMV's bf16 staging);
/// `gemm_aligned` says x rows are 16-byte aligned (cp.async in the GEMM).
pub(crate) fn pick_qmatmul(dt: DType, m: usize, x_bf16: bool, gemm_aligned: bool) -> Kernel {
    let gemm = m > REEL_QGEMV_ROWS as usize && x_bf16 && gemm_aligned;
    match (dt, gemm, x_bf16) {
        (DType::Q8_0, true, _) => Kernel::QgemmQ8_0,
        (DType::Q4K, true, _) => Kernel::QgemmQ4k,
        (DType::Q6K, true, _) => Kernel::QgemmQ6k,
        (DType::Q8_0, false, true) => Kernel::QgemvQ8_0Bf16,
        (DType::Q8_0, false, false) => Kernel::QgemvQ8_0F32,
        (DType::Q4K, false, true) => Kernel::QgemvQ4kBf16,
        (DType::Q4K, false, false) => Kernel::QgemvQ4kF32,
        (DType::Q6K, false, true) => Kernel::QgemvQ6kBf16,
        _ => Kernel::QgemvQ6kF32,
    }
}

/// Whether a kernel is one of the quantized GEMMs.
fn is_qgemm(k: Kernel) -> bool {
    matches!(k, Kernel::QgemmQ8_0 | Kernel::QgemmQ4k | Kernel::QgemmQ6k)
}

/// Launch shape of a quantized matmul: (grid, block). GEMV: one warp per output column, 8 per
/// block, grid.y walks M in slices of 8 rows; GEMM: 128 x 128 output tiles.
pub(crate) fn qmatmul_grid(kern: Kernel, m: usize, n: usize) -> Result<((u32, u32, u32), u32)> {
    let (gx, gy, block) = if is_qgemm(kern) {
        (
            n.div_ceil(REEL_GEMM_BN as usize),
            m.div_ceil(REEL_GEMM_BM as usize),
            REEL_GEMM_THREADS,
        )
    } else {
        (
            n.div_ceil(REEL_QGEMV_WARPS as usize),
            m.div_ceil(REEL_QGEMV_ROWS as usize),
            32 * REEL_QGEMV_WARPS,
        )
    };
    need(gy <= 65535 && gx <= i32::MAX as usize, || {
        format!("matmul: M = {m}, N = {n} is too large for {}", kern.name())
    })?;
    Ok(((gx as u32, gy as u32, 1), block))
}

impl CudaBackend {
    pub(super) fn op_matmul_quant(
        &mut self,
        x: TRef,
        w: TRef,
        bias: Option<TRef>,
        out: TRef,
    ) -> Result<()> {
        let (m, k, xs) = last_dim_rows(&x, "matmul x")?;
        need(w.shape.rank() == 2 && w.is_contiguous(), || {
            format!(
                "matmul: {} weight {:?} must be a contiguous [N, K]",
                w.dtype, w.shape
            )
        })?;
        let (n, wk) = (w.shape.dim(0), w.shape.dim(1));
        need(wk == k, || {
            format!(
                "matmul: x {:?} has K = {k} but weight {:?} has K = {wk}",
                x.shape, w.shape
            )
        })?;
        let row_bytes = check_qweight("matmul", w.dtype, k)?;
        let (om, on, os) = last_dim_rows(&out, "matmul out")?;
        need(om == m && on == n, || {
            format!("matmul: out {:?} must be [{m}, {n}]", out.shape)
        })?;
        let x_dt = dt_code(x.dtype, "matmul x")?;
        need(matches!(out.dtype, DType::BF16 | DType::F32), || {
            format!("matmul: out type {}", out.dtype)
        })?;
        need(
            m <= i32::MAX as usize && n <= i32::MAX as usize && k <= i32::MAX as usize,
            || "matmul: too large".into(),
        )?;
        let (bias_ptr, bias_dt) = self.matmul_bias(bias.as_ref(), n)?;
        let wp = self.ptr(&w, "matmul w")?;
        // Decoders read fp16 scales and quant pairs with 16-bit loads.
        need(wp % 2 == 0, || {
            format!("matmul: {} weight at an odd address", w.dtype)
        })?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        let p = ReelQMatmulParams {
            x: self.ptr(&x, "matmul x")?,
            w: wp,
            bias: bias_ptr,
            out: self.ptr_mut(&out, "matmul out")?,
            M: m as i32,
            N: n as i32,
            K: k as i32,
            bias_dt,
            x_stride: xs as i64,
            w_row_bytes: row_bytes as i64,
            out_stride: os as i64,
            out_dt: dt_code(out.dtype, "matmul out")?,
            x_dt,
            qtype: qtype_code(w.dtype).unwrap_or(0),
            pad_: 0,
        };
        let aligned = p.x % 16 == 0 && xs % 8 == 0;
        let kern = pick_qmatmul(w.dtype, m, x.dtype == DType::BF16, aligned);
        let (grid, block) = qmatmul_grid(kern, m, n)?;
        if !is_qgemm(kern) {
            // The GEMV reads whole aligned 16-byte chunks, up to 15 bytes past the last row:
            // load_weight pads for that, a plain alloc of an odd size does not.
            let b = self.buf(w.buf)?;
            let end = (wp + (n * row_bytes) as u64).next_multiple_of(16);
            need(end <= b.ptr + b.mem.len() as u64, || {
                format!(
                    "matmul: the 16-byte chunk holding the last byte of the {} weight {:?} \
                     runs past its buffer (quantized weights must come from load_weight)",
                    w.dtype, w.shape
                )
            })?;
        }
        self.launch(
            kern,
            Launch {
                grid,
                block,
                dyn_smem: 0,
            },
            &p,
        )
    }

    pub(super) fn op_embedding_quant(&mut self, table: TRef, ids: TRef, out: TRef) -> Result<()> {
        need(table.shape.rank() == 2, || {
            format!("embedding: table {:?} must be [V, D]", table.shape)
        })?;
        let (v, d) = (table.shape.dim(0), table.shape.dim(1));
        let row_bytes = check_qweight("embedding", table.dtype, d)?;
        need(table.is_contiguous(), || {
            format!("embedding: {} table must be contiguous", table.dtype)
        })?;
        let t = ids.shape.numel();
        need(ids.dtype == DType::I32, || {
            format!("embedding: ids are {}, not i32", ids.dtype)
        })?;
        need(out.shape.rank() == 2 && out.shape.dims() == [t, d], || {
            format!("embedding: out {:?} must be [{t}, {d}]", out.shape)
        })?;
        need(v <= i32::MAX as usize && d <= i32::MAX as usize, || {
            "embedding: table too large".into()
        })?;
        let tp = self.ptr(&table, "embedding table")?;
        need(tp % 2 == 0, || "embedding: table at an odd address".into())?;
        if t == 0 {
            return Ok(());
        }
        let p = ReelQEmbeddingParams {
            table: tp,
            ids: self.ptr(&ids, "embedding ids")?,
            out: self.ptr_mut(&out, "embedding out")?,
            row_bytes: row_bytes as i64,
            out_stride: out.row_stride as i64,
            tokens: t as i32,
            dim: d as i32,
            vocab: v as i32,
            qtype: qtype_code(table.dtype).unwrap_or(0),
            out_dt: dt_code(out.dtype, "embedding out")?,
            pad_: 0,
        };
        self.launch(
            Kernel::QEmbedding,
            Launch {
                grid: (t as u32, 1, 1),
                block: 256,
                dyn_smem: 0,
            },
            &p,
        )
    }
}
