//! The quantized formats on the host (`reel::quant`): quantizer speed on one thread, and the
//! CPU matrix-vector and 8-row matrix products over each format's bytes, in GB/s of weights
//! read beside the host read bandwidth measured in the same run (the products' ceiling).
//!
//! `cargo bench --bench quant` (`REEL_PROBE_ROWS` rows of K = 18944, default 3584). The same
//! products through the CPU backend at the model's shapes are in `cargo bench --bench ops`.

use reel::backend::harness::{perf::host_bandwidth, Rng};
use reel::quant::{matmul, matvec, quantize_row, row_bytes};
use reel::DType;
use std::time::Instant;

fn main() {
    let (copy, read) = host_bandwidth(512 << 20);
    let threads = rayon::current_num_threads();
    println!(
        "host: read {:.1} GB/s, copy {:.1} GB/s (read + write), {threads} threads",
        read / 1e9,
        copy / 1e9
    );
    let mut r = Rng(1);
    let n: usize = std::env::var("REEL_PROBE_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3584);
    let k = 18944usize;
    let x = r.vals(k, 1.0);
    let src = r.vals(n * k, 0.02);
    for dtype in [DType::Q4K, DType::Q6K, DType::Q8_0, DType::BF16] {
        let t = Instant::now();
        let mut w = vec![0u8; row_bytes(dtype, k).unwrap() * n];
        let rb = row_bytes(dtype, k).unwrap();
        for (s, d) in src.chunks_exact(k).zip(w.chunks_exact_mut(rb)) {
            quantize_row(dtype, s, d).unwrap();
        }
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
        let xm = r.vals(m * k, 1.0);
        let mut om = vec![0.0f32; m * n];
        let t = Instant::now();
        matmul(&w, dtype, n, k, &xm, m, &mut om).unwrap();
        let sm = t.elapsed().as_secs_f64();
        let gbs = w.len() as f64 / s / 1e9;
        println!(
            "{dtype}: quantize {:.1} M weights/s (1 thread); matvec [{n}x{k}] {:.2} ms = {gbs:.2} GB/s of weights ({:.0}% of read); matmul m={m} {:.1} ms",
            (n * k) as f64 / qs / 1e6,
            s * 1e3,
            100.0 * gbs * 1e9 / read,
            sm * 1e3
        );
    }
}
