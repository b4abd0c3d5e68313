//! Qwen2.5-VL's config.json: flat 4.x keys or nested text_config / vision_config, validated
//! field by field (every error names the file and the field).

use crate::error::{Error, Result};
use crate::fence;
use crate::model::checkpoint::{self, gguf_config_origin, Files};
use crate::model::config::limits::{
    MAX_HEADS, MAX_LAYERS, MAX_PATCH, MAX_POSITIONS, MAX_VOCAB, MAX_WIDTH,
};
use crate::model::config::{
    first_with, parse_json_object, Config, Fields, Obj, TextConfig, TokenIds,
};
use crate::store::gguf::GgufModel;
use serde_json::Value;
use std::path::Path;

/// The vision tower. Fields missing from the file take the `Qwen2_5_VLVisionConfig` defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct VisionConfig {
    pub depth: usize,
    pub hidden_size: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub spatial_merge_size: usize,
    pub in_channels: usize,
    pub out_hidden_size: usize,
    /// Window side in pixels (112 → 8×8 patches → 4×4 merged units).
    pub window_size: usize,
    pub fullatt_block_indexes: Vec<usize>,
    pub tokens_per_second: f32,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub text: TextConfig,
    pub vision: VisionConfig,
    pub tokens: TokenIds,
    /// `torch_dtype` from the file (informational; weights carry their own dtype).
    pub torch_dtype: String,
}

impl Default for VisionConfig {
    /// `Qwen2_5_VLVisionConfig`'s class defaults. Note hidden_size 3584 and tokens_per_second 4:
    /// both differ from the 7B checkpoints, whose files must override them.
    fn default() -> Self {
        VisionConfig {
            depth: 32,
            hidden_size: 3584,
            num_heads: 16,
            intermediate_size: 3420,
            patch_size: 14,
            temporal_patch_size: 2,
            spatial_merge_size: 2,
            in_channels: 3,
            out_hidden_size: 3584,
            window_size: 112,
            fullatt_block_indexes: vec![7, 15, 23, 31],
            tokens_per_second: 4.0,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
        }
    }
}

impl VisionConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
}

/// Default special-token ids of the Qwen2.5-VL vocabulary.
const DEFAULT_IMAGE_TOKEN: u32 = 151655;
const DEFAULT_VIDEO_TOKEN: u32 = 151656;
const DEFAULT_VISION_START: u32 = 151652;
const DEFAULT_VISION_END: u32 = 151653;

