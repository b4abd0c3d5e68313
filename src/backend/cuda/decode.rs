//! Decode (M = 1) GEMV candidates on the per-warp ring (kernels/gemv_ring.cuh: bf16 weights in
//! gemv.cu, dp4a on Q8_0/Q4_K/Q6_K in quant.cu) and their selector; `matmul` at M = 1 runs
//! them when selected, the kernels matmul.rs picks otherwise:
//!
//! - `REEL_GEMV=v16|ring` (bf16 weights; default v16): gemv_bf16_v16 (one warp per row, four
//!   16-byte loads per lane in flight, any M <= 8), or the ring GEMV.
//! - `REEL_QGEMV=f32|dp4a` (quantized weights; default f32): qgemv_<type>_<x> (exact
//!   dequantization, f32 sums), or x quantized per CTA to 32-element int8 blocks and integer
//!   dot products (llama.cpp's method; not exact, within the harness's quantized bound).
//! - `REEL_RING_STAGES=1..4`: overrides the ring depth `plan_ring` picks (for sweeps).
//!
//! Read once when the backend opens. The defaults are the kernels every measurement so far used;
//! a candidate becomes the default only after a GPU run measures it (docs/gpu-results.md). The
//! kernels carry an RMSNorm prologue and residual / SwiGLU epilogues; `matmul_fused` with a
//! residual add (the models' O and down projections) launches the residual one, the others no
//! op launches yet.

use super::launch::{kernels, Kernel, Launch};
use super::params::{
    ReelGemvParams, REEL_DT_NONE, REEL_GV_EPI_PLAIN, REEL_GV_EPI_RESIDUAL, REEL_RING_MAX_STAGES,
    REEL_RING_SLOT, REEL_RING_WARPS,
};
use super::{dt_code, err, fits_i32, rows_16b, CudaBackend};
use crate::backend::check::MatmulDims;
use crate::backend::TRef;
use crate::error::Result;
use crate::tensor::DType;

kernels! {
    GEMV_RING_BF16_XB = "gemv" / "gemv_ring_bf16_xb";
    GEMV_RING_BF16_XF = "gemv" / "gemv_ring_bf16_xf";
    QGEMV_DP4A_Q8_0 = "quant" / "qgemv_dp4a_q8_0";
    QGEMV_DP4A_Q4_K = "quant" / "qgemv_dp4a_q4_k";
    QGEMV_DP4A_Q6_K = "quant" / "qgemv_dp4a_q6_k";
}

/// The bf16-weight decode GEMV candidates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemvChoice {
    Ring,
    V16,
}

/// The quantized-weight decode GEMV candidates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QgemvChoice {
    Dp4a,
    F32,
}

/// Which decode kernels run (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeSel {
    pub gemv: GemvChoice,
    pub qgemv: QgemvChoice,
    /// Ring depth override (None: `plan_ring` chooses).
    pub stages: Option<usize>,
}

impl Default for DecodeSel {
    fn default() -> Self {
        DecodeSel {
            gemv: GemvChoice::V16,
            qgemv: QgemvChoice::F32,
            stages: None,
        }
    }
}

impl DecodeSel {
    /// The selection from `REEL_GEMV`, `REEL_QGEMV` and `REEL_RING_STAGES`; a value outside
    /// the choices is an error naming the variable.
    pub fn from_env() -> Result<DecodeSel> {
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .map(|v| v.trim().to_ascii_lowercase())
        };
        DecodeSel::parse(
            var("REEL_GEMV").as_deref(),
            var("REEL_QGEMV").as_deref(),
            var("REEL_RING_STAGES").as_deref(),
        )
    }

    pub fn parse(gemv: Option<&str>, qgemv: Option<&str>, stages: Option<&str>) -> Result<Self> {
        let mut s = DecodeSel::default();
        match gemv {
            None | Some("") | Some("v16") => {}
            Some("ring") => s.gemv = GemvChoice::Ring,
            Some(o) => return Err(err(format!("REEL_GEMV={o}: expected v16 or ring"))),
        }
        match qgemv {
            None | Some("") | Some("f32") => {}
            Some("dp4a") => s.qgemv = QgemvChoice::Dp4a,
            Some(o) => return Err(err(format!("REEL_QGEMV={o}: expected f32 or dp4a"))),
        }
        if let Some(v) = stages.filter(|v| !v.is_empty()) {
            let n: usize = v
                .parse()
                .ok()
                .filter(|n| (1..=REEL_RING_MAX_STAGES as usize).contains(n))
                .ok_or_else(|| {
                    err(format!(
                        "REEL_RING_STAGES={v}: expected 1 to {REEL_RING_MAX_STAGES}"
                    ))
                })?;
            s.stages = Some(n);
        }
        Ok(s)
    }
}

