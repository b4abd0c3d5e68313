//! Q8_0: 32 weights per 34-byte block, `d` (fp16) at 0 then 32 signed bytes. `w = d * q`.
//! The same format quantizes activation rows ([`BlockQ8_0`]) for the integer dot product
//! [`vec_dot_q8_0_q8_0_scalar`].

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
    assert!(src.len().is_multiple_of(QK8_0) && dst.len() == src.len() / QK8_0 * BLOCK_BYTES);
    for (x, y) in src
        .chunks_exact(QK8_0)
        .zip(dst.chunks_exact_mut(BLOCK_BYTES))
    {
        let b = quantize_block(x);
        y[..2].copy_from_slice(&b.d.to_le_bytes());
        for (q, &v) in y[2..].iter_mut().zip(&b.qs) {
            *q = v as u8;
        }
    }
}

/// ggml's quantize_row_q8_0_ref for one block of 32.
fn quantize_block(x: &[f32]) -> BlockQ8_0 {
    let amax = x
        .iter()
        .fold(0.0f32, |a, v| if v.abs() > a { v.abs() } else { a });
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; QK8_0];
    for (q, &v) in qs.iter_mut().zip(x) {
        // `round` is C's roundf (half away from zero); |v * id| <= 127 by construction, so -128
        // never occurs (the AVX2 dot product relies on that).
        *q = (v * id).round() as i8;
    }
    BlockQ8_0 {
        d: f16::from_f32(d).to_bits(),
        qs,
    }
}

/// One block of a quantized activation row: ggml's block_q8_0 (fp16 scale bits, 32 quants in
/// -127..=127). Value `i` is `f16(d) * qs[i]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ8_0 {
    /// fp16 bits of the scale.
    pub d: u16,
    pub qs: [i8; QK8_0],
}

/// Quantizes an activation row (length a multiple of 32) into `dst` (`src.len() / 32` blocks) with
/// exactly the formula of the weight quantizer [`quantize_row_q8_0`].
///
/// # Panics
/// If the lengths do not fit.
pub fn quantize_row_q8_0_act(src: &[f32], dst: &mut [BlockQ8_0]) {
    assert!(src.len().is_multiple_of(QK8_0) && dst.len() == src.len() / QK8_0);
    for (x, y) in src.chunks_exact(QK8_0).zip(dst) {
        *y = quantize_block(x);
    }
}

/// `dst[i] = f16(d) * qs[i]`: the values an activation row stands for after quantization.
pub fn dequantize_row_q8_0_act(src: &[BlockQ8_0], dst: &mut [f32]) {
    assert!(dst.len() == src.len() * QK8_0);
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK8_0)) {
        let d = f16::from_bits(b.d).to_f32();
        for (o, &q) in y.iter_mut().zip(&b.qs) {
            *o = q as f32 * d;
        }
    }
}

/// Sums eight partial sums in the fixed tree the AVX2 horizontal sum uses:
/// `((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))`.
#[inline]
pub(crate) fn reduce8(a: [f32; 8]) -> f32 {
    let s4 = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
    let s2 = [s4[0] + s4[2], s4[1] + s4[3]];
    s2[0] + s2[1]
}

/// Integer dot product of one stored Q8_0 weight block (34 bytes) with an activation block.
#[inline]
pub(crate) fn block_dot_i32(w: &[u8], a: &BlockQ8_0) -> i32 {
    w[2..BLOCK_BYTES]
        .iter()
        .zip(&a.qs)
        .map(|(&q, &y)| q as i8 as i32 * y as i32)
        .sum()
}

/// Scalar reference of the Q8_0 x Q8_0 dot product (ggml's vec_dot_q8_0_q8_0): per block the
/// exact integer sum `Σ qw·qa` times `f16(dw) * f16(da)`. The block terms go into eight partial
/// sums (block `b` into `b % 8`) reduced by [`reduce8`]: the order of the AVX2 path, so both give
/// the same bits. `w` is `a.len()` stored blocks.
pub fn vec_dot_q8_0_q8_0_scalar(w: &[u8], a: &[BlockQ8_0]) -> f32 {
    assert!(w.len() == a.len() * BLOCK_BYTES);
    let mut acc = [0.0f32; 8];
    for (b, (wb, ab)) in w.chunks_exact(BLOCK_BYTES).zip(a).enumerate() {
        let d = f16::from_bits(u16::from_le_bytes([wb[0], wb[1]])).to_f32()
            * f16::from_bits(ab.d).to_f32();
        acc[b % 8] += block_dot_i32(wb, ab) as f32 * d;
    }
    reduce8(acc)
}

/// `dst[i] = d * q[i]`, block by block.
///
/// # Panics
/// If the lengths do not fit.
pub fn dequantize_row_q8_0(src: &[u8], dst: &mut [f32]) {
    assert!(dst.len().is_multiple_of(QK8_0) && src.len() == dst.len() / QK8_0 * BLOCK_BYTES);
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
    assert!(x.len().is_multiple_of(QK8_0) && w.len() == x.len() / QK8_0 * BLOCK_BYTES);
    let mut acc = 0.0f32;
    for (b, xs) in w.chunks_exact(BLOCK_BYTES).zip(x.chunks_exact(QK8_0)) {
        let d = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
        for (&q, &v) in b[2..].iter().zip(xs) {
            acc += (q as i8 as f32 * d) * v;
        }
    }
    acc
}
