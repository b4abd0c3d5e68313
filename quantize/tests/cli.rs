//! reel-quantize end to end: checkpoints in, GGUF files out, read back with reel's reader.

#[path = "../../tests/common/mod.rs"]
mod common;

use common::model_dir;
use reel::quant::dequantize_row;
use reel::store::gguf::GgufModel;
use reel::DType;
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_reel-quantize"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).arg("--quiet").output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// name -> (shape, f32 values) of every tensor in a checkpoint directory.
fn load_checkpoint(dir: &Path) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "safetensors") {
            continue;
        }
        let bytes = std::fs::read(&p).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        for (name, v) in st.tensors() {
            let dt = match v.dtype() {
                Dtype::BF16 => DType::BF16,
                Dtype::F16 => DType::F16,
                Dtype::F32 => DType::F32,
                d => panic!("{d:?}"),
            };
            let n: usize = v.shape().iter().product();
            let mut f = vec![0.0f32; n];
            dequantize_row(dt, v.data(), &mut f).unwrap();
            out.insert(name, (v.shape().to_vec(), f));
        }
    }
    out
}

/// Checks every tensor of `gguf` against the checkpoint: same names and shapes, values within
/// what the stored type allows. Returns name -> stored dtype.
fn check_against_source(
    gguf: &Path,
    src: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
) -> BTreeMap<String, DType> {
    let m = GgufModel::open(gguf).unwrap();
    let store = m.store();
    let names: Vec<&str> = store.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, src.keys().map(|s| s.as_str()).collect::<Vec<_>>());
    let mut types = BTreeMap::new();
    for t in store.tensors() {
        let (shape, x) = &src[&t.name];
        assert_eq!(&t.shape, shape, "{}", t.name);
        let mut y = vec![0.0f32; x.len()];
        dequantize_row(
            t.dtype,
            store.tensor_bytes(&t.name).unwrap().as_slice(),
            &mut y,
        )
        .unwrap();
        let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        // Relative to the tensor's largest magnitude: exact for float storage of bf16 sources.
        let tol = match t.dtype {
            DType::F32 | DType::BF16 => 0.0,
            DType::Q8_0 => 0.01,
            DType::Q6K => 0.03,
            DType::Q4K => 0.15,
            d => panic!("unexpected {d}"),
        } * amax;
        for (i, (a, b)) in x.iter().zip(&y).enumerate() {
            assert!(
                (a - b).abs() <= tol,
                "{} ({}) [{i}]: {a} vs {b}",
                t.name,
                t.dtype
            );
        }
        types.insert(t.name.clone(), t.dtype);
    }
    types
}

#[test]
fn fixture_model_to_q8_0_is_self_contained() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.gguf");
    let fx = model_dir();
    let o = run(&[
        "--model",
        fx.to_str().unwrap(),
        "--type",
        "q8_0",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!dir.path().join("m.gguf.tmp").exists());
    let src = load_checkpoint(&fx);
    let types = check_against_source(&out, &src);
    assert_eq!(types["model.embed_tokens.weight"], DType::Q8_0);
    assert_eq!(types["lm_head.weight"], DType::Q8_0);
    assert_eq!(types["model.norm.weight"], DType::F32);
    assert!(types
        .iter()
        .filter(|(n, _)| n.starts_with("visual."))
        .all(|(n, d)| {
            *d == if src[n].0.len() == 1 {
                DType::F32
            } else {
                DType::BF16
            }
        }));
    let m = GgufModel::open(&out).unwrap();
    let text = |f: &str| std::fs::read_to_string(fx.join(f)).unwrap();
    assert_eq!(m.architecture(), "qwen2vl");
    assert_eq!(m.config_json(), text("config.json"));
    assert_eq!(m.tokenizer_json(), text("tokenizer.json"));
    assert_eq!(
        m.tokenizer_config_json(),
        Some(text("tokenizer_config.json").as_str())
    );
    assert_eq!(
        m.chat_template_json(),
        Some(text("chat_template.json").as_str())
    );
    assert_eq!(
        m.generation_config_json(),
        Some(text("generation_config.json").as_str())
    );
    assert_eq!(
        m.preprocessor_config_json(),
        Some(text("preprocessor_config.json").as_str())
    );
    let tpl: serde_json::Value = serde_json::from_str(&text("chat_template.json")).unwrap();
    assert_eq!(m.chat_template(), tpl["chat_template"].as_str());
    assert_eq!(
        m.store()
            .get("qwen2vl.block_count")
            .and_then(|v| v.as_u64()),
        Some(2)
    );

    // Exists: refused without --force, replaced with it.
    let o = run(&[
        "--model",
        fx.to_str().unwrap(),
        "--type",
        "bf16",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("exists (pass --force to overwrite)"),
        "{}",
        stderr(&o)
    );
    let o = run(&[
        "--model",
        fx.to_str().unwrap(),
        "--type",
        "bf16",
        "--out",
        out.to_str().unwrap(),
        "--force",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let types = check_against_source(&out, &src);
    assert!(types
        .values()
        .all(|d| *d == DType::BF16 || *d == DType::F32));
}

fn bf16_bytes(x: &[f32]) -> Vec<u8> {
    x.iter()
        .map(|v| ((v.to_bits() + 0x7fff + ((v.to_bits() >> 16) & 1)) >> 16) as u16)
        .flat_map(|h| h.to_le_bytes())
        .collect()
}

/// A synthetic 8-layer checkpoint wide enough (256) for K-quants, plus a vision tensor whose rows
/// (3420) fit no block size.
fn synthetic(dir: &Path) {
    let mut tensors: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![64, 256]),
        ("lm_head.weight".into(), vec![64, 256]),
        ("model.norm.weight".into(), vec![256]),
        ("visual.blocks.0.mlp.down_proj.weight".into(), vec![2, 3420]),
        ("visual.blocks.0.attn.qkv.weight".into(), vec![4, 256]),
    ];
    for l in 0..8 {
        tensors.push((
            format!("model.layers.{l}.self_attn.v_proj.weight"),
            vec![32, 256],
        ));
        tensors.push((
            format!("model.layers.{l}.mlp.down_proj.weight"),
            vec![16, 512],
        ));
        tensors.push((
            format!("model.layers.{l}.mlp.up_proj.weight"),
            vec![16, 256],
        ));
        tensors.push((format!("model.layers.{l}.self_attn.v_proj.bias"), vec![32]));
    }
    let mut seed = 1u64;
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, s)| {
            let count: usize = s.iter().product();
            let x: Vec<f32> = (0..count)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
                })
                .collect();
            (n, s, bf16_bytes(&x))
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(Dtype::BF16, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"num_hidden_layers": 8, "hidden_size": 256, "tie_word_embeddings": false}"#,
    )
    .unwrap();
    std::fs::write(dir.join("tokenizer.json"), r#"{"model": {}}"#).unwrap();
}

