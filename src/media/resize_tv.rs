//! torchvision `resize(uint8 TCHW, [h, w], BICUBIC, antialias=True)` as qwen-vl-utils calls it,
//! bit for bit.
//!
//! That call converts to float32, runs PyTorch's CPU antialiased bicubic interpolation
//! (`upsample_bicubic2d_aa`, align_corners=False), clamps to [0, 255], rounds half-to-even and
//! casts back to uint8. The interpolation is separable: the width pass first, then the height
//! pass, with a float32 intermediate (no rounding between passes, unlike Pillow). Weights follow
//! Pillow's windowing (a = -0.5, support 2·max(scale, 1)) but are computed in float32 with the
//! kernel's own mix of float and double steps, reproduced here operation by operation.

use super::Frames;

/// PyTorch's cubic convolution filter in float32 (a = -0.5 for antialiasing), with the
/// multiply-adds fused as the reference build (x86-64 AVX2 capability, GCC contracting `a*b+c`
/// into FMA) computes them: the unfused form misses 1 value in ~20k by one level.
fn aa_filter(x: f32) -> f32 {
    const A: f32 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0).mul_add(x, -(A + 3.0)) * x).mul_add(x, 1.0)
    } else if x < 2.0 {
        A.mul_add(x, -5.0 * A)
            .mul_add(x, 8.0 * A)
            .mul_add(x, -4.0 * A)
    } else {
        0.0
    }
}

struct Weights {
    /// (first input index, count) per output index.
    bounds: Vec<(usize, usize)>,
    stride: usize,
    w: Vec<f32>,
}

fn compute_weights(in_size: usize, out_size: usize) -> Weights {
    // area_pixel_compute_scale without an explicit scale: float(in) / out.
    let scale = in_size as f32 / out_size as f32;
    let support: f32 = if scale >= 1.0 {
        (4.0 * 0.5 * scale as f64) as f32
    } else {
        2.0
    };
    let max_size = support.ceil() as usize * 2 + 1;
    let invscale: f32 = if scale >= 1.0 {
        (1.0 / scale as f64) as f32
    } else {
        1.0
    };
    let mut bounds = Vec::with_capacity(out_size);
    let mut w = vec![0f32; out_size * max_size];
    for i in 0..out_size {
        let center = (scale as f64 * (i as f64 + 0.5)) as f32;
        let xmin = (((center - support) as f64 + 0.5) as i64).max(0);
        let xmax = (((center + support) as f64 + 0.5) as i64).min(in_size as i64);
        let n = (xmax - xmin).clamp(0, max_size as i64) as usize;
        let ws = &mut w[i * max_size..(i + 1) * max_size];
        let mut total = 0f32;
        for (j, wj) in ws.iter_mut().enumerate().take(n) {
            let d = (j as i64 + xmin) as f32 - center;
            let v = aa_filter(((d as f64 + 0.5) * invscale as f64) as f32);
            *wj = v;
            total += v;
        }
        if total != 0.0 {
            for wj in ws.iter_mut().take(n) {
                *wj /= total;
            }
        }
        bounds.push((xmin as usize, n));
    }
    Weights {
        bounds,
        stride: max_size,
        w,
    }
}

/// Resizes one float plane (`h`×`w`) to `oh`×`ow`; width pass first. Uses the CPU's FMA
/// instructions when present (results are identical either way: `mul_add` is exact).
fn resize_plane(src: &[f32], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports FMA, checked just above.
        return unsafe { resize_plane_fma(src, h, w, oh, ow) };
    }
    resize_plane_impl(src, h, w, oh, ow)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn resize_plane_fma(src: &[f32], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    resize_plane_impl(src, h, w, oh, ow)
}

