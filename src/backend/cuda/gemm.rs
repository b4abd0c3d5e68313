//! Candidate dense bf16 GEMMs behind `REEL_GEMM`, and `matmul_fused`: the launchers of
//! kernels/gemm.cu's multi-stage mma.sync kernels (two tile configurations, fused epilogues),
//! cuBLASLt (cublaslt.rs) and kernels/epilogue.cu (the epilogue as its own pass after it).
//!
//! `REEL_GEMM` is read when the backend opens ([`GemmChoice`]):
//! - `mma` (default): matmul.rs's gemm_bf16_mma, and `matmul_fused` as the op sequence
//!   (matmul, then the elementwise op), the kernels every result so far was measured with;
//! - `tiles`: gemm_bf16_128x256 for N >= 2048, gemm_bf16_128x128 below, epilogues fused;
//! - `mma128`, `mma256`: one of those for every shape;
//! - `cublaslt`: cuBLASLt (`libcublasLt.so.13`, loaded at run time) with the epilogue pass;
//!   without the library, one line on stderr and the default.
//!
//! The candidates take bf16 x and w in 16-byte aligned rows with bf16 or f32 out; other operands,
//! and shapes cuBLASLt has no algorithm for, run the default. None is the default until a GPU
//! run has measured it against gemm_bf16_mma (docs/gpu-results.md).
//!
//! Epilogues: the hand-written kernels apply them in registers/smem; after cuBLASLt (bias in
//! its own epilogue, `CUBLASLT_EPILOGUE_BIAS`), GELU and the residual add run in place on the
//! output and SwiGLU from a scratch `[M, 2F]`, in kernels/epilogue.cu.

use super::cublaslt::{Lt, LtShape};
use super::launch::{kernels, Kernel, Launch};
use super::params::{
    ReelGemmParams, REEL_DT_NONE, REEL_EPI_ADD, REEL_EPI_GELU, REEL_EPI_NONE, REEL_EPI_SWIGLU,
};
use super::{dt_code, err, fits_i32, need, rows_16b, CudaBackend};
use crate::backend::{check, Epilogue, TRef};
use crate::error::Result;
use crate::tensor::DType;

kernels! {
    GEMM_128X128 = "gemm" / "gemm_bf16_128x128";
    GEMM_128X256 = "gemm" / "gemm_bf16_128x256";
    GEMM_EPILOGUE = "epilogue" / "gemm_epilogue_bf16";
}

/// What `REEL_GEMM` asks for (module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmChoice {
    Mma,
    Tiles,
    Mma128,
    Mma256,
    CublasLt,
}

impl GemmChoice {
    pub const NAMES: &'static str = "mma, tiles, mma128, mma256, cublaslt";
    /// Every value, as the op harness runs them side by side.
    pub const VALUES: &'static [&'static str] = &["mma", "tiles", "mma128", "mma256", "cublaslt"];

    pub fn parse(s: &str) -> Option<GemmChoice> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "" | "mma" => GemmChoice::Mma,
            "tiles" => GemmChoice::Tiles,
            "mma128" => GemmChoice::Mma128,
            "mma256" => GemmChoice::Mma256,
            "cublaslt" => GemmChoice::CublasLt,
            _ => return None,
        })
    }

    /// `REEL_GEMM`, or an error naming the variable and the accepted values.
    pub fn from_env() -> Result<GemmChoice> {
        match std::env::var("REEL_GEMM") {
            Err(_) => Ok(GemmChoice::Mma),
            Ok(v) => GemmChoice::parse(&v).ok_or_else(|| {
                err(format!(
                    "REEL_GEMM={v:?} is not one of: {}",
                    GemmChoice::NAMES
                ))
            }),
        }
    }
}

/// A candidate implementation of the dense GEMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmImpl {
    /// gemm_bf16_128x128
    Mma128,
    /// gemm_bf16_128x256
    Mma256,
    /// cuBLASLt (+ gemm_epilogue_bf16 for GELU, ADD and SwiGLU)
    Lt,
}

impl GemmImpl {
    pub fn name(self) -> &'static str {
        match self {
            GemmImpl::Mma128 => "gemm_bf16_128x128",
            GemmImpl::Mma256 => "gemm_bf16_128x256",
            GemmImpl::Lt => "cublasLt",
        }
    }
}

