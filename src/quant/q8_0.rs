//! Q8_0: 32 weights per 34-byte block, `d` (fp16) at 0 then 32 signed bytes. `w = d * q`.

use half::f16;

/// Weights per block.
pub const QK8_0: usize = 32;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 34;

/// Quantizes `src` (length a multiple of 32) into `dst` (`src.len() / 32 * 34` bytes), bit-exact
/// with ggml's reference quantizer: `d = amax / 127`, `q = round_half_away(x * (1 / d))`.
///
/// # Panics
/// If the lengths do not fit; use [`crate::quant::quantize_row`] for a checked call.
pub fn quantize_row_q8_0(src: &[f32], dst: &mut [u8]) {
    assert!(src.len() % QK8_0 == 0 && dst.len() == src.len() / QK8_0 * BLOCK_BYTES);
    for (x, y) in src
        .chunks_exact(QK8_0)
        .zip(dst.chunks_exact_mut(BLOCK_BYTES))
    {
        let amax = x
            .iter()
            .fold(0.0f32, |a, v| if v.abs() > a { v.abs() } else { a });
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y[..2].copy_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        for (q, &v) in y[2..].iter_mut().zip(x) {
            // `round` is C's roundf (half away from zero); |v * id| <= 127 by construction.
            *q = (v * id).round() as i8 as u8;
        }
    }
}

/// `dst[i] = d * q[i]`, block by block.
///
/// # Panics
/// If the lengths do not fit.
pub fn dequantize_row_q8_0(src: &[u8], dst: &mut [f32]) {
    assert!(dst.len() % QK8_0 == 0 && src.len() == dst.len() / QK8_0 * BLOCK_BYTES);
    for (b, y) in src
        .chunks_exact(BLOCK_BYTES)
        .zip(dst.chunks_exact_mut(QK8_0))
    {
        let d = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
        for (o, &q) in y.iter_mut().zip(&b[2..]) {
            *o = q as i8 as f32 * d;
        }
    }
}

/// Scalar reference dot product: the dequantized weights times `x`, summed in order.
pub fn vec_dot_q8_0_scalar(w: &[u8], x: &[f32]) -> f32 {
    assert!(x.len() % QK8_0 == 0 && w.len() == x.len() / QK8_0 * BLOCK_BYTES);
    let mut acc = 0.0f32;
    for (b, xs) in w.chunks_exact(BLOCK_BYTES).zip(x.chunks_exact(QK8_0)) {
        let d = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
        for (&q, &v) in b[2..].iter().zip(xs) {
            acc += (q as i8 as f32 * d) * v;
        }
    }
    acc
}
