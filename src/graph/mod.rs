//! Graphs of generic ops, the arena planner and the executor.
//!
//! A [`Graph`] is built once per shape (a prefill of T tokens, or the decode step) with every
//! shape known up front. [`plan`] gives each intermediate an offset in one arena, reusing memory
//! whose lifetime has ended; [`Executor`] binds the plan to a backend and runs the nodes in
//! order.

mod exec;
mod plan;

pub use exec::Executor;
pub use plan::{plan, Plan};

use crate::backend::{MropeParams, TRef};
use crate::tensor::{DType, Shape};

/// A value (tensor) of a graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);

/// Where a value's memory comes from.
#[derive(Clone, Copy, Debug)]
pub enum Source {
    /// An intermediate placed in the arena by the planner.
    Arena,
    /// An arena value the host writes before each run (token ids, positions, ...).
    Input,
    /// A tensor the graph does not own: a weight, the KV page table, another graph's output.
    External(TRef),
    /// A window onto another value's memory (rows, a column block, a reshape).
    View { base: ValueId, byte_offset: usize },
}

#[derive(Clone, Debug)]
pub struct Value {
    pub shape: Shape,
    pub dtype: DType,
    /// Elements between consecutive first-dimension slices.
    pub row_stride: usize,
    pub src: Source,
    pub name: Option<String>,
    /// Kept alive to the end of the run so the host can read it.
    pub keep: bool,
}

/// One op. Inputs and outputs are values; ops on the KV cache name their layer.
#[derive(Clone, Debug)]
pub enum Op {
    Embedding {
        table: ValueId,
        ids: ValueId,
    },
    RmsNorm {
        x: ValueId,
        w: ValueId,
        eps: f32,
    },
    MatMul {
        x: ValueId,
        w: ValueId,
        bias: Option<ValueId>,
    },
    Add {
        a: ValueId,
        b: ValueId,
    },
    SwiGlu {
        gate: ValueId,
        up: ValueId,
    },
    Gelu {
        x: ValueId,
    },
    RopeMrope {
        x: ValueId,
        pos: ValueId,
        p: MropeParams,
    },
    RopeVision {
        x: ValueId,
        pos: ValueId,
        theta: f32,
    },
    KvAppend {
        k: ValueId,
        v: ValueId,
        layer: usize,
    },
    AttentionPaged {
        q: ValueId,
        layer: usize,
        scale: f32,
    },
    AttentionVarlen {
        q: ValueId,
        k: ValueId,
        v: ValueId,
        cu_seqlens: ValueId,
        scale: f32,
    },
    GatherRows {
        x: ValueId,
        idx: ValueId,
    },
    /// Writes `src` rows into `dst` in place; `dst` must be an arena value defined earlier.
    ScatterRows {
        src: ValueId,
        idx: ValueId,
        dst: ValueId,
    },
    Cast {
        x: ValueId,
    },
    Argmax {
        x: ValueId,
    },
}

