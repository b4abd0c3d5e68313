//! Checkpoint files: Hugging Face safetensors shards (memory-mapped) and GGUF.
//!
//! A [`WeightStore`] answers "give me tensor X" with its dtype, shape and bytes; the bytes are
//! a [`HostBytes`] range that keeps the memory map alive, so the CPU backend computes straight
//! from the map and device backends copy once. What a model expects (names, shapes) and what
//! its config files mean live in `model`; this module only reads files.

pub mod gguf;
pub mod safetensors;

use crate::backend::HostBytes;
use crate::error::{Error, Result};
use crate::tensor::DType;
use std::path::{Path, PathBuf};

pub use self::safetensors::SafetensorsStore;

/// One tensor of a checkpoint.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    /// Logical shape, row-major (`[out, in]` for linear weights, as in the checkpoint).
    pub shape: Vec<usize>,
    pub bytes: HostBytes,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Read access to a checkpoint's tensors.
pub trait WeightStore: Send + Sync {
    /// The tensor called `name`, if the store has it in a type reel can read.
    fn get(&self, name: &str) -> Option<TensorInfo>;
    /// Every tensor name in the store (including any in unsupported types), sorted.
    fn names(&self) -> Vec<String>;
    /// One line naming the source, e.g. `safetensors DIR (2 shards, 81 tensors)`.
    fn describe(&self) -> String;
    /// Like [`get`](Self::get), but a tensor that exists in a type reel cannot use is an error
    /// naming the tensor, its type and its file, rather than `None`.
    fn lookup(&self, name: &str) -> Result<Option<TensorInfo>> {
        Ok(self.get(name))
    }
    /// The file holding `name`, for error messages (the store's description by default).
    fn origin(&self, name: &str) -> String {
        let _ = name;
        self.describe()
    }
    /// The type name of `name` as the file spells it (e.g. `BF16`, `F64`), whether or not reel
    /// can read it; used for summaries.
    fn file_dtype(&self, name: &str) -> Option<String> {
        self.get(name).map(|t| t.dtype.name().to_uppercase())
    }
}

/// What a model path points at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A GGUF file written by reel-quantize (configs, tokenizer and template in its metadata).
    Gguf(PathBuf),
    /// A Hugging Face checkpoint directory, or one `.safetensors` file (`file`) in it; the
    /// side files (config.json, tokenizer.json, ...) are in `dir`.
    Safetensors { dir: PathBuf, file: Option<PathBuf> },
}

/// Tells what a model path is: a checkpoint directory, a `.safetensors` file or a `.gguf`
/// file. Anything else is an error naming the path.
pub fn locate(path: &Path) -> Result<Location> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Ok(Location::Safetensors {
            dir: path.to_path_buf(),
            file: None,
        });
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some("gguf") => Ok(Location::Gguf(path.to_path_buf())),
        Some("safetensors") => Ok(Location::Safetensors {
            dir: parent_dir(path),
            file: Some(path.to_path_buf()),
        }),
        _ => Err(Error::file(
            path,
            "not a model: expected a checkpoint directory, a .safetensors file or a .gguf file",
        )),
    }
}

/// The directory a file is in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
