//! Perf mode: the timed cases on one backend, each the median over batches of runs (the
//! backend synchronized around each batch), reported as achieved GB/s and TFLOP/s beside the
//! roofline of the backend's ceilings: on the CPU the host read bandwidth measured in the
//! same run; on CUDA the device's datasheet DRAM bandwidth and dense bf16 tensor throughput,
//! with the copy bandwidth measured through `cast` printed beside them. Weights rotate among
//! copies larger than the caches ([`super::Ctx::weight`]), so repeated runs read DRAM.

use super::{with_env, Case, Cost, Ctx, Mode, Target};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tensor::{DType, Shape};
use rayon::prelude::*;
use std::fmt::Write;
use std::time::Instant;

/// Datasheet peaks (GB/s, dense bf16 TFLOP/s) by device name.
pub fn datasheet_peaks(name: &str) -> (Option<f64>, Option<f64>) {
    let n = name.to_ascii_uppercase();
    if n.contains("H200") {
        (Some(4800.0), Some(989.0))
    } else if n.contains("H100") && n.contains("PCIE") {
        (Some(2000.0), Some(756.0))
    } else if n.contains("H100") {
        (Some(3350.0), Some(989.0))
    } else if n.contains("A100") {
        (Some(2039.0), Some(312.0))
    } else {
        (None, None)
    }
}

