//! Pillow's `Image.resize(..., BICUBIC)` for 8-bit images, bit for bit.
//!
//! Pillow's separable resampler (libImaging/Resample.c): per output pixel a window of input
//! pixels weighted by the bicubic filter (a = -0.5, support 2, stretched by the downscale
//! factor), weights normalized in f64 and then turned into fixed point with 22 fractional bits
//! (rounded half away from zero). Each pass accumulates integers starting from one half,
//! shifts and clips to uint8. The horizontal pass runs first and its uint8 result feeds the
//! vertical pass; a pass whose size does not change is skipped.

const PRECISION_BITS: u32 = 32 - 8 - 2;
const SUPPORT: f64 = 2.0;

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Per output index: first input index and the fixed-point weights.
struct Coeffs {
    bounds: Vec<(usize, usize)>,
    ksize: usize,
    k: Vec<i32>,
}

fn precompute(in_size: usize, out_size: usize) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = SUPPORT * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut k = vec![0i32; out_size * ksize];
    let mut w = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C truncates toward zero; the values here are >= -support + 0.5, so clamp first.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = (((center + support + 0.5) as i64) as usize).min(in_size);
        let n = xmax.saturating_sub(xmin).min(ksize);
        let mut ww = 0.0;
        for (x, wx) in w.iter_mut().enumerate().take(n) {
            let v = bicubic(((x + xmin) as f64 - center + 0.5) * ss);
            *wx = v;
            ww += v;
        }
        for (x, wx) in w.iter().enumerate().take(n) {
            let v = if ww != 0.0 { wx / ww } else { *wx };
            let f = v * (1u32 << PRECISION_BITS) as f64;
            k[xx * ksize + x] = if v < 0.0 {
                (f - 0.5) as i32
            } else {
                (f + 0.5) as i32
            };
        }
        bounds.push((xmin, n));
    }
    Coeffs { bounds, ksize, k }
}

#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes an 8-bit interleaved image (`h`×`w`×`c`, row-major) to `oh`×`ow` with Pillow's
/// BICUBIC filter. Same size returns a copy, as Pillow does.
pub fn resize_bicubic(src: &[u8], h: usize, w: usize, c: usize, oh: usize, ow: usize) -> Vec<u8> {
    assert_eq!(
        src.len(),
        h * w * c,
        "source buffer does not match {h}x{w}x{c}"
    );
    let half = 1i32 << (PRECISION_BITS - 1);
    let horiz;
    let (tmp, tw): (&[u8], usize) = if ow != w {
        let cf = precompute(w, ow);
        let mut out = vec![0u8; h * ow * c];
        for y in 0..h {
            let row = &src[y * w * c..(y + 1) * w * c];
            let orow = &mut out[y * ow * c..(y + 1) * ow * c];
            for (xx, &(xmin, n)) in cf.bounds.iter().enumerate() {
                let k = &cf.k[xx * cf.ksize..xx * cf.ksize + n];
                for ch in 0..c {
                    let mut acc = half;
                    for (j, &kj) in k.iter().enumerate() {
                        acc = acc.wrapping_add(row[(xmin + j) * c + ch] as i32 * kj);
                    }
                    orow[xx * c + ch] = clip8(acc);
                }
            }
        }
        horiz = out;
        (&horiz, ow)
    } else {
        (src, w)
    };
    if oh == h {
        return tmp.to_vec();
    }
    let cf = precompute(h, oh);
    let mut out = vec![0u8; oh * tw * c];
    let stride = tw * c;
    let mut acc = vec![0i32; stride];
    for (yy, &(ymin, n)) in cf.bounds.iter().enumerate() {
        let k = &cf.k[yy * cf.ksize..yy * cf.ksize + n];
        acc.fill(half);
        for (j, &kj) in k.iter().enumerate() {
            let row = &tmp[(ymin + j) * stride..(ymin + j + 1) * stride];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a = a.wrapping_add(p as i32 * kj);
            }
        }
        for (o, &a) in out[yy * stride..(yy + 1) * stride].iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_image_stays_constant() {
        let src = vec![77u8; 30 * 41 * 3];
        for (oh, ow) in [(28, 56), (112, 140), (7, 9)] {
            let out = resize_bicubic(&src, 30, 41, 3, oh, ow);
            assert!(out.iter().all(|&v| v == 77), "{oh}x{ow}");
        }
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        let cf = precompute(145, 140);
        for xx in 0..140 {
            let s: i32 = cf.k[xx * cf.ksize..(xx + 1) * cf.ksize].iter().sum();
            assert!((s - (1 << PRECISION_BITS)).abs() <= 4, "{s}");
        }
    }
}
