//! The compute interface. `model/` builds graphs of generic ops; a backend implements each op
//! and owns its memory. Nothing here knows it is running Qwen.
//!
//! Conventions every backend follows ([`check`] holds each op's contract, [`harness`] its scalar
//! reference and cases, [`sample`] the sampling definition):
//! - Tensors are row-major. A [`TRef`] may have a first-dimension stride (`row_stride`, in
//!   elements) larger than its row length, to view a column block of a wider matrix (e.g. q, k or
//!   v inside a packed qkv projection); everything below the first dimension is contiguous.
//! - Activations are `F32` or `BF16`; ops compute in f32 and round to the output type where
//!   Hugging Face transformers rounds (documented per op), so a bf16 run follows HF bf16.
//! - Weights are `BF16`, `F16`, `F32` or a quantized block type, laid out `[out, in]` as in the
//!   checkpoint.
//! - Integer inputs (token ids, positions, page tables, cu_seqlens) are `I32`.

pub mod check;
pub mod cpu;
pub mod cuda;
pub mod fused;
pub mod harness;
pub mod host;
pub mod sample;

pub use sample::{sample_hash, sample_on_host, uniform_to_u32, SampleArgs};

use crate::error::Result;
use crate::tensor::{DType, Shape};
use std::sync::Arc;

/// Which backend runs the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// CUDA when a GPU is present, else the CPU.
    Auto,
    Cpu,
    Cuda(usize),
}

/// Opens the backend a device choice names. `Cuda(i)` fails with the reason when device i
/// cannot be used; `Auto` falls back to the CPU.
pub fn open(device: Device) -> Result<Box<dyn Backend>> {
    match device {
        Device::Cpu => Ok(Box::new(cpu::CpuBackend::new())),
        Device::Cuda(i) => cuda::open(i),
        Device::Auto => Ok(cuda::open(0).unwrap_or_else(|_| Box::new(cpu::CpuBackend::new()))),
    }
}

/// A buffer owned by a backend (a weight, the activation arena, the KV pool, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BufId(pub u32);

/// A tensor inside a backend buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TRef {
    pub buf: BufId,
    /// Byte offset of element 0.
    pub offset: usize,
    pub dtype: DType,
    pub shape: Shape,
    /// Elements between the starts of consecutive first-dimension slices.
    pub row_stride: usize,
}

impl TRef {
    pub fn new(buf: BufId, offset: usize, dtype: DType, shape: Shape) -> TRef {
        TRef {
            buf,
            offset,
            dtype,
            shape,
            row_stride: shape.row_len(),
        }
    }

    pub fn is_contiguous(&self) -> bool {
        self.row_stride == self.shape.row_len() || self.shape.rows() <= 1
    }

    /// Rows `[start, start + n)` of the first dimension.
    pub fn rows(&self, start: usize, n: usize) -> TRef {
        assert!(start + n <= self.shape.rows());
        TRef {
            offset: self.offset + self.dtype.bytes_for(start * self.row_stride),
            shape: self.shape.with_rows(n),
            ..*self
        }
    }

    /// Bytes spanned from element 0 to the end of the last row.
    pub fn span_bytes(&self) -> usize {
        let rows = self.shape.rows();
        if rows == 0 {
            return 0;
        }
        self.dtype
            .bytes_for((rows - 1) * self.row_stride + self.shape.row_len())
    }
}

/// Host bytes that stay alive as long as their owner (a memory map, or an owned vector).
/// Weights reach backends this way: the CPU backend computes straight from the map, the CUDA
/// backend copies once to the device.
#[derive(Clone)]
pub struct HostBytes {
    owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
    start: usize,
    len: usize,
}

impl HostBytes {
    pub fn new(owner: Arc<dyn AsRef<[u8]> + Send + Sync>, start: usize, len: usize) -> HostBytes {
        assert!(start + len <= (*owner).as_ref().len());
        HostBytes { owner, start, len }
    }

