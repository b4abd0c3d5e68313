//! The `reel` binary end to end: golden tokens and logits through `--json`/`--logits-out`, and
//! one clear error (non-zero exit, no panic, no partial output) for each kind of bad input.

mod common;

use common::*;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn reel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_reel"))
        .args(args)
        .output()
        .expect("run reel")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Runs `reel run` on a model dir and expects a clean failure whose message names `culprit`.
fn expect_error(args: &[&str], culprit: &str) {
    let o = reel(args);
    let err = stderr(&o);
    assert!(!o.status.success(), "expected failure for {args:?}");
    assert!(!err.contains("panicked"), "panic for {args:?}: {err}");
    assert!(
        err.contains(culprit),
        "error for {args:?} should name {culprit:?}: {err}"
    );
    assert_eq!(
        err.trim().lines().count(),
        1,
        "one error line expected: {err}"
    );
}

fn run_args<'a>(model: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "run",
        "--model",
        model,
        "--device",
        "cpu",
        "--temperature",
        "0",
        "--max-new-tokens",
        "8",
    ];
    v.extend_from_slice(extra);
    v
}

#[test]
fn json_and_logits_match_goldens() {
    let g = load_golden("golden/text_only.safetensors");
    let dir = tempfile::tempdir().unwrap();
    let logits = dir.path().join("logits.safetensors");
    let model = model_dir();
    let o = reel(&run_args(
        model.to_str().unwrap(),
        &[
            "--dtype",
            "f32",
            "--json",
            "--logits-out",
            logits.to_str().unwrap(),
            "Hello, who are you?",
        ],
    ));
    assert!(o.status.success(), "reel failed: {}", stderr(&o));
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).expect("one JSON object on stdout");
    let ids = |k: &str| -> Vec<i64> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect()
    };
    assert_eq!(ids("prompt_tokens"), g["in.input_ids"].i64());
    assert_eq!(ids("generated_tokens"), g["greedy.tokens"].i64());
    assert!(v["text"].is_string() && v["timings"]["decode_tokens_per_s"].is_number());

    let bytes = std::fs::read(&logits).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let last = st.tensor("logits_last").unwrap();
    let steps = st.tensor("step_logits").unwrap();
    assert_eq!(steps.shape(), &[8, 1024]);
    let f = |d: &[u8]| -> Vec<f32> {
        d.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let (d, _) = max_diff(&f(last.data()), &g["logits_last"].f32());
    assert!(d < 1e-4, "logits_last max diff {d}");
    let (d, _) = max_diff(&f(steps.data()), &g["greedy.step_logits"].f32());
    assert!(d < 1e-4, "step_logits max diff {d}");
}

#[test]
fn streams_text_by_default() {
    let model = model_dir();
    let o = reel(&run_args(model.to_str().unwrap(), &["Hello, who are you?"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!o.stdout.is_empty());
    assert!(
        stderr(&o).contains("decode"),
        "timings on stderr: {}",
        stderr(&o)
    );
}

/// A copy of the fixture model in a temp dir, for breaking.
fn model_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(model_dir()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    dir
}

/// The shard holding `name`, per the index.
fn shard_of(dir: &Path, name: &str) -> PathBuf {
    let idx: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    dir.join(idx["weight_map"][name].as_str().unwrap())
}

/// Rewrites the shard holding `name` after `edit` changes its tensor list.
fn rewrite_shard(
    dir: &Path,
    name: &str,
    edit: impl FnOnce(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>),
) {
    let path = shard_of(dir, name);
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut ts: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                v.dtype(),
                v.shape().to_vec(),
                v.data().to_vec(),
            )
        })
        .collect();
    edit(&mut ts);
    let views: Vec<(String, TensorView)> = ts
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
}

const PROMPT: &str = "Hello, who are you?";

#[test]
fn missing_config() {
    let d = model_copy();
    std::fs::remove_file(d.path().join("config.json")).unwrap();
    expect_error(
        &run_args(d.path().to_str().unwrap(), &[PROMPT]),
        "config.json",
    );
}

#[test]
fn malformed_config() {
    let d = model_copy();
    std::fs::write(d.path().join("config.json"), "{\"hidden_size\": 64,").unwrap();
    expect_error(
        &run_args(d.path().to_str().unwrap(), &[PROMPT]),
        "config.json",
    );
}

