//! Configuration every architecture shares: the language model's shape and the special tokens
//! (filled by each architecture's config.json parser), generation_config.json and
//! preprocessor_config.json, and the JSON field access the parsers use (every error names the
//! file and the field as it appears there).

use crate::error::{Error, Result};
use crate::fence;
use serde_json::Value;
use std::path::Path;

/// Sane maxima for the sizes a config file gives, checked before anything is sized by them
/// (a corrupt or hostile file must not ask for terabytes). Real models sit far below: the
/// largest published ones have ~130 layers, widths under 64k and vocabularies under 1M.
pub mod limits {
    /// Decoder layers or vision blocks.
    pub const MAX_LAYERS: usize = 1024;
    /// Hidden, intermediate and output widths.
    pub const MAX_WIDTH: usize = 1 << 20;
    /// Attention heads (query or key/value) and the head dimension.
    pub const MAX_HEADS: usize = 1 << 16;
    /// Vocabulary entries.
    pub const MAX_VOCAB: usize = 1 << 24;
    /// Context positions.
    pub const MAX_POSITIONS: usize = 1 << 30;
    /// Patch side, temporal patch, merge size, input channels.
    pub const MAX_PATCH: usize = 1024;
    /// Pixels of a frame (min_pixels / max_pixels), as the image decoders allow.
    pub const MAX_PIXELS: usize = 1 << 28;
}

/// The language model.
#[derive(Clone, Debug, PartialEq)]
pub struct TextConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    /// Frequency pairs per M-RoPE section (temporal, height, width); sums to head_dim / 2.
    pub mrope_section: [usize; 3],
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
}

/// Special token ids.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenIds {
    pub bos: Option<u32>,
    /// EOS ids from config.json (generation_config.json's list wins when present).
    pub eos: Vec<u32>,
    pub image_pad: u32,
    pub video_pad: u32,
    pub vision_start: u32,
    pub vision_end: u32,
}

/// What every architecture reports about itself: the language model and the special tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub text: TextConfig,
    pub tokens: TokenIds,
}

/// Sampling defaults from generation_config.json.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationConfig {
    pub eos_token_ids: Vec<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub repetition_penalty: Option<f32>,
    pub do_sample: Option<bool>,
}

/// Image preprocessing constants from preprocessor_config.json.
#[derive(Clone, Debug, PartialEq)]
pub struct PreprocessorConfig {
    pub min_pixels: usize,
    pub max_pixels: usize,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub merge_size: usize,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
}

impl Default for PreprocessorConfig {
    fn default() -> Self {
        PreprocessorConfig {
            min_pixels: 3136,
            max_pixels: 12_845_056,
            patch_size: 14,
            temporal_patch_size: 2,
            merge_size: 2,
            image_mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
            image_std: [0.268_629_54, 0.261_302_6, 0.275_777_1],
        }
    }
}

impl TextConfig {
    /// Query heads per KV head.
    pub fn group_size(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }
}

// ---------------------------------------------------------------------------------------------
// JSON access. config files are read as JSON trees rather than through derived structs: the
// same field may live at the top level (4.x files) or under `text_config` (>= 4.52 files), keys
// have aliases, and every error must name the file and the field.

pub(crate) type Obj = serde_json::Map<String, Value>;

