//! Known-answer, round-trip, SIMD-agreement and error tests for the quantized formats.

use super::*;
use crate::tensor::DType;

const INPUT: &[u8] = include_bytes!("testdata/input_f32.bin");

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
    }
    fn unif(&mut self) -> f32 {
        (self.next() >> 8) as f32 / 16_777_216.0
    }
    fn gauss(&mut self) -> f32 {
        self.unif() + self.unif() + self.unif() + self.unif() - 2.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.gauss() * scale).collect()
    }
}

fn known_answer(dtype: DType, quant: &[u8], deq: &[u8]) {
    let x = f32s(INPUT);
    let mut q = vec![0u8; row_bytes(dtype, x.len()).unwrap()];
    quantize_row(dtype, &x, &mut q).unwrap();
    let bs = dtype.block_bytes();
    for (i, (a, b)) in q.chunks(bs).zip(quant.chunks(bs)).enumerate() {
        assert_eq!(
            a, b,
            "{dtype}: block {i} differs from ggml's reference quantizer"
        );
    }
    let mut y = vec![0.0f32; x.len()];
    dequantize_row(dtype, &q, &mut y).unwrap();
    for (i, (a, b)) in y.iter().zip(f32s(deq)).enumerate() {
        assert_eq!(
            a.to_bits(),
            b.to_bits(),
            "{dtype}: dequantized value {i}: {a} vs ggml {b}"
        );
    }
}

#[test]
fn q8_0_matches_ggml_reference_bytes() {
    known_answer(
        DType::Q8_0,
        include_bytes!("testdata/q8_0.bin"),
        include_bytes!("testdata/q8_0_deq.bin"),
    );
}

#[test]
fn q4_k_matches_ggml_reference_bytes() {
    known_answer(
        DType::Q4K,
        include_bytes!("testdata/q4_k.bin"),
        include_bytes!("testdata/q4_k_deq.bin"),
    );
}

#[test]
fn q6_k_matches_ggml_reference_bytes() {
    known_answer(
        DType::Q6K,
        include_bytes!("testdata/q6_k.bin"),
        include_bytes!("testdata/q6_k_deq.bin"),
    );
}

#[test]
fn q8_0_hand_computed_block() {
    // amax 127 gives d = 1 exactly (fp16 0x3C00); roundf sends halves away from zero.
    let mut x = [0.0f32; 32];
    x[..6].copy_from_slice(&[-127.0, -126.5, 0.5, -0.5, 1.5, 2.5]);
    x[31] = 127.0;
    let mut q = [0u8; 34];
    quantize_row_q8_0(&x, &mut q);
    assert_eq!(&q[..2], &[0x00, 0x3C]);
    let qs: Vec<i8> = q[2..].iter().map(|&b| b as i8).collect();
    assert_eq!(&qs[..6], &[-127, -127, 1, -1, 2, 3]);
    assert_eq!(qs[31], 127);
    assert!(qs[6..31].iter().all(|&v| v == 0));
}