impl ModelConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<ModelConfig> {
        let text = fence::read_text_bounded(path, fence::MAX_JSON_FILE, "a config.json")?;
        ModelConfig::from_json(&text, path)
    }

    /// Parses and validates config.json text; `path` only names the file in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<ModelConfig> {
        let top_obj = parse_json_object(text, path)?;
        let top = Fields::new(path, &top_obj, "");

        check_model_type(&top)?;

        let empty = Obj::new();
        let text_obj = top.object("text_config")?;
        let tf = Fields::new(path, text_obj.unwrap_or(&empty), "text_config.");
        // Text fields: text_config first (≥ 4.52 layout), then the top level (4.x layout).
        let text_srcs: Vec<Fields> = match text_obj {
            Some(_) => vec![tf, Fields::new(path, &top_obj, "")],
            None => vec![Fields::new(path, &top_obj, "")],
        };
        let text = parse_text(&text_srcs)?;

        let vision_obj = top.object("vision_config")?;
        let vf = Fields::new(path, vision_obj.unwrap_or(&empty), "vision_config.");
        let vision = parse_vision(&vf)?;

        // Token ids: the top level first (where 4.x and ≥ 4.52 both put the media ids), then
        // text_config (where ≥ 4.52 puts bos/eos).
        let tok_srcs: Vec<Fields> = match text_obj {
            Some(t) => vec![
                Fields::new(path, &top_obj, ""),
                Fields::new(path, t, "text_config."),
            ],
            None => vec![Fields::new(path, &top_obj, "")],
        };
        let tokens = parse_tokens(&tok_srcs)?;

        let torch_dtype = match first_with(&text_srcs, "torch_dtype").str("torch_dtype")? {
            Some(s) => s.to_string(),
            None => first_with(&text_srcs, "dtype")
                .str("dtype")?
                .unwrap_or("bfloat16")
                .to_string(),
        };

        let cfg = ModelConfig {
            text,
            vision,
            tokens,
            torch_dtype,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Cross-field checks; each error names the file and the field.
    fn validate(&self, path: &Path) -> Result<()> {
        let e = |m: String| Err(Error::config(path, m));
        let t = &self.text;
        let v = &self.vision;
        if v.out_hidden_size != t.hidden_size {
            return e(format!(
                "field `vision_config.out_hidden_size` is {} but the text hidden_size is {}; \
                 the vision merger must output the text width",
                v.out_hidden_size, t.hidden_size
            ));
        }
        for (name, id) in [
            ("image_token_id", self.tokens.image_pad),
            ("video_token_id", self.tokens.video_pad),
            ("vision_start_token_id", self.tokens.vision_start),
            ("vision_end_token_id", self.tokens.vision_end),
        ] {
            if id as usize >= t.vocab_size {
                return e(format!(
                    "field `{name}` is {id}, outside the vocabulary (vocab_size {})",
                    t.vocab_size
                ));
            }
        }
        Ok(())
    }

    /// A few lines for `reel info`.
    pub fn summary(&self) -> String {
        let t = &self.text;
        let v = &self.vision;
        format!(
            "text: {} layers, hidden {}, heads {} (kv {}, head_dim {}), intermediate {}, vocab {}, \
             rope_theta {}, mrope_section {:?}, tie_word_embeddings {}\n\
             vision: depth {}, hidden {}, heads {}, intermediate {}, patch {}x{} (temporal {}), \
             merge {}, window {} px, full-attention blocks {:?}, tokens_per_second {}, out {}\n\
             tokens: image {}, video {}, vision_start {}, vision_end {}, bos {:?}, eos {:?}; dtype {}",
            t.num_hidden_layers,
            t.hidden_size,
            t.num_attention_heads,
            t.num_key_value_heads,
            t.head_dim,
            t.intermediate_size,
            t.vocab_size,
            t.rope_theta,
            t.mrope_section,
            t.tie_word_embeddings,
            v.depth,
            v.hidden_size,
            v.num_heads,
            v.intermediate_size,
            v.patch_size,
            v.patch_size,
            v.temporal_patch_size,
            v.spatial_merge_size,
            v.window_size,
            v.fullatt_block_indexes,
            v.tokens_per_second,
            v.out_hidden_size,
            self.tokens.image_pad,
            self.tokens.video_pad,
            self.tokens.vision_start,
            self.tokens.vision_end,
            self.tokens.bos,
            self.tokens.eos,
            self.torch_dtype,
        )
    }
}

fn check_model_type(top: &Fields) -> Result<()> {
    let model_type = top.str("model_type")?;
    let archs: Vec<&str> = match top.raw("architectures") {
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_str()).collect(),
        Some(v) => return Err(top.wrong("architectures", "an array of strings", v)),
        None => Vec::new(),
    };
    let arch_ok = archs.contains(&"Qwen2_5_VLForConditionalGeneration");
    match model_type {
        Some("qwen2_5_vl") => Ok(()),
        None if arch_ok => Ok(()),
        Some(other) => Err(top.err(
            "model_type",
            format!(
                "unsupported model type {other:?}; reel runs qwen2_5_vl (Qwen2.5-VL) checkpoints"
            ),
        )),
        None => Err(top.err(
            "model_type",
            "missing, and `architectures` does not name Qwen2_5_VLForConditionalGeneration",
        )),
    }
}

