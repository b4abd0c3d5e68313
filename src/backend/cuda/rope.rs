//! Launchers for kernels/rope.cu.

use super::launch::{Kernel, Launch};
use super::params::{ReelMropeParams, ReelRopeVisionParams};
use super::{dt_code, need, CudaBackend};
use crate::backend::{MropeParams, TRef};
use crate::error::Result;
use crate::tensor::DType;

/// Checks x/out [T, H, d] with contiguous heads; returns (T, H, d).
fn rope_shapes(what: &str, x: &TRef, out: &TRef) -> Result<(usize, usize, usize)> {
    need(x.shape.rank() == 3 && out.shape == x.shape, || {
        format!(
            "{what}: x {:?} and out {:?} must both be [T, H, d]",
            x.shape, out.shape
        )
    })?;
    let (t, h, d) = (x.shape.dim(0), x.shape.dim(1), x.shape.dim(2));
    need(d % 2 == 0 && d / 2 <= 1024, || {
        format!("{what}: head_dim {d} must be even and <= 2048")
    })?;
    need(h <= 65535, || format!("{what}: {h} heads"))?;
    Ok((t, h, d))
}

impl CudaBackend {
    pub(super) fn op_rope_mrope(
        &mut self,
        x: TRef,
        pos: TRef,
        out: TRef,
        mp: MropeParams,
    ) -> Result<()> {
        let (t, h, d) = rope_shapes("rope_mrope", &x, &out)?;
        need(
            pos.dtype == DType::I32 && pos.shape.rank() == 2 && pos.shape.dims() == [3, t],
            || {
                format!(
                    "rope_mrope: positions {:?} {} must be [3, {t}] i32",
                    pos.shape, pos.dtype
                )
            },
        )?;
        let [st, sh, sw] = mp.sections;
        need(st + sh + sw == d / 2, || {
            format!(
                "rope_mrope: sections {:?} must sum to head_dim/2 = {}",
                mp.sections,
                d / 2
            )
        })?;
        if t == 0 || h == 0 {
            return Ok(());
        }
        let p = ReelMropeParams {
            x: self.ptr(&x, "rope_mrope x")?,
            pos: self.ptr(&pos, "rope_mrope pos")?,
            out: self.ptr_mut(&out, "rope_mrope out")?,
            tokens: t as i32,
            heads: h as i32,
            head_dim: d as i32,
            sec_t: st as i32,
            sec_h: sh as i32,
            sec_w: sw as i32,
            x_stride: x.row_stride as i64,
            out_stride: out.row_stride as i64,
            pos_stride: pos.row_stride as i64,
            theta: mp.theta,
            x_dt: dt_code(x.dtype, "rope_mrope x")?,
            out_dt: dt_code(out.dtype, "rope_mrope out")?,
        };
        let block = (d / 2).div_ceil(32) as u32 * 32;
        self.launch(
            Kernel::RopeMrope,
            Launch {
                grid: (t as u32, h as u32, 1),
                block,
                dyn_smem: 0,
            },
            &p,
        )
    }

    pub(super) fn op_rope_vision(
        &mut self,
        x: TRef,
        pos: TRef,
        out: TRef,
        theta: f32,
    ) -> Result<()> {
        let (n, h, d) = rope_shapes("rope_vision", &x, &out)?;
        need(d % 4 == 0, || {
            format!("rope_vision: head_dim {d} must be a multiple of 4")
        })?;
        need(
            pos.dtype == DType::I32 && pos.shape.rank() == 2 && pos.shape.dims() == [n, 2],
            || {
                format!(
                    "rope_vision: positions {:?} {} must be [{n}, 2] i32",
                    pos.shape, pos.dtype
                )
            },
        )?;
        if n == 0 || h == 0 {
            return Ok(());
        }
        let p = ReelRopeVisionParams {
            x: self.ptr(&x, "rope_vision x")?,
            pos: self.ptr(&pos, "rope_vision pos")?,
            out: self.ptr_mut(&out, "rope_vision out")?,
            tokens: n as i32,
            heads: h as i32,
            head_dim: d as i32,
            x_dt: dt_code(x.dtype, "rope_vision x")?,
            x_stride: x.row_stride as i64,
            out_stride: out.row_stride as i64,
            pos_stride: pos.row_stride as i64,
            theta,
            out_dt: dt_code(out.dtype, "rope_vision out")?,
        };
        let block = (d / 2).div_ceil(32) as u32 * 32;
        self.launch(
            Kernel::RopeVision,
            Launch {
                grid: (n as u32, h as u32, 1),
                block,
                dyn_smem: 0,
            },
            &p,
        )
    }
}
