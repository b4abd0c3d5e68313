//! Plain scalar versions of every op on host slices: the truth the op harness (tests/ops.rs)
//! compares each backend against. Written for obviousness, not speed: one loop per formula,
//! f64 accumulation for reductions, rounding steps exactly where the `Backend` docs put them.
//! Shares no code with the fast paths (conversions come from the `half` crate). Sampling's
//! definition (`sample_row`) and the host argmax live in the neutral `backend::sample`.
//!
//! Tensors are row-major `Vec<f32>` holding values already representable in their dtype; `out`
//! is the output dtype each result is rounded to.

use crate::tensor::DType;

/// Rounds to the nearest value of `dt` (round to nearest even).
pub fn round(x: f32, dt: DType) -> f32 {
    match dt {
        DType::BF16 => half::bf16::from_f32(x).to_f32(),
        DType::F16 => half::f16::from_f32(x).to_f32(),
        _ => x,
    }
}

pub fn round_all(x: &[f32], dt: DType) -> Vec<f32> {
    x.iter().map(|&v| round(v, dt)).collect()
}

/// `out[t] = table[ids[t]]`, table [V, D].
pub fn embedding(table: &[f32], d: usize, ids: &[i32], out: DType) -> Vec<f32> {
    let mut o = Vec::new();
    for &id in ids {
        let row = &table[id as usize * d..(id as usize + 1) * d];
        o.extend(row.iter().map(|&v| round(v, out)));
    }
    o
}

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

/// `x[M, K] @ w[N, K]^T (+ bias)`, f64 accumulation, rounded once.
pub fn matmul(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    out: DType,
) -> Vec<f32> {
    let mut o = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f64;
            for l in 0..k {
                s += x[i * k + l] as f64 * w[j * k + l] as f64;
            }
            if let Some(b) = bias {
                s += b[j] as f64;
            }
            o[i * n + j] = round(s as f32, out);
        }
    }
    o
}

pub fn add(a: &[f32], b: &[f32], out: DType) -> Vec<f32> {
    a.iter().zip(b).map(|(&x, &y)| round(x + y, out)).collect()
}

/// `round(round(silu(g)) * u)`, silu in f64 then rounded to f32 first (as an f32 kernel would).
pub fn swiglu(g: &[f32], u: &[f32], out: DType) -> Vec<f32> {
    g.iter()
        .zip(u)
        .map(|(&g, &u)| {
            let s = (g as f64 / (1.0 + (-(g as f64)).exp())) as f32;
            round(round(s, out) * u, out)
        })
        .collect()
}