#[test]
fn q4_k_and_q6_k_hand_layout() {
    // A Q4_K block with d = 1, dmin = 0.5, scale j = j + 1, min j = 2j, every nibble 3.
    let mut b = [0u8; 144];
    b[0..2].copy_from_slice(&f16::from_f32(1.0).to_bits().to_le_bytes());
    b[2..4].copy_from_slice(&f16::from_f32(0.5).to_bits().to_le_bytes());
    for j in 0..8u8 {
        let (ls, lm) = (j + 1, 2 * j);
        let j = j as usize;
        if j < 4 {
            b[4 + j] = ls;
            b[8 + j] = lm;
        } else {
            b[4 + j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            b[4 + j - 4] |= (ls >> 4) << 6;
            b[4 + j] |= (lm >> 4) << 6;
        }
    }
    b[16..].fill(0x33);
    let mut y = [0.0f32; 256];
    dequantize_row_q4_k(&b, &mut y);
    for (i, v) in y.iter().enumerate() {
        let j = i / 32;
        assert_eq!(
            *v,
            (j + 1) as f32 * 3.0 - 0.5 * (2 * j) as f32,
            "q4_k element {i}"
        );
    }
    // A Q6_K block with d = 0.25, scales 1..16 (negated for odd sub-blocks), q = 40 everywhere:
    // low nibble 8, high bits 2 -> (40 - 32) = 8.
    let mut b = [0u8; 210];
    b[..128].fill(0x88);
    b[128..192].fill(0b1010_1010);
    for j in 0..16 {
        b[192 + j] = if j % 2 == 0 {
            (j + 1) as u8
        } else {
            (-((j + 1) as i8)) as u8
        };
    }
    b[208..210].copy_from_slice(&f16::from_f32(0.25).to_bits().to_le_bytes());
    dequantize_row_q6_k(&b, &mut y);
    for (i, v) in y.iter().enumerate() {
        let j = i / 16;
        let sc = if j % 2 == 0 {
            (j + 1) as f32
        } else {
            -((j + 1) as f32)
        };
        assert_eq!(*v, 0.25 * sc * 8.0, "q6_k element {i}");
    }
}

#[test]
fn get_scale_min_k4_all_byte_patterns() {
    // Against an independent formulation (three rows of four bytes: low scales, low mins, and the
    // nibble row whose spare top bits live in the first two rows), over every pair of bytes each
    // output depends on.
    for j in 0..8 {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let mut s = [0u8; 12];
                let (sc, m);
                if j < 4 {
                    s[j] = a;
                    s[j + 4] = b;
                    sc = a & 0x3F;
                    m = b & 0x3F;
                } else {
                    // sc needs s[j+4] (nibble row) and s[j-4]; m needs s[j+4] and s[j].
                    s[j + 4] = a;
                    s[j - 4] = b;
                    s[j] = b.rotate_left(3);
                    sc = (a & 0x0F) | ((b >> 2) & 0x30);
                    m = (a >> 4) | ((b.rotate_left(3) >> 2) & 0x30);
                }
                assert_eq!(get_scale_min_k4(j, &s), (sc, m), "j={j} a={a:#x} b={b:#x}");
            }
        }
    }
    // Packing every 6-bit (scale, min) pair the way the quantizer does and unpacking gives it back.
    for j in 0..8 {
        for ls in 0..64u8 {
            for lm in 0..64u8 {
                let mut s = [0xFFu8; 12];
                s[..].fill(0);
                if j < 4 {
                    s[j] = ls;
                    s[j + 4] = lm;
                } else {
                    s[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
                    s[j - 4] |= (ls >> 4) << 6;
                    s[j] |= (lm >> 4) << 6;
                }
                assert_eq!(get_scale_min_k4(j, &s), (ls, lm));
            }
        }
    }
}

#[test]
fn nearest_int_rounds_half_to_even() {
    let mut r = Rng(7);
    for _ in 0..100_000 {
        let v = (r.unif() - 0.5) * 1000.0;
        assert_eq!(nearest_int(v), v.round_ties_even() as i32, "{v}");
    }
    for (v, want) in [
        (0.5f32, 0),
        (1.5, 2),
        (2.5, 2),
        (-0.5, 0),
        (-1.5, -2),
        (-2.5, -2),
        (63.49, 63),
    ] {
        assert_eq!(nearest_int(v), want, "{v}");
    }
}

fn rel_rmse(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum();
    (num / den).sqrt()
}

#[test]
fn round_trip_error_bounds() {
    let mut r = Rng(42);
    let x = r.vec(256 * 64, 0.02);
    let mut errs = Vec::new();
    for (dtype, bound) in [
        (DType::Q8_0, 0.01),
        (DType::Q6K, 0.03),
        (DType::Q4K, 0.10),
        (DType::BF16, 0.005),
        (DType::F16, 0.001),
    ] {
        let mut q = vec![0u8; row_bytes(dtype, x.len()).unwrap()];
        quantize_row(dtype, &x, &mut q).unwrap();
        let mut y = vec![0.0f32; x.len()];
        dequantize_row(dtype, &q, &mut y).unwrap();
        let e = rel_rmse(&x, &y);
        assert!(e < bound, "{dtype}: relative RMSE {e} over {bound}");
        errs.push((dtype, e));
    }
    // More bits, less error.
    assert!(errs[0].1 < errs[1].1 && errs[1].1 < errs[2].1, "{errs:?}");
    // Q8_0 is within half a step of each block's scale, plus the fp16 rounding of d (relative
    // 2^-11) times |q| <= 127.
    let mut q = vec![0u8; row_bytes(DType::Q8_0, x.len()).unwrap()];
    quantize_row_q8_0(&x, &mut q);
    let mut y = vec![0.0f32; x.len()];
    dequantize_row_q8_0(&q, &mut y);
    for (xb, yb) in x.chunks(32).zip(y.chunks(32)) {
        let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        for (a, b) in xb.iter().zip(yb) {
            assert!(
                (a - b).abs() <= amax / 127.0 * (0.5 + 127.0 / 2048.0) + 1e-9,
                "{a} vs {b}"
            );
        }
    }
    // F32 storage is exact.
    let mut q = vec![0u8; x.len() * 4];
    quantize_row(DType::F32, &x, &mut q).unwrap();
    dequantize_row(DType::F32, &q, &mut y).unwrap();
    assert_eq!(x, y);
}

