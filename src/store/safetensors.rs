//! Safetensors shards, memory-mapped.
//!
//! File layout: an 8-byte little-endian header length `n`, `n` bytes of JSON mapping each
//! tensor name to `{dtype, shape, data_offsets: [begin, end]}` (offsets relative to the end of
//! the header), then the data. The header is parsed here rather than by the `safetensors` crate
//! so that every defect (truncation, overlapping ranges, an unknown dtype) names the tensor and
//! the file, and so a tensor in an unreadable type only fails when it is used.

use super::{TensorInfo, WeightStore};
use crate::backend::HostBytes;
use crate::error::{Error, Result};
use crate::tensor::DType;
use memmap2::Mmap;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The index file of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// The single-file checkpoint name.
pub const SINGLE_FILE: &str = "model.safetensors";

/// Headers larger than this are refused before parsing (the crate's own limit).
const MAX_HEADER: usize = 100 * 1024 * 1024;

type Owner = Arc<dyn AsRef<[u8]> + Send + Sync>;

struct Shard {
    path: PathBuf,
    map: Owner,
}

#[derive(Clone, Debug)]
struct Entry {
    shard: usize,
    /// The dtype as the file spells it (`BF16`, `F64`, ...).
    file_dtype: String,
    /// The engine type, when reel has one for `file_dtype`.
    dtype: Option<DType>,
    shape: Vec<usize>,
    /// Absolute byte range in the shard.
    start: usize,
    len: usize,
    /// An aligned copy, for the rare file whose data is not aligned to the element size
    /// (backends read weights as typed slices).
    copy: Option<HostBytes>,
}

/// Bytes in 8-byte-aligned storage.
struct AlignedBuf {
    words: Vec<u64>,
    len: usize,
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        &bytemuck::cast_slice::<u64, u8>(&self.words)[..self.len]
    }
}

fn aligned_copy(src: &[u8]) -> HostBytes {
    let mut words = vec![0u64; src.len().div_ceil(8)];
    bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..src.len()].copy_from_slice(src);
    HostBytes::new(
        Arc::new(AlignedBuf {
            words,
            len: src.len(),
        }),
        0,
        src.len(),
    )
}

/// A set of memory-mapped safetensors shards.
pub struct SafetensorsStore {
    dir: PathBuf,
    shards: Vec<Shard>,
    tensors: BTreeMap<String, Entry>,
}

impl SafetensorsStore {
    /// Opens the checkpoint in `dir`: `model.safetensors.index.json` and the shards it names;
    /// else `model.safetensors`; else every `*.safetensors` file in the directory.
    pub fn open_dir(dir: &Path) -> Result<SafetensorsStore> {
        let index = dir.join(INDEX_FILE);
        if index.is_file() {
            return SafetensorsStore::open_index(&index);
        }
        let single = dir.join(SINGLE_FILE);
        if single.is_file() {
            return SafetensorsStore::open_files(dir, &[single]);
        }
        let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        let mut files = Vec::new();
        for ent in rd {
            let ent = ent.map_err(|e| Error::io(dir, e))?;
            let p = ent.path();
            if p.is_file() && p.extension().is_some_and(|x| x == "safetensors") {
                files.push(p);
            }
        }
        if files.is_empty() {
            return Err(Error::file(
                dir,
                format!(
                    "no weights: neither {INDEX_FILE}, {SINGLE_FILE} nor any *.safetensors file"
                ),
            ));
        }
        files.sort();
        SafetensorsStore::open_files(dir, &files)
    }

