//! The CPU backend: the numerical reference for every kernel and a working fallback.
//!
//! Buffers are either owned (64-byte aligned, zeroed) or borrowed host bytes (weights straight
//! from the checkpoint's memory map). Ops resolve [`TRef`]s to raw pointers; the graph planner
//! guarantees that an op's output never overlaps its inputs unless the op documents in-place use
//! (row-wise elementwise ops also tolerate `out == input`, because each row is read before it is
//! written).
//!
//! Layout: `elementwise.rs` (add, swiglu, gelu, cast, embedding, gather/scatter, argmax),
//! `norm.rs`, `matmul.rs` (operand checks and the choice of path) and `gemm/` (threaded
//! GEMV/GEMM per instruction set, float and quantized weights), `isa.rs` (which instruction set:
//! AVX-512, AVX2 or scalar, `REEL_CPU_ISA`), `rope.rs`, `attention.rs`, `simd.rs` (element
//! conversions, bf16 rounding). The scalar references that every backend, this one included, is
//! checked against are in `backend::harness`, sharing no code with these paths. Operand checks
//! are each op's contract in `backend::check`; sampling runs on the host with `backend::sample`.
//!
//! Threads: ops run on rayon; [`CpuBackend::with_threads`] gives the backend its own pool,
//! otherwise rayon's global pool is used (sized by `RAYON_NUM_THREADS`).

mod attention;
mod elementwise;
pub(crate) mod gemm;
pub mod isa;
mod matmul;
mod norm;
mod rope;
pub mod simd;

use super::{Backend, BufId, Epilogue, HostBytes, MropeParams, PagedKv, TRef};
use crate::error::{Error, Result};
use crate::tensor::DType;
pub use isa::Isa;
use std::sync::Arc;

enum Storage {
    Owned(Vec<Align64>),
    Host(HostBytes),
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Align64([u8; 64]);

pub struct CpuBackend {
    bufs: Vec<Option<Storage>>,
    /// Interleaved copies of K-quant matmul weights (`gemm::x16`), by buffer.
    x16: std::collections::HashMap<u32, gemm::x16::X16>,
    /// bf16 matmul weights packed into the large-M GEMM's panels (`gemm::Panels`), by buffer.
    panels: std::collections::HashMap<u32, gemm::Panels>,
    /// Bytes the panels and interleaved copies may still take: they are a second copy of the
    /// weights, kept while it fits in half the memory available when the first was made.
    panel_budget: Option<usize>,
    /// Whether [`Backend::prepare_matmul_weight`] makes these copies (`REEL_CPU_REPACK=0`: no).
    repack: bool,
    pool: Option<Arc<rayon::ThreadPool>>,
    isa: Isa,
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

/// A raw pointer that may cross rayon's thread boundary; the op that makes one guarantees the
/// disjointness of what each task writes.
#[derive(Clone, Copy)]
pub(crate) struct SPtr(pub *mut u8);
unsafe impl Send for SPtr {}
unsafe impl Sync for SPtr {}

impl SPtr {
    /// The pointer (a method, so closures capture the `Send` wrapper, not the raw field).
    #[inline]
    pub fn get(self) -> *mut u8 {
        self.0
    }
}

/// A resolved, bounds-checked tensor: `rows` first-dimension slices of `row_len` contiguous
/// elements, `stride` elements apart.
#[derive(Clone, Copy)]
pub(crate) struct View {
    pub p: SPtr,
    pub dt: DType,
    pub rows: usize,
    pub row_len: usize,
    pub stride: usize,
}

impl View {
    /// Pointer to element `e` of row `r` (plain, non-block types only).
    #[inline]
    pub unsafe fn at(&self, r: usize, e: usize) -> *mut u8 {
        self.p.0.add(self.dt.bytes_for(r * self.stride + e))
    }

    /// Rows `r0..r0 + rows` as a view of their own.
    pub fn rows_from(&self, r0: usize, rows: usize) -> View {
        debug_assert!(r0 + rows <= self.rows);
        View {
            p: SPtr(unsafe { self.at(r0, 0) }),
            rows,
            ..*self
        }
    }
}

pub(crate) fn op_err(op: &str, msg: impl std::fmt::Display) -> Error {
    Error::backend("cpu", format!("{op}: {msg}"))
}

impl CpuBackend {
    /// A backend on rayon's global pool, with the best instruction set the CPU has (or the one
    /// `REEL_CPU_ISA` names, see [`isa::selected`]).
    pub fn new() -> CpuBackend {
        CpuBackend {
            bufs: Vec::new(),
            x16: Default::default(),
            panels: Default::default(),
            panel_budget: None,
            repack: std::env::var("REEL_CPU_REPACK").map_or(true, |v| v != "0"),
            pool: None,
            isa: isa::selected(),
        }
    }