/// Weight kinds of the ring kernels (the kernels' REEL_GV_BF16 / REEL_QT_* codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingKind {
    Bf16,
    Q8_0,
    Q4K,
    Q6K,
}

impl RingKind {
    pub fn of(w: DType) -> Option<RingKind> {
        match w {
            DType::BF16 => Some(RingKind::Bf16),
            DType::Q8_0 => Some(RingKind::Q8_0),
            DType::Q4K => Some(RingKind::Q4K),
            DType::Q6K => Some(RingKind::Q6K),
            _ => None,
        }
    }

    /// Bytes of x staged in smem for K elements (gemv_dot.h): bf16 or f32 for bf16 weights,
    /// the q8x blocks for the dp4a kernels.
    pub fn x_bytes(self, k: usize, x: DType) -> usize {
        let r16 = |b: usize| b.next_multiple_of(16);
        match self {
            RingKind::Bf16 if x == DType::BF16 => r16(2 * k),
            RingKind::Bf16 => r16(4 * k),
            _ => r16(r16(k) + 4 * (k / 32) + 4 * (k / 16)),
        }
    }

    /// Windows per row: units of 256 weights, in windows of gv_window_units.
    pub fn windows_per_row(self, k: usize) -> usize {
        let wu = match self {
            RingKind::Bf16 => 4,
            RingKind::Q8_0 => 8,
            RingKind::Q4K => 16,
            RingKind::Q6K => 10,
        };
        k.div_ceil(256).div_ceil(wu)
    }

    pub fn kernel(self, x: DType) -> Kernel {
        match self {
            RingKind::Bf16 if x == DType::BF16 => GEMV_RING_BF16_XB,
            RingKind::Bf16 => GEMV_RING_BF16_XF,
            RingKind::Q8_0 => QGEMV_DP4A_Q8_0,
            RingKind::Q4K => QGEMV_DP4A_Q4_K,
            RingKind::Q6K => QGEMV_DP4A_Q6_K,
        }
    }
}

/// What the ring plan depends on about the device and the kernel.
#[derive(Clone, Copy, Debug)]
pub struct RingDevice {
    pub sms: usize,
    pub smem_per_sm: usize,
    pub smem_optin: usize,
    pub max_threads_per_sm: usize,
    /// Registers per thread of the kernel (ptxas).
    pub regs: usize,
}

/// A launch of a ring kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingPlan {
    pub rows_per_warp: usize,
    pub stages: usize,
    pub ctas: usize,
    pub x_bytes: usize,
    pub dyn_smem: usize,
}

const THREADS: usize = 32 * REEL_RING_WARPS as usize;
/// Shared memory the driver reserves per block on sm_80+, plus the kernels' static 128 B.
const SMEM_PER_CTA_EXTRA: usize = 1024 + 128;

/// CTAs of a ring kernel resident per SM at `dyn_smem` bytes of dynamic smem.
pub fn ring_ctas_per_sm(dev: &RingDevice, dyn_smem: usize) -> usize {
    let by_threads = dev.max_threads_per_sm / THREADS;
    let by_smem = dev.smem_per_sm / (dyn_smem + SMEM_PER_CTA_EXTRA);
    // Registers are allocated per warp in units of 256 (8 per thread).
    let by_regs = 65536 / (THREADS * dev.regs.max(1).next_multiple_of(8));
    by_threads.min(by_smem).min(by_regs)
}

/// The ring launch for N rows of K: every CTA resident at once (no tail wave), rows per warp
/// as few as that allows (even for SwiGLU), and the depth that keeps the most windows in flight
/// per SM (CTAs per SM x stages, counting no more stages than a warp has windows). None when
/// even one stage does not fit the device's shared memory.
pub fn plan_ring(
    kind: RingKind,
    n: usize,
    k: usize,
    x: DType,
    swiglu: bool,
    dev: &RingDevice,
    force_stages: Option<usize>,
) -> Option<RingPlan> {
    let x_bytes = kind.x_bytes(k, x);
    let wpr = kind.windows_per_row(k);
    let max_s = REEL_RING_MAX_STAGES as usize;
    let mut best: Option<(f64, RingPlan)> = None;
    for stages in (1..=max_s).rev() {
        if force_stages.is_some_and(|f| f != stages) {
            continue;
        }
        let dyn_smem = x_bytes + REEL_RING_WARPS as usize * stages * REEL_RING_SLOT as usize;
        if dyn_smem + 128 > dev.smem_optin {
            continue;
        }
        let per_sm = ring_ctas_per_sm(dev, dyn_smem);
        if per_sm == 0 {
            continue;
        }
        let cap = dev.sms * per_sm;
        let warps = REEL_RING_WARPS as usize;
        let mut rw = n.div_ceil(warps * cap).max(1);
        if swiglu {
            rw = rw.next_multiple_of(2);
        }
        let ctas = n.div_ceil(warps * rw).max(1);
        let depth = stages.min(rw * wpr) as f64;
        let score = (ctas.min(cap) as f64 / dev.sms as f64) * depth;
        let plan = RingPlan {
            rows_per_warp: rw,
            stages,
            ctas,
            x_bytes,
            dyn_smem,
        };
        if best.is_none_or(|(b, _)| score > b) {
            best = Some((score, plan));
        }
    }
    best.map(|b| b.1)
}

