//! matmul: reference and cases (float and quantized weights).

use super::{read, Bound, Built, Case, Cost, Use};
use crate::tensor::DType;

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
            o[i * n + j] = super::round(s as f32, out);
        }
    }
    o
}

/// One matmul row: `out[m, n] = x[m, k] @ w[n, k]^T (+ bias)`, x and out possibly column
/// blocks of wider buffers.
#[derive(Clone, Copy)]
struct Mm {
    m: usize,
    n: usize,
    k: usize,
    w: DType,
    bias: bool,
    xpad: usize,
    opad: usize,
}

/// The dense GEMM candidates (`REEL_GEMM`, backend/cuda/gemm.rs), side by side on CUDA.
pub const GEMM_VARIANTS: &[&str] = &["mma", "tiles", "mma128", "mma256", "cublaslt"];

/// The decode GEMV candidates (backend/cuda/decode.rs) for a weight type at M = 1.
fn gemv_variants(c: Case, w: DType) -> Case {
    if w.is_quantized() {
        c.variants("cuda", "REEL_QGEMV", &["f32", "dp4a"])
    } else if w == DType::BF16 {
        c.variants("cuda", "REEL_GEMV", &["v16", "ring"])
    } else {
        c
    }
}

impl Mm {
    fn plain(m: usize, n: usize, k: usize, w: DType) -> Mm {
        Mm {
            m,
            n,
            k,
            w,
            bias: false,
            xpad: 0,
            opad: 0,
        }
    }

    fn label(&self) -> String {
        format!(
            "{}x{} @ {}x{} {}{}{}",
            self.m,
            self.k,
            self.n,
            self.k,
            self.w,
            if self.bias { " +bias" } else { "" },
            if self.xpad + self.opad > 0 {
                " strided"
            } else {
                ""
            }
        )
    }

    /// Quantized biases are bf16, float ones the weight's type.
    fn bias_dt(&self) -> DType {
        if self.w.is_quantized() {
            DType::BF16
        } else {
            self.w
        }
    }

    fn cost(&self, dt: DType) -> Cost {
        let Mm { m, n, k, .. } = *self;
        let bias = if self.bias {
            self.bias_dt().bytes_for(n)
        } else {
            0
        };
        Cost {
            bytes: (self.w.bytes_for(n * k) + dt.bytes_for(m * k + m * n) + bias) as f64,
            flops: 2.0 * (m * n * k) as f64,
        }
    }

    fn case(self, shape: String, u: Use) -> Case {
        let bound = if self.w.is_quantized() {
            Bound::Quantized
        } else {
            Bound::Reduction
        };
        Case::new("matmul", shape, bound, move |cx| {
            let Mm {
                m, n, k, w: wdt, ..
            } = self;
            let dt = cx.dt;
            let (xt, x) = cx.input(dt, &[m, k], 1.0, self.xpad)?;
            let (ws, w) = cx.matmul_weight(wdt, n, k, 0.05)?;
            let b = cx.vals(n, 0.5, self.bias_dt());
            let bt = if self.bias {
                Some(cx.put_weight(&b, self.bias_dt(), &[n])?)
            } else {
                None
            };
            let o = cx.out(dt, &[m, n], self.opad)?;
            let bias = self.bias;
            Ok(Built::new(
                move |be, i| be.matmul(xt, ws.at(i), bt, o),
                move |be| {
                    let want = matmul(&x, m, k, &w, n, bias.then_some(&b[..]), dt);
                    Ok((read(be, &o)?, want))
                },
            ))
        })
        .cost(move |dt| self.cost(dt))
        .used(u)
    }
}

