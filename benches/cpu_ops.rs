//! CPU op benchmarks: decode GEMV at the Qwen2.5-VL-7B shapes (bf16, Q8_0, Q4_K and Q6_K weights)
//! against the machine's measured memory bandwidth, batched GEMM at M = 1, 8, 32, 64 (one pass
//! over the weights for the whole batch: rows/s relative to M = 1), and the prefill / vision
//! tower matmuls in GFLOP/s. The kernels are the backend's chosen instruction set (printed first;
//! `REEL_CPU_ISA=amx|avx512|avx2|scalar` picks another).
//!
//! Bandwidth figures: GEMV GB/s = weight bytes / time. The ceiling is a rayon-parallel copy of a
//! 512 MiB buffer, counted as read + write bytes (2 × size / time), measured in the same run;
//! a parallel read-only sum is printed beside it.
//!
//! `cargo bench --bench cpu_ops [-- FILTER]` (criterion output, then a summary table). A FILTER
//! (a substring such as `gemv_q4_k` or `lm_head`) also limits the summary rows, whose setup is
//! the slow part.

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use rayon::prelude::*;
use reel::backend::cpu::CpuBackend;
use reel::backend::{Backend, HostBytes, TRef};
use reel::{DType, Shape};
use std::hint::black_box;
use std::time::{Duration, Instant};

const GEMV: [(&str, usize, usize); 4] = [
    ("qo_proj 3584x3584", 3584, 3584),
    ("gate/up 18944x3584", 18944, 3584),
    ("down 3584x18944", 3584, 18944),
    ("lm_head 152064x3584", 152_064, 3584),
];

/// The quantized GEMV rows; the down projection is left out as its byte count repeats gate/up's.
const GEMV_Q: [(&str, usize, usize); 3] = [
    ("qo_proj 3584x3584", 3584, 3584),
    ("gate/up 18944x3584", 18944, 3584),
    ("lm_head 152064x3584", 152_064, 3584),
];

/// Whether `id` ("group/label") matches the command line filters (none: everything).
fn wanted(id: &str) -> bool {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    filters.is_empty() || filters.iter().any(|f| id.contains(f.as_str()))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn median_secs(mut f: impl FnMut(), iters: usize) -> f64 {
    f();
    let mut t: Vec<f64> = (0..iters)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[t.len() / 2]
}

/// (copy GB/s counted read+write, read-only GB/s).
fn memory_bandwidth() -> (f64, f64) {
    let n = 512 << 20;
    let src: Vec<u8> = (0..n).map(|i| i as u8).collect();
    let mut dst = vec![0u8; n];
    let chunk = 1 << 20;
    let copy = median_secs(
        || {
            dst.par_chunks_mut(chunk)
                .zip(src.par_chunks(chunk))
                .for_each(|(d, s)| d.copy_from_slice(s));
            black_box(&dst);
        },
        7,
    );
    let words: &[u64] = bytemuck::cast_slice(&src);
    let read = median_secs(
        || {
            let s: u64 = words
                .par_chunks(chunk / 8)
                .map(|c| c.iter().fold(0u64, |a, &b| a ^ b))
                .reduce(|| 0, |a, b| a ^ b);
            black_box(s);
        },
        7,
    );
    (2.0 * n as f64 / copy / 1e9, n as f64 / read / 1e9)
}

struct Gemv {
    be: CpuBackend,
    x: TRef,
    w: TRef,
    out: TRef,
}

fn setup(m: usize, n: usize, k: usize) -> Gemv {
    setup_as(m, n, k, true)
}

/// bf16 weights, prepared as the model loader does (panels packed at load) or left as stored.
fn setup_as(m: usize, n: usize, k: usize, prepare: bool) -> Gemv {
    let mut be = CpuBackend::new();
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let wbytes: Vec<u8> = (0..n * k)
        .flat_map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            half::bf16::from_f32(((s >> 40) as f32 / 16_777_216.0 - 0.5) * 0.1).to_le_bytes()
        })
        .collect();
    let wb = be.load_weight(HostBytes::from_vec(wbytes)).unwrap();
    if prepare {
        be.prepare_matmul_weight(&TRef::new(wb, 0, DType::BF16, Shape::new(&[n, k])))
            .unwrap();
    }
    let xb = be.alloc(m * k * 2).unwrap();
    let xs: Vec<u8> = (0..m * k)
        .flat_map(|i| half::bf16::from_f32((i % 17) as f32 * 0.01).to_le_bytes())
        .collect();
    be.write(xb, 0, &xs).unwrap();
    let ob = be.alloc(m * n * 2).unwrap();
    Gemv {
        x: TRef::new(xb, 0, DType::BF16, Shape::new(&[m, k])),
        w: TRef::new(wb, 0, DType::BF16, Shape::new(&[n, k])),
        out: TRef::new(ob, 0, DType::BF16, Shape::new(&[m, n])),
        be,
    }
}

