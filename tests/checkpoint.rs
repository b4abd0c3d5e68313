//! Checkpoint loading: config.json in both layouts, safetensors shards, the tensor inventory,
//! and one clear error (naming the culprit) for each kind of bad input.

use reel::model::config::{GenerationConfig, PreprocessorConfig};
use reel::model::qwen2_5_vl::inventory::expected;
use reel::model::qwen2_5_vl::weights::{
    self, alternate_name, resolve, validate, Part, TextWeights, VisionWeights,
};
use reel::model::qwen2_5_vl::{open_model, ModelConfig, VisionConfig};
use reel::store::SafetensorsStore;
use reel::DType;
use safetensors::{Dtype, View};
use serde_json::{json, Value};
use std::borrow::Cow;
use std::fs;
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------------------------
// Fixtures

/// The tiny model of spec/goldens.md §3 in the flat 4.x layout.
fn tiny_flat() -> Value {
    json!({
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "attention_dropout": 0.0,
        "bos_token_id": 1000,
        "eos_token_id": 1002,
        "hidden_act": "silu",
        "hidden_size": 64,
        "image_token_id": 1012,
        "intermediate_size": 128,
        "max_position_embeddings": 128000,
        "max_window_layers": 2,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6,
        "rope_scaling": {"mrope_section": [2, 3, 3], "rope_type": "default", "type": "default"},
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": false,
        "torch_dtype": "bfloat16",
        "use_sliding_window": false,
        "video_token_id": 1013,
        "vision_config": {
            "depth": 4,
            "fullatt_block_indexes": [1, 3],
            "hidden_size": 32,
            "in_chans": 3,
            "intermediate_size": 48,
            "model_type": "qwen2_5_vl",
            "num_heads": 2,
            "out_hidden_size": 64,
            "spatial_patch_size": 14,
            "tokens_per_second": 2
        },
        "vision_end_token_id": 1010,
        "vision_start_token_id": 1009,
        "vision_token_id": 1011,
        "vocab_size": 1024
    })
}

/// The same model as transformers ≥ 4.52 saves it: text fields under `text_config`, the rope
/// parameters under `rope_parameters`, `dtype` instead of `torch_dtype`, and the vision keys
/// spelled the new way.
fn tiny_nested() -> Value {
    json!({
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "dtype": "bfloat16",
        "image_token_id": 1012,
        "video_token_id": 1013,
        "vision_start_token_id": 1009,
        "vision_end_token_id": 1010,
        "vision_token_id": 1011,
        "text_config": {
            "model_type": "qwen2_5_vl_text",
            "bos_token_id": 1000,
            "eos_token_id": 1002,
            "hidden_act": "silu",
            "hidden_size": 64,
            "intermediate_size": 128,
            "max_position_embeddings": 128000,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "num_key_value_heads": 2,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"mrope_section": [2, 3, 3], "rope_type": "default", "rope_theta": 1000000.0},
            "tie_word_embeddings": false,
            "use_sliding_window": false,
            "vocab_size": 1024
        },
        "vision_config": {
            "depth": 4,
            "fullatt_block_indexes": [1, 3],
            "hidden_size": 32,
            "in_channels": 3,
            "intermediate_size": 48,
            "num_heads": 2,
            "out_hidden_size": 64,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "tokens_per_second": 2
        }
    })
}

/// The 7B text config (spec/goldens.md §2) with the sparse vision_config a 4.49-era fine-tune
/// writes: only the fields that differ from the class defaults.
fn sparse_7b() -> Value {
    json!({
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "hidden_act": "silu",
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "max_position_embeddings": 128000,
        "num_attention_heads": 28,
        "num_hidden_layers": 28,
        "num_key_value_heads": 4,
        "rms_norm_eps": 1e-6,
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
        "rope_theta": 1000000.0,
        "tie_word_embeddings": false,
        "torch_dtype": "bfloat16",
        "use_sliding_window": false,
        "vocab_size": 152064,
        "vision_config": {"hidden_size": 1280, "in_chans": 3, "spatial_patch_size": 14, "tokens_per_second": 2}
    })
}

fn cfg_of(v: &Value) -> ModelConfig {
    ModelConfig::from_json(&v.to_string(), Path::new("config.json")).expect("config parses")
}

/// Deterministic bf16 payload for tensor number `k`, so reads can be compared byte for byte.
fn payload(k: usize, numel: usize) -> Vec<u8> {
    (0..numel)
        .flat_map(|i| {
            let x = ((k * 131 + i * 7) % 2000) as f32 / 1000.0 - 1.0;
            half::bf16::from_f32(x).to_le_bytes()
        })
        .collect()
}