fn parse_text(srcs: &[Fields]) -> Result<TextConfig> {
    let req = |key: &str| -> Result<usize> {
        let f = first_with(srcs, key);
        f.usize(key)?
            .ok_or_else(|| f.err(key, "missing (required)"))
    };
    let hidden_size = req("hidden_size")?;
    let num_hidden_layers = req("num_hidden_layers")?;
    let num_attention_heads = req("num_attention_heads")?;
    let num_key_value_heads = req("num_key_value_heads")?;
    let intermediate_size = req("intermediate_size")?;
    let vocab_size = req("vocab_size")?;

    let f = |key: &str| first_with(srcs, key);
    // Sizes first, before anything below multiplies or allocates by them.
    for (key, v, max) in [
        ("hidden_size", hidden_size, MAX_WIDTH),
        ("num_hidden_layers", num_hidden_layers, MAX_LAYERS),
        ("num_attention_heads", num_attention_heads, MAX_HEADS),
        ("num_key_value_heads", num_key_value_heads, MAX_HEADS),
        ("intermediate_size", intermediate_size, MAX_WIDTH),
        ("vocab_size", vocab_size, MAX_VOCAB),
    ] {
        f(key).at_most(key, v, max)?;
    }
    let head_dim_given = f("head_dim").usize("head_dim")?;
    if let Some(d) = head_dim_given {
        f("head_dim").at_most("head_dim", d, MAX_HEADS)?;
    }
    let rms_norm_eps = f("rms_norm_eps").f32("rms_norm_eps")?.unwrap_or(1e-6);
    let max_position_embeddings = f("max_position_embeddings")
        .usize("max_position_embeddings")?
        .unwrap_or(32_768);
    f("max_position_embeddings").at_most(
        "max_position_embeddings",
        max_position_embeddings,
        MAX_POSITIONS,
    )?;
    let tie_word_embeddings = f("tie_word_embeddings")
        .bool("tie_word_embeddings")?
        .unwrap_or(false);

    let act_f = f("hidden_act");
    if let Some(act) = act_f.str("hidden_act")? {
        if act != "silu" {
            return Err(act_f.err("hidden_act", format!("{act:?} is unsupported (only silu)")));
        }
    }
    let sw = f("use_sliding_window");
    if sw.bool("use_sliding_window")? == Some(true) {
        return Err(sw.err(
            "use_sliding_window",
            "sliding-window attention is unsupported",
        ));
    }

    // Rope: `rope_scaling` (4.x), or `rope_parameters` (newer files, which may also hold theta).
    let (rope_f, rope_key) = if f("rope_scaling").has("rope_scaling") {
        (f("rope_scaling"), "rope_scaling")
    } else {
        (f("rope_parameters"), "rope_parameters")
    };
    let rope_obj = rope_f.object(rope_key)?;
    let rope_prefix = format!("{}{}.", rope_f.prefix, rope_key);
    let empty = Obj::new();
    let rf = Fields::new(rope_f.path, rope_obj.unwrap_or(&empty), &rope_prefix);
    for key in ["rope_type", "type"] {
        if let Some(kind) = rf.str(key)? {
            if kind != "default" && kind != "mrope" {
                return Err(rf.err(key, format!("{kind:?} rope scaling is unsupported")));
            }
        }
    }
    let rope_theta = match f("rope_theta").f32("rope_theta")? {
        Some(t) => t,
        None => rf.f32("rope_theta")?.unwrap_or(1_000_000.0),
    };
    let sec = rf.usize_list("mrope_section")?.ok_or_else(|| {
        rf.err(
            "mrope_section",
            "missing (Qwen2.5-VL needs the M-RoPE sections, e.g. [16, 24, 24])",
        )
    })?;
    for &v in &sec {
        rf.at_most("mrope_section", v, MAX_HEADS)?;
    }
    let mrope_section: [usize; 3] = sec.as_slice().try_into().map_err(|_| {
        rf.err(
            "mrope_section",
            format!("expected 3 sections, found {sec:?}"),
        )
    })?;

    // Structural checks.
    let e = |key: &str, msg: String| Err(f(key).err(key, msg));
    if hidden_size == 0 || num_hidden_layers == 0 || intermediate_size == 0 || vocab_size == 0 {
        let key = [
            ("hidden_size", hidden_size),
            ("num_hidden_layers", num_hidden_layers),
            ("intermediate_size", intermediate_size),
            ("vocab_size", vocab_size),
        ]
        .into_iter()
        .find(|(_, v)| *v == 0)
        .map(|(k, _)| k)
        .unwrap_or("hidden_size");
        return e(key, "must be positive".into());
    }
    if num_attention_heads == 0 {
        return e("num_attention_heads", "must be positive".into());
    }
    if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
        return e(
            "num_key_value_heads",
            format!(
                "{num_key_value_heads} does not divide num_attention_heads {num_attention_heads}"
            ),
        );
    }
    let head_dim = match head_dim_given {
        Some(d) => d,
        None => {
            if hidden_size % num_attention_heads != 0 {
                return e(
                    "num_attention_heads",
                    format!("{num_attention_heads} does not divide hidden_size {hidden_size}"),
                );
            }
            hidden_size / num_attention_heads
        }
    };
    if head_dim == 0 || head_dim % 2 != 0 {
        return e(
            "head_dim",
            format!("head_dim {head_dim} must be positive and even"),
        );
    }
    let sum: usize = mrope_section.iter().sum();
    if sum * 2 != head_dim {
        return Err(rf.err(
            "mrope_section",
            format!(
                "{mrope_section:?} sums to {sum}, but must sum to head_dim / 2 = {}",
                head_dim / 2
            ),
        ));
    }

    Ok(TextConfig {
        hidden_size,
        num_hidden_layers,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        intermediate_size,
        vocab_size,
        rms_norm_eps,
        rope_theta,
        mrope_section,
        max_position_embeddings,
        tie_word_embeddings,
    })
}

