//! Q6_K: 256 weights per 210-byte super-block: low nibbles `ql`[128] @0, high 2-bit pairs
//! `qh`[64] @128, sixteen int8 sub-block scales @192, `d` fp16 @208.
//! `w = d * sc_j * (q - 32)` over sixteen sub-blocks of 16.

use super::nearest_int;
use half::f16;

/// Weights per super-block.
pub const QK_K: usize = 256;
/// Bytes per super-block.
pub const BLOCK_BYTES: usize = 210;

/// ggml's threshold below which a group counts as all zeros.
const GROUP_MAX_EPS: f32 = 1e-15;

/// Symmetric fit `x ≈ scale * (L - nmax)`, `L in 0..2*nmax`, weighted by `x^2` (ggml's
/// make_qx_quants with rmse_type 1 and no importance weights), searching 18 scales around
/// `-nmax / max`. Same arithmetic and order as ggml, so the levels match bit for bit.
fn make_qx_quants(nmax: i32, x: &[f32], l_out: &mut [i8]) -> f32 {
    let n = x.len();
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let mut iscale = -nmaxf / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l_out[i] = (l + nmax) as i8;
        let w = x[i] * x[i];
        let lf = l as f32;
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmaxf + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &v in x {
            let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
            let w = v * v;
            let lf = l as f32;
            sumlx += w * v * lf;
            suml2 += w * lf * lf;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..n {
                let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
                l_out[i] = (nmax + l) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

fn quantize_block(x: &[f32], y: &mut [u8]) {
    let mut levels = [0i8; QK_K];
    let mut scales = [0.0f32; 16];
    let mut max_scale = 0.0f32;
    let mut max_abs_scale = 0.0f32;
    for ib in 0..16 {
        let scale = make_qx_quants(
            32,
            &x[16 * ib..16 * ib + 16],
            &mut levels[16 * ib..16 * ib + 16],
        );
        scales[ib] = scale;
        if scale.abs() > max_abs_scale {
            max_abs_scale = scale.abs();
            max_scale = scale;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        y.fill(0);
        return;
    }
    let iscale = -128.0 / max_scale;
    let d16 = f16::from_f32(1.0 / iscale);
    let mut sc = [0i8; 16];
    for ib in 0..16 {
        sc[ib] = nearest_int(iscale * scales[ib]).min(127) as i8;
    }
    // Re-quantize against the stored (fp16 x int8) scales.
    for j in 0..16 {
        let d = d16.to_f32() * sc[j] as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let l = nearest_int(x[16 * j + ii] / d).clamp(-32, 31);
            levels[16 * j + ii] = (l + 32) as i8;
        }
    }
    let (ql, rest) = y.split_at_mut(128);
    let (qh, rest) = rest.split_at_mut(64);
    for h in 0..2 {
        let lv = &levels[128 * h..128 * h + 128];
        for l in 0..32 {
            let q = |o: usize| lv[l + o] as u8;
            ql[64 * h + l] = (q(0) & 0xF) | ((q(64) & 0xF) << 4);
            ql[64 * h + 32 + l] = (q(32) & 0xF) | ((q(96) & 0xF) << 4);
            qh[32 * h + l] =
                (q(0) >> 4) | ((q(32) >> 4) << 2) | ((q(64) >> 4) << 4) | ((q(96) >> 4) << 6);
        }
    }
    for (o, &s) in rest[..16].iter_mut().zip(&sc) {
        *o = s as u8;
    }
    rest[16..18].copy_from_slice(&d16.to_bits().to_le_bytes());
}

/// Quantizes `src` (length a multiple of 256) into `dst` (`src.len() / 256 * 210` bytes),
/// bit-exact with ggml's quantize_row_q6_K_ref.
///
/// # Panics
/// If the lengths do not fit; use [`crate::quant::quantize_row`] for a checked call.
pub fn quantize_row_q6_k(src: &[f32], dst: &mut [u8]) {
    assert!(src.len().is_multiple_of(QK_K) && dst.len() == src.len() / QK_K * BLOCK_BYTES);
    for (x, y) in src
        .chunks_exact(QK_K)
        .zip(dst.chunks_exact_mut(BLOCK_BYTES))
    {
        quantize_block(x, y);
    }
}

/// Decodes one super-block into its 256 signed 6-bit values (`q - 32`) and 16 scales `d * sc`.
#[inline]
pub(crate) fn unpack_block(b: &[u8], q: &mut [i8; QK_K]) -> [f32; 16] {
    let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
    for h in 0..2 {
        let (ql, qh) = (&ql[64 * h..], &qh[32 * h..]);
        let q = &mut q[128 * h..];
        for l in 0..32 {
            q[l] = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
            q[l + 32] = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            q[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            q[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
        }
    }
    let d = f16::from_bits(u16::from_le_bytes([b[208], b[209]])).to_f32();
    let mut s = [0.0f32; 16];
    for (o, &v) in s.iter_mut().zip(sc) {
        *o = d * v as i8 as f32;
    }
    s
}

/// `w = (d * sc) * (q - 32)`, in ggml's order of operations.
///
/// # Panics
/// If the lengths do not fit.
pub fn dequantize_row_q6_k(src: &[u8], dst: &mut [f32]) {
    assert!(dst.len().is_multiple_of(QK_K) && src.len() == dst.len() / QK_K * BLOCK_BYTES);
    let mut q = [0i8; QK_K];
    for (b, y) in src
        .chunks_exact(BLOCK_BYTES)
        .zip(dst.chunks_exact_mut(QK_K))
    {
        let s = unpack_block(b, &mut q);
        for (i, o) in y.iter_mut().enumerate() {
            *o = s[i / 16] * q[i] as f32;
        }
    }
}

/// Scalar reference dot product: the dequantized weights times `x`, summed in order.
pub fn vec_dot_q6_k_scalar(w: &[u8], x: &[f32]) -> f32 {
    assert!(x.len().is_multiple_of(QK_K) && w.len() == x.len() / QK_K * BLOCK_BYTES);
    let mut acc = 0.0f32;
    let mut q = [0i8; QK_K];
    for (b, xs) in w.chunks_exact(BLOCK_BYTES).zip(x.chunks_exact(QK_K)) {
        let s = unpack_block(b, &mut q);
        for i in 0..QK_K {
            acc += (s[i / 16] * q[i] as f32) * xs[i];
        }
    }
    acc
}

/// Scalar reference of the Q6_K x Q8_K dot product (ggml's vec_dot_q6_K_q8_K): per super-block
/// the exact integer `isum = Σ_j sc_j · Σ_{i in sub-block j} (q6_i - 32) · q8_i` over the sixteen
/// sub-blocks of 16, then `sumf += (f16(d) · d8) · isum`, block after block (one integer per block,
/// as the AVX2 path computes it, where ggml's generic code keeps eight lanes).
pub fn vec_dot_q6_k_q8_k_scalar(w: &[u8], a: &[super::q8_k::BlockQ8K]) -> f32 {
    assert!(w.len() == a.len() * BLOCK_BYTES);
    let mut sumf = 0.0f32;
    let mut q = [0i8; QK_K];
    for (b, y) in w.chunks_exact(BLOCK_BYTES).zip(a) {
        unpack_block(b, &mut q);
        let mut isum = 0i32;
        for j in 0..16 {
            let dot: i32 = (16 * j..16 * j + 16)
                .map(|i| q[i] as i32 * y.qs[i] as i32)
                .sum();
            isum += b[192 + j] as i8 as i32 * dot;
        }
        let d = f16::from_bits(u16::from_le_bytes([b[208], b[209]])).to_f32() * y.d;
        sumf += d * isum as f32;
    }
    sumf
}
