//! The CPU GEMM behind `matmul`: `out[M, N] = x[M, K] · w[N, K]ᵀ (+ bias)`, f32 accumulation,
//! rounded once to the output type. One entry per weight family, each dispatching on the
//! [`Isa`] the backend chose:
//! - [`float`]: bf16 / f16 / f32 weights. AMX (bf16 × bf16, more than 8 rows): `amx.rs`.
//!   AVX-512: `avx512.rs` (packed panels and an `MR × 48`
//!   microkernel for large M, and for small M too over bf16 panels packed at load where K is
//!   one block; otherwise lanes-over-K dots for small M; `vdpbf16ps` when both operands are bf16). AVX2: `avx2.rs`
//!   tiles. Scalar: [`scalar_tile`].
//! - [`quantized`]: Q8_0 / Q4_K / Q6_K weights against int8 activation blocks (`quant.rs`); on
//!   AMX, bf16 activations of 80 rows or more against the weights dequantized to bf16 (`amx.rs`).
//!
//! Every path finishes a row of sums through [`store_row`] with an [`Epi`]: the bias, and the
//! residual add or GELU of `matmul_fused` applied as the row is stored.
//!
//! Every path is compared with the scalar one in `tests.rs` (float paths within a stated bound,
//! the integer paths bit for bit).

use super::isa::{self, Isa};
use super::simd::{load, round_to, store};
use super::{SPtr, View};
use crate::tensor::DType;
use rayon::prelude::*;

pub(crate) mod amx;
mod avx2;
pub(crate) mod avx512;
mod qavx512;
pub(crate) mod quant;
#[cfg(test)]
mod tests;
pub(crate) mod x16;

/// 64 bytes, 64-byte aligned: the unit of the packing buffers.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct Line(pub [u32; 16]);

/// Per-thread packing buffers, kept between calls: a fresh multi-megabyte allocation per call
/// would be a fresh memory map whose pages the kernel faults in and clears every time.
#[derive(Clone, Copy)]
pub(crate) enum Slot {
    /// Packed activations (on the calling thread).
    A,
    /// A packed weight panel (per worker).
    B,
    /// Accumulators (per worker).
    C,
}

thread_local! {
    static SCRATCH: [std::cell::RefCell<Vec<Line>>; 3] = const {
        [
            std::cell::RefCell::new(Vec::new()),
            std::cell::RefCell::new(Vec::new()),
            std::cell::RefCell::new(Vec::new()),
        ]
    };
}

/// Runs `f` with this thread's `slot` buffer of at least `bytes` bytes (contents unspecified;
/// zeroed where `zero`).
pub(crate) fn with_scratch<R>(
    slot: Slot,
    bytes: usize,
    zero: bool,
    f: impl FnOnce(*mut u8) -> R,
) -> R {
    let lines = bytes.div_ceil(64).max(1);
    SCRATCH.with(|s| match s[slot as usize].try_borrow_mut() {
        Ok(mut v) => {
            if v.len() < lines {
                *v = vec![Line([0; 16]); lines];
            } else if zero {
                v[..lines].fill(Line([0; 16]));
            }
            f(v.as_mut_ptr() as *mut u8)
        }
        // Re-entered on this thread (a worker that stole another GEMM's job): a private buffer.
        Err(_) => f(vec![Line([0; 16]); lines].as_mut_ptr() as *mut u8),
    })
}

/// What a GEMM does to each row of finished sums before storing it: adds the bias (widened to
/// f32), then, with a [`Post`] step, rounds the row to the output type (where the unfused
/// `matmul` would store it) and applies the step, rounding again on the store: bit for bit the
/// unfused op sequence, with one pass over memory fewer.
#[derive(Clone, Copy, Default)]
pub(crate) struct Epi<'a> {
    pub bias: Option<&'a [f32]>,
    pub post: Post,
}

/// The elementwise op fused into a GEMM's store ([`Epi`]).
#[derive(Clone, Copy, Default)]
pub(crate) enum Post {
    #[default]
    None,
    /// `+ res[r, j]`, res a checked view of the output's shape (the residual add).
    Add(View),
    /// Exact GELU, as the `gelu` op computes it.
    Gelu,
}

