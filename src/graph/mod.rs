//! Graphs of generic ops, the arena planner and the executor.
//!
//! A [`Graph`] is built once per shape (a prefill of T tokens, or the decode step) with every
//! shape known up front. [`plan`] gives each intermediate an offset in one arena, reusing memory
//! whose lifetime has ended; [`Executor`] binds the plan to a backend and runs the nodes in
//! order. A node is a backend op and its operands ([`Node`]): the executor has no per-op code,
//! so a new backend op enters graphs through [`Graph::call`] or a builder method here.

mod exec;
mod plan;

pub use exec::{profile, Executor};
pub use plan::{plan, Plan};

use crate::backend::{Backend, Epilogue, MropeParams, PagedKv, TRef};
use crate::error::{Error, Result};
use crate::tensor::{DType, Shape};
use std::sync::Arc;

/// Whether graphs fuse elementwise ops into the matmul before them (`REEL_FUSE`, default on;
/// `0` builds the separate ops, the same bits on every backend, for side-by-side timing).
pub fn fuse() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("REEL_FUSE").map_or(true, |v| v.trim() != "0"))
}

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

/// The operands a node's call receives: its inputs as backend tensors (in the order the node
/// lists them), its output, and the KV cache for ops on it.
pub struct Operands<'a> {
    pub inputs: &'a [TRef],
    pub out: Option<TRef>,
    pub kv: Option<&'a PagedKv>,
}

impl Operands<'_> {
    pub fn input(&self, i: usize) -> TRef {
        self.inputs[i]
    }

    pub fn out(&self) -> TRef {
        self.out.expect("op without output")
    }

    pub fn kv(&self) -> Result<&PagedKv> {
        self.kv
            .ok_or_else(|| Error::Other("graph uses the KV cache but none was given".into()))
    }
}

/// How a node runs: one backend op on its operands (scalars such as eps or a layer index are
/// captured when the node is built).
pub type Call = Arc<dyn Fn(&mut dyn Backend, &Operands) -> Result<()> + Send + Sync>;

/// One op: the backend method it calls, the values it reads and the value it writes. Any
/// backend op can be a node ([`Graph::call`]); the builder methods below name the model's.
#[derive(Clone)]
pub struct Node {
    pub op: &'static str,
    /// Values the op reads, in its call's order (an in-place destination included).
    pub inputs: Vec<ValueId>,
    pub out: Option<ValueId>,
    call: Call,
}