impl CudaBackend {
    /// The decode kernel selection in force.
    pub fn decode_sel(&self) -> DecodeSel {
        self.decode
    }

    /// Changes the decode kernel selection (benches and tests compare candidates this way).
    pub fn set_decode_sel(&mut self, s: DecodeSel) {
        self.decode = s;
    }

    /// Whether the ring GEMV takes a matmul of these operands under the current selection.
    fn ring_kind(
        &self,
        x: &TRef,
        w: &TRef,
        out: &TRef,
        d: &MatmulDims,
        wp: u64,
    ) -> Option<RingKind> {
        if d.m != 1 || d.n == 0 || !matches!(out.dtype, DType::BF16 | DType::F32) {
            return None;
        }
        let kind = RingKind::of(w.dtype)?;
        let ok = match kind {
            RingKind::Bf16 => {
                self.decode.gemv == GemvChoice::Ring
                    && d.k.is_multiple_of(8)
                    && rows_16b(wp, w.row_stride, w.dtype)
            }
            // The contract gives whole blocks; the window reads need an even base.
            _ => self.decode.qgemv == QgemvChoice::Dp4a && wp.is_multiple_of(2),
        };
        (ok && x.dtype.is_float()).then_some(kind)
    }

    /// Launches the ring GEMV for `matmul`'s operands if it applies (M = 1, a selected ring
    /// kernel, the shared memory fits); Ok(false) otherwise, and nothing ran. With `res`, the
    /// residual epilogue: `out = round(round(x @ w^T + bias) + res)` (`matmul_fused` Add, its
    /// operands checked by the caller).
    pub(super) fn try_ring(
        &mut self,
        x: &TRef,
        w: &TRef,
        bias: Option<&TRef>,
        res: Option<&TRef>,
        out: &TRef,
        d: &MatmulDims,
    ) -> Result<bool> {
        const OP: &str = "matmul";
        let wp = self.ptr(w, "matmul w")?;
        let Some(kind) = self.ring_kind(x, w, out, d, wp) else {
            return Ok(false);
        };
        if kind != RingKind::Bf16 && !self.quant_window_fits(w, wp, d)? {
            return Ok(false);
        }
        let k_fn = kind.kernel(x.dtype);
        let regs = self.kernels.get(k_fn).map_or(64, |l| l.regs as usize);
        let dev = RingDevice {
            sms: self.info.sms as usize,
            smem_per_sm: self.info.smem_per_sm as usize,
            smem_optin: self.info.smem_optin as usize,
            max_threads_per_sm: self.info.max_threads_per_sm as usize,
            regs,
        };
        let Some(plan) = plan_ring(kind, d.n, d.k, x.dtype, false, &dev, self.decode.stages) else {
            return Ok(false);
        };
        fits_i32(OP, &[d.n, d.k, plan.ctas])?;
        let (bias, bias_dt) = match bias {
            Some(b) => (
                self.ptr(b, "matmul bias")?,
                dt_code(b.dtype, "matmul bias")?,
            ),
            None => (0, REEL_DT_NONE),
        };
        let (res, res_dt, epi) = match res {
            Some(r) => (
                self.ptr(r, "matmul_fused res")?,
                dt_code(r.dtype, "matmul_fused res")?,
                REEL_GV_EPI_RESIDUAL,
            ),
            None => (0, 0, REEL_GV_EPI_PLAIN),
        };
        let w_stride = match d.quant_row_bytes {
            Some(rb) => rb,
            None => w.dtype.bytes_for(w.row_stride),
        };
        let p = ReelGemvParams {
            x: self.ptr(x, "matmul x")?,
            w: wp,
            bias,
            norm_w: 0,
            res,
            out: self.ptr_mut(out, "matmul out")?,
            w_stride: w_stride as i64,
            N: d.n as i32,
            K: d.k as i32,
            x_dt: dt_code(x.dtype, "matmul x")?,
            bias_dt,
            norm_dt: 0,
            res_dt,
            out_dt: dt_code(out.dtype, "matmul out")?,
            epi: epi as i32,
            rows_per_warp: plan.rows_per_warp as i32,
            stages: plan.stages as i32,
            x_bytes: plan.x_bytes as i32,
            eps: 0.0,
        };
        let l = Launch {
            grid: (plan.ctas as u32, 1, 1),
            block: THREADS as u32,
            dyn_smem: plan.dyn_smem as u32,
        };
        self.launch(k_fn, l, &p)?;
        Ok(true)
    }

