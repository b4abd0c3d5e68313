//! embedding, add, swiglu, gelu, cast, gather_rows, scatter_rows: references and cases.

use super::{read, round, round_all, Bound, Built, Case, Cost, Use};
use crate::tensor::DType;

/// `out[t] = table[ids[t]]`, table [V, D].
pub fn embedding(table: &[f32], d: usize, ids: &[i32], out: DType) -> Vec<f32> {
    let mut o = Vec::new();
    for &id in ids {
        let row = &table[id as usize * d..(id as usize + 1) * d];
        o.extend(row.iter().map(|&v| round(v, out)));
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

/// Bytes of `n` elements of `dt`.
fn b(dt: DType, n: usize) -> usize {
    dt.bytes_for(n)
}

pub(super) fn cases(t: &mut Vec<Case>) {
    // embedding: table dtype × shapes; the last row is a prefill's lookup in the 7B table.
    for (v, d, ids, tdt, u) in [
        (
            37usize,
            19usize,
            vec![0, 36, 5, 5, 17],
            DType::BF16,
            Use::Check,
        ),
        (37, 19, vec![3], DType::F16, Use::Check),
        (64, 3584, vec![63, 0, 7], DType::BF16, Use::Check),
        (10, 33, vec![9, 1], DType::F32, Use::Check),
        (
            152_064,
            3584,
            (0..4096).map(|i| i * 37 % 152_064).collect(),
            DType::BF16,
            Use::Perf,
        ),
    ] {
        let n = ids.len();
        let c = Case::new(
            "embedding",
            format!("[{v},{d}] {tdt} ids {n}"),
            Bound::Exact,
            move |cx| {
                let (tt, tab) = cx.weight(tdt, v, d, 2.0)?;
                let tt = tt.at(0);
                let it = cx.i32s(&ids, &[ids.len()])?;
                let dt = cx.dt;
                let o = cx.out(dt, &[ids.len(), d], 0)?;
                let ids = ids.clone();
                Ok(Built::new(
                    move |be, _| be.embedding(tt, it, o),
                    move |be| Ok((read(be, &o)?, embedding(&tab, d, &ids, dt))),
                ))
            },
        )
        .cost(move |dt| Cost::bytes(b(tdt, n * d) + 4 * n + b(dt, n * d)));
        t.push(c.used(u));
    }
    // embedding from a quantized table: the dequantized row, rounded once.
    for (v, d, ids, tdt) in [
        (40usize, 96usize, vec![39, 0, 7, 7], DType::Q8_0),
        (9, 512, vec![8, 2], DType::Q4K),
        (5, 256, vec![4, 0, 1], DType::Q6K),
    ] {
        t.push(Case::new(
            "embedding",
            format!("[{v},{d}] {tdt} ids {}", ids.len()),
            Bound::Exact,
            move |cx| {
                let (tt, tq) = cx.weight(tdt, v, d, 2.0)?;
                let tt = tt.at(0);
                let it = cx.i32s(&ids, &[ids.len()])?;
                let dt = cx.dt;
                let o = cx.out(dt, &[ids.len(), d], 0)?;
                let ids = ids.clone();
                Ok(Built::new(
                    move |be, _| be.embedding(tt, it, o),
                    move |be| Ok((read(be, &o)?, embedding(&tq, d, &ids, dt))),
                ))
            },
        ));
    }

    // add / swiglu / gelu: same-shape elementwise ops; the last rows are the 7B prefill's
    // residual add and MLP, the ViT's MLP and the merger's GELU.
    for (dims, pad, u) in [
        (vec![7usize, 300usize], 0usize, Use::Check),
        (vec![1, 3584], 0, Use::Check),
        (vec![3, 5, 7], 4, Use::Check),
        (vec![4096, 3584], 0, Use::Perf),
    ] {
        let n: usize = dims.iter().product();
        let dd = dims.clone();
        let c = Case::new(
            "add",
            format!("{dims:?} pad {pad}"),
            Bound::Elementwise,
            move |cx| {
                let dt = cx.dt;
                let (at, a) = cx.input(dt, &dd, 4.0, pad)?;
                let (bt, bv) = cx.input(dt, &dd, 4.0, 0)?;
                let o = cx.out(dt, &dd, pad)?;
                Ok(Built::new(
                    move |be, _| be.add(at, bt, o),
                    move |be| Ok((read(be, &o)?, add(&a, &bv, dt))),
                ))
            },
        )
        .cost(move |dt| Cost::bytes(3 * b(dt, n)));
        t.push(c.used(u));
    }
    for (dims, pad, u) in [
        (vec![3usize, 37usize], 0usize, Use::Check),
        (vec![2, 18944], 0, Use::Check),
        (vec![5, 100], 28, Use::Check),
        (vec![4096, 18944], 0, Use::Perf),
        (vec![16384, 3420], 0, Use::Perf),
    ] {
        let n: usize = dims.iter().product();
        let dd = dims.clone();
        let c = Case::new(
            "swiglu",
            format!("{dims:?} pad {pad}"),
            Bound::Elementwise,
            move |cx| {
                let dt = cx.dt;
                let (gt, g) = cx.input(dt, &dd, 8.0, pad)?;
                let (ut, u) = cx.input(dt, &dd, 3.0, pad)?;
                let o = cx.out(dt, &dd, 0)?;
                Ok(Built::new(
                    move |be, _| be.swiglu(gt, ut, o),
                    move |be| Ok((read(be, &o)?, swiglu(&g, &u, dt))),
                ))
            },
        )
        .cost(move |dt| Cost::bytes(3 * b(dt, n)));
        t.push(c.used(u));
    }
    for (dims, pad, u) in [
        (vec![5usize, 333usize], 0usize, Use::Check),
        (vec![4, 5120], 0, Use::Check),
        (vec![2, 3, 11], 5, Use::Check),
        (vec![4096, 5120], 0, Use::Perf),
    ] {
        let n: usize = dims.iter().product();
        let dd = dims.clone();
        let c = Case::new(
            "gelu",
            format!("{dims:?} pad {pad}"),
            Bound::Elementwise,
            move |cx| {
                let dt = cx.dt;
                let (xt, x) = cx.input(dt, &dd, 7.0, pad)?;
                let o = cx.out(dt, &dd, pad)?;
                Ok(Built::new(
                    move |be, _| be.gelu(xt, o),
                    move |be| Ok((read(be, &o)?, gelu(&x, dt))),
                ))
            },
        )
        .cost(move |dt| Cost::bytes(2 * b(dt, n)));
        t.push(c.used(u));
    }

    // cast: the activation dtype is the source; targets f32, bf16, f16.
    for (rows, cols, pad, to, u) in [
        (9usize, 70usize, 2usize, DType::F32, Use::Check),
        (9, 70, 2, DType::BF16, Use::Check),
        (9, 70, 2, DType::F16, Use::Check),
        (4096, 3584, 0, DType::F32, Use::Perf),
    ] {
        let c = Case::new(
            "cast",
            format!("[{rows},{cols}] -> {to}"),
            Bound::Exact,
            move |cx| {
                let dt = cx.dt;
                let (xt, x) = cx.input(dt, &[rows, cols], 30.0, pad)?;
                let o = cx.out(to, &[rows, cols], 0)?;
                Ok(Built::new(
                    move |be, _| be.cast(xt, o),
                    move |be| Ok((read(be, &o)?, round_all(&x, to))),
                ))
            },
        )
        .cost(move |dt| Cost::bytes(b(dt, rows * cols) + b(to, rows * cols)));
        t.push(c.used(u));
    }

    // gather_rows: duplicate and strided rows; the ViT's window reorder of 16,384 patches.
    for (n, d, idx, xpad, opad, u) in [
        (
            10usize,
            7usize,
            vec![3, 3, 0, 9],
            1usize,
            2usize,
            Use::Check,
        ),
        (
            16384,
            1280,
            (0..16384).map(|i| (i * 4099) % 16384).collect::<Vec<i32>>(),
            0,
            0,
            Use::Perf,
        ),
    ] {
        let m = idx.len();
        let shape = if u == Use::Perf {
            format!("[{n},{d}] idx {m} permuted")
        } else {
            format!("[{n},{d}] idx {idx:?}")
        };
        let c = Case::new("gather_rows", shape, Bound::Exact, move |cx| {
            let dt = cx.dt;
            let (xt, x) = cx.input(dt, &[n, d], 5.0, xpad)?;
            let it = cx.i32s(&idx, &[idx.len()])?;
            let o = cx.out(dt, &[idx.len(), d], opad)?;
            let idx = idx.clone();
            Ok(Built::new(
                move |be, _| be.gather_rows(xt, it, o),
                move |be| Ok((read(be, &o)?, gather_rows(&x, d, &idx))),
            ))
        })
        .cost(move |dt| Cost::bytes(2 * b(dt, m * d) + 4 * m));
        t.push(c.used(u));
    }
    // scatter_rows: into a strided destination; the vision rows into the Video-R1 prefill.
    for (m, n, d, idx, pad, u) in [
        (
            4usize,
            9usize,
            3584usize,
            vec![8, 0, 4, 5],
            16usize,
            Use::Check,
        ),
        (
            4096,
            4250,
            3584,
            (15..15 + 4096).collect::<Vec<i32>>(),
            0,
            Use::Perf,
        ),
    ] {
        let shape = if u == Use::Perf {
            format!("[{m},{d}] -> [{n},{d}] rows 15..")
        } else {
            format!("[{m},{d}] -> [{n},{d}]")
        };
        let c = Case::new("scatter_rows", shape, Bound::Exact, move |cx| {
            let dt = cx.dt;
            let (st, src) = cx.input(dt, &[m, d], 5.0, 0)?;
            let it = cx.i32s(&idx, &[idx.len()])?;
            let (dst_t, mut dst) = cx.input(dt, &[n, d], 5.0, pad)?;
            let idx = idx.clone();
            Ok(Built::new(
                move |be, _| be.scatter_rows(st, it, dst_t),
                move |be| {
                    scatter_rows(&src, d, &idx, &mut dst);
                    Ok((read(be, &dst_t)?, dst))
                },
            ))
        })
        .cost(move |dt| Cost::bytes(2 * b(dt, m * d) + 4 * m));
        t.push(c.used(u));
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
}
