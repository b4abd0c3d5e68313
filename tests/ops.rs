//! The op harness: every Backend op × a sweep of shapes (small, awkward, and real Qwen2.5-VL-7B
//! shapes) × activation dtypes {f32, bf16} × every available backend, compared with the scalar
//! reference in `reel::backend::cpu::reference` under a per-op error bound.
//!
//! Error metric: `max_i |got_i − want_i| / max(|want_i|, 1e-3 · max_j |want_j|)`, i.e. relative
//! error with a floor so that values from cancellation do not dominate. Bounds: exact ops
//! (copies, casts, kv_append, argmax) 0; f32 elementwise 2e-6; f32 reductions (matmul,
//! attention: f32 sums in another order, f32 exp) 1e-3, i.e. at most 1e-6 of the largest output
//! near zero; bf16 single-rounding ops 2^-7 (one bf16 ulp, relative); bf16 ops with chained
//! roundings or f32 accumulation 2^-6 (two ulps). Outputs that are column blocks of wider
//! buffers must leave the other columns untouched.
//!
//! Quantized weights (Q8_0, Q4_K, Q6_K): the reference is the dequantized weight
//! (`quant::dequantize_row`) times x in f64. Bound 3e-2 of the largest output (the floor is the
//! whole max|want|), for both activation types: a backend may quantize activations to int8
//! blocks as llama.cpp does (≈0.4% of the output's rms per element, a few times that at the
//! tails), and the CUDA GEMM rounds dequantized weights to bf16 for the tensor cores. An index
//! bug gives O(1) errors. The CUDA kernels are exact dequant + f32 sums; src/backend/cuda/tests.rs
//! checks them against tighter bounds on a GPU.

use reel::backend::cpu::{reference as rf, CpuBackend};
use reel::backend::{sample, Backend, HostBytes, KvLayout, MropeParams, PagedKv, SampleArgs, TRef};
use reel::{DType, Shape};

// ---------------------------------------------------------------------------------------------
// Host-side helpers

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [-scale, scale).
    fn f(&mut self, scale: f32) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
    }
    fn vals(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f(scale)).collect()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn to_bytes(v: &[f32], dt: DType) -> Vec<u8> {
    let mut b = Vec::with_capacity(v.len() * 4);
    for &x in v {
        match dt {
            DType::F32 => b.extend_from_slice(&x.to_le_bytes()),
            DType::BF16 => b.extend_from_slice(&half::bf16::from_f32(x).to_le_bytes()),
            DType::F16 => b.extend_from_slice(&half::f16::from_f32(x).to_le_bytes()),
            _ => unreachable!(),
        }
    }
    b
}

