//! Quantized weights (Q8_0, Q4_K, Q6_K) against int8 activations: every activation row is
//! quantized once (Q8_0 blocks for Q8_0 weights, Q8_K for the K-quants, as llama.cpp does), then
//! each output is the exact integer block dot products scaled in f32 in the order of the scalar
//! reference (`crate::quant::vec_dot_quantized_scalar`), so every path gives the same bits as M
//! independent GEMV rows. The one exception: on AMX, bf16 activations of [`AMX_ROWS`] rows or more
//! take the tiles over the weights dequantized to bf16 (`amx::gemm_quant`), a float sum held to
//! the bound of the bf16 GEMMs in the tests; f32 activations never do.

use super::super::isa::Isa;
use super::super::View;
use super::x16::X16;
use super::{store_row, Epi};
use crate::error::Result;
use crate::quant::{self, QuantizedRow};
use crate::tensor::DType;
use rayon::prelude::*;

/// Activation rows from which bf16 activations against quantized weights take the AMX tiles
/// (weights dequantized to bf16 per call, a cost the rows amortize) instead of int8 dots: the
/// two cross between 64 and 96 rows on the 7B shapes (Intel Xeon, 2 threads).
pub(crate) const AMX_ROWS: usize = 80;

/// Weight rows per task (small enough to spread lm_head-sized N over the threads evenly).
const CHUNK: usize = 64;

/// The activation rows of `x` quantized for `dtype` weights.
pub(crate) fn quantize_rows(
    x: &View,
    m: usize,
    k: usize,
    dtype: DType,
) -> Result<Vec<QuantizedRow>> {
    (0..m)
        .into_par_iter()
        .map_init(
            || vec![0f32; k],
            |row, r| {
                unsafe { super::load(x.at(r, 0), x.dt, row) };
                quant::quantize_activation(dtype, row)
            },
        )
        .collect()
}