fn parse_vision(vf: &Fields) -> Result<VisionConfig> {
    let d = VisionConfig::default();
    // The first alias present wins; a missing field takes the class default.
    let pick = |keys: &[&str], default: usize| -> Result<usize> {
        for k in keys {
            if let Some(v) = vf.usize(k)? {
                return Ok(v);
            }
        }
        Ok(default)
    };
    let depth = pick(&["depth"], d.depth)?;
    let hidden_size = pick(&["hidden_size", "embed_dim"], d.hidden_size)?;
    let num_heads = pick(&["num_heads"], d.num_heads)?;
    let intermediate_size = pick(&["intermediate_size"], d.intermediate_size)?;
    let patch_size = pick(&["patch_size", "spatial_patch_size"], d.patch_size)?;
    let temporal_patch_size = pick(&["temporal_patch_size"], d.temporal_patch_size)?;
    let spatial_merge_size = pick(&["spatial_merge_size"], d.spatial_merge_size)?;
    let in_channels = pick(&["in_channels", "in_chans"], d.in_channels)?;
    let out_hidden_size = pick(&["out_hidden_size"], d.out_hidden_size)?;
    let window_size = pick(&["window_size"], d.window_size)?;
    let fullatt_block_indexes = vf
        .usize_list("fullatt_block_indexes")?
        .unwrap_or(d.fullatt_block_indexes.clone());
    let tokens_per_second = vf.f32("tokens_per_second")?.unwrap_or(d.tokens_per_second);
    let rms_norm_eps = vf.f32("rms_norm_eps")?.unwrap_or(d.rms_norm_eps);
    let rope_theta = vf.f32("rope_theta")?.unwrap_or(d.rope_theta);

    if let Some(act) = vf.str("hidden_act")? {
        if act != "silu" {
            return Err(vf.err("hidden_act", format!("{act:?} is unsupported (only silu)")));
        }
    }
    let pos = |key: &str, v: usize| -> Result<()> {
        if v == 0 {
            Err(vf.err(key, "must be positive"))
        } else {
            Ok(())
        }
    };
    pos("depth", depth)?;
    pos("hidden_size", hidden_size)?;
    pos("num_heads", num_heads)?;
    pos("intermediate_size", intermediate_size)?;
    pos("patch_size", patch_size)?;
    pos("temporal_patch_size", temporal_patch_size)?;
    pos("spatial_merge_size", spatial_merge_size)?;
    pos("in_channels", in_channels)?;
    pos("window_size", window_size)?;
    for (key, v, max) in [
        ("depth", depth, MAX_LAYERS),
        ("hidden_size", hidden_size, MAX_WIDTH),
        ("num_heads", num_heads, MAX_HEADS),
        ("intermediate_size", intermediate_size, MAX_WIDTH),
        ("patch_size", patch_size, MAX_PATCH),
        ("temporal_patch_size", temporal_patch_size, MAX_PATCH),
        ("spatial_merge_size", spatial_merge_size, MAX_PATCH),
        ("in_channels", in_channels, MAX_PATCH),
        ("out_hidden_size", out_hidden_size, MAX_WIDTH),
        ("window_size", window_size, MAX_WIDTH),
    ] {
        vf.at_most(key, v, max)?;
    }
    if hidden_size % num_heads != 0 {
        return Err(vf.err(
            "num_heads",
            format!("{num_heads} does not divide vision hidden_size {hidden_size}"),
        ));
    }
    // The 2-D rotary splits each head into row and column halves of rotated pairs.
    if (hidden_size / num_heads) % 4 != 0 {
        return Err(vf.err(
            "num_heads",
            format!(
                "vision head_dim {} must be a multiple of 4",
                hidden_size / num_heads
            ),
        ));
    }
    let unit = patch_size * spatial_merge_size;
    if window_size % unit != 0 {
        return Err(vf.err(
            "window_size",
            format!(
                "{window_size} px is not a multiple of patch_size × spatial_merge_size = {unit}"
            ),
        ));
    }
    if let Some(&bad) = fullatt_block_indexes.iter().find(|&&i| i >= depth) {
        return Err(vf.err(
            "fullatt_block_indexes",
            format!("index {bad} is not below depth {depth}"),
        ));
    }
    if tokens_per_second.is_nan() || tokens_per_second <= 0.0 {
        return Err(vf.err("tokens_per_second", "must be positive"));
    }
    Ok(VisionConfig {
        depth,
        hidden_size,
        num_heads,
        intermediate_size,
        patch_size,
        temporal_patch_size,
        spatial_merge_size,
        in_channels,
        out_hidden_size,
        window_size,
        fullatt_block_indexes,
        tokens_per_second,
        rms_norm_eps,
        rope_theta,
    })
}