pub(super) fn cases(t: &mut Vec<Case>) {
    // Float weights: (M, N, K, weight dtype, bias, x pad, out pad). Tails in every dimension of
    // the GEMV (8 rows per launch slice, 16-byte chunks of K) and the GEMM tiles (128-wide),
    // K = 3420 (the ViT's MLP: not a multiple of 8), strided x and out.
    for (m, n, k, w, bias, xpad, opad) in [
        (1usize, 1usize, 1usize, DType::BF16, false, 0usize, 0usize),
        (1, 17, 29, DType::BF16, true, 0, 0),
        (3, 33, 65, DType::BF16, false, 7, 3),
        (5, 40, 100, DType::F16, true, 0, 0),
        (2, 9, 31, DType::F32, true, 1, 1),
        (70, 37, 129, DType::BF16, true, 0, 0),
        (17, 300, 1000, DType::BF16, false, 0, 0),
        (1, 3584, 3584, DType::BF16, false, 0, 0),
        (1, 512, 3584, DType::BF16, true, 0, 0),
        (4, 512, 3584, DType::BF16, true, 7168, 0),
        (1, 77, 264, DType::BF16, true, 0, 0),
        (5, 300, 1024, DType::BF16, true, 0, 0),
        (13, 130, 72, DType::BF16, true, 0, 0),
        (200, 257, 264, DType::BF16, true, 0, 0),
        (129, 64, 3420, DType::BF16, true, 0, 0),
        (3, 40, 21, DType::BF16, true, 0, 0),
        // The tensor-core GEMM's K tails and row alignments: the ViT down-projection's N and
        // K (rows 8-byte aligned), an odd K (2-byte aligned rows), K below one chunk, odd and
        // padded strides, a small M with an unaligned K (the GEMM, not a GEMV).
        (33, 1280, 3420, DType::BF16, true, 0, 0),
        (40, 70, 3421, DType::BF16, false, 0, 1),
        (130, 129, 7, DType::BF16, true, 0, 0),
        (17, 136, 9, DType::BF16, false, 3, 0),
        (20, 33, 17, DType::BF16, true, 1, 2),
        (19, 40, 15, DType::BF16, false, 0, 0),
        (140, 72, 264, DType::BF16, true, 5, 0),
        (4, 1280, 3420, DType::BF16, true, 0, 0),
        // Batched decode: eight and 64 sequences' rows (the CPU's small-M tiles and their
        // row/column remainders; the CUDA small-M paths).
        (8, 100, 1000, DType::BF16, true, 0, 0),
        (6, 45, 515, DType::BF16, false, 2, 0),
        (64, 50, 512, DType::BF16, true, 0, 0),
    ] {
        let mm = Mm {
            m,
            n,
            k,
            w,
            bias,
            xpad,
            opad,
        };
        let c = mm.case(mm.label(), Use::Check);
        t.push(if m > 8 && w == DType::BF16 {
            c.variants("cuda", "REEL_GEMM", GEMM_VARIANTS)
        } else if m == 1 {
            gemv_variants(c, w)
        } else {
            c
        });
    }

    // Quantized weights: (type, M, N, K, bias, x pad, out pad). M = 1 and 3 take the CUDA
    // GEMV, M = 70 the tensor-core GEMM (bf16 x) or the sliced GEMV (f32 x); N = 37 and 133
    // are not multiples of the GEMV's 8 columns per block or the GEMM's 128-wide tile; Q8_0
    // K = 96 ends in a partial 256-weight unit.
    for (w, m, n, k, bias, xpad, opad) in [
        (DType::Q8_0, 1usize, 37usize, 256usize, true, 0usize, 0usize),
        (DType::Q8_0, 3, 19, 96, false, 5, 3),
        (DType::Q8_0, 70, 133, 96, true, 0, 0),
        (DType::Q8_0, 70, 133, 768, false, 0, 2),
        (DType::Q8_0, 1, 3584, 3584, false, 0, 0),
        (DType::Q8_0, 1, 512, 3584, true, 0, 0),
        (DType::Q4K, 1, 37, 256, true, 0, 0),
        (DType::Q4K, 3, 70, 512, false, 8, 1),
        (DType::Q4K, 70, 133, 768, true, 0, 0),
        (DType::Q4K, 1, 3584, 3584, false, 0, 0),
        (DType::Q4K, 1, 512, 3584, true, 0, 0),
        (DType::Q6K, 1, 37, 256, true, 0, 0),
        (DType::Q6K, 3, 70, 512, false, 3, 0),
        (DType::Q6K, 70, 133, 768, true, 0, 0),
        (DType::Q6K, 1, 3584, 3584, false, 0, 0),
        (DType::Q6K, 1, 512, 3584, true, 0, 0),
        (DType::Q8_0, 8, 40, 512, true, 0, 0),
        (DType::Q4K, 8, 40, 512, false, 0, 0),
        (DType::Q6K, 8, 40, 512, true, 0, 0),
        (DType::Q4K, 64, 70, 256, true, 0, 0),
        // From 80 rows, bf16 activations take the CPU's AMX tiles (weights dequantized to bf16).
        (DType::Q8_0, 96, 133, 800, true, 0, 0),
        (DType::Q4K, 96, 70, 512, false, 4, 2),
        (DType::Q6K, 96, 50, 768, true, 0, 0),
    ] {
        let mm = Mm {
            m,
            n,
            k,
            w,
            bias,
            xpad,
            opad,
        };
        let c = mm.case(mm.label(), Use::Check);
        t.push(if m == 1 { gemv_variants(c, w) } else { c });
    }

    // Timed at the model's shapes: the decode step's GEMVs (M = 1, memory-bound) and the
    // prefill's GEMMs (M = 4096), in bf16 and each quantized type; the ViT over 16,384 patches
    // and its merger over the 4,096 merged tokens.
    let (hidden, inter, vocab) = (3584usize, 18944usize, 152_064usize);
    let text = [
        ("qkv", 4608, hidden),
        ("o_proj", hidden, hidden),
        ("gate_up", 2 * inter, hidden),
        ("up", inter, hidden),
        ("down", hidden, inter),
        ("lm_head", vocab, hidden),
    ];
    for w in [DType::BF16, DType::Q8_0, DType::Q4K, DType::Q6K] {
        for &(name, n, k) in &text {
            // bf16 weights fuse gate and up; the quantized presets time up alone (same bytes
            // per weight row as gate).
            let skip = if w == DType::BF16 {
                name == "up"
            } else {
                name == "gate_up" || name == "qkv"
            };
            if skip {
                continue;
            }
            let mm = Mm::plain(1, n, k, w);
            t.push(gemv_variants(
                mm.case(format!("decode {name} M=1 N={n} K={k} {w}"), Use::Perf),
                w,
            ));
            // Batched decode: one pass over the weights for 8 and 64 sequences.
            for m in [8, 64] {
                let mm = Mm::plain(m, n, k, w);
                t.push(mm.case(format!("batched {name} M={m} N={n} K={k} {w}"), Use::Perf));
            }
            if name != "lm_head" {
                let mm = Mm::plain(4096, n, k, w);
                let c = mm.case(format!("prefill {name} M=4096 N={n} K={k} {w}"), Use::Perf);
                t.push(if w == DType::BF16 {
                    c.variants("cuda", "REEL_GEMM", GEMM_VARIANTS)
                } else {
                    c
                });
            }
        }
    }
    for (name, m, n, k) in [
        ("vit qkv", 16384usize, 3840usize, 1280usize),
        ("vit proj", 16384, 1280, 1280),
        ("vit gate/up", 16384, 3420, 1280),
        ("vit down", 16384, 1280, 3420),
        ("merger fc1", 4096, 5120, 5120),
        ("merger fc2", 4096, hidden, 5120),
    ] {
        let mm = Mm::plain(m, n, k, DType::BF16);
        t.push(
            mm.case(format!("{name} M={m} N={n} K={k} bf16"), Use::Perf)
                .variants("cuda", "REEL_GEMM", GEMM_VARIANTS),
        );
    }
    fused_cases(t);
}