/// Host memory bandwidth in bytes/s, best of a few runs over `bytes` (keep it far larger than
/// the caches): (a parallel copy counted as read + write bytes, a parallel read-only pass). A
/// GEMV only reads, so the read-only figure is its ceiling.
pub fn host_bandwidth(bytes: usize) -> (f64, f64) {
    let n = bytes / 8 * 8;
    let src: Vec<u64> = (0..n as u64 / 8).collect();
    let mut dst = vec![0u64; n / 8];
    let chunk = 1 << 17;
    let (mut copy, mut read) = (0.0f64, 0.0f64);
    for _ in 0..5 {
        let t = Instant::now();
        dst.par_chunks_mut(chunk)
            .zip(src.par_chunks(chunk))
            .for_each(|(d, s)| d.copy_from_slice(s));
        copy = copy.max(2.0 * n as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        let x = src
            .par_chunks(chunk)
            .map(|c| c.iter().fold(0u64, |a, &b| a ^ b))
            .reduce(|| 0, |a, b| a ^ b);
        std::hint::black_box(x);
        read = read.max(n as f64 / t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    (copy, read)
}

/// The CPU's multiply-add peak on `isa`, TFLOP/s, and the instruction measured (`None` on the
/// scalar path): each thread of the current rayon pool runs the loop at once, and their rates
/// add up (one per core; a thread that ran twice still timed its own core).
pub fn host_compute_peak(isa: crate::backend::cpu::Isa) -> Option<(f64, &'static str)> {
    on_all_threads(|| crate::backend::cpu::isa::peak_flops(isa, 0.15))
}

/// `probe` (a rate per second and its name) on every thread of the pool at once, summed, in
/// units of 10¹².
fn on_all_threads(
    probe: impl Fn() -> Option<(f64, &'static str)> + Sync,
) -> Option<(f64, &'static str)> {
    use rayon::prelude::*;
    let per: Vec<_> = (0..rayon::current_num_threads())
        .into_par_iter()
        .map(|_| probe())
        .collect();
    let name = per.first()?.as_ref()?.1;
    Some((per.iter().flatten().map(|p| p.0).sum::<f64>() / 1e12, name))
}

/// The CPU's int8 dot peak on `isa` (all threads of the pool, as [`host_compute_peak`]),
/// TOP/s, and the instruction measured; `None` where the path has no int8 dot instruction.
pub fn host_int8_peak(isa: crate::backend::cpu::Isa) -> Option<(f64, &'static str)> {
    on_all_threads(|| crate::backend::cpu::isa::peak_int8_ops(isa, 0.15))
}

/// `t` TFLOP/s with the digits that matter (a CPU's fraction of one, a GPU's hundreds).
pub fn tflops(t: f64) -> String {
    if t < 10.0 {
        format!("{t:.2} TFLOP/s")
    } else {
        format!("{t:.0} TFLOP/s")
    }
}

/// What a backend can do at best.
#[derive(Clone, Debug, Default)]
pub struct Ceiling {
    /// Memory bandwidth the roofline uses, GB/s.
    pub gbps: Option<f64>,
    /// Where it comes from (`measured host read`, `datasheet`).
    pub gbps_source: String,
    /// Dense bf16 multiply-add throughput, TFLOP/s.
    pub tflops: Option<f64>,
    /// Where it comes from (`datasheet`, or what the CPU measured).
    pub tflops_source: String,
    /// A copy measured in the same run (read + write bytes), GB/s.
    pub copy_gbps: Option<f64>,
}

impl Ceiling {
    /// Measures or looks up the ceilings of `be` (`quick`: a smaller measurement).
    pub fn of(be: &mut dyn Backend, quick: bool) -> Ceiling {
        let name = be.name();
        if name.starts_with("cpu") {
            let (copy, read) = host_bandwidth(if quick { 128 << 20 } else { 512 << 20 });
            let peak = be.measured_compute_peak();
            return Ceiling {
                gbps: Some(read / 1e9),
                gbps_source: "measured host read".into(),
                tflops: peak.as_ref().map(|p| p.0),
                tflops_source: peak.map_or_else(String::new, |p| p.1),
                copy_gbps: Some(copy / 1e9),
            };
        }
        let (gbps, tflops) = datasheet_peaks(&name);
        Ceiling {
            gbps,
            gbps_source: "datasheet".into(),
            tflops,
            tflops_source: "datasheet".into(),
            copy_gbps: measured_copy(be, if quick { 256 << 20 } else { 1 << 30 }).ok(),
        }
    }

    /// The least time `cost` can take, and which ceiling bounds it (`None`: nothing known).
    pub fn bound(&self, cost: &Cost) -> Option<(f64, String)> {
        let bw = self
            .gbps
            .filter(|_| cost.bytes > 0.0)
            .map(|g| (cost.bytes / (g * 1e9), format!("{g:.0} GB/s")));
        let fl = self
            .tflops
            .filter(|_| cost.flops > 0.0)
            .map(|t| (cost.flops / (t * 1e12), tflops(t)));
        match (bw, fl) {
            (Some(b), Some(f)) => Some(if f.0 > b.0 { f } else { b }),
            (b, f) => b.or(f),
        }
    }

    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        match self.gbps {
            Some(g) => parts.push(format!("{g:.1} GB/s ({})", self.gbps_source)),
            None => parts.push("bandwidth unknown".into()),
        }
        match self.tflops {
            Some(t) => parts.push(format!("{} dense bf16 ({})", tflops(t), self.tflops_source)),
            None => parts.push("compute peak unknown".into()),
        }
        if let Some(c) = self.copy_gbps {
            parts.push(format!("measured copy {c:.1} GB/s (read + write)"));
        }
        parts.join(", ")
    }
}

/// A device copy through `cast` (bf16 to bf16) over `bytes`, read + write bytes per second.
fn measured_copy(be: &mut dyn Backend, bytes: usize) -> Result<f64> {
    let n = bytes / 2;
    let (a, b) = (be.alloc(bytes)?, be.alloc(bytes)?);
    let t = |buf| crate::backend::TRef::new(buf, 0, DType::BF16, Shape::new(&[n]));
    let res = (|| {
        be.cast(t(a), t(b))?;
        be.sync()?;
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let s = Instant::now();
            be.cast(t(a), t(b))?;
            be.sync()?;
            best = best.min(s.elapsed().as_secs_f64());
        }
        Ok(2.0 * bytes as f64 / best / 1e9)
    })();
    be.free(a);
    be.free(b);
    res
}

/// What to time and how.
#[derive(Clone, Debug)]
pub struct Options {
    /// Substrings of `op shape`; empty: every timed case.
    pub filters: Vec<String>,
    /// Activation dtype.
    pub dtype: DType,
    /// Fewer and shorter batches (a smoke run).
    pub quick: bool,
    /// Also run the rows a backend without a compute ceiling would take long on (see
    /// [`SLOW_FLOPS`]).
    pub full: bool,
    /// Time the checked-only cases too.
    pub all: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            filters: Vec::new(),
            dtype: DType::BF16,
            quick: false,
            full: false,
            all: false,
        }
    }
}