    /// Opens a sharded checkpoint through its index file.
    pub fn open_index(index: &Path) -> Result<SafetensorsStore> {
        let dir = index
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let text = crate::fence::read_text_bounded(
            index,
            crate::fence::MAX_JSON_FILE,
            "a safetensors index",
        )?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::file(index, format!("malformed JSON: {e}")))?;
        let Some(map) = v.get("weight_map").and_then(Value::as_object) else {
            return Err(Error::file(index, "no `weight_map` object"));
        };
        let mut wanted: BTreeMap<String, String> = BTreeMap::new();
        for (name, file) in map {
            let Some(file) = file.as_str() else {
                return Err(Error::file(
                    index,
                    format!("weight_map entry `{name}`: expected a file name, found {file}"),
                ));
            };
            // Shards sit beside the index: a path that leads elsewhere is refused.
            let plain = Path::new(file)
                .file_name()
                .is_some_and(|f| f == std::ffi::OsStr::new(file));
            if !plain {
                return Err(Error::file(
                    index,
                    format!(
                        "weight_map entry `{name}`: shard {file:?} is not a file name in the checkpoint directory"
                    ),
                ));
            }
            wanted.insert(name.clone(), file.to_string());
        }
        let mut files: Vec<&String> = wanted.values().collect();
        files.sort();
        files.dedup();
        let mut store = SafetensorsStore {
            dir: dir.clone(),
            shards: Vec::new(),
            tensors: BTreeMap::new(),
        };
        let mut shard_of: HashMap<&str, usize> = HashMap::new();
        let mut contents: Vec<BTreeMap<String, Entry>> = Vec::new();
        for file in files {
            let path = dir.join(file);
            if !path.is_file() {
                return Err(Error::file(
                    index,
                    format!(
                        "names shard {file}, which does not exist ({})",
                        path.display()
                    ),
                ));
            }
            let id = store.shards.len();
            let (shard, entries) = open_shard(&path, id)?;
            store.shards.push(shard);
            contents.push(entries);
            shard_of.insert(file.as_str(), id);
        }
        for (name, file) in &wanted {
            let id = shard_of[file.as_str()];
            let Some(entry) = contents[id].get(name) else {
                return Err(Error::Checkpoint(format!(
                    "tensor `{name}` is listed in {} under {file}, but {} does not contain it",
                    index.display(),
                    store.shards[id].path.display()
                )));
            };
            store.tensors.insert(name.clone(), entry.clone());
        }
        Ok(store)
    }

    /// Opens the given shard files (no index); a name in two files is an error.
    pub fn open_files(dir: &Path, files: &[PathBuf]) -> Result<SafetensorsStore> {
        let mut store = SafetensorsStore {
            dir: dir.to_path_buf(),
            shards: Vec::new(),
            tensors: BTreeMap::new(),
        };
        for path in files {
            let id = store.shards.len();
            let (shard, entries) = open_shard(path, id)?;
            store.shards.push(shard);
            for (name, entry) in entries {
                if let Some(prev) = store.tensors.get(&name) {
                    return Err(Error::Checkpoint(format!(
                        "tensor `{name}` appears in both {} and {}",
                        store.shards[prev.shard].path.display(),
                        path.display()
                    )));
                }
                store.tensors.insert(name, entry);
            }
        }
        Ok(store)
    }

    /// The shard files, in load order.
    pub fn shard_paths(&self) -> Vec<PathBuf> {
        self.shards.iter().map(|s| s.path.clone()).collect()
    }

    fn info(&self, name: &str, e: &Entry, dtype: DType) -> TensorInfo {
        TensorInfo {
            name: name.to_string(),
            dtype,
            shape: e.shape.clone(),
            bytes: match &e.copy {
                Some(c) => c.clone(),
                None => HostBytes::new(self.shards[e.shard].map.clone(), e.start, e.len),
            },
        }
    }
}

impl WeightStore for SafetensorsStore {
    fn get(&self, name: &str) -> Option<TensorInfo> {
        let e = self.tensors.get(name)?;
        e.dtype.map(|dt| self.info(name, e, dt))
    }

    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }

    fn describe(&self) -> String {
        format!(
            "safetensors {} ({} shard{}, {} tensors)",
            self.dir.display(),
            self.shards.len(),
            if self.shards.len() == 1 { "" } else { "s" },
            self.tensors.len()
        )
    }

    fn lookup(&self, name: &str) -> Result<Option<TensorInfo>> {
        let Some(e) = self.tensors.get(name) else {
            return Ok(None);
        };
        match e.dtype {
            Some(dt) => Ok(Some(self.info(name, e, dt))),
            None => Err(Error::Checkpoint(format!(
                "tensor `{name}` in {} has dtype {}, which reel cannot use (weights must be BF16, F16 or F32)",
                self.shards[e.shard].path.display(),
                e.file_dtype
            ))),
        }
    }

    fn origin(&self, name: &str) -> String {
        match self.tensors.get(name) {
            Some(e) => self.shards[e.shard].path.display().to_string(),
            None => self.describe(),
        }
    }

    fn file_dtype(&self, name: &str) -> Option<String> {
        self.tensors.get(name).map(|e| e.file_dtype.clone())
    }
}

/// Bits per element of a safetensors dtype name (None: a name this reader does not know).
fn dtype_bits(s: &str) -> Option<usize> {
    Some(match s {
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 8,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "I64" | "U64" | "F64" | "C64" => 64,
        _ => return None,
    })
}

fn engine_dtype(s: &str) -> Option<DType> {
    Some(match s {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "I32" => DType::I32,
        "U8" => DType::U8,
        _ => return None,
    })
}

/// Maps one shard and checks its header against the file size.
fn open_shard(path: &Path, id: usize) -> Result<(Shard, BTreeMap<String, Entry>)> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len() as usize;
    if file_len < 8 {
        return Err(Error::file(
            path,
            format!("{file_len} bytes is too short for a safetensors file (truncated?)"),
        ));
    }
    // SAFETY: the map is read-only and private to this process; like every memory-mapped
    // loader, it relies on nobody truncating the checkpoint while it is in use.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let entries = entries_of(&map, path, id)?;
    let owner: Owner = Arc::new(map);
    Ok((
        Shard {
            path: path.to_path_buf(),
            map: owner,
        },
        entries,
    ))
}

