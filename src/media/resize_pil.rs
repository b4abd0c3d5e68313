//! Pillow's `Image.resize(..., BICUBIC)` for 8-bit images, bit for bit.
//!
//! Pillow's separable resampler (libImaging/Resample.c): per output pixel a window of input
//! pixels weighted by the bicubic filter (a = -0.5, support 2, stretched by the downscale
//! factor), weights normalized in f64 and then turned into fixed point with 22 fractional bits
//! (rounded half away from zero). Each pass accumulates integers starting from one half,
//! shifts and clips to uint8. The first pass's uint8 result feeds the second; a pass whose
//! size does not change is skipped. Pillow 13 picks the pass order per call (see
//! [`pillow13_vertical_first`]); the two orders give visibly different results.

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

fn pass_h(src: &[u8], h: usize, w: usize, c: usize, ow: usize) -> Vec<u8> {
    let half = 1i32 << (PRECISION_BITS - 1);
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
    out
}

fn pass_v(src: &[u8], h: usize, w: usize, c: usize, oh: usize) -> Vec<u8> {
    let half = 1i32 << (PRECISION_BITS - 1);
    let cf = precompute(h, oh);
    let stride = w * c;
    let mut out = vec![0u8; oh * stride];
    let mut acc = vec![0i32; stride];
    for (yy, &(ymin, n)) in cf.bounds.iter().enumerate() {
        let k = &cf.k[yy * cf.ksize..yy * cf.ksize + n];
        acc.fill(half);
        for (j, &kj) in k.iter().enumerate() {
            let row = &src[(ymin + j) * stride..(ymin + j + 1) * stride];
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

/// Whether Pillow 13 runs the vertical pass first: when the height shrinks by more than twice
/// as many pixels as the width does (python-pillow/Pillow#9549; fitted and checked on 200+
/// random sizes against Pillow 13.0.0). Older Pillow always runs the horizontal pass first.
pub fn pillow13_vertical_first(h: usize, w: usize, oh: usize, ow: usize) -> bool {
    oh < h && (h as i64 - oh as i64) > 2 * (w as i64 - ow as i64)
}

/// Resizes an 8-bit interleaved image (`h`×`w`×`c`, row-major) to `oh`×`ow` with Pillow's
/// BICUBIC filter, in Pillow 13's pass order. Same size returns a copy, as Pillow does.
pub fn resize_bicubic(src: &[u8], h: usize, w: usize, c: usize, oh: usize, ow: usize) -> Vec<u8> {
    let vfirst = pillow13_vertical_first(h, w, oh, ow);
    resize_bicubic_ordered(src, h, w, c, oh, ow, vfirst)
}

/// [`resize_bicubic`] with an explicit pass order (`vertical_first = false` is Pillow ≤ 12).
pub fn resize_bicubic_ordered(
    src: &[u8],
    h: usize,
    w: usize,
    c: usize,
    oh: usize,
    ow: usize,
    vertical_first: bool,
) -> Vec<u8> {
    assert_eq!(
        src.len(),
        h * w * c,
        "source buffer does not match {h}x{w}x{c}"
    );
    match (ow != w, oh != h) {
        (false, false) => src.to_vec(),
        (true, false) => pass_h(src, h, w, c, ow),
        (false, true) => pass_v(src, h, w, c, oh),
        (true, true) if vertical_first => {
            let t = pass_v(src, h, w, c, oh);
            pass_h(&t, oh, w, c, ow)
        }
        (true, true) => {
            let t = pass_h(src, h, w, c, ow);
            pass_v(&t, h, ow, c, oh)
        }
    }
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
    fn pillow13_pass_order_boundaries() {
        // Switch points measured against Pillow 13.0.0 (output matches one order only).
        assert!(!pillow13_vertical_first(100, 100, 40, 70));
        assert!(pillow13_vertical_first(100, 100, 40, 75));
        assert!(!pillow13_vertical_first(100, 200, 50, 170));
        assert!(pillow13_vertical_first(100, 200, 50, 180));
        assert!(!pillow13_vertical_first(100, 100, 80, 90));
        assert!(pillow13_vertical_first(100, 100, 80, 92));
        assert!(pillow13_vertical_first(60, 80, 56, 84));
        assert!(!pillow13_vertical_first(130, 145, 140, 140));
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
