//! Q4_K: 256 weights per 144-byte super-block: `d` fp16 @0, `dmin` fp16 @2, 12 bytes of packed
//! 6-bit sub-block scales and mins @4, 128 bytes of nibbles @16. Eight sub-blocks of 32 weights;
//! `w = d * sc_j * q - dmin * m_j`.

use super::nearest_int;
use half::f16;

/// Weights per super-block.
pub const QK_K: usize = 256;
/// Bytes per super-block.
pub const BLOCK_BYTES: usize = 144;

/// The 6-bit (scale, min) of sub-block `j` (0..8) from the 12 packed scale bytes.
/// Bytes 0..4 hold scales 0..3 in their low 6 bits, bytes 4..8 mins 0..3; scales/mins 4..7 keep
/// their low nibbles in bytes 8..12 and their top two bits in the spare bits of bytes 0..8.
#[inline]
pub fn get_scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Fits `L[i] in 0..=nmax` with `x ≈ scale * L + min` (min <= 0) minimising the weighted squared
/// error, trying `nstep + 1` candidate scales around `nmax / (max - min)`. Returns the scale and
/// stores `-min` in `the_min`. Same arithmetic, in the same order, as ggml's make_qkx2_quants
/// (no fused multiply-adds), so the chosen levels match bit for bit.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l_out: &mut [u8],
    the_min: &mut f32,
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> f32 {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out[..n].fill(0);
        *the_min = -min;
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l_out[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    if nstep < 1 {
        *the_min = -min;
        return scale;
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmaxf) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = l as u8;
            let (w, lf) = (weights[i], l as f32);
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                l_out[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    scale
}

fn quantize_block(x: &[f32], y: &mut [u8]) {
    let mut levels = [0u8; QK_K];
    let mut laux = [0u8; 32];
    let mut weights = [0.0f32; 32];
    let mut mins = [0.0f32; 8];
    let mut scales = [0.0f32; 8];
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0.0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        // Weight each value by the sub-block's RMS plus its own magnitude, as ggml does.
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        scales[j] = make_qkx2_quants(
            15,
            xs,
            &weights,
            &mut levels[32 * j..32 * j + 32],
            &mut mins[j],
            &mut laux,
            -1.0,
            0.1,
            20,
        );
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut sc = [0u8; 12];
    for j in 0..8 {
        // `as u8` wraps like C's int -> uint8_t conversion before the clamp.
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            sc[j] = ls;
            sc[j + 4] = lm;
        } else {
            sc[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            sc[j - 4] |= (ls >> 4) << 6;
            sc[j] |= (lm >> 4) << 6;
        }
    }
    let d16 = f16::from_f32(max_scale / 63.0);
    let dmin16 = f16::from_f32(max_min / 63.0);
    // Re-quantize against the rounded (fp16, 6-bit) scales actually stored.
    for j in 0..8 {
        let (s, m) = get_scale_min_k4(j, &sc);
        let d = d16.to_f32() * s as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin16.to_f32() * m as f32;
        for ii in 0..32 {
            let l = nearest_int((x[32 * j + ii] + dm) / d).clamp(0, 15);
            levels[32 * j + ii] = l as u8;
        }
    }
    y[0..2].copy_from_slice(&d16.to_bits().to_le_bytes());
    y[2..4].copy_from_slice(&dmin16.to_bits().to_le_bytes());
    y[4..16].copy_from_slice(&sc);
    let qs = &mut y[16..144];
    for c in 0..4 {
        for l in 0..32 {
            qs[32 * c + l] = levels[64 * c + l] | (levels[64 * c + 32 + l] << 4);
        }
    }
}

/// Quantizes `src` (length a multiple of 256) into `dst` (`src.len() / 256 * 144` bytes),
/// bit-exact with ggml's quantize_row_q4_K_ref (the path llama.cpp takes without an imatrix).
///
/// # Panics
/// If the lengths do not fit; use [`crate::quant::quantize_row`] for a checked call.
pub fn quantize_row_q4_k(src: &[f32], dst: &mut [u8]) {
    assert!(src.len().is_multiple_of(QK_K) && dst.len() == src.len() / QK_K * BLOCK_BYTES);
    for (x, y) in src
        .chunks_exact(QK_K)
        .zip(dst.chunks_exact_mut(BLOCK_BYTES))
    {
        quantize_block(x, y);
    }
}

/// Per sub-block multipliers `(d * sc_j, dmin * m_j)` of one super-block.
#[inline]
pub(crate) fn block_scales(b: &[u8]) -> [(f32, f32); 8] {
    let d = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
    let dmin = f16::from_bits(u16::from_le_bytes([b[2], b[3]])).to_f32();
    let mut out = [(0.0, 0.0); 8];
    for (j, o) in out.iter_mut().enumerate() {
        let (s, m) = get_scale_min_k4(j, &b[4..16]);
        *o = (d * s as f32, dmin * m as f32);
    }
    out
}

/// `w = (d * sc) * q - (dmin * m)`, in ggml's order of operations.
///
/// # Panics
/// If the lengths do not fit.
pub fn dequantize_row_q4_k(src: &[u8], dst: &mut [f32]) {
    assert!(dst.len().is_multiple_of(QK_K) && src.len() == dst.len() / QK_K * BLOCK_BYTES);
    for (b, y) in src
        .chunks_exact(BLOCK_BYTES)
        .zip(dst.chunks_exact_mut(QK_K))
    {
        let s = block_scales(b);
        let qs = &b[16..];
        for c in 0..4 {
            let (d1, m1) = s[2 * c];
            let (d2, m2) = s[2 * c + 1];
            for l in 0..32 {
                let q = qs[32 * c + l];
                y[64 * c + l] = d1 * (q & 0xF) as f32 - m1;
                y[64 * c + 32 + l] = d2 * (q >> 4) as f32 - m2;
            }
        }
    }
}

/// Scalar reference dot product: the dequantized weights times `x`, summed in order.
pub fn vec_dot_q4_k_scalar(w: &[u8], x: &[f32]) -> f32 {
    assert!(x.len().is_multiple_of(QK_K) && w.len() == x.len() / QK_K * BLOCK_BYTES);
    let mut acc = 0.0f32;
    for (b, xs) in w.chunks_exact(BLOCK_BYTES).zip(x.chunks_exact(QK_K)) {
        let s = block_scales(b);
        let qs = &b[16..];
        for c in 0..4 {
            let (d1, m1) = s[2 * c];
            for l in 0..32 {
                acc += (d1 * (qs[32 * c + l] & 0xF) as f32 - m1) * xs[64 * c + l];
            }
            let (d2, m2) = s[2 * c + 1];
            for l in 0..32 {
                acc += (d2 * (qs[32 * c + l] >> 4) as f32 - m2) * xs[64 * c + 32 + l];
            }
        }
    }
    acc
}

/// All eight (scales, mins) of a super-block from its 12 packed bytes at once, by ggml's 32-bit
/// word shuffle (same values as [`get_scale_min_k4`] for j = 0..8; the AVX2 path uses this).
#[inline]
pub(crate) fn scales_mins_k4(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    const KMASK1: u32 = 0x3f3f_3f3f;
    const KMASK2: u32 = 0x0f0f_0f0f;
    const KMASK3: u32 = 0x0303_0303;
    let u = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (u0, u1, u2) = (u(0), u(1), u(2));
    let sc_lo = u0 & KMASK1;
    let sc_hi = (u2 & KMASK2) | (((u0 >> 6) & KMASK3) << 4);
    let mn_lo = u1 & KMASK1;
    let mn_hi = ((u2 >> 4) & KMASK2) | (((u1 >> 6) & KMASK3) << 4);
    let cat = |a: u32, b: u32| {
        let mut o = [0u8; 8];
        o[..4].copy_from_slice(&a.to_le_bytes());
        o[4..].copy_from_slice(&b.to_le_bytes());
        o
    };
    (cat(sc_lo, sc_hi), cat(mn_lo, mn_hi))
}

/// Scalar reference of the Q4_K x Q8_K dot product (ggml's vec_dot_q4_K_q8_K): per super-block
/// the exact integers `isum = Σ_j sc_j · Σ_{i in sub-block j} q4_i · q8_i` and
/// `imin = Σ_j m_{j/2} · bsums_j` (j over the sixteen runs of 16), then
/// `sumf += (f16(d) · d8) · isum; sumf -= (f16(dmin) · d8) · imin`, block after block. ggml's
/// generic code spreads `isum` over eight lanes before converting to float; one integer per block
/// is what the AVX2 path computes, so both paths here give the same bits.
pub fn vec_dot_q4_k_q8_k_scalar(w: &[u8], a: &[super::q8_k::BlockQ8K]) -> f32 {
    assert!(w.len() == a.len() * BLOCK_BYTES);
    let mut sumf = 0.0f32;
    for (b, y) in w.chunks_exact(BLOCK_BYTES).zip(a) {
        let qs = &b[16..BLOCK_BYTES];
        let mut isum = 0i32;
        let mut imin = 0i32;
        for j in 0..8 {
            let (sc, m) = get_scale_min_k4(j, &b[4..16]);
            let (c, shift) = (j / 2, 4 * (j % 2));
            let dot: i32 = (0..32)
                .map(|l| ((qs[32 * c + l] >> shift) & 0xF) as i32 * y.qs[32 * j + l] as i32)
                .sum();
            isum += sc as i32 * dot;
            imin += m as i32 * (y.bsums[2 * j] as i32 + y.bsums[2 * j + 1] as i32);
        }
        let d = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32() * y.d;
        let dmin = f16::from_bits(u16::from_le_bytes([b[2], b[3]])).to_f32() * y.d;
        sumf += d * isum as f32;
        sumf -= dmin * imin as f32;
    }
    sumf
}
