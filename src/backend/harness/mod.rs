//! The op table: every [`Backend`] op with its scalar reference and its cases, each case a
//! shape (small and awkward ones, and the real Qwen2.5-VL-7B text and vision shapes), a builder
//! that places inputs on a backend and runs the op, an error bound against the reference, and
//! the bytes it moves and the FLOPs it does. One table drives two modes, as ggml's
//! test-backend-ops does:
//! - correctness ([`check`], run by tests/ops.rs): every checked case × activation dtypes
//!   {f32, bf16} × every available backend, compared with the reference;
//! - performance ([`perf`], run by benches/ops.rs and scripts/gpu-check.sh): the timed cases on
//!   each backend, medians beside the ceiling (roofline of bandwidth and compute).
//!
//! One file per op family, named as the kernel files are (kernels/rope.cu,
//! backend/cuda/rope.rs, backend/cpu/rope.rs, harness/rope.rs), holding the family's reference
//! functions and its `cases`. References are plain scalar code on host slices, written for
//! obviousness, not speed: one loop per formula, f64 accumulation for reductions, rounding
//! exactly where the `Backend` docs put it, no code shared with the fast paths (conversions
//! come from the `half` crate). Tensors are row-major `Vec<f32>` holding values already
//! representable in their dtype; `out` is the dtype each result is rounded to. Sampling's
//! definition (`sample_row`) and the host argmax live in the neutral `backend::sample`.
//!
//! Error metric: `max_i |got_i − want_i| / max(|want_i|, 1e-3 · max_j |want_j|)`, i.e. relative
//! error with a floor so that values from cancellation do not dominate. Bounds ([`Bound`]):
//! exact ops (copies, casts, kv_append, argmax, sample) 0; f32 elementwise 2e-6; f32 reductions
//! (matmul, attention: f32 sums in another order, f32 exp) 1e-3, i.e. at most 1e-6 of the
//! largest output near zero; bf16 single-rounding ops 2^-7 (one bf16 ulp, relative); bf16 ops
//! with chained roundings or f32 accumulation 2^-6 (two ulps). Outputs that are column blocks
//! of wider buffers must leave the other columns untouched.
//!
//! Quantized weights (Q8_0, Q4_K, Q6_K): the reference is the dequantized weight
//! (`quant::dequantize_row`) times x in f64. Bound 3e-2 of the largest output (the floor is the
//! whole max|want|), for both activation types: a backend may quantize activations to int8
//! blocks as llama.cpp does (≈0.4% of the output's rms per element, a few times that at the
//! tails), and the CUDA GEMM rounds dequantized weights to bf16 for the tensor cores. An index
//! bug gives O(1) errors. The CUDA kernels are exact dequant + f32 sums; backend/cuda/tests.rs
//! checks them against tighter bounds on a GPU.
//!
//! Kernel candidates behind a selector (an environment variable the backend reads when it
//! opens or at each launch, never cached for the process) are rows with [`Case::variants`]:
//! both modes run the case once per value, each on a freshly opened backend, and perf mode
//! prints the timings side by side.

pub mod argmax;
pub mod attention;
pub mod elementwise;
pub mod matmul;
pub mod norm;
pub mod perf;
pub mod rope;
pub mod sampling;

use super::{Backend, BufId, HostBytes, TRef};
use crate::error::Result;
use crate::tensor::{DType, Shape};
use rayon::prelude::*;

/// Every case of every op family.
pub fn cases() -> Vec<Case> {
    let mut t = Vec::new();
    elementwise::cases(&mut t);
    norm::cases(&mut t);
    matmul::cases(&mut t);
    rope::cases(&mut t);
    attention::cases(&mut t);
    argmax::cases(&mut t);
    sampling::cases(&mut t);
    t
}

// ---------------------------------------------------------------------------------------------
// Host values

/// xorshift64.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [-scale, scale).
    pub fn f(&mut self, scale: f32) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
    }
    pub fn vals(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f(scale)).collect()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Rounds to the nearest value of `dt` (round to nearest even).
pub fn round(x: f32, dt: DType) -> f32 {
    match dt {
        DType::BF16 => half::bf16::from_f32(x).to_f32(),
        DType::F16 => half::f16::from_f32(x).to_f32(),
        _ => x,
    }
}

