//! Kernel microbenchmarks at Qwen2.5-VL-7B shapes, timed with CUDA events on the backend's
//! stream, reported as achieved GB/s (memory-bound kernels, bytes = each input read once plus
//! each output written once) or TFLOP/s (GEMM, prefill attention) beside the device's datasheet
//! peak. Inputs are random bf16 in [-1, 1) (never zeros); weights rotate among copies totalling
//! more than twice the L2 so repeated runs do not measure the cache.

use super::{err, CudaBackend};
use crate::backend::{Backend, BufId, HostBytes, KvLayout, MropeParams, PagedKv, TRef};
use crate::error::Result;
use crate::tensor::{DType, Shape};
use cudarc::driver::sys::CUevent_flags;

/// One timed kernel.
#[derive(Clone, Debug)]
pub struct BenchRow {
    pub kernel: String,
    pub shape: String,
    /// Median of the timed batches, microseconds per call.
    pub time_us: f64,
    pub gbps: Option<f64>,
    pub tflops: Option<f64>,
    pub peak_gbps: Option<f64>,
    pub peak_tflops: Option<f64>,
}

impl BenchRow {
    /// Achieved fraction of the datasheet peak for whichever figure applies.
    pub fn fraction(&self) -> Option<f64> {
        match (self.tflops, self.peak_tflops, self.gbps, self.peak_gbps) {
            (Some(t), Some(p), _, _) => Some(t / p),
            (_, _, Some(g), Some(p)) => Some(g / p),
            _ => None,
        }
    }
}

/// Datasheet peaks (GB/s, dense bf16 TFLOP/s) by device name.
pub fn device_peaks(name: &str) -> (Option<f64>, Option<f64>) {
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

/// Markdown table of benchmark rows.
pub fn to_markdown(device: &str, rows: &[BenchRow]) -> String {
    let mut s = format!("Device: {device}\n\n| kernel | shape | time (us) | achieved | peak | % of peak |\n|---|---|---|---|---|---|\n");
    for r in rows {
        let (ach, peak) = match (r.tflops, r.gbps) {
            (Some(t), _) => (
                format!("{t:.1} TFLOP/s"),
                r.peak_tflops
                    .map_or("?".into(), |p| format!("{p:.0} TFLOP/s")),
            ),
            (_, Some(g)) => (
                format!("{g:.0} GB/s"),
                r.peak_gbps.map_or("?".into(), |p| format!("{p:.0} GB/s")),
            ),
            _ => ("-".into(), "-".into()),
        };
        let pct = r
            .fraction()
            .map_or("-".into(), |f| format!("{:.0}%", f * 100.0));
        s.push_str(&format!(
            "| {} | {} | {:.1} | {ach} | {peak} | {pct} |\n",
            r.kernel, r.shape, r.time_us
        ));
    }
    s
}

struct Bench<'a> {
    be: &'a mut CudaBackend,
    rng: u64,
    peaks: (Option<f64>, Option<f64>),
    rows: Vec<BenchRow>,
    iters: usize,
    owned: Vec<BufId>,
}