impl Node {
    pub fn run(&self, be: &mut dyn Backend, operands: &Operands) -> Result<()> {
        (self.call)(be, operands)
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}({:?}) -> {:?}", self.op, self.inputs, self.out)
    }
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

    /// A node that runs `call` on `inputs` and, with `out`, writes a new arena value of that
    /// shape and type (returned). Any backend op can enter a graph this way.
    pub fn call(
        &mut self,
        op: &'static str,
        inputs: &[ValueId],
        out: Option<(Shape, DType)>,
        call: impl Fn(&mut dyn Backend, &Operands) -> Result<()> + Send + Sync + 'static,
    ) -> Option<ValueId> {
        let out = out.map(|(s, d)| self.push_value(s, d, Source::Arena));
        self.nodes.push(Node {
            op,
            inputs: inputs.to_vec(),
            out,
            call: Arc::new(call),
        });
        out
    }

    fn op(
        &mut self,
        op: &'static str,
        inputs: &[ValueId],
        shape: Shape,
        dtype: DType,
        call: impl Fn(&mut dyn Backend, &Operands) -> Result<()> + Send + Sync + 'static,
    ) -> ValueId {
        self.call(op, inputs, Some((shape, dtype)), call)
            .expect("an output was asked for")
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
        self.op(
            "embedding",
            &[table, ids],
            Shape::new(&[t, d]),
            self.act,
            |be, o| be.embedding(o.input(0), o.input(1), o.out()),
        )
    }

    pub fn rms_norm(&mut self, x: ValueId, w: ValueId, eps: f32) -> ValueId {
        let s = self.value(x).shape;
        self.op("rms_norm", &[x, w], s, self.act, move |be, o| {
            be.rms_norm(o.input(0), o.input(1), o.out(), eps)
        })
    }

    /// `[M, N]` of `x [M, K] @ w [N, K]^T`.
    fn matmul_shape(&self, x: ValueId, w: ValueId) -> Shape {
        let (m, k) = (self.value(x).shape.rows(), self.value(x).shape.row_len());
        let ws = self.value(w).shape;
        assert_eq!(
            ws.dim(1),
            k,
            "matmul: x has {k} columns, weight has {}",
            ws.dim(1)
        );
        Shape::new(&[m, ws.dim(0)])
    }

    pub fn matmul(&mut self, x: ValueId, w: ValueId, bias: Option<ValueId>) -> ValueId {
        let y = self.matmul_shape(x, w);
        let mut inputs = vec![x, w];
        inputs.extend(bias);
        self.op("matmul", &inputs, y, self.act, |be, o| {
            be.matmul(o.input(0), o.input(1), o.inputs.get(2).copied(), o.out())
        })
    }

    /// `add(res, matmul(x, w, bias))` as one op: the residual is added as the product is
    /// stored ([`Epilogue::Add`]). With `REEL_FUSE=0`, the two ops.
    pub fn matmul_add(
        &mut self,
        x: ValueId,
        w: ValueId,
        bias: Option<ValueId>,
        res: ValueId,
    ) -> ValueId {
        if !fuse() {
            let y = self.matmul(x, w, bias);
            return self.add(res, y);
        }
        let y = self.matmul_shape(x, w);
        assert_eq!(self.value(res).shape, y, "matmul_add: residual shape");
        let mut inputs = vec![x, w, res];
        inputs.extend(bias);
        self.op("matmul_add", &inputs, y, self.act, |be, o| {
            let epi = Epilogue::Add(o.input(2));
            be.matmul_fused(
                o.input(0),
                o.input(1),
                o.inputs.get(3).copied(),
                epi,
                o.out(),
            )
        })
    }

    /// `gelu(matmul(x, w, bias))` as one op ([`Epilogue::Gelu`]). With `REEL_FUSE=0`, the two
    /// ops.
    pub fn matmul_gelu(&mut self, x: ValueId, w: ValueId, bias: Option<ValueId>) -> ValueId {
        if !fuse() {
            let y = self.matmul(x, w, bias);
            return self.gelu(y);
        }
        let y = self.matmul_shape(x, w);
        let mut inputs = vec![x, w];
        inputs.extend(bias);
        self.op("matmul_gelu", &inputs, y, self.act, |be, o| {
            let epi = Epilogue::Gelu;
            be.matmul_fused(
                o.input(0),
                o.input(1),
                o.inputs.get(2).copied(),
                epi,
                o.out(),
            )
        })
    }

    pub fn add(&mut self, a: ValueId, b: ValueId) -> ValueId {
        let s = self.value(a).shape;
        self.op("add", &[a, b], s, self.act, |be, o| {
            be.add(o.input(0), o.input(1), o.out())
        })
    }

    pub fn swiglu(&mut self, gate: ValueId, up: ValueId) -> ValueId {
        let s = self.value(gate).shape;
        self.op("swiglu", &[gate, up], s, self.act, |be, o| {
            be.swiglu(o.input(0), o.input(1), o.out())
        })
    }

    pub fn gelu(&mut self, x: ValueId) -> ValueId {
        let s = self.value(x).shape;
        self.op("gelu", &[x], s, self.act, |be, o| {
            be.gelu(o.input(0), o.out())
        })
    }

    pub fn rope_mrope(&mut self, x: ValueId, pos: ValueId, p: MropeParams) -> ValueId {
        let s = self.value(x).shape;
        self.op("rope_mrope", &[x, pos], s, self.act, move |be, o| {
            be.rope_mrope(o.input(0), o.input(1), o.out(), p)
        })
    }

    pub fn rope_vision(&mut self, x: ValueId, pos: ValueId, theta: f32) -> ValueId {
        let s = self.value(x).shape;
        self.op("rope_vision", &[x, pos], s, self.act, move |be, o| {
            be.rope_vision(o.input(0), o.input(1), o.out(), theta)
        })
    }

    pub fn kv_append(&mut self, k: ValueId, v: ValueId, layer: usize) {
        self.call("kv_append", &[k, v], None, move |be, o| {
            be.kv_append(o.input(0), o.input(1), o.kv()?, layer)
        });
    }

    pub fn attention_paged(&mut self, q: ValueId, layer: usize, scale: f32) -> ValueId {
        let s = self.value(q).shape;
        self.op("attention_paged", &[q], s, self.act, move |be, o| {
            be.attention_paged(o.input(0), o.kv()?, layer, o.out(), scale)
        })
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
            "attention_varlen",
            &[q, k, v, cu_seqlens],
            s,
            self.act,
            move |be, o| {
                be.attention_varlen(
                    o.input(0),
                    o.input(1),
                    o.input(2),
                    o.input(3),
                    o.out(),
                    scale,
                )
            },
        )
    }

    pub fn gather_rows(&mut self, x: ValueId, idx: ValueId) -> ValueId {
        let (n, s) = (self.value(idx).shape.numel(), self.value(x).shape);
        let dt = self.value(x).dtype;
        self.op("gather_rows", &[x, idx], s.with_rows(n), dt, |be, o| {
            be.gather_rows(o.input(0), o.input(1), o.out())
        })
    }

    /// Writes `src` rows into `dst` in place; `dst` must be an arena value defined earlier.
    pub fn scatter_rows(&mut self, src: ValueId, idx: ValueId, dst: ValueId) {
        self.call("scatter_rows", &[src, idx, dst], None, |be, o| {
            be.scatter_rows(o.input(0), o.input(1), o.input(2))
        });
    }

    pub fn cast(&mut self, x: ValueId, dtype: DType) -> ValueId {
        let s = self.value(x).shape;
        self.op("cast", &[x], s, dtype, |be, o| be.cast(o.input(0), o.out()))
    }

    pub fn argmax(&mut self, x: ValueId) -> ValueId {
        let r = self.value(x).shape.rows();
        self.op("argmax", &[x], Shape::new(&[r]), DType::I32, |be, o| {
            be.argmax(o.input(0), o.out())
        })
    }

    /// Follows views to the value that owns the memory.
    pub fn root(&self, mut v: ValueId) -> ValueId {
        while let Source::View { base, .. } = self.value(v).src {
            v = base;
        }
        v
    }
}
