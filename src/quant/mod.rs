//! Quantized weight formats: ggml's block layouts (Q8_0, Q4_K, Q6_K), quantizers bit-exact with
//! ggml's reference C code, dequantizers, and CPU dot products / matrix-vector products that the
//! CPU backend calls for quantized (and bf16/f16/f32) weights.
//!
//! Layout facts (all scales IEEE fp16, little-endian):
//! - Q8_0: 34 bytes per 32 weights, see [`q8_0`].
//! - Q4_K: 144 bytes per 256 weights, see [`q4_k`].
//! - Q6_K: 210 bytes per 256 weights, see [`q6_k`].
//!
//! Calling convention for a backend: a weight `TRef` of dtype `d` and shape `[n, k]` is
//! `row_bytes(d, k)` bytes per row, rows contiguous (as GGUF and safetensors store them).
//! `matmul(w_bytes, d, n, k, x_f32, m, out_f32)` computes `out[m, n] = x[m, k] @ w^T` (m = 1 goes
//! to `matvec`); an embedding lookup of row `t` is `dequantize_row(d, &w[t * rb..(t + 1) * rb],
//! out_row)`. Activations are f32 here: a bf16 activation is widened first and the f32 result
//! rounded by the caller.
//!
//! Quantized activations (the products of [`matvec`] / [`matmul`]): as in llama.cpp, a Q8_0, Q4_K
//! or Q6_K product first quantizes each f32 activation row once ([`quantize_activation`]: to
//! [`q8_0::BlockQ8_0`] blocks of 32 for Q8_0 weights, to [`q8_k::BlockQ8K`] blocks of 256 for
//! the K-quants, with ggml's quantize_row_q8_0 / quantize_row_q8_K formulas) and then takes exact
//! integer dot products per block ([`vec_dot_quantized`]), scaled in f32. So these products see
//! `x` rounded to 8 bits per block: each element moves by at most half a quantization step
//! (`max|x_block| / 254`, plus the fp16 rounding of a Q8_0 scale), an error of order 0.4% of the
//! block's largest value, as in llama.cpp's CPU backend. Non-finite activations do not propagate
//! as they would through a float dot product (a NaN or infinite input gives garbage, not NaN).
//! The f32-activation dots ([`vec_dot`], [`vec_dot_scalar`]) stay as the numerical reference.
//! The AVX2 and scalar integer dots return the same bits.
//!
//! Bit-exactness: the quantizers evaluate ggml's formulas in the same order without fused
//! multiply-adds (Rust never contracts `a * b + c`). A llama.cpp binary built with FMA
//! contraction may differ in rare ties.

pub mod q4_k;
pub mod q6_k;
pub mod q8_0;
pub mod q8_k;
pub(crate) mod simd;

pub use q4_k::{dequantize_row_q4_k, get_scale_min_k4, quantize_row_q4_k, vec_dot_q4_k_scalar};
pub use q6_k::{dequantize_row_q6_k, quantize_row_q6_k, vec_dot_q6_k_scalar};
pub use q8_0::{dequantize_row_q8_0, quantize_row_q8_0, vec_dot_q8_0_scalar};
pub use q8_k::{quantize_row_q8_k, BlockQ8K};

use q8_0::BlockQ8_0;

use crate::error::{Error, Result};
use crate::tensor::DType;
use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;
use std::sync::OnceLock;