/// The tile configuration `tiles` picks for an output N wide (rows of w): 256-wide tiles halve
/// the X re-reads once N fills them.
pub fn mma_config(n: usize) -> GemmImpl {
    if n >= 2048 {
        GemmImpl::Mma256
    } else {
        GemmImpl::Mma128
    }
}

/// The candidate a GEMM of N columns runs with (None: the default, gemm_bf16_mma), from the
/// choice and whether cuBLASLt loaded; pure, so the selection is tested without a device.
pub fn pick_gemm(n: usize, choice: GemmChoice, lt_loaded: bool) -> Option<GemmImpl> {
    match choice {
        GemmChoice::Mma => None,
        GemmChoice::Tiles => Some(mma_config(n)),
        GemmChoice::Mma128 => Some(GemmImpl::Mma128),
        GemmChoice::Mma256 => Some(GemmImpl::Mma256),
        GemmChoice::CublasLt => lt_loaded.then_some(GemmImpl::Lt),
    }
}

/// (BM, BN) of an mma configuration.
pub fn mma_tile(i: GemmImpl) -> (usize, usize) {
    match i {
        GemmImpl::Mma256 => (128, 256),
        _ => (128, 128),
    }
}

/// Dynamic shared memory of an mma configuration: the cp.async ring (the output staging tile
/// reuses it): STAGES x (BM + BN) x (BK + 8) bf16.
pub fn mma_smem_bytes(i: GemmImpl) -> u32 {
    match i {
        GemmImpl::Mma256 => 3 * (128 + 256) * 40 * 2,
        _ => 4 * (128 + 128) * 40 * 2,
    }
}

/// The REEL_EPI_* code of an epilogue.
fn epi_code(e: &Epilogue) -> i32 {
    (match e {
        Epilogue::None => REEL_EPI_NONE,
        Epilogue::Gelu => REEL_EPI_GELU,
        Epilogue::SwiGlu => REEL_EPI_SWIGLU,
        Epilogue::Add(_) => REEL_EPI_ADD,
    }) as i32
}

impl CudaBackend {
    /// The `REEL_GEMM` candidate for these operands, or None for the default kernels: the
    /// candidates take bf16 x and w with 16-byte aligned rows and bf16 or f32 out.
    pub(super) fn gemm_candidate(
        &self,
        x: &TRef,
        w: &TRef,
        out: &TRef,
    ) -> Result<Option<GemmImpl>> {
        let Some(imp) = pick_gemm(w.shape.dim(0), self.gemm_choice, self.lt.is_some()) else {
            return Ok(None);
        };
        let (xp, wp) = (self.ptr(x, "gemm x")?, self.ptr(w, "gemm w")?);
        let xs = if x.shape.rows() <= 1 {
            x.shape.row_len()
        } else {
            x.row_stride
        };
        let ok = x.dtype == DType::BF16
            && w.dtype == DType::BF16
            && matches!(out.dtype, DType::BF16 | DType::F32)
            && rows_16b(xp, xs, x.dtype)
            && rows_16b(wp, w.row_stride, w.dtype);
        Ok(ok.then_some(imp))
    }

    pub(super) fn op_matmul_fused(
        &mut self,
        x: TRef,
        w: TRef,
        bias: Option<TRef>,
        epi: Epilogue,
        out: TRef,
    ) -> Result<()> {
        let d = check::matmul_fused(&x, &w, bias.as_ref(), &epi, &out)?;
        // Decode's residual add in the ring GEMV's epilogue, where REEL_GEMV / REEL_QGEMV
        // select it (decode.rs).
        if let Epilogue::Add(r) = epi {
            if self.try_ring(&x, &w, bias.as_ref(), Some(&r), &out, &d)? {
                return Ok(());
            }
        }
        // Small M (decode), the default choice, or operands no candidate takes: the op sequence.
        if d.m > super::matmul::GEMV_ROWS {
            if let Some(imp) = self.gemm_candidate(&x, &w, &out)? {
                if self.gemm(imp, x, w, bias, epi, out, d.m, d.n, d.k)? {
                    return Ok(());
                }
            }
        }
        crate::backend::fused::matmul_fused_composed(self, x, w, bias, epi, out)
    }

