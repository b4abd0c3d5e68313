//! The CPU backend: the numerical reference for every kernel and a working fallback.
//!
//! Buffers are either owned (64-byte aligned, zeroed) or borrowed host bytes (weights straight
//! from the checkpoint's memory map). Ops resolve [`TRef`]s to raw pointers; the graph planner
//! guarantees that an op's output never overlaps its inputs unless the op documents in-place use.

use super::{Backend, BufId, HostBytes, MropeParams, PagedKv, TRef};
use crate::error::{Error, Result};

enum Storage {
    Owned(Vec<Align64>),
    Host(HostBytes),
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Align64([u8; 64]);

pub struct CpuBackend {
    bufs: Vec<Option<Storage>>,
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuBackend {
    pub fn new() -> CpuBackend {
        CpuBackend { bufs: Vec::new() }
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
        if t.offset + t.span_bytes() > len {
            return Err(Error::backend(
                "cpu",
                format!(
                    "tensor {:?} at offset {} overruns buffer of {len} bytes",
                    t.shape, t.offset
                ),
            ));
        }
        Ok(unsafe { base.add(t.offset) })
    }

    fn writable(&self, t: &TRef) -> Result<*mut u8> {
        match self.storage(t.buf)? {
            Storage::Host(_) => Err(Error::backend("cpu", "write to a read-only weight buffer")),
            Storage::Owned(_) => self.ptr(t),
        }
    }
}

fn unsupported(op: &str) -> Error {
    Error::backend("cpu", format!("{op}: not implemented"))
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        "cpu".to_string()
    }

    fn load_weight(&mut self, bytes: HostBytes) -> Result<BufId> {
        self.bufs.push(Some(Storage::Host(bytes)));
        Ok(BufId(self.bufs.len() as u32 - 1))
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

    fn embedding(&mut self, _table: TRef, _ids: TRef, _out: TRef) -> Result<()> {
        Err(unsupported("embedding"))
    }
    fn rms_norm(&mut self, _x: TRef, _w: TRef, _out: TRef, _eps: f32) -> Result<()> {
        Err(unsupported("rms_norm"))
    }
    fn matmul(&mut self, _x: TRef, _w: TRef, _bias: Option<TRef>, _out: TRef) -> Result<()> {
        Err(unsupported("matmul"))
    }
    fn add(&mut self, _a: TRef, _b: TRef, _out: TRef) -> Result<()> {
        Err(unsupported("add"))
    }
    fn swiglu(&mut self, _gate: TRef, _up: TRef, _out: TRef) -> Result<()> {
        Err(unsupported("swiglu"))
    }
    fn gelu(&mut self, _x: TRef, _out: TRef) -> Result<()> {
        Err(unsupported("gelu"))
    }
    fn rope_mrope(&mut self, _x: TRef, _pos: TRef, _out: TRef, _p: MropeParams) -> Result<()> {
        Err(unsupported("rope_mrope"))
    }
    fn rope_vision(&mut self, _x: TRef, _pos: TRef, _out: TRef, _theta: f32) -> Result<()> {
        Err(unsupported("rope_vision"))
    }
    fn kv_append(&mut self, _k: TRef, _v: TRef, _kv: &PagedKv, _layer: usize) -> Result<()> {
        Err(unsupported("kv_append"))
    }
    fn attention_paged(
        &mut self,
        _q: TRef,
        _kv: &PagedKv,
        _layer: usize,
        _out: TRef,
        _scale: f32,
    ) -> Result<()> {
        Err(unsupported("attention_paged"))
    }
    fn attention_varlen(
        &mut self,
        _q: TRef,
        _k: TRef,
        _v: TRef,
        _cu: TRef,
        _out: TRef,
        _scale: f32,
    ) -> Result<()> {
        Err(unsupported("attention_varlen"))
    }
    fn gather_rows(&mut self, _x: TRef, _idx: TRef, _out: TRef) -> Result<()> {
        Err(unsupported("gather_rows"))
    }
    fn scatter_rows(&mut self, _src: TRef, _idx: TRef, _dst: TRef) -> Result<()> {
        Err(unsupported("scatter_rows"))
    }
    fn cast(&mut self, _x: TRef, _out: TRef) -> Result<()> {
        Err(unsupported("cast"))
    }
    fn argmax(&mut self, _x: TRef, _out: TRef) -> Result<()> {
        Err(unsupported("argmax"))
    }
}

#[allow(dead_code)]
impl CpuBackend {
    fn _writable(&self, t: &TRef) -> Result<*mut u8> {
        self.writable(t)
    }
}