    pub fn from_vec(v: Vec<u8>) -> HostBytes {
        let len = v.len();
        HostBytes {
            owner: Arc::new(v),
            start: 0,
            len,
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        &(*self.owner).as_ref()[self.start..self.start + self.len]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::fmt::Debug for HostBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostBytes({} bytes)", self.len)
    }
}

/// The paged KV pool: one buffer laid out `[layer][k|v][page][slot][kv_head][head_dim]` (NHD).
#[derive(Clone, Copy, Debug)]
pub struct KvLayout {
    pub buf: BufId,
    pub dtype: DType,
    pub n_layers: usize,
    pub n_pages: usize,
    pub page_size: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl KvLayout {
    pub fn page_elems(&self) -> usize {
        self.page_size * self.n_kv_heads * self.head_dim
    }
    pub fn total_bytes(&self) -> usize {
        self.dtype
            .bytes_for(self.n_layers * 2 * self.n_pages * self.page_elems())
    }
    /// Element index of (layer, k=0/v=1, page, slot, head, 0).
    pub fn elem_index(
        &self,
        layer: usize,
        kv: usize,
        page: usize,
        slot: usize,
        head: usize,
    ) -> usize {
        ((((layer * 2 + kv) * self.n_pages + page) * self.page_size + slot) * self.n_kv_heads
            + head)
            * self.head_dim
    }
}

/// A batch of sequences' views of the KV pool in FlashInfer's CSR form, and the rows of the
/// step's q / k / v / out that belong to each. All four are `I32` device tensors, read by the
/// kernels at run time, so a captured step graph stays valid as sequences grow and as the
/// batch's members change (only the sequence count B and the row count T are baked in).
///
/// - `qo_indptr` [B + 1]: rows `qo_indptr[b] .. qo_indptr[b+1]` of the step belong to sequence
///   b (`n_b` rows, possibly 0); it rises from 0 to T (the rows of q). B = 1 with `[0, T]` is
///   the single-sequence case.
/// - `indptr` [>= B + 1], `indices`: sequence b owns pages `indices[indptr[b]..indptr[b+1]]`
///   in token order (pages may be shared between sequences: see `kv::PagePool`).
/// - `last_page_len` [>= B]: tokens on sequence b's last page, so
///   `kv_len_b = (pages - 1) * page_size + last_page_len[b]` (0 without pages).
///
/// Sequence b's rows are its LAST `n_b` tokens: row `qo_indptr[b] + i` sits at position
/// `kv_len_b - n_b + i` (`n_b <= kv_len_b`): `kv_append` writes it there and
/// `attention_paged` lets it see positions `0 ..= kv_len_b - n_b + i` of sequence b only.
/// Every row's result depends on its own q and its own sequence's cache alone (never on the
/// other rows, B or T), which is what makes batched decoding exact on the CPU.
#[derive(Clone, Copy, Debug)]
pub struct PagedKv {
    pub layout: KvLayout,
    pub qo_indptr: TRef,
    pub indptr: TRef,
    pub indices: TRef,
    pub last_page_len: TRef,
}

impl PagedKv {
    /// Sequences in the step (`qo_indptr` entries - 1).
    pub fn batch(&self) -> usize {
        self.qo_indptr.shape.numel().saturating_sub(1)
    }
}

/// M-RoPE parameters: the inverse frequencies `theta^(-2i/head_dim)` are split into three
/// contiguous sections (temporal, height, width) of `sections[k]` pairs each; section k rotates
/// with position row k.
#[derive(Clone, Copy, Debug)]
pub struct MropeParams {
    pub theta: f32,
    pub sections: [usize; 3],
}

/// What [`Backend::matmul_fused`] applies to `y = round(x @ w^T + bias)` (rounded to the
/// output type) before the store. Each variant is exactly the unfused op sequence
/// (`matmul`, then the elementwise op), rounding where that sequence rounds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Epilogue {
    /// `out = y`.
    None,
    /// `out = round(gelu(y))`, exact erf ([`Backend::gelu`]).
    Gelu,
    /// w is `[gate rows F; up rows F]` (`[2F, K]`, bias `[2F]` likewise) and out is `[M, F]`:
    /// `out = round(round(silu(y[:, :F])) * y[:, F:])` ([`Backend::swiglu`]).
    SwiGlu,
    /// `out = round(y + res)` with res `[M, N]` ([`Backend::add`]); res must not overlap out.
    Add(TRef),
}

/// Device memory a backend has allocated through its buffer table, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemStats {
    pub current_bytes: u64,
    /// High-water mark since the backend was opened.
    pub peak_bytes: u64,
}

/// A captured graph (see [`Backend::capture_begin`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GraphId(pub u32);

/// A one-element I32 read in flight ([`Backend::read_token_start`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PendingToken {
    /// Already on the host (backends without asynchronous copies).
    Ready(i32),
    /// In flight into the backend's host staging slot.
    Slot(usize),
}

/// The backend interface. Each op method validates its operands against the op's contract
/// ([`check`]) and returns an error rather than panicking. An op method may have a default
/// body that runs the op's reference on the host ([`host`], as `sample` does), which every
/// backend inherits until it implements the op itself.
pub trait Backend: Send {
    /// Human-readable name, e.g. `cpu (8 threads, avx2)` or `cuda:0 NVIDIA H100`.
    fn name(&self) -> String;

    /// The multiply-add peak measured on this machine, TFLOP/s, and what was measured (the CPU
    /// backend: its widest multiply-add on all its threads); `None` where the datasheet serves.
    fn measured_compute_peak(&self) -> Option<(f64, String)> {
        None
    }