#[test]
fn bf16_rounds_to_nearest_even() {
    // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties go to the even mantissa.
    assert_eq!(f32_to_bf16_bits(1.0 + 1.0 / 256.0), 0x3F80);
    assert_eq!(f32_to_bf16_bits(1.0 + 3.0 / 256.0), 0x3F82);
    assert_eq!(f32_to_bf16_bits(-2.0), 0xC000);
    assert_eq!(f32_to_bf16_bits(f32::NAN) & 0x7FC0, 0x7FC0);
}

fn quantized(dtype: DType, x: &[f32]) -> Vec<u8> {
    let mut q = vec![0u8; row_bytes(dtype, x.len()).unwrap()];
    quantize_row(dtype, x, &mut q).unwrap();
    q
}

const ALL: [DType; 6] = [
    DType::Q8_0,
    DType::Q4K,
    DType::Q6K,
    DType::BF16,
    DType::F16,
    DType::F32,
];

#[test]
fn scalar_dot_is_dot_of_dequantized_row() {
    let mut r = Rng(3);
    for dtype in [DType::Q8_0, DType::Q4K, DType::Q6K] {
        let k = 1024;
        let w = quantized(dtype, &r.vec(k, 0.05));
        let x = r.vec(k, 1.0);
        let mut wf = vec![0.0f32; k];
        dequantize_row(dtype, &w, &mut wf).unwrap();
        let want = wf.iter().zip(&x).fold(0.0f32, |a, (w, x)| a + w * x);
        assert_eq!(
            vec_dot_scalar(dtype, &w, &x).unwrap().to_bits(),
            want.to_bits(),
            "{dtype}"
        );
    }
}

#[test]
fn simd_dot_agrees_with_scalar() {
    if !has_avx2_fma() {
        eprintln!("no AVX2+FMA here: the fast path is not exercised");
        return;
    }
    let mut r = Rng(11);
    for dtype in ALL {
        for k in [256, 3584, 18944] {
            for _ in 0..5 {
                let w = quantized(dtype, &r.vec(k, 0.03));
                let x = r.vec(k, 2.0);
                let mut wf = vec![0.0f32; k];
                dequantize_row(dtype, &w, &mut wf).unwrap();
                let exact: f64 = wf.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
                let mag: f64 = wf
                    .iter()
                    .zip(&x)
                    .map(|(a, b)| (*a as f64 * *b as f64).abs())
                    .sum();
                let fast = vec_dot(dtype, &w, &x).unwrap() as f64;
                let slow = vec_dot_scalar(dtype, &w, &x).unwrap() as f64;
                assert!(
                    (fast - exact).abs() <= 1e-5 * mag,
                    "{dtype} k={k}: simd {fast} exact {exact}"
                );
                assert!(
                    (slow - exact).abs() <= 1e-4 * mag,
                    "{dtype} k={k}: scalar {slow} exact {exact}"
                );
            }
        }
    }
}