/// `matmul_fused`'s reference: the matmul rounded to `out`, then the epilogue's op
/// (`res` for Add; SwiGLU's w is [gate; up], `n` = 2F).
#[allow(clippy::too_many_arguments)]
pub fn matmul_fused(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    epi: Epi,
    res: &[f32],
    out: DType,
) -> Vec<f32> {
    let y = matmul(x, m, k, w, n, bias, out);
    match epi {
        Epi::None => y,
        Epi::Gelu => super::elementwise::gelu(&y, out),
        Epi::Add => super::elementwise::add(&y, res, out),
        Epi::SwiGlu => {
            let f = n / 2;
            let (mut g, mut u) = (Vec::new(), Vec::new());
            for r in y.chunks_exact(n) {
                g.extend_from_slice(&r[..f]);
                u.extend_from_slice(&r[f..]);
            }
            super::elementwise::swiglu(&g, &u, out)
        }
    }
}

/// The epilogue of a `matmul_fused` case (the [`crate::backend::Epilogue`] without operands).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epi {
    None,
    Gelu,
    SwiGlu,
    Add,
}

fn fused_case(m: usize, n: usize, k: usize, bias: bool, epi: Epi, shape: String, u: Use) -> Case {
    let cols = if epi == Epi::SwiGlu { n / 2 } else { n };
    Case::new("matmul_fused", shape, Bound::Reduction, move |cx| {
        let dt = cx.dt;
        let (xt, x) = cx.input(dt, &[m, k], 1.0, 0)?;
        let (ws, w) = cx.matmul_weight(DType::BF16, n, k, 0.05)?;
        let b = cx.vals(n, 0.5, DType::BF16);
        let bt = if bias {
            Some(cx.put_weight(&b, DType::BF16, &[n])?)
        } else {
            None
        };
        let (rt, r) = cx.input(dt, &[m, cols], 1.0, 0)?;
        let o = cx.out(dt, &[m, cols], 0)?;
        let e = match epi {
            Epi::None => crate::backend::Epilogue::None,
            Epi::Gelu => crate::backend::Epilogue::Gelu,
            Epi::SwiGlu => crate::backend::Epilogue::SwiGlu,
            Epi::Add => crate::backend::Epilogue::Add(rt),
        };
        Ok(Built::new(
            move |be, i| be.matmul_fused(xt, ws.at(i), bt, e, o),
            move |be| {
                let want = matmul_fused(&x, m, k, &w, n, bias.then_some(&b[..]), epi, &r, dt);
                Ok((read(be, &o)?, want))
            },
        ))
    })
    .cost(move |dt| Cost {
        bytes: (DType::BF16.bytes_for(n * k)
            + dt.bytes_for(m * k + m * cols)
            + if epi == Epi::Add {
                dt.bytes_for(m * cols)
            } else {
                0
            }) as f64,
        flops: 2.0 * (m * n * k) as f64,
    })
    .used(u)
    .variants("cuda", "REEL_GEMM", GEMM_VARIANTS)
}

