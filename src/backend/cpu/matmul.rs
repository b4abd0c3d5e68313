//! Matmul: `out[M, N] = x[M, K] @ w[N, K]^T (+ bias)`, f32 accumulation, rounded once.
//!
//! The operands are checked by the op's contract (`check::matmul`); the compute lives in `gemm/`
//! (blocked GEMM and GEMV per instruction set, chosen by the backend's [`Isa`]).

use super::gemm::{Epi, Post};
use super::isa::Isa;
use super::simd::load;
use super::{gemm, CpuBackend};
use crate::backend::{check, Epilogue, TRef};
use crate::error::Result;

pub(super) fn matmul(
    be: &CpuBackend,
    x: TRef,
    w: TRef,
    bias: Option<TRef>,
    out: TRef,
    isa: Isa,
) -> Result<()> {
    let d = check::matmul(&x, &w, bias.as_ref(), &out)?;
    run(be, x, w, bias, out, isa, d, Epilogue::None)
}

/// `matmul_fused` with the residual add or GELU applied to each row as the GEMM stores it
/// ([`Epi`]). SwiGLU, which needs a row's gate and up halves side by side, is the backend's op
/// sequence (the caller's).
pub(super) fn matmul_fused(
    be: &CpuBackend,
    x: TRef,
    w: TRef,
    bias: Option<TRef>,
    epi: Epilogue,
    out: TRef,
    isa: Isa,
) -> Result<()> {
    let d = check::matmul_fused(&x, &w, bias.as_ref(), &epi, &out)?;
    run(be, x, w, bias, out, isa, d, epi)
}

/// The checked matmul `d` with `epi` (not SwiGLU) applied in the GEMM's row store.
#[allow(clippy::too_many_arguments)]
fn run(
    be: &CpuBackend,
    x: TRef,
    w: TRef,
    bias: Option<TRef>,
    out: TRef,
    isa: Isa,
    d: check::MatmulDims,
    epi: Epilogue,
) -> Result<()> {
    let (m, n, k) = (d.m, d.n, d.k);
    let bias_f = bias_f32(be, bias.as_ref(), n)?;
    let (xv, ov) = (be.view(&x)?, be.view_mut(&out)?);
    let post = match epi {
        Epilogue::None => Post::None,
        Epilogue::Gelu => Post::Gelu,
        Epilogue::Add(r) => Post::Add(be.view(&r)?),
        Epilogue::SwiGlu => unreachable!("SwiGLU is composed by the caller"),
    };
    let epi = Epi {
        bias: bias_f.as_deref(),
        post,
    };
    if d.quant_row_bytes.is_some() {
        // Quantized weights (Q8_0, Q4_K, Q6_K): each activation row is quantized to int8 blocks
        // once (Q8_0 or Q8_K, as llama.cpp does) and multiplied with integer block dot products.
        let wbytes = unsafe { std::slice::from_raw_parts(be.ptr(&w)?, w.dtype.bytes_for(n * k)) };
        // The interleaved copy, when it is of exactly this tensor.
        let x16 = be.x16.get(&w.buf.0).filter(|p| {
            w.offset == 0 && w.is_contiguous() && (p.dtype, p.n, p.k) == (w.dtype, n, k)
        });
        return gemm::quant::quantized(isa, &xv, wbytes, x16, w.dtype, m, n, k, epi, &ov);
    }
    let wv = be.view(&w)?;
    let pre = be
        .panels
        .get(&w.buf.0)
        .filter(|p| w.offset == 0 && w.is_contiguous() && (p.n, p.k) == (n, k));
    gemm::float(isa, &xv, &wv, pre, m, n, k, epi, &ov);
    Ok(())
}

/// The bias (a float [n] vector: `check::matmul`) widened to f32.
fn bias_f32(be: &CpuBackend, bias: Option<&TRef>, n: usize) -> Result<Option<Vec<f32>>> {
    let Some(b) = bias else { return Ok(None) };
    let bv = be.view(b)?;
    let mut v = vec![0f32; n];
    unsafe { load(bv.at(0, 0), bv.dt, &mut v) };
    Ok(Some(v))
}