/// Rows up to which the AVX-512 float path dots stored rows directly instead of packing panels.
const SMALL_M: usize = 8;

/// Finishes `row`, columns `j0..j0 + row.len()` of output row `r`: bias, post step, store.
///
/// # Safety
/// `out` is a checked view holding that row segment; so is the residual of `Post::Add`.
#[inline]
pub(crate) unsafe fn store_row(row: &mut [f32], epi: Epi, out: &View, r: usize, j0: usize) {
    if let Some(b) = epi.bias {
        for (o, &bj) in row.iter_mut().zip(&b[j0..]) {
            *o += bj;
        }
    }
    post(row, epi.post, out.dt, r, j0);
    store(out.at(r, j0), out.dt, row)
}

/// The post step of [`store_row`] on a row already holding sums + bias, output type `dt`.
///
/// # Safety
/// As [`store_row`].
#[inline]
pub(crate) unsafe fn post(row: &mut [f32], post: Post, dt: DType, r: usize, j0: usize) {
    match post {
        Post::None => {}
        Post::Add(res) => {
            let mut tmp = [0f32; 64];
            for (c, part) in row.chunks_mut(64).enumerate() {
                let t = &mut tmp[..part.len()];
                load(res.at(r, j0 + 64 * c), res.dt, t);
                for (v, &x) in part.iter_mut().zip(t.iter()) {
                    *v = round_to(*v, dt) + x;
                }
            }
        }
        Post::Gelu => {
            for v in row {
                *v = super::elementwise::gelu_rounded(*v, dt);
            }
        }
    }
}

/// Activations widened to contiguous f32 rows (M·K·4 bytes; small next to the weights).
fn widen(x: &View, m: usize, k: usize) -> Vec<f32> {
    let mut xf = vec![0f32; m * k];
    xf.par_chunks_mut(k.max(1))
        .enumerate()
        .for_each(|(r, row)| unsafe { load(x.at(r, 0), x.dt, row) });
    xf
}

/// bf16 weights packed at load for the AVX-512 large-M GEMM (none elsewhere).
#[cfg(target_arch = "x86_64")]
pub(crate) use avx512::{prepack, Panels};
#[cfg(not(target_arch = "x86_64"))]
pub(crate) struct Panels {
    pub n: usize,
    pub k: usize,
}
#[cfg(not(target_arch = "x86_64"))]
impl Panels {
    pub fn bytes(&self) -> usize {
        0
    }
}