/// A decode row's `matmul_fused` with the residual add, on the GEMV candidates.
fn fused_decode_case(n: usize, k: usize, bias: bool, shape: String, u: Use) -> Case {
    gemv_variants(fused_case(1, n, k, bias, Epi::Add, shape, u), DType::BF16)
}

/// `matmul_fused`: each epilogue at tile tails (M 130, N and F off the 128/256-wide tiles),
/// with and without bias, one decode row (the op sequence), and the model's fusable shapes
/// timed: the ViT MLP (gate/up + SwiGLU, down + residual), the merger's fc1 + GELU, the text
/// prefill's gate/up + SwiGLU and O / down + residual.
fn fused_cases(t: &mut Vec<Case>) {
    for (m, n, k, bias, epi) in [
        (130usize, 264usize, 136usize, true, Epi::None),
        (130, 264, 136, true, Epi::Gelu),
        (130, 300, 72, false, Epi::SwiGlu),
        (130, 600, 72, true, Epi::SwiGlu),
        (70, 264, 136, true, Epi::Add),
        (9, 40, 64, false, Epi::Add),
        (1, 80, 64, true, Epi::SwiGlu),
        (33, 80, 3420, true, Epi::Gelu),
    ] {
        t.push(fused_case(
            m,
            n,
            k,
            bias,
            epi,
            format!(
                "{m}x{k} @ {n}x{k} {epi:?}{}",
                if bias { " +bias" } else { "" }
            ),
            Use::Check,
        ));
    }
    // Decode rows: the ring GEMV's residual epilogue (its row and K tails; the O projection).
    for (n, k, bias) in [(77usize, 264usize, true), (40, 72, false)] {
        let shape = format!(
            "1x{k} @ {n}x{k} Add{} gemv",
            if bias { " +bias" } else { "" }
        );
        t.push(fused_decode_case(n, k, bias, shape, Use::Check));
    }
    let (hidden, inter) = (3584usize, 18944usize);
    t.push(fused_decode_case(
        hidden,
        hidden,
        false,
        format!("decode o+res M=1 N={hidden} K={hidden} bf16"),
        Use::Both,
    ));
    for (name, m, n, k, epi) in [
        (
            "vit gate/up+swiglu",
            16384usize,
            2 * 3420usize,
            1280usize,
            Epi::SwiGlu,
        ),
        ("vit down+res", 16384, 1280, 3420, Epi::Add),
        ("merger fc1+gelu", 4096, 5120, 5120, Epi::Gelu),
        (
            "prefill gate/up+swiglu",
            4096,
            2 * inter,
            hidden,
            Epi::SwiGlu,
        ),
        ("prefill o+res", 4096, hidden, hidden, Epi::Add),
        ("prefill down+res", 4096, hidden, inter, Epi::Add),
    ] {
        t.push(fused_case(
            m,
            n,
            k,
            true,
            epi,
            format!("{name} M={m} N={n} K={k} bf16"),
            Use::Perf,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_count_every_byte_and_flop() {
        // Q8_0 stores 34 bytes per 32 weights; bf16 x and out; a bf16 bias.
        let mm = Mm {
            bias: true,
            ..Mm::plain(2, 64, 64, DType::Q8_0)
        };
        let c = mm.cost(DType::BF16);
        assert_eq!(
            c.bytes,
            (64 * 64 / 32 * 34 + 2 * (2 * 64 + 2 * 64) + 2 * 64) as f64
        );
        assert_eq!(c.flops, 2.0 * 2.0 * 64.0 * 64.0);
    }
}