/// Round to nearest, ties to even, via ggml's float magic-number trick (valid for |v| < 2^22);
/// reproduced literally so out-of-range inputs behave as in ggml too.
#[inline]
pub(crate) fn nearest_int(v: f32) -> i32 {
    let val = v + 12_582_912.0f32;
    (val.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// Whether the AVX2+FMA(+F16C) paths are used: detected once at run time; `REEL_QUANT_SCALAR=1`
/// or `REEL_CPU_ISA=scalar` forces the scalar reference (to A/B a suspected SIMD bug).
pub fn has_avx2_fma() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        if std::env::var_os("REEL_QUANT_SCALAR").is_some_and(|v| v != "0")
            || std::env::var("REEL_CPU_ISA").is_ok_and(|v| v.trim().eq_ignore_ascii_case("scalar"))
        {
            return false;
        }
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Weight types the functions of this module accept.
pub fn is_supported(dtype: DType) -> bool {
    matches!(
        dtype,
        DType::F32 | DType::F16 | DType::BF16 | DType::Q8_0 | DType::Q4K | DType::Q6K
    )
}

/// Bytes of one row of `k` elements of `dtype`, or an error if `k` does not fill whole blocks.
pub fn row_bytes(dtype: DType, k: usize) -> Result<usize> {
    if !is_supported(dtype) {
        return Err(Error::Other(format!(
            "quant: unsupported weight type {dtype}"
        )));
    }
    if !k.is_multiple_of(dtype.block_len()) {
        return Err(Error::Other(format!(
            "quant: row length {k} is not a multiple of the {dtype} block size {}",
            dtype.block_len()
        )));
    }
    Ok(dtype.bytes_for(k))
}

fn check_lens(dtype: DType, n: usize, bytes: usize) -> Result<()> {
    let want = row_bytes(dtype, n)?;
    if bytes != want {
        return Err(Error::Other(format!(
            "quant: {n} {dtype} values take {want} bytes, got a buffer of {bytes}"
        )));
    }
    Ok(())
}

/// f32 -> bf16 as ggml rounds it: to nearest even, NaNs kept quiet.
#[inline]
pub fn f32_to_bf16_bits(v: f32) -> u16 {
    let u = v.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u as u64 + (0x7fff + ((u >> 16) & 1)) as u64) >> 16) as u16
}