#[test]
fn matvec_and_matmul_match_naive() {
    let mut r = Rng(5);
    let (n, k) = (37, 512);
    for dtype in ALL {
        let wf_src = r.vec(n * k, 0.05);
        let w = quantized(dtype, &wf_src);
        let mut wf = vec![0.0f32; n * k];
        dequantize_row(dtype, &w, &mut wf).unwrap();
        let rb = row_bytes(dtype, k).unwrap();
        for m in [1usize, 3] {
            let x = r.vec(m * k, 1.0);
            let mut out = vec![0.0f32; m * n];
            matmul(&w, dtype, n, k, &x, m, &mut out).unwrap();
            for i in 0..m {
                let xr = &x[i * k..(i + 1) * k];
                if uses_quantized_activations(dtype) {
                    // Quantized types: exactly the integer dot of the row's quantized activation.
                    let a = quantize_activation(dtype, xr).unwrap();
                    for j in 0..n {
                        let want = vec_dot_quantized(dtype, &w[j * rb..(j + 1) * rb], &a).unwrap();
                        assert_eq!(
                            out[i * n + j].to_bits(),
                            want.to_bits(),
                            "{dtype} m={m} [{i},{j}]"
                        );
                    }
                    continue;
                }
                for j in 0..n {
                    let want: f64 = (0..k).map(|t| wf[j * k + t] as f64 * xr[t] as f64).sum();
                    let mag: f64 = (0..k)
                        .map(|t| (wf[j * k + t] as f64 * xr[t] as f64).abs())
                        .sum();
                    let got = out[i * n + j] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * mag + 1e-12,
                        "{dtype} m={m} [{i},{j}]: {got} vs {want}"
                    );
                }
            }
        }
    }
}

const QTYPES: [DType; 3] = [DType::Q8_0, DType::Q4K, DType::Q6K];

#[test]
fn q8_k_matches_ggml_reference_bytes() {
    let x = f32s(INPUT);
    let mut y = vec![BlockQ8K::default(); x.len() / 256];
    quantize_row_q8_k(&x, &mut y);
    let want = include_bytes!("testdata/q8_k.bin");
    assert_eq!(want.len(), y.len() * 292);
    for (i, (b, g)) in y.iter().zip(want.chunks_exact(292)).enumerate() {
        assert_eq!(
            b.d.to_le_bytes(),
            g[..4],
            "block {i}: d {} differs from ggml",
            b.d
        );
        for (j, (&q, &gq)) in b.qs.iter().zip(&g[4..260]).enumerate() {
            assert_eq!(q, gq as i8, "block {i} quant {j}");
        }
        for (j, (&s, gs)) in b.bsums.iter().zip(g[260..].chunks_exact(2)).enumerate() {
            assert_eq!(s, i16::from_le_bytes([gs[0], gs[1]]), "block {i} bsum {j}");
        }
    }
}

#[test]
fn q8_0_activation_quantizer_matches_ggml_reference_bytes() {
    let x = f32s(INPUT);
    let want = include_bytes!("testdata/q8_0.bin");
    let QuantizedRow::Q8_0(blocks) = quantize_activation(DType::Q8_0, &x).unwrap() else {
        panic!("Q8_0 weights take Q8_0 activations");
    };
    for (i, (b, g)) in blocks.iter().zip(want.chunks_exact(34)).enumerate() {
        assert_eq!(b.d.to_le_bytes(), g[..2], "block {i}");
        let qs: Vec<u8> = b.qs.iter().map(|&q| q as u8).collect();
        assert_eq!(qs, g[2..], "block {i}");
    }
}

#[test]
fn q8_k_hand_computed_blocks() {
    // max = -127 gives iscale = 1 exactly: q = x rounded half to even, d = 1.
    let mut x = [0.0f32; 256];
    x[..8].copy_from_slice(&[-127.0, 2.5, 3.5, -0.5, 126.5, -126.5, 127.0, 0.49]);
    x[16] = 100.0;
    x[255] = -3.0;
    let mut y = [BlockQ8K::default()];
    quantize_row_q8_k(&x, &mut y);
    assert_eq!(y[0].d, 1.0);
    assert_eq!(&y[0].qs[..8], &[-127, 2, 4, 0, 126, -126, 127, 0]);
    assert_eq!(y[0].qs[16], 100);
    assert_eq!(y[0].qs[255], -3);
    let mut bsums = [0i16; 16];
    bsums[0] = -127 + 2 + 4 + 126 - 126 + 127;
    bsums[1] = 100;
    bsums[15] = -3;
    assert_eq!(y[0].bsums, bsums);
    // max = -2 (the first of the two largest magnitudes): iscale = -127 / -2 = 63.5, d = 1 / 63.5,
    // and x = -2, 2, 1, -1, 0.5 -> -127, 127, 64 (63.5 to even), -64, 32 (31.75).
    let mut x = [0.0f32; 256];
    x[..5].copy_from_slice(&[-2.0, 2.0, 1.0, -1.0, 0.5]);
    quantize_row_q8_k(&x, &mut y);
    assert_eq!(y[0].d, 1.0 / 63.5);
    assert_eq!(&y[0].qs[..6], &[-127, 127, 64, -64, 32, 0]);
    assert_eq!(y[0].bsums[0], 32);
    // A positive max gives a negative d (quants of the opposite sign): max = 2 -> d = -2 / 127.
    x[0] = 0.0;
    quantize_row_q8_k(&x, &mut y);
    assert_eq!(y[0].d, 1.0 / (-127.0f32 / 2.0));
    assert_eq!(&y[0].qs[..5], &[0, -127, -64, 64, -32]);
}

