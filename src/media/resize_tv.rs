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

/// PyTorch's cubic convolution filter in float32 (a = -0.5 for antialiasing).
fn aa_filter(x: f32) -> f32 {
    const A: f32 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
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

#[inline]
fn dot(src: impl Iterator<Item = f32>, w: &[f32]) -> f32 {
    let mut acc = 0f32;
    for (k, (t, &wk)) in src.zip(w).enumerate() {
        // The kernel starts from t0*w0 rather than 0 + t0*w0; identical in IEEE arithmetic.
        if k == 0 {
            acc = t * wk;
        } else {
            acc += t * wk;
        }
    }
    acc
}

/// Resizes one float plane (`h`×`w`) to `oh`×`ow`; width pass first.
fn resize_plane(src: &[f32], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    let horiz;
    let (tmp, tw): (&[f32], usize) = if ow != w {
        let cw = compute_weights(w, ow);
        let mut out = vec![0f32; h * ow];
        for y in 0..h {
            let row = &src[y * w..(y + 1) * w];
            for (x, &(xmin, n)) in cw.bounds.iter().enumerate() {
                let k = &cw.w[x * cw.stride..x * cw.stride + n];
                out[y * ow + x] = dot(row[xmin..xmin + n].iter().copied(), k);
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
    for (y, &(ymin, n)) in ch.bounds.iter().enumerate() {
        let k = &ch.w[y * ch.stride..y * ch.stride + n];
        for x in 0..tw {
            out[y * tw + x] = dot((0..n).map(|j| tmp[(ymin + j) * tw + x]), k);
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
    let mut out = vec![0u8; oh * ow * c];
    let mut plane = vec![0f32; h * w];
    for ch in 0..c {
        for (p, px) in plane.iter_mut().zip(src.chunks_exact(c)) {
            *p = px[ch] as f32;
        }
        let r = resize_plane(&plane, h, w, oh, ow);
        for (o, v) in out.chunks_exact_mut(c).zip(r) {
            o[ch] = v.clamp(0.0, 255.0).round_ties_even() as u8;
        }
    }
    out
}

/// Resizes every frame to `oh`×`ow`.
pub fn resize_frames(f: &Frames, oh: usize, ow: usize) -> Frames {
    let mut data = Vec::with_capacity(f.t * oh * ow * 3);
    for i in 0..f.t {
        data.extend(resize_bicubic_aa(f.frame(i), f.h, f.w, 3, oh, ow));
    }
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
