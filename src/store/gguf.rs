//! GGUF v3 files written by reel-quantize: reading (memory-mapped, tensors zero-copy) and
//! streaming writing.
//!
//! Layout (little-endian): magic `GGUF`, version u32 = 3, tensor count u64, metadata count u64;
//! metadata entries (key string, value type u32, value); tensor infos (name string, n_dims u32,
//! dims u64 in ggml order — `ne[0]` is the contiguous dimension, so reversed relative to the
//! Hugging Face shape — ggml type u32, offset u64 relative to the data section); padding to
//! `general.alignment` (default 32); the data section, each tensor starting on an aligned
//! offset. Strings are a u64 byte length followed by UTF-8 bytes, without a terminator.
//!
//! A reel model file is self-contained: besides the tensors (under the checkpoint's own names)
//! its metadata carries the checkpoint's JSON files as strings ([`KEY_CONFIG_JSON`] and friends),
//! so [`GgufModel::open`] is all the loader needs.

use crate::backend::HostBytes;
use crate::error::{Error, Result};
use crate::tensor::DType;
use memmap2::Mmap;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
pub const GGUF_VERSION: u32 = 3;
pub const DEFAULT_ALIGNMENT: usize = 32;
/// ggml's limit on tensor rank.
pub const MAX_DIMS: usize = 4;
/// Most items one metadata array may hold, and all arrays together (a reel file's largest is
/// a tensor's 5-D shape; llama.cpp vocabularies hold ~260k strings). Parsed values take more
/// memory than their bytes in the file, so counts are capped, not only checked against the
/// bytes left.
pub const MAX_ARRAY_ITEMS: usize = 1 << 22;
pub const MAX_METADATA_VALUES: usize = 1 << 23;

pub const KEY_ALIGNMENT: &str = "general.alignment";
pub const KEY_ARCHITECTURE: &str = "general.architecture";
pub const KEY_NAME: &str = "general.name";
pub const KEY_FILE_TYPE: &str = "general.file_type";
pub const KEY_QUANTIZATION_VERSION: &str = "general.quantization_version";
/// Standard GGUF key for a Jinja chat template.
pub const KEY_CHAT_TEMPLATE: &str = "tokenizer.chat_template";
/// The checkpoint's config.json, verbatim.
pub const KEY_CONFIG_JSON: &str = "reel.config_json";
/// tokenizer.json, verbatim.
pub const KEY_TOKENIZER_JSON: &str = "reel.tokenizer_json";
/// tokenizer_config.json, verbatim.
pub const KEY_TOKENIZER_CONFIG_JSON: &str = "reel.tokenizer_config_json";
/// chat_template.json, verbatim (newer checkpoints keep the template there).
pub const KEY_CHAT_TEMPLATE_JSON: &str = "reel.chat_template_json";
/// generation_config.json, verbatim.
pub const KEY_GENERATION_CONFIG_JSON: &str = "reel.generation_config_json";
/// preprocessor_config.json, verbatim.
pub const KEY_PREPROCESSOR_CONFIG_JSON: &str = "reel.preprocessor_config_json";
/// The reel-quantize preset that made the file (`q8_0`, `q4_k_m`, `bf16`).
pub const KEY_QUANT_PRESET: &str = "reel.quantize.preset";
/// Prefix of the key holding the true shape (u64 array, Hugging Face order) of a tensor whose rank
/// exceeds ggml's 4 (the 5-D video patch-embedding convolution); such a tensor is stored as
/// `[shape[0], product of the rest]` and the reader restores the shape.
pub const KEY_TENSOR_SHAPE_PREFIX: &str = "reel.tensor_shape.";

/// GGUF metadata value types, with their on-disk ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    pub fn from_id(id: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }
}

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    U64(u64),
    I64(i64),
    F64(f64),
    /// Items all of `item_type` (which may itself be `Array`).
    Array {
        item_type: ValueType,
        items: Vec<MetaValue>,
    },
}