#[test]
fn q8_k_and_q8_0_activation_properties() {
    let mut r = Rng(21);
    for trial in 0..50 {
        let scale = [1e-6f32, 1e-2, 1.0, 300.0][trial % 4];
        let mut x = r.vec(1024, scale);
        // A zero block, a constant block, a lone outlier.
        if trial % 3 == 0 {
            x[256..512].fill(0.0);
            x[..32].fill(-scale);
            x[700] = 50.0 * scale;
        }
        for dtype in [DType::Q8_0, DType::Q4K] {
            let a = quantize_activation(dtype, &x).unwrap();
            let deq = a.dequantize();
            let bl = if dtype == DType::Q8_0 { 32 } else { 256 };
            for (bi, (xb, yb)) in x.chunks(bl).zip(deq.chunks(bl)).enumerate() {
                let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let (d, qs): (f32, Vec<i32>) = match &a {
                    QuantizedRow::Q8_0(b) => (
                        f16::from_bits(b[bi].d).to_f32(),
                        b[bi].qs.iter().map(|&q| q as i32).collect(),
                    ),
                    QuantizedRow::Q8K(b) => {
                        let s: Vec<i32> = b[bi].qs.iter().map(|&q| q as i32).collect();
                        for (j, c) in s.chunks(16).enumerate() {
                            assert_eq!(b[bi].bsums[j] as i32, c.iter().sum::<i32>());
                        }
                        (b[bi].d, s)
                    }
                };
                assert!(qs.iter().all(|q| (-127..=127).contains(q)), "{dtype}");
                if amax == 0.0 {
                    assert!(d == 0.0 && qs.iter().all(|&q| q == 0));
                    continue;
                }
                // |d| = max|x| / 127: Q8_0 stores that rounded to fp16 (zero below fp16's range, as
                // in ggml), Q8_K as 1 / (-127 / max) in f32. The extreme value maps to ±127.
                let d32 = amax / 127.0;
                if dtype == DType::Q8_0 {
                    assert_eq!(d, f16::from_f32(d32).to_f32(), "block {bi}: amax {amax}");
                } else {
                    assert!(
                        (d.abs() - d32).abs() <= 3e-7 * d32,
                        "block {bi}: d {d} amax {amax}"
                    );
                }
                assert!(qs.iter().any(|q| q.abs() == 127));
                // Each value within half a step, plus (Q8_0) the fp16 rounding of d times |q|.
                let tol = 0.5 * d32 * (1.0 + 1e-5) + 127.0 * (d.abs() - d32).abs();
                for (u, v) in xb.iter().zip(yb) {
                    assert!((u - v).abs() <= tol, "{dtype}: {u} -> {v}, step {d32}");
                }
            }
        }
    }
}

/// A random stored block row of `dtype` from raw random bytes (every quant and scale pattern,
/// -128 quants and scale 63 / -128 included) with fp16 super-scales drawn from zero, tiny,
/// ordinary and fp16-max values.
fn random_weight_row(r: &mut Rng, dtype: DType, k: usize) -> Vec<u8> {
    let mut w: Vec<u8> = (0..row_bytes(dtype, k).unwrap())
        .map(|_| r.next() as u8)
        .collect();
    let pick = |r: &mut Rng| {
        let v = match r.next() % 8 {
            0 => 0.0,
            1 => 65504.0,
            2 => 6e-8,
            3 => -0.5,
            _ => (r.unif() - 0.5) * 0.1,
        };
        f16::from_f32(v).to_bits().to_le_bytes()
    };
    for b in w.chunks_exact_mut(dtype.block_bytes()) {
        match dtype {
            DType::Q8_0 => b[..2].copy_from_slice(&pick(r)),
            DType::Q4K => {
                b[..2].copy_from_slice(&pick(r));
                b[2..4].copy_from_slice(&pick(r));
            }
            DType::Q6K => b[208..].copy_from_slice(&pick(r)),
            _ => unreachable!(),
        }
    }
    w
}

