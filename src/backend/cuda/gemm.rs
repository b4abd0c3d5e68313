//! The dense bf16 GEMM (`matmul` at M > 8 with bf16 x and w in 16-byte aligned rows, and
//! every `matmul_fused`): which implementation runs it, and the launchers of kernels/gemm.cu
//! (mma.sync, two tile configurations, fused epilogues), kernels/gemm_wgmma.cu (sm_90a) and
//! kernels/epilogue.cu (the epilogue as its own pass, after cuBLASLt).
//!
//! `REEL_GEMM` picks the implementation when the backend opens ([`GemmChoice`]):
//! - `auto` (default): cuBLASLt when `libcublasLt.so.13` loads, else the mma.sync kernels;
//! - `cublaslt`: cuBLASLt (falls back like `auto`, saying so once on stderr);
//! - `wgmma`: the Hopper kernel (sm_90a only; elsewhere the mma.sync kernels);
//! - `mma`: the mma.sync kernels, 128 x 256 tiles for N >= 2048 and 128 x 128 below;
//! - `mma128`, `mma256`: one mma.sync tile configuration for every shape (kernel tables).
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
    Auto,
    CublasLt,
    Wgmma,
    Mma,
    Mma128,
    Mma256,
}

impl GemmChoice {
    pub const NAMES: &'static str = "auto, cublaslt, wgmma, mma, mma128, mma256";

    pub fn parse(s: &str) -> Option<GemmChoice> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => GemmChoice::Auto,
            "cublaslt" | "lt" => GemmChoice::CublasLt,
            "wgmma" => GemmChoice::Wgmma,
            "mma" => GemmChoice::Mma,
            "mma128" => GemmChoice::Mma128,
            "mma256" => GemmChoice::Mma256,
            _ => return None,
        })
    }

    /// `REEL_GEMM`, or an error naming the variable and the accepted values.
    pub fn from_env() -> Result<GemmChoice> {
        match std::env::var("REEL_GEMM") {
            Err(_) => Ok(GemmChoice::Auto),
            Ok(v) => GemmChoice::parse(&v).ok_or_else(|| {
                err(format!("REEL_GEMM={v:?} is not one of: {}", GemmChoice::NAMES))
            }),
        }
    }
}

/// An implementation of the dense GEMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmImpl {
    /// gemm_bf16_128x128
    Mma128,
    /// gemm_bf16_128x256
    Mma256,
    /// cuBLASLt (+ gemm_epilogue_bf16 for GELU, ADD and SwiGLU)
    Lt,
    /// gemm_bf16_wgmma (sm_90a)
    Wgmma,
}

impl GemmImpl {
    pub fn name(self) -> &'static str {
        match self {
            GemmImpl::Mma128 => "gemm_bf16_128x128",
            GemmImpl::Mma256 => "gemm_bf16_128x256",
            GemmImpl::Lt => "cublasLt",
            GemmImpl::Wgmma => "gemm_bf16_wgmma",
        }
    }
}

/// What the backend could load: cuBLASLt, and whether the device runs the sm_90a kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmAvail {
    pub lt: bool,
    pub wgmma: bool,
}

/// The mma.sync tile configuration for an output N wide (columns of w): 256-wide tiles halve
/// the X re-reads once N fills them.
pub fn mma_config(n: usize) -> GemmImpl {
    if n >= 2048 {
        GemmImpl::Mma256
    } else {
        GemmImpl::Mma128
    }
}