/// Converts `src` into `dst` in the storage format `dtype` (F32, F16, BF16, Q8_0, Q4_K, Q6_K).
/// `dst` must hold exactly `row_bytes(dtype, src.len())` bytes.
pub fn quantize_row(dtype: DType, src: &[f32], dst: &mut [u8]) -> Result<()> {
    check_lens(dtype, src.len(), dst.len())?;
    match dtype {
        DType::F32 => {
            for (o, v) in dst.chunks_exact_mut(4).zip(src) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        DType::F16 => {
            for (o, v) in dst.chunks_exact_mut(2).zip(src) {
                o.copy_from_slice(&f16::from_f32(*v).to_bits().to_le_bytes());
            }
        }
        DType::BF16 => {
            for (o, v) in dst.chunks_exact_mut(2).zip(src) {
                o.copy_from_slice(&f32_to_bf16_bits(*v).to_le_bytes());
            }
        }
        DType::Q8_0 => quantize_row_q8_0(src, dst),
        DType::Q4K => quantize_row_q4_k(src, dst),
        DType::Q6K => quantize_row_q6_k(src, dst),
        _ => unreachable!("checked by row_bytes"),
    }
    Ok(())
}

/// Decodes `src` (storage format `dtype`) into f32 `dst`.
pub fn dequantize_row(dtype: DType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    check_lens(dtype, dst.len(), src.len())?;
    match dtype {
        DType::F32 => {
            for (o, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        DType::F16 => match bytemuck::try_cast_slice::<u8, f16>(src) {
            Ok(h) => h.convert_to_f32_slice(dst),
            Err(_) => {
                for (o, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                    *o = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
                }
            }
        },
        DType::BF16 => {
            for (o, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *o = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
            }
        }
        DType::Q8_0 => dequantize_row_q8_0(src, dst),
        DType::Q4K => dequantize_row_q4_k(src, dst),
        DType::Q6K => dequantize_row_q6_k(src, dst),
        _ => unreachable!("checked by row_bytes"),
    }
    Ok(())
}

/// Dot product of two f32 slices of equal length (AVX2+FMA when available).
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: features checked just above.
        return unsafe { simd::dot_f32(a, b) };
    }
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `Σ w[i] * x[i]` for one stored weight row `w` of `x.len()` elements of `dtype`.
/// Uses the AVX2+FMA path when available, otherwise the scalar reference.
pub fn vec_dot(dtype: DType, w: &[u8], x: &[f32]) -> Result<f32> {
    check_lens(dtype, x.len(), w.len())?;
    Ok(vec_dot_unchecked(dtype, w, x))
}

/// The scalar reference of [`vec_dot`]: dequantize each weight, multiply, sum in order.
pub fn vec_dot_scalar(dtype: DType, w: &[u8], x: &[f32]) -> Result<f32> {
    check_lens(dtype, x.len(), w.len())?;
    Ok(match dtype {
        DType::Q8_0 => vec_dot_q8_0_scalar(w, x),
        DType::Q4K => vec_dot_q4_k_scalar(w, x),
        DType::Q6K => vec_dot_q6_k_scalar(w, x),
        _ => {
            let mut tmp = vec![0.0f32; x.len()];
            dequantize_row(dtype, w, &mut tmp)?;
            tmp.iter().zip(x).fold(0.0f32, |a, (w, x)| a + w * x)
        }
    })
}

/// Lengths already checked.
fn vec_dot_unchecked(dtype: DType, w: &[u8], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: AVX2+FMA detected; the lengths were checked by the caller.
        unsafe {
            match dtype {
                DType::Q8_0 => return simd::vec_dot_q8_0(w, x),
                DType::Q4K => return simd::vec_dot_q4_k(w, x),
                DType::Q6K => return simd::vec_dot_q6_k(w, x),
                DType::BF16 => return simd::dot_bf16(w, x),
                _ => {}
            }
        }
    }
    match dtype {
        DType::Q8_0 => vec_dot_q8_0_scalar(w, x),
        DType::Q4K => vec_dot_q4_k_scalar(w, x),
        DType::Q6K => vec_dot_q6_k_scalar(w, x),
        DType::F32 => match bytemuck::try_cast_slice::<u8, f32>(w) {
            Ok(wf) => dot_f32(wf, x),
            Err(_) => dot_converted(dtype, w, x),
        },
        _ => dot_converted(dtype, w, x),
    }
}

/// Converts 256-element pieces of a float row to f32, then dots them.
fn dot_converted(dtype: DType, w: &[u8], x: &[f32]) -> f32 {
    let es = dtype.block_bytes();
    let mut tmp = [0.0f32; 256];
    let mut acc = 0.0f32;
    for (wc, xc) in w.chunks(256 * es).zip(x.chunks(256)) {
        let t = &mut tmp[..xc.len()];
        dequantize_row(dtype, wc, t).expect("piece lengths follow the checked row");
        acc += dot_f32(t, xc);
    }
    acc
}

/// An activation row quantized for the integer dot products of one weight type.
#[derive(Clone, Debug, PartialEq)]
pub enum QuantizedRow {
    /// For Q8_0 weights: blocks of 32.
    Q8_0(Vec<BlockQ8_0>),
    /// For Q4_K and Q6_K weights: blocks of 256.
    Q8K(Vec<BlockQ8K>),
}

impl QuantizedRow {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            QuantizedRow::Q8_0(b) => b.len() * q8_0::QK8_0,
            QuantizedRow::Q8K(b) => b.len() * q8_k::QK_K,
        }
    }

    /// Whether the row has no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The f32 values the quantized row stands for.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.len()];
        match self {
            QuantizedRow::Q8_0(b) => q8_0::dequantize_row_q8_0_act(b, &mut out),
            QuantizedRow::Q8K(b) => q8_k::dequantize_row_q8_k(b, &mut out),
        }
        out
    }
}

/// Whether products with weights of `dtype` go through quantized activations.
pub fn uses_quantized_activations(dtype: DType) -> bool {
    matches!(dtype, DType::Q8_0 | DType::Q4K | DType::Q6K)
}

/// Quantizes the activation row `x` for dot products with `dtype` weights (Q8_0 -> Q8_0 blocks,
/// Q4_K / Q6_K -> Q8_K blocks). Errors for other types or a length that is not whole blocks.
pub fn quantize_activation(dtype: DType, x: &[f32]) -> Result<QuantizedRow> {
    row_bytes(dtype, x.len())?;
    Ok(match dtype {
        DType::Q8_0 => {
            let mut b = vec![
                BlockQ8_0 {
                    d: 0,
                    qs: [0; q8_0::QK8_0]
                };
                x.len() / q8_0::QK8_0
            ];
            q8_0::quantize_row_q8_0_act(x, &mut b);
            QuantizedRow::Q8_0(b)
        }
        DType::Q4K | DType::Q6K => {
            let mut b = vec![BlockQ8K::default(); x.len() / q8_k::QK_K];
            quantize_row_q8_k(x, &mut b);
            QuantizedRow::Q8K(b)
        }
        _ => {
            return Err(Error::Other(format!(
                "quant: {dtype} weights take f32 activations, not quantized ones"
            )))
        }
    })
}