/// `out[r, j] = Σ w[j, :] · a[r]` (+ bias), `w` rows of `rb` bytes; `x16`, when given, the
/// interleaved copy of `w`'s full row groups (AVX-512 only).
#[allow(clippy::too_many_arguments)]
pub(crate) fn quantized(
    isa: Isa,
    x: &View,
    w: &[u8],
    x16: Option<&X16>,
    dtype: DType,
    m: usize,
    n: usize,
    k: usize,
    epi: Epi,
    out: &View,
) -> Result<()> {
    if m == 0 || n == 0 {
        return Ok(());
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Amx && x.dt == DType::BF16 && m >= AMX_ROWS {
        // SAFETY: `Isa::Amx` is only selected where the CPU and the OS allow tiles; `w` holds
        // the `n` rows (checked by matmul).
        unsafe { super::amx::gemm_quant(x, w, dtype, m, n, k, epi, out) };
        return Ok(());
    }
    let acts = quantize_rows(x, m, k, dtype)?;
    #[cfg(target_arch = "x86_64")]
    if isa.avx512() && m > 1 {
        super::qavx512::packed(dtype, &acts, w, x16, m, n, k, epi, out);
        return Ok(());
    }
    #[cfg(target_arch = "x86_64")]
    let x16 = x16.filter(|_| isa.avx512() && m == 1);
    #[cfg(target_arch = "x86_64")]
    let mins = match (x16, &acts[0]) {
        (Some(p), QuantizedRow::Q8K(b)) if p.dtype == DType::Q4K => super::x16::q4k_min_pairs(b),
        _ => Vec::new(),
    };
    #[cfg(target_arch = "x86_64")]
    let q8 = match (x16, &acts[0]) {
        (Some(_), QuantizedRow::Q8_0(b)) => Some(super::x16::q8_0_act(b)),
        _ => None,
    };
    // One activation row (or no AVX-512): row-by-row dots.
    #[cfg(target_arch = "x86_64")]
    let q4 = (isa.avx512() && dtype == DType::Q4K).then(|| match &acts[0] {
        QuantizedRow::Q8K(b) => super::qavx512::q4k_act(b),
        _ => unreachable!("Q8_K activations"),
    });
    let rb = dtype.bytes_for(k);
    let out = *out;
    (0..n.div_ceil(CHUNK)).into_par_iter().for_each_init(
        || vec![0f32; m * CHUNK],
        |buf, c| {
            let (j0, j1) = (c * CHUNK, ((c + 1) * CHUNK).min(n));
            let cnt = j1 - j0;
            let mut j = j0;
            while j < j1 {
                // Whole interleaved groups (chunks start at multiples of 16).
                #[cfg(target_arch = "x86_64")]
                if let Some(p) = x16 {
                    if j / super::x16::G < p.groups {
                        let g = j / super::x16::G;
                        let o: &mut [f32; 16] = (&mut buf[j - j0..j - j0 + 16]).try_into().unwrap();
                        // SAFETY: x16 is only passed on AVX-512 (+ VNNI) CPUs; its shape is
                        // `w`'s, checked by matmul.
                        unsafe {
                            match (&acts[0], &q8) {
                                (QuantizedRow::Q8_0(b), Some(a)) => {
                                    super::x16::q8_0(p.group(g), p.dvals(g), b, a, o)
                                }
                                (QuantizedRow::Q8K(b), _) if p.dtype == DType::Q4K => {
                                    super::x16::q4k(p.group(g), b, &mins, o)
                                }
                                (QuantizedRow::Q8K(b), _) => {
                                    super::x16::q6k(p.group(g), p.dvals(g), b, o)
                                }
                                _ => unreachable!("activations quantized for the weight type"),
                            }
                        }
                        j += super::x16::G;
                        continue;
                    }
                }
                // AVX-512 GEMV: four weight rows per call where they are there.
                #[cfg(target_arch = "x86_64")]
                if isa.avx512() && m == 1 && j + 4 <= j1 && dtype != DType::Q8_0 {
                    let ws: [&[u8]; 4] =
                        std::array::from_fn(|i| &w[(j + i) * rb..(j + i + 1) * rb]);
                    // SAFETY: Avx512 is only selected on a CPU with AVX-512 F/BW/VL + VNNI;
                    // lengths checked by matmul.
                    let v = unsafe {
                        match (&acts[0], &q4) {
                            (QuantizedRow::Q8K(b), Some(p)) => super::qavx512::q4k_rows4(ws, b, p),
                            (QuantizedRow::Q8K(b), None) => super::qavx512::q6k_rows4(ws, b),
                            _ => unreachable!("Q8_K activations"),
                        }
                    };
                    buf[j - j0..j - j0 + 4].copy_from_slice(&v);
                    j += 4;
                    continue;
                }
                let wr = &w[j * rb..(j + 1) * rb];
                for (r, a) in acts.iter().enumerate() {
                    #[cfg(target_arch = "x86_64")]
                    if isa.avx512() {
                        // SAFETY: as above.
                        buf[r * cnt + j - j0] = unsafe {
                            match (dtype, a, &q4) {
                                (DType::Q4K, QuantizedRow::Q8K(b), Some(p)) => {
                                    super::qavx512::q4k_row(wr, b, p)
                                }
                                (DType::Q6K, QuantizedRow::Q8K(b), _) => {
                                    super::qavx512::q6k_row(wr, b)
                                }
                                _ => dot(isa, dtype, wr, a),
                            }
                        };
                        continue;
                    }
                    buf[r * cnt + j - j0] = dot(isa, dtype, wr, a);
                }
                j += 1;
            }
            for r in 0..m {
                let row = &mut buf[r * cnt..(r + 1) * cnt];
                unsafe { store_row(row, epi, &out, r, j0) };
            }
        },
    );
    Ok(())
}

/// One weight row times one quantized activation row on the chosen path.
#[inline]
pub(crate) fn dot(isa: Isa, dtype: DType, w: &[u8], a: &QuantizedRow) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: the backend only selects Avx2 / Avx512 on a CPU with AVX2+FMA+F16C; lengths
        // were checked by matmul; quantize_activation keeps every quant in -127..=127.
        unsafe {
            return match (dtype, a) {
                (DType::Q8_0, QuantizedRow::Q8_0(b)) => quant::simd::vec_dot_q8_0_q8_0(w, b),
                (DType::Q4K, QuantizedRow::Q8K(b)) => quant::simd::vec_dot_q4_k_q8_k(w, b),
                (DType::Q6K, QuantizedRow::Q8K(b)) => quant::simd::vec_dot_q6_k_q8_k(w, b),
                _ => unreachable!("activations are quantized for the weight type"),
            };
        }
    }
    let _ = isa;
    quant::vec_dot_quantized_scalar(dtype, w, a).expect("lengths checked by matmul")
}