/// Reads a whole JSON file into an object, naming the path in every failure.
pub(crate) fn parse_json_object(text: &str, path: &Path) -> Result<Obj> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| Error::config(path, format!("malformed JSON: {e}")))?;
    match v {
        Value::Object(m) => Ok(m),
        other => Err(Error::config(
            path,
            format!(
                "expected a JSON object at the top level, found {}",
                kind(&other)
            ),
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Typed field access on one JSON object; `prefix` is how the object is reached from the top
/// (e.g. `vision_config.`), so messages name the field as it appears in the file.
pub(crate) struct Fields<'a> {
    pub(crate) path: &'a Path,
    pub(crate) obj: &'a Obj,
    pub(crate) prefix: &'a str,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(path: &'a Path, obj: &'a Obj, prefix: &'a str) -> Self {
        Fields { path, obj, prefix }
    }

    pub(crate) fn err(&self, key: &str, msg: impl std::fmt::Display) -> Error {
        Error::config(self.path, format!("field `{}{}`: {msg}", self.prefix, key))
    }

    pub(crate) fn wrong(&self, key: &str, want: &str, v: &Value) -> Error {
        self.err(key, format!("expected {want}, found {} ({v})", kind(v)))
    }

    /// The value under `key`; JSON null counts as absent (HF writes nulls for unset fields).
    pub(crate) fn raw(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    /// Fails unless `v` (the value of `key`) is at most `max`.
    pub(crate) fn at_most(&self, key: &str, v: usize, max: usize) -> Result<()> {
        if v > max {
            return Err(self.err(
                key,
                format!("{v} is over the limit of {max} (corrupt file?)"),
            ));
        }
        Ok(())
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.raw(key).is_some()
    }

    pub(crate) fn usize(&self, key: &str) -> Result<Option<usize>> {
        let Some(v) = self.raw(key) else {
            return Ok(None);
        };
        self.to_usize(key, v).map(Some)
    }

    pub(crate) fn to_usize(&self, key: &str, v: &Value) -> Result<usize> {
        if let Some(n) = v.as_u64() {
            return usize::try_from(n).map_err(|_| self.err(key, format!("{n} is too large")));
        }
        // Some tools write integral floats (e.g. `2.0`); accept them when exact.
        if let Some(f) = v.as_f64() {
            if f >= 0.0 && f.fract() == 0.0 && f < 9.0e15 {
                return Ok(f as usize);
            }
        }
        Err(self.wrong(key, "a non-negative integer", v))
    }

    pub(crate) fn u32(&self, key: &str) -> Result<Option<u32>> {
        match self.usize(key)? {
            None => Ok(None),
            Some(n) => u32::try_from(n)
                .map(Some)
                .map_err(|_| self.err(key, format!("{n} does not fit a token id"))),
        }
    }

    pub(crate) fn f32(&self, key: &str) -> Result<Option<f32>> {
        let Some(v) = self.raw(key) else {
            return Ok(None);
        };
        match v.as_f64() {
            Some(f) => Ok(Some(f as f32)),
            None => Err(self.wrong(key, "a number", v)),
        }
    }

    pub(crate) fn bool(&self, key: &str) -> Result<Option<bool>> {
        let Some(v) = self.raw(key) else {
            return Ok(None);
        };
        match v.as_bool() {
            Some(b) => Ok(Some(b)),
            None => Err(self.wrong(key, "true or false", v)),
        }
    }

    pub(crate) fn str(&self, key: &str) -> Result<Option<&'a str>> {
        let Some(v) = self.raw(key) else {
            return Ok(None);
        };
        match v.as_str() {
            Some(s) => Ok(Some(s)),
            None => Err(self.wrong(key, "a string", v)),
        }
    }

    pub(crate) fn object(&self, key: &str) -> Result<Option<&'a Obj>> {
        let Some(v) = self.raw(key) else {
            return Ok(None);
        };
        match v.as_object() {
            Some(o) => Ok(Some(o)),
            None => Err(self.wrong(key, "an object", v)),
        }
    }

    pub(crate) fn usize_list(&self, key: &str) -> Result<Option<Vec<usize>>> {
        let Some(v) = self.raw(key) else {
            return Ok(None);
        };
        let Some(items) = v.as_array() else {
            return Err(self.wrong(key, "an array of integers", v));
        };
        items
            .iter()
            .map(|x| self.to_usize(key, x))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// An integer or a list of integers (eos_token_id takes both forms).
    pub(crate) fn id_list(&self, key: &str) -> Result<Option<Vec<u32>>> {
        let Some(v) = self.raw(key) else {
            return Ok(None);
        };
        let ids = if v.is_array() {
            self.usize_list(key)?.unwrap_or_default()
        } else {
            vec![self.to_usize(key, v)?]
        };
        ids.into_iter()
            .map(|n| {
                u32::try_from(n).map_err(|_| self.err(key, format!("{n} does not fit a token id")))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    pub(crate) fn f32_triple(&self, key: &str) -> Result<Option<[f32; 3]>> {
        let Some(v) = self.raw(key) else {
            return Ok(None);
        };
        let bad = || self.wrong(key, "an array of 3 numbers", v);
        let items = v.as_array().ok_or_else(bad)?;
        if items.len() != 3 {
            return Err(bad());
        }
        let mut out = [0f32; 3];
        for (o, x) in out.iter_mut().zip(items) {
            *o = x.as_f64().ok_or_else(bad)? as f32;
        }
        Ok(Some(out))
    }
}

/// Looks a key up in the first object that has it (e.g. `text_config`, then the top level).
pub(crate) fn first_with<'a>(srcs: &'a [Fields<'a>], key: &str) -> &'a Fields<'a> {
    srcs.iter().find(|f| f.has(key)).unwrap_or(&srcs[0])
}

impl GenerationConfig {
    /// Reads generation_config.json; the file must exist.
    pub fn from_file(path: &Path) -> Result<GenerationConfig> {
        let text = fence::read_text_bounded(path, fence::MAX_JSON_FILE, "a config file")?;
        GenerationConfig::from_json(&text, path)
    }

    /// Parses generation_config.json text; `path` names its origin in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<GenerationConfig> {
        let obj = parse_json_object(text, path)?;
        let f = Fields::new(path, &obj, "");
        let g = GenerationConfig {
            eos_token_ids: f.id_list("eos_token_id")?.unwrap_or_default(),
            temperature: f.f32("temperature")?,
            top_p: f.f32("top_p")?,
            top_k: f.usize("top_k")?,
            repetition_penalty: f.f32("repetition_penalty")?,
            do_sample: f.bool("do_sample")?,
        };
        if let Some(t) = g.temperature {
            if t.is_nan() || t < 0.0 {
                return Err(f.err("temperature", format!("{t} must be non-negative")));
            }
        }
        if let Some(p) = g.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(f.err("top_p", format!("{p} must be in (0, 1]")));
            }
        }
        if let Some(r) = g.repetition_penalty {
            if r.is_nan() || r <= 0.0 {
                return Err(f.err("repetition_penalty", format!("{r} must be positive")));
            }
        }
        Ok(g)
    }

    /// `dir/generation_config.json`, or the defaults when the directory has none.
    pub fn from_dir(dir: &Path) -> Result<GenerationConfig> {
        let path = dir.join("generation_config.json");
        if path.exists() {
            GenerationConfig::from_file(&path)
        } else {
            Ok(GenerationConfig::default())
        }
    }
}

impl PreprocessorConfig {
    /// Reads preprocessor_config.json; the file must exist. Pixel limits come from
    /// `min_pixels`/`max_pixels`, which win over `size.shortest_edge`/`size.longest_edge`
    /// (the newer spelling of the same limits), as in the HF image processor.
    pub fn from_file(path: &Path) -> Result<PreprocessorConfig> {
        let text = fence::read_text_bounded(path, fence::MAX_JSON_FILE, "a config file")?;
        PreprocessorConfig::from_json(&text, path)
    }

    /// Parses preprocessor_config.json text; `path` names its origin in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<PreprocessorConfig> {
        let obj = parse_json_object(text, path)?;
        let f = Fields::new(path, &obj, "");
        let d = PreprocessorConfig::default();
        let empty = Obj::new();
        let size_obj = f.object("size")?;
        let sf = Fields::new(path, size_obj.unwrap_or(&empty), "size.");
        let min_pixels = match f.usize("min_pixels")? {
            Some(v) => v,
            None => sf.usize("shortest_edge")?.unwrap_or(d.min_pixels),
        };
        let max_pixels = match f.usize("max_pixels")? {
            Some(v) => v,
            None => sf.usize("longest_edge")?.unwrap_or(d.max_pixels),
        };
        let p = PreprocessorConfig {
            min_pixels,
            max_pixels,
            patch_size: f.usize("patch_size")?.unwrap_or(d.patch_size),
            temporal_patch_size: f
                .usize("temporal_patch_size")?
                .unwrap_or(d.temporal_patch_size),
            merge_size: f.usize("merge_size")?.unwrap_or(d.merge_size),
            image_mean: f.f32_triple("image_mean")?.unwrap_or(d.image_mean),
            image_std: f.f32_triple("image_std")?.unwrap_or(d.image_std),
        };
        for (key, v) in [
            ("patch_size", p.patch_size),
            ("temporal_patch_size", p.temporal_patch_size),
            ("merge_size", p.merge_size),
        ] {
            if v == 0 {
                return Err(f.err(key, "must be positive"));
            }
            f.at_most(key, v, limits::MAX_PATCH)?;
        }
        for (key, v) in [("min_pixels", p.min_pixels), ("max_pixels", p.max_pixels)] {
            f.at_most(key, v, limits::MAX_PIXELS)?;
        }
        if p.min_pixels > p.max_pixels {
            return Err(f.err(
                "min_pixels",
                format!("{} exceeds max_pixels {}", p.min_pixels, p.max_pixels),
            ));
        }
        if p.image_std.iter().any(|s| s.is_nan() || *s <= 0.0) {
            return Err(f.err("image_std", format!("{:?} must be positive", p.image_std)));
        }
        Ok(p)
    }

    /// `dir/preprocessor_config.json`, or the defaults when the directory has none.
    pub fn from_dir(dir: &Path) -> Result<PreprocessorConfig> {
        let path = dir.join("preprocessor_config.json");
        if path.exists() {
            PreprocessorConfig::from_file(&path)
        } else {
            Ok(PreprocessorConfig::default())
        }
    }
}