fn check_quantized(dtype: DType, w: &[u8], a: &QuantizedRow) -> Result<()> {
    let fits = matches!(
        (dtype, a),
        (DType::Q8_0, QuantizedRow::Q8_0(_)) | (DType::Q4K | DType::Q6K, QuantizedRow::Q8K(_))
    );
    if !fits {
        return Err(Error::Other(format!(
            "quant: a {dtype} weight row does not pair with this quantized activation format"
        )));
    }
    check_lens(dtype, a.len(), w.len())
}

/// `Σ w[i] * a[i]` for one stored weight row (Q8_0, Q4_K or Q6_K) and an activation row made by
/// [`quantize_activation`] for the same type: exact integer block sums, scaled in f32 (AVX2 when
/// available; the same bits as [`vec_dot_quantized_scalar`]).
pub fn vec_dot_quantized(dtype: DType, w: &[u8], a: &QuantizedRow) -> Result<f32> {
    check_quantized(dtype, w, a)?;
    Ok(vec_dot_quantized_unchecked(dtype, w, a))
}

/// The scalar reference of [`vec_dot_quantized`].
pub fn vec_dot_quantized_scalar(dtype: DType, w: &[u8], a: &QuantizedRow) -> Result<f32> {
    check_quantized(dtype, w, a)?;
    Ok(match (dtype, a) {
        (DType::Q8_0, QuantizedRow::Q8_0(b)) => q8_0::vec_dot_q8_0_q8_0_scalar(w, b),
        (DType::Q4K, QuantizedRow::Q8K(b)) => q4_k::vec_dot_q4_k_q8_k_scalar(w, b),
        (DType::Q6K, QuantizedRow::Q8K(b)) => q6_k::vec_dot_q6_k_q8_k_scalar(w, b),
        _ => unreachable!("checked by check_quantized"),
    })
}

/// Types and lengths already checked.
fn vec_dot_quantized_unchecked(dtype: DType, w: &[u8], a: &QuantizedRow) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: AVX2+FMA+F16C detected; lengths checked by the caller; quantize_activation
        // keeps every activation quant in -127..=127.
        unsafe {
            return match (dtype, a) {
                (DType::Q8_0, QuantizedRow::Q8_0(b)) => simd::vec_dot_q8_0_q8_0(w, b),
                (DType::Q4K, QuantizedRow::Q8K(b)) => simd::vec_dot_q4_k_q8_k(w, b),
                (DType::Q6K, QuantizedRow::Q8K(b)) => simd::vec_dot_q6_k_q8_k(w, b),
                _ => unreachable!("checked by the caller"),
            };
        }
    }
    match (dtype, a) {
        (DType::Q8_0, QuantizedRow::Q8_0(b)) => q8_0::vec_dot_q8_0_q8_0_scalar(w, b),
        (DType::Q4K, QuantizedRow::Q8K(b)) => q4_k::vec_dot_q4_k_q8_k_scalar(w, b),
        (DType::Q6K, QuantizedRow::Q8K(b)) => q6_k::vec_dot_q6_k_q8_k_scalar(w, b),
        _ => unreachable!("checked by the caller"),
    }
}

fn check_matrix(
    dtype: DType,
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
    out: &[f32],
) -> Result<usize> {
    let rb = row_bytes(dtype, k)?;
    if w.len() != rb * n {
        return Err(Error::Other(format!(
            "quant: a [{n}, {k}] {dtype} matrix takes {} bytes, got {}",
            rb * n,
            w.len()
        )));
    }
    if x.len() != m * k || out.len() != m * n {
        return Err(Error::Other(format!(
            "quant: matmul of [{m}, {k}] by [{n}, {k}]^T needs x of {} and out of {} floats, got {} and {}",
            m * k,
            m * n,
            x.len(),
            out.len()
        )));
    }
    Ok(rb)
}