impl MetaValue {
    pub fn value_type(&self) -> ValueType {
        match self {
            MetaValue::U8(_) => ValueType::U8,
            MetaValue::I8(_) => ValueType::I8,
            MetaValue::U16(_) => ValueType::U16,
            MetaValue::I16(_) => ValueType::I16,
            MetaValue::U32(_) => ValueType::U32,
            MetaValue::I32(_) => ValueType::I32,
            MetaValue::F32(_) => ValueType::F32,
            MetaValue::Bool(_) => ValueType::Bool,
            MetaValue::String(_) => ValueType::String,
            MetaValue::U64(_) => ValueType::U64,
            MetaValue::I64(_) => ValueType::I64,
            MetaValue::F64(_) => ValueType::F64,
            MetaValue::Array { .. } => ValueType::Array,
        }
    }

    pub fn str(s: impl Into<String>) -> MetaValue {
        MetaValue::String(s.into())
    }
    pub fn strings<S: Into<String>>(v: impl IntoIterator<Item = S>) -> MetaValue {
        MetaValue::Array {
            item_type: ValueType::String,
            items: v.into_iter().map(|s| MetaValue::String(s.into())).collect(),
        }
    }
    pub fn i32s(v: impl IntoIterator<Item = i32>) -> MetaValue {
        MetaValue::Array {
            item_type: ValueType::I32,
            items: v.into_iter().map(MetaValue::I32).collect(),
        }
    }
    pub fn u32s(v: impl IntoIterator<Item = u32>) -> MetaValue {
        MetaValue::Array {
            item_type: ValueType::U32,
            items: v.into_iter().map(MetaValue::U32).collect(),
        }
    }
    pub fn f32s(v: impl IntoIterator<Item = f32>) -> MetaValue {
        MetaValue::Array {
            item_type: ValueType::F32,
            items: v.into_iter().map(MetaValue::F32).collect(),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// Any integer type that fits in u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v as u64),
            MetaValue::U16(v) => Some(v as u64),
            MetaValue::U32(v) => Some(v as u64),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v as f64),
            MetaValue::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
}

/// The ggml type id of a reel dtype, if GGUF can store it.
pub fn ggml_type_id(dtype: DType) -> Option<u32> {
    Some(match dtype {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::Q8_0 => 8,
        DType::Q4K => 12,
        DType::Q6K => 14,
        DType::I32 => 26,
        DType::BF16 => 30,
        DType::U8 => return None,
    })
}

fn dtype_from_ggml(id: u32) -> std::result::Result<DType, String> {
    Ok(match id {
        0 => DType::F32,
        1 => DType::F16,
        8 => DType::Q8_0,
        12 => DType::Q4K,
        14 => DType::Q6K,
        26 => DType::I32,
        30 => DType::BF16,
        _ => {
            const NAMES: [(u32, &str); 20] = [
                (2, "Q4_0"),
                (3, "Q4_1"),
                (6, "Q5_0"),
                (7, "Q5_1"),
                (9, "Q8_1"),
                (10, "Q2_K"),
                (11, "Q3_K"),
                (13, "Q5_K"),
                (15, "Q8_K"),
                (16, "IQ2_XXS"),
                (17, "IQ2_XS"),
                (18, "IQ3_XXS"),
                (19, "IQ1_S"),
                (20, "IQ4_NL"),
                (21, "IQ3_S"),
                (22, "IQ2_S"),
                (23, "IQ4_XS"),
                (24, "I8"),
                (25, "I16"),
                (28, "F64"),
            ];
            let name = NAMES
                .iter()
                .find(|(i, _)| *i == id)
                .map_or("unknown", |(_, n)| n);
            return Err(format!("ggml type {id} ({name}), which reel does not support (F32, F16, BF16, I32, Q8_0, Q4_K, Q6_K)"));
        }
    })
}

fn align_up(v: usize, a: usize) -> usize {
    v.div_ceil(a) * a
}

/// One tensor of a GGUF file, shape in Hugging Face (row-major, outermost first) order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufTensorInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Absolute byte offset in the file.
    pub offset: usize,
    /// Bytes of data.
    pub len: usize,
}

/// Bounds-checked little-endian reader over the mapped file.
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
    path: &'a Path,
    /// Metadata values parsed so far (array items included), against [`MAX_METADATA_VALUES`].
    values: usize,
}

/// Fewest bytes a value of type `ty` occupies in the file.
fn min_value_bytes(ty: ValueType) -> usize {
    match ty {
        ValueType::U8 | ValueType::I8 | ValueType::Bool => 1,
        ValueType::U16 | ValueType::I16 => 2,
        ValueType::U32 | ValueType::I32 | ValueType::F32 => 4,
        ValueType::U64 | ValueType::I64 | ValueType::F64 | ValueType::String => 8,
        // Item type u32 + count u64.
        ValueType::Array => 12,
    }
}

