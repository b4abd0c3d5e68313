//! Checkpoint files: Hugging Face safetensors shards (memory-mapped) and GGUF.
//!
//! A [`WeightStore`] answers "give me tensor X" with its dtype, shape and bytes; the bytes are
//! a [`HostBytes`] range that keeps the memory map alive, so the CPU backend computes straight
//! from the map and device backends copy once. What the model expects (names, shapes) lives in
//! `model::weights`; this module only reads files.

pub mod gguf;
pub mod safetensors;

use crate::backend::HostBytes;
use crate::error::{Error, Result};
use crate::model::config::{GenerationConfig, ModelConfig, PreprocessorConfig};
use crate::tensor::DType;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// Everything `open_model` finds: the parsed configs and the weights.
pub struct ModelFiles {
    /// Directory holding the side files (tokenizer.json, chat template, ...).
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub generation: GenerationConfig,
    pub preprocessor: PreprocessorConfig,
    pub store: Arc<dyn WeightStore>,
    /// tokenizer.json text embedded in a GGUF file (None: read it from `dir`).
    pub tokenizer_json: Option<String>,
    /// Chat template embedded in a GGUF file (None: read it from `dir`).
    pub chat_template: Option<String>,
}

impl ModelFiles {
    /// Config fields, tensor count and bytes by dtype, for `reel info`.
    pub fn summary(&self) -> String {
        format!(
            "{}\n{}\n{}",
            self.store.describe(),
            self.config.summary(),
            crate::model::weights::store_summary(self.store.as_ref())
        )
    }
}

/// Opens a model: a Hugging Face checkpoint directory (config.json plus safetensors shards),
/// or a single `.safetensors` file whose directory holds config.json.
pub fn open_model(path: &Path) -> Result<ModelFiles> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_file() {
        match path.extension().and_then(|e| e.to_str()) {
            // GGUF files written by reel-quantize: the GGUF reader plugs in here.
            Some("gguf") => return open_gguf(path),
            Some("safetensors") => {
                let dir = parent_dir(path);
                let (config, generation, preprocessor) = read_configs(&dir)?;
                let store = SafetensorsStore::open_files(&dir, &[path.to_path_buf()])?;
                return Ok(ModelFiles {
                    dir,
                    config,
                    generation,
                    preprocessor,
                    store: Arc::new(store),
                    tokenizer_json: None,
                    chat_template: None,
                });
            }
            _ => return Err(Error::file(
                path,
                "not a model: expected a checkpoint directory, a .safetensors file or a .gguf file",
            )),
        }
    }
    let dir = path.to_path_buf();
    let (config, generation, preprocessor) = read_configs(&dir)?;
    let store = SafetensorsStore::open_dir(&dir)?;
    Ok(ModelFiles {
        dir,
        config,
        generation,
        preprocessor,
        store: Arc::new(store),
        tokenizer_json: None,
        chat_template: None,
    })
}

/// A GGUF file written by reel-quantize: configs, tokenizer and template come from its metadata.
fn open_gguf(path: &Path) -> Result<ModelFiles> {
    let m = gguf::GgufModel::open(path)?;
    let config = m.model_config()?;
    let origin = |name: &str| path.join(name);
    let generation = match m.generation_config_json() {
        Some(t) => GenerationConfig::from_json(t, &origin("generation_config.json"))?,
        None => GenerationConfig::default(),
    };
    let preprocessor = match m.preprocessor_config_json() {
        Some(t) => PreprocessorConfig::from_json(t, &origin("preprocessor_config.json"))?,
        None => PreprocessorConfig::default(),
    };
    let tokenizer_json = Some(m.tokenizer_json().to_string());
    let chat_template = m.chat_template().map(str::to_string);
    Ok(ModelFiles {
        dir: parent_dir(path),
        config,
        generation,
        preprocessor,
        store: Arc::new(m.into_store()),
        tokenizer_json,
        chat_template,
    })
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn read_configs(dir: &Path) -> Result<(ModelConfig, GenerationConfig, PreprocessorConfig)> {
    let config = ModelConfig::from_file(&dir.join("config.json"))?;
    let generation = GenerationConfig::from_dir(dir)?;
    let preprocessor = PreprocessorConfig::from_dir(dir)?;
    Ok((config, generation, preprocessor))
}
