//! Launchers for kernels/rope.cu.

use super::launch::{kernels, Kernel, Launch};
use super::params::ReelRopeParams;
use super::{dt_code, fits_i32, need, CudaBackend};
use crate::backend::check::{self, RopeDims};
use crate::backend::{MropeParams, TRef};
use crate::error::Result;

kernels! {
    ROPE_MROPE = "rope" / "rope_mrope";
    ROPE_VISION = "rope" / "rope_vision";
}

impl CudaBackend {
    pub(super) fn op_rope_mrope(
        &mut self,
        x: TRef,
        pos: TRef,
        out: TRef,
        mp: MropeParams,
    ) -> Result<()> {
        let r = check::rope_mrope(&x, &pos, &out, mp.sections)?;
        self.launch_rope(ROPE_MROPE, r, x, pos, out, mp.theta, mp.sections)
    }

    pub(super) fn op_rope_vision(
        &mut self,
        x: TRef,
        pos: TRef,
        out: TRef,
        theta: f32,
    ) -> Result<()> {
        let r = check::rope_vision(&x, &pos, &out)?;
        self.launch_rope(ROPE_VISION, r, x, pos, out, theta, [0; 3])
    }

    /// grid = (tokens, heads); a block of head_dim / 2 threads (rounded up to warps), one per
    /// rotated pair.
    #[allow(clippy::too_many_arguments)]
    fn launch_rope(
        &mut self,
        k: Kernel,
        r: RopeDims,
        x: TRef,
        pos: TRef,
        out: TRef,
        theta: f32,
        [st, sh, sw]: [usize; 3],
    ) -> Result<()> {
        let what = k.name;
        need(r.head_dim / 2 <= 1024 && r.heads <= 65535, || {
            format!(
                "{what}: head_dim {} (at most 2048) and {} heads (at most 65535)",
                r.head_dim, r.heads
            )
        })?;
        fits_i32(what, &[r.tokens])?;
        if r.tokens == 0 || r.heads == 0 {
            return Ok(());
        }
        let p = ReelRopeParams {
            x: self.ptr(&x, what)?,
            pos: self.ptr(&pos, what)?,
            out: self.ptr_mut(&out, what)?,
            tokens: r.tokens as i32,
            heads: r.heads as i32,
            head_dim: r.head_dim as i32,
            sec_t: st as i32,
            sec_h: sh as i32,
            sec_w: sw as i32,
            x_stride: x.row_stride as i64,
            out_stride: out.row_stride as i64,
            pos_stride: pos.row_stride as i64,
            theta,
            x_dt: dt_code(x.dtype, what)?,
            out_dt: dt_code(out.dtype, what)?,
        };
        let block = (r.head_dim / 2).div_ceil(32) as u32 * 32;
        self.launch(
            k,
            Launch {
                grid: (r.tokens as u32, r.heads as u32, 1),
                block,
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
        fn rope_mrope(
            &mut self,
            x: $crate::backend::TRef,
            pos: $crate::backend::TRef,
            out: $crate::backend::TRef,
            p: $crate::backend::MropeParams,
        ) -> $crate::error::Result<()> {
            self.op_rope_mrope(x, pos, out, p)
        }
        fn rope_vision(
            &mut self,
            x: $crate::backend::TRef,
            pos: $crate::backend::TRef,
            out: $crate::backend::TRef,
            theta: f32,
        ) -> $crate::error::Result<()> {
            self.op_rope_vision(x, pos, out, theta)
        }
    };
}
pub(super) use backend_ops;