#[test]
fn truncated_shard() {
    let d = model_copy();
    let shard = shard_of(d.path(), "lm_head.weight");
    let len = std::fs::metadata(&shard).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap();
    f.set_len(len / 2).unwrap();
    let file_name = shard.file_name().unwrap().to_str().unwrap().to_string();
    expect_error(&run_args(d.path().to_str().unwrap(), &[PROMPT]), &file_name);
}

#[test]
fn missing_tensor() {
    let d = model_copy();
    let name = "model.layers.1.mlp.up_proj.weight";
    rewrite_shard(d.path(), name, |ts| ts.retain(|t| t.0 != name));
    expect_error(&run_args(d.path().to_str().unwrap(), &[PROMPT]), name);
}

#[test]
fn wrong_shape() {
    let d = model_copy();
    let name = "model.layers.0.self_attn.k_proj.weight";
    rewrite_shard(d.path(), name, |ts| {
        let t = ts.iter_mut().find(|t| t.0 == name).unwrap();
        t.2 = vec![t.2[1], t.2[0]];
    });
    expect_error(&run_args(d.path().to_str().unwrap(), &[PROMPT]), name);
}

#[test]
fn unsupported_dtype() {
    let d = model_copy();
    let name = "model.norm.weight";
    rewrite_shard(d.path(), name, |ts| {
        let t = ts.iter_mut().find(|t| t.0 == name).unwrap();
        t.1 = Dtype::I16;
    });
    expect_error(&run_args(d.path().to_str().unwrap(), &[PROMPT]), name);
}

#[test]
fn empty_prompt() {
    let m = model_dir();
    expect_error(&run_args(m.to_str().unwrap(), &["  "]), "prompt");
}

#[test]
fn prompt_longer_than_cache() {
    let m = model_dir();
    expect_error(
        &run_args(m.to_str().unwrap(), &["--ctx", "8", PROMPT]),
        "--ctx",
    );
}

#[test]
fn unwritable_logits_out() {
    let m = model_dir();
    let bad = "/nonexistent-dir/logits.safetensors";
    expect_error(
        &run_args(m.to_str().unwrap(), &["--logits-out", bad, PROMPT]),
        "--logits-out",
    );
    assert!(!Path::new(bad).exists());
}

#[test]
fn cuda_without_gpu() {
    if reel::backend::cuda::open(0).is_ok() {
        println!("skipped: a CUDA device is present");
        return;
    }
    let m = model_dir();
    let mut args = run_args(m.to_str().unwrap(), &[PROMPT]);
    args[4] = "cuda";
    expect_error(&args, "cuda");
}