/// A tensor to write: name, safetensors dtype, shape, bytes.
#[derive(Clone)]
struct T {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &T {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Every tensor the tiny model needs, as bf16, in inventory order.
fn tiny_tensors(cfg: &ModelConfig) -> Vec<T> {
    expected(cfg, Part::Both)
        .into_iter()
        .enumerate()
        .map(|(k, e)| {
            let n = e.shape.iter().product();
            T {
                name: e.name,
                dtype: Dtype::BF16,
                shape: e.shape,
                data: payload(k, n),
            }
        })
        .collect()
}

fn write_st(path: &Path, tensors: &[T]) {
    // HF writes `__metadata__: {format: pt}`; the reader must skip it.
    let meta = Some(
        [("format".to_string(), "pt".to_string())]
            .into_iter()
            .collect(),
    );
    let bytes = safetensors::serialize(tensors.iter().map(|t| (t.name.clone(), t)), meta).unwrap();
    fs::write(path, bytes).unwrap();
}

/// Writes config.json and the tensors as two shards (vision, then text) with an index, the
/// way the fixture is laid out.
fn write_sharded(dir: &Path, config: &Value, tensors: &[T]) {
    fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let (vis, txt): (Vec<T>, Vec<T>) = tensors
        .iter()
        .cloned()
        .partition(|t| t.name.starts_with("visual."));
    let files = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    write_st(&dir.join(files[0]), &vis);
    write_st(&dir.join(files[1]), &txt);
    let mut map = serde_json::Map::new();
    for t in &vis {
        map.insert(t.name.clone(), json!(files[0]));
    }
    for t in &txt {
        map.insert(t.name.clone(), json!(files[1]));
    }
    let index = json!({"metadata": {"total_size": 0}, "weight_map": map});
    fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

fn write_single(dir: &Path, config: &Value, tensors: &[T]) {
    fs::write(dir.join("config.json"), config.to_string()).unwrap();
    write_st(&dir.join("model.safetensors"), tensors);
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// The error message of a failing result (the test fails if it succeeded).
fn err_of<T>(r: reel::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn assert_names(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "error {msg:?} should mention {p:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Config: positive

#[test]
fn flat_and_nested_layouts_parse_to_the_same_config() {
    let flat = cfg_of(&tiny_flat());
    let nested = cfg_of(&tiny_nested());
    assert_eq!(flat, nested);
    let t = &flat.text;
    assert_eq!(
        (t.hidden_size, t.num_hidden_layers, t.num_attention_heads),
        (64, 2, 4)
    );
    assert_eq!(
        (
            t.num_key_value_heads,
            t.head_dim,
            t.intermediate_size,
            t.vocab_size
        ),
        (2, 16, 128, 1024)
    );
    assert_eq!(t.mrope_section, [2, 3, 3]);
    assert_eq!(t.rope_theta, 1.0e6);
    assert_eq!(t.group_size(), 2);
    let v = &flat.vision;
    assert_eq!(
        (v.depth, v.hidden_size, v.num_heads, v.intermediate_size),
        (4, 32, 2, 48)
    );
    assert_eq!(
        (v.patch_size, v.in_channels, v.out_hidden_size, v.head_dim()),
        (14, 3, 64, 16)
    );
    assert_eq!(v.fullatt_block_indexes, vec![1, 3]);
    assert_eq!(v.tokens_per_second, 2.0);
    let k = &flat.tokens;
    assert_eq!((k.bos, k.eos.clone()), (Some(1000), vec![1002]));
    assert_eq!(
        (k.image_pad, k.video_pad, k.vision_start, k.vision_end),
        (1012, 1013, 1009, 1010)
    );
    assert_eq!(flat.torch_dtype, "bfloat16");
}

#[test]
fn sparse_vision_config_takes_class_defaults_but_file_values_win() {
    let cfg = cfg_of(&sparse_7b());
    let v = &cfg.vision;
    let d = VisionConfig::default();
    // From the file: the traps hidden_size (default 3584) and tokens_per_second (default 4).
    assert_eq!(v.hidden_size, 1280);
    assert_eq!(v.tokens_per_second, 2.0);
    assert_eq!((v.in_channels, v.patch_size), (3, 14));
    // From the class defaults.
    assert_eq!(
        (v.depth, v.num_heads, v.intermediate_size, v.out_hidden_size),
        (32, 16, 3420, 3584)
    );
    assert_eq!(
        (v.window_size, v.spatial_merge_size, v.temporal_patch_size),
        (112, 2, 2)
    );
    assert_eq!(v.fullatt_block_indexes, vec![7, 15, 23, 31]);
    assert_eq!(v.head_dim(), 80);
    assert_eq!((d.hidden_size, d.tokens_per_second), (3584, 4.0));
    let t = &cfg.text;
    assert_eq!(
        (t.head_dim, t.mrope_section, t.group_size()),
        (128, [16, 24, 24], 7)
    );
    // Media token ids absent from the file take the Qwen2.5-VL vocabulary's ids.
    let k = &cfg.tokens;
    assert_eq!(
        (k.image_pad, k.video_pad, k.vision_start, k.vision_end),
        (151655, 151656, 151652, 151653)
    );
    assert_eq!(k.eos, vec![151645]);
}

#[test]
fn rope_spellings_and_eos_forms_agree() {
    let base = cfg_of(&tiny_flat());
    let mut v = tiny_flat();
    v["rope_scaling"] = json!({"type": "mrope", "mrope_section": [2, 3, 3]});
    assert_eq!(cfg_of(&v), base);
    let mut v = tiny_flat();
    v.as_object_mut().unwrap().remove("rope_scaling");
    v.as_object_mut().unwrap().remove("rope_theta");
    v["rope_parameters"] =
        json!({"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]});
    assert_eq!(cfg_of(&v), base);
    let mut v = tiny_flat();
    v["eos_token_id"] = json!([1002, 1000]);
    v["head_dim"] = json!(16);
    let c = cfg_of(&v);
    assert_eq!(c.tokens.eos, vec![1002, 1000]);
    assert_eq!(c.text, base.text);
}

#[test]
fn generation_and_preprocessor_configs() {
    let dir = tmp();
    // Absent files give the defaults.
    assert_eq!(
        GenerationConfig::from_dir(dir.path()).unwrap(),
        GenerationConfig::default()
    );
    assert_eq!(
        PreprocessorConfig::from_dir(dir.path()).unwrap(),
        PreprocessorConfig::default()
    );

    let g = dir.path().join("generation_config.json");
    fs::write(
        &g,
        r#"{"bos_token_id":151643,"eos_token_id":[151645,151643],"temperature":0.1,
        "top_p":0.001,"top_k":1,"repetition_penalty":1.05,"do_sample":true}"#,
    )
    .unwrap();
    let gc = GenerationConfig::from_dir(dir.path()).unwrap();
    assert_eq!(gc.eos_token_ids, vec![151645, 151643]);
    assert_eq!(
        (gc.temperature, gc.top_p, gc.top_k),
        (Some(0.1), Some(0.001), Some(1))
    );
    assert_eq!(
        (gc.repetition_penalty, gc.do_sample),
        (Some(1.05), Some(true))
    );
    fs::write(&g, r#"{"eos_token_id":151645}"#).unwrap();
    assert_eq!(
        GenerationConfig::from_file(&g).unwrap().eos_token_ids,
        vec![151645]
    );

    let p = dir.path().join("preprocessor_config.json");
    fs::write(&p, r#"{"min_pixels":3136,"max_pixels":12845056,"patch_size":14,"temporal_patch_size":2,
        "merge_size":2,"image_mean":[0.48145466,0.4578275,0.40821073],
        "image_std":[0.26862954,0.26130258,0.27577711],"image_processor_type":"Qwen2VLImageProcessor"}"#)
    .unwrap();
    assert_eq!(
        PreprocessorConfig::from_file(&p).unwrap(),
        PreprocessorConfig::default()
    );
    // Newer files spell the pixel limits as `size`.
    fs::write(
        &p,
        r#"{"size":{"shortest_edge":1000,"longest_edge":50000},"patch_size":14}"#,
    )
    .unwrap();
    let pc = PreprocessorConfig::from_file(&p).unwrap();
    assert_eq!((pc.min_pixels, pc.max_pixels), (1000, 50000));
    // min_pixels/max_pixels win over `size`, as in the HF processor.
    fs::write(
        &p,
        r#"{"size":{"shortest_edge":1000,"longest_edge":50000},"max_pixels":40000}"#,
    )
    .unwrap();
    assert_eq!(PreprocessorConfig::from_file(&p).unwrap().max_pixels, 40000);
}

// ---------------------------------------------------------------------------------------------
// Config: negative

#[test]
fn bad_configs_name_the_field() {
    type Edit = fn(&mut Value);
    let cases: Vec<(Edit, &[&str])> = vec![
        (
            |v| v["hidden_size"] = json!("64"),
            &["config.json", "hidden_size", "integer"],
        ),
        (
            |v| v["model_type"] = json!("llama"),
            &["config.json", "model_type", "llama"],
        ),
        (
            |v| v["rope_scaling"]["mrope_section"] = json!([2, 3, 4]),
            &["config.json", "mrope_section", "head_dim / 2 = 8"],
        ),
        (
            |v| {
                v.as_object_mut().unwrap().remove("num_hidden_layers");
            },
            &["config.json", "num_hidden_layers", "missing"],
        ),
        (|v| v["hidden_act"] = json!("gelu"), &["hidden_act", "gelu"]),
        (
            |v| v["vision_config"]["hidden_act"] = json!("quick_gelu"),
            &["vision_config.hidden_act"],
        ),
        (
            |v| v["use_sliding_window"] = json!(true),
            &["use_sliding_window"],
        ),
        (
            |v| v["num_key_value_heads"] = json!(3),
            &["num_key_value_heads", "3"],
        ),
        (
            |v| v["num_attention_heads"] = json!(6),
            &["num_attention_heads", "hidden_size 64"],
        ),
        (
            |v| v["vision_config"]["num_heads"] = json!(3),
            &["vision_config.num_heads"],
        ),
        (
            |v| v["vision_config"]["fullatt_block_indexes"] = json!([1, 4]),
            &["fullatt_block_indexes", "4"],
        ),
        (
            |v| v["vision_config"]["out_hidden_size"] = json!(32),
            &["vision_config.out_hidden_size"],
        ),
        (
            |v| v["rope_scaling"] = json!({"type": "yarn", "factor": 4.0}),
            &["rope_scaling.type", "yarn"],
        ),
        (
            |v| v["eos_token_id"] = json!("<|im_end|>"),
            &["eos_token_id"],
        ),
        (
            |v| v["image_token_id"] = json!(5000),
            &["image_token_id", "vocab_size 1024"],
        ),
        (
            |v| {
                v["rope_scaling"]
                    .as_object_mut()
                    .unwrap()
                    .remove("mrope_section");
            },
            &["rope_scaling.mrope_section", "missing"],
        ),
    ];
    for (i, (edit, parts)) in cases.into_iter().enumerate() {
        let mut v = tiny_flat();
        edit(&mut v);
        let r = ModelConfig::from_json(&v.to_string(), Path::new("/m/config.json"));
        assert!(r.is_err(), "case {i} ({parts:?}) parsed");
        assert_names(&err_of(r), parts);
    }
    // The nested layout names the field where it lives.
    let mut v = tiny_nested();
    v["text_config"]["vocab_size"] = json!(-3);
    let msg = err_of(ModelConfig::from_json(
        &v.to_string(),
        Path::new("config.json"),
    ));
    assert_names(&msg, &["text_config.vocab_size"]);
    // Architectures alone identify the model when model_type is absent.
    let mut v = tiny_flat();
    v.as_object_mut().unwrap().remove("model_type");
    assert!(ModelConfig::from_json(&v.to_string(), Path::new("config.json")).is_ok());
    v["architectures"] = json!(["LlamaForCausalLM"]);
    let msg = err_of(ModelConfig::from_json(
        &v.to_string(),
        Path::new("config.json"),
    ));
    assert_names(&msg, &["model_type", "missing"]);
}

#[test]
fn missing_and_malformed_config_files() {
    let dir = tmp();
    let path = dir.path().join("config.json");
    let msg = err_of(ModelConfig::from_file(&path));
    assert_names(&msg, &["config.json"]);
    let msg = err_of(open_model(dir.path()));
    assert_names(&msg, &["config.json"]);

    fs::write(&path, "{\"hidden_size\": 64,\n \"vocab_size\": }").unwrap();
    let msg = err_of(ModelConfig::from_file(&path));
    assert_names(&msg, &["config.json", "malformed JSON", "line 2"]);

    fs::write(&path, "[1, 2]").unwrap();
    assert_names(
        &err_of(ModelConfig::from_file(&path)),
        &["config.json", "JSON object"],
    );

    let g = dir.path().join("generation_config.json");
    fs::write(&g, r#"{"temperature":"hot"}"#).unwrap();
    assert_names(
        &err_of(GenerationConfig::from_dir(dir.path())),
        &["generation_config.json", "temperature"],
    );
    let p = dir.path().join("preprocessor_config.json");
    fs::write(&p, r#"{"image_mean":[0.5,0.5]}"#).unwrap();
    assert_names(
        &err_of(PreprocessorConfig::from_dir(dir.path())),
        &["preprocessor_config.json", "image_mean"],
    );
    fs::write(&p, r#"{"min_pixels":100000,"max_pixels":3136}"#).unwrap();
    assert_names(
        &err_of(PreprocessorConfig::from_file(&p)),
        &["min_pixels", "max_pixels"],
    );
}

// ---------------------------------------------------------------------------------------------
// Inventory and loading: positive

#[test]
fn inventory_matches_the_tiny_model() {
    let cfg = cfg_of(&tiny_flat());
    let all = expected(&cfg, Part::Both);
    // spec/goldens.md §3: 81 tensors, 303,904 parameters.
    assert_eq!(all.len(), 81);
    let params: usize = all.iter().map(|e| e.shape.iter().product::<usize>()).sum();
    assert_eq!(params, 303_904);
    assert_eq!(
        expected(&cfg, Part::Text).len() + expected(&cfg, Part::Vision).len(),
        81
    );
    let shape = |n: &str| {
        all.iter()
            .find(|e| e.name == n)
            .map(|e| e.shape.clone())
            .unwrap()
    };
    assert_eq!(
        shape("model.layers.1.self_attn.k_proj.weight"),
        vec![32, 64]
    );
    assert_eq!(
        shape("model.layers.0.self_attn.o_proj.weight"),
        vec![64, 64]
    );
    assert_eq!(shape("model.layers.0.mlp.down_proj.weight"), vec![64, 128]);
    assert_eq!(
        shape("visual.patch_embed.proj.weight"),
        vec![32, 3, 2, 14, 14]
    );
    assert_eq!(shape("visual.blocks.3.attn.qkv.weight"), vec![96, 32]);
    assert_eq!(shape("visual.blocks.0.mlp.down_proj.bias"), vec![32]);
    assert_eq!(shape("visual.merger.mlp.0.weight"), vec![128, 128]);
    assert_eq!(shape("visual.merger.mlp.2.weight"), vec![64, 128]);
    assert_eq!(shape("lm_head.weight"), vec![1024, 64]);

    // 7B: k_proj [512, 3584], patch embedding [1280, 3, 2, 14, 14] (spec §1).
    let big = cfg_of(&sparse_7b());
    let all = expected(&big, Part::Both);
    let shape = |n: &str| {
        all.iter()
            .find(|e| e.name == n)
            .map(|e| e.shape.clone())
            .unwrap()
    };
    assert_eq!(
        shape("model.layers.27.self_attn.k_proj.weight"),
        vec![512, 3584]
    );
    assert_eq!(
        shape("visual.patch_embed.proj.weight"),
        vec![1280, 3, 2, 14, 14]
    );
    assert_eq!(shape("visual.merger.mlp.2.weight"), vec![3584, 5120]);
    assert_eq!(all.len(), 3 + 28 * 12 + 6 + 32 * 12);

    assert_eq!(
        alternate_name("model.norm.weight").as_deref(),
        Some("model.language_model.norm.weight")
    );
    assert_eq!(
        alternate_name("visual.merger.ln_q.weight").as_deref(),
        Some("model.visual.merger.ln_q.weight")
    );
    assert_eq!(alternate_name("lm_head.weight"), None);
}

#[test]
fn two_shards_with_index_load_and_read_back() {
    let dir = tmp();
    let cfg = cfg_of(&tiny_flat());
    let tensors = tiny_tensors(&cfg);
    write_sharded(dir.path(), &tiny_flat(), &tensors);

    let files = open_model(dir.path()).unwrap();
    assert_eq!(files.config, cfg);
    let store = files.store.as_ref();
    assert_eq!(store.names().len(), 81);
    assert!(
        store.describe().contains("2 shards"),
        "{}",
        store.describe()
    );
    validate(store, &cfg, Part::Both).unwrap();

    // Bytes come back exactly as written, from both shards.
    for t in &tensors {
        let got = store.get(&t.name).unwrap();
        assert_eq!(got.dtype, DType::BF16);
        assert_eq!(got.shape, t.shape);
        assert_eq!(got.bytes.as_slice(), &t.data[..], "{}", t.name);
    }
    assert!(store
        .origin("visual.blocks.0.norm1.weight")
        .ends_with("model-00001-of-00002.safetensors"));
    assert!(store
        .origin("model.norm.weight")
        .ends_with("model-00002-of-00002.safetensors"));

    let text = TextWeights::load(store, &cfg).unwrap();
    assert_eq!(text.layers.len(), 2);
    assert_eq!(text.layers[1].k.shape, vec![32, 64]);
    assert_eq!(
        text.layers[1].k.name,
        "model.layers.1.self_attn.k_proj.weight"
    );
    assert_eq!(text.lm_head.name, "lm_head.weight");
    let find = |n: &str| tensors.iter().find(|t| t.name == n).unwrap();
    assert_eq!(
        text.layers[0].down.bytes.as_slice(),
        &find("model.layers.0.mlp.down_proj.weight").data[..]
    );

    let vis = VisionWeights::load(store, &cfg).unwrap();
    assert_eq!(vis.blocks.len(), 4);
    assert_eq!(vis.patch_embed.shape, vec![32, 1176]);
    assert_eq!(
        vis.patch_embed.bytes.as_slice(),
        &find("visual.patch_embed.proj.weight").data[..]
    );
    assert_eq!(vis.merger_fc2.shape, vec![64, 128]);
    assert_eq!(vis.blocks[3].qkv_bias.shape, vec![96]);

    let summary = files.summary();
    assert_names(
        &summary,
        &[
            "81 tensors",
            "303904 parameters",
            "BF16: 81 tensors, 607808 bytes",
        ],
    );
}

#[test]
fn single_file_and_unindexed_shards_load() {
    let cfg = cfg_of(&tiny_flat());
    let tensors = tiny_tensors(&cfg);

    let dir = tmp();
    write_single(dir.path(), &tiny_flat(), &tensors);
    let files = open_model(dir.path()).unwrap();
    assert!(
        files.store.describe().contains("1 shard,"),
        "{}",
        files.store.describe()
    );
    validate(files.store.as_ref(), &cfg, Part::Both).unwrap();
    // A .safetensors file path works too, with config.json beside it.
    let files = open_model(&dir.path().join("model.safetensors")).unwrap();
    validate(files.store.as_ref(), &cfg, Part::Both).unwrap();

    // No index, no model.safetensors: every *.safetensors file in the directory.
    let dir = tmp();
    fs::write(dir.path().join("config.json"), tiny_flat().to_string()).unwrap();
    let (a, b) = tensors.split_at(40);
    write_st(&dir.path().join("part-a.safetensors"), a);
    write_st(&dir.path().join("part-b.safetensors"), b);
    let files = open_model(dir.path()).unwrap();
    validate(files.store.as_ref(), &cfg, Part::Both).unwrap();
    // ... and the same tensor in two of them is an error naming both files.
    write_st(&dir.path().join("part-c.safetensors"), &b[..1]);
    let msg = err_of(open_model(dir.path()));
    assert_names(
        &msg,
        &[&b[0].name, "part-b.safetensors", "part-c.safetensors"],
    );
}

#[test]
fn newer_tensor_names_and_tied_embeddings() {
    let mut v = tiny_flat();
    v["tie_word_embeddings"] = json!(true);
    let cfg = cfg_of(&v);
    let mut tensors = tiny_tensors(&cfg);
    assert!(tensors.iter().all(|t| t.name != "lm_head.weight"));
    for t in &mut tensors {
        if let Some(rest) = t.name.strip_prefix("visual.") {
            t.name = format!("model.visual.{rest}");
        } else if let Some(rest) = t.name.strip_prefix("model.") {
            t.name = format!("model.language_model.{rest}");
        }
    }
    let dir = tmp();
    write_single(dir.path(), &v, &tensors);
    let files = open_model(dir.path()).unwrap();
    let store = files.store.as_ref();
    validate(store, &cfg, Part::Both).unwrap();
    assert_eq!(
        resolve(store, "model.norm.weight").unwrap().name,
        "model.language_model.norm.weight"
    );
    assert!(resolve(store, "visual.nothing").is_none());
    let text = TextWeights::load(store, &cfg).unwrap();
    assert_eq!(
        text.lm_head.name,
        "model.language_model.embed_tokens.weight"
    );
    assert_eq!(text.lm_head.bytes.as_slice(), text.embed.bytes.as_slice());
    VisionWeights::load(store, &cfg).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Checkpoint files: negative

/// A sharded tiny checkpoint in a fresh directory.
fn sharded() -> (tempfile::TempDir, ModelConfig, Vec<T>) {
    let dir = tmp();
    let cfg = cfg_of(&tiny_flat());
    let tensors = tiny_tensors(&cfg);
    write_sharded(dir.path(), &tiny_flat(), &tensors);
    (dir, cfg, tensors)
}

fn shard2(dir: &Path) -> PathBuf {
    dir.join("model-00002-of-00002.safetensors")
}

#[test]
fn truncated_shard_names_file_and_tensor() {
    let (dir, _, _) = sharded();
    let p = shard2(dir.path());
    let bytes = fs::read(&p).unwrap();
    fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
    let msg = err_of(open_model(dir.path()));
    assert_names(&msg, &["model-00002-of-00002.safetensors", "truncated"]);
    // The last tensor by offset is the one cut.
    let st = safetensors::SafeTensors::read_metadata(&bytes).unwrap().1;
    let last = st.offset_keys().pop().unwrap();
    assert_names(&msg, &[&last]);

    // Cut inside the header: the header length now exceeds the file.
    fs::write(&p, &bytes[..20]).unwrap();
    assert_names(
        &err_of(open_model(dir.path())),
        &["model-00002-of-00002.safetensors", "header length"],
    );
    fs::write(&p, &bytes[..5]).unwrap();
    assert_names(
        &err_of(open_model(dir.path())),
        &["model-00002-of-00002.safetensors", "too short"],
    );
    fs::write(&p, b"").unwrap();
    assert_names(
        &err_of(open_model(dir.path())),
        &["model-00002-of-00002.safetensors"],
    );
}

/// A raw safetensors file from a header and a data length.
fn raw_st(path: &Path, header: &str, data_len: usize) {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend(std::iter::repeat_n(0u8, data_len));
    fs::write(path, b).unwrap();
}

#[test]
fn malformed_headers_are_errors() {
    let dir = tmp();
    let p = dir.path().join("model.safetensors");
    let open = || SafetensorsStore::open_dir(dir.path()).map(|_| ());

    raw_st(&p, "{\"a\": {\"dtype\": \"BF16\", \"shape\": [2], ", 4);
    assert_names(
        &err_of(open()),
        &["model.safetensors", "malformed safetensors header JSON"],
    );

    raw_st(
        &p,
        r#"{"a":{"dtype":"BF16","shape":[4],"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[4],"data_offsets":[4,12]}}"#,
        12,
    );
    assert_names(
        &err_of(open()),
        &["model.safetensors", "`a`", "`b`", "overlapping"],
    );

    raw_st(
        &p,
        r#"{"a":{"dtype":"BF16","shape":[4],"data_offsets":[8,0]}}"#,
        8,
    );
    assert_names(&err_of(open()), &["`a`", "end before they begin"]);

    raw_st(
        &p,
        r#"{"a":{"dtype":"BF16","shape":[3],"data_offsets":[0,8]}}"#,
        8,
    );
    assert_names(&err_of(open()), &["`a`", "span 8 bytes", "needs 6"]);

    raw_st(
        &p,
        r#"{"a":{"dtype":"BF16","shape":"four","data_offsets":[0,8]}}"#,
        8,
    );
    assert_names(&err_of(open()), &["`a`", "shape"]);

    // Data not aligned to the element size (a 1-byte-odd header) still reads back exactly,
    // from aligned storage.
    let header = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}} "#;
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    assert_ne!(b.len() % 4, 0);
    b.extend_from_slice(&1.5f32.to_le_bytes());
    b.extend_from_slice(&(-2.0f32).to_le_bytes());
    fs::write(&p, b).unwrap();
    let store = SafetensorsStore::open_dir(dir.path()).unwrap();
    let a = reel::store::WeightStore::get(&store, "a").unwrap();
    assert_eq!(a.bytes.as_slice().as_ptr() as usize % 4, 0);
    let vals: Vec<f32> = a
        .bytes
        .as_slice()
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(vals, vec![1.5, -2.0]);

    // A header length field pointing past the end of the file.
    let mut b = (1u64 << 40).to_le_bytes().to_vec();
    b.extend_from_slice(b"{}");
    fs::write(&p, b).unwrap();
    assert_names(
        &err_of(open()),
        &["model.safetensors", "exceeds the file size"],
    );

    // An empty directory has no weights.
    let empty = tmp();
    assert_names(
        &err_of(SafetensorsStore::open_dir(empty.path()).map(|_| ())),
        &["no weights"],
    );
}

#[test]
fn index_naming_a_missing_shard() {
    let (dir, _, _) = sharded();
    fs::remove_file(shard2(dir.path())).unwrap();
    let msg = err_of(open_model(dir.path()));
    assert_names(
        &msg,
        &[
            "model.safetensors.index.json",
            "model-00002-of-00002.safetensors",
            "does not exist",
        ],
    );
}

#[test]
fn index_listing_a_tensor_its_shard_lacks() {
    let (dir, _, _) = sharded();
    let ip = dir.path().join("model.safetensors.index.json");
    let mut idx: Value = serde_json::from_str(&fs::read_to_string(&ip).unwrap()).unwrap();
    idx["weight_map"]["model.layers.0.mlp.extra.weight"] =
        json!("model-00001-of-00002.safetensors");
    fs::write(&ip, idx.to_string()).unwrap();
    let msg = err_of(open_model(dir.path()));
    assert_names(
        &msg,
        &[
            "model.layers.0.mlp.extra.weight",
            "model-00001-of-00002.safetensors",
            "index",
        ],
    );

    fs::write(&ip, "{\"weight_map\": [").unwrap();
    assert_names(
        &err_of(open_model(dir.path())),
        &["model.safetensors.index.json", "malformed JSON"],
    );
}

#[test]
fn missing_tensor_is_named() {
    let dir = tmp();
    let cfg = cfg_of(&tiny_flat());
    let tensors: Vec<T> = tiny_tensors(&cfg)
        .into_iter()
        .filter(|t| t.name != "model.layers.1.self_attn.v_proj.bias")
        .collect();
    write_single(dir.path(), &tiny_flat(), &tensors);
    let files = open_model(dir.path()).unwrap();
    let store = files.store.as_ref();
    // The vision tower alone is complete.
    validate(store, &cfg, Part::Vision).unwrap();
    let msg = err_of(validate(store, &cfg, Part::Both));
    assert_names(
        &msg,
        &["model.layers.1.self_attn.v_proj.bias", "missing", "[32]"],
    );
    assert_names(
        &err_of(TextWeights::load(store, &cfg)),
        &["model.layers.1.self_attn.v_proj.bias"],
    );
}

#[test]
fn wrong_shape_is_named() {
    let dir = tmp();
    let cfg = cfg_of(&tiny_flat());
    let mut tensors = tiny_tensors(&cfg);
    let t = tensors
        .iter_mut()
        .find(|t| t.name == "visual.blocks.2.attn.qkv.weight")
        .unwrap();
    t.shape = vec![32, 96]; // transposed: same bytes, wrong layout
    write_single(dir.path(), &tiny_flat(), &tensors);
    let files = open_model(dir.path()).unwrap();
    let store = files.store.as_ref();
    validate(store, &cfg, Part::Text).unwrap();
    let msg = err_of(VisionWeights::load(store, &cfg));
    assert_names(
        &msg,
        &[
            "visual.blocks.2.attn.qkv.weight",
            "[96, 32]",
            "[32, 96]",
            "model.safetensors",
        ],
    );
}

#[test]
fn unsupported_dtypes_are_named() {
    for (dtype, width, spelled) in [
        (Dtype::F64, 8, "F64"),
        (Dtype::I8, 1, "I8"),
        (Dtype::I32, 4, "i32"),
    ] {
        let dir = tmp();
        let cfg = cfg_of(&tiny_flat());
        let mut tensors = tiny_tensors(&cfg);
        let t = tensors
            .iter_mut()
            .find(|t| t.name == "model.layers.0.mlp.up_proj.weight")
            .unwrap();
        t.dtype = dtype;
        t.data = vec![0u8; t.shape.iter().product::<usize>() * width];
        write_single(dir.path(), &tiny_flat(), &tensors);
        // Opening succeeds: the type only matters when the tensor is used.
        let files = open_model(dir.path()).unwrap();
        let store = files.store.as_ref();
        validate(store, &cfg, Part::Vision).unwrap();
        let msg = err_of(validate(store, &cfg, Part::Text));
        assert_names(
            &msg,
            &[
                "model.layers.0.mlp.up_proj.weight",
                spelled,
                "model.safetensors",
            ],
        );
        assert!(
            files
                .summary()
                .contains(&format!("{}: 1 tensors", dtype_name(dtype))),
            "{}",
            files.summary()
        );
    }
}

fn dtype_name(d: Dtype) -> &'static str {
    match d {
        Dtype::F64 => "F64",
        Dtype::I8 => "I8",
        Dtype::I32 => "I32",
        _ => "?",
    }
}

#[test]
fn model_path_that_is_not_a_model() {
    let dir = tmp();
    let p = dir.path().join("notes.txt");
    fs::write(&p, "hello").unwrap();
    assert_names(&err_of(open_model(&p)), &["notes.txt", "not a model"]);
    let missing = dir.path().join("nowhere");
    assert_names(&err_of(open_model(&missing)), &["nowhere"]);
}

#[test]
fn store_summary_counts_by_dtype() {
    let (dir, _, _) = sharded();
    let store = SafetensorsStore::open_dir(dir.path()).unwrap();
    assert_eq!(store.shard_paths().len(), 2);
    let s = weights::store_summary(&store);
    assert_names(&s, &["81 tensors", "BF16: 81 tensors"]);
}