impl<'a> Cursor<'a> {
    fn err(&self, msg: String) -> Error {
        Error::file(self.path, format!("GGUF: {msg}"))
    }
    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        if n > self.b.len() - self.pos {
            return Err(self.err(format!(
                "truncated {}: needs {n} bytes at offset {}, the file has {}",
                what(),
                self.pos,
                self.b.len()
            )));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }
    /// A u64 count of items of at least `min_item` bytes each, refused if the rest of the file
    /// could not hold them (so a corrupt count never triggers a huge allocation).
    fn count(&mut self, min_item: usize, what: &dyn Fn() -> String) -> Result<usize> {
        let n = self.u64(what)?;
        let rest = (self.b.len() - self.pos) as u64;
        if n.saturating_mul(min_item as u64) > rest {
            return Err(self.err(format!(
                "truncated {}: count {n} exceeds what the remaining {rest} bytes can hold",
                what()
            )));
        }
        Ok(n as usize)
    }
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let n = self.count(1, what)?;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| self.err(format!("{} is not valid UTF-8", what())))
    }
    fn value(
        &mut self,
        ty: ValueType,
        what: &dyn Fn() -> String,
        depth: usize,
    ) -> Result<MetaValue> {
        self.values += 1;
        if self.values > MAX_METADATA_VALUES {
            return Err(self.err(format!(
                "{}: more than {MAX_METADATA_VALUES} metadata values in all (corrupt file?)",
                what()
            )));
        }
        Ok(match ty {
            ValueType::U8 => MetaValue::U8(self.take(1, what)?[0]),
            ValueType::I8 => MetaValue::I8(self.take(1, what)?[0] as i8),
            ValueType::U16 => {
                MetaValue::U16(u16::from_le_bytes(self.take(2, what)?.try_into().unwrap()))
            }
            ValueType::I16 => {
                MetaValue::I16(i16::from_le_bytes(self.take(2, what)?.try_into().unwrap()))
            }
            ValueType::U32 => MetaValue::U32(self.u32(what)?),
            ValueType::I32 => MetaValue::I32(self.u32(what)? as i32),
            ValueType::F32 => MetaValue::F32(f32::from_bits(self.u32(what)?)),
            ValueType::Bool => match self.take(1, what)?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                v => return Err(self.err(format!("{}: bool byte {v} is neither 0 nor 1", what()))),
            },
            ValueType::String => MetaValue::String(self.string(what)?),
            ValueType::U64 => MetaValue::U64(self.u64(what)?),
            ValueType::I64 => MetaValue::I64(self.u64(what)? as i64),
            ValueType::F64 => MetaValue::F64(f64::from_bits(self.u64(what)?)),
            ValueType::Array => {
                if depth > 8 {
                    return Err(self.err(format!("{}: arrays nested too deeply", what())));
                }
                let id = self.u32(what)?;
                let item_type = ValueType::from_id(id)
                    .ok_or_else(|| self.err(format!("{}: unknown array item type {id}", what())))?;
                let n = self.count(min_value_bytes(item_type), what)?;
                if n > MAX_ARRAY_ITEMS {
                    return Err(self.err(format!(
                        "{}: array of {n} items, over the limit of {MAX_ARRAY_ITEMS}",
                        what()
                    )));
                }
                let mut items = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    items.push(self.value(item_type, what, depth + 1)?);
                }
                MetaValue::Array { item_type, items }
            }
        })
    }
}

type Owner = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// File bytes in 8-byte-aligned storage (for [`GgufStore::from_bytes`]).
struct Words {
    words: Vec<u64>,
    len: usize,
}

impl AsRef<[u8]> for Words {
    fn as_ref(&self) -> &[u8] {
        &bytemuck::cast_slice::<u64, u8>(&self.words)[..self.len]
    }
}

/// A GGUF file, memory-mapped. Tensors are handed out as [`HostBytes`] views of the map.
pub struct GgufStore {
    path: PathBuf,
    map: Owner,
    version: u32,
    alignment: usize,
    data_offset: usize,
    metadata: Vec<(String, MetaValue)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<GgufTensorInfo>,
    index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GgufStore({}, {} tensors, {} metadata keys)",
            self.path.display(),
            self.tensors.len(),
            self.metadata.len()
        )
    }
}

