//! Fused ops as the op sequences they stand for: the default body of
//! [`Backend::matmul_fused`], which the CPU backend
//! inherits (so its results are exactly the unfused graph's) and which a device backend calls
//! for operand combinations its fused kernels do not take.

use super::{check, Backend, Epilogue, TRef};
use crate::error::Result;
use crate::tensor::Shape;

/// A scratch tensor of `shape` in `like`'s element type, on `be`, freed by the caller.
fn scratch(be: &mut (impl Backend + ?Sized), like: &TRef, shape: Shape) -> Result<TRef> {
    let buf = be.alloc(like.dtype.bytes_for(shape.numel()))?;
    Ok(TRef::new(buf, 0, like.dtype, shape))
}

/// Runs `f` on a scratch tensor and frees it whatever `f` returns.
fn with_scratch<B: Backend + ?Sized>(
    be: &mut B,
    t: TRef,
    f: impl FnOnce(&mut B, TRef) -> Result<()>,
) -> Result<()> {
    let r = f(be, t);
    be.free(t.buf);
    r
}

/// `matmul`, then the epilogue's elementwise op (GELU and the residual add in place on `out`,
/// SwiGLU through an `[M, 2F]` scratch).
pub fn matmul_fused_composed(
    be: &mut (impl Backend + ?Sized),
    x: TRef,
    w: TRef,
    bias: Option<TRef>,
    epi: Epilogue,
    out: TRef,
) -> Result<()> {
    let d = check::matmul_fused(&x, &w, bias.as_ref(), &epi, &out)?;
    match epi {
        Epilogue::None => be.matmul(x, w, bias, out),
        Epilogue::Gelu => {
            be.matmul(x, w, bias, out)?;
            be.gelu(out, out)
        }
        Epilogue::Add(res) => {
            be.matmul(x, w, bias, out)?;
            be.add(out, res, out)
        }
        Epilogue::SwiGlu => {
            let f = d.n / 2;
            let y = scratch(be, &out, Shape::new(&[d.m, d.n]))?;
            with_scratch(be, y, |be, y| {
                be.matmul(x, w, bias, y)?;
                let gate = TRef {
                    shape: Shape::new(&[d.m, f]),
                    ..y
                };
                let up = TRef {
                    offset: y.offset + y.dtype.bytes_for(f),
                    ..gate
                };
                be.swiglu(gate, up, out)
            })
        }
    }
}