#[test]
fn info_prints_inventory() {
    let m = model_dir();
    let o = reel(&["info", "--model", m.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(
        s.contains("lm_head.weight") && s.contains("qwen2_5_vl"),
        "{s}"
    );
}

// ---- reel bench ----

fn bench(extra: &[&str]) -> Output {
    let mut args = vec!["bench", "--device", "cpu"];
    args.extend_from_slice(extra);
    reel(&args)
}

fn bench_json(extra: &[&str]) -> serde_json::Value {
    let mut args = extra.to_vec();
    args.push("--json");
    let o = bench(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("one JSON object")
}

#[test]
fn bench_bad_flags() {
    let cases: &[(&[&str], &str)] = &[
        (&["--weights", "q5_k"], "--weights"),
        (&["--decode-at", "0"], "--decode-at"),
        (&["--decode-at", "1024", "--ctx", "512"], "--decode-at"),
        (&["--prompt-len", "600", "--ctx", "512"], "--ctx"),
        (&["--layers", "29"], "--layers"),
        (&["--layers", "0"], "--layers"),
        (&["--prompt-len", "0"], "--prompt-len"),
        (&["--decode-tokens", "0"], "--decode-tokens"),
        (&["--synthetic", "13b"], "--synthetic"),
        (&["--video-r1", "--vision-layers", "33"], "--vision-layers"),
        (&["--vision-layers", "2"], "--vision-layers"),
        (&["--video-r1", "--frames", "3"], "--frames"),
        (&["--video-r1", "--height", "450"], "--height"),
        (&["--video-r1", "--ctx", "1000"], "--ctx"),
        (&["--vision", "--json"], "--json"),
        (&["--vision", "--weights", "q8_0"], "--weights"),
    ];
    for (extra, culprit) in cases {
        let mut args = vec!["bench", "--device", "cpu"];
        args.extend_from_slice(extra);
        expect_error(&args, culprit);
    }
}

/// Every stage on the tiny shape through the same code as 7b: q4_k_m weights, decode at a
/// filled context, the Video-R1 path (2 frames of 56x56), all in one JSON object.
#[test]
fn bench_tiny_json_has_every_figure() {
    let v = bench_json(&[
        "--synthetic",
        "tiny",
        "--weights",
        "q4_k_m",
        "--prompt-len",
        "4",
        "--decode-tokens",
        "2",
        "--decode-at",
        "40,100",
        "--video-r1",
        "--frames",
        "2",
        "--height",
        "56",
        "--width",
        "56",
    ]);
    assert_eq!(v["model"]["weights"], "q4_k_m");
    let types = v["model"]["tensor_types"].to_string();
    // tiny has 2 layers: layer 1 is bumped (use_more_bits), as is lm_head.
    assert!(types.contains("q4_k") && types.contains("q6_k") && types.contains("f32"));
    let ctxs: Vec<u64> = v["decode"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["context"].as_u64().unwrap())
        .collect();
    assert_eq!(ctxs, vec![4, 40, 100]);
    let d = &v["decode"][2];
    // 2 layers x (100 + 2/2 + 1) cached tokens x K,V x 2 heads x 64 x bf16.
    assert_eq!(d["kv_bytes_per_token"], 2 * 102 * 2 * 2 * 64 * 2);
    assert!(d["tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(d["bound_tokens_per_s"].as_f64().unwrap() > 0.0);
    let r = &v["video_r1"];
    assert_eq!(r["grid_thw"].to_string(), "[1,4,4]");
    assert_eq!(r["visual_tokens"], 4);
    assert_eq!(r["prompt_tokens"], 154);
    let parts = ["vision_s", "prefill_s", "first_token_s"]
        .iter()
        .map(|k| r[k].as_f64().unwrap())
        .sum::<f64>();
    assert!((r["ttft_s"].as_f64().unwrap() - parts).abs() < 1e-9);
    assert_eq!(r["extrapolated"], false);
    assert!(v["ceilings"]["bandwidth_gbps"].as_f64().unwrap() > 0.0);
    assert!(v["memory"]["peak_rss_bytes"].as_u64().unwrap() > 0);
}

/// The real 7B shape with one layer in Q8_0: bytes per token from the actual storage types.
#[test]
fn bench_7b_one_layer_q8_0() {
    let v = bench_json(&[
        "--layers",
        "1",
        "--weights",
        "q8_0",
        "--prompt-len",
        "2",
        "--decode-tokens",
        "1",
    ]);
    let (d, kvd, f, vocab) = (3584u64, 512u64, 18944u64, 152064u64);
    let q8 = |n: u64| n / 32 * 34;
    let layer = q8(2 * d * d + 2 * kvd * d + 3 * d * f) + 4 * (3 * d + 2 * kvd);
    let head = q8(vocab * d) + 4 * d + q8(d);
    let dec = &v["decode"][0];
    assert_eq!(dec["weight_bytes_per_token"], layer + head);
    // 28 layers plus the KV of 28 layers (2 + 0 + 1 tokens cached at the timed step).
    let kv28 = 28 * 3 * 2 * 4 * 128 * 2;
    assert_eq!(dec["full_bytes_per_token"], 28 * layer + head + kv28);
    assert_eq!(v["model"]["layers"], 1);
    // The CPU backend holds the weights in host memory.
    assert!(
        v["memory"]["peak_rss_bytes"].as_u64().unwrap()
            >= v["model"]["weight_bytes"].as_u64().unwrap()
    );
}

#[test]
fn bench_cuda_quantized_is_a_clear_error_or_runs() {
    let args = [
        "bench",
        "--device",
        "cuda",
        "--synthetic",
        "tiny",
        "--weights",
        "q8_0",
        "--prompt-len",
        "4",
        "--decode-tokens",
        "2",
    ];
    if reel::backend::cuda::open(0).is_err() {
        expect_error(&args, "cuda");
        return;
    }
    let o = reel(&args);
    let err = stderr(&o);
    assert!(!err.contains("panicked"), "{err}");
    assert!(o.status.success() || err.contains("q8_0"), "{err}");
}
