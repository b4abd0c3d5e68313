//! sample: cases. The definition (`sample::sample_row`) is exact integer arithmetic after an
//! f32 division and a fixed-sequence exp, so every backend must choose the same token (bound:
//! exact).

use super::{read_i32, Bound, Built, Case, Cost, Use};
use crate::backend::sample::sample_row;
use crate::backend::SampleArgs;

pub(super) fn cases(t: &mut Vec<Case>) {
    // Draws are explicit uniforms (placed mid-interval, though exactness needs no margin) and
    // hashed (seed, step) draws; logits on the dtype's grid, with a planted tie at the top so
    // lowest-index rules matter. Decode's draws over the whole vocabulary are timed.
    for vocab in [17usize, 1000, 152_064] {
        let rows = if vocab > 1000 { 1 } else { 2 };
        for (temp, k, p) in [
            (0.0f32, 0u32, 1.0f32),
            (1.0, 0, 1.0),
            (0.7, 50, 1.0),
            (1.0, 0, 0.9),
            (0.8, 40, 0.95),
            (0.01, 0, 0.001),
            (1.5, 1, 1.0),
            (1.0, 0, 0.0),
            (2.0, 5, 0.5),
        ] {
            let u = if vocab > 1000 && (p == 0.9 || k == 40) {
                Use::Both
            } else {
                Use::Check
            };
            let c = Case::new(
                "sample",
                format!("[{rows},{vocab}] t{temp} k{k} p{p}"),
                Bound::Exact,
                move |cx| {
                    let dt = cx.dt;
                    let mut x = cx.vals(rows * vocab, 6.0, dt);
                    for row in 0..rows {
                        let (a, b) = (cx.rng.below(vocab), cx.rng.below(vocab));
                        x[row * vocab + a] = 7.0;
                        x[row * vocab + b] = 7.0;
                    }
                    let xt = cx.put(&x, dt, &[rows, vocab], 0)?;
                    let args: Vec<SampleArgs> = (0..4u32)
                        .map(|draw| SampleArgs {
                            temperature: temp,
                            top_k: k,
                            top_p: p,
                            seed: 0x5eed ^ draw as u64,
                            step: draw,
                            uniform: (draw < 2)
                                .then(|| (cx.rng.below(1 << 20) as f64 + 0.5) / (1 << 20) as f64),
                        })
                        .collect();
                    let at = cx.i32s(&args[0].to_words(), &[SampleArgs::WORDS])?;
                    let o = cx.i32s(&vec![-7; rows], &[rows])?;
                    Ok(Built::new(
                        move |be, _| be.sample(xt, at, o),
                        move |be| {
                            let (mut got, mut want) = (Vec::new(), Vec::new());
                            for a in &args {
                                let w = a.to_words();
                                be.write(at.buf, at.offset, &a.to_bytes())?;
                                be.write(o.buf, o.offset, &vec![0xF9; 4 * rows])?;
                                be.sample(xt, at, o)?;
                                got.extend(read_i32(be, &o)?.iter().map(|&i| i as f32));
                                want.extend(x.chunks(vocab).map(|row| sample_row(row, &w) as f32));
                            }
                            assert!(want.iter().all(|&t| t >= 0.0), "{want:?}");
                            Ok((got, want))
                        },
                    ))
                },
            )
            .cost(move |dt| Cost::bytes(dt.bytes_for(rows * vocab) + 4 * rows))
            .used(u);
            t.push(c);
        }
    }
}