fn parse_tokens(srcs: &[Fields]) -> Result<TokenIds> {
    let id = |key: &str, default: u32| -> Result<u32> {
        Ok(first_with(srcs, key).u32(key)?.unwrap_or(default))
    };
    Ok(TokenIds {
        bos: first_with(srcs, "bos_token_id").u32("bos_token_id")?,
        eos: first_with(srcs, "eos_token_id")
            .id_list("eos_token_id")?
            .unwrap_or_default(),
        image_pad: id("image_token_id", DEFAULT_IMAGE_TOKEN)?,
        video_pad: id("video_token_id", DEFAULT_VIDEO_TOKEN)?,
        vision_start: id("vision_start_token_id", DEFAULT_VISION_START)?,
        vision_end: id("vision_end_token_id", DEFAULT_VISION_END)?,
    })
}

impl ModelConfig {
    /// What every architecture reports: the language model and the special tokens.
    pub fn common(&self) -> Config {
        Config {
            text: self.text.clone(),
            tokens: self.tokens.clone(),
        }
    }

    /// Qwen2.5-VL-7B as published (config.json of Qwen/Qwen2.5-VL-7B-Instruct and the Video-R1
    /// checkpoints): the shape of the synthetic weights that `reel bench` times.
    pub fn qwen2_5_vl_7b() -> ModelConfig {
        ModelConfig {
            text: TextConfig {
                hidden_size: 3584,
                num_hidden_layers: 28,
                num_attention_heads: 28,
                num_key_value_heads: 4,
                head_dim: 128,
                intermediate_size: 18944,
                vocab_size: 152064,
                rms_norm_eps: 1e-6,
                rope_theta: 1_000_000.0,
                mrope_section: [16, 24, 24],
                max_position_embeddings: 128000,
                tie_word_embeddings: false,
            },
            vision: VisionConfig {
                hidden_size: 1280,
                tokens_per_second: 2.0,
                ..VisionConfig::default()
            },
            tokens: TokenIds {
                bos: Some(151643),
                eos: vec![151645],
                image_pad: DEFAULT_IMAGE_TOKEN,
                video_pad: DEFAULT_VIDEO_TOKEN,
                vision_start: DEFAULT_VISION_START,
                vision_end: DEFAULT_VISION_END,
            },
            torch_dtype: "bfloat16".into(),
        }
    }
}

/// The configuration a GGUF file written by reel-quantize embeds.
pub trait GgufModelConfig {
    /// config.json from the metadata, parsed (errors name the GGUF file and the metadata key).
    fn model_config(&self) -> Result<ModelConfig>;
}

impl GgufModelConfig for GgufModel {
    fn model_config(&self) -> Result<ModelConfig> {
        ModelConfig::from_json(self.config_json(), &gguf_config_origin(self))
    }
}

/// A checkpoint opened as Qwen2.5-VL: its configs, parsed, and its weights.
pub type ModelFiles = Files<ModelConfig>;

/// Opens a checkpoint directory, a `.safetensors` file or a GGUF file as Qwen2.5-VL.
pub fn open_model(path: &Path) -> Result<ModelFiles> {
    checkpoint::open_with(path, ModelConfig::from_json)
}

impl Files<ModelConfig> {
    /// Config fields, tensor count and bytes by dtype, for `reel info`.
    pub fn summary(&self) -> String {
        format!(
            "{}\n{}\n{}",
            self.store.describe(),
            self.config.summary(),
            checkpoint::store_summary(self.store.as_ref())
        )
    }
}