/// Float weights (BF16, F16, F32). `x`, `w`, `out` are checked views of `[m, k]`, `[n, k]`,
/// `[m, n]`; `epi`'s bias has `n` values; `pre`, `w`'s panels packed at load.
#[allow(clippy::too_many_arguments)]
pub(crate) fn float(
    isa: Isa,
    x: &View,
    w: &View,
    pre: Option<&Panels>,
    m: usize,
    n: usize,
    k: usize,
    epi: Epi,
    out: &View,
) {
    if m == 0 || n == 0 {
        return;
    }
    // f32 activations are the reference mode, where a sequence's logits must not depend on
    // how many other rows share the call (batched decoding is exact only then): every M takes
    // one kernel whose per-element K-summation order is fixed (the small-M dots on AVX-512, a
    // fixed K block on AVX2, the scalar tile). bf16 activations keep the fastest path per M.
    let fixed_order = x.dt == DType::F32;
    #[cfg(target_arch = "x86_64")]
    if isa.avx512() && fixed_order {
        let xf = widen(x, m, k);
        // Blocks of rows bound the small kernel's per-task buffer (M · chunk floats).
        for r0 in (0..m).step_by(F32_ROWS) {
            let rows = F32_ROWS.min(m - r0);
            let (xs, os) = (x.rows_from(r0, rows), out.rows_from(r0, rows));
            // The residual's rows move with the output's.
            let epi = match epi.post {
                Post::Add(res) => Epi {
                    post: Post::Add(res.rows_from(r0, rows)),
                    ..epi
                },
                _ => epi,
            };
            let xfs = &xf[r0 * k..(r0 + rows) * k];
            avx512::small(avx512::Kind::F32, &xs, Some(xfs), w, rows, n, k, epi, &os);
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if isa.avx512() {
        let dp = isa::has_bf16_dot(isa) && x.dt == DType::BF16 && w.dt == DType::BF16;
        let kind = if dp {
            avx512::Kind::Dp
        } else {
            avx512::Kind::F32
        };
        if isa == Isa::Amx && dp && m > SMALL_M {
            // SAFETY: `Isa::Amx` is only selected where the CPU and the OS allow tiles.
            unsafe { amx::gemm(x, w, pre, m, n, k, epi, out) };
            return;
        }
        let xf = (!dp).then(|| widen(x, m, k));
        // With the panels packed at load, few rows read them too where K is one block: one
        // forward stream per panel, and each row's result bit-identical to the same row in a
        // larger batch.
        let panel_rows = dp && pre.is_some() && avx512::one_block(k);
        if m <= SMALL_M && !panel_rows {
            avx512::small(kind, x, xf.as_deref(), w, m, n, k, epi, out);
        } else {
            avx512::packed(kind, x, xf.as_deref(), w, pre, m, n, k, epi, out);
        }
        return;
    }
    tiled(isa, x, w, m, n, k, epi, out, fixed_order)
}

/// Activation rows per call of the small kernel on the fixed-order (f32 activation) path.
const F32_ROWS: usize = 64;

/// Weight rows per work unit of the AVX2 / scalar paths.
const NT: usize = 16;
/// Activation rows per work unit of the AVX2 / scalar paths.
const MB: usize = 64;

/// The AVX2 and scalar paths: (64-row block of x) × (16-row tile of w) units on rayon.
#[allow(clippy::too_many_arguments)]
fn tiled(
    isa: Isa,
    x: &View,
    w: &View,
    m: usize,
    n: usize,
    k: usize,
    epi: Epi,
    out: &View,
    fixed_order: bool,
) {
    let xf = widen(x, m, k);
    let ntiles = n.div_ceil(NT);
    let mblocks = m.div_ceil(MB);
    let xp = SPtr(xf.as_ptr() as *mut u8);
    let (w, out) = (*w, *out);
    (0..mblocks * ntiles).into_par_iter().for_each_init(
        || vec![0f32; MB * NT],
        |acc, u| {
            let (mb, t) = (u / ntiles, u % ntiles);
            let (r0, n0) = (mb * MB, t * NT);
            let rows = MB.min(m - r0);
            let cnt = NT.min(n - n0);
            let acc = &mut acc[..rows * cnt];
            acc.fill(0.0);
            let xr = unsafe { (xp.get() as *const f32).add(r0 * k) };
            match isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 | Isa::Avx512 | Isa::Amx => unsafe {
                    avx2::tile(xr, k, rows, &w, n0, cnt, acc, fixed_order)
                },
                _ => unsafe { scalar_tile(xr, k, rows, &w, n0, cnt, acc) },
            }
            for r in 0..rows {
                let row = &mut acc[r * cnt..(r + 1) * cnt];
                unsafe { store_row(row, epi, &out, r0 + r, n0) };
            }
        },
    );
}

/// The scalar path: each weight row is widened to f32 once, then dotted with every x row using
/// eight independent partial sums (which the compiler vectorizes for the baseline target).
///
/// # Safety
/// `x` holds `rows · k` floats and `w` rows `n0..n0 + cnt` of `k` elements.
unsafe fn scalar_tile(
    x: *const f32,
    k: usize,
    rows: usize,
    w: &View,
    n0: usize,
    cnt: usize,
    acc: &mut [f32],
) {
    let mut wrow = vec![0f32; k];
    for j in 0..cnt {
        load(w.at(n0 + j, 0), w.dt, &mut wrow);
        for r in 0..rows {
            let xr = std::slice::from_raw_parts(x.add(r * k), k);
            let mut part = [0f32; 8];
            let (xc, wc) = (xr.chunks_exact(8), wrow.chunks_exact(8));
            let (xt, wt) = (xc.remainder(), wc.remainder());
            for (a, b) in xc.zip(wc) {
                for l in 0..8 {
                    part[l] += a[l] * b[l];
                }
            }
            let mut s: f32 = part.iter().sum();
            for (a, b) in xt.iter().zip(wt) {
                s += a * b;
            }
            acc[r * cnt + j] += s;
        }
    }
}