/// Random activations for `dtype`, with extreme blocks: all ±127 quants, zero blocks, and
/// ordinary data at several scales.
fn random_activation(r: &mut Rng, dtype: DType, k: usize) -> (Vec<f32>, QuantizedRow) {
    let mut x = r.vec(k, 1e-3);
    let bl = if dtype == DType::Q8_0 { 32 } else { 256 };
    for (i, b) in x.chunks_mut(bl).enumerate() {
        match (r.next() as usize + i) % 5 {
            0 => b.fill(0.0),
            1 => {
                // Every value at ±max: quants of ±127 only.
                for v in b.iter_mut() {
                    *v = if r.next().is_multiple_of(2) {
                        7.0
                    } else {
                        -7.0
                    };
                }
            }
            2 => b.iter_mut().for_each(|v| *v *= 1e4),
            _ => {}
        }
    }
    let a = quantize_activation(dtype, &x).unwrap();
    (x, a)
}

#[test]
fn simd_integer_dot_equals_scalar_bit_for_bit() {
    if !has_avx2_fma() {
        eprintln!("no AVX2+FMA here: the fast path is not exercised");
        return;
    }
    let mut r = Rng(99);
    for dtype in QTYPES {
        let bl = dtype.block_len();
        // Block counts around the 8-block groups of the Q8_0 path, and the 7B row lengths.
        let mut ks: Vec<usize> = (1..=19).map(|b| b * bl).collect();
        ks.extend([3584, 18944]);
        for k in ks {
            for _ in 0..4 {
                let w = random_weight_row(&mut r, dtype, k);
                let (_, a) = random_activation(&mut r, dtype, k);
                let fast = vec_dot_quantized(dtype, &w, &a).unwrap();
                let slow = vec_dot_quantized_scalar(dtype, &w, &a).unwrap();
                assert_eq!(
                    fast.to_bits(),
                    slow.to_bits(),
                    "{dtype} k={k}: {fast} vs {slow}"
                );
            }
        }
        // Extremes: -128 / maximal weight quants against ±127 activations at every position.
        let k = 8 * 256;
        let mut w = random_weight_row(&mut r, dtype, k);
        for b in w.chunks_exact_mut(dtype.block_bytes()) {
            match dtype {
                DType::Q8_0 => b[2..].fill(0x80),
                DType::Q4K => b[4..].fill(0xFF),
                DType::Q6K => {
                    b[..192].fill(0xFF);
                    b[192..208].fill(0x80);
                }
                _ => unreachable!(),
            }
        }
        for sign in [1.0f32, -1.0] {
            let x: Vec<f32> = (0..k)
                .map(|i| if i % 3 == 0 { sign } else { -sign })
                .collect();
            let a = quantize_activation(dtype, &x).unwrap();
            let fast = vec_dot_quantized(dtype, &w, &a).unwrap();
            let slow = vec_dot_quantized_scalar(dtype, &w, &a).unwrap();
            assert_eq!(
                fast.to_bits(),
                slow.to_bits(),
                "{dtype} extremes: {fast} vs {slow}"
            );
        }
    }
}