    /// Runs `out = epi(x @ w^T + bias)` with candidate `imp` (operands already checked:
    /// `check::matmul_fused` and [`Self::gemm_candidate`]). Ok(false): cuBLASLt has no algorithm
    /// for the shape, nothing was launched (the caller runs the default).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gemm(
        &mut self,
        imp: GemmImpl,
        x: TRef,
        w: TRef,
        bias: Option<TRef>,
        epi: Epilogue,
        out: TRef,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<bool> {
        fits_i32("matmul", &[m, n, k])?;
        if m == 0 || n == 0 {
            return Ok(true);
        }
        match imp {
            GemmImpl::Lt => self.gemm_lt(x, w, bias, epi, out, m, n, k),
            i => self
                .gemm_mma(i, x, w, bias, epi, out, m, n, k)
                .map(|()| true),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn gemm_params(
        &self,
        x: &TRef,
        w: &TRef,
        bias: Option<&TRef>,
        epi: &Epilogue,
        out: &TRef,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<ReelGemmParams> {
        let (bias_p, bias_dt) = match bias {
            Some(b) => (
                self.ptr(b, "matmul bias")?,
                dt_code(b.dtype, "matmul bias")?,
            ),
            None => (0, REEL_DT_NONE),
        };
        let (res, res_stride, res_dt) = match epi {
            Epilogue::Add(r) => (
                self.ptr(r, "matmul_fused res")?,
                r.row_stride as i64,
                dt_code(r.dtype, "matmul_fused res")?,
            ),
            _ => (0, 0, 0),
        };
        Ok(ReelGemmParams {
            x: self.ptr(x, "matmul x")?,
            w: self.ptr(w, "matmul w")?,
            bias: bias_p,
            out: self.ptr_mut(out, "matmul out")?,
            res,
            M: m as i32,
            N: n as i32,
            K: k as i32,
            bias_dt,
            x_stride: if m <= 1 {
                k as i64
            } else {
                x.row_stride as i64
            },
            w_stride: w.row_stride as i64,
            out_stride: out.row_stride as i64,
            res_stride,
            out_dt: dt_code(out.dtype, "matmul out")?,
            res_dt,
            epi: epi_code(epi),
            tiles_m: 0,
            tiles_n: 0,
            pad_: 0,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn gemm_mma(
        &mut self,
        imp: GemmImpl,
        x: TRef,
        w: TRef,
        bias: Option<TRef>,
        epi: Epilogue,
        out: TRef,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        let mut p = self.gemm_params(&x, &w, bias.as_ref(), &epi, &out, m, n, k)?;
        let (bm, bn) = mma_tile(imp);
        // SwiGLU tiles hold bn / 2 output features (a gate and an up row each).
        let cols = if epi == Epilogue::SwiGlu { n / 2 } else { n };
        let per_tile = if epi == Epilogue::SwiGlu { bn / 2 } else { bn };
        let (tm, tn) = (m.div_ceil(bm), cols.div_ceil(per_tile));
        need(tm * tn <= i32::MAX as usize, || {
            format!("matmul: {m} x {n} needs too many tiles")
        })?;
        p.tiles_m = tm as i32;
        p.tiles_n = tn as i32;
        let kern: Kernel = if imp == GemmImpl::Mma256 {
            GEMM_128X256
        } else {
            GEMM_128X128
        };
        let l = Launch {
            grid: ((tm * tn) as u32, 1, 1),
            block: 256,
            dyn_smem: mma_smem_bytes(imp),
        };
        self.launch(kern, l, &p)
    }

    /// cuBLASLt for the product (and bias); the rest of the epilogue in gemm_epilogue_bf16.
    /// Ok(false): cuBLASLt cannot take it (no algorithm, f16 bias, non-bf16 out with an
    /// epilogue), nothing was launched.
    #[allow(clippy::too_many_arguments)]
    fn gemm_lt(
        &mut self,
        x: TRef,
        w: TRef,
        bias: Option<TRef>,
        epi: Epilogue,
        out: TRef,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<bool> {
        if epi != Epilogue::None && out.dtype != DType::BF16 {
            return Ok(false);
        }
        let mut p = self.gemm_params(&x, &w, bias.as_ref(), &epi, &out, m, n, k)?;
        let bias_arg = bias.as_ref().map(|b| (p.bias, b.dtype));
        // Where the product goes: out itself (in place for GELU / ADD), or a scratch [M, 2F].
        let (y, y_stride) = if epi == Epilogue::SwiGlu {
            let bytes = m * n * 2;
            (self.scratch(bytes)?, n)
        } else {
            (p.out, out.row_stride)
        };
        let shape = LtShape::of(m, n, k, p.x_stride as usize, w.row_stride, y_stride);
        self.ctx
            .bind_to_thread()
            .map_err(|e| err(format!("cuBLASLt: binding the context: {e}")))?;
        let stream = self.stream.cu_stream() as cudarc::cublaslt::sys::cudaStream_t;
        let lt: &mut Lt = self.lt.as_mut().expect("gemm_lt without cuBLASLt");
        if !lt.matmul(stream, shape, p.x, p.w, bias_arg, y, out.dtype)? {
            return Ok(false);
        }
        if epi == Epilogue::None {
            return Ok(true);
        }
        // The epilogue pass reads y (bf16) and writes out.
        p.x = y;
        p.x_stride = y_stride as i64;
        let cols = if epi == Epilogue::SwiGlu { n / 2 } else { n };
        let aligned = |ptr: u64, stride: i64| ptr.is_multiple_of(16) && stride % 8 == 0;
        let vec = aligned(p.x, p.x_stride)
            && aligned(p.out, p.out_stride)
            && (epi != Epilogue::SwiGlu || (n / 2).is_multiple_of(8))
            && (!matches!(epi, Epilogue::Add(_)) || p.res_dt != 1 || aligned(p.res, p.res_stride));
        p.pad_ = vec as i32;
        let units = m * cols.div_ceil(8);
        let grid = self.stride_grid(units, 256);
        self.launch(
            GEMM_EPILOGUE,
            Launch {
                grid: (grid, 1, 1),
                block: 256,
                dyn_smem: 0,
            },
            &p,
        )?;
        Ok(true)
    }
}

/// This file's ops in `impl Backend for CudaBackend` (cuda/mod.rs expands it there).
macro_rules! backend_ops {
    () => {
        fn matmul_fused(
            &mut self,
            x: $crate::backend::TRef,
            w: $crate::backend::TRef,
            bias: Option<$crate::backend::TRef>,
            epi: $crate::backend::Epilogue,
            out: $crate::backend::TRef,
        ) -> $crate::error::Result<()> {
            self.op_matmul_fused(x, w, bias, epi, out)
        }
    };
}
pub(super) use backend_ops;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_parsing_and_selection() {
        assert_eq!(GemmChoice::parse("MMA"), Some(GemmChoice::Mma));
        assert_eq!(GemmChoice::parse(""), Some(GemmChoice::Mma));
        assert_eq!(GemmChoice::parse("cublaslt"), Some(GemmChoice::CublasLt));
        assert_eq!(GemmChoice::parse("mma256"), Some(GemmChoice::Mma256));
        assert_eq!(GemmChoice::parse("cutlass"), None);
        for v in GemmChoice::VALUES {
            assert!(GemmChoice::parse(v).is_some(), "{v}");
            assert!(GemmChoice::NAMES.contains(v), "{v}");
        }
        // The default is gemm_bf16_mma whatever loaded.
        assert_eq!(pick_gemm(3840, GemmChoice::Mma, true), None);
        assert_eq!(
            pick_gemm(3840, GemmChoice::Tiles, false),
            Some(GemmImpl::Mma256)
        );
        assert_eq!(
            pick_gemm(1280, GemmChoice::Tiles, false),
            Some(GemmImpl::Mma128)
        );
        assert_eq!(
            pick_gemm(1280, GemmChoice::CublasLt, true),
            Some(GemmImpl::Lt)
        );
        // cuBLASLt asked for but missing: the default.
        assert_eq!(pick_gemm(1280, GemmChoice::CublasLt, false), None);
        assert_eq!(
            pick_gemm(64, GemmChoice::Mma256, true),
            Some(GemmImpl::Mma256)
        );
        assert_eq!(
            pick_gemm(5120, GemmChoice::Mma128, true),
            Some(GemmImpl::Mma128)
        );
    }

    /// The dynamic smem figures are the kernels' (kernels/gemm.cu GemmCfg), and fit the
    /// opt-in limit of every target (99 KB on sm_86/89).
    #[test]
    fn mma_smem_fits_every_target() {
        for i in [GemmImpl::Mma128, GemmImpl::Mma256] {
            let b = mma_smem_bytes(i);
            let (bm, bn) = mma_tile(i);
            // The staging tile of the epilogue reuses the ring.
            assert!(bm * (bn + 8) * 2 <= b as usize, "{i:?}");
            assert!(b <= 99 * 1024, "{i:?}: {b}");
        }
    }
}
