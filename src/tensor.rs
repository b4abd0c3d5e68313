//! Element types and shapes shared by every layer of the engine.

use std::fmt;

/// Storage type of a tensor. Quantized types are stored in ggml's block layouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    I32,
    U8,
    /// 32 weights per 34-byte block (fp16 scale + 32 int8).
    Q8_0,
    /// 256 weights per 144-byte super-block.
    Q4K,
    /// 256 weights per 210-byte super-block.
    Q6K,
}

impl DType {
    /// Elements per storage block (1 for plain types).
    pub const fn block_len(self) -> usize {
        match self {
            DType::Q8_0 => 32,
            DType::Q4K | DType::Q6K => 256,
            _ => 1,
        }
    }

    /// Bytes per storage block.
    pub const fn block_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::U8 => 1,
            DType::Q8_0 => 34,
            DType::Q4K => 144,
            DType::Q6K => 210,
        }
    }

    /// Bytes needed for `n` elements; `n` must be a multiple of the block length.
    pub const fn bytes_for(self, n: usize) -> usize {
        n / self.block_len() * self.block_bytes()
    }

    pub const fn is_quantized(self) -> bool {
        self.block_len() > 1
    }

    /// Activation types: what the graph's intermediate tensors may be stored as.
    pub const fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I32 => "i32",
            DType::U8 => "u8",
            DType::Q8_0 => "q8_0",
            DType::Q4K => "q4_k",
            DType::Q6K => "q6_k",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Maximum tensor rank the engine uses.
pub const MAX_RANK: usize = 4;

/// A row-major shape of rank 1..=4.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    dims: [usize; MAX_RANK],
    rank: usize,
}

impl Shape {
    pub fn new(dims: &[usize]) -> Shape {
        assert!(
            !dims.is_empty() && dims.len() <= MAX_RANK,
            "rank {} unsupported",
            dims.len()
        );
        let mut d = [1; MAX_RANK];
        d[..dims.len()].copy_from_slice(dims);
        Shape {
            dims: d,
            rank: dims.len(),
        }
    }

    pub fn dims(&self) -> &[usize] {
        &self.dims[..self.rank]
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn numel(&self) -> usize {
        self.dims().iter().product()
    }

    /// Size of dimension `i`; negative indices count from the end.
    pub fn dim(&self, i: isize) -> usize {
        let i = if i < 0 { self.rank as isize + i } else { i } as usize;
        self.dims[i]
    }

    /// First dimension (rows of the outermost index).
    pub fn rows(&self) -> usize {
        self.dims[0]
    }

    /// Elements in one outermost slice.
    pub fn row_len(&self) -> usize {
        self.numel() / self.dims[0].max(1)
    }

    /// The shape with the first dimension replaced.
    pub fn with_rows(&self, rows: usize) -> Shape {
        let mut s = *self;
        s.dims[0] = rows;
        s
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.dims())
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.dims())
    }
}
