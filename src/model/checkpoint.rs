//! A checkpoint as a model sees it: the weights (read by `store`), the JSON side files parsed,
//! and the checks every architecture's tensors go through before they are used.

use crate::backend::{Backend, TRef};
use crate::error::{Error, Result};
use crate::fence;
use crate::model::config::{GenerationConfig, PreprocessorConfig};
use crate::model::inventory::Inventory;
use crate::store::gguf::{GgufModel, KEY_CONFIG_JSON};
use crate::store::{self, Location, SafetensorsStore, TensorInfo, WeightStore};
use crate::tensor::{Shape, MAX_RANK};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Everything a checkpoint path holds: the parsed configs (`C` is the model configuration)
/// and the weights.
pub struct Files<C> {
    /// Directory holding the side files (tokenizer.json, chat template, ...).
    pub dir: PathBuf,
    pub config: C,
    pub generation: GenerationConfig,
    pub preprocessor: PreprocessorConfig,
    pub store: Arc<dyn WeightStore>,
    /// tokenizer.json text embedded in a GGUF file (None: read it from `dir`).
    pub tokenizer_json: Option<String>,
    /// Chat template embedded in a GGUF file (None: read it from `dir`).
    pub chat_template: Option<String>,
}

/// Opens a Hugging Face checkpoint directory, a single `.safetensors` file whose directory
/// holds config.json, or a GGUF file written by reel-quantize. `parse` turns config.json's text
/// into the model configuration; its path argument names the origin in errors. The
/// configuration is parsed before the weight files are opened, so a bad config.json is the
/// error even when the weights are bad too.
pub fn open_with<C>(path: &Path, parse: impl FnOnce(&str, &Path) -> Result<C>) -> Result<Files<C>> {
    let (dir, file) = match store::locate(path)? {
        Location::Gguf(p) => return open_gguf(&p, parse),
        Location::Safetensors { dir, file } => (dir, file),
    };
    let cp = dir.join("config.json");
    let text = fence::read_text_bounded(&cp, fence::MAX_JSON_FILE, "a config.json")?;
    let config = parse(&text, &cp)?;
    let generation = GenerationConfig::from_dir(&dir)?;
    let preprocessor = PreprocessorConfig::from_dir(&dir)?;
    let store = match file {
        Some(f) => SafetensorsStore::open_files(&dir, &[f])?,
        None => SafetensorsStore::open_dir(&dir)?,
    };
    Ok(Files {
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
fn open_gguf<C>(path: &Path, parse: impl FnOnce(&str, &Path) -> Result<C>) -> Result<Files<C>> {
    let m = GgufModel::open(path)?;
    let config = parse(m.config_json(), &gguf_config_origin(&m))?;
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
    Ok(Files {
        dir: store::parent_dir(path),
        config,
        generation,
        preprocessor,
        store: Arc::new(m.into_store()),
        tokenizer_json,
        chat_template,
    })
}

/// How errors name the config.json a GGUF file embeds: the file and the metadata key.
pub fn gguf_config_origin(m: &GgufModel) -> PathBuf {
    PathBuf::from(format!("{}:{KEY_CONFIG_JSON}", m.path().display()))
}

/// The tensor under its canonical name or the inventory's other spelling. A tensor in a type
/// reel cannot read is an error naming it.
pub fn try_resolve<C>(
    inv: &Inventory<C>,
    store: &dyn WeightStore,
    canonical: &str,
) -> Result<Option<TensorInfo>> {
    if let Some(t) = store.lookup(canonical)? {
        return Ok(Some(t));
    }
    match inv.alternate_name(canonical) {
        Some(alt) => store.lookup(&alt),
        None => Ok(None),
    }
}

/// The tensor `canonical`, checked: present, a weight type (float or quantized), exact shape,
/// and a byte length that matches. Errors name the tensor, what was expected and the file.
pub fn fetch<C>(
    inv: &Inventory<C>,
    store: &dyn WeightStore,
    canonical: &str,
    shape: &[usize],
) -> Result<TensorInfo> {
    let Some(t) = try_resolve(inv, store, canonical)? else {
        let also = inv
            .alternate_name(canonical)
            .map(|a| format!(" (or `{a}`)"))
            .unwrap_or_default();
        return Err(Error::Checkpoint(format!(
            "tensor `{canonical}`{also} is missing from {}; expected shape {shape:?}",
            store.describe()
        )));
    };
    let origin = || store.origin(&t.name);
    if !(t.dtype.is_float() || t.dtype.is_quantized()) {
        return Err(Error::Checkpoint(format!(
            "tensor `{}` in {} has dtype {}; weights must be bf16, f16, f32 or a quantized type",
            t.name,
            origin(),
            t.dtype
        )));
    }
    if t.shape != shape {
        return Err(Error::Checkpoint(format!(
            "tensor `{}` in {}: expected shape {shape:?}, found {:?}",
            t.name,
            origin(),
            t.shape
        )));
    }
    let numel = t.numel();
    let block = t.dtype.block_len();
    let row = shape.last().copied().unwrap_or(1);
    if row % block != 0 || numel % block != 0 {
        return Err(Error::Checkpoint(format!(
            "tensor `{}` in {}: {} blocks of {block} do not fit rows of {row}",
            t.name,
            origin(),
            t.dtype
        )));
    }
    if t.bytes.len() != t.dtype.bytes_for(numel) {
        return Err(Error::Checkpoint(format!(
            "tensor `{}` in {}: {} bytes, but {shape:?} of {} needs {}",
            t.name,
            origin(),
            t.bytes.len(),
            t.dtype,
            t.dtype.bytes_for(numel)
        )));
    }
    Ok(t)
}

/// Makes a checked checkpoint tensor available to `be` (zero copy on the CPU backend, one
/// upload on a device).
pub fn upload(be: &mut dyn Backend, t: &TensorInfo) -> Result<TRef> {
    if t.shape.is_empty() || t.shape.len() > MAX_RANK {
        return Err(Error::Checkpoint(format!(
            "{}: unsupported rank {}",
            t.name,
            t.shape.len()
        )));
    }
    let buf = be.load_weight(t.bytes.clone())?;
    Ok(TRef::new(buf, 0, t.dtype, Shape::new(&t.shape)))
}

/// Tensor count and bytes by dtype, for `reel info`.
pub fn store_summary(store: &dyn WeightStore) -> String {
    let names = store.names();
    let mut by_type: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    for n in &names {
        let dt = store.file_dtype(n).unwrap_or_else(|| "?".into());
        let slot = by_type.entry(dt).or_default();
        slot.0 += 1;
        if let Some(t) = store.get(n) {
            slot.1 += t.bytes.len();
            slot.2 += t.numel();
        }
    }
    let total_bytes: usize = by_type.values().map(|v| v.1).sum();
    let total_params: usize = by_type.values().map(|v| v.2).sum();
    let mut s = format!(
        "{} tensors, {} parameters, {:.1} MiB",
        names.len(),
        total_params,
        total_bytes as f64 / (1024.0 * 1024.0)
    );
    for (dt, (count, bytes, _)) in by_type {
        s.push_str(&format!("\n  {dt}: {count} tensors, {bytes} bytes"));
    }
    s
}