/// Each output value is `t0*w0` followed by fused multiply-adds over the window in order (see
/// aa_filter); the goldens match with the accumulation fused or not.
#[inline(always)]
fn resize_plane_impl(src: &[f32], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    let horiz;
    let (tmp, tw): (&[f32], usize) = if ow != w {
        let cw = compute_weights(w, ow);
        let mut out = vec![0f32; h * ow];
        for (row, orow) in src.chunks_exact(w).zip(out.chunks_exact_mut(ow)) {
            for (o, (x, &(xmin, n))) in orow.iter_mut().zip(cw.bounds.iter().enumerate()) {
                if n == 0 {
                    *o = 0.0;
                    continue;
                }
                let k = &cw.w[x * cw.stride..x * cw.stride + n];
                let win = &row[xmin..xmin + n];
                let mut acc = win[0] * k[0];
                for (&t, &wk) in win[1..].iter().zip(&k[1..]) {
                    acc = t.mul_add(wk, acc);
                }
                *o = acc;
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
    let ch = compute_weights(h, oh);
    let mut out = vec![0f32; oh * tw];
    for (orow, (y, &(ymin, n))) in out.chunks_exact_mut(tw).zip(ch.bounds.iter().enumerate()) {
        if n == 0 {
            continue;
        }
        let k = &ch.w[y * ch.stride..y * ch.stride + n];
        let first = &tmp[ymin * tw..(ymin + 1) * tw];
        for (o, &t) in orow.iter_mut().zip(first) {
            *o = t * k[0];
        }
        for (j, &wk) in k.iter().enumerate().skip(1) {
            let row = &tmp[(ymin + j) * tw..(ymin + j + 1) * tw];
            for (o, &t) in orow.iter_mut().zip(row) {
                *o = t.mul_add(wk, *o);
            }
        }
    }
    out
}

/// Resizes one interleaved uint8 image (`h`×`w`×`c`) to `oh`×`ow`, returning interleaved uint8.
pub fn resize_bicubic_aa(
    src: &[u8],
    h: usize,
    w: usize,
    c: usize,
    oh: usize,
    ow: usize,
) -> Vec<u8> {
    assert_eq!(
        src.len(),
        h * w * c,
        "source buffer does not match {h}x{w}x{c}"
    );
    if (h, w) == (oh, ow) {
        return src.to_vec();
    }
    // Channels are independent planes: resized in parallel, so that a few large frames still
    // keep every core busy.
    use rayon::prelude::*;
    let planes: Vec<Vec<f32>> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let plane: Vec<f32> = src.chunks_exact(c).map(|px| px[ch] as f32).collect();
            resize_plane(&plane, h, w, oh, ow)
        })
        .collect();
    let mut out = vec![0u8; oh * ow * c];
    for (ch, r) in planes.iter().enumerate() {
        for (o, v) in out.chunks_exact_mut(c).zip(r) {
            o[ch] = v.clamp(0.0, 255.0).round_ties_even() as u8;
        }
    }
    out
}

/// Resizes every frame to `oh`×`ow` (frames, and their channels, in parallel on rayon's pool).
pub fn resize_frames(f: &Frames, oh: usize, ow: usize) -> Frames {
    use rayon::prelude::*;
    let out: Vec<Vec<u8>> = (0..f.t)
        .into_par_iter()
        .map(|i| resize_bicubic_aa(f.frame(i), f.h, f.w, 3, oh, ow))
        .collect();
    let data = out.concat();
    Frames {
        t: f.t,
        h: oh,
        w: ow,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_image_stays_constant() {
        let src = vec![200u8; 60 * 80 * 3];
        let out = resize_bicubic_aa(&src, 60, 80, 3, 56, 84);
        assert!(out.iter().all(|&v| v == 200));
    }

    #[test]
    fn weights_normalized() {
        let cw = compute_weights(220, 56);
        for (i, &(_, n)) in cw.bounds.iter().enumerate() {
            let s: f32 = cw.w[i * cw.stride..i * cw.stride + n].iter().sum();
            assert!((s - 1.0).abs() < 1e-5);
        }
    }
}