impl Bench<'_> {
    fn random_bf16(&mut self, n: usize) -> Result<BufId> {
        let buf = self.be.alloc(n * 2)?;
        self.owned.push(buf);
        // Fill in 8 MB chunks of fresh random values.
        let chunk = 4 << 20;
        let mut done = 0;
        while done < n {
            let m = chunk.min(n - done);
            let mut bytes = Vec::with_capacity(m * 2);
            for _ in 0..m {
                self.rng ^= self.rng << 13;
                self.rng ^= self.rng >> 7;
                self.rng ^= self.rng << 17;
                let v = ((self.rng >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
                bytes.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes());
            }
            self.be.write(buf, done * 2, &bytes)?;
            done += m;
        }
        Ok(buf)
    }

    /// A quantized [n, k] weight of random blocks: random quant bytes with every fp16 scale
    /// set to a small finite value (the kernels' speed does not depend on the values, and
    /// quantizing 0.5 G weights on the host would take minutes).
    fn random_quant(&mut self, dt: DType, n: usize, k: usize) -> Result<TRef> {
        let mut bytes = vec![0u8; dt.bytes_for(n * k)];
        for c in bytes.chunks_mut(8) {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            let r = self.rng.to_le_bytes();
            c.copy_from_slice(&r[..c.len()]);
        }
        let scale_at: &[usize] = match dt {
            DType::Q8_0 => &[0],
            DType::Q4K => &[0, 2],
            _ => &[208],
        };
        let half = half::f16::from_f32(1.0 / 1024.0).to_le_bytes();
        for blk in bytes.chunks_exact_mut(dt.block_bytes()) {
            for &a in scale_at {
                blk[a..a + 2].copy_from_slice(&half);
            }
        }
        let buf = self.be.load_weight(HostBytes::from_vec(bytes))?;
        self.owned.push(buf);
        Ok(TRef::new(buf, 0, dt, Shape::new(&[n, k])))
    }

    fn i32s(&mut self, v: &[i32]) -> Result<TRef> {
        let buf = self.be.alloc(v.len() * 4)?;
        self.owned.push(buf);
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.be.write(buf, 0, &bytes)?;
        Ok(TRef::new(buf, 0, DType::I32, Shape::new(&[v.len()])))
    }

    fn bf16(&mut self, dims: &[usize]) -> Result<TRef> {
        let n = dims.iter().product();
        Ok(TRef::new(
            self.random_bf16(n)?,
            0,
            DType::BF16,
            Shape::new(dims),
        ))
    }

    /// Times `op` (called with the rotation index) and records a row.
    fn time(
        &mut self,
        kernel: &str,
        shape: String,
        bytes: f64,
        flops: f64,
        mut op: impl FnMut(&mut CudaBackend, usize) -> Result<()>,
    ) -> Result<()> {
        let ctx = self.be.ctx.clone();
        let ev = |c: &std::sync::Arc<cudarc::driver::CudaContext>| {
            c.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| err(format!("event: {e}")))
        };
        for i in 0..3 {
            op(self.be, i)?;
        }
        self.be.sync()?;
        let mut samples = Vec::new();
        for _ in 0..5 {
            let (start, end) = (ev(&ctx)?, ev(&ctx)?);
            start
                .record(&self.be.stream)
                .map_err(|e| err(format!("event: {e}")))?;
            for i in 0..self.iters {
                op(self.be, i)?;
            }
            end.record(&self.be.stream)
                .map_err(|e| err(format!("event: {e}")))?;
            let ms = start
                .elapsed_ms(&end)
                .map_err(|e| err(format!("event: {e}")))?;
            samples.push(ms as f64 * 1000.0 / self.iters as f64);
        }
        samples.sort_by(|a, b| a.total_cmp(b));
        let us = samples[samples.len() / 2];
        let secs = us * 1e-6;
        self.rows.push(BenchRow {
            kernel: kernel.into(),
            shape,
            time_us: us,
            gbps: (flops == 0.0).then_some(bytes / secs / 1e9),
            tflops: (flops > 0.0).then_some(flops / secs / 1e12),
            peak_gbps: self.peaks.0,
            peak_tflops: self.peaks.1,
        });
        Ok(())
    }
}