#[test]
fn integer_dot_on_exact_data_is_exact() {
    // Power-of-two scales and small sums: every float step is exact, so the integer path must
    // give exactly Σ w·x of the dequantized values, in any order (and on either path).
    let mut r = Rng(8);
    for dtype in QTYPES {
        let k = 1024;
        let mut w = random_weight_row(&mut r, dtype, k);
        let one = f16::from_f32(1.0 / 1024.0).to_bits().to_le_bytes();
        for b in w.chunks_exact_mut(dtype.block_bytes()) {
            match dtype {
                DType::Q8_0 => b[..2].copy_from_slice(&one),
                DType::Q4K => {
                    b[..2].copy_from_slice(&one);
                    b[2..4].copy_from_slice(&one);
                }
                DType::Q6K => b[208..].copy_from_slice(&one),
                _ => unreachable!(),
            }
        }
        // x = integers in -127..=127 with a ±127 in each block: d = ±1 for Q8_K and 1 for Q8_0.
        let x: Vec<f32> = (0..k)
            .map(|i| {
                if i % 32 == 0 {
                    127.0
                } else {
                    (r.next() % 255) as f32 - 127.0
                }
            })
            .collect();
        let a = quantize_activation(dtype, &x).unwrap();
        assert_eq!(a.dequantize(), x, "{dtype}: integer activations are exact");
        let mut wf = vec![0.0f32; k];
        dequantize_row(dtype, &w, &mut wf).unwrap();
        let exact: f64 = wf.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
        assert!(exact.abs() < (1 << 24) as f64 / 1024.0);
        for got in [
            vec_dot_quantized(dtype, &w, &a).unwrap(),
            vec_dot_quantized_scalar(dtype, &w, &a).unwrap(),
        ] {
            assert_eq!(got as f64, exact, "{dtype}");
        }
    }
}

#[test]
fn integer_dot_error_bounds() {
    let mut r = Rng(77);
    for dtype in QTYPES {
        for k in [256, 3584, 18944] {
            for t in 0..4 {
                // Weights from the real quantizer (t even) or raw random blocks (t odd).
                let w = if t % 2 == 0 {
                    quantized(dtype, &r.vec(k, 0.03))
                } else {
                    random_weight_row(&mut r, dtype, k)
                };
                let (x, a) = random_activation(&mut r, dtype, k);
                let mut wf = vec![0.0f32; k];
                dequantize_row(dtype, &w, &mut wf).unwrap();
                // |w| plus, for Q4_K, twice the min term: bounds |d·sc·q| + |dmin·m| per weight,
                // the two products the block sum is formed from before they cancel.
                let wmag: Vec<f64> = match dtype {
                    DType::Q4K => w
                        .chunks_exact(144)
                        .zip(wf.chunks_exact(256))
                        .flat_map(|(b, wb)| {
                            let s = q4_k::block_scales(b);
                            wb.iter()
                                .enumerate()
                                .map(move |(i, v)| v.abs() as f64 + 2.0 * s[i / 32].1.abs() as f64)
                                .collect::<Vec<_>>()
                        })
                        .collect(),
                    _ => wf.iter().map(|v| v.abs() as f64).collect(),
                };
                let xq = a.dequantize();
                let got = vec_dot_quantized(dtype, &w, &a).unwrap() as f64;
                // (a) Against Σ w·x̂ of the dequantized activation: float rounding only. Each
                // block term carries a few roundings and the sum adds one per block:
                // |err| <= (blocks + 8) · 2^-23 · Σ |w|·|x̂|.
                let exact_q: f64 = wf.iter().zip(&xq).map(|(u, v)| *u as f64 * *v as f64).sum();
                let mag_q: f64 = wmag.iter().zip(&xq).map(|(u, v)| u * v.abs() as f64).sum();
                let nb = (k / dtype.block_len()) as f64;
                let bound = (nb + 8.0) * f64::powi(2.0, -23) * mag_q;
                assert!(
                    (got - exact_q).abs() <= bound,
                    "{dtype} k={k}: {got} vs Σw·x̂ {exact_q} (bound {bound})"
                );
                // (b) Against the true f32 activation: each x moved by at most half a
                // quantization step of its block (fp16-rounded d for Q8_0).
                let bl = if dtype == DType::Q8_0 { 32 } else { 256 };
                let mut act_err = 0.0f64;
                for (i, xb) in x.chunks(bl).enumerate() {
                    let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
                    let half_step = amax / 127.0
                        * if bl == 32 {
                            0.5 + 127.0 / 2048.0
                        } else {
                            0.5 + 1e-5
                        };
                    act_err += wf[i * bl..(i + 1) * bl]
                        .iter()
                        .map(|v| v.abs() as f64 * half_step)
                        .sum::<f64>();
                }
                let exact: f64 = wf.iter().zip(&x).map(|(u, v)| *u as f64 * *v as f64).sum();
                assert!(
                    (got - exact).abs() <= act_err + bound,
                    "{dtype} k={k}: {got} vs Σw·x {exact} (bound {})",
                    act_err + bound
                );
            }
        }
    }
}