    /// The int8 dot peak measured on this machine, TOP/s, and what was measured (the CPU
    /// backend on AVX-512: `vpdpbusd`, the quantized weights' dot); `None` elsewhere.
    fn measured_int8_peak(&self) -> Option<(f64, String)> {
        None
    }

    /// Device memory in use and its peak, for backends that own device memory (None on the
    /// CPU, whose weights are borrowed host bytes: see the process's peak RSS instead).
    fn memory_stats(&self) -> Option<MemStats> {
        None
    }

    // ---- memory ----
    /// Makes weight bytes available to ops. The CPU backend keeps the host bytes (zero copy);
    /// device backends copy them once.
    fn load_weight(&mut self, bytes: HostBytes) -> Result<BufId>;
    /// Says that `w`, a tensor of a [`Backend::load_weight`] buffer, is the weight of matmuls: a
    /// backend may keep a copy in the layout its kernels read fastest (the CPU interleaves
    /// K-quant rows for its AVX-512 GEMV). Other ops still see the bytes as loaded.
    fn prepare_matmul_weight(&mut self, _w: &TRef) -> Result<()> {
        Ok(())
    }
    /// A zeroed buffer of `bytes` bytes.
    fn alloc(&mut self, bytes: usize) -> Result<BufId>;
    fn free(&mut self, buf: BufId);
    fn write(&mut self, buf: BufId, offset: usize, data: &[u8]) -> Result<()>;
    fn read(&mut self, buf: BufId, offset: usize, out: &mut [u8]) -> Result<()>;
    /// Waits for all queued work.
    fn sync(&mut self) -> Result<()>;

    // ---- ops ----
    /// `out[t, :] = table[ids[t], :]`; table [V, D] (any weight type), ids [T] I32, out [T, D].
    fn embedding(&mut self, table: TRef, ids: TRef, out: TRef) -> Result<()>;
    /// Qwen2RMSNorm over the last dimension: `h = x * rsqrt(mean(x^2) + eps)` in f32, rounded to
    /// the output type, then `out = round(w * h)`.
    fn rms_norm(&mut self, x: TRef, w: TRef, out: TRef, eps: f32) -> Result<()>;
    /// `out[M, N] = x[M, K] @ w[N, K]^T (+ bias[N])`, f32 accumulation, rounded once.
    fn matmul(&mut self, x: TRef, w: TRef, bias: Option<TRef>, out: TRef) -> Result<()>;
    /// `matmul` followed by an elementwise epilogue in one op (see [`Epilogue`]); backends with
    /// GEMM epilogues run it as one kernel. The default is the op sequence itself.
    fn matmul_fused(
        &mut self,
        x: TRef,
        w: TRef,
        bias: Option<TRef>,
        epi: Epilogue,
        out: TRef,
    ) -> Result<()> {
        fused::matmul_fused_composed(self, x, w, bias, epi, out)
    }
    /// `out = round(a + b)`, same shapes.
    fn add(&mut self, a: TRef, b: TRef, out: TRef) -> Result<()>;
    /// `out = round(round(silu(gate)) * up)`.
    fn swiglu(&mut self, gate: TRef, up: TRef, out: TRef) -> Result<()>;
    /// Exact GELU, `0.5 x (1 + erf(x / sqrt 2))`, rounded once.
    fn gelu(&mut self, x: TRef, out: TRef) -> Result<()>;
    /// Multimodal rotary embedding (NeoX half-split) on x [T, H, d] with positions [3, T] I32.
    /// cos/sin are computed in f32 from `f32(pos) * inv_freq` and rounded to the output type;
    /// then `out = round(round(x * cos) + round(rotate_half(x) * sin))`.
    fn rope_mrope(&mut self, x: TRef, pos: TRef, out: TRef, p: MropeParams) -> Result<()>;
    /// Vision 2-D rotary embedding on x [N, H, d] with positions [N, 2] I32 (row, col): the first
    /// d/4 frequency pairs rotate with the row, the next d/4 with the column, both ladders
    /// `theta^(-2k/(d/2))`; computed in f32 and rounded once.
    fn rope_vision(&mut self, x: TRef, pos: TRef, out: TRef, theta: f32) -> Result<()>;
    /// Writes k, v [T, Hkv, d] into the pool: row `qo_indptr[b] + i` of sequence b goes to its
    /// position `kv_len_b - n_b + i` (see [`PagedKv`]).
    fn kv_append(&mut self, k: TRef, v: TRef, kv: &PagedKv, layer: usize) -> Result<()>;
    /// Causal GQA attention of q [T, Hq, d] over the paged cache, scale applied to q·k,
    /// softmax in f32; out [T, Hq, d]. Row `qo_indptr[b] + i` (sequence b's token at position
    /// `p = kv_len_b - n_b + i`) attends to positions `0 ..= p` of sequence b only (see
    /// [`PagedKv`]); q head h reads KV head `h / (Hq / Hkv)`. A row's output depends on nothing
    /// but its own q and its sequence's keys and values: the same bits alone or in any batch on
    /// the CPU; kernels that split the key range (decode on CUDA) may differ in rounding.
    fn attention_paged(
        &mut self,
        q: TRef,
        kv: &PagedKv,
        layer: usize,
        out: TRef,
        scale: f32,
    ) -> Result<()>;
    /// Non-causal attention within segments `[cu[s], cu[s+1])` of q, k, v [N, H, d];
    /// cu_seqlens [S+1] I32; out [N, H, d].
    fn attention_varlen(
        &mut self,
        q: TRef,
        k: TRef,
        v: TRef,
        cu_seqlens: TRef,
        out: TRef,
        scale: f32,
    ) -> Result<()>;
    /// `out[i, :] = x[idx[i], :]`.
    fn gather_rows(&mut self, x: TRef, idx: TRef, out: TRef) -> Result<()>;
    /// `dst[idx[i], :] = src[i, :]` (in place on dst).
    fn scatter_rows(&mut self, src: TRef, idx: TRef, dst: TRef) -> Result<()>;
    /// Element type conversion, same shape.
    fn cast(&mut self, x: TRef, out: TRef) -> Result<()>;
    /// Index of the maximum of each row of x [R, N] into out [R] I32; ties go to the lowest index.
    fn argmax(&mut self, x: TRef, out: TRef) -> Result<()>;