/// Cases above this many FLOPs are skipped on backends without a compute ceiling (the CPU)
/// unless [`Options::full`]: seconds per run there.
pub const SLOW_FLOPS: f64 = 2e10;

/// One timed case (one selector value of it).
#[derive(Clone, Debug)]
pub struct Row {
    pub op: String,
    pub shape: String,
    /// `ENV=value` for a case with variants.
    pub variant: Option<String>,
    /// Median microseconds per run; None when skipped or failed (see `note`).
    pub time_us: Option<f64>,
    pub cost: Cost,
    pub note: String,
}

/// The rows of one backend.
#[derive(Clone, Debug)]
pub struct Table {
    pub backend: String,
    pub dtype: DType,
    pub ceiling: Ceiling,
    pub rows: Vec<Row>,
}

/// Median seconds per run of `run` (the argument rotates weight copies): warm-up, then
/// batches of runs sized from a first timing, the backend synchronized around each batch.
fn time(
    be: &mut dyn Backend,
    run: &mut dyn FnMut(&mut dyn Backend, usize) -> Result<()>,
    quick: bool,
) -> Result<f64> {
    let mut i = 0usize;
    let mut once = |be: &mut dyn Backend| -> Result<()> {
        i += 1;
        run(be, i)
    };
    for _ in 0..if quick { 1 } else { 3 } {
        once(be)?;
    }
    be.sync()?;
    let s = Instant::now();
    once(be)?;
    be.sync()?;
    let first = s.elapsed().as_secs_f64();
    // Batches of at least a few milliseconds, so launch and sync overheads stay small.
    let target = if quick { 2e-3 } else { 20e-3 };
    let iters = ((target / first.max(1e-7)).ceil() as usize).clamp(1, 200);
    let mut samples = Vec::new();
    for _ in 0..if quick { 3 } else { 7 } {
        let s = Instant::now();
        for _ in 0..iters {
            once(be)?;
        }
        be.sync()?;
        samples.push(s.elapsed().as_secs_f64() / iters as f64);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

/// Builds and times one case on `be`.
fn time_case(be: &mut dyn Backend, case: &Case, dt: DType, quick: bool) -> Result<f64> {
    let mut cx = Ctx::new(be, dt, case.seed(dt), Mode::Perf);
    let res = case
        .build(&mut cx)
        .and_then(|mut b| time(&mut *cx.be, &mut *b.run, quick));
    cx.free();
    res
}

/// Times every selected case on `target`.
pub fn run(cases: &[Case], target: &Target, opts: &Options) -> Result<Table> {
    let mut be = target.open()?;
    let ceiling = Ceiling::of(be.as_mut(), opts.quick);
    let mut rows = Vec::new();
    let selected = cases
        .iter()
        .filter(|c| (c.timed || opts.all) && c.matches(&opts.filters));
    for case in selected {
        let cost = case.cost_of(opts.dtype);
        let row = |variant: Option<String>, r: Result<f64>| Row {
            op: case.op.into(),
            shape: case.shape.clone(),
            variant,
            time_us: r.as_ref().ok().map(|s| s * 1e6),
            cost,
            note: r.err().map_or(String::new(), |e| format!("error: {e}")),
        };
        if ceiling.tflops.is_none() && cost.flops > SLOW_FLOPS && !opts.full {
            rows.push(Row {
                note: format!("skipped: {:.1e} FLOP (--full runs it)", cost.flops),
                ..row(None, Err(Error::Other(String::new())))
            });
            continue;
        }
        match case.variants_for(&target.name) {
            None => rows.push(row(
                None,
                time_case(be.as_mut(), case, opts.dtype, opts.quick),
            )),
            Some(v) => {
                for value in &v.values {
                    let r = with_env(v.env, value, || {
                        let mut fresh = target.open()?;
                        time_case(fresh.as_mut(), case, opts.dtype, opts.quick)
                    });
                    rows.push(row(Some(format!("{}={value}", v.env)), r));
                }
            }
        }
    }
    Ok(Table {
        backend: be.name(),
        dtype: opts.dtype,
        ceiling,
        rows,
    })
}

impl Table {
    /// `Device:` line and a markdown table: achieved GB/s and TFLOP/s, the ceiling that bounds
    /// the case (the larger of bytes / bandwidth and FLOPs / peak) and the share of it reached.
    /// Variants of a case stand in adjacent rows, each with its speed relative to the first.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "Device: {} ({} activations); ceilings: {}\n\n",
            self.backend,
            self.dtype,
            self.ceiling.describe()
        );
        s.push_str("| op | shape | variant | time (us) | GB/s | TFLOP/s | bound | % of bound |\n");
        s.push_str("|---|---|---|---|---|---|---|---|\n");
        let mut first_of_case: Option<(String, f64)> = None;
        for r in &self.rows {
            let Some(us) = r.time_us else {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | - | - | - | - | {} |",
                    r.op,
                    r.shape,
                    r.variant.as_deref().unwrap_or(""),
                    r.note
                );
                continue;
            };
            let secs = us * 1e-6;
            let gbps = (r.cost.bytes > 0.0).then(|| r.cost.bytes / secs / 1e9);
            let tflops = (r.cost.flops > 0.0).then(|| r.cost.flops / secs / 1e12);
            let (bound, pct) = match self.ceiling.bound(&r.cost) {
                Some((t, what)) => (what, format!("{:.0}%", t / secs * 100.0)),
                None => ("-".into(), "-".into()),
            };
            let key = format!("{} {}", r.op, r.shape);
            let variant = match (&r.variant, &first_of_case) {
                (Some(v), Some((k, t0))) if *k == key => format!("{v} ({:.2}x)", t0 / us),
                (Some(v), _) => {
                    first_of_case = Some((key, us));
                    v.clone()
                }
                (None, _) => String::new(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {variant} | {us:.1} | {} | {} | {bound} | {pct} |",
                r.op,
                r.shape,
                gbps.map_or("-".into(), |g| format!("{g:.1}")),
                tflops.map_or("-".into(), |t| format!("{t:.2}")),
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_by_name() {
        assert_eq!(
            datasheet_peaks("NVIDIA H100 80GB HBM3"),
            (Some(3350.0), Some(989.0))
        );
        assert_eq!(
            datasheet_peaks("cuda:0 NVIDIA H200 (sm_90, 132 SMs)"),
            (Some(4800.0), Some(989.0))
        );
        assert_eq!(
            datasheet_peaks("NVIDIA H100 PCIe"),
            (Some(2000.0), Some(756.0))
        );
        assert_eq!(datasheet_peaks("GeForce"), (None, None));
    }

    /// The roofline picks the slower of the two limits, and the table reports the share of it
    /// (a GEMV bound by bandwidth, a GEMM by compute) and variants against the first value.
    #[test]
    fn roofline_and_table() {
        let c = Ceiling {
            gbps: Some(1000.0),
            gbps_source: "datasheet".into(),
            tflops: Some(100.0),
            tflops_source: "datasheet".into(),
            copy_gbps: None,
        };
        let gemv = Cost {
            bytes: 1e9,
            flops: 1e9,
        };
        let gemm = Cost {
            bytes: 1e8,
            flops: 1e12,
        };
        assert_eq!(c.bound(&gemv).unwrap(), (1e-3, "1000 GB/s".to_string()));
        assert_eq!(c.bound(&gemm).unwrap(), (1e-2, "100 TFLOP/s".to_string()));
        let row = |variant: Option<&str>, us: f64, cost: Cost| Row {
            op: "matmul".into(),
            shape: "s".into(),
            variant: variant.map(String::from),
            time_us: Some(us),
            cost,
            note: String::new(),
        };
        let t = Table {
            backend: "cuda:0 test".into(),
            dtype: DType::BF16,
            ceiling: c,
            rows: vec![
                row(None, 2000.0, gemv),
                row(Some("REEL_GEMM=a"), 20_000.0, gemm),
                row(Some("REEL_GEMM=b"), 10_000.0, gemm),
            ],
        };
        let md = t.markdown();
        assert!(
            md.contains("| matmul | s |  | 2000.0 | 500.0 | 0.50 | 1000 GB/s | 50% |"),
            "{md}"
        );
        assert!(
            md.contains("| REEL_GEMM=a | 20000.0 | 5.0 | 50.00 | 100 TFLOP/s | 50% |"),
            "{md}"
        );
        assert!(
            md.contains("| REEL_GEMM=b (2.00x) | 10000.0 | 10.0 | 100.00 | 100 TFLOP/s | 100% |"),
            "{md}"
        );
    }
}