#[test]
fn matvec_rows_and_threads() {
    // Odd row counts (fewer rows than tasks, a ragged last chunk) on 1, 2 and 3 threads: every
    // output is the row's own integer dot, bit for bit.
    let mut r = Rng(4);
    for dtype in QTYPES {
        let k = 512;
        for n in [1usize, 17, 131] {
            let w = quantized(dtype, &r.vec(n * k, 0.05));
            let rb = row_bytes(dtype, k).unwrap();
            let x = r.vec(k, 1.0);
            let a = quantize_activation(dtype, &x).unwrap();
            let want: Vec<u32> = (0..n)
                .map(|j| {
                    vec_dot_quantized(dtype, &w[j * rb..(j + 1) * rb], &a)
                        .unwrap()
                        .to_bits()
                })
                .collect();
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut out = vec![f32::NAN; n];
                pool.install(|| matvec(&w, dtype, n, k, &x, &mut out))
                    .unwrap();
                let got: Vec<u32> = out.iter().map(|v| v.to_bits()).collect();
                assert_eq!(got, want, "{dtype} n={n} threads={threads}");
                // m > 1 crosses the 16-row tasks and the 32-row activation tiles.
                let m = 33;
                let xm = r.vec(m * k, 1.0);
                let mut om = vec![f32::NAN; m * n];
                pool.install(|| matmul(&w, dtype, n, k, &xm, m, &mut om))
                    .unwrap();
                for i in [0, 31, 32] {
                    let ai = quantize_activation(dtype, &xm[i * k..(i + 1) * k]).unwrap();
                    for j in 0..n {
                        let v = vec_dot_quantized(dtype, &w[j * rb..(j + 1) * rb], &ai).unwrap();
                        assert_eq!(om[i * n + j].to_bits(), v.to_bits(), "{dtype} [{i},{j}]");
                    }
                }
                assert!(
                    om.iter().all(|v| !v.is_nan()),
                    "{dtype}: every output written"
                );
            }
        }
    }
}

#[test]
fn scales_mins_k4_matches_get_scale_min_k4() {
    let mut r = Rng(13);
    for _ in 0..20_000 {
        let s: Vec<u8> = (0..12).map(|_| r.next() as u8).collect();
        let (sc, mn) = q4_k::scales_mins_k4(&s);
        for j in 0..8 {
            assert_eq!((sc[j], mn[j]), get_scale_min_k4(j, &s), "j={j} {s:?}");
        }
    }
}

#[test]
fn quantized_activation_errors() {
    assert!(quantize_activation(DType::BF16, &[0.0; 32]).is_err());
    let e = quantize_activation(DType::Q4K, &[0.0; 128])
        .unwrap_err()
        .to_string();
    assert!(e.contains("128"), "{e}");
    let a = quantize_activation(DType::Q8_0, &[0.0; 256]).unwrap();
    // A Q4_K row cannot take a Q8_0 activation, and the lengths must agree.
    assert!(vec_dot_quantized(DType::Q4K, &[0u8; 144], &a).is_err());
    assert!(vec_dot_quantized(DType::Q8_0, &[0u8; 34 * 7], &a).is_err());
    assert!(vec_dot_quantized(DType::Q8_0, &[0u8; 34 * 8], &a).is_ok());
}

#[test]
fn bad_lengths_are_errors() {
    // The vision tower's 3420-wide rows fit neither Q8_0 nor K-quant blocks.
    let e = row_bytes(DType::Q8_0, 3420).unwrap_err().to_string();
    assert!(e.contains("3420") && e.contains("q8_0"), "{e}");
    assert!(row_bytes(DType::Q4K, 1280 + 32).is_err());
    assert!(row_bytes(DType::I32, 32).is_err());
    let x = vec![0.0f32; 256];
    let mut small = vec![0u8; 143];
    assert!(quantize_row(DType::Q4K, &x, &mut small).is_err());
    let mut out = vec![0.0f32; 2];
    let w = vec![0u8; 144 * 2];
    assert!(matvec(&w, DType::Q4K, 2, 256, &x[..255], &mut out).is_err());
    assert!(matvec(&w, DType::Q4K, 3, 256, &x, &mut out).is_err());
    assert!(matmul(&w, DType::Q4K, 2, 256, &x, 2, &mut out).is_err());
    assert!(vec_dot(DType::Q6K, &w, &x).is_err());
}