/// erf in f64: the Maclaurin series for |x| < 3, and erfc's continued fraction beyond.
pub fn erf(x: f64) -> f64 {
    let a = x.abs();
    let r = if a < 3.0 {
        // erf(x) = 2/√π Σ (-1)^n x^(2n+1) / (n! (2n+1))
        let mut term = a; // x^(2n+1)/n!
        let mut sum = a;
        let mut n = 0.0;
        loop {
            n += 1.0;
            term *= -a * a / n;
            let add = term / (2.0 * n + 1.0);
            sum += add;
            if add.abs() <= 1e-17 * sum.abs() {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        1.0 - erfc_cf(a)
    };
    if x < 0.0 {
        -r
    } else {
        r
    }
}

/// erfc(x) for x ≥ 3 by the continued fraction exp(-x²)/√π · 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + …)))).
fn erfc_cf(x: f64) -> f64 {
    let mut f = x;
    for k in (1..60).rev() {
        f = x + (k as f64 / 2.0) / f;
    }
    (-x * x).exp() / std::f64::consts::PI.sqrt() / f
}

/// Exact GELU, computed in f64 and rounded once. Uses erfc for negative x so that 1 + erf does
/// not cancel.
pub fn gelu(x: &[f32], out: DType) -> Vec<f32> {
    x.iter()
        .map(|&v| {
            let z = v as f64 / std::f64::consts::SQRT_2;
            let one_plus_erf = if z < -3.0 { erfc_cf(-z) } else { 1.0 + erf(z) };
            round((0.5 * v as f64 * one_plus_erf) as f32, out)
        })
        .collect()
}

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
    let quarter = d / 4;
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
        let _ = quarter;
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

/// Softmax attention of one query over `keys`/`vals` rows (each d long), f64 throughout.
fn attend_one(q: &[f32], keys: &[&[f32]], vals: &[&[f32]], scale: f32) -> Vec<f64> {
    let s: Vec<f64> = keys
        .iter()
        .map(|k| {
            q.iter()
                .zip(k.iter())
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum::<f64>()
                * scale as f64
        })
        .collect();
    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = s.iter().map(|&v| (v - m).exp()).collect();
    let z: f64 = e.iter().sum();
    let mut o = vec![0f64; q.len()];
    for (p, v) in e.iter().zip(vals) {
        for (oo, &vv) in o.iter_mut().zip(v.iter()) {
            *oo += p / z * vv as f64;
        }
    }
    o
}

/// Causal GQA attention: q [T, Hq, d] are the last T of L positions; keys/vals [L, Hkv, d].
#[allow(clippy::too_many_arguments)]
pub fn attention_causal(
    q: &[f32],
    t: usize,
    hq: usize,
    keys: &[f32],
    vals: &[f32],
    l: usize,
    hkv: usize,
    d: usize,
    scale: f32,
    out: DType,
) -> Vec<f32> {
    let mut o = vec![0f32; t * hq * d];
    for i in 0..t {
        let p = l - t + i;
        for h in 0..hq {
            let kh = h / (hq / hkv);
            let ks: Vec<&[f32]> = (0..=p)
                .map(|j| &keys[(j * hkv + kh) * d..(j * hkv + kh + 1) * d])
                .collect();
            let vs: Vec<&[f32]> = (0..=p)
                .map(|j| &vals[(j * hkv + kh) * d..(j * hkv + kh + 1) * d])
                .collect();
            let r = attend_one(&q[(i * hq + h) * d..(i * hq + h + 1) * d], &ks, &vs, scale);
            for c in 0..d {
                o[(i * hq + h) * d + c] = round(r[c] as f32, out);
            }
        }
    }
    o
}

/// Non-causal attention within segments [cu[s], cu[s+1]) of q, k, v [N, H, d].
#[allow(clippy::too_many_arguments)]
pub fn attention_varlen(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    h: usize,
    d: usize,
    cu: &[i32],
    scale: f32,
    out: DType,
) -> Vec<f32> {
    let mut o = vec![0f32; q.len()];
    for s in 0..cu.len() - 1 {
        let (a, b) = (cu[s] as usize, cu[s + 1] as usize);
        for i in a..b {
            for hh in 0..h {
                let at = |x: &[f32], j: usize| -> Vec<f32> {
                    x[(j * h + hh) * d..(j * h + hh + 1) * d].to_vec()
                };
                let ks: Vec<Vec<f32>> = (a..b).map(|j| at(k, j)).collect();
                let vs: Vec<Vec<f32>> = (a..b).map(|j| at(v, j)).collect();
                let kr: Vec<&[f32]> = ks.iter().map(|x| x.as_slice()).collect();
                let vr: Vec<&[f32]> = vs.iter().map(|x| x.as_slice()).collect();
                let r = attend_one(&at(q, i), &kr, &vr, scale);
                for c in 0..d {
                    o[(i * h + hh) * d + c] = round(r[c] as f32, out);
                }
            }
        }
    }
    o
}

/// Row-wise argmax of x [R, N] (the host argmax, `sample::argmax`); `Err(row)` when a row holds
/// NaN.
pub fn argmax(x: &[f32], n: usize) -> Result<Vec<i32>, usize> {
    x.chunks(n)
        .enumerate()
        .map(|(r, row)| {
            crate::backend::sample::argmax(row)
                .map(|i| i as i32)
                .map_err(|_| r)
        })
        .collect()
}

/// `out[i] = x[idx[i]]` over rows of length `d`.
pub fn gather_rows(x: &[f32], d: usize, idx: &[i32]) -> Vec<f32> {
    idx.iter()
        .flat_map(|&i| x[i as usize * d..(i as usize + 1) * d].to_vec())
        .collect()
}

/// `dst[idx[i]] = src[i]` over rows of length `d`.
pub fn scatter_rows(src: &[f32], d: usize, idx: &[i32], dst: &mut [f32]) {
    for (i, &r) in idx.iter().enumerate() {
        dst[r as usize * d..(r as usize + 1) * d].copy_from_slice(&src[i * d..(i + 1) * d]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_known_values() {
        let known = [
            (0.0, 0.0),
            (0.1, 0.1124629160182849),
            (0.5, 0.5204998778130465),
            (1.0, 0.8427007929497149),
            (2.0, 0.9953222650189527),
            (2.9, 0.9999589021219005),
            (3.5, 0.9999992569016276),
        ];
        for (x, e) in known {
            assert!(
                (erf(x) - e).abs() < 1e-13,
                "erf({x}) = {}, want {e}",
                erf(x)
            );
            assert!((erf(-x) + e).abs() < 1e-13);
        }
        let e3 = 2.209049699858544e-05; // erfc(3)
        assert!((erfc_cf(3.0) - e3).abs() / e3 < 1e-12);
    }

    #[test]
    fn gelu_known_values() {
        // torch.nn.functional.gelu on f32 (exact erf).
        let g = gelu(&[1.0, -1.0, 0.5, -3.0, 4.0], DType::F32);
        let want = [0.8413447, -0.15865526, 0.34573123, -0.004049694, 3.9998734];
        for (a, b) in g.iter().zip(want) {
            assert!((a - b).abs() <= 1e-7 * b.abs().max(1e-3), "{a} vs {b}");
        }
    }

    #[test]
    fn argmax_ties_and_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0], 4), Ok(vec![1]));
        assert_eq!(argmax(&[1.0, 2.0, 0.0, f32::NAN], 2), Err(1));
    }
}
