//! The executor: binds a planned graph to a backend's arena and runs its nodes in order.
//!
//! A graph run many times with the same shapes (the decode step) can be captured once by the
//! backend (a CUDA graph) and replayed: [`Executor::run_step`] runs one eager warm-up step,
//! captures the next, and replays from then on, re-capturing when anything the captured launches
//! point at changes (the KV pool or its page-table buffers, the backend's scratch epoch, the
//! caller's extra tensors). Per-step values must already sit in the executor's input buffers
//! and the KV tables when a step starts; the kernels read them from there.

use super::{plan, Graph, Operands, Plan, Source, ValueId};
use crate::backend::{Backend, BufId, GraphId, PagedKv, TRef};
use crate::error::{Error, Result};
use crate::tensor::DType;

/// Everything a captured step's launches depend on besides the executor's own arena.
#[derive(Clone, Debug, PartialEq)]
pub struct CaptureKey {
    /// KV pool buffer, pages, page size, and the CSR tables (indptr, indices, last_page_len).
    pub kv: Option<(BufId, usize, usize, [TRef; 3])>,
    pub epoch: u64,
    /// Tensors the caller's tail ops use.
    pub extra: Vec<TRef>,
}

impl CaptureKey {
    pub fn new(kv: Option<&PagedKv>, epoch: u64, extra: &[TRef]) -> CaptureKey {
        CaptureKey {
            kv: kv.map(|k| {
                (
                    k.layout.buf,
                    k.layout.n_pages,
                    k.layout.page_size,
                    [k.indptr, k.indices, k.last_page_len],
                )
            }),
            epoch,
            extra: extra.to_vec(),
        }
    }
}

/// What [`Executor::run_step`] does this time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepMode {
    Eager,
    /// Record the step (then replay it once to run it).
    Capture,
    Replay,
}

/// The capture decision, separate from the backend so it is testable on the host: eager when
/// graphs are off or failed before, or for the first (warm-up) step, which also sizes every
/// lazily grown buffer; replay when the captured key still matches; capture otherwise.
pub fn step_mode(
    enabled: bool,
    failed: bool,
    eager_runs: usize,
    captured: Option<&CaptureKey>,
    key: &CaptureKey,
) -> StepMode {
    if !enabled || failed || eager_runs == 0 {
        StepMode::Eager
    } else if captured == Some(key) {
        StepMode::Replay
    } else {
        StepMode::Capture
    }
}

/// `REEL_CUDA_GRAPHS=0` turns capture off (for A/B comparisons); anything else leaves it on.
pub fn graphs_enabled() -> bool {
    std::env::var("REEL_CUDA_GRAPHS").map_or(true, |v| v.trim() != "0")
}

#[derive(Debug, Default)]
struct Capture {
    graph: Option<(GraphId, CaptureKey)>,
    eager_runs: usize,
    /// The backend cannot capture, or a capture failed: stay eager.
    failed: bool,
    captures: usize,
}

pub struct Executor {
    pub graph: Graph,
    pub plan: Plan,
    arena: BufId,
    cap: Capture,
    graphs_on: bool,
}

impl Executor {
    /// Plans `graph` and allocates its arena on `be`.
    pub fn new(be: &mut dyn Backend, graph: Graph) -> Result<Executor> {
        let plan = plan(&graph);
        let arena = be.alloc(plan.arena_bytes)?;
        Ok(Executor {
            graph,
            plan,
            arena,
            cap: Capture::default(),
            graphs_on: graphs_enabled(),
        })
    }

    /// Releases the arena and any captured graph.
    pub fn free(self, be: &mut dyn Backend) {
        if let Some((g, _)) = self.cap.graph {
            be.drop_graph(g);
        }
        be.free(self.arena);
    }

    /// Overrides `REEL_CUDA_GRAPHS` for this executor.
    pub fn set_graphs(&mut self, on: bool) {
        self.graphs_on = on;
    }

    /// Whether steps are being replayed from a captured graph.
    pub fn is_captured(&self) -> bool {
        self.cap.graph.is_some()
    }

    /// How many times a step was captured (1 in a steady decode; more after invalidation).
    pub fn captures(&self) -> usize {
        self.cap.captures
    }

