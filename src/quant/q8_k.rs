//! Q8_K: ggml's activation format for the K-quant dot products. 256 values per block: an f32
//! scale `d`, 256 int8 quants and sixteen i16 sums of the quants in each run of 16 (`bsums`,
//! which let a dot product apply Q4_K's mins and Q6_K's -32 offset once per sub-block).
//! Value `i` is `d * qs[i]`.

use super::nearest_int;

/// Values per block.
pub const QK_K: usize = 256;

/// One Q8_K block (ggml's block_q8_K).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8K {
    pub d: f32,
    /// Quants in -127..=127 (never -128: the AVX2 dot products rely on that).
    pub qs: [i8; QK_K],
    /// `bsums[j] = Σ qs[16j..16j + 16]`.
    pub bsums: [i16; QK_K / 16],
}

impl Default for BlockQ8K {
    fn default() -> Self {
        BlockQ8K {
            d: 0.0,
            qs: [0; QK_K],
            bsums: [0; QK_K / 16],
        }
    }
}

/// Quantizes `src` (length a multiple of 256) into `src.len() / 256` blocks with ggml's
/// quantize_row_q8_K_ref: `max` is the value of largest magnitude (the first one on ties),
/// `iscale = -127 / max`, `q = min(127, nearest_int(iscale * x))`, `d = 1 / iscale`. An all-zero
/// block gets `d = 0` and zero quants and sums.
///
/// # Panics
/// If the lengths do not fit.
pub fn quantize_row_q8_k(src: &[f32], dst: &mut [BlockQ8K]) {
    assert!(src.len().is_multiple_of(QK_K) && dst.len() == src.len() / QK_K);
    for (x, y) in src.chunks_exact(QK_K).zip(dst) {
        let mut max = 0.0f32;
        let mut amax = 0.0f32;
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            *y = BlockQ8K::default();
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in y.qs.iter_mut().zip(x) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (s, q) in y.bsums.iter_mut().zip(y.qs.chunks_exact(16)) {
            *s = q.iter().map(|&v| v as i16).sum();
        }
        y.d = 1.0 / iscale;
    }
}

/// `dst[i] = d * qs[i]`: the values an activation row stands for after quantization.
pub fn dequantize_row_q8_k(src: &[BlockQ8K], dst: &mut [f32]) {
    assert!(dst.len() == src.len() * QK_K);
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
        for (o, &q) in y.iter_mut().zip(&b.qs) {
            *o = b.d * q as f32;
        }
    }
}