/// Random but well-formed blocks of a quantized `[n, k]` matrix: random quants and scale bytes,
/// fp16 super-scales in a realistic range (quantizing real data would take minutes at lm_head size).
fn random_quantized(dtype: DType, n: usize, k: usize) -> Vec<u8> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let bytes = dtype.bytes_for(n * k);
    let mut w = Vec::with_capacity(bytes + 8);
    while w.len() < bytes {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        w.extend_from_slice(&s.to_le_bytes());
    }
    w.truncate(bytes);
    let d = |v: f32| half::f16::from_f32(v).to_le_bytes();
    for b in w.chunks_exact_mut(dtype.block_bytes()) {
        match dtype {
            DType::Q8_0 => b[0..2].copy_from_slice(&d(4e-4)),
            DType::Q4K => {
                b[0..2].copy_from_slice(&d(2e-4));
                b[2..4].copy_from_slice(&d(1e-4));
            }
            DType::Q6K => b[208..210].copy_from_slice(&d(1e-5)),
            _ => unreachable!("quantized types only"),
        }
    }
    w
}

fn setup_quantized_m(dtype: DType, m: usize, n: usize, k: usize) -> Gemv {
    setup_quantized_as(dtype, m, n, k, true)
}

/// A quantized matmul; `prepare`: the weight prepared as the model loader does (the quantized
/// types' interleaved rows on AVX-512), or left as stored rows.
fn setup_quantized_as(dtype: DType, m: usize, n: usize, k: usize, prepare: bool) -> Gemv {
    setup_quantized_on(CpuBackend::new(), dtype, m, n, k, prepare)
}

fn setup_quantized_on(
    mut be: CpuBackend,
    dtype: DType,
    m: usize,
    n: usize,
    k: usize,
    prepare: bool,
) -> Gemv {
    let wb = be
        .load_weight(HostBytes::from_vec(random_quantized(dtype, n, k)))
        .unwrap();
    if prepare {
        be.prepare_matmul_weight(&TRef::new(wb, 0, dtype, Shape::new(&[n, k])))
            .unwrap();
    }
    let xb = be.alloc(m * k * 2).unwrap();
    let xs: Vec<u8> = (0..m * k)
        .flat_map(|i| half::bf16::from_f32((i % 17) as f32 * 0.01 - 0.08).to_le_bytes())
        .collect();
    be.write(xb, 0, &xs).unwrap();
    let ob = be.alloc(m * n * 2).unwrap();
    Gemv {
        x: TRef::new(xb, 0, DType::BF16, Shape::new(&[m, k])),
        w: TRef::new(wb, 0, dtype, Shape::new(&[n, k])),
        out: TRef::new(ob, 0, DType::BF16, Shape::new(&[m, n])),
        be,
    }
}

impl Gemv {
    fn run(&mut self) {
        self.be.matmul(self.x, self.w, None, self.out).unwrap();
    }
}

