//! CUDA graphs and token readback.
//!
//! Capture: `capture_begin` puts the backend's stream into (thread-local) capture mode, every op
//! launched until `capture_end` is recorded instead of run, and `capture_end` instantiates the
//! graph. A graph bakes in every kernel argument, so what changes per step must live in device
//! buffers the host rewrites before each replay (token id, positions, the KV CSR tables,
//! sampling arguments); the decode kernels read kv_len from those tables and size their grids
//! for the capacity. While capturing, host copies, allocations and synchronizations are refused
//! (they would end or corrupt the capture); the caller then aborts and runs eagerly.
//!
//! Readback: a sampled token is copied into one of two pinned host slots with an event recorded
//! behind it, so the host can enqueue the next step before it waits for the previous token.

use super::{err, need, CudaBackend};
use crate::backend::{GraphId, PendingToken, TRef};
use crate::error::Result;
use crate::tensor::DType;
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaEvent, CudaGraph, CudaSlice, PinnedHostSlice};

/// Pinned slots for tokens in flight: the engine has at most two (the token it processes and
/// the one the next step is computing).
const TOKEN_SLOTS: usize = 2;

/// A captured graph the backend owns. CUDA graph objects are not internally synchronized but
/// may be used from any thread when calls are serialized, which `&mut CudaBackend` guarantees.
struct OwnedGraph(CudaGraph);

// SAFETY: see OwnedGraph; the graph is only touched through the backend's `&mut self` methods.
unsafe impl Send for OwnedGraph {}

#[derive(Default)]
pub(super) struct GraphState {
    graphs: Vec<Option<OwnedGraph>>,
    pub(super) capturing: bool,
    /// Bumped when memory a graph may reference moves (the attention scratch).
    pub(super) epoch: u64,
    slots: Vec<(PinnedHostSlice<u8>, CudaEvent)>,
    next_slot: usize,
    /// Buffers freed during a capture, released when it ends.
    pub(super) deferred_frees: Vec<CudaSlice<u8>>,
}

impl Drop for GraphState {
    fn drop(&mut self) {
        // A token copy may still be in flight (a decode that stopped on an error): the pinned
        // memory is freed right after, so wait for each slot's last copy first. PinnedHostSlice's
        // own event is never recorded with event tracking off, so its drop does not wait.
        for (_, ev) in &self.slots {
            let _ = ev.synchronize();
        }
    }
}

impl CudaBackend {
    pub(super) fn not_capturing(&self, what: &str) -> Result<()> {
        need(!self.graph.capturing, || {
            format!("{what} is not allowed while a graph is being captured")
        })
    }

    pub(super) fn g_capture_begin(&mut self) -> Result<bool> {
        self.not_capturing("capture_begin")?;
        self.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| err(format!("beginning a graph capture: {e}")))?;
        self.graph.capturing = true;
        Ok(true)
    }

    pub(super) fn g_capture_end(&mut self) -> Result<GraphId> {
        need(self.graph.capturing, || {
            "capture_end without capture_begin".into()
        })?;
        self.graph.capturing = false;
        let g = self.stream.end_capture(CUgraphInstantiate_flags(0));
        self.graph.deferred_frees.clear();
        let g = g
            .map_err(|e| err(format!("ending a graph capture: {e}")))?
            .ok_or_else(|| err("the graph capture recorded nothing"))?;
        // Moves the instantiation's one-time setup out of the first replay.
        g.upload()
            .map_err(|e| err(format!("uploading a captured graph: {e}")))?;
        self.graph.graphs.push(Some(OwnedGraph(g)));
        Ok(GraphId(self.graph.graphs.len() as u32 - 1))
    }

    pub(super) fn g_capture_abort(&mut self) {
        if self.graph.capturing {
            self.graph.capturing = false;
            // An invalidated capture reports an error here; either way it is over.
            let _ = self.stream.end_capture(CUgraphInstantiate_flags(0));
            self.graph.deferred_frees.clear();
        }
    }

    pub(super) fn g_replay(&mut self, g: GraphId) -> Result<()> {
        self.not_capturing("replay")?;
        let graph = self
            .graph
            .graphs
            .get(g.0 as usize)
            .and_then(|x| x.as_ref())
            .ok_or_else(|| err(format!("no captured graph {}", g.0)))?;
        graph
            .0
            .launch()
            .map_err(|e| err(format!("replaying graph {}: {e}", g.0)))
    }

    pub(super) fn g_drop(&mut self, g: GraphId) {
        if let Some(x) = self.graph.graphs.get_mut(g.0 as usize) {
            *x = None;
        }
    }

    pub(super) fn g_read_token_start(&mut self, t: TRef) -> Result<PendingToken> {
        self.not_capturing("read_token")?;
        need(t.dtype == DType::I32 && t.shape.numel() >= 1, || {
            format!(
                "read_token: {:?} {} is not an i32 element",
                t.shape, t.dtype
            )
        })?;
        self.ptr(&t, "read_token")?;
        let slot = self.graph.next_slot;
        self.graph.next_slot = (slot + 1) % TOKEN_SLOTS;
        while self.graph.slots.len() <= slot {
            // Flags 0: cached pinned memory. The default write-combined kind is slow to read
            // from the host, and the host reads this.
            let host = unsafe { self.ctx.alloc_pinned_with_flags::<u8>(4, 0) }
                .map_err(|e| err(format!("allocating pinned host memory: {e}")))?;
            let ev = self
                .ctx
                .new_event(None)
                .map_err(|e| err(format!("creating an event: {e}")))?;
            self.graph.slots.push((host, ev));
        }
        let b = self.bufs[t.buf.0 as usize]
            .as_ref()
            .expect("checked by ptr");
        let src = b.mem.slice(t.offset..t.offset + 4);
        let (host, ev) = &mut self.graph.slots[slot];
        self.stream
            .memcpy_dtoh(&src, host)
            .map_err(|e| err(format!("token copy to pinned memory: {e}")))?;
        // With event tracking off cudarc records nothing behind the copy; this event is what
        // the host waits on.
        ev.record(&self.stream)
            .map_err(|e| err(format!("recording the token event: {e}")))?;
        Ok(PendingToken::Slot(slot))
    }

    pub(super) fn g_read_token_wait(&mut self, p: PendingToken) -> Result<i32> {
        let s = match p {
            PendingToken::Ready(v) => return Ok(v),
            PendingToken::Slot(s) => s,
        };
        let (host, ev) = self
            .graph
            .slots
            .get(s)
            .ok_or_else(|| err(format!("read_token: no copy in flight in slot {s}")))?;
        ev.synchronize()
            .map_err(|e| err(format!("waiting for a token copy: {e}")))?;
        let v = host
            .as_slice()
            .map_err(|e| err(format!("reading pinned memory: {e}")))?;
        Ok(i32::from_le_bytes([v[0], v[1], v[2], v[3]]))
    }
}