    /// Runs every node, then `tail` (extra ops on the same backend, e.g. sampling), as one
    /// step, captured and replayed when the backend supports it (see the module comment).
    /// `tail_uses` lists the tensors the tail touches, which the captured launches bake in.
    pub fn run_step(
        &mut self,
        be: &mut dyn Backend,
        kv: Option<&PagedKv>,
        tail_uses: &[TRef],
        tail: &mut dyn FnMut(&mut dyn Backend) -> Result<()>,
    ) -> Result<()> {
        let key = CaptureKey::new(kv, be.graph_epoch(), tail_uses);
        let mode = step_mode(
            self.graphs_on,
            self.cap.failed,
            self.cap.eager_runs,
            self.cap.graph.as_ref().map(|g| &g.1),
            &key,
        );
        match mode {
            StepMode::Replay => {
                let g = self.cap.graph.as_ref().expect("replay has a graph").0;
                be.replay(g)
            }
            StepMode::Eager => {
                self.run(be, kv)?;
                tail(be)?;
                self.cap.eager_runs += 1;
                Ok(())
            }
            StepMode::Capture => {
                if let Some((g, _)) = self.cap.graph.take() {
                    be.drop_graph(g);
                }
                if !be.capture_begin()? {
                    self.cap.failed = true;
                    return self.run_step(be, kv, tail_uses, tail);
                }
                let recorded = self.run(be, kv).and_then(|_| tail(be));
                let id = match recorded {
                    Ok(()) => be.capture_end(),
                    Err(e) => {
                        be.capture_abort();
                        Err(e)
                    }
                };
                match id {
                    Ok(id) => {
                        self.cap.graph = Some((id, key));
                        self.cap.captures += 1;
                        // Nothing recorded has run yet: this replay is the step.
                        be.replay(id)
                    }
                    Err(_) => {
                        // Something in the step cannot be captured: run it, and stay eager.
                        self.cap.failed = true;
                        self.run_step(be, kv, tail_uses, tail)
                    }
                }
            }
        }
    }

    /// The backend tensor behind a value.
    pub fn tref(&self, v: ValueId) -> TRef {
        let val = self.graph.value(v);
        let mut off = 0;
        let mut cur = v;
        loop {
            match self.graph.value(cur).src {
                Source::View { base, byte_offset } => {
                    off += byte_offset;
                    cur = base;
                }
                Source::External(t) => {
                    return TRef {
                        buf: t.buf,
                        offset: t.offset + off,
                        dtype: val.dtype,
                        shape: val.shape,
                        row_stride: val.row_stride,
                    }
                }
                Source::Arena | Source::Input => {
                    let base = self
                        .plan
                        .offset(cur)
                        .expect("arena value without an offset");
                    return TRef {
                        buf: self.arena,
                        offset: base + off,
                        dtype: val.dtype,
                        shape: val.shape,
                        row_stride: val.row_stride,
                    };
                }
            }
        }
    }

    fn named(&self, name: &str) -> Result<ValueId> {
        self.graph
            .find(name)
            .ok_or_else(|| Error::Other(format!("graph has no value named {name}")))
    }

    /// The backend tensor of a named value (an input or a kept output).
    pub fn value(&self, name: &str) -> Result<TRef> {
        Ok(self.tref(self.named(name)?))
    }

    /// Writes a host input (raw bytes in the value's dtype).
    pub fn write(&self, be: &mut dyn Backend, name: &str, bytes: &[u8]) -> Result<()> {
        let t = self.tref(self.named(name)?);
        if bytes.len() != t.span_bytes() || !t.is_contiguous() {
            return Err(Error::Other(format!(
                "input {name}: {} bytes given, {} expected",
                bytes.len(),
                t.span_bytes()
            )));
        }
        be.write(t.buf, t.offset, bytes)
    }

    pub fn write_i32(&self, be: &mut dyn Backend, name: &str, data: &[i32]) -> Result<()> {
        self.write(be, name, bytemuck::cast_slice(data))
    }

    /// Reads a kept value as f32, whatever its storage type.
    pub fn read_f32(&self, be: &mut dyn Backend, name: &str) -> Result<Vec<f32>> {
        read_f32(be, &self.tref(self.named(name)?))
    }

    /// Runs every node in order. `kv` is required by graphs with cache ops.
    pub fn run(&self, be: &mut dyn Backend, kv: Option<&PagedKv>) -> Result<()> {
        let profiling = profile::enabled();
        let mut inputs = Vec::with_capacity(8);
        for node in &self.graph.nodes {
            inputs.clear();
            inputs.extend(node.inputs.iter().map(|&v| self.tref(v)));
            let operands = Operands {
                inputs: &inputs,
                out: node.out.map(|v| self.tref(v)),
                kv,
            };
            if profiling {
                be.sync()?;
                let t = std::time::Instant::now();
                node.run(be, &operands)?;
                be.sync()?;
                profile::add(node.op, operands.out.as_ref(), t.elapsed().as_secs_f64());
            } else {
                node.run(be, &operands)?;
            }
        }
        Ok(())
    }
}

