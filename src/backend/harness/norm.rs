//! rms_norm: reference and cases.

use super::{read, round, round_all, Bound, Built, Case, Cost, Use};
use crate::tensor::DType;

/// Qwen2RMSNorm over rows of length d.
pub fn rms_norm(x: &[f32], d: usize, w: &[f32], eps: f32, out: DType) -> Vec<f32> {
    let mut o = Vec::with_capacity(x.len());
    for row in x.chunks(d) {
        let mut ss = 0f64;
        for &v in row {
            ss += v as f64 * v as f64;
        }
        let mean = (ss / d as f64) as f32;
        let inv = (1.0 / ((mean + eps) as f64).sqrt()) as f32;
        for (i, &v) in row.iter().enumerate() {
            let h = round(v * inv, out);
            o.push(round(w[i] * h, out));
        }
    }
    o
}

pub(super) fn cases(t: &mut Vec<Case>) {
    // Rows × D, with strided in/out and a per-head (rank-3) form; the decode step's norm (the
    // first row) and the 7B prefill's and the ViT's are timed.
    for (dims, xpad, opad, wdt, u) in [
        (
            vec![1usize, 3584usize],
            0usize,
            0usize,
            DType::BF16,
            Use::Both,
        ),
        (vec![7, 19], 3, 5, DType::BF16, Use::Check),
        (vec![5, 4, 33], 0, 2, DType::F32, Use::Check),
        (vec![3, 3584], 8, 0, DType::F32, Use::Check),
        (vec![4096, 3584], 0, 0, DType::F32, Use::Perf),
        (vec![16384, 1280], 0, 0, DType::F32, Use::Perf),
    ] {
        let n: usize = dims.iter().product();
        let d = *dims.last().unwrap();
        let dd = dims.clone();
        let c = Case::new(
            "rms_norm",
            format!("{dims:?} pad {xpad}/{opad} w {wdt}"),
            Bound::Elementwise,
            move |cx| {
                let dt = cx.dt;
                let (xt, x) = cx.input(dt, &dd, 3.0, xpad)?;
                let w: Vec<f32> = (0..d).map(|_| 1.0 + cx.rng.f(0.5)).collect();
                let w = round_all(&w, wdt);
                let wt = cx.put_weight(&w, wdt, &[d])?;
                let o = cx.out(dt, &dd, opad)?;
                Ok(Built::new(
                    move |be, _| be.rms_norm(xt, wt, o, 1e-6),
                    move |be| {
                        let w_act = round_all(&w, dt);
                        Ok((read(be, &o)?, rms_norm(&x, d, &w_act, 1e-6, dt)))
                    },
                ))
            },
        )
        .cost(move |dt| Cost::bytes(2 * dt.bytes_for(n) + wdt.bytes_for(d)));
        t.push(c.used(u));
    }
}