/// `out[r] = Σ_k w[r, k] * x[k]` for a row-major `[n_rows, k]` weight matrix stored as `dtype`
/// (Q8_0, Q4_K, Q6_K, BF16, F16, F32). Rows are split across the rayon thread pool. For the
/// quantized types `x` is quantized once ([`quantize_activation`]) and shared by all rows.
pub fn matvec(
    w: &[u8],
    dtype: DType,
    n_rows: usize,
    k: usize,
    x: &[f32],
    out: &mut [f32],
) -> Result<()> {
    let rb = check_matrix(dtype, w, n_rows, k, x, 1, out)?;
    // ~4 tasks per thread keeps the pool busy without per-row scheduling overhead.
    let chunk = n_rows.div_ceil(rayon::current_num_threads() * 4).max(16);
    if uses_quantized_activations(dtype) {
        let a = quantize_activation(dtype, x)?;
        out.par_chunks_mut(chunk).enumerate().for_each(|(c, o)| {
            for (i, y) in o.iter_mut().enumerate() {
                let r = c * chunk + i;
                *y = vec_dot_quantized_unchecked(dtype, &w[r * rb..(r + 1) * rb], &a);
            }
        });
        return Ok(());
    }
    out.par_chunks_mut(chunk).enumerate().for_each(|(c, o)| {
        for (i, y) in o.iter_mut().enumerate() {
            let r = c * chunk + i;
            *y = vec_dot_unchecked(dtype, &w[r * rb..(r + 1) * rb], x);
        }
    });
    Ok(())
}

/// A raw pointer that may cross threads; users guarantee disjoint writes.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    /// Through a method so closures capture the whole (Send) wrapper, not the raw field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `out[i, r] = Σ_k x[i, k] * w[r, k]`: x is `[m, k]` f32, w is `[n, k]` stored as `dtype`,
/// out is `[m, n]` f32. For m == 1 this is [`matvec`]. Otherwise, for the quantized types, every
/// row of x is quantized once and each task takes a few weight rows against all of them (in
/// tiles of x rows that stay in cache); for float types each weight row is decoded once to f32
/// and reused for all m rows of x.
pub fn matmul(
    w: &[u8],
    dtype: DType,
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
    out: &mut [f32],
) -> Result<()> {
    if m == 1 {
        return matvec(w, dtype, n, k, x, out);
    }
    let rb = check_matrix(dtype, w, n, k, x, m, out)?;
    if uses_quantized_activations(dtype) {
        let acts = x
            .par_chunks_exact(k)
            .map(|xr| quantize_activation(dtype, xr))
            .collect::<Result<Vec<_>>>()?;
        // Weight rows per task, and x rows per tile (32 x 3584 quants stay in L2).
        const R: usize = 16;
        const T: usize = 32;
        let out_ptr = SendPtr(out.as_mut_ptr());
        (0..n.div_ceil(R)).into_par_iter().for_each(|c| {
            let r0 = c * R;
            let rows = R.min(n - r0);
            for (t, tile) in acts.chunks(T).enumerate() {
                for r in r0..r0 + rows {
                    let wr = &w[r * rb..(r + 1) * rb];
                    for (ii, a) in tile.iter().enumerate() {
                        let v = vec_dot_quantized_unchecked(dtype, wr, a);
                        // SAFETY: element (i, r) is in bounds (checked sizes) and each task
                        // writes only its own columns r0..r0 + rows, so writes never alias.
                        unsafe { *out_ptr.get().add((t * T + ii) * n + r) = v };
                    }
                }
            }
        });
        return Ok(());
    }
    // Weight rows per task: decoded once, then reused against every row of x.
    const R: usize = 4;
    let out_ptr = SendPtr(out.as_mut_ptr());
    (0..n.div_ceil(R)).into_par_iter().for_each_init(
        || vec![0.0f32; R * k],
        |wf, c| {
            let r0 = c * R;
            let rows = R.min(n - r0);
            for j in 0..rows {
                let r = r0 + j;
                dequantize_row(dtype, &w[r * rb..(r + 1) * rb], &mut wf[j * k..(j + 1) * k])
                    .expect("row lengths checked");
            }
            for (i, xr) in x.chunks_exact(k).enumerate() {
                for j in 0..rows {
                    let v = dot_f32(&wf[j * k..(j + 1) * k], xr);
                    // SAFETY: element (i, r0 + j) is in bounds (checked sizes) and each task
                    // writes only its own columns r0..r0 + rows, so writes never alias.
                    unsafe { *out_ptr.get().add(i * n + r0 + j) = v };
                }
            }
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests;