    /// The ring reads the aligned 16-byte chunks around each window, up to 15 bytes past a
    /// quantized row's end: the weight's buffer must cover them (load_weight pads to 16).
    fn quant_window_fits(&self, w: &TRef, wp: u64, d: &MatmulDims) -> Result<bool> {
        let Some(rb) = d.quant_row_bytes else {
            return Ok(true);
        };
        let b = self.buf(w.buf)?;
        let end = (wp + (d.n * rb) as u64).next_multiple_of(16);
        Ok(end <= b.ptr + b.mem.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h200(regs: usize) -> RingDevice {
        RingDevice {
            sms: 132,
            smem_per_sm: 228 * 1024,
            smem_optin: 227 * 1024,
            max_threads_per_sm: 2048,
            regs,
        }
    }

    #[test]
    fn selector_parses_and_rejects() {
        let d = DecodeSel::parse(None, None, None).unwrap();
        assert_eq!(d, DecodeSel::default());
        // The defaults are the measured kernels; the ring and dp4a are candidates.
        assert_eq!((d.gemv, d.qgemv), (GemvChoice::V16, QgemvChoice::F32));
        let d = DecodeSel::parse(Some("ring"), Some("dp4a"), None).unwrap();
        assert_eq!((d.gemv, d.qgemv), (GemvChoice::Ring, QgemvChoice::Dp4a));
        let d = DecodeSel::parse(Some("v16"), Some("f32"), Some("3")).unwrap();
        assert_eq!(
            (d.gemv, d.qgemv, d.stages),
            (GemvChoice::V16, QgemvChoice::F32, Some(3))
        );
        let e = DecodeSel::parse(Some("fast"), None, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("REEL_GEMV=fast") && e.contains("v16 or ring"),
            "{e}"
        );
        let e = DecodeSel::parse(None, Some("half"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("REEL_QGEMV=half"), "{e}");
        let e = DecodeSel::parse(None, None, Some("9"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("REEL_RING_STAGES=9"), "{e}");
    }

    /// The plan keeps every CTA resident (ctas <= CTAs per SM x SMs) and at the 7B shapes
    /// gives the grids worked out in the module docs of gemv_ring.cuh.
    #[test]
    fn ring_plans_at_7b_shapes() {
        let dev = h200(48);
        let shapes = [
            (RingKind::Bf16, 4608, 3584, false),
            (RingKind::Bf16, 37888, 3584, true),
            (RingKind::Bf16, 3584, 18944, false),
            (RingKind::Bf16, 152_064, 3584, false),
            (RingKind::Q4K, 3584, 3584, false),
            (RingKind::Q6K, 3584, 18944, false),
            (RingKind::Q8_0, 37888, 3584, true),
            (RingKind::Q6K, 152_064, 3584, false),
        ];
        for (kind, n, k, swiglu) in shapes {
            let p = plan_ring(kind, n, k, DType::BF16, swiglu, &dev, None).unwrap();
            let per_sm = ring_ctas_per_sm(&dev, p.dyn_smem);
            assert!(p.ctas <= per_sm * dev.sms, "{kind:?} {n}x{k}: {p:?}");
            assert!(p.ctas * 8 * p.rows_per_warp >= n, "{p:?} covers {n} rows");
            assert!(p.ctas * 8 * (p.rows_per_warp) < n + 8 * p.rows_per_warp);
            assert!(!swiglu || p.rows_per_warp.is_multiple_of(2), "{p:?}");
            assert!(p.dyn_smem + 128 <= dev.smem_optin);
            assert!((1..=4).contains(&p.stages));
        }
        // QKV: one row per warp, 576 CTAs of 2 stages (5 per SM fit).
        let p = plan_ring(RingKind::Bf16, 4608, 3584, DType::BF16, false, &dev, None).unwrap();
        assert_eq!((p.rows_per_warp, p.ctas, p.stages), (1, 576, 2), "{p:?}");
        // A forced depth is honoured.
        let p = plan_ring(RingKind::Q4K, 3584, 3584, DType::BF16, false, &dev, Some(4)).unwrap();
        assert_eq!(p.stages, 4);
        // Too little shared memory for even one stage: no plan.
        let tiny = RingDevice {
            smem_optin: 16 * 1024,
            smem_per_sm: 16 * 1024,
            ..dev
        };
        assert!(plan_ring(RingKind::Bf16, 64, 18944, DType::F32, false, &tiny, None).is_none());
    }
}
