//! The Hugging Face checkpoint directory as reel-quantize reads it: the weights through
//! `reel::store` (memory-mapped safetensors shards) and the JSON texts that go into the GGUF
//! metadata.

use anyhow::{bail, Context, Result};
use reel::store::{SafetensorsStore, TensorInfo, WeightStore};
use std::path::{Path, PathBuf};

pub struct Checkpoint {
    pub dir: PathBuf,
    /// Every tensor, sorted by name; bytes are views of the maps.
    pub tensors: Vec<TensorInfo>,
}

impl Checkpoint {
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        if !dir.is_dir() {
            bail!(
                "--model {}: not a directory (expected a Hugging Face checkpoint directory)",
                dir.display()
            );
        }
        let store = SafetensorsStore::open_dir(dir)?;
        let mut tensors = Vec::new();
        for name in store.names() {
            // `lookup` turns a tensor of a type reel cannot convert into an error naming it.
            let t = store
                .lookup(&name)?
                .with_context(|| format!("tensor `{name}` listed but not readable"))?;
            tensors.push(t);
        }
        if tensors.is_empty() {
            bail!("--model {}: the checkpoint has no tensors", dir.display());
        }
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            tensors,
        })
    }

    /// A text file of the checkpoint directory, if present (JSON files are validated).
    pub fn text(&self, file: &str) -> Result<Option<String>> {
        let p = self.dir.join(file);
        if !p.exists() {
            return Ok(None);
        }
        let s = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        if file.ends_with(".json") {
            serde_json::from_str::<serde_json::Value>(&s)
                .with_context(|| format!("{}: invalid JSON", p.display()))?;
        }
        Ok(Some(s))
    }
}