/// Per-op wall time (`REEL_PROFILE=1`): the executor synchronizes the backend around every op
/// and adds its time under the op's name and output shape; [`report`](profile::report) prints
/// the table (`reel bench` does at its end). Eager runs only: a replayed CUDA graph is one
/// launch and is not broken down.
pub mod profile {
    use crate::backend::TRef;
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    static TABLE: Mutex<Option<HashMap<String, (u64, f64)>>> = Mutex::new(None);

    pub fn enabled() -> bool {
        static ON: OnceLock<bool> = OnceLock::new();
        *ON.get_or_init(|| std::env::var("REEL_PROFILE").is_ok_and(|v| v == "1"))
    }

    pub(super) fn add(op: &str, out: Option<&TRef>, secs: f64) {
        let key = match out {
            Some(t) => format!("{op} {}", t.shape),
            None => op.to_string(),
        };
        let mut g = TABLE.lock().unwrap_or_else(|e| e.into_inner());
        let e = g.get_or_insert_with(HashMap::new).entry(key).or_default();
        e.0 += 1;
        e.1 += secs;
    }

    /// The table so far, slowest first (`None` when nothing was profiled), and clears it.
    pub fn report() -> Option<String> {
        let mut g = TABLE.lock().unwrap_or_else(|e| e.into_inner());
        let t = g.take()?;
        let total: f64 = t.values().map(|v| v.1).sum();
        let mut rows: Vec<_> = t.into_iter().collect();
        rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
        let mut s = format!(
            "{:>10} {:>6} {:>9} {:>6}  op [output shape]\n",
            "total ms", "calls", "ms/call", "share"
        );
        for (k, (n, secs)) in rows {
            s += &format!(
                "{:>10.2} {n:>6} {:>9.3} {:>5.1}%  {k}\n",
                secs * 1e3,
                secs * 1e3 / n as f64,
                100.0 * secs / total.max(1e-12)
            );
        }
        Some(s)
    }
}

/// Reads any float tensor (f32, bf16, f16; contiguous or strided rows) into f32.
pub fn read_f32(be: &mut dyn Backend, t: &TRef) -> Result<Vec<f32>> {
    let rows = t.shape.rows();
    let row = t.shape.row_len();
    let mut outv = Vec::with_capacity(t.shape.numel());
    let mut buf = vec![0u8; t.dtype.bytes_for(row)];
    for r in 0..rows {
        be.read(
            t.buf,
            t.offset + t.dtype.bytes_for(r * t.row_stride),
            &mut buf,
        )?;
        match t.dtype {
            DType::F32 => outv.extend(
                buf.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            ),
            DType::BF16 => outv.extend(
                buf.chunks_exact(2)
                    .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()),
            ),
            DType::F16 => outv.extend(
                buf.chunks_exact(2)
                    .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()),
            ),
            DType::I32 => outv.extend(
                buf.chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32),
            ),
            d => return Err(Error::Other(format!("cannot read a {d} tensor as f32"))),
        }
    }
    Ok(outv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Shape;

    fn key(kv_buf: u32, epoch: u64, extra: u32) -> CaptureKey {
        let t = |b: u32, n: usize| TRef::new(BufId(b), 0, DType::I32, Shape::new(&[n]));
        CaptureKey {
            kv: Some((BufId(kv_buf), 64, 16, [t(90, 2), t(91, 64), t(92, 1)])),
            epoch,
            extra: vec![t(extra, 8)],
        }
    }

    #[test]
    fn capture_decisions() {
        let k = key(1, 0, 5);
        // Off, failed, or the warm-up step: eager.
        assert_eq!(step_mode(false, false, 3, Some(&k), &k), StepMode::Eager);
        assert_eq!(step_mode(true, true, 3, Some(&k), &k), StepMode::Eager);
        assert_eq!(step_mode(true, false, 0, None, &k), StepMode::Eager);
        // After the warm-up: capture once, then replay while nothing moved.
        assert_eq!(step_mode(true, false, 1, None, &k), StepMode::Capture);
        assert_eq!(step_mode(true, false, 1, Some(&k), &k), StepMode::Replay);
        // A new KV pool, a moved scratch buffer, or other tail tensors: capture again.
        assert_eq!(
            step_mode(true, false, 1, Some(&k), &key(2, 0, 5)),
            StepMode::Capture
        );
        assert_eq!(
            step_mode(true, false, 1, Some(&k), &key(1, 1, 5)),
            StepMode::Capture
        );
        assert_eq!(
            step_mode(true, false, 1, Some(&k), &key(1, 0, 6)),
            StepMode::Capture
        );
        let mut bigger = k.clone();
        bigger.kv.as_mut().unwrap().1 = 128;
        assert_eq!(
            step_mode(true, false, 1, Some(&k), &bigger),
            StepMode::Capture
        );
    }
}