    /// Draws one token per row of logits [R, V] (f32, bf16 or f16) into out [R] I32, with the
    /// arguments read from `args`: I32 `[R, WORDS]` gives row r its own arguments (its own
    /// temperature, top-k, top-p, seed and step, so sequences of a batch sample independently);
    /// I32 `[WORDS]` (or any other shape of exactly `WORDS` elements) is one set for every row,
    /// each row making the same draw. `WORDS` = [`SampleArgs::WORDS`], see [`SampleArgs`]. The result is exactly [`sample::sample_row`] on every backend
    /// (integer weights make it independent of summation order); -1 marks a row that cannot
    /// be sampled (a NaN, +inf after temperature, no finite logit).
    ///
    /// The default reads the logits back and samples on the host.
    fn sample(&mut self, logits: TRef, args: TRef, out: TRef) -> Result<()> {
        sample_on_host(self, logits, args, out)
    }

    // ---- graph capture (CUDA graphs); the defaults mean "unsupported, run eagerly" ----
    /// Starts recording the ops that follow instead of running them. `Ok(false)`: this backend
    /// cannot capture, and the caller runs the ops eagerly.
    fn capture_begin(&mut self) -> Result<bool> {
        Ok(false)
    }
    /// Ends a recording begun by `capture_begin` and returns the graph; nothing recorded has
    /// run yet.
    fn capture_end(&mut self) -> Result<GraphId> {
        Err(crate::Error::Other(format!(
            "{}: graph capture is not supported",
            self.name()
        )))
    }
    /// Ends a failed recording and discards it.
    fn capture_abort(&mut self) {}
    /// Runs a captured graph once (in stream order with everything else).
    fn replay(&mut self, g: GraphId) -> Result<()> {
        Err(crate::Error::Other(format!(
            "{}: no captured graph {}",
            self.name(),
            g.0
        )))
    }
    fn drop_graph(&mut self, _g: GraphId) {}
    /// Changes whenever memory that captured graphs may reference (internal scratch) moved:
    /// graphs captured under another epoch must be captured again.
    fn graph_epoch(&self) -> u64 {
        0
    }

    // ---- token readback ----
    /// Starts copying the I32 element `t` (a sampled token) to the host; the value comes from
    /// `read_token_wait`. The default reads synchronously.
    fn read_token_start(&mut self, t: TRef) -> Result<PendingToken> {
        let mut b = [0u8; 4];
        if t.dtype != DType::I32 {
            return Err(crate::Error::Other(format!(
                "read_token: {} tensor, not i32",
                t.dtype
            )));
        }
        self.read(t.buf, t.offset, &mut b)?;
        Ok(PendingToken::Ready(i32::from_le_bytes(b)))
    }
    /// Waits for a copy begun by `read_token_start`.
    fn read_token_wait(&mut self, p: PendingToken) -> Result<i32> {
        match p {
            PendingToken::Ready(v) => Ok(v),
            PendingToken::Slot(s) => Err(crate::Error::Other(format!(
                "read_token: no copy in flight in slot {s}"
            ))),
        }
    }
}
