//! Perf mode of the op table (`reel::backend::harness`): every timed case on each backend, the
//! median time beside the backend's ceilings (GB/s and TFLOP/s against the roofline of the
//! measured host read bandwidth on the CPU, the datasheet peaks on CUDA), printed as markdown.
//! scripts/gpu-check.sh runs it as the kernel table.
//!
//! `cargo bench --bench ops -- [FILTER...] [--backend cpu|cpu-avx2|cpu-scalar|cuda] [--dtype bf16|f32]
//! [--quick] [--full] [--all] [--list]`
//! - FILTER: substrings of `op shape` (e.g. `matmul`, `decode`, `q4_k`, `attention_paged`);
//! - `--backend`: backends to time (repeatable or comma-separated; default: cpu, and cuda when
//!   a device opens); naming one that cannot open is an error;
//! - `--quick`: fewer, shorter batches; `--full`: also the cases of more than
//!   `perf::SLOW_FLOPS` on backends without a compute ceiling (the CPU); `--all`: the
//!   checked-only cases too; `--list`: the selected cases, untimed.

use reel::backend::harness::{self, perf};
use reel::DType;
use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!(
        "usage: ops [FILTER...] [--backend cpu|cpu-avx2|cpu-scalar|cuda] [--dtype bf16|f32] [--quick] [--full] [--all] [--list]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut opts = perf::Options::default();
    let mut backends: Vec<String> = Vec::new();
    let mut list = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            // cargo bench passes --bench to harness = false targets.
            "--bench" => {}
            "--quick" => opts.quick = true,
            "--full" => opts.full = true,
            "--all" => opts.all = true,
            "--list" => list = true,
            "--backend" => match args.next() {
                Some(v) => backends.extend(v.split(',').map(String::from)),
                None => return usage(),
            },
            "--dtype" => match args.next().as_deref() {
                Some("bf16") => opts.dtype = DType::BF16,
                Some("f32") => opts.dtype = DType::F32,
                _ => return usage(),
            },
            f if f.starts_with('-') => {
                eprintln!("ops: unknown option {f}");
                return usage();
            }
            f => opts.filters.push(f.to_string()),
        }
    }
    let cases = harness::cases();
    if list {
        for c in cases
            .iter()
            .filter(|c| (c.timed || opts.all) && c.matches(&opts.filters))
        {
            let cost = c.cost_of(opts.dtype);
            println!(
                "{:<17} {:<55} {:>10.3e} B {:>10.3e} FLOP",
                c.op, c.shape, cost.bytes, cost.flops
            );
        }
        return ExitCode::SUCCESS;
    }
    let (targets, notes) = harness::targets();
    for n in &notes {
        println!("{n}");
    }
    let wanted: Vec<&harness::Target> = if backends.is_empty() {
        // The best CPU instruction set (listed first) and CUDA.
        let first_cpu = targets.iter().position(|t| t.name.starts_with("cpu"));
        targets
            .iter()
            .enumerate()
            .filter(|(i, t)| !t.name.starts_with("cpu") || Some(*i) == first_cpu)
            .map(|(_, t)| t)
            .collect()
    } else {
        let mut v = Vec::new();
        for b in &backends {
            match targets.iter().find(|t| t.name.starts_with(b.as_str())) {
                Some(t) => v.push(t),
                None => {
                    eprintln!("ops: backend {b} is not available here");
                    return ExitCode::FAILURE;
                }
            }
        }
        v
    };
    let mut failed = false;
    for t in wanted {
        match perf::run(&cases, t, &opts) {
            Ok(table) => {
                failed |= table.rows.iter().any(|r| r.note.starts_with("error"));
                println!("{}", table.markdown());
            }
            Err(e) => {
                eprintln!("ops: {}: {e}", t.name);
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