/// Times each kernel at the model's real shapes on device `ordinal`. `filter` keeps only rows
/// whose kernel name contains it. Needs a GPU; returns a clear error otherwise.
pub fn bench_kernels(ordinal: usize, filter: Option<&str>) -> Result<(String, Vec<BenchRow>)> {
    let mut be = CudaBackend::new(ordinal)?;
    let device = be.name();
    let peaks = device_peaks(&be.info.name);
    let mut b = Bench {
        be: &mut be,
        rng: 0x9E37_79B9_7F4A_7C15,
        peaks,
        rows: Vec::new(),
        iters: 20,
        owned: Vec::new(),
    };
    let want = |k: &str| filter.is_none_or(|f| k.contains(f));
    let (hidden, inter, vocab) = (3584usize, 18944usize, 152_064usize);
    const L2_ROTATE: usize = 128 << 20;

    // ---- decode GEMV (M = 1) and prefill GEMM ----
    for (name, n, k) in [
        ("qkv", 4608, hidden),
        ("gate_up", 2 * inter, hidden),
        ("down", hidden, inter),
        ("lm_head", vocab, hidden),
    ] {
        let wbytes = n * k * 2;
        let copies = L2_ROTATE.div_ceil(wbytes).clamp(1, 8);
        if want("gemv") {
            let ws: Vec<TRef> = (0..copies)
                .map(|_| b.bf16(&[n, k]))
                .collect::<Result<_>>()?;
            let x = b.bf16(&[1, k])?;
            let out = b.bf16(&[1, n])?;
            b.time(
                "gemv_bf16_v16",
                format!("{name} M=1 N={n} K={k}"),
                (wbytes + 2 * k + 2 * n) as f64,
                0.0,
                |be, i| be.matmul(x, ws[i % ws.len()], None, out),
            )?;
        }
        if want("gemm") && name != "lm_head" {
            let m = 4096;
            let w = b.bf16(&[n, k])?;
            let x = b.bf16(&[m, k])?;
            let out = b.bf16(&[m, n])?;
            b.time(
                "gemm_bf16_mma",
                format!("{name} M={m} N={n} K={k}"),
                0.0,
                2.0 * (m * n * k) as f64,
                |be, _| be.matmul(x, w, None, out),
            )?;
        }
    }

    // ---- quantized weights: decode GEMV (M = 1) as GB/s of weight bytes read, prefill GEMM
    // (M = 4096) as TFLOP/s. Decode targets (H100): q8_0 >= 400 tokens/s and q4_k_m >= 650
    // tokens/s end to end, i.e. the GEMV near HBM bandwidth (>= 80% of peak). ----
    for (dt, tag) in [
        (DType::Q8_0, "q8_0"),
        (DType::Q4K, "q4_k"),
        (DType::Q6K, "q6_k"),
    ] {
        for (name, n, k) in [
            ("o_proj", hidden, hidden),
            ("up", inter, hidden),
            ("down", hidden, inter),
            ("lm_head", vocab, hidden),
        ] {
            let wbytes = dt.bytes_for(n * k);
            let kern = format!("qgemv_{tag}");
            if want(&kern) {
                let copies = L2_ROTATE.div_ceil(wbytes).clamp(1, 8);
                let ws: Vec<TRef> = (0..copies)
                    .map(|_| b.random_quant(dt, n, k))
                    .collect::<Result<_>>()?;
                let x = b.bf16(&[1, k])?;
                let out = b.bf16(&[1, n])?;
                b.time(
                    &kern,
                    format!("{name} M=1 N={n} K={k} ({:.1} MB)", wbytes as f64 / 1e6),
                    wbytes as f64,
                    0.0,
                    |be, i| be.matmul(x, ws[i % ws.len()], None, out),
                )?;
                for w in ws {
                    b.be.free(w.buf);
                }
            }
            let kern = format!("qgemm_{tag}");
            if want(&kern) && name != "lm_head" {
                let m = 4096;
                let w = b.random_quant(dt, n, k)?;
                let x = b.bf16(&[m, k])?;
                let out = b.bf16(&[m, n])?;
                b.time(
                    &kern,
                    format!("{name} M={m} N={n} K={k}"),
                    0.0,
                    2.0 * (m * n * k) as f64,
                    |be, _| be.matmul(x, w, None, out),
                )?;
            }
        }
    }

    // ---- memory-bound elementwise at prefill size ----
    let t = 4096;
    if want("rms_norm") {
        let (x, w, out) = (
            b.bf16(&[t, hidden])?,
            b.bf16(&[hidden])?,
            b.bf16(&[t, hidden])?,
        );
        b.time(
            "rms_norm",
            format!("{t}x{hidden}"),
            (4 * t * hidden) as f64,
            0.0,
            |be, _| be.rms_norm(x, w, out, 1e-6),
        )?;
    }
    if want("add") {
        let (a, c, out) = (
            b.bf16(&[t, hidden])?,
            b.bf16(&[t, hidden])?,
            b.bf16(&[t, hidden])?,
        );
        b.time(
            "add",
            format!("{t}x{hidden}"),
            (6 * t * hidden) as f64,
            0.0,
            |be, _| be.add(a, c, out),
        )?;
    }
    if want("swiglu") {
        let (g, u, out) = (
            b.bf16(&[t, inter])?,
            b.bf16(&[t, inter])?,
            b.bf16(&[t, inter])?,
        );
        b.time(
            "swiglu",
            format!("{t}x{inter}"),
            (6 * t * inter) as f64,
            0.0,
            |be, _| be.swiglu(g, u, out),
        )?;
    }
    if want("rope_mrope") {
        let (x, out) = (b.bf16(&[t, 28, 128])?, b.bf16(&[t, 28, 128])?);
        let pos: Vec<i32> = (0..3).flat_map(|_| 0..t as i32).collect();
        let p = b.i32s(&pos)?;
        let p = TRef::new(p.buf, 0, DType::I32, Shape::new(&[3, t]));
        let mp = MropeParams {
            theta: 1e6,
            sections: [16, 24, 24],
        };
        b.time(
            "rope_mrope",
            format!("T={t} H=28 d=128"),
            (4 * t * 28 * 128) as f64,
            0.0,
            |be, _| be.rope_mrope(x, p, out, mp),
        )?;
    }
    if want("argmax") {
        let x = b.bf16(&[1, vocab])?;
        let o = b.i32s(&[0])?;
        b.time(
            "argmax",
            format!("1x{vocab}"),
            (2 * vocab) as f64,
            0.0,
            |be, _| be.argmax(x, o),
        )?;
    }

    // ---- attention ----
    let (hq, hkv, d, ps) = (28usize, 4usize, 128usize, 16usize);
    // Decode at 4k and 16k context; prefill of the Video-R1 input (T = 4250 tokens, all of them
    // in the cache: a ragged last page and T * 7 rows not a multiple of the 64-row tile).
    for kv_len in [4096usize, 16384, 4250] {
        if !(want("attention_paged_decode") || want("attention_paged_prefill")) {
            break;
        }
        let npages = kv_len.div_ceil(ps);
        let layout0 = KvLayout {
            buf: BufId(0),
            dtype: DType::BF16,
            n_layers: 1,
            n_pages: npages,
            page_size: ps,
            n_kv_heads: hkv,
            head_dim: d,
        };
        let pool = b.random_bf16(layout0.total_bytes() / 2)?;
        let layout = KvLayout {
            buf: pool,
            ..layout0
        };
        let pages: Vec<i32> = (0..npages as i32).rev().collect();
        let kv = PagedKv {
            layout,
            qo_indptr: b.i32s(&[0, 1])?,
            indptr: b.i32s(&[0, npages as i32])?,
            indices: b.i32s(&pages)?,
            last_page_len: b.i32s(&[(kv_len - (npages - 1) * ps) as i32])?,
        };
        let scale = 1.0 / (d as f32).sqrt();
        if want("attention_paged_decode") && kv_len != 4250 {
            let (q, out) = (b.bf16(&[1, hq, d])?, b.bf16(&[1, hq, d])?);
            let bytes = (kv_len * 2 * hkv * d * 2) as f64;
            b.time(
                "attention_paged_decode+merge",
                format!("kv_len={kv_len} Hq=28 Hkv=4 d=128"),
                bytes,
                0.0,
                |be, _| be.attention_paged(q, &kv, 0, out, scale),
            )?;
        }
        if want("attention_paged_prefill") && kv_len == 4250 {
            let t = kv_len;
            let kv = PagedKv {
                qo_indptr: b.i32s(&[0, t as i32])?,
                ..kv
            };
            let (q, out) = (b.bf16(&[t, hq, d])?, b.bf16(&[t, hq, d])?);
            // Useful causal work: QK^T and PV over the t (t + 1) / 2 visible pairs per head
            // (the kernel's second P V mma for the low half of P is not counted).
            let flops = 4.0 * (t * (t + 1) / 2) as f64 * (d * hq) as f64;
            b.time(
                "attention_paged_prefill",
                format!("T={t} over {kv_len} cached, causal Hq=28 Hkv=4 d=128 page=16"),
                0.0,
                flops,
                |be, _| be.attention_paged(q, &kv, 0, out, scale),
            )?;
        }
    }
    if want("attention_paged_decode") {
        // Batched decode: 64 sequences of 4096 cached tokens each on pages of their own, one
        // query row per sequence, in one launch (+ merge).
        let (bsz, kv_len) = (64usize, 4096usize);
        let per = kv_len.div_ceil(ps);
        let layout0 = KvLayout {
            buf: BufId(0),
            dtype: DType::BF16,
            n_layers: 1,
            n_pages: bsz * per,
            page_size: ps,
            n_kv_heads: hkv,
            head_dim: d,
        };
        let pool = b.random_bf16(layout0.total_bytes() / 2)?;
        let layout = KvLayout {
            buf: pool,
            ..layout0
        };
        let seq = |v: usize| (0..=bsz).map(move |i| (i * v) as i32).collect::<Vec<i32>>();
        let pages: Vec<i32> = (0..(bsz * per) as i32).rev().collect();
        let kv = PagedKv {
            layout,
            qo_indptr: b.i32s(&seq(1))?,
            indptr: b.i32s(&seq(per))?,
            indices: b.i32s(&pages)?,
            last_page_len: b.i32s(&vec![(kv_len - (per - 1) * ps) as i32; bsz])?,
        };
        let (q, out) = (b.bf16(&[bsz, hq, d])?, b.bf16(&[bsz, hq, d])?);
        let bytes = (bsz * kv_len * 2 * hkv * d * 2) as f64;
        let scale = 1.0 / (d as f32).sqrt();
        b.time(
            "attention_paged_decode+merge",
            format!("batch {bsz} x kv_len={kv_len} Hq=28 Hkv=4 d=128"),
            bytes,
            0.0,
            |be, _| be.attention_paged(q, &kv, 0, out, scale),
        )?;
    }
    if want("attention_varlen") {
        // ViT attention over 16,384 patches: 64-patch windows (28 of 32 blocks), full-attention
        // slices of 2,048 patches (a video's frame pairs) and one slice of 16,384 (an image).
        let (n, h, dv) = (16384usize, 16usize, 80usize);
        let qkv = b.bf16(&[n, 3 * h * dv])?;
        let view = |i: usize| TRef {
            offset: i * h * dv * 2,
            shape: Shape::new(&[n, h, dv]),
            row_stride: 3 * h * dv,
            ..qkv
        };
        let out = b.bf16(&[n, h, dv])?;
        for (seg, what) in [
            (64usize, "windows of 64"),
            (2048, "full slices of 2048"),
            (16384, "one full slice"),
        ] {
            let cu: Vec<i32> = (0..=(n / seg) as i32).map(|s| s * seg as i32).collect();
            let cu = b.i32s(&cu)?;
            let flops = 4.0 * (n * seg * dv * h) as f64;
            b.time(
                "attention_varlen",
                format!("N={n} {what}, H=16 d=80"),
                0.0,
                flops,
                |be, _| {
                    be.attention_varlen(
                        view(0),
                        view(1),
                        view(2),
                        cu,
                        out,
                        1.0 / (dv as f32).sqrt(),
                    )
                },
            )?;
        }
    }

    let rows = std::mem::take(&mut b.rows);
    for id in std::mem::take(&mut b.owned) {
        b.be.free(id);
    }
    Ok((device, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_by_name() {
        assert_eq!(
            device_peaks("NVIDIA H100 80GB HBM3"),
            (Some(3350.0), Some(989.0))
        );
        assert_eq!(device_peaks("NVIDIA H200"), (Some(4800.0), Some(989.0)));
        assert_eq!(
            device_peaks("NVIDIA H100 PCIe"),
            (Some(2000.0), Some(756.0))
        );
        assert_eq!(device_peaks("GeForce"), (None, None));
        let r = BenchRow {
            kernel: "k".into(),
            shape: "s".into(),
            time_us: 1.0,
            gbps: Some(1675.0),
            tflops: None,
            peak_gbps: Some(3350.0),
            peak_tflops: Some(989.0),
        };
        assert_eq!(r.fraction(), Some(0.5));
        assert!(to_markdown("dev", &[r]).contains("| k | s | 1.0 | 1675 GB/s | 3350 GB/s | 50% |"));
    }

    /// Prints the kernel benchmark table (GPU only): run by scripts/gpu-check.sh with
    /// `cargo test --release --lib backend::cuda::bench -- --ignored --nocapture`.
    #[test]
    #[ignore = "needs a GPU; scripts/gpu-check.sh runs it"]
    fn bench_table() {
        let filter = std::env::var("REEL_BENCH_FILTER").ok();
        match bench_kernels(0, filter.as_deref()) {
            Ok((device, rows)) => println!("{}", to_markdown(&device, &rows)),
            Err(e) => panic!("bench: {e}"),
        }
    }
}