impl GgufStore {
    /// Maps and validates `path`: header, metadata, tensor infos, alignment and bounds of every
    /// tensor. Any defect is one error naming the file.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufStore> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        if len < 24 {
            return Err(Error::file(
                &path,
                format!("GGUF: truncated header: the file has {len} bytes, a header needs 24"),
            ));
        }
        // SAFETY: the map is read-only; a file truncated by someone else while mapped is outside
        // what any mmap-based reader can guard against.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        Self::parse(&path, Arc::new(map))
    }

    /// Parses and validates a GGUF image held in memory (as [`open`](Self::open) does a file);
    /// `origin` names it in errors. The bytes are copied to 8-byte-aligned storage so tensor
    /// views are aligned as a memory map's are.
    pub fn from_bytes(origin: impl AsRef<Path>, bytes: &[u8]) -> Result<GgufStore> {
        let path = origin.as_ref();
        if bytes.len() < 24 {
            return Err(Error::file(
                path,
                format!(
                    "GGUF: truncated header: the file has {} bytes, a header needs 24",
                    bytes.len()
                ),
            ));
        }
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
        let owner = Arc::new(Words {
            words,
            len: bytes.len(),
        });
        Self::parse(path, owner)
    }

    fn parse(path: &Path, map: Owner) -> Result<GgufStore> {
        let b: &[u8] = (*map).as_ref();
        let mut c = Cursor {
            b,
            pos: 0,
            path,
            values: 0,
        };
        let magic = c.take(4, &|| "header".into())?;
        if magic != GGUF_MAGIC {
            return Err(c.err(format!(
                "bad magic {magic:02x?}: not a GGUF file (expected \"GGUF\")"
            )));
        }
        let version = c.u32(&|| "header".into())?;
        if version != GGUF_VERSION {
            return Err(c.err(format!(
                "unsupported version {version} (reel reads version {GGUF_VERSION})"
            )));
        }
        // Counts are checked against the bytes left so a corrupt count fails cleanly instead of
        // allocating (capacities are capped too); precise truncation errors come while parsing
        // the entries. A tensor info takes at least 32 bytes (name length, one dim, rank, type,
        // offset): checked once the metadata before them is read.
        let n_tensors = c.count(1, &|| "header (tensor count)".into())?;
        let n_kv = c.count(1, &|| "header (metadata count)".into())?;

        let mut metadata = Vec::with_capacity(n_kv.min(4096));
        let mut meta_index = HashMap::with_capacity(n_kv.min(4096));
        for i in 0..n_kv {
            let key = c.string(&|| format!("metadata entry {i} key"))?;
            let what = || format!("metadata `{key}`");
            let id = c.u32(&what)?;
            let ty = ValueType::from_id(id)
                .ok_or_else(|| c.err(format!("metadata `{key}`: unknown value type {id}")))?;
            let v = c.value(ty, &what, 0)?;
            if meta_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(c.err(format!("duplicate metadata key `{key}`")));
            }
            metadata.push((key, v));
        }

        let alignment = match meta_index.get(KEY_ALIGNMENT).map(|&i| &metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(MetaValue::U32(a)) if *a > 0 && a.is_power_of_two() => *a as usize,
            Some(v) => {
                return Err(c.err(format!(
                    "`{KEY_ALIGNMENT}` must be a u32 power of two, found {v:?}"
                )))
            }
        };

        let rest = (c.b.len() - c.pos) as u64;
        if (n_tensors as u64).saturating_mul(32) > rest {
            return Err(c.err(format!(
                "truncated tensor infos: {n_tensors} tensors do not fit in the remaining {rest} bytes"
            )));
        }
        let mut raw = Vec::with_capacity(n_tensors.min(4096));
        let mut index = HashMap::with_capacity(n_tensors.min(4096));
        for i in 0..n_tensors {
            let name = c.string(&|| format!("tensor info {i} name"))?;
            let what = || format!("tensor info `{name}`");
            let n_dims = c.u32(&what)? as usize;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(c.err(format!(
                    "tensor `{name}`: {n_dims} dimensions (1 to {MAX_DIMS} allowed)"
                )));
            }
            let mut ne = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                ne.push(c.u64(&what)?);
            }
            let ty = c.u32(&what)?;
            let offset = c.u64(&what)?;
            let dtype =
                dtype_from_ggml(ty).map_err(|m| c.err(format!("tensor `{name}` has {m}")))?;
            if index.insert(name.clone(), raw.len()).is_some() {
                return Err(c.err(format!("duplicate tensor name `{name}`")));
            }
            raw.push((name, ne, dtype, offset));
        }
        let data_offset = align_up(c.pos, alignment);
        if data_offset > b.len() && n_tensors > 0 {
            return Err(c.err(format!(
                "truncated: the data section would start at {data_offset}, past the end ({})",
                b.len()
            )));
        }

        let mut tensors = Vec::with_capacity(raw.len());
        for (name, ne, dtype, offset) in raw {
            let mut numel: u64 = 1;
            for &d in &ne {
                numel = numel
                    .checked_mul(d)
                    .ok_or_else(|| c.err(format!("tensor `{name}`: dimensions {ne:?} overflow")))?;
            }
            let bl = dtype.block_len() as u64;
            if ne[0] % bl != 0 {
                return Err(c.err(format!("tensor `{name}`: row length {} is not a multiple of the {dtype} block size {bl}", ne[0])));
            }
            let len = (numel / bl)
                .checked_mul(dtype.block_bytes() as u64)
                .ok_or_else(|| c.err(format!("tensor `{name}`: size overflows")))?;
            if offset % alignment as u64 != 0 {
                return Err(c.err(format!("tensor `{name}`: data offset {offset} is not a multiple of the alignment {alignment}")));
            }
            let start = (data_offset as u64).saturating_add(offset);
            let end = start.saturating_add(len);
            if end > b.len() as u64 {
                return Err(c.err(format!(
                    "truncated tensor data: `{name}` ({dtype}, {len} bytes) spans bytes {start}..{end}, the file has {}",
                    b.len()
                )));
            }
            let mut shape: Vec<usize> = ne.iter().rev().map(|&d| d as usize).collect();
            if let Some(v) = meta_index
                .get(&format!("{KEY_TENSOR_SHAPE_PREFIX}{name}"))
                .map(|&i| &metadata[i].1)
            {
                let dims: Option<Vec<usize>> = match v {
                    MetaValue::Array { items, .. } => items
                        .iter()
                        .map(|d| d.as_u64().map(|d| d as usize))
                        .collect(),
                    _ => None,
                };
                match dims {
                    Some(d) if d.iter().try_fold(1u64, |a, &x| a.checked_mul(x as u64)) == Some(numel) => shape = d,
                    _ => {
                        return Err(c.err(format!(
                            "`{KEY_TENSOR_SHAPE_PREFIX}{name}` = {v:?} does not describe the {numel} elements of `{name}`"
                        )))
                    }
                }
            }
            tensors.push(GgufTensorInfo {
                name,
                dtype,
                shape,
                offset: start as usize,
                len: len as usize,
            });
        }

        Ok(GgufStore {
            path: path.to_path_buf(),
            map: map.clone(),
            version,
            alignment,
            data_offset,
            metadata,
            meta_index,
            tensors,
            index,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn version(&self) -> u32 {
        self.version
    }
    pub fn alignment(&self) -> usize {
        self.alignment
    }
    /// Absolute offset of the data section.
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }
    /// All tensors, in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }
    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }
    /// A zero-copy view of a tensor's bytes; an error naming the file if there is no such tensor.
    pub fn tensor_bytes(&self, name: &str) -> Result<HostBytes> {
        let t = self
            .tensor_info(name)
            .ok_or_else(|| Error::file(&self.path, format!("GGUF: no tensor named `{name}`")))?;
        Ok(self.bytes_of(t))
    }
    /// The bytes of a tensor info obtained from this store.
    pub fn bytes_of(&self, t: &GgufTensorInfo) -> HostBytes {
        HostBytes::new(self.map.clone(), t.offset, t.len)
    }
    /// All metadata, in file order.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.metadata
    }
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }
    /// A string value; `Ok(None)` if absent, an error if present with another type.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(MetaValue::String(s)) => Ok(Some(s)),
            Some(v) => Err(Error::file(
                &self.path,
                format!(
                    "GGUF: metadata `{key}` should be a string, found {:?}",
                    v.value_type()
                ),
            )),
        }
    }
    /// A string value that must be present.
    pub fn require_str(&self, key: &str) -> Result<&str> {
        self.get_str(key)?.ok_or_else(|| {
            Error::file(
                &self.path,
                format!("GGUF: missing required metadata key `{key}`"),
            )
        })
    }
}

