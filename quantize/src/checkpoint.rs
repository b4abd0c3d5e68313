//! The Hugging Face checkpoint directory as reel-quantize reads it: safetensors shards, mapped,
//! and the JSON texts that go into the GGUF metadata.

use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use reel::DType;
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// One tensor of the checkpoint: where its bytes are in which shard.
#[derive(Clone, Debug)]
pub struct SourceTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub shard: usize,
    pub start: usize,
    pub end: usize,
}

pub struct Checkpoint {
    pub dir: PathBuf,
    pub shards: Vec<(PathBuf, Mmap)>,
    /// Sorted by name.
    pub tensors: Vec<SourceTensor>,
}

fn dtype_of(d: Dtype, name: &str, file: &Path) -> Result<DType> {
    Ok(match d {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::I32 => DType::I32,
        other => bail!(
            "{}: tensor `{name}` has dtype {other:?}, which reel-quantize cannot convert",
            file.display()
        ),
    })
}

impl Checkpoint {
    /// Lists the shards (from model.safetensors.index.json if present, else every *.safetensors
    /// in the directory), maps them and reads their headers.
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        if !dir.is_dir() {
            bail!(
                "--model {}: not a directory (expected a Hugging Face checkpoint directory)",
                dir.display()
            );
        }
        let index = dir.join("model.safetensors.index.json");
        let mut files: Vec<PathBuf> = if index.exists() {
            let text = std::fs::read_to_string(&index)
                .with_context(|| format!("reading {}", index.display()))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: invalid JSON", index.display()))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .with_context(|| format!("{}: no `weight_map` object", index.display()))?;
            let mut f: Vec<PathBuf> = map
                .values()
                .filter_map(|s| s.as_str())
                .map(|s| dir.join(s))
                .collect();
            f.sort();
            f.dedup();
            f
        } else {
            let mut f = Vec::new();
            for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
                let p = e?.path();
                if p.extension().is_some_and(|x| x == "safetensors") {
                    f.push(p);
                }
            }
            f.sort();
            f
        };
        if files.is_empty() {
            bail!("--model {}: no *.safetensors files found", dir.display());
        }
        files.dedup();
        let mut shards = Vec::new();
        let mut by_name = BTreeMap::new();
        for (i, path) in files.iter().enumerate() {
            let file =
                File::open(path).with_context(|| format!("opening shard {}", path.display()))?;
            // SAFETY: read-only map of a file we do not modify.
            let map = unsafe { Mmap::map(&file) }
                .with_context(|| format!("mapping {}", path.display()))?;
            let (n, meta) = SafeTensors::read_metadata(&map).map_err(|e| {
                anyhow::anyhow!("{}: not a valid safetensors file: {e}", path.display())
            })?;
            let base = 8 + n;
            for (name, info) in meta.tensors() {
                let dtype = dtype_of(info.dtype, &name, path)?;
                let (s, e) = info.data_offsets;
                let t = SourceTensor {
                    name: name.clone(),
                    dtype,
                    shape: info.shape.clone(),
                    shard: i,
                    start: base + s,
                    end: base + e,
                };
                if t.end > map.len()
                    || t.shape.iter().product::<usize>() * dtype.block_bytes() != e - s
                {
                    bail!("{}: tensor `{name}` has inconsistent size or lies past the end of the file", path.display());
                }
                if by_name.insert(name.clone(), t).is_some() {
                    bail!(
                        "tensor `{name}` appears in more than one shard (second: {})",
                        path.display()
                    );
                }
            }
            shards.push((path.clone(), map));
        }
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            shards,
            tensors: by_name.into_values().collect(),
        })
    }

    pub fn bytes(&self, t: &SourceTensor) -> &[u8] {
        &self.shards[t.shard].1[t.start..t.end]
    }

    /// A text file of the checkpoint directory, if present.
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