    /// A backend with its own pool of `threads` threads.
    pub fn with_threads(threads: usize) -> Result<CpuBackend> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| Error::backend("cpu", format!("cannot start {threads} threads: {e}")))?;
        Ok(CpuBackend {
            pool: Some(Arc::new(pool)),
            ..CpuBackend::new()
        })
    }

    /// Turns the SIMD paths off (the portable scalar fast paths remain) or back on (the best
    /// instruction set); for tests and comparisons.
    pub fn set_simd(&mut self, on: bool) {
        self.isa = if on { Isa::best() } else { Isa::Scalar };
    }

    pub fn simd_enabled(&self) -> bool {
        self.isa.simd()
    }

    /// Runs the kernels of `isa`; an error if this CPU lacks it.
    pub fn set_isa(&mut self, isa: Isa) -> Result<()> {
        if !isa.supported() {
            return Err(Error::backend(
                "cpu",
                format!("this CPU cannot run the {isa} kernels"),
            ));
        }
        self.isa = isa;
        Ok(())
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn threads(&self) -> usize {
        match &self.pool {
            Some(p) => p.current_num_threads(),
            None => rayon::current_num_threads(),
        }
    }

    fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(p) => p.install(f),
            None => f(),
        }
    }

    fn storage(&self, id: BufId) -> Result<&Storage> {
        self.bufs
            .get(id.0 as usize)
            .and_then(|s| s.as_ref())
            .ok_or_else(|| Error::backend("cpu", format!("unknown buffer {}", id.0)))
    }

    fn bytes_len(s: &Storage) -> usize {
        match s {
            Storage::Owned(v) => v.len() * 64,
            Storage::Host(h) => h.len(),
        }
    }

    /// Base pointer and length of a buffer.
    fn base(&self, id: BufId) -> Result<(*mut u8, usize)> {
        let s = self.storage(id)?;
        Ok(match s {
            Storage::Owned(v) => (v.as_ptr() as *mut u8, v.len() * 64),
            Storage::Host(h) => (h.as_slice().as_ptr() as *mut u8, h.len()),
        })
    }

    /// Pointer to a tensor's first element, after checking it lies inside its buffer.
    pub(crate) fn ptr(&self, t: &TRef) -> Result<*mut u8> {
        let (base, len) = self.base(t.buf)?;
        if t.shape.rows() > 1 && t.row_stride < t.shape.row_len() {
            return Err(Error::backend(
                "cpu",
                format!(
                    "tensor {:?}: row stride {} < row length {}",
                    t.shape,
                    t.row_stride,
                    t.shape.row_len()
                ),
            ));
        }
        if t.offset + t.span_bytes() > len {
            return Err(Error::backend(
                "cpu",
                format!(
                    "tensor {:?} at offset {} overruns buffer of {len} bytes",
                    t.shape, t.offset
                ),
            ));
        }
        let p = unsafe { base.add(t.offset) };
        let align = if t.dtype.is_quantized() {
            1
        } else {
            t.dtype.block_bytes()
        };
        if !(p as usize).is_multiple_of(align) {
            return Err(Error::backend(
                "cpu",
                format!(
                    "{} tensor {:?} at offset {} is not {align}-byte aligned",
                    t.dtype, t.shape, t.offset
                ),
            ));
        }
        Ok(p)
    }

    fn writable(&self, t: &TRef) -> Result<*mut u8> {
        match self.storage(t.buf)? {
            Storage::Host(_) => Err(Error::backend("cpu", "write to a read-only weight buffer")),
            Storage::Owned(_) => self.ptr(t),
        }
    }

    pub(crate) fn view(&self, t: &TRef) -> Result<View> {
        Ok(View {
            p: SPtr(self.ptr(t)?),
            dt: t.dtype,
            rows: t.shape.rows(),
            row_len: t.shape.row_len(),
            stride: t.row_stride,
        })
    }

    pub(crate) fn view_mut(&self, t: &TRef) -> Result<View> {
        Ok(View {
            p: SPtr(self.writable(t)?),
            ..self.view(t)?
        })
    }

    /// Reads a small I32 tensor (ids, positions, page tables) into a vector, row by row.
    pub(crate) fn read_i32(&self, op: &str, name: &str, t: &TRef) -> Result<Vec<i32>> {
        // The op's check has seen to the type; the reads below rely on it.
        if t.dtype != DType::I32 {
            return Err(op_err(op, format!("{name} must be i32, got {}", t.dtype)));
        }
        let v = self.view(t)?;
        let mut out = Vec::with_capacity(v.rows * v.row_len);
        for r in 0..v.rows {
            let p = unsafe { v.at(r, 0) } as *const i32;
            out.extend_from_slice(unsafe { std::slice::from_raw_parts(p, v.row_len) });
        }
        Ok(out)
    }
}

