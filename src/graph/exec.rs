//! The executor: binds a planned graph to a backend's arena and runs its nodes in order.

use super::{plan, Graph, Op, Plan, Source, ValueId};
use crate::backend::{Backend, BufId, PagedKv, TRef};
use crate::error::{Error, Result};
use crate::tensor::DType;

pub struct Executor {
    pub graph: Graph,
    pub plan: Plan,
    arena: BufId,
}

impl Executor {
    /// Plans `graph` and allocates its arena on `be`.
    pub fn new(be: &mut dyn Backend, graph: Graph) -> Result<Executor> {
        let plan = plan(&graph);
        let arena = be.alloc(plan.arena_bytes)?;
        Ok(Executor { graph, plan, arena })
    }

    /// Releases the arena.
    pub fn free(self, be: &mut dyn Backend) {
        be.free(self.arena);
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
        let need_kv =
            || kv.ok_or_else(|| Error::Other("graph uses the KV cache but none was given".into()));
        for node in &self.graph.nodes {
            let t = |v: ValueId| self.tref(v);
            let out = node.out.map(t);
            let o = || out.expect("op without output");
            match node.op {
                Op::Embedding { table, ids } => be.embedding(t(table), t(ids), o())?,
                Op::RmsNorm { x, w, eps } => be.rms_norm(t(x), t(w), o(), eps)?,
                Op::MatMul { x, w, bias } => be.matmul(t(x), t(w), bias.map(t), o())?,
                Op::Add { a, b } => be.add(t(a), t(b), o())?,
                Op::SwiGlu { gate, up } => be.swiglu(t(gate), t(up), o())?,
                Op::Gelu { x } => be.gelu(t(x), o())?,
                Op::RopeMrope { x, pos, p } => be.rope_mrope(t(x), t(pos), o(), p)?,
                Op::RopeVision { x, pos, theta } => be.rope_vision(t(x), t(pos), o(), theta)?,
                Op::KvAppend { k, v, layer } => be.kv_append(t(k), t(v), need_kv()?, layer)?,
                Op::AttentionPaged { q, layer, scale } => {
                    be.attention_paged(t(q), need_kv()?, layer, o(), scale)?
                }
                Op::AttentionVarlen {
                    q,
                    k,
                    v,
                    cu_seqlens,
                    scale,
                } => be.attention_varlen(t(q), t(k), t(v), t(cu_seqlens), o(), scale)?,
                Op::GatherRows { x, idx } => be.gather_rows(t(x), t(idx), o())?,
                Op::ScatterRows { src, idx, dst } => be.scatter_rows(t(src), t(idx), t(dst))?,
                Op::Cast { x } => be.cast(t(x), o())?,
                Op::Argmax { x } => be.argmax(t(x), o())?,
            }
        }
        Ok(())
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