/// A self-contained reel model file: the tensors plus the checkpoint's configuration texts.
#[derive(Debug)]
pub struct GgufModel {
    store: GgufStore,
}

impl GgufModel {
    /// Opens and validates a model file: besides [`GgufStore::open`]'s checks it requires
    /// `general.architecture`, `reel.config_json` and `reel.tokenizer_json` (all strings), and
    /// checks that the optional texts, where present, are strings.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufModel> {
        GgufModel::from_store(GgufStore::open(path)?)
    }

    /// [`open`](Self::open)'s checks on a store already parsed.
    pub fn from_store(store: GgufStore) -> Result<GgufModel> {
        for key in [KEY_ARCHITECTURE, KEY_CONFIG_JSON, KEY_TOKENIZER_JSON] {
            store.require_str(key)?;
        }
        for key in [
            KEY_TOKENIZER_CONFIG_JSON,
            KEY_CHAT_TEMPLATE_JSON,
            KEY_CHAT_TEMPLATE,
            KEY_GENERATION_CONFIG_JSON,
            KEY_PREPROCESSOR_CONFIG_JSON,
        ] {
            store.get_str(key)?;
        }
        Ok(GgufModel { store })
    }

    pub fn store(&self) -> &GgufStore {
        &self.store
    }
    pub fn into_store(self) -> GgufStore {
        self.store
    }
    pub fn path(&self) -> &Path {
        self.store.path()
    }
    fn text(&self, key: &str) -> Option<&str> {
        self.store.get(key).and_then(MetaValue::as_str)
    }
    pub fn architecture(&self) -> &str {
        self.text(KEY_ARCHITECTURE).expect("checked at open")
    }
    /// config.json text.
    pub fn config_json(&self) -> &str {
        self.text(KEY_CONFIG_JSON).expect("checked at open")
    }
    /// tokenizer.json text.
    pub fn tokenizer_json(&self) -> &str {
        self.text(KEY_TOKENIZER_JSON).expect("checked at open")
    }
    pub fn tokenizer_config_json(&self) -> Option<&str> {
        self.text(KEY_TOKENIZER_CONFIG_JSON)
    }
    /// chat_template.json text, if the checkpoint had one.
    pub fn chat_template_json(&self) -> Option<&str> {
        self.text(KEY_CHAT_TEMPLATE_JSON)
    }
    /// The Jinja chat template (`tokenizer.chat_template`), if stored.
    pub fn chat_template(&self) -> Option<&str> {
        self.text(KEY_CHAT_TEMPLATE)
    }
    pub fn generation_config_json(&self) -> Option<&str> {
        self.text(KEY_GENERATION_CONFIG_JSON)
    }
    pub fn preprocessor_config_json(&self) -> Option<&str> {
        self.text(KEY_PREPROCESSOR_CONFIG_JSON)
    }
}