/// The implementation a GEMM of N columns (rows of w) runs with, from the choice and what is
/// available; pure, so the selection is tested without a device.
pub fn pick_gemm(n: usize, choice: GemmChoice, avail: GemmAvail) -> GemmImpl {
    match choice {
        GemmChoice::Auto | GemmChoice::CublasLt if avail.lt => GemmImpl::Lt,
        GemmChoice::Wgmma if avail.wgmma => GemmImpl::Wgmma,
        GemmChoice::Mma128 => GemmImpl::Mma128,
        GemmChoice::Mma256 => GemmImpl::Mma256,
        _ => mma_config(n),
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
    /// The dense GEMM's operands qualify: bf16 x and w with 16-byte aligned rows, bf16 or f32
    /// out (any K: the kernels read K tails byte-exact).
    fn gemm_operands_ok(&self, x: &TRef, w: &TRef, out: &TRef) -> Result<bool> {
        let (xp, wp) = (self.ptr(x, "gemm x")?, self.ptr(w, "gemm w")?);
        let xs = if x.shape.rows() <= 1 { x.shape.row_len() } else { x.row_stride };
        Ok(x.dtype == DType::BF16
            && w.dtype == DType::BF16
            && matches!(out.dtype, DType::BF16 | DType::F32)
            && rows_16b(xp, xs, x.dtype)
            && rows_16b(wp, w.row_stride, w.dtype))
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
        // Small M (decode), quantized or f32 operands: the op sequence (GEMV + elementwise).
        if d.m <= super::matmul::GEMV_ROWS || !self.gemm_operands_ok(&x, &w, &out)? {
            return crate::backend::fused::matmul_fused_composed(self, x, w, bias, epi, out);
        }
        let imp = pick_gemm(d.n, self.gemm_choice, self.gemm_avail());
        self.gemm(imp, x, w, bias, epi, out, d.m, d.n, d.k)
    }

    pub(super) fn gemm_avail(&self) -> GemmAvail {
        GemmAvail {
            lt: self.lt.is_some(),
            wgmma: self.info.cc == (9, 0),
        }
    }

    /// Runs `out = epi(x @ w^T + bias)` with implementation `imp` (operands already checked:
    /// `check::matmul_fused` and [`Self::gemm_operands_ok`]); cuBLASLt shapes it has no
    /// algorithm for, and the wgmma kernel's unsupported cases, go to the mma kernels.
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
    ) -> Result<()> {
        fits_i32("matmul", &[m, n, k])?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        match imp {
            GemmImpl::Lt => {
                if self.gemm_lt(x, w, bias, epi, out, m, n, k)? {
                    return Ok(());
                }
                self.gemm_mma(mma_config(n), x, w, bias, epi, out, m, n, k)
            }
            GemmImpl::Wgmma => self.gemm_wgmma(x, w, bias, epi, out, m, n, k),
            i => self.gemm_mma(i, x, w, bias, epi, out, m, n, k),
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
            Some(b) => (self.ptr(b, "matmul bias")?, dt_code(b.dtype, "matmul bias")?),
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
            x_stride: if m <= 1 { k as i64 } else { x.row_stride as i64 },
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
        let kern: Kernel = if imp == GemmImpl::Mma256 { GEMM_128X256 } else { GEMM_128X128 };
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
        let bias_arg = match &bias {
            Some(b) => Some((p.bias, b.dtype)),
            None => None,
        };
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
        let aligned = |ptr: u64, stride: i64| ptr % 16 == 0 && stride % 8 == 0;
        let vec = aligned(p.x, p.x_stride)
            && aligned(p.out, p.out_stride)
            && (epi != Epilogue::SwiGlu || (n / 2) % 8 == 0)
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

    #[allow(clippy::too_many_arguments)]
    fn gemm_wgmma(
        &mut self,
        x: TRef,
        w: TRef,
        bias: Option<TRef>,
        epi: Epilogue,
        out: TRef,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        self.gemm_mma(mma_config(n), x, w, bias, epi, out, m, n, k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_parsing_and_selection() {
        assert_eq!(GemmChoice::parse("AUTO"), Some(GemmChoice::Auto));
        assert_eq!(GemmChoice::parse("cublaslt"), Some(GemmChoice::CublasLt));
        assert_eq!(GemmChoice::parse("mma256"), Some(GemmChoice::Mma256));
        assert_eq!(GemmChoice::parse("cutlass"), None);
        let all = GemmAvail { lt: true, wgmma: true };
        let none = GemmAvail { lt: false, wgmma: false };
        // auto: cuBLASLt when loaded, never the (unmeasured) wgmma kernel.
        assert_eq!(pick_gemm(3840, GemmChoice::Auto, all), GemmImpl::Lt);
        assert_eq!(pick_gemm(3840, GemmChoice::Auto, none), GemmImpl::Mma256);
        assert_eq!(pick_gemm(1280, GemmChoice::Auto, none), GemmImpl::Mma128);
        // Requests fall back when their provider is missing.
        assert_eq!(pick_gemm(1280, GemmChoice::CublasLt, none), GemmImpl::Mma128);
        assert_eq!(pick_gemm(5120, GemmChoice::Wgmma, all), GemmImpl::Wgmma);
        assert_eq!(pick_gemm(5120, GemmChoice::Wgmma, none), GemmImpl::Mma256);
        assert_eq!(pick_gemm(5120, GemmChoice::Mma, all), GemmImpl::Mma256);
        assert_eq!(pick_gemm(5120, GemmChoice::Mma128, all), GemmImpl::Mma128);
        assert_eq!(pick_gemm(64, GemmChoice::Mma256, all), GemmImpl::Mma256);
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
