//! CPU feature detection and the element conversions the fast paths use.

use crate::tensor::DType;

/// Whether the AVX2+FMA kernels can run on this CPU (checked once, at run time).
pub fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static DETECTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *DETECTED
            .get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether F16C (fp16 <-> f32 in registers) is available alongside AVX2.
pub fn has_f16c() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// f32 -> bf16 bits, round to nearest even; NaN stays a (quiet) NaN.
#[inline]
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    let round = 0x7fff + ((b >> 16) & 1);
    (b.wrapping_add(round) >> 16) as u16
}

#[inline]
pub fn bf16_bits_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// Rounds an f32 to the nearest value of `dt` (identity for F32).
#[inline]
pub fn round_to(x: f32, dt: DType) -> f32 {
    match dt {
        DType::BF16 => bf16_bits_to_f32(f32_to_bf16_bits(x)),
        DType::F16 => half::f16::from_f32(x).to_f32(),
        _ => x,
    }
}

/// Reads `dst.len()` elements of type `dt` starting at `p` into f32.
///
/// # Safety
/// `p` must point to `dst.len()` readable, aligned elements of `dt` (F32, BF16 or F16).
#[inline]
pub unsafe fn load(p: *const u8, dt: DType, dst: &mut [f32]) {
    let n = dst.len();
    match dt {
        DType::F32 => dst.copy_from_slice(std::slice::from_raw_parts(p as *const f32, n)),
        DType::BF16 => {
            let s = std::slice::from_raw_parts(p as *const u16, n);
            for (d, &b) in dst.iter_mut().zip(s) {
                *d = bf16_bits_to_f32(b);
            }
        }
        DType::F16 => {
            let s = std::slice::from_raw_parts(p as *const half::f16, n);
            for (d, &h) in dst.iter_mut().zip(s) {
                *d = h.to_f32();
            }
        }
        _ => unreachable!("load of {dt} (callers check float types)"),
    }
}

/// Writes `src` as `dt` (rounding to nearest even) at `p`.
///
/// # Safety
/// `p` must point to `src.len()` writable, aligned elements of `dt` (F32, BF16 or F16).
#[inline]
pub unsafe fn store(p: *mut u8, dt: DType, src: &[f32]) {
    let n = src.len();
    match dt {
        DType::F32 => std::slice::from_raw_parts_mut(p as *mut f32, n).copy_from_slice(src),
        DType::BF16 => {
            let d = std::slice::from_raw_parts_mut(p as *mut u16, n);
            for (o, &x) in d.iter_mut().zip(src) {
                *o = f32_to_bf16_bits(x);
            }
        }
        DType::F16 => {
            let d = std::slice::from_raw_parts_mut(p as *mut half::f16, n);
            for (o, &x) in d.iter_mut().zip(src) {
                *o = half::f16::from_f32(x);
            }
        }
        _ => unreachable!("store of {dt} (callers check float types)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounding_is_nearest_even() {
        // 1 + 2^-8 is exactly halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1).
        assert_eq!(f32_to_bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3*2^-8 is halfway between 1+2^-7 (odd) and 1+2^-6 (even): goes up.
        assert_eq!(f32_to_bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
        // Just above halfway rounds up.
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert_eq!(f32_to_bf16_bits(-2.0), 0xc000);
        assert_eq!(f32_to_bf16_bits(f32::INFINITY), 0x7f80);
        // The largest finite f32 rounds to infinity in bf16, as in torch.
        assert_eq!(f32_to_bf16_bits(f32::MAX), 0x7f80);
        assert!(bf16_bits_to_f32(f32_to_bf16_bits(f32::NAN)).is_nan());
        // Agrees with the `half` crate over a sweep of bit patterns.
        let mut b = 0u32;
        while b < u32::MAX - 977 {
            let x = f32::from_bits(b);
            if !x.is_nan() {
                assert_eq!(
                    f32_to_bf16_bits(x),
                    half::bf16::from_f32(x).to_bits(),
                    "{b:#x}"
                );
            }
            b += 977;
        }
    }
}