pub fn round_all(x: &[f32], dt: DType) -> Vec<f32> {
    x.iter().map(|&v| round(v, dt)).collect()
}

/// Float values as little-endian bytes of `dt` (f32, bf16 or f16).
pub fn to_bytes(v: &[f32], dt: DType) -> Vec<u8> {
    match dt {
        DType::F32 => bytemuck::cast_slice(v).to_vec(),
        DType::BF16 => v
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
            .collect(),
        DType::F16 => v
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect(),
        _ => panic!("to_bytes: {dt} is not a float type"),
    }
}

pub fn from_bytes(b: &[u8], dt: DType) -> Vec<f32> {
    match dt {
        DType::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        DType::BF16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => panic!("from_bytes: {dt} is not a float type"),
    }
}

/// `n` values uniform in [-scale, scale) as bytes of `dt`, generated in parallel (perf mode's
/// large tensors, whose values are never read back).
fn random_bytes(seed: u64, n: usize, dt: DType, scale: f32) -> Vec<u8> {
    let esz = dt.bytes_for(1);
    let mut bytes = vec![0u8; n * esz];
    let chunk = 1 << 16;
    bytes
        .par_chunks_mut(chunk * esz)
        .enumerate()
        .for_each(|(ci, c)| {
            let mut r = Rng(seed ^ (ci as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let v = r.vals(c.len() / esz, scale);
            c.copy_from_slice(&to_bytes(&v, dt));
        });
    bytes
}

/// Random blocks of a quantized `[rows, k]` weight: random quants with every fp16 scale set to
/// a small finite value (speed does not depend on the values, and quantizing half a billion
/// weights on the host would take minutes).
fn random_blocks(seed: u64, dt: DType, n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; dt.bytes_for(n)];
    bytes
        .par_chunks_mut(dt.block_bytes() * 1024)
        .enumerate()
        .for_each(|(ci, c)| {
            let mut r = Rng(seed ^ (ci as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            for b in c.chunks_mut(8) {
                let w = r.next_u64().to_le_bytes();
                b.copy_from_slice(&w[..b.len()]);
            }
            // Offsets of the fp16 scales (d; d and dmin for Q4_K).
            let scales: &[usize] = match dt {
                DType::Q8_0 => &[0],
                DType::Q4K => &[0, 2],
                _ => &[208],
            };
            let s = half::f16::from_f32(1.0 / 1024.0).to_le_bytes();
            for blk in c.chunks_exact_mut(dt.block_bytes()) {
                for &a in scales {
                    blk[a..a + 2].copy_from_slice(&s);
                }
            }
        });
    bytes
}

// Exactly representable in f32, bf16 and f16.
const SENTINEL: f32 = 12288.0;

/// Values padded to a column block of a wider buffer: `pad` extra elements per row (holding
/// SENTINEL) after each row of `dims`.
fn padded(vals: &[f32], dims: &[usize], pad: usize) -> (Vec<f32>, Shape, usize) {
    let shape = Shape::new(dims);
    let (rows, len) = (shape.rows(), shape.row_len());
    assert_eq!(vals.len(), rows * len, "values for {dims:?}");
    if pad == 0 {
        return (vals.to_vec(), shape, len);
    }
    let stride = len + pad;
    let mut all = vec![SENTINEL; rows * stride];
    for r in 0..rows {
        all[r * stride..r * stride + len].copy_from_slice(&vals[r * len..(r + 1) * len]);
    }
    (all, shape, stride)
}

/// Reads a float tensor's rows back; NaN everywhere if the op wrote into the padding beside
/// them (the rest of the row stride, which [`Ctx::put`] and [`Ctx::out`] fill with SENTINEL).
pub fn read(be: &mut dyn Backend, t: &TRef) -> Result<Vec<f32>> {
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

/// An I32 tensor's elements.
pub fn read_i32(be: &mut dyn Backend, t: &TRef) -> Result<Vec<i32>> {
    let mut bytes = vec![0u8; t.shape.numel() * 4];
    be.read(t.buf, t.offset, &mut bytes)?;
    Ok(bytes
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// The error metric described at the top; `floor` is the fraction of max|want| below which
/// errors count as absolute. Any NaN mismatch or length mismatch is infinite.
pub fn max_error(got: &[f32], want: &[f32], floor: f64) -> f64 {
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
// Cases

/// An op's error bound against its reference (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    Exact,
    /// One rounding of an f32 result (f32: tight, bf16: one ulp).
    Elementwise,
    /// Chained roundings or long f32 sums.
    Reduction,
    /// Quantized weights: error relative to the largest output.
    Quantized,
}

impl Bound {
    pub fn value(self, dt: DType) -> f64 {
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
    pub fn floor(self) -> f64 {
        match self {
            Bound::Quantized => 1.0,
            _ => 1e-3,
        }
    }
}

/// What one run of a case moves and computes: every input read once and every output written
/// once, and the useful floating-point operations.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cost {
    pub bytes: f64,
    pub flops: f64,
}

impl Cost {
    pub fn bytes(bytes: usize) -> Cost {
        Cost {
            bytes: bytes as f64,
            flops: 0.0,
        }
    }
}

/// Kernel candidates behind a selector: the case runs once per value with `env` set to it,
/// on targets whose name starts with `backend`.
#[derive(Clone, Debug)]
pub struct Variants {
    pub backend: &'static str,
    pub env: &'static str,
    pub values: Vec<&'static str>,
}

/// The modes a case serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// Checked against the reference only (small and awkward shapes).
    Check,
    /// Checked and timed.
    Both,
    /// Timed only: shapes whose f64 reference would take minutes.
    Perf,
}

type Build = Box<dyn Fn(&mut Ctx) -> Result<Built>>;

/// One row of the table.
pub struct Case {
    pub op: &'static str,
    pub shape: String,
    pub bound: Bound,
    /// Compared with the reference by [`check`] (false for shapes whose f64 reference takes
    /// minutes).
    pub checked: bool,
    /// Timed by [`perf`].
    pub timed: bool,
    pub variants: Option<Variants>,
    cost: Box<dyn Fn(DType) -> Cost>,
    build: Build,
}

impl Case {
    /// A checked case; `build` places the inputs (through the context's backend) and returns
    /// the run and its check.
    pub fn new(
        op: &'static str,
        shape: impl Into<String>,
        bound: Bound,
        build: impl Fn(&mut Ctx) -> Result<Built> + 'static,
    ) -> Case {
        Case {
            op,
            shape: shape.into(),
            bound,
            checked: true,
            timed: false,
            variants: None,
            cost: Box::new(|_| Cost::default()),
            build: Box::new(build),
        }
    }

    /// What a run moves and computes, by activation dtype.
    pub fn cost(mut self, cost: impl Fn(DType) -> Cost + 'static) -> Case {
        self.cost = Box::new(cost);
        self
    }

    /// The modes that run this case (checked only, by default).
    pub fn used(mut self, u: Use) -> Case {
        self.checked = u != Use::Perf;
        self.timed = u != Use::Check;
        self
    }

    /// Runs once per selector value on targets named `backend*` (see [`Variants`]).
    pub fn variants(
        mut self,
        backend: &'static str,
        env: &'static str,
        values: &[&'static str],
    ) -> Case {
        self.variants = Some(Variants {
            backend,
            env,
            values: values.to_vec(),
        });
        self
    }

    /// `op shape`, what filters match.
    pub fn name(&self) -> String {
        format!("{} {}", self.op, self.shape)
    }

    /// Whether any filter is a substring of the name (no filters: every case).
    pub fn matches(&self, filters: &[String]) -> bool {
        let name = self.name();
        filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
    }

    pub fn cost_of(&self, dt: DType) -> Cost {
        (self.cost)(dt)
    }

    /// The selector values to run on a target, if any.
    pub fn variants_for(&self, target: &str) -> Option<&Variants> {
        self.variants
            .as_ref()
            .filter(|v| target.starts_with(v.backend))
    }

    /// Inputs from a seed of the case's name and the dtype, so adding a row changes no other
    /// row's data.
    pub fn seed(&self, dt: DType) -> u64 {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for b in self.name().bytes().chain([dt as u8]) {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        h | 1
    }

    /// Places the inputs on `be` and returns the run; `be` keeps them until [`Ctx::free`].
    pub fn build(&self, cx: &mut Ctx) -> Result<Built> {
        (self.build)(cx)
    }
}

/// A run of the op (the argument picks among rotated weight copies in perf mode) and, for
/// check mode, what it must have produced: `(got, want)` read after one run.
pub struct Built {
    pub run: RunFn,
    pub check: CheckFn,
}

/// Runs the op once on the backend; the argument picks a rotated weight copy.
pub type RunFn = Box<dyn FnMut(&mut dyn Backend, usize) -> Result<()>>;
/// Reads `(got, want)` after one run.
pub type CheckFn = Box<dyn FnOnce(&mut dyn Backend) -> Result<(Vec<f32>, Vec<f32>)>>;

impl Built {
    pub fn new(
        run: impl FnMut(&mut dyn Backend, usize) -> Result<()> + 'static,
        check: impl FnOnce(&mut dyn Backend) -> Result<(Vec<f32>, Vec<f32>)> + 'static,
    ) -> Built {
        Built {
            run: Box::new(run),
            check: Box::new(check),
        }
    }
}

/// Check mode keeps every value on the host for the reference; perf mode fills large tensors
/// with random bytes and keeps nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Check,
    Perf,
}

/// Weight copies that together exceed the last-level caches, so repeated timed runs read
/// DRAM (perf mode; one copy in check mode).
#[derive(Clone, Debug)]
pub struct Rot(Vec<TRef>);

impl Rot {
    pub fn at(&self, i: usize) -> TRef {
        self.0[i % self.0.len()]
    }
}

/// Bytes the copies of one weight should add up to: above twice the 50-60 MB L2 of an
/// H100/H200 and beyond a CPU's last-level cache.
const ROTATE_BYTES: usize = 128 << 20;

/// What a case's builder places inputs with: the backend, the activation dtype, the inputs'
/// random source, and the buffers to free afterwards.
pub struct Ctx<'a> {
    pub be: &'a mut dyn Backend,
    pub dt: DType,
    pub rng: Rng,
    pub mode: Mode,
    owned: Vec<BufId>,
}

impl<'a> Ctx<'a> {
    pub fn new(be: &'a mut dyn Backend, dt: DType, seed: u64, mode: Mode) -> Ctx<'a> {
        Ctx {
            be,
            dt,
            rng: Rng(seed),
            mode,
            owned: Vec::new(),
        }
    }

    fn perf(&self) -> bool {
        self.mode == Mode::Perf
    }

    /// `n` values uniform in [-scale, scale), rounded to `dt`.
    pub fn vals(&mut self, n: usize, scale: f32, dt: DType) -> Vec<f32> {
        round_all(&self.rng.vals(n, scale), dt)
    }

    fn alloc_bytes(&mut self, bytes: &[u8]) -> Result<BufId> {
        let buf = self.be.alloc(bytes.len().max(4))?;
        self.owned.push(buf);
        self.be.write(buf, 0, bytes)?;
        Ok(buf)
    }

    fn weight_bytes(&mut self, bytes: Vec<u8>) -> Result<BufId> {
        let buf = self.be.load_weight(HostBytes::from_vec(bytes))?;
        self.owned.push(buf);
        Ok(buf)
    }

    /// `vals` as a `dt` tensor of `dims`; `pad` extra elements per row make it a column block
    /// of a wider buffer (row_stride = row_len + pad), its padding SENTINEL.
    pub fn put(&mut self, vals: &[f32], dt: DType, dims: &[usize], pad: usize) -> Result<TRef> {
        let (all, shape, stride) = padded(vals, dims, pad);
        let buf = self.alloc_bytes(&to_bytes(&all, dt))?;
        Ok(TRef {
            buf,
            offset: 0,
            dtype: dt,
            shape,
            row_stride: stride,
        })
    }

    /// A random `dt` tensor of `dims` (values in [-scale, scale)) and its values; in perf mode
    /// random bytes and no values.
    pub fn input(
        &mut self,
        dt: DType,
        dims: &[usize],
        scale: f32,
        pad: usize,
    ) -> Result<(TRef, Vec<f32>)> {
        if self.perf() {
            let shape = Shape::new(dims);
            let stride = shape.row_len() + pad;
            let bytes = random_bytes(self.rng.next_u64(), shape.rows() * stride, dt, scale);
            let buf = self.alloc_bytes(&bytes)?;
            return Ok((
                TRef {
                    buf,
                    offset: 0,
                    dtype: dt,
                    shape,
                    row_stride: stride,
                },
                Vec::new(),
            ));
        }
        let v = self.vals(Shape::new(dims).numel(), scale, dt);
        Ok((self.put(&v, dt, dims, pad)?, v))
    }

    /// `vals` as a weight (host bytes handed over, the way checkpoints reach backends).
    pub fn put_weight(&mut self, vals: &[f32], dt: DType, dims: &[usize]) -> Result<TRef> {
        let buf = self.weight_bytes(to_bytes(vals, dt))?;
        Ok(TRef::new(buf, 0, dt, Shape::new(dims)))
    }

    /// A random `[rows, k]` weight of `dt` and the values the reference uses: float types hold
    /// values in [-scale, scale) rounded to the type; quantized ones quantize such values row by
    /// row (`quant::quantize_row`) and the reference gets them dequantized. Perf mode: random
    /// bytes (random blocks for quantized types) in copies rotated across runs.
    pub fn weight(
        &mut self,
        dt: DType,
        rows: usize,
        k: usize,
        scale: f32,
    ) -> Result<(Rot, Vec<f32>)> {
        let shape = Shape::new(&[rows, k]);
        if self.perf() {
            let one = dt.bytes_for(rows * k);
            let copies = ROTATE_BYTES.div_ceil(one.max(1)).clamp(1, 8);
            let mut v = Vec::with_capacity(copies);
            for _ in 0..copies {
                let seed = self.rng.next_u64();
                let bytes = if dt.is_quantized() {
                    random_blocks(seed, dt, rows * k)
                } else {
                    random_bytes(seed, rows * k, dt, scale)
                };
                v.push(TRef::new(self.weight_bytes(bytes)?, 0, dt, shape));
            }
            return Ok((Rot(v), Vec::new()));
        }
        if !dt.is_quantized() {
            let v = self.vals(rows * k, scale, dt);
            let t = self.put_weight(&v, dt, &[rows, k])?;
            return Ok((Rot(vec![t]), v));
        }
        let src = self.rng.vals(rows * k, scale);
        let rb = crate::quant::row_bytes(dt, k)?;
        let mut bytes = vec![0u8; rb * rows];
        let mut deq = vec![0f32; rows * k];
        for ((s, dst), back) in src
            .chunks_exact(k)
            .zip(bytes.chunks_exact_mut(rb))
            .zip(deq.chunks_exact_mut(k))
        {
            crate::quant::quantize_row(dt, s, dst)?;
            crate::quant::dequantize_row(dt, dst, back)?;
        }
        let buf = self.weight_bytes(bytes)?;
        Ok((Rot(vec![TRef::new(buf, 0, dt, shape)]), deq))
    }

    /// [`Ctx::weight`] prepared as a matmul weight, as the model loader does
    /// (`Backend::prepare_matmul_weight`: the layouts the backend's kernels read fastest).
    pub fn matmul_weight(
        &mut self,
        dt: DType,
        rows: usize,
        k: usize,
        scale: f32,
    ) -> Result<(Rot, Vec<f32>)> {
        let (w, v) = self.weight(dt, rows, k, scale)?;
        for t in &w.0 {
            self.be.prepare_matmul_weight(t)?;
        }
        Ok((w, v))
    }

    /// An I32 tensor.
    pub fn i32s(&mut self, vals: &[i32], dims: &[usize]) -> Result<TRef> {
        let buf = self.alloc_bytes(bytemuck::cast_slice(vals))?;
        Ok(TRef::new(buf, 0, DType::I32, Shape::new(dims)))
    }

    /// An output tensor, padding included, pre-filled with SENTINEL (zeroed in perf mode).
    pub fn out(&mut self, dt: DType, dims: &[usize], pad: usize) -> Result<TRef> {
        let shape = Shape::new(dims);
        let stride = shape.row_len() + pad;
        let n = shape.rows() * stride;
        let buf = if self.perf() {
            let b = self.be.alloc(dt.bytes_for(n))?;
            self.owned.push(b);
            b
        } else {
            self.alloc_bytes(&to_bytes(&vec![SENTINEL; n], dt))?
        };
        Ok(TRef {
            buf,
            offset: 0,
            dtype: dt,
            shape,
            row_stride: stride,
        })
    }

    /// Releases every buffer the builder placed.
    pub fn free(&mut self) {
        for b in self.owned.drain(..) {
            self.be.free(b);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Backends and the check mode

/// A backend this machine can open, by name (`cpu-avx512`, `cpu-avx2`, `cpu-scalar`, `cuda:0`).
pub struct Target {
    pub name: String,
    open: Box<dyn Fn() -> Result<Box<dyn Backend>>>,
}

impl Target {
    pub fn open(&self) -> Result<Box<dyn Backend>> {
        (self.open)()
    }
}

/// Every backend this machine has: the CPU backend once per instruction set this CPU runs
/// (the best first; `REEL_CPU_ISA` narrows it to the one it names), so every kernel path is
/// checked against the reference, and CUDA device 0. The second value says what was skipped
/// and why (`cuda: skipped: no CUDA device (...)`).
pub fn targets() -> (Vec<Target>, Vec<String>) {
    use super::cpu::{CpuBackend, Isa};
    let mut v = Vec::new();
    let isas = match std::env::var("REEL_CPU_ISA") {
        Ok(name) if !name.trim().is_empty() => match name.parse::<Isa>() {
            Ok(isa) => vec![isa],
            Err(_) => Vec::new(),
        },
        _ => Isa::available(),
    };
    for isa in isas {
        v.push(Target {
            name: format!("cpu-{isa}"),
            open: Box::new(move || {
                let mut be = CpuBackend::new();
                be.set_isa(isa)?;
                Ok(Box::new(be) as Box<dyn Backend>)
            }),
        });
    }
    let mut notes = Vec::new();
    match super::cuda::open(0) {
        Ok(be) => {
            drop(be);
            v.push(Target {
                name: "cuda:0".into(),
                open: Box::new(|| super::cuda::open(0)),
            });
        }
        Err(e) => notes.push(format!("cuda: skipped: no CUDA device ({e})")),
    }
    (v, notes)
}

/// Runs `f` with `env` set to `value` (restored afterwards).
fn with_env<R>(env: &str, value: &str, f: impl FnOnce() -> R) -> R {
    let old = std::env::var_os(env);
    std::env::set_var(env, value);
    let r = f();
    match old {
        Some(v) => std::env::set_var(env, v),
        None => std::env::remove_var(env),
    }
    r
}

/// The variant label of one selector value.
fn variant_label(v: &Variants, value: &str) -> String {
    format!("{}={value}", v.env)
}

/// One case on one backend in check mode: `(max error, bound, note)`.
fn check_one(be: &mut dyn Backend, case: &Case, dt: DType) -> (f64, String) {
    let mut cx = Ctx::new(be, dt, case.seed(dt), Mode::Check);
    let res = case.build(&mut cx).and_then(|mut b| {
        (b.run)(&mut *cx.be, 0)?;
        (b.check)(&mut *cx.be)
    });
    cx.free();
    match res {
        Ok((got, want)) => (max_error(&got, &want, case.bound.floor()), String::new()),
        Err(e) => (f64::INFINITY, format!(" ({e})")),
    }
}

/// Check mode: every checked case matching `filters` × `dtypes` × target, against the
/// reference. Prints one line per run and returns the runs over their bounds.
pub fn check(
    cases: &[Case],
    targets: &[Target],
    dtypes: &[DType],
    filters: &[String],
) -> Vec<String> {
    let mut failures = Vec::new();
    println!(
        "{:<17} {:<42} {:<5} {:<13} {:>10} {:>9}  ok",
        "op", "shape", "dtype", "backend", "max err", "bound"
    );
    for t in targets {
        let mut shared = match t.open() {
            Ok(be) => be,
            Err(e) => {
                failures.push(format!("{}: cannot open: {e}", t.name));
                continue;
            }
        };
        for case in cases.iter().filter(|c| c.checked && c.matches(filters)) {
            for &dt in dtypes {
                let bound = case.bound.value(dt);
                let mut runs = Vec::new();
                match case.variants_for(&t.name) {
                    None => runs.push((t.name.clone(), check_one(shared.as_mut(), case, dt))),
                    Some(v) => {
                        for value in &v.values {
                            let r = with_env(v.env, value, || match t.open() {
                                Ok(mut be) => check_one(be.as_mut(), case, dt),
                                Err(e) => (f64::INFINITY, format!(" (cannot open: {e})")),
                            });
                            runs.push((format!("{} {}", t.name, variant_label(v, value)), r));
                        }
                    }
                }
                for (name, (e, note)) in runs {
                    let ok = e <= bound;
                    println!(
                        "{:<17} {:<42} {:<5} {:<13} {:>10.3e} {:>9.2e}  {}{note}",
                        case.op,
                        case.shape,
                        dt.name(),
                        name,
                        e,
                        bound,
                        if ok { "ok" } else { "FAIL" }
                    );
                    if !ok {
                        failures.push(format!(
                            "{} {} {} {name}: err {e:.3e} > {bound:.2e}{note}",
                            case.op, case.shape, dt
                        ));
                    }
                }
            }
        }
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_floors_and_nan() {
        // Relative where |want| is large, absolute below 1e-3 of the largest value.
        assert_eq!(max_error(&[2.0, 0.0], &[1.0, 0.0], 1e-3), 1.0);
        let e = max_error(&[1000.0, 1e-4], &[1000.0, 0.0], 1e-3);
        assert!((e - 1e-4).abs() < 1e-9, "{e}");
        assert_eq!(max_error(&[f32::NAN], &[1.0], 1e-3), f64::INFINITY);
        assert_eq!(max_error(&[f32::NAN], &[f32::NAN], 1e-3), 0.0);
        assert_eq!(max_error(&[1.0], &[1.0, 2.0], 1e-3), f64::INFINITY);
    }

    /// A column block written through `put` and read back through `read` round-trips, and a
    /// write into its padding turns the whole read into NaN.
    #[test]
    fn padding_is_watched() {
        let mut be = crate::backend::cpu::CpuBackend::new();
        let mut cx = Ctx::new(&mut be, DType::BF16, 1, Mode::Check);
        let t = cx
            .put(&[1.0, 2.0, 3.0, 4.0], DType::BF16, &[2, 2], 3)
            .unwrap();
        assert_eq!(t.row_stride, 5);
        assert_eq!(read(cx.be, &t).unwrap(), [1.0, 2.0, 3.0, 4.0]);
        cx.be.write(t.buf, 2 * 2, &[0, 0]).unwrap();
        assert!(read(cx.be, &t).unwrap().iter().all(|v| v.is_nan()));
        cx.free();
    }

    /// Every case has a distinct name (filters and seeds rely on it) and a cost where it is
    /// timed (tests/ops.rs checks that every op of the Backend trait has cases).
    #[test]
    fn table_is_well_formed() {
        let t = cases();
        let mut names: Vec<String> = t.iter().map(|c| c.name()).collect();
        names.sort();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n, "two cases share a name");
        for c in t.iter().filter(|c| c.timed) {
            let cost = c.cost_of(DType::BF16);
            assert!(cost.bytes > 0.0, "{}: timed without a byte count", c.name());
        }
    }

    /// A case with variants runs once per value with the selector set, on a fresh backend.
    #[test]
    fn variants_set_their_selector() {
        use std::sync::{Arc, Mutex};
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let case = Case::new("add", "selector probe", Bound::Exact, move |cx| {
            s.lock()
                .unwrap()
                .push(std::env::var("REEL_HARNESS_PROBE").unwrap_or_default());
            let (a, av) = cx.input(cx.dt, &[1, 4], 1.0, 0)?;
            let o = cx.out(cx.dt, &[1, 4], 0)?;
            let dt = cx.dt;
            Ok(Built::new(
                move |be, _| be.add(a, a, o),
                move |be| Ok((read(be, &o)?, elementwise::add(&av, &av, dt))),
            ))
        })
        .variants("cpu", "REEL_HARNESS_PROBE", &["one", "two"]);
        let (t, _) = targets();
        let cpu: Vec<Target> = t.into_iter().filter(|t| t.name == "cpu-scalar").collect();
        let fails = check(&[case], &cpu, &[DType::F32], &[]);
        assert!(fails.is_empty(), "{fails:?}");
        assert_eq!(*seen.lock().unwrap(), ["one", "two"]);
        assert!(std::env::var_os("REEL_HARNESS_PROBE").is_none());
    }
}