fn bench(c: &mut Criterion) {
    let (copy_gbs, read_gbs) = memory_bandwidth();
    let threads = CpuBackend::new().threads();
    let name = CpuBackend::new().name();
    let peak = CpuBackend::new().measured_compute_peak();
    let peak_gflops = peak.as_ref().map(|p| p.0 * 1e3);
    let mut summary = vec![format!(
        "memory: copy {copy_gbs:.1} GB/s (read+write bytes), read-only {read_gbs:.1} GB/s, {threads} threads; compute peak {}; backend {name}",
        peak.map_or("unknown".into(), |(t, what)| format!("{:.0} GFLOP/s ({what})", t * 1e3))
    )];

    let mut g = c.benchmark_group("gemv_bf16");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(10);
    for (label, n, k) in GEMV {
        if !wanted(&format!("gemv_bf16/{label}")) {
            continue;
        }
        let mut s = setup(1, n, k);
        let bytes = (n * k * 2) as u64;
        g.throughput(Throughput::Bytes(bytes));
        g.bench_function(label, |b| b.iter(|| s.run()));
        // The stored rows beside the panels, alternating in the same run.
        let mut stored = setup_as(1, n, k, false);
        let (mut tp, mut ts) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            tp.push(median_secs(|| s.run(), 3));
            ts.push(median_secs(|| stored.run(), 3));
        }
        let (t, t_stored) = (median(tp), median(ts));
        let gbs = bytes as f64 / t / 1e9;
        summary.push(format!(
            "gemv {label:<22} {:>8.3} ms {gbs:>6.1} GB/s = {:>3.0}% of read (stored rows: {:>5.1} GB/s)",
            t * 1e3,
            100.0 * gbs / read_gbs,
            bytes as f64 / t_stored / 1e9
        ));
    }
    g.finish();

    for (group, dtype) in [
        ("gemv_q8_0", DType::Q8_0),
        ("gemv_q4_k", DType::Q4K),
        ("gemv_q6_k", DType::Q6K),
    ] {
        let mut g = c.benchmark_group(group);
        // Flat sampling: ten equal samples, so the slow lm_head rows stay a few seconds.
        g.measurement_time(Duration::from_secs(2))
            .warm_up_time(Duration::from_millis(300))
            .sampling_mode(SamplingMode::Flat)
            .sample_size(10);
        for (label, n, k) in GEMV_Q {
            if !wanted(&format!("{group}/{label}")) {
                continue;
            }
            let mut s = setup_quantized_m(dtype, 1, n, k);
            let bytes = dtype.bytes_for(n * k) as u64;
            g.throughput(Throughput::Bytes(bytes));
            g.bench_function(label, |b| b.iter(|| s.run()));
            // The same GEMV on the stored rows (not prepared), alternating with the prepared
            // weight in the same run for a like-for-like ratio.
            let mut stored = setup_quantized_as(dtype, 1, n, k, false);
            let (mut tp, mut ts) = (Vec::new(), Vec::new());
            for _ in 0..3 {
                tp.push(median_secs(|| s.run(), 3));
                ts.push(median_secs(|| stored.run(), 3));
            }
            let (t, t_stored) = (median(tp), median(ts));
            let gbs = bytes as f64 / t / 1e9;
            summary.push(format!(
                "{group} {label:<22} {:>8.3} ms {gbs:>6.1} GB/s = {:>3.0}% of read (stored rows: {:>5.1} GB/s)",
                t * 1e3,
                100.0 * gbs / read_gbs,
                bytes as f64 / t_stored / 1e9
            ));
        }
        g.finish();
        // One thread on 256 rows that stay in L2: the GEMV's compute ceiling per core.
        let name = format!("{group}/kernel");
        if wanted(&name) {
            let (n, k) = (256, 3584);
            let one = || CpuBackend::with_threads(1).unwrap();
            let mut p = setup_quantized_on(one(), dtype, 1, n, k, true);
            let mut st = setup_quantized_on(one(), dtype, 1, n, k, false);
            let reps = 100;
            let (mut tp, mut ts) = (f64::MAX, f64::MAX);
            for _ in 0..3 {
                tp = tp.min(median_secs(|| (0..reps).for_each(|_| p.run()), 3));
                ts = ts.min(median_secs(|| (0..reps).for_each(|_| st.run()), 3));
            }
            let b = (reps * dtype.bytes_for(n * k)) as f64;
            summary.push(format!(
                "{group} GEMV, 1 thread, weights in L2: {:>5.1} GB/s (stored rows: {:>5.1} GB/s)",
                b / tp / 1e9,
                b / ts / 1e9
            ));
        }
    }

    // Batched decode: M activation rows against the gate/up shape, one pass over the weights.
    let mut g = c.benchmark_group("batched");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(300))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10);
    let (bn, bk) = (18944, 3584);
    for (tname, dtype) in [
        ("bf16", DType::BF16),
        ("q8_0", DType::Q8_0),
        ("q4_k", DType::Q4K),
    ] {
        let mut t1: Option<f64> = None;
        for m in [1usize, 8, 32, 64] {
            let label = format!("{tname} M={m} gate/up {bn}x{bk}");
            if !wanted(&format!("batched/{label}")) {
                continue;
            }
            let mut s = if dtype == DType::BF16 {
                setup(m, bn, bk)
            } else {
                setup_quantized_m(dtype, m, bn, bk)
            };
            let bytes = dtype.bytes_for(bn * bk) as f64;
            g.throughput(Throughput::Elements((m * bn * bk) as u64));
            g.bench_function(&label, |b| b.iter(|| s.run()));
            let t = median_secs(|| s.run(), 7);
            if m == 1 {
                t1 = Some(t);
            }
            let rel = t1.map_or("-".to_string(), |t1| format!("{:.1}x", t1 * m as f64 / t));
            summary.push(format!(
                "batched {label:<28} {:>8.3} ms {:>6.1} GFLOP/s, weights {:>5.1} GB/s = {:>3.0}% of read; rows/s {rel} of M=1",
                t * 1e3,
                2.0 * (m * bn * bk) as f64 / t / 1e9,
                bytes / t / 1e9,
                100.0 * bytes / t / 1e9 / read_gbs,
            ));
        }
    }
    g.finish();

    // Prefill (language model) and the vision tower's matmuls (K = 1280 and 3420, the latter
    // not a multiple of 8/16/32), in GFLOP/s.
    let mut g = c.benchmark_group("prefill");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10);
    for (label, dtype, m, n, k) in [
        ("bf16 128x3584 @ 3584x3584", DType::BF16, 128, 3584, 3584),
        ("bf16 128x3584 @ 512x3584", DType::BF16, 128, 512, 3584),
        ("bf16 128x3584 @ 18944x3584", DType::BF16, 128, 18944, 3584),
        ("bf16 128x18944 @ 3584x18944", DType::BF16, 128, 3584, 18944),
        ("bf16 512x3584 @ 18944x3584", DType::BF16, 512, 18944, 3584),
        ("q8_0 128x3584 @ 18944x3584", DType::Q8_0, 128, 18944, 3584),
        ("q4_k 128x3584 @ 18944x3584", DType::Q4K, 128, 18944, 3584),
        ("q6_k 128x18944 @ 3584x18944", DType::Q6K, 128, 3584, 18944),
        (
            "vision qkv 1024x1280 @ 3840x1280",
            DType::BF16,
            1024,
            3840,
            1280,
        ),
        (
            "vision down 1024x3420 @ 1280x3420",
            DType::BF16,
            1024,
            1280,
            3420,
        ),
        (
            "vision proj 1024x1280 @ 1280x1280",
            DType::BF16,
            1024,
            1280,
            1280,
        ),
        (
            "vision gate 1024x1280 @ 3420x1280",
            DType::BF16,
            1024,
            3420,
            1280,
        ),
    ] {
        if !wanted(&format!("prefill/{label}")) {
            continue;
        }
        let mut s = if dtype == DType::BF16 {
            setup(m, n, k)
        } else {
            setup_quantized_m(dtype, m, n, k)
        };
        let flops = 2.0 * (m * n * k) as f64;
        g.throughput(Throughput::Elements((m * n * k) as u64));
        g.bench_function(label, |b| b.iter(|| s.run()));
        let t = median_secs(|| s.run(), 5);
        summary.push(format!(
            "prefill {label:<34} {:>8.2} ms {:>6.1} GFLOP/s{}",
            t * 1e3,
            flops / t / 1e9,
            // The peak is the bf16 dot's; int8 dots run on other units.
            peak_gflops
                .filter(|_| dtype == DType::BF16)
                .map_or(String::new(), |p| format!(
                    " = {:.0}% of peak",
                    100.0 * flops / t / 1e9 / p
                ))
        ));
    }
    g.finish();
    println!("\n== summary ==");
    for l in summary {
        println!("{l}");
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