/// A tensor to be written: name, storage type and Hugging Face shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorPlan {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl TensorPlan {
    pub fn new(name: impl Into<String>, dtype: DType, shape: &[usize]) -> TensorPlan {
        TensorPlan {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
        }
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn bytes(&self) -> usize {
        self.dtype.bytes_for(self.numel())
    }
}

/// Streaming GGUF writer: the header, metadata and tensor infos are written by
/// [`GgufWriter::create`] (sizes follow from the plan), then each tensor's data with
/// [`GgufWriter::write_tensor`] in plan order, so only one tensor is ever held in memory.
pub struct GgufWriter {
    path: PathBuf,
    out: BufWriter<File>,
    plan: Vec<TensorPlan>,
    next: usize,
    /// Bytes of the current tensor written so far.
    part: usize,
    alignment: usize,
    pos: u64,
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn put_value(buf: &mut Vec<u8>, v: &MetaValue) -> std::result::Result<(), String> {
    match v {
        MetaValue::U8(x) => buf.push(*x),
        MetaValue::I8(x) => buf.push(*x as u8),
        MetaValue::U16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => buf.push(u8::from(*x)),
        MetaValue::String(s) => put_str(buf, s),
        MetaValue::U64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Array { item_type, items } => {
            buf.extend_from_slice(&(*item_type as u32).to_le_bytes());
            buf.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for it in items {
                if it.value_type() != *item_type {
                    return Err(format!(
                        "array of {item_type:?} holds a {:?}",
                        it.value_type()
                    ));
                }
                put_value(buf, it)?;
            }
        }
    }
    Ok(())
}

impl GgufWriter {
    /// Creates (truncating) `path` and writes everything up to the data section.
    /// `general.alignment` is taken from `metadata` if given (a u32 power of two), otherwise
    /// [`DEFAULT_ALIGNMENT`] is used and written.
    pub fn create(
        path: impl AsRef<Path>,
        metadata: &[(String, MetaValue)],
        tensors: Vec<TensorPlan>,
    ) -> Result<GgufWriter> {
        let path = path.as_ref().to_path_buf();
        let bad = |msg: String| Error::file(&path, format!("GGUF writer: {msg}"));
        let mut seen = std::collections::HashSet::new();
        for (k, _) in metadata {
            if !seen.insert(k.as_str()) {
                return Err(bad(format!("duplicate metadata key `{k}`")));
            }
        }
        let alignment = match metadata
            .iter()
            .find(|(k, _)| k == KEY_ALIGNMENT)
            .map(|(_, v)| v)
        {
            None => DEFAULT_ALIGNMENT,
            Some(MetaValue::U32(a)) if *a > 0 && a.is_power_of_two() => *a as usize,
            Some(v) => {
                return Err(bad(format!(
                    "`{KEY_ALIGNMENT}` must be a u32 power of two, got {v:?}"
                )))
            }
        };
        let mut kv: Vec<(String, MetaValue)> = Vec::with_capacity(metadata.len() + 1);
        if !metadata.iter().any(|(k, _)| k == KEY_ALIGNMENT) {
            kv.push((KEY_ALIGNMENT.to_string(), MetaValue::U32(alignment as u32)));
        }
        kv.extend(metadata.iter().cloned());
        for t in &tensors {
            if t.shape.len() > MAX_DIMS {
                let key = format!("{KEY_TENSOR_SHAPE_PREFIX}{}", t.name);
                if seen.contains(key.as_str()) {
                    return Err(bad(format!(
                        "metadata key `{key}` is reserved for the writer"
                    )));
                }
                let dims = t.shape.iter().map(|&d| MetaValue::U64(d as u64)).collect();
                kv.push((
                    key,
                    MetaValue::Array {
                        item_type: ValueType::U64,
                        items: dims,
                    },
                ));
            }
        }

        let mut head = Vec::new();
        head.extend_from_slice(&GGUF_MAGIC);
        head.extend_from_slice(&GGUF_VERSION.to_le_bytes());
        head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(kv.len() as u64).to_le_bytes());
        for (k, v) in &kv {
            put_str(&mut head, k);
            head.extend_from_slice(&(v.value_type() as u32).to_le_bytes());
            put_value(&mut head, v).map_err(|m| bad(format!("metadata `{k}`: {m}")))?;
        }
        let mut names = std::collections::HashSet::new();
        let mut offset = 0usize;
        for t in &tensors {
            if !names.insert(t.name.as_str()) {
                return Err(bad(format!("duplicate tensor name `{}`", t.name)));
            }
            let ty = ggml_type_id(t.dtype).ok_or_else(|| {
                bad(format!(
                    "tensor `{}`: GGUF cannot store {}",
                    t.name, t.dtype
                ))
            })?;
            if t.shape.is_empty() {
                return Err(bad(format!("tensor `{}`: empty shape", t.name)));
            }
            let stored: Vec<usize> = if t.shape.len() > MAX_DIMS {
                vec![t.shape[0], t.shape[1..].iter().product()]
            } else {
                t.shape.clone()
            };
            let row = *t.shape.last().unwrap();
            if row % t.dtype.block_len() != 0 {
                return Err(bad(format!(
                    "tensor `{}`: row length {row} is not a multiple of the {} block size {}",
                    t.name,
                    t.dtype,
                    t.dtype.block_len()
                )));
            }
            put_str(&mut head, &t.name);
            head.extend_from_slice(&(stored.len() as u32).to_le_bytes());
            for &d in stored.iter().rev() {
                head.extend_from_slice(&(d as u64).to_le_bytes());
            }
            head.extend_from_slice(&ty.to_le_bytes());
            head.extend_from_slice(&(offset as u64).to_le_bytes());
            offset = align_up(offset + t.bytes(), alignment);
        }
        head.resize(align_up(head.len(), alignment), 0);

        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&head).map_err(|e| Error::io(&path, e))?;
        Ok(GgufWriter {
            path,
            out,
            plan: tensors,
            next: 0,
            part: 0,
            alignment,
            pos: head.len() as u64,
        })
    }

    /// The plan entry whose data comes next, if any.
    pub fn next_tensor(&self) -> Option<&TensorPlan> {
        self.plan.get(self.next)
    }

    /// Writes the data of the next planned tensor; `name` and the byte count must match the plan.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<()> {
        if let Some(t) = self.plan.get(self.next) {
            if t.name == name && (self.part != 0 || data.len() != t.bytes()) {
                return Err(Error::file(
                    &self.path,
                    format!(
                        "GGUF writer: `{name}` ({} {:?}) takes {} bytes, got {}",
                        t.dtype,
                        t.shape,
                        t.bytes(),
                        data.len()
                    ),
                ));
            }
        }
        self.write_tensor_part(name, data).map(|_| ())
    }

    /// Appends part of the next planned tensor's data (so a large tensor can be produced and
    /// written piece by piece). Returns true once the tensor is complete; then the padding is
    /// written and the next tensor begins.
    pub fn write_tensor_part(&mut self, name: &str, data: &[u8]) -> Result<bool> {
        let t = self.plan.get(self.next).ok_or_else(|| {
            Error::file(
                &self.path,
                format!(
                    "GGUF writer: tensor `{name}` was not planned (all {} written)",
                    self.plan.len()
                ),
            )
        })?;
        if t.name != name {
            return Err(Error::file(
                &self.path,
                format!(
                    "GGUF writer: expected data for `{}` next, got `{name}`",
                    t.name
                ),
            ));
        }
        let want = t.bytes();
        if self.part + data.len() > want {
            return Err(Error::file(
                &self.path,
                format!(
                    "GGUF writer: `{name}` ({} {:?}) takes {want} bytes, got {}",
                    t.dtype,
                    t.shape,
                    self.part + data.len()
                ),
            ));
        }
        let io = |e| Error::io(&self.path, e);
        self.out.write_all(data).map_err(io)?;
        self.part += data.len();
        self.pos += data.len() as u64;
        if self.part < want {
            return Ok(false);
        }
        let pad = align_up(want, self.alignment) - want;
        self.out.write_all(&vec![0u8; pad]).map_err(io)?;
        self.pos += pad as u64;
        self.part = 0;
        self.next += 1;
        Ok(true)
    }

    /// Checks every planned tensor was written, flushes and syncs the file.
    pub fn finish(self) -> Result<()> {
        if self.next != self.plan.len() {
            return Err(Error::file(
                &self.path,
                format!(
                    "GGUF writer: only {} of {} tensors written (next: `{}`)",
                    self.next,
                    self.plan.len(),
                    self.plan[self.next].name
                ),
            ));
        }
        let file = self
            .out
            .into_inner()
            .map_err(|e| Error::io(&self.path, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&self.path, e))?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Bytes written so far.
    pub fn position(&self) -> u64 {
        self.pos
    }
}

impl super::WeightStore for GgufStore {
    fn get(&self, name: &str) -> Option<super::TensorInfo> {
        let t = self.tensor_info(name)?;
        Some(super::TensorInfo {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
            bytes: self.bytes_of(t),
        })
    }

    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.tensors.iter().map(|t| t.name.clone()).collect();
        v.sort();
        v
    }

    fn describe(&self) -> String {
        format!(
            "gguf {} ({} tensors)",
            self.path.display(),
            self.tensors.len()
        )
    }

    fn origin(&self, _name: &str) -> String {
        self.path.display().to_string()
    }

    fn file_dtype(&self, name: &str) -> Option<String> {
        self.tensor_info(name)
            .map(|t| ggml_type_name(t.dtype).to_string())
    }
}

/// The type name as ggml spells it.
pub fn ggml_type_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::I32 => "I32",
        DType::U8 => "U8",
        DType::Q8_0 => "Q8_0",
        DType::Q4K => "Q4_K",
        DType::Q6K => "Q6_K",
    }
}
