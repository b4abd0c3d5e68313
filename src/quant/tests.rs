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
        for m in [1usize, 3] {
            let x = r.vec(m * k, 1.0);
            let mut out = vec![0.0f32; m * n];
            matmul(&w, dtype, n, k, &x, m, &mut out).unwrap();
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|t| wf[j * k + t] as f64 * x[i * k + t] as f64)
                        .sum();
                    let mag: f64 = (0..k)
                        .map(|t| (wf[j * k + t] as f64 * x[i * k + t] as f64).abs())
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

#[test]
fn kl_and_top1() {
    use quality::*;
    let a = [0.0f32, 0.0];
    let b = [3.0f32.ln(), 0.0];
    let kl = kl_divergence(&a, &b).unwrap();
    assert!((kl - 0.5 * (4.0f64 / 3.0).ln()).abs() < 1e-6, "{kl}");
    assert_eq!(kl_divergence(&b, &b).unwrap(), 0.0);
    let s = compare_logits(&[0.0, 1.0, 5.0, 0.0], &[0.0, 1.0, 0.0, 5.0], 2).unwrap();
    assert_eq!(s.positions, 2);
    assert_eq!(s.top1_agreement, 0.5);
    assert!(s.max_kl > 4.0 && s.mean_kl == s.max_kl / 2.0, "{s:?}");
    assert!(compare_logits(&[0.0; 3], &[0.0; 3], 2).is_err());
    assert!(kl_divergence(&[0.0; 3], &[0.0; 2]).is_err());
}

/// Throughput figures (not a pass/fail test): `cargo test --lib quant::tests::throughput --
/// --ignored --nocapture`.
#[test]
#[ignore]
fn throughput() {
    use std::time::Instant;
    let mut r = Rng(1);
    let n: usize = std::env::var("REEL_PROBE_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3584);
    let k = 18944usize;
    let x = r.vec(k, 1.0);
    let src = r.vec(n * k, 0.02);
    for dtype in [DType::Q4K, DType::Q6K, DType::Q8_0, DType::BF16] {
        let t = Instant::now();
        let w = quantized(dtype, &src);
        let qs = t.elapsed().as_secs_f64();
        let mut out = vec![0.0f32; n];
        matvec(&w, dtype, n, k, &x, &mut out).unwrap();
        let iters = 5;
        let t = Instant::now();
        for _ in 0..iters {
            matvec(&w, dtype, n, k, &x, &mut out).unwrap();
        }
        let s = t.elapsed().as_secs_f64() / iters as f64;
        let m = 8;
        let xm = r.vec(m * k, 1.0);
        let mut om = vec![0.0f32; m * n];
        let t = Instant::now();
        matmul(&w, dtype, n, k, &xm, m, &mut om).unwrap();
        let sm = t.elapsed().as_secs_f64();
        eprintln!(
            "{dtype}: quantize {:.1} M weights/s (1 thread); matvec [{n}x{k}] {:.2} ms = {:.2} GB/s of weights, {} threads; matmul m={m} {:.1} ms",
            (n * k) as f64 / qs / 1e6,
            s * 1e3,
            w.len() as f64 / s / 1e9,
            rayon::current_num_threads(),
            sm * 1e3
        );
    }
}
