//! argmax: reference and cases.

use super::{read_i32, Bound, Built, Case, Cost, Use};

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

pub(super) fn cases(t: &mut Vec<Case>) {
    // Planted ties (the lowest index must win); the decode step's row over the vocabulary is
    // timed.
    for (rows, n, u) in [
        (4usize, 1000usize, Use::Check),
        (1, 152_064, Use::Both),
        (3, 7, Use::Check),
    ] {
        let c = Case::new(
            "argmax",
            format!("[{rows},{n}] ties"),
            Bound::Exact,
            move |cx| {
                let dt = cx.dt;
                let mut x = cx.vals(rows * n, 10.0, dt);
                for row in 0..rows {
                    let (a, b) = (cx.rng.below(n), cx.rng.below(n));
                    x[row * n + a] = 11.0;
                    x[row * n + b] = 11.0;
                }
                let xt = cx.put(&x, dt, &[rows, n], 0)?;
                let o = cx.i32s(&vec![-1; rows], &[rows])?;
                Ok(Built::new(
                    move |be, _| be.argmax(xt, o),
                    move |be| {
                        let got = read_i32(be, &o)?.iter().map(|&i| i as f32).collect();
                        let want = argmax(&x, n)
                            .expect("no NaN planted")
                            .iter()
                            .map(|&i| i as f32)
                            .collect();
                        Ok((got, want))
                    },
                ))
            },
        )
        .cost(move |dt| Cost::bytes(dt.bytes_for(rows * n) + 4 * rows))
        .used(u);
        t.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_ties_and_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0], 4), Ok(vec![1]));
        assert_eq!(argmax(&[1.0, 2.0, 0.0, f32::NAN], 2), Err(1));
    }
}
