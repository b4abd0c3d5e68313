//! Matmul: `out[M, N] = x[M, K] @ w[N, K]^T (+ bias)`, f32 accumulation, rounded once.
//!
//! This file checks the arguments; the compute lives in `gemm/` (blocked GEMM and GEMV per
//! instruction set, chosen by the backend's [`Isa`]).

use super::isa::Isa;
use super::simd::load;
use super::{check_act, check_weight, gemm, op_err, CpuBackend};
use crate::backend::TRef;
use crate::error::Result;

pub(super) fn matmul(
    be: &CpuBackend,
    x: TRef,
    w: TRef,
    bias: Option<TRef>,
    out: TRef,
    isa: Isa,
) -> Result<()> {
    const OP: &str = "matmul";
    check_act(OP, "x", &x)?;
    check_act(OP, "out", &out)?;
    if w.dtype.is_quantized() {
        return quantized(be, x, w, bias, out, isa);
    }
    check_weight(OP, "w", &w)?;
    if w.shape.rank() != 2 {
        return Err(op_err(OP, format!("w must be [N, K], got {:?}", w.shape)));
    }
    let (n, k) = (w.shape.dim(0), w.shape.dim(1));
    let m = x.shape.rows();
    if x.shape.row_len() != k || x.shape.dim(-1) != k {
        return Err(op_err(
            OP,
            format!(
                "x {:?} does not have rows of K = {k} (w {:?})",
                x.shape, w.shape
            ),
        ));
    }
    if out.shape.rows() != m || out.shape.row_len() != n || out.shape.dim(-1) != n {
        return Err(op_err(OP, format!("out {:?} is not [{m}, {n}]", out.shape)));
    }
    let bias_f = bias_f32(be, bias.as_ref(), n)?;
    let (xv, wv, ov) = (be.view(&x)?, be.view(&w)?, be.view_mut(&out)?);
    gemm::float(isa, &xv, &wv, m, n, k, bias_f.as_deref(), &ov);
    Ok(())
}

/// The bias widened to f32, after checking it is a float [n] vector.
fn bias_f32(be: &CpuBackend, bias: Option<&TRef>, n: usize) -> Result<Option<Vec<f32>>> {
    const OP: &str = "matmul";
    let Some(b) = bias else { return Ok(None) };
    check_weight(OP, "bias", b)?;
    if b.shape.dims() != [n] {
        return Err(op_err(OP, format!("bias {:?} is not [{n}]", b.shape)));
    }
    let bv = be.view(b)?;
    let mut v = vec![0f32; n];
    unsafe { load(bv.at(0, 0), bv.dt, &mut v) };
    Ok(Some(v))
}

/// Quantized weights (Q8_0, Q4_K, Q6_K): each activation row is quantized to int8 blocks once
/// (Q8_0 or Q8_K, as llama.cpp does) and multiplied with integer block dot products (`quant`).
fn quantized(
    be: &CpuBackend,
    x: TRef,
    w: TRef,
    bias: Option<TRef>,
    out: TRef,
    isa: Isa,
) -> Result<()> {
    const OP: &str = "matmul";
    if w.shape.rank() != 2 || !w.is_contiguous() {
        return Err(op_err(
            OP,
            format!("w must be a contiguous [N, K], got {:?}", w.shape),
        ));
    }
    let (n, k, m) = (w.shape.dim(0), w.shape.dim(1), x.shape.rows());
    if k % w.dtype.block_len() != 0 {
        return Err(op_err(
            OP,
            format!("K = {k} is not a multiple of the {} block", w.dtype),
        ));
    }
    if x.shape.row_len() != k || out.shape.rows() != m || out.shape.row_len() != n {
        return Err(op_err(
            OP,
            format!(
                "x {:?} / out {:?} do not fit w {:?}",
                x.shape, out.shape, w.shape
            ),
        ));
    }
    let xv = be.view(&x)?;
    let wbytes = unsafe { std::slice::from_raw_parts(be.ptr(&w)?, w.dtype.bytes_for(n * k)) };
    let bias_f = bias_f32(be, bias.as_ref(), n)?;
    let ov = be.view_mut(&out)?;
    gemm::quant::quantized(isa, &xv, wbytes, w.dtype, m, n, k, bias_f.as_deref(), &ov)
}