/// The checked entries of a shard whose whole contents are `buf` (page-aligned, as a map
/// is), with aligned copies of the entries whose data is not.
fn entries_of(buf: &[u8], path: &Path, id: usize) -> Result<BTreeMap<String, Entry>> {
    let mut entries = parse_header(buf, path, id)?;
    for e in entries.values_mut() {
        if let Some(dt) = e.dtype {
            if e.start % dt.block_bytes().min(8) != 0 {
                e.copy = Some(aligned_copy(&buf[e.start..e.start + e.len]));
            }
        }
    }
    Ok(entries)
}

/// Checks the contents of one safetensors file held in memory as [`SafetensorsStore`] checks
/// a shard (`origin` names it in errors); returns its tensor count. For tools and tests that
/// vet a file without mapping it.
pub fn check_shard(buf: &[u8], origin: &Path) -> Result<usize> {
    entries_of(buf, origin, 0).map(|e| e.len())
}

/// Parses and checks a safetensors header. `buf` is the whole file.
fn parse_header(buf: &[u8], path: &Path, id: usize) -> Result<BTreeMap<String, Entry>> {
    let bad = |msg: String| Error::file(path, msg);
    let file_len = buf.len();
    let Some(len_bytes) = buf.first_chunk::<8>() else {
        return Err(bad(format!(
            "{file_len} bytes is too short for a safetensors file (truncated?)"
        )));
    };
    let n = u64::from_le_bytes(*len_bytes);
    if n > (file_len - 8) as u64 {
        return Err(bad(format!(
            "safetensors header length {n} exceeds the file size {file_len} (truncated, or not a safetensors file)"
        )));
    }
    let n = n as usize;
    if n > MAX_HEADER {
        return Err(bad(format!(
            "safetensors header of {n} bytes is implausibly large"
        )));
    }
    let data_start = 8 + n;
    let header = std::str::from_utf8(&buf[8..data_start])
        .map_err(|e| bad(format!("safetensors header is not UTF-8: {e}")))?;
    let v: Value = serde_json::from_str(header.trim_end_matches(' '))
        .map_err(|e| bad(format!("malformed safetensors header JSON: {e}")))?;
    let Value::Object(obj) = v else {
        return Err(bad("safetensors header is not a JSON object".into()));
    };
    let data_len = file_len - data_start;
    let mut out = BTreeMap::new();
    for (name, info) in obj {
        if name == "__metadata__" {
            continue;
        }
        let field = |k: &str| {
            info.get(k)
                .ok_or_else(|| bad(format!("tensor `{name}`: header entry has no `{k}`")))
        };
        let file_dtype = field("dtype")?
            .as_str()
            .ok_or_else(|| bad(format!("tensor `{name}`: `dtype` is not a string")))?
            .to_string();
        let shape = field("shape")?
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(|d| d.as_u64().map(|d| d as usize))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| bad(format!("tensor `{name}`: `shape` is not a list of sizes")))?;
        let offs = field("data_offsets")?
            .as_array()
            .filter(|a| a.len() == 2)
            .and_then(|a| Some((a[0].as_u64()? as usize, a[1].as_u64()? as usize)))
            .ok_or_else(|| {
                bad(format!(
                    "tensor `{name}`: `data_offsets` is not [begin, end]"
                ))
            })?;
        let (begin, end) = offs;
        if end < begin {
            return Err(bad(format!(
                "tensor `{name}`: data_offsets [{begin}, {end}] end before they begin"
            )));
        }
        if end > data_len {
            return Err(bad(format!(
                "tensor `{name}` ends at data byte {end}, but the file holds only {data_len} data bytes (truncated shard?)"
            )));
        }
        if let Some(bits) = dtype_bits(&file_dtype) {
            let numel = shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| bad(format!("tensor `{name}`: shape {shape:?} overflows")))?;
            let want = numel
                .checked_mul(bits)
                .map(|b| b.div_ceil(8))
                .ok_or_else(|| bad(format!("tensor `{name}`: shape {shape:?} overflows")))?;
            if end - begin != want {
                return Err(bad(format!(
                    "tensor `{name}`: data_offsets [{begin}, {end}] span {} bytes, but shape {shape:?} of {file_dtype} needs {want}",
                    end - begin
                )));
            }
        }
        let dtype = engine_dtype(&file_dtype);
        out.insert(
            name,
            Entry {
                shard: id,
                file_dtype,
                dtype,
                shape,
                start: data_start + begin,
                len: end - begin,
                copy: None,
            },
        );
    }
    // Data ranges must not overlap (they may leave gaps).
    let mut ranges: Vec<(&String, &Entry)> = out.iter().filter(|(_, e)| e.len > 0).collect();
    ranges.sort_by_key(|(_, e)| e.start);
    for w in ranges.windows(2) {
        let (a, ea) = w[0];
        let (b, eb) = w[1];
        if ea.start + ea.len > eb.start {
            return Err(bad(format!(
                "tensors `{a}` and `{b}` have overlapping data_offsets"
            )));
        }
    }
    Ok(out)
}