#[test]
fn q4_k_m_follows_the_llama_cpp_mix() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    std::fs::create_dir(&ck).unwrap();
    synthetic(&ck);
    let out = dir.path().join("q.gguf");
    let o = run(&[
        "--model",
        ck.to_str().unwrap(),
        "--type",
        "q4_k_m",
        "--out",
        out.to_str().unwrap(),
        "--quantize-vision",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("fallback: visual.blocks.0.mlp.down_proj.weight: row length 3420"),
        "{err}"
    );
    let types = check_against_source(&out, &load_checkpoint(&ck));
    // 8 layers: use_more_bits picks 0 and 7 (first/last eighth) and 3, 6 ((i - 1) % 3 == 2).
    for l in 0..8 {
        let want = if [0, 3, 6, 7].contains(&l) {
            DType::Q6K
        } else {
            DType::Q4K
        };
        assert_eq!(
            types[&format!("model.layers.{l}.self_attn.v_proj.weight")],
            want,
            "layer {l}"
        );
        assert_eq!(
            types[&format!("model.layers.{l}.mlp.down_proj.weight")],
            want,
            "layer {l}"
        );
        assert_eq!(
            types[&format!("model.layers.{l}.mlp.up_proj.weight")],
            DType::Q4K
        );
        assert_eq!(
            types[&format!("model.layers.{l}.self_attn.v_proj.bias")],
            DType::F32
        );
    }
    assert_eq!(types["lm_head.weight"], DType::Q6K);
    assert_eq!(types["model.embed_tokens.weight"], DType::Q4K);
    assert_eq!(types["visual.blocks.0.attn.qkv.weight"], DType::Q4K);
    assert_eq!(types["visual.blocks.0.mlp.down_proj.weight"], DType::BF16);
}

#[test]
fn bad_inputs_are_clear_errors_and_leave_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.gguf");
    let o_s = out.to_str().unwrap();
    let o = run(&[
        "--model",
        "/definitely/not/here",
        "--type",
        "q8_0",
        "--out",
        o_s,
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("--model /definitely/not/here: not a directory"),
        "{}",
        stderr(&o)
    );

    // No config.json.
    let ck = dir.path().join("noconfig");
    std::fs::create_dir(&ck).unwrap();
    synthetic(&ck);
    std::fs::remove_file(ck.join("config.json")).unwrap();
    let o = run(&[
        "--model",
        ck.to_str().unwrap(),
        "--type",
        "q8_0",
        "--out",
        o_s,
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("missing config.json"),
        "{}",
        stderr(&o)
    );

    // A truncated shard.
    let ck = dir.path().join("trunc");
    std::fs::create_dir(&ck).unwrap();
    synthetic(&ck);
    let st = ck.join("model.safetensors");
    let b = std::fs::read(&st).unwrap();
    std::fs::write(&st, &b[..b.len() / 2]).unwrap();
    let o = run(&[
        "--model",
        ck.to_str().unwrap(),
        "--type",
        "q8_0",
        "--out",
        o_s,
    ]);
    let e = stderr(&o);
    assert!(
        !o.status.success() && e.contains("model.safetensors") && e.contains("truncated"),
        "{e}"
    );

    // Missing output directory.
    let o = run(&[
        "--model",
        model_dir().to_str().unwrap(),
        "--type",
        "q8_0",
        "--out",
        "/no/such/dir/x.gguf",
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("does not exist"),
        "{}",
        stderr(&o)
    );

    // Unknown preset: clap names the flag.
    let o = run(&[
        "--model",
        model_dir().to_str().unwrap(),
        "--type",
        "q3_k",
        "--out",
        o_s,
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("--type"),
        "{}",
        stderr(&o)
    );

    assert!(!out.exists());
    assert_eq!(
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "tmp"))
            .count(),
        0
    );
}