/// `MemAvailable` of /proc/meminfo in bytes (Linux), else `None`.
fn mem_available() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        format!("cpu ({} threads, {})", self.threads(), self.isa.describe())
    }

    fn load_weight(&mut self, bytes: HostBytes) -> Result<BufId> {
        self.bufs.push(Some(Storage::Host(bytes)));
        Ok(BufId(self.bufs.len() as u32 - 1))
    }

    fn measured_compute_peak(&self) -> Option<(f64, String)> {
        let isa = self.isa;
        let (tf, what) = self.install(|| super::harness::perf::host_compute_peak(isa))?;
        Some((tf, format!("measured {what}, {} threads", self.threads())))
    }

    fn measured_int8_peak(&self) -> Option<(f64, String)> {
        let isa = self.isa;
        let (t, what) = self.install(|| super::harness::perf::host_int8_peak(isa))?;
        Some((t, format!("measured {what}, {} threads", self.threads())))
    }

    fn prepare_matmul_weight(&mut self, w: &TRef) -> Result<()> {
        // The interleaved GEMV is AVX-512's; the layout is only worth its memory there.
        if !self.repack || !self.isa.avx512() || w.shape.rank() != 2 || w.offset != 0 {
            return Ok(());
        }
        let (n, k) = (w.shape.rows(), w.shape.row_len());
        let budget = *self
            .panel_budget
            .get_or_insert_with(|| mem_available().unwrap_or(0) / 2);
        if w.dtype.bytes_for(n * k) > budget {
            return Ok(());
        }
        #[cfg(target_arch = "x86_64")]
        if w.dtype == DType::BF16 && isa::has_bf16_dot(self.isa) {
            let v = self.view(w)?;
            if let Some(p) = self.install(|| gemm::prepack(&v, n, k)) {
                self.panel_budget = Some(budget - p.bytes().min(budget));
                self.panels.insert(w.buf.0, p);
            }
            return Ok(());
        }
        let p = self.ptr(w)?;
        let bytes = unsafe { std::slice::from_raw_parts(p, w.dtype.bytes_for(n * k)) };
        let (s, dt) = (&*self, w.dtype);
        if let Some(x) = s.install(|| gemm::x16::interleave(dt, bytes, n, k)) {
            self.panel_budget = Some(budget - x.bytes().min(budget));
            self.x16.insert(w.buf.0, x);
        }
        Ok(())
    }

    fn alloc(&mut self, bytes: usize) -> Result<BufId> {
        let n = bytes.div_ceil(64).max(1);
        let mut v = Vec::new();
        v.try_reserve_exact(n)
            .map_err(|_| Error::backend("cpu", format!("cannot allocate {bytes} bytes")))?;
        v.resize(n, Align64([0; 64]));
        self.bufs.push(Some(Storage::Owned(v)));
        Ok(BufId(self.bufs.len() as u32 - 1))
    }

    fn free(&mut self, buf: BufId) {
        if let Some(s) = self.bufs.get_mut(buf.0 as usize) {
            *s = None;
        }
        let freed = self.panels.remove(&buf.0).map_or(0, |p| p.bytes())
            + self.x16.remove(&buf.0).map_or(0, |x| x.bytes());
        if let Some(b) = &mut self.panel_budget {
            *b += freed;
        }
    }

    fn write(&mut self, buf: BufId, offset: usize, data: &[u8]) -> Result<()> {
        let s = self.storage(buf)?;
        if matches!(s, Storage::Host(_)) {
            return Err(Error::backend("cpu", "write to a read-only weight buffer"));
        }
        let len = Self::bytes_len(s);
        if offset + data.len() > len {
            return Err(Error::backend("cpu", "write past the end of a buffer"));
        }
        let (base, _) = self.base(buf)?;
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), base.add(offset), data.len()) };
        Ok(())
    }

    fn read(&mut self, buf: BufId, offset: usize, out: &mut [u8]) -> Result<()> {
        let (base, len) = self.base(buf)?;
        if offset + out.len() > len {
            return Err(Error::backend("cpu", "read past the end of a buffer"));
        }
        unsafe { std::ptr::copy_nonoverlapping(base.add(offset), out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        Ok(())
    }

    fn embedding(&mut self, table: TRef, ids: TRef, out: TRef) -> Result<()> {
        elementwise::embedding(self, table, ids, out)
    }
    fn rms_norm(&mut self, x: TRef, w: TRef, out: TRef, eps: f32) -> Result<()> {
        let s = &*self;
        s.install(|| norm::rms_norm(s, x, w, out, eps))
    }
    fn matmul(&mut self, x: TRef, w: TRef, bias: Option<TRef>, out: TRef) -> Result<()> {
        let (s, isa) = (&*self, self.isa);
        s.install(|| matmul::matmul(s, x, w, bias, out, isa))
    }
    fn matmul_fused(
        &mut self,
        x: TRef,
        w: TRef,
        bias: Option<TRef>,
        epi: Epilogue,
        out: TRef,
    ) -> Result<()> {
        if epi == Epilogue::SwiGlu {
            return crate::backend::fused::matmul_fused_composed(self, x, w, bias, epi, out);
        }
        let (s, isa) = (&*self, self.isa);
        s.install(|| matmul::matmul_fused(s, x, w, bias, epi, out, isa))
    }
    fn add(&mut self, a: TRef, b: TRef, out: TRef) -> Result<()> {
        let s = &*self;
        s.install(|| elementwise::add(s, a, b, out))
    }
    fn swiglu(&mut self, gate: TRef, up: TRef, out: TRef) -> Result<()> {
        let s = &*self;
        s.install(|| elementwise::swiglu(s, gate, up, out))
    }
    fn gelu(&mut self, x: TRef, out: TRef) -> Result<()> {
        let s = &*self;
        s.install(|| elementwise::gelu(s, x, out))
    }
    fn rope_mrope(&mut self, x: TRef, pos: TRef, out: TRef, p: MropeParams) -> Result<()> {
        let s = &*self;
        s.install(|| rope::mrope(s, x, pos, out, p))
    }
    fn rope_vision(&mut self, x: TRef, pos: TRef, out: TRef, theta: f32) -> Result<()> {
        let s = &*self;
        s.install(|| rope::vision(s, x, pos, out, theta))
    }
    fn kv_append(&mut self, k: TRef, v: TRef, kv: &PagedKv, layer: usize) -> Result<()> {
        attention::kv_append(self, k, v, kv, layer)
    }
    fn attention_paged(
        &mut self,
        q: TRef,
        kv: &PagedKv,
        layer: usize,
        out: TRef,
        scale: f32,
    ) -> Result<()> {
        let s = &*self;
        s.install(|| attention::paged(s, q, kv, layer, out, scale))
    }
    fn attention_varlen(
        &mut self,
        q: TRef,
        k: TRef,
        v: TRef,
        cu: TRef,
        out: TRef,
        scale: f32,
    ) -> Result<()> {
        let (s, simd) = (&*self, self.isa.simd());
        s.install(|| attention::varlen(s, q, k, v, cu, out, scale, simd))
    }
    fn gather_rows(&mut self, x: TRef, idx: TRef, out: TRef) -> Result<()> {
        elementwise::gather_rows(self, x, idx, out)
    }
    fn scatter_rows(&mut self, src: TRef, idx: TRef, dst: TRef) -> Result<()> {
        elementwise::scatter_rows(self, src, idx, dst)
    }
    fn cast(&mut self, x: TRef, out: TRef) -> Result<()> {
        let s = &*self;
        s.install(|| elementwise::cast(s, x, out))
    }
    fn argmax(&mut self, x: TRef, out: TRef) -> Result<()> {
        let s = &*self;
        s.install(|| elementwise::argmax(s, x, out))
    }
    fn sample(&mut self, logits: TRef, args: TRef, out: TRef) -> Result<()> {
        // The host is where the definition lives: read, sample, write.
        super::sample_on_host(self, logits, args, out)
    }
}
