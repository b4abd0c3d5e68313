//! rope_mrope, rope_vision: references and cases.

use super::{read, round, Bound, Built, Case, Cost, Use};
use crate::backend::MropeParams;
use crate::tensor::DType;

/// `theta^(-2i/dim)` the way torch builds inv_freq in f32.
fn inv_freq(theta: f32, dim: usize) -> Vec<f32> {
    let mut v = Vec::new();
    let mut i = 0;
    while i < dim {
        let e = i as f32 / dim as f32;
        let p = (theta as f64).powf(e as f64) as f32;
        v.push(1.0f32 / p);
        i += 2;
    }
    v
}

/// M-RoPE on x [T, H, d] with pos [3, T] (row-major), sections over the global inv_freq index.
#[allow(clippy::too_many_arguments)]
pub fn rope_mrope(
    x: &[f32],
    t: usize,
    h: usize,
    d: usize,
    pos: &[i32],
    theta: f32,
    sections: [usize; 3],
    out: DType,
) -> Vec<f32> {
    let half = d / 2;
    let inv = inv_freq(theta, d);
    let mut o = vec![0f32; x.len()];
    for ti in 0..t {
        for hh in 0..h {
            let base = (ti * h + hh) * d;
            for c in 0..d {
                let j = c % half;
                let row = if j < sections[0] {
                    0
                } else if j < sections[0] + sections[1] {
                    1
                } else {
                    2
                };
                let ang = pos[row * t + ti] as f32 * inv[j];
                let cs = round((ang as f64).cos() as f32, out);
                let sn = round((ang as f64).sin() as f32, out);
                let rot = if c < half {
                    -x[base + c + half]
                } else {
                    x[base + c - half]
                };
                o[base + c] = round(round(x[base + c] * cs, out) + round(rot * sn, out), out);
            }
        }
    }
    o
}

/// Vision 2-D RoPE on x [N, H, d] with pos [N, 2] (row, col), in f32, rounded once.
pub fn rope_vision(
    x: &[f32],
    n: usize,
    h: usize,
    d: usize,
    pos: &[i32],
    theta: f32,
    out: DType,
) -> Vec<f32> {
    let half = d / 2;
    let inv = inv_freq(theta, half);
    let mut o = vec![0f32; x.len()];
    for i in 0..n {
        // freqs = [row·inv, col·inv] (d/2 values), emb = [freqs, freqs].
        let mut freqs = Vec::with_capacity(half);
        for &f in &inv {
            freqs.push(pos[2 * i] as f32 * f);
        }
        for &f in &inv {
            freqs.push(pos[2 * i + 1] as f32 * f);
        }
        assert_eq!(freqs.len(), half);
        for hh in 0..h {
            let base = (i * h + hh) * d;
            for c in 0..d {
                let ang = freqs[c % half];
                let cs = (ang as f64).cos() as f32;
                let sn = (ang as f64).sin() as f32;
                let rot = if c < half {
                    -x[base + c + half]
                } else {
                    x[base + c - half]
                };
                let prod1 = x[base + c] * cs;
                let prod2 = rot * sn;
                o[base + c] = round(prod1 + prod2, out);
            }
        }
    }
    o
}

pub(super) fn cases(t: &mut Vec<Case>) {
    // M-RoPE: (T, H, d, sections, base position, x pad); the 7B prefill's q (28 heads) and
    // k (4 heads) are timed.
    for (tk, h, d, sec, p0, pad, u) in [
        (
            5usize,
            3usize,
            16usize,
            [2usize, 3, 3],
            0i32,
            0usize,
            Use::Check,
        ),
        (7, 28, 128, [16, 24, 24], 10_000, 0, Use::Check),
        (1, 28, 128, [16, 24, 24], 123_456, 0, Use::Check),
        (9, 4, 128, [16, 24, 24], 20_000, 1024, Use::Check),
        (3, 2, 12, [0, 3, 3], 5, 0, Use::Check),
        (4096, 28, 128, [16, 24, 24], 0, 0, Use::Perf),
        (4096, 4, 128, [16, 24, 24], 0, 0, Use::Perf),
    ] {
        let n = tk * h * d;
        let c = Case::new(
            "rope_mrope",
            format!("[{tk},{h},{d}] {sec:?} pos>={p0}"),
            Bound::Elementwise,
            move |cx| {
                let dt = cx.dt;
                let (xt, x) = cx.input(dt, &[tk, h, d], 2.0, pad)?;
                // Distinct t/h/w rows, as for vision tokens.
                let pos: Vec<i32> = (0..3 * tk)
                    .map(|i| {
                        p0 + (i % tk) as i32 * 3 + (i / tk) as i32 * 7 + cx.rng.below(50) as i32
                    })
                    .collect();
                let pt = cx.i32s(&pos, &[3, tk])?;
                let o = cx.out(dt, &[tk, h, d], 0)?;
                let p = MropeParams {
                    theta: 1e6,
                    sections: sec,
                };
                Ok(Built::new(
                    move |be, _| be.rope_mrope(xt, pt, o, p),
                    move |be| {
                        let want = rope_mrope(&x, tk, h, d, &pos, 1e6, sec, dt);
                        Ok((read(be, &o)?, want))
                    },
                ))
            },
        )
        .cost(move |dt| Cost::bytes(2 * dt.bytes_for(n) + 12 * tk))
        .used(u);
        t.push(c);
    }

    // Vision RoPE: (N, H, d, x pad); the ViT's q over 16,384 patches is timed.
    for (n, h, d, pad, u) in [
        (13usize, 16usize, 80usize, 0usize, Use::Check),
        (6, 2, 8, 0, Use::Check),
        (64, 16, 80, 2560, Use::Check),
        (16384, 16, 80, 0, Use::Perf),
    ] {
        let c = Case::new(
            "rope_vision",
            format!("[{n},{h},{d}]"),
            Bound::Elementwise,
            move |cx| {
                let dt = cx.dt;
                let (xt, x) = cx.input(dt, &[n, h, d], 2.0, pad)?;
                let pos: Vec<i32> = (0..2 * n).map(|_| cx.rng.below(120) as i32).collect();
                let pt = cx.i32s(&pos, &[n, 2])?;
                let o = cx.out(dt, &[n, h, d], 0)?;
                Ok(Built::new(
                    move |be, _| be.rope_vision(xt, pt, o, 1e4),
                    move |be| Ok((read(be, &o)?, rope_vision(&x, n, h, d, &pos, 1e4, dt))),
                ))
            },
        )
        .cost(move |dt| Cost::bytes(2 * dt.bytes_for(n * h * d) + 8 * n))
        .used(u);
        t.push(c);
    }
}