fn from_bytes(b: &[u8], dt: DType) -> Vec<f32> {
    match dt {
        DType::F32 => b
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        DType::BF16 => b
            .chunks(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::F16 => b
            .chunks(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => unreachable!(),
    }
}

// Exactly representable in f32, bf16 and f16.
const SENTINEL: f32 = 12288.0;

/// A tensor placed in a backend. `pad` extra elements per row make it a column block of a wider
/// buffer (row_stride = row_len + pad); the padding holds SENTINEL.
fn place(vals: &[f32], dt: DType, dims: &[usize], pad: usize) -> (Vec<u8>, TRef) {
    let shape = Shape::new(dims);
    let (rows, len) = (shape.rows(), shape.row_len());
    assert_eq!(vals.len(), rows * len);
    let stride = len + pad;
    let mut all = vec![SENTINEL; rows * stride];
    for r in 0..rows {
        all[r * stride..r * stride + len].copy_from_slice(&vals[r * len..(r + 1) * len]);
    }
    let t = TRef {
        buf: reel::backend::BufId(0),
        offset: 0,
        dtype: dt,
        shape,
        row_stride: stride,
    };
    (to_bytes(&all, dt), t)
}

fn put(
    be: &mut dyn Backend,
    vals: &[f32],
    dt: DType,
    dims: &[usize],
    pad: usize,
) -> reel::Result<TRef> {
    let (bytes, mut t) = place(vals, dt, dims, pad);
    t.buf = be.alloc(bytes.len())?;
    be.write(t.buf, 0, &bytes)?;
    Ok(t)
}

/// A weight: handed over as host bytes, the way checkpoints reach backends.
fn put_weight(
    be: &mut dyn Backend,
    vals: &[f32],
    dt: DType,
    dims: &[usize],
    pad: usize,
) -> reel::Result<TRef> {
    let (bytes, mut t) = place(vals, dt, dims, pad);
    t.buf = be.load_weight(HostBytes::from_vec(bytes))?;
    Ok(t)
}

fn put_i32(be: &mut dyn Backend, vals: &[i32], dims: &[usize]) -> reel::Result<TRef> {
    let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    let buf = be.alloc(bytes.len().max(4))?;
    be.write(buf, 0, &bytes)?;
    Ok(TRef::new(buf, 0, DType::I32, Shape::new(dims)))
}

/// An output tensor pre-filled with SENTINEL (padding included).
fn out(be: &mut dyn Backend, dt: DType, dims: &[usize], pad: usize) -> reel::Result<TRef> {
    let n = Shape::new(dims).numel();
    put(be, &vec![SENTINEL; n], dt, dims, pad)
}

/// Reads a tensor's rows back; NaN everywhere if the op wrote into the padding.
fn get(be: &mut dyn Backend, t: &TRef) -> reel::Result<Vec<f32>> {
    let (rows, len, stride) = (t.shape.rows(), t.shape.row_len(), t.row_stride);
    let mut bytes = vec![0u8; t.dtype.bytes_for(rows * stride)];
    be.read(t.buf, t.offset, &mut bytes)?;
    let all = from_bytes(&bytes, t.dtype);
    let mut v = Vec::with_capacity(rows * len);
    let mut clobbered = false;
    for r in 0..rows {
        v.extend_from_slice(&all[r * stride..r * stride + len]);
        clobbered |= all[r * stride + len..(r + 1) * stride]
            .iter()
            .any(|&x| x != SENTINEL);
    }
    if clobbered {
        v.iter_mut().for_each(|x| *x = f32::NAN);
    }
    Ok(v)
}

/// A quantized weight [n, k]: `vals` quantized row by row (`quant::quantize_row`), handed over
/// as host bytes. Returns the tensor and the dequantized values (the reference's weight).
fn put_qweight(
    be: &mut dyn Backend,
    vals: &[f32],
    dt: DType,
    n: usize,
    k: usize,
) -> reel::Result<(TRef, Vec<f32>)> {
    let rb = reel::quant::row_bytes(dt, k)?;
    let mut bytes = vec![0u8; rb * n];
    let mut deq = vec![0f32; n * k];
    for ((src, dst), back) in vals
        .chunks_exact(k)
        .zip(bytes.chunks_exact_mut(rb))
        .zip(deq.chunks_exact_mut(k))
    {
        reel::quant::quantize_row(dt, src, dst)?;
        reel::quant::dequantize_row(dt, dst, back)?;
    }
    let buf = be.load_weight(HostBytes::from_vec(bytes))?;
    Ok((TRef::new(buf, 0, dt, Shape::new(&[n, k])), deq))
}

fn get_i32(be: &mut dyn Backend, t: &TRef) -> reel::Result<Vec<i32>> {
    let mut bytes = vec![0u8; t.shape.numel() * 4];
    be.read(t.buf, t.offset, &mut bytes)?;
    Ok(bytes
        .chunks(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect())
}

fn rounded(v: Vec<f32>, dt: DType) -> Vec<f32> {
    rf::round_all(&v, dt)
}

/// The error metric described at the top; `floor` is the fraction of max|want| below which
/// errors count as absolute.
fn err(got: &[f32], want: &[f32], floor: f64) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let floor = floor * want.iter().fold(0f64, |m, &w| m.max(w.abs() as f64));
    let mut e = 0f64;
    for (&g, &w) in got.iter().zip(want) {
        if g.is_nan() != w.is_nan() {
            return f64::INFINITY;
        }
        if g.is_nan() {
            continue;
        }
        let d = (g as f64 - w as f64).abs() / (w.abs() as f64).max(floor).max(1e-30);
        e = e.max(d);
    }
    e
}

// ---------------------------------------------------------------------------------------------
// The table

#[derive(Clone, Copy)]
enum Bound {
    Exact,
    /// One rounding of an f32 result (f32: tight, bf16: one ulp).
    Elementwise,
    /// Chained roundings or long f32 sums.
    Reduction,
    /// Quantized weights: error relative to the largest output (see the top).
    Quantized,
}

impl Bound {
    fn value(self, dt: DType) -> f64 {
        match (self, dt) {
            (Bound::Exact, _) => 0.0,
            (Bound::Quantized, _) => 3e-2,
            (Bound::Elementwise, DType::F32) => 2e-6,
            (Bound::Reduction, DType::F32) => 1e-3,
            (Bound::Elementwise, _) => 1.0 / 128.0,
            (Bound::Reduction, _) => 1.0 / 64.0,
        }
    }

    /// The metric's floor, as a fraction of max|want|.
    fn floor(self) -> f64 {
        match self {
            Bound::Quantized => 1.0,
            _ => 1e-3,
        }
    }
}

type Run = Box<dyn Fn(&mut dyn Backend, DType, &mut Rng) -> reel::Result<(Vec<f32>, Vec<f32>)>>;

struct Case {
    op: &'static str,
    shape: String,
    bound: Bound,
    run: Run,
}

fn case(op: &'static str, shape: impl Into<String>, bound: Bound, run: Run) -> Case {
    Case {
        op,
        shape: shape.into(),
        bound,
        run,
    }
}

fn cases() -> Vec<Case> {
    let mut c = Vec::new();

    // embedding: table dtype × shapes.
    for (v, d, ids, tdt) in [
        (37usize, 19usize, vec![0, 36, 5, 5, 17], DType::BF16),
        (37, 19, vec![3], DType::F16),
        (64, 3584, vec![63, 0, 7], DType::BF16),
        (10, 33, vec![9, 1], DType::F32),
    ] {
        c.push(case(
            "embedding",
            format!("[{v},{d}] {tdt} ids {}", ids.len()),
            Bound::Exact,
            Box::new(move |be, dt, r| {
                let tab = rounded(r.vals(v * d, 2.0), tdt);
                let tt = put_weight(be, &tab, tdt, &[v, d], 0)?;
                let it = put_i32(be, &ids, &[ids.len()])?;
                let o = out(be, dt, &[ids.len(), d], 0)?;
                be.embedding(tt, it, o)?;
                Ok((get(be, &o)?, rf::embedding(&tab, d, &ids, dt)))
            }),
        ));
    }

    // rms_norm: rows × D, with strided in/out and a per-head (rank-3) form.
    for (dims, xpad, opad, wdt) in [
        (vec![1usize, 3584usize], 0usize, 0usize, DType::BF16),
        (vec![7, 19], 3, 5, DType::BF16),
        (vec![5, 4, 33], 0, 2, DType::F32),
        (vec![3, 3584], 8, 0, DType::F32),
    ] {
        let dd = dims.clone();
        c.push(case(
            "rms_norm",
            format!("{dims:?} pad {xpad}/{opad} w {wdt}"),
            Bound::Elementwise,
            Box::new(move |be, dt, r| {
                let d = *dd.last().unwrap();
                let n: usize = dd.iter().product();
                let x = rounded(r.vals(n, 3.0), dt);
                let w = rounded((0..d).map(|_| 1.0 + r.f(0.5)).collect(), wdt);
                let xt = put(be, &x, dt, &dd, xpad)?;
                let wt = put_weight(be, &w, wdt, &[d], 0)?;
                let o = out(be, dt, &dd, opad)?;
                be.rms_norm(xt, wt, o, 1e-6)?;
                let w_act = rounded(w.clone(), dt);
                Ok((get(be, &o)?, rf::rms_norm(&x, d, &w_act, 1e-6, dt)))
            }),
        ));
    }

    // matmul: (M, N, K, weight dtype, bias, x pad, out pad).
    for (m, n, k, wdt, bias, xpad, opad) in [
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
    ] {
        c.push(case(
            "matmul",
            format!(
                "{m}x{k} @ {n}x{k} {wdt}{}{}",
                if bias { " +bias" } else { "" },
                if xpad + opad > 0 { " strided" } else { "" }
            ),
            Bound::Reduction,
            Box::new(move |be, dt, r| {
                let x = rounded(r.vals(m * k, 1.0), dt);
                let w = rounded(r.vals(n * k, 0.05), wdt);
                let b = rounded(r.vals(n, 0.5), wdt);
                let xt = put(be, &x, dt, &[m, k], xpad)?;
                let wt = put_weight(be, &w, wdt, &[n, k], 0)?;
                let bt = if bias {
                    Some(put_weight(be, &b, wdt, &[n], 0)?)
                } else {
                    None
                };
                let o = out(be, dt, &[m, n], opad)?;
                be.matmul(xt, wt, bt, o)?;
                Ok((
                    get(be, &o)?,
                    rf::matmul(&x, m, k, &w, n, bias.then_some(&b[..]), dt),
                ))
            }),
        ));
    }

    // matmul with quantized weights: (type, M, N, K, bias, x pad, out pad). M = 1 and 3 take
    // the CUDA GEMV, M = 70 the tensor-core GEMM (bf16 x) or the sliced GEMV (f32 x); N = 37
    // and 133 are not multiples of the GEMV's 8 columns per block or the GEMM's 128-wide tile;
    // Q8_0 K = 96 ends in a partial 256-weight unit.
    for (wdt, m, n, k, bias, xpad, opad) in [
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
    ] {
        c.push(case(
            "matmul",
            format!(
                "{m}x{k} @ {n}x{k} {wdt}{}{}",
                if bias { " +bias" } else { "" },
                if xpad + opad > 0 { " strided" } else { "" }
            ),
            Bound::Quantized,
            Box::new(move |be, dt, r| {
                let x = rounded(r.vals(m * k, 1.0), dt);
                let w = r.vals(n * k, 0.05);
                let b = rounded(r.vals(n, 0.5), DType::BF16);
                let xt = put(be, &x, dt, &[m, k], xpad)?;
                let (wt, wq) = put_qweight(be, &w, wdt, n, k)?;
                let bt = if bias {
                    Some(put_weight(be, &b, DType::BF16, &[n], 0)?)
                } else {
                    None
                };
                let o = out(be, dt, &[m, n], opad)?;
                be.matmul(xt, wt, bt, o)?;
                Ok((
                    get(be, &o)?,
                    rf::matmul(&x, m, k, &wq, n, bias.then_some(&b[..]), dt),
                ))
            }),
        ));
    }

    // embedding from a quantized table: the dequantized row, rounded once.
    for (v, d, ids, tdt) in [
        (40usize, 96usize, vec![39, 0, 7, 7], DType::Q8_0),
        (9, 512, vec![8, 2], DType::Q4K),
        (5, 256, vec![4, 0, 1], DType::Q6K),
    ] {
        c.push(case(
            "embedding",
            format!("[{v},{d}] {tdt} ids {}", ids.len()),
            Bound::Exact,
            Box::new(move |be, dt, r| {
                let tab = r.vals(v * d, 2.0);
                let (tt, tq) = put_qweight(be, &tab, tdt, v, d)?;
                let it = put_i32(be, &ids, &[ids.len()])?;
                let o = out(be, dt, &[ids.len(), d], 0)?;
                be.embedding(tt, it, o)?;
                Ok((get(be, &o)?, rf::embedding(&tq, d, &ids, dt)))
            }),
        ));
    }

    // add / swiglu / gelu: same-shape elementwise ops.
    for (dims, pad) in [
        (vec![7usize, 300usize], 0usize),
        (vec![1, 3584], 0),
        (vec![3, 5, 7], 4),
    ] {
        let dd = dims.clone();
        c.push(case(
            "add",
            format!("{dims:?} pad {pad}"),
            Bound::Elementwise,
            Box::new(move |be, dt, r| {
                let n: usize = dd.iter().product();
                let (a, b) = (rounded(r.vals(n, 4.0), dt), rounded(r.vals(n, 4.0), dt));
                let (at, bt) = (put(be, &a, dt, &dd, pad)?, put(be, &b, dt, &dd, 0)?);
                let o = out(be, dt, &dd, pad)?;
                be.add(at, bt, o)?;
                Ok((get(be, &o)?, rf::add(&a, &b, dt)))
            }),
        ));
    }
    for (dims, pad) in [
        (vec![3usize, 37usize], 0usize),
        (vec![2, 18944], 0),
        (vec![5, 100], 28),
    ] {
        let dd = dims.clone();
        c.push(case(
            "swiglu",
            format!("{dims:?} pad {pad}"),
            Bound::Elementwise,
            Box::new(move |be, dt, r| {
                let n: usize = dd.iter().product();
                let (g, u) = (rounded(r.vals(n, 8.0), dt), rounded(r.vals(n, 3.0), dt));
                let (gt, ut) = (put(be, &g, dt, &dd, pad)?, put(be, &u, dt, &dd, pad)?);
                let o = out(be, dt, &dd, 0)?;
                be.swiglu(gt, ut, o)?;
                Ok((get(be, &o)?, rf::swiglu(&g, &u, dt)))
            }),
        ));
    }
    for (dims, pad) in [
        (vec![5usize, 333usize], 0usize),
        (vec![4, 5120], 0),
        (vec![2, 3, 11], 5),
    ] {
        let dd = dims.clone();
        c.push(case(
            "gelu",
            format!("{dims:?} pad {pad}"),
            Bound::Elementwise,
            Box::new(move |be, dt, r| {
                let n: usize = dd.iter().product();
                let x = rounded(r.vals(n, 7.0), dt);
                let xt = put(be, &x, dt, &dd, pad)?;
                let o = out(be, dt, &dd, pad)?;
                be.gelu(xt, o)?;
                Ok((get(be, &o)?, rf::gelu(&x, dt)))
            }),
        ));
    }

    // cast: the activation dtype is the source; targets f32, bf16, f16.
    for to in [DType::F32, DType::BF16, DType::F16] {
        c.push(case(
            "cast",
            format!("[9,70] -> {to}"),
            Bound::Exact,
            Box::new(move |be, dt, r| {
                let x = rounded(r.vals(9 * 70, 30.0), dt);
                let xt = put(be, &x, dt, &[9, 70], 2)?;
                let o = out(be, to, &[9, 70], 0)?;
                be.cast(xt, o)?;
                Ok((get(be, &o)?, rf::round_all(&x, to)))
            }),
        ));
    }

    // M-RoPE: (T, H, d, sections, base position, x pad).
    for (t, h, d, sec, p0, pad) in [
        (5usize, 3usize, 16usize, [2usize, 3, 3], 0i32, 0usize),
        (7, 28, 128, [16, 24, 24], 10_000, 0),
        (1, 28, 128, [16, 24, 24], 123_456, 0),
        (9, 4, 128, [16, 24, 24], 20_000, 1024),
        (3, 2, 12, [0, 3, 3], 5, 0),
    ] {
        c.push(case(
            "rope_mrope",
            format!("[{t},{h},{d}] {sec:?} pos>={p0}"),
            Bound::Elementwise,
            Box::new(move |be, dt, r| {
                let x = rounded(r.vals(t * h * d, 2.0), dt);
                // Distinct t/h/w rows, as for vision tokens.
                let pos: Vec<i32> = (0..3 * t)
                    .map(|i| p0 + (i % t) as i32 * 3 + (i / t) as i32 * 7 + r.below(50) as i32)
                    .collect();
                let xt = put(be, &x, dt, &[t, h, d], pad)?;
                let pt = put_i32(be, &pos, &[3, t])?;
                let o = out(be, dt, &[t, h, d], 0)?;
                be.rope_mrope(
                    xt,
                    pt,
                    o,
                    MropeParams {
                        theta: 1e6,
                        sections: sec,
                    },
                )?;
                Ok((
                    get(be, &o)?,
                    rf::rope_mrope(&x, t, h, d, &pos, 1e6, sec, dt),
                ))
            }),
        ));
    }

    // Vision RoPE: (N, H, d, x pad).
    for (n, h, d, pad) in [
        (13usize, 16usize, 80usize, 0usize),
        (6, 2, 8, 0),
        (64, 16, 80, 2560),
    ] {
        c.push(case(
            "rope_vision",
            format!("[{n},{h},{d}]"),
            Bound::Elementwise,
            Box::new(move |be, dt, r| {
                let x = rounded(r.vals(n * h * d, 2.0), dt);
                let pos: Vec<i32> = (0..2 * n).map(|_| r.below(120) as i32).collect();
                let xt = put(be, &x, dt, &[n, h, d], pad)?;
                let pt = put_i32(be, &pos, &[n, 2])?;
                let o = out(be, dt, &[n, h, d], 0)?;
                be.rope_vision(xt, pt, o, 1e4)?;
                Ok((get(be, &o)?, rf::rope_vision(&x, n, h, d, &pos, 1e4, dt)))
            }),
        ));
    }

    // kv_append and attention_paged: (T, Hq, Hkv, d, page, kv_len).
    for (t, hq, hkv, d, ps, kv_len) in [
        (1usize, 4usize, 2usize, 8usize, 4usize, 1usize),
        (3, 4, 1, 16, 4, 11),
        (1, 28, 4, 128, 16, 300),
        (5, 28, 4, 128, 16, 77),
        (17, 6, 2, 20, 3, 40),
        (16, 7, 1, 24, 16, 16),
        // Tensor-core prefill shapes (bf16 on CUDA): T * 7 rows not a multiple of the 64-row
        // tile, a prefill chunk after a cached prefix, the smallest prefill over many pages.
        (77, 28, 4, 128, 16, 377),
        (300, 28, 4, 128, 16, 612),
        (2, 28, 4, 128, 16, 1000),
    ] {
        let shape = format!("q[{t},{hq},{d}] kv{hkv} page{ps} len{kv_len}");
        c.push(case(
            "kv_append",
            shape.clone(),
            Bound::Exact,
            Box::new(move |be, dt, r| {
                let pg = Paged::new(be, dt, r, hkv, d, ps, kv_len, t)?;
                let (k, v) = (
                    rounded(r.vals(t * hkv * d, 2.0), dt),
                    rounded(r.vals(t * hkv * d, 2.0), dt),
                );
                let kt = put(be, &k, dt, &[t, hkv, d], 3)?;
                let vt = put(be, &v, dt, &[t, hkv, d], 0)?;
                be.kv_append(kt, vt, &pg.kv, 1)?;
                let mut want = pg.pool.clone();
                for i in 0..t {
                    let p = kv_len - t + i;
                    for (which, src) in [(0, &k), (1, &v)] {
                        let e = pg
                            .kv
                            .layout
                            .elem_index(1, which, pg.pages[p / ps], p % ps, 0);
                        want[e..e + hkv * d].copy_from_slice(&src[i * hkv * d..(i + 1) * hkv * d]);
                    }
                }
                let mut bytes = vec![0u8; pg.kv.layout.total_bytes()];
                be.read(pg.kv.layout.buf, 0, &mut bytes)?;
                Ok((from_bytes(&bytes, dt), want))
            }),
        ));
        c.push(case(
            "attention_paged",
            shape,
            Bound::Reduction,
            Box::new(move |be, dt, r| {
                let pg = Paged::new(be, dt, r, hkv, d, ps, kv_len, t)?;
                let q = rounded(r.vals(t * hq * d, 2.0), dt);
                let qt = put(be, &q, dt, &[t, hq, d], 5)?;
                let o = out(be, dt, &[t, hq, d], 0)?;
                let scale = 1.0 / (d as f32).sqrt();
                be.attention_paged(qt, &pg.kv, 1, o, scale)?;
                let (keys, vals) = pg.dense(1);
                Ok((
                    get(be, &o)?,
                    rf::attention_causal(&q, t, hq, &keys, &vals, kv_len, hkv, d, scale, dt),
                ))
            }),
        ));
    }

    // attention_varlen: q, k, v as column blocks of one packed [N, 3, H, d] buffer.
    for (h, d, segs) in [
        (16usize, 80usize, vec![64usize, 48, 16, 13]),
        // Windows, a short segment and a full-attention slice of several key tiles with a
        // ragged tail (300 = 4 x 64 + 44; longer slices make the f64 reference slow).
        (16, 80, vec![64, 64, 22, 300]),
        (2, 8, vec![3, 0, 7]),
        (3, 20, vec![1, 40]),
    ] {
        c.push(case(
            "attention_varlen",
            format!("[{},{h},{d}] segs {segs:?}", segs.iter().sum::<usize>()),
            Bound::Reduction,
            Box::new(move |be, dt, r| {
                let n: usize = segs.iter().sum();
                let mut cu = vec![0i32];
                for s in &segs {
                    cu.push(cu.last().unwrap() + *s as i32);
                }
                let qkv = rounded(r.vals(n * 3 * h * d, 2.0), dt);
                let packed = put(be, &qkv, dt, &[n, 3 * h * d], 0)?;
                let part = |i: usize| TRef {
                    offset: dt.bytes_for(i * h * d),
                    shape: Shape::new(&[n, h, d]),
                    ..packed
                };
                let pick = |i: usize| -> Vec<f32> {
                    (0..n)
                        .flat_map(|row| {
                            qkv[row * 3 * h * d + i * h * d..row * 3 * h * d + (i + 1) * h * d]
                                .to_vec()
                        })
                        .collect()
                };
                let ct = put_i32(be, &cu, &[cu.len()])?;
                let o = out(be, dt, &[n, h, d], 0)?;
                let scale = 1.0 / (d as f32).sqrt();
                be.attention_varlen(part(0), part(1), part(2), ct, o, scale)?;
                Ok((
                    get(be, &o)?,
                    rf::attention_varlen(&pick(0), &pick(1), &pick(2), h, d, &cu, scale, dt),
                ))
            }),
        ));
    }

    // gather_rows / scatter_rows.
    c.push(case(
        "gather_rows",
        "[10,7] idx [3,3,0,9]",
        Bound::Exact,
        Box::new(|be, dt, r| {
            let x = rounded(r.vals(70, 5.0), dt);
            let idx = vec![3, 3, 0, 9];
            let xt = put(be, &x, dt, &[10, 7], 1)?;
            let it = put_i32(be, &idx, &[4])?;
            let o = out(be, dt, &[4, 7], 2)?;
            be.gather_rows(xt, it, o)?;
            Ok((get(be, &o)?, rf::gather_rows(&x, 7, &idx)))
        }),
    ));
    c.push(case(
        "scatter_rows",
        "[4,3584] -> [9,3584]",
        Bound::Exact,
        Box::new(|be, dt, r| {
            let src = rounded(r.vals(4 * 3584, 5.0), dt);
            let mut dst = rounded(r.vals(9 * 3584, 5.0), dt);
            let idx = vec![8, 0, 4, 5];
            let st = put(be, &src, dt, &[4, 3584], 0)?;
            let it = put_i32(be, &idx, &[4])?;
            let dt_ = put(be, &dst, dt, &[9, 3584], 16)?;
            be.scatter_rows(st, it, dt_)?;
            rf::scatter_rows(&src, 3584, &idx, &mut dst);
            Ok((get(be, &dt_)?, dst))
        }),
    ));

    // argmax with planted ties (lowest index must win).
    for (rows, n) in [(4usize, 1000usize), (1, 152_064), (3, 7)] {
        c.push(case(
            "argmax",
            format!("[{rows},{n}] ties"),
            Bound::Exact,
            Box::new(move |be, dt, r| {
                let mut x = rounded(r.vals(rows * n, 10.0), dt);
                for row in 0..rows {
                    let (a, b) = (r.below(n), r.below(n));
                    x[row * n + a] = 11.0;
                    x[row * n + b] = 11.0;
                }
                let xt = put(be, &x, dt, &[rows, n], 0)?;
                let o = put_i32(be, &vec![-1; rows], &[rows])?;
                be.argmax(xt, o)?;
                let got: Vec<f32> = get_i32(be, &o)?.iter().map(|&i| i as f32).collect();
                let want: Vec<f32> = rf::argmax(&x, n)
                    .unwrap()
                    .iter()
                    .map(|&i| i as f32)
                    .collect();
                Ok((got, want))
            }),
        ));
    }

    // sample: the definition in sample::sample_row is exact integer arithmetic after an f32 division
    // and a fixed-sequence exp, so every backend must choose the same token (bound: exact).
    // Draws are explicit uniforms (placed mid-interval by rf's own weights, though exactness
    // needs no margin) and hashed (seed, step) draws; logits on the dtype's grid, with a planted
    // tie at the top so lowest-index rules matter.
    for vocab in [17usize, 1000, 152_064] {
        let rows = if vocab > 1000 { 1 } else { 2 };
        for (t, k, p) in [
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
            c.push(case(
                "sample",
                format!("[{rows},{vocab}] t{t} k{k} p{p}"),
                Bound::Exact,
                Box::new(move |be, dt, r| {
                    let mut x = rounded(r.vals(rows * vocab, 6.0), dt);
                    for row in 0..rows {
                        let (a, b) = (r.below(vocab), r.below(vocab));
                        x[row * vocab + a] = 7.0;
                        x[row * vocab + b] = 7.0;
                    }
                    let xt = put(be, &x, dt, &[rows, vocab], 0)?;
                    let mut got = Vec::new();
                    let mut want = Vec::new();
                    for draw in 0..4u32 {
                        let args = SampleArgs {
                            temperature: t,
                            top_k: k,
                            top_p: p,
                            seed: 0x5eed ^ draw as u64,
                            step: draw,
                            uniform: (draw < 2)
                                .then(|| (r.below(1 << 20) as f64 + 0.5) / (1 << 20) as f64),
                        };
                        let w = args.to_words();
                        let at = put_i32(be, &w, &[SampleArgs::WORDS])?;
                        let o = put_i32(be, &vec![-7; rows], &[rows])?;
                        be.sample(xt, at, o)?;
                        got.extend(get_i32(be, &o)?.iter().map(|&i| i as f32));
                        want.extend(
                            x.chunks(vocab)
                                .map(|row| sample::sample_row(row, &w) as f32),
                        );
                    }
                    assert!(want.iter().all(|&t| t >= 0.0), "{want:?}");
                    Ok((got, want))
                }),
            ));
        }
    }
    c.extend(batched_cases());
    c
}

// ---------------------------------------------------------------------------------------------
// Batched steps: several sequences in one launch (PagedKv::qo_indptr, per-row sample args).

/// B sequences on one pool of 2 layers: sequence b holds `lens[b].0` tokens on scrambled pages
/// and its last `lens[b].1` tokens are its rows of the step; with `share`, the last sequence's
/// first page is sequence 0's (a shared prefix page, read-only for both).
struct BatchPaged {
    kv: PagedKv,
    pool: Vec<f32>,
    /// Per sequence: pages, kv_len, step rows.
    seqs: Vec<(Vec<usize>, usize, usize)>,
}

impl BatchPaged {
    #[allow(clippy::too_many_arguments)]
    fn new(
        be: &mut dyn Backend,
        dt: DType,
        r: &mut Rng,
        hkv: usize,
        d: usize,
        ps: usize,
        lens: &[(usize, usize)],
        share: bool,
    ) -> reel::Result<BatchPaged> {
        let counts: Vec<usize> = lens.iter().map(|&(l, _)| l.div_ceil(ps)).collect();
        let n_pages = counts.iter().sum::<usize>() + 3;
        let mut perm: Vec<usize> = (0..n_pages).collect();
        for i in (1..n_pages).rev() {
            perm.swap(i, r.below(i + 1));
        }
        let mut next = perm.into_iter();
        let mut seqs: Vec<(Vec<usize>, usize, usize)> = lens
            .iter()
            .zip(&counts)
            .map(|(&(l, n), &c)| ((&mut next).take(c).collect(), l, n))
            .collect();
        let last = seqs.len() - 1;
        let full_prefix = |(l, n): (usize, usize)| l - n >= ps;
        if share && last > 0 && full_prefix(lens[0]) && full_prefix(lens[last]) {
            seqs[last].0[0] = seqs[0].0[0];
        }
        let layout = KvLayout {
            buf: reel::backend::BufId(0),
            dtype: dt,
            n_layers: 2,
            n_pages,
            page_size: ps,
            n_kv_heads: hkv,
            head_dim: d,
        };
        let total = 2 * 2 * n_pages * layout.page_elems();
        let pool = rounded(r.vals(total, 2.0), dt);
        let (bytes, _) = place(&pool, dt, &[total], 0);
        let buf = be.alloc(bytes.len())?;
        be.write(buf, 0, &bytes)?;
        let (mut qo, mut indptr, mut indices, mut lastp) = (vec![0i32], vec![0i32], vec![], vec![]);
        for (pages, l, n) in &seqs {
            qo.push(qo.last().unwrap() + *n as i32);
            indices.extend(pages.iter().map(|&p| p as i32));
            indptr.push(indices.len() as i32);
            lastp.push(if *l == 0 { 0 } else { (l - (pages.len() - 1) * ps) as i32 });
        }
        let b = seqs.len();
        Ok(BatchPaged {
            kv: PagedKv {
                layout: KvLayout { buf, ..layout },
                qo_indptr: put_i32(be, &qo, &[b + 1])?,
                indptr: put_i32(be, &indptr, &[b + 1])?,
                indices: put_i32(be, &indices, &[indices.len()])?,
                last_page_len: put_i32(be, &lastp, &[b])?,
            },
            pool,
            seqs,
        })
    }

    fn rows(&self) -> usize {
        self.seqs.iter().map(|s| s.2).sum()
    }

    /// Dense [kv_len, hkv, d] keys and values of sequence `b` in `layer`.
    fn dense(&self, layer: usize, b: usize) -> (Vec<f32>, Vec<f32>) {
        let l = &self.kv.layout;
        let row = l.n_kv_heads * l.head_dim;
        let (pages, len, _) = &self.seqs[b];
        let (mut k, mut v) = (Vec::new(), Vec::new());
        for p in 0..*len {
            let (page, slot) = (pages[p / l.page_size], p % l.page_size);
            let ek = l.elem_index(layer, 0, page, slot, 0);
            let ev = l.elem_index(layer, 1, page, slot, 0);
            k.extend_from_slice(&self.pool[ek..ek + row]);
            v.extend_from_slice(&self.pool[ev..ev + row]);
        }
        (k, v)
    }
}

fn batched_cases() -> Vec<Case> {
    let mut c = Vec::new();
    // (Hq, Hkv, d, page, [(kv_len, step rows)] per sequence, shared prefix page).
    let decode64: Vec<(usize, usize)> = (0..64).map(|i| (1 + (i * 37) % 200, 1)).collect();
    let shapes: Vec<(usize, usize, usize, usize, Vec<(usize, usize)>, bool)> = vec![
        (4, 2, 8, 4, vec![(5, 2), (1, 1), (9, 3)], false),
        (6, 2, 20, 3, vec![(13, 1), (4, 0), (7, 7), (10, 4)], true),
        // Decode of several sequences (the CUDA split-KV kernel), a shared prefix page.
        (28, 4, 128, 16, vec![(300, 1), (17, 1), (1, 1), (64, 1), (33, 1)], true),
        (28, 4, 128, 16, decode64, false),
        // Prefill chunks beside decode rows and an idle sequence (tensor cores in bf16).
        (28, 4, 128, 16, vec![(40, 1), (12, 0), (200, 77), (3, 3), (129, 1)], true),
    ];
    for (hq, hkv, d, ps, lens, share) in shapes {
        let rows: usize = lens.iter().map(|s| s.1).sum();
        let shape = format!(
            "B{} rows{rows} q[{hq},{d}] kv{hkv} page{ps}{}",
            lens.len(),
            if share { " shared" } else { "" }
        );
        let lens2 = lens.clone();
        c.push(case(
            "kv_append",
            shape.clone(),
            Bound::Exact,
            Box::new(move |be, dt, r| {
                let pg = BatchPaged::new(be, dt, r, hkv, d, ps, &lens2, share)?;
                let t = pg.rows();
                let k = rounded(r.vals(t * hkv * d, 2.0), dt);
                let v = rounded(r.vals(t * hkv * d, 2.0), dt);
                let kt = put(be, &k, dt, &[t, hkv, d], 3)?;
                let vt = put(be, &v, dt, &[t, hkv, d], 0)?;
                be.kv_append(kt, vt, &pg.kv, 1)?;
                let mut want = pg.pool.clone();
                let row = hkv * d;
                let mut i = 0;
                for (pages, l, n) in &pg.seqs {
                    for j in 0..*n {
                        let p = l - n + j;
                        for (which, src) in [(0, &k), (1, &v)] {
                            let e = pg.kv.layout.elem_index(1, which, pages[p / ps], p % ps, 0);
                            want[e..e + row].copy_from_slice(&src[i * row..(i + 1) * row]);
                        }
                        i += 1;
                    }
                }
                let mut bytes = vec![0u8; pg.kv.layout.total_bytes()];
                be.read(pg.kv.layout.buf, 0, &mut bytes)?;
                Ok((from_bytes(&bytes, dt), want))
            }),
        ));
        c.push(case(
            "attention_paged",
            shape,
            Bound::Reduction,
            Box::new(move |be, dt, r| {
                let pg = BatchPaged::new(be, dt, r, hkv, d, ps, &lens, share)?;
                let t = pg.rows();
                let q = rounded(r.vals(t * hq * d, 2.0), dt);
                let qt = put(be, &q, dt, &[t, hq, d], 5)?;
                let o = out(be, dt, &[t, hq, d], 0)?;
                let scale = 1.0 / (d as f32).sqrt();
                be.attention_paged(qt, &pg.kv, 1, o, scale)?;
                // Each sequence alone through the single-sequence reference.
                let mut want = Vec::new();
                let mut q0 = 0;
                for (b, (_, l, n)) in pg.seqs.iter().enumerate() {
                    let (keys, vals) = pg.dense(1, b);
                    let qs = &q[q0 * hq * d..(q0 + n) * hq * d];
                    want.extend(rf::attention_causal(
                        qs, *n, hq, &keys, &vals, *l, hkv, d, scale, dt,
                    ));
                    q0 += n;
                }
                Ok((get(be, &o)?, want))
            }),
        ));
    }

    // sample with a set of arguments per row: each row must follow its own (greedy beside
    // top-k, top-p and plain draws, different seeds and steps).
    for (rows, vocab) in [(5usize, 1000usize), (3, 152_064)] {
        c.push(case(
            "sample",
            format!("[{rows},{vocab}] args per row"),
            Bound::Exact,
            Box::new(move |be, dt, r| {
                let mut x = rounded(r.vals(rows * vocab, 6.0), dt);
                for row in 0..rows {
                    let (a, b) = (r.below(vocab), r.below(vocab));
                    x[row * vocab + a] = 7.0;
                    x[row * vocab + b] = 7.0;
                }
                let xt = put(be, &x, dt, &[rows, vocab], 0)?;
                let kinds = [
                    (0.0f32, 0u32, 1.0f32),
                    (1.0, 0, 1.0),
                    (0.7, 50, 1.0),
                    (1.0, 0, 0.9),
                    (0.8, 40, 0.95),
                ];
                let mut words = Vec::new();
                for row in 0..rows {
                    let (t, k, p) = kinds[row % kinds.len()];
                    let a = SampleArgs {
                        temperature: t,
                        top_k: k,
                        top_p: p,
                        seed: 0x5eed + row as u64 * 7,
                        step: row as u32 * 3,
                        uniform: (row % 2 == 1)
                            .then(|| (r.below(1 << 20) as f64 + 0.5) / (1 << 20) as f64),
                    };
                    words.push(a.to_words());
                }
                let flat: Vec<i32> = words.iter().flatten().copied().collect();
                let at = put_i32(be, &flat, &[rows, SampleArgs::WORDS])?;
                let o = put_i32(be, &vec![-7; rows], &[rows])?;
                be.sample(xt, at, o)?;
                let got: Vec<f32> = get_i32(be, &o)?.iter().map(|&i| i as f32).collect();
                let want: Vec<f32> = x
                    .chunks(vocab)
                    .zip(&words)
                    .map(|(row, w)| sample::sample_row(row, w) as f32)
                    .collect();
                assert!(want.iter().all(|&t| t >= 0.0), "{want:?}");
                Ok((got, want))
            }),
        ));
    }
    c
}

/// A KV pool of 2 layers whose sequence owns `kv_len` tokens on shuffled pages, filled with
/// random values (so kv_append must leave everything else alone); the step's `t` rows are its
/// last tokens.
struct Paged {
    kv: PagedKv,
    pool: Vec<f32>,
    pages: Vec<usize>,
}

impl Paged {
    #[allow(clippy::too_many_arguments)]
    fn new(
        be: &mut dyn Backend,
        dt: DType,
        r: &mut Rng,
        hkv: usize,
        d: usize,
        ps: usize,
        kv_len: usize,
        t: usize,
    ) -> reel::Result<Paged> {
        let npages = kv_len.div_ceil(ps);
        let n_pages = npages * 2 + 1;
        // Pages in a scrambled order, never contiguous.
        let mut pages: Vec<usize> = (0..npages)
            .map(|i| (n_pages - 1 - 2 * i) % n_pages)
            .collect();
        if npages > 2 {
            pages.swap(0, npages - 1);
        }
        let layout = KvLayout {
            buf: reel::backend::BufId(0),
            dtype: dt,
            n_layers: 2,
            n_pages,
            page_size: ps,
            n_kv_heads: hkv,
            head_dim: d,
        };
        let total = 2 * 2 * n_pages * layout.page_elems();
        let pool = rounded(r.vals(total, 2.0), dt);
        let (bytes, _) = place(&pool, dt, &[total], 0);
        let buf = be.alloc(bytes.len())?;
        be.write(buf, 0, &bytes)?;
        let layout = KvLayout { buf, ..layout };
        // A second sequence in the CSR, so that only entry 0 is ours.
        let mut indices: Vec<i32> = pages.iter().map(|&p| p as i32).collect();
        indices.push(0);
        let indptr = put_i32(be, &[0, npages as i32, npages as i32 + 1], &[3])?;
        let indices_t = put_i32(be, &indices, &[indices.len()])?;
        let last = put_i32(be, &[(kv_len - (npages - 1) * ps) as i32, 1], &[2])?;
        Ok(Paged {
            kv: PagedKv {
                layout,
                qo_indptr: put_i32(be, &[0, t as i32], &[2])?,
                indptr,
                indices: indices_t,
                last_page_len: last,
            },
            pool,
            pages,
        })
    }

    /// Dense [kv_len, hkv, d] keys and values of `layer`.
    fn dense(&self, layer: usize) -> (Vec<f32>, Vec<f32>) {
        let l = &self.kv.layout;
        let row = l.n_kv_heads * l.head_dim;
        let kv_len = (0..self.pages.len() * l.page_size).count();
        let (mut k, mut v) = (Vec::new(), Vec::new());
        for p in 0..kv_len {
            let (page, slot) = (self.pages[p / l.page_size], p % l.page_size);
            let ek = l.elem_index(layer, 0, page, slot, 0);
            let ev = l.elem_index(layer, 1, page, slot, 0);
            k.extend_from_slice(&self.pool[ek..ek + row]);
            v.extend_from_slice(&self.pool[ev..ev + row]);
        }
        (k, v)
    }
}

fn backends() -> Vec<(String, Box<dyn Backend>)> {
    let mut v: Vec<(String, Box<dyn Backend>)> = Vec::new();
    let cpu = CpuBackend::new();
    let simd = cpu.simd_enabled();
    v.push((
        if simd {
            "cpu".into()
        } else {
            "cpu-portable".into()
        },
        Box::new(cpu),
    ));
    if simd {
        let mut portable = CpuBackend::new();
        portable.set_simd(false);
        v.push(("cpu-portable".into(), Box::new(portable)));
    }
    match reel::backend::cuda::open(0) {
        Ok(be) => v.push(("cuda:0".into(), be)),
        Err(e) => println!("cuda: skipped: no CUDA device ({e})"),
    }
    v
}

#[test]
fn ops_match_reference() {
    let mut bes = backends();
    let cases = cases();
    let mut failures = Vec::new();
    println!(
        "{:<17} {:<42} {:<5} {:<13} {:>10} {:>9}  ok",
        "op", "shape", "dtype", "backend", "max err", "bound"
    );
    for (ci, c) in cases.iter().enumerate() {
        for dt in [DType::F32, DType::BF16] {
            for (name, be) in bes.iter_mut() {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (ci as u64 * 7919 + dt as u64));
                let bound = c.bound.value(dt);
                let (e, note) = match (c.run)(be.as_mut(), dt, &mut rng) {
                    Ok((got, want)) => (err(&got, &want, c.bound.floor()), String::new()),
                    Err(e) => (f64::INFINITY, format!(" ({e})")),
                };
                let ok = e <= bound;
                println!(
                    "{:<17} {:<42} {:<5} {:<13} {:>10.3e} {:>9.2e}  {}{note}",
                    c.op,
                    c.shape,
                    dt.name(),
                    name,
                    e,
                    bound,
                    if ok { "ok" } else { "FAIL" }
                );
                if !ok {
                    failures.push(format!(
                        "{} {} {} {}: err {e:.3e} > {bound:.2e}{note}",
                        c.op, c.shape, dt, name
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} rows over their bounds:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Every op refuses inputs it cannot handle with an error (never a panic).
#[test]
fn ops_reject_bad_inputs() {
    let mut be = CpuBackend::new();
    let be: &mut dyn Backend = &mut be;
    let f = DType::F32;
    let x = put(be, &[1.0; 12], f, &[3, 4], 0).unwrap();
    let x5 = put(be, &[1.0; 15], f, &[3, 5], 0).unwrap();
    let o = out(be, f, &[3, 4], 0).unwrap();
    let w = put_weight(be, &[1.0; 20], DType::BF16, &[5, 4], 0).unwrap();
    let w4 = put_weight(be, &[1.0; 4], DType::BF16, &[4], 0).unwrap();
    let ids = put_i32(be, &[0, 1, 7], &[3]).unwrap();
    let msg = |r: reel::Result<()>| r.expect_err("must be an error").to_string();

    // matmul: K mismatch, wrong out shape, quantized weights of another K, i32 activations.
    assert!(msg(be.matmul(x5, w, None, o)).contains("K = 4"));
    assert!(msg(be.matmul(x, w, None, o)).contains("out"));
    let q = TRef {
        dtype: DType::Q8_0,
        shape: Shape::new(&[5, 32]),
        row_stride: 32,
        ..w
    };
    assert!(msg(be.matmul(x, q, None, o)).contains("do not fit"));
    // Quantized K that does not fill whole blocks.
    let xq = put(be, &[0.5; 2 * 48], f, &[2, 48], 0).unwrap();
    let oq = out(be, f, &[2, 3], 0).unwrap();
    let q48 = TRef {
        dtype: DType::Q8_0,
        shape: Shape::new(&[3, 48]),
        row_stride: 48,
        ..w
    };
    assert!(msg(be.matmul(xq, q48, None, oq)).contains("K = 48"));
    let xi = TRef {
        dtype: DType::I32,
        ..x
    };
    assert!(msg(be.matmul(xi, w, None, o)).contains("f32 or bf16"));
    // A view that overruns its buffer.
    let big = TRef {
        shape: Shape::new(&[30, 4]),
        ..x
    };
    assert!(msg(be.add(big, big, big)).contains("overruns"));
    // Elementwise shape mismatch; rms_norm weight length.
    assert!(msg(be.add(x, x5, o)).contains("shape"));
    assert!(msg(be.rms_norm(x5, w4, x5, 1e-6)).contains("D = 4"));
    // Embedding id out of range.
    let tab = put_weight(be, &[0.0; 8], DType::BF16, &[2, 4], 0).unwrap();
    assert!(msg(be.embedding(tab, ids, o)).contains("ids[2] = 7"));
    // argmax on NaN, and on a non-i32 output.
    let nan = put(be, &[0.0, f32::NAN, 1.0, 2.0], f, &[2, 2], 0).unwrap();
    let oi = put_i32(be, &[0, 0], &[2]).unwrap();
    assert!(msg(be.argmax(nan, oi)).contains("NaN"));
    assert!(msg(be.argmax(nan, nan)).contains("i32"));
    // sample: args too short, a non-i32 output, a NaN row (-1, not an error: the kernel cannot
    // fail, the engine turns -1 into an error).
    let args = put_i32(be, &SampleArgs::greedy().to_words(), &[8]).unwrap();
    let short = put_i32(be, &[0; 4], &[4]).unwrap();
    assert!(msg(be.sample(x, short, oi)).contains("args"));
    assert!(msg(be.sample(x, args, x)).contains("out"));
    be.sample(nan, args, oi).unwrap();
    assert_eq!(get_i32(be, &oi).unwrap(), [-1, 1]);
    // RoPE: sections not summing to d/2; vision d not a multiple of 4.
    let xr = put(be, &[0.0; 2 * 2 * 8], f, &[2, 2, 8], 0).unwrap();
    let pos = put_i32(be, &[0; 6], &[3, 2]).unwrap();
    assert!(msg(be.rope_mrope(
        xr,
        pos,
        xr,
        MropeParams {
            theta: 1e6,
            sections: [1, 1, 1]
        }
    ))
    .contains("sections"));
    let xv = put(be, &[0.0; 2 * 6], f, &[2, 1, 6], 0).unwrap();
    let pv = put_i32(be, &[0; 4], &[2, 2]).unwrap();
    assert!(msg(be.rope_vision(xv, pv, xv, 1e4)).contains("multiple of 4"));
    // Paged attention: page index outside the pool; GQA ratio; too many query rows.
    let mut r = Rng(1);
    let pg = Paged::new(be, f, &mut r, 2, 8, 4, 5, 1).unwrap();
    let q3 = put(be, &[0.0; 3 * 8], f, &[1, 3, 8], 0).unwrap();
    assert!(msg(be.attention_paged(q3, &pg.kv, 0, q3, 1.0)).contains("multiple"));
    let q6 = put(be, &[0.0; 6 * 4 * 8], f, &[6, 4, 8], 0).unwrap();
    let o6 = out(be, f, &[6, 4, 8], 0).unwrap();
    let kv6 = PagedKv {
        qo_indptr: put_i32(be, &[0, 6], &[2]).unwrap(),
        ..pg.kv
    };
    assert!(msg(be.attention_paged(q6, &kv6, 0, o6, 1.0)).contains("holds only 5"));
    assert!(msg(be.attention_paged(q6, &kv6, 2, o6, 1.0)).contains("layer 2"));
    // qo_indptr must cover exactly the step's rows.
    assert!(msg(be.attention_paged(q6, &pg.kv, 0, o6, 1.0)).contains("qo_indptr"));
    let bad = PagedKv {
        indices: put_i32(be, &[99, 0, 0], &[3]).unwrap(),
        ..pg.kv
    };
    let q1 = put(be, &[0.0; 4 * 8], f, &[1, 4, 8], 0).unwrap();
    assert!(msg(be.attention_paged(q1, &bad, 0, q1, 1.0)).contains("page index 99"));
    // Varlen: cu_seqlens that do not end at N.
    let qv = put(be, &[0.0; 4 * 8], f, &[4, 1, 8], 0).unwrap();
    let cu = put_i32(be, &[0, 3], &[2]).unwrap();
    assert!(msg(be.attention_varlen(qv, qv, qv, cu, qv, 1.0)).contains("cu_seqlens"));
    // Writing into a weight buffer.
    let wbytes = put_weight(be, &[0.0; 12], f, &[3, 4], 0).unwrap();
    assert!(msg(be.add(x, x, wbytes)).contains("read-only"));
}