impl Op {
    /// Values the op reads.
    pub fn inputs(&self) -> Vec<ValueId> {
        match *self {
            Op::Embedding { table, ids } => vec![table, ids],
            Op::RmsNorm { x, w, .. } => vec![x, w],
            Op::MatMul { x, w, bias } => {
                let mut v = vec![x, w];
                v.extend(bias);
                v
            }
            Op::Add { a, b } => vec![a, b],
            Op::SwiGlu { gate, up } => vec![gate, up],
            Op::Gelu { x } | Op::Cast { x } | Op::Argmax { x } => vec![x],
            Op::RopeMrope { x, pos, .. } | Op::RopeVision { x, pos, .. } => vec![x, pos],
            Op::KvAppend { k, v, .. } => vec![k, v],
            Op::AttentionPaged { q, .. } => vec![q],
            Op::AttentionVarlen {
                q,
                k,
                v,
                cu_seqlens,
                ..
            } => vec![q, k, v, cu_seqlens],
            Op::GatherRows { x, idx } => vec![x, idx],
            Op::ScatterRows { src, idx, dst } => vec![src, idx, dst],
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Op::Embedding { .. } => "embedding",
            Op::RmsNorm { .. } => "rms_norm",
            Op::MatMul { .. } => "matmul",
            Op::Add { .. } => "add",
            Op::SwiGlu { .. } => "swiglu",
            Op::Gelu { .. } => "gelu",
            Op::RopeMrope { .. } => "rope_mrope",
            Op::RopeVision { .. } => "rope_vision",
            Op::KvAppend { .. } => "kv_append",
            Op::AttentionPaged { .. } => "attention_paged",
            Op::AttentionVarlen { .. } => "attention_varlen",
            Op::GatherRows { .. } => "gather_rows",
            Op::ScatterRows { .. } => "scatter_rows",
            Op::Cast { .. } => "cast",
            Op::Argmax { .. } => "argmax",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    pub out: Option<ValueId>,
}

/// A graph under construction or ready to plan. `act` is the activation type of intermediates.
#[derive(Clone, Debug)]
pub struct Graph {
    pub values: Vec<Value>,
    pub nodes: Vec<Node>,
    pub act: DType,
}

impl Graph {
    pub fn new(act: DType) -> Graph {
        assert!(
            matches!(act, DType::F32 | DType::BF16),
            "activation type must be f32 or bf16"
        );
        Graph {
            values: Vec::new(),
            nodes: Vec::new(),
            act,
        }
    }

    pub fn value(&self, v: ValueId) -> &Value {
        &self.values[v.0 as usize]
    }

    fn push_value(&mut self, shape: Shape, dtype: DType, src: Source) -> ValueId {
        self.values.push(Value {
            shape,
            dtype,
            row_stride: shape.row_len(),
            src,
            name: None,
            keep: false,
        });
        ValueId(self.values.len() as u32 - 1)
    }

    fn push_node(&mut self, op: Op, out: Option<(Shape, DType)>) -> Option<ValueId> {
        let out = out.map(|(s, d)| self.push_value(s, d, Source::Arena));
        self.nodes.push(Node { op, out });
        out
    }

    fn op(&mut self, op: Op, shape: Shape, dtype: DType) -> ValueId {
        self.push_node(op, Some((shape, dtype))).unwrap()
    }

    /// A host-written input.
    pub fn input(&mut self, name: &str, shape: &[usize], dtype: DType) -> ValueId {
        let v = self.push_value(Shape::new(shape), dtype, Source::Input);
        self.values[v.0 as usize].name = Some(name.to_string());
        v
    }

    /// A tensor owned elsewhere (a weight, the page table, another graph's output).
    pub fn external(&mut self, t: TRef) -> ValueId {
        let v = self.push_value(t.shape, t.dtype, Source::External(t));
        self.values[v.0 as usize].row_stride = t.row_stride;
        v
    }

    /// Names a value and keeps it alive to the end of the run so the host can read it.
    pub fn keep(&mut self, v: ValueId, name: &str) {
        let val = &mut self.values[v.0 as usize];
        val.keep = true;
        val.name = Some(name.to_string());
    }

    /// Finds a value by the name given to `input` or `keep`.
    pub fn find(&self, name: &str) -> Option<ValueId> {
        self.values
            .iter()
            .position(|v| v.name.as_deref() == Some(name))
            .map(|i| ValueId(i as u32))
    }

    /// Rows `[start, start + n)` of `v` (no copy).
    pub fn rows(&mut self, v: ValueId, start: usize, n: usize) -> ValueId {
        let val = self.value(v).clone();
        assert!(start + n <= val.shape.rows(), "row view out of range");
        let off = val.dtype.bytes_for(start * val.row_stride);
        let id = self.push_value(
            val.shape.with_rows(n),
            val.dtype,
            Source::View {
                base: v,
                byte_offset: off,
            },
        );
        self.values[id.0 as usize].row_stride = val.row_stride;
        id
    }

    /// Columns `[start, start + n)` of a 2-D value (a strided view, no copy).
    pub fn cols(&mut self, v: ValueId, start: usize, n: usize) -> ValueId {
        let val = self.value(v).clone();
        assert_eq!(val.shape.rank(), 2, "column view needs a 2-D value");
        assert!(start + n <= val.shape.dim(1), "column view out of range");
        let off = val.dtype.bytes_for(start);
        let id = self.push_value(
            Shape::new(&[val.shape.rows(), n]),
            val.dtype,
            Source::View {
                base: v,
                byte_offset: off,
            },
        );
        self.values[id.0 as usize].row_stride = val.row_stride;
        id
    }

    /// The same elements under another shape; the first dimension may change only if `v` is
    /// contiguous.
    pub fn reshape(&mut self, v: ValueId, shape: &[usize]) -> ValueId {
        let val = self.value(v).clone();
        let shape = Shape::new(shape);
        assert_eq!(
            shape.numel(),
            val.shape.numel(),
            "reshape changes the element count"
        );
        let contiguous = val.row_stride == val.shape.row_len() || val.shape.rows() <= 1;
        let row_stride = if contiguous {
            shape.row_len()
        } else {
            assert_eq!(
                shape.rows(),
                val.shape.rows(),
                "reshape of a strided view must keep rows"
            );
            val.row_stride
        };
        let id = self.push_value(
            shape,
            val.dtype,
            Source::View {
                base: v,
                byte_offset: 0,
            },
        );
        self.values[id.0 as usize].row_stride = row_stride;
        id
    }

    // ---- ops; each returns its output value ----

    pub fn embedding(&mut self, table: ValueId, ids: ValueId) -> ValueId {
        let (t, d) = (
            self.value(ids).shape.numel(),
            self.value(table).shape.dim(1),
        );
        self.op(Op::Embedding { table, ids }, Shape::new(&[t, d]), self.act)
    }

    pub fn rms_norm(&mut self, x: ValueId, w: ValueId, eps: f32) -> ValueId {
        let s = self.value(x).shape;
        self.op(Op::RmsNorm { x, w, eps }, s, self.act)
    }

    pub fn matmul(&mut self, x: ValueId, w: ValueId, bias: Option<ValueId>) -> ValueId {
        let (m, k) = (self.value(x).shape.rows(), self.value(x).shape.row_len());
        let ws = self.value(w).shape;
        assert_eq!(
            ws.dim(1),
            k,
            "matmul: x has {k} columns, weight has {}",
            ws.dim(1)
        );
        self.op(
            Op::MatMul { x, w, bias },
            Shape::new(&[m, ws.dim(0)]),
            self.act,
        )
    }

    pub fn add(&mut self, a: ValueId, b: ValueId) -> ValueId {
        let s = self.value(a).shape;
        self.op(Op::Add { a, b }, s, self.act)
    }

    pub fn swiglu(&mut self, gate: ValueId, up: ValueId) -> ValueId {
        let s = self.value(gate).shape;
        self.op(Op::SwiGlu { gate, up }, s, self.act)
    }

    pub fn gelu(&mut self, x: ValueId) -> ValueId {
        let s = self.value(x).shape;
        self.op(Op::Gelu { x }, s, self.act)
    }

    pub fn rope_mrope(&mut self, x: ValueId, pos: ValueId, p: MropeParams) -> ValueId {
        let s = self.value(x).shape;
        self.op(Op::RopeMrope { x, pos, p }, s, self.act)
    }

    pub fn rope_vision(&mut self, x: ValueId, pos: ValueId, theta: f32) -> ValueId {
        let s = self.value(x).shape;
        self.op(Op::RopeVision { x, pos, theta }, s, self.act)
    }

    pub fn kv_append(&mut self, k: ValueId, v: ValueId, layer: usize) {
        self.push_node(Op::KvAppend { k, v, layer }, None);
    }

    pub fn attention_paged(&mut self, q: ValueId, layer: usize, scale: f32) -> ValueId {
        let s = self.value(q).shape;
        self.op(Op::AttentionPaged { q, layer, scale }, s, self.act)
    }

    pub fn attention_varlen(
        &mut self,
        q: ValueId,
        k: ValueId,
        v: ValueId,
        cu_seqlens: ValueId,
        scale: f32,
    ) -> ValueId {
        let s = self.value(q).shape;
        self.op(
            Op::AttentionVarlen {
                q,
                k,
                v,
                cu_seqlens,
                scale,
            },
            s,
            self.act,
        )
    }

    pub fn gather_rows(&mut self, x: ValueId, idx: ValueId) -> ValueId {
        let (n, s) = (self.value(idx).shape.numel(), self.value(x).shape);
        self.op(
            Op::GatherRows { x, idx },
            s.with_rows(n),
            self.value(x).dtype,
        )
    }

    pub fn scatter_rows(&mut self, src: ValueId, idx: ValueId, dst: ValueId) {
        self.push_node(Op::ScatterRows { src, idx, dst }, None);
    }

    pub fn cast(&mut self, x: ValueId, dtype: DType) -> ValueId {
        let s = self.value(x).shape;
        self.op(Op::Cast { x }, s, dtype)
    }

    pub fn argmax(&mut self, x: ValueId) -> ValueId {
        let r = self.value(x).shape.rows();
        self.op(Op::Argmax { x }, Shape::new(&[r]), DType::I32)
    }

    /// Follows views to the value that owns the memory.
    pub fn root(&self, mut v: ValueId) -> ValueId {
        while let Source::View { base, .. } = self.value(v).src {
            v = base;
        }
        v
    }
}
