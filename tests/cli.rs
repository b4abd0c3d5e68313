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

/// Runs `reel` and expects a clean failure: one error line that names `culprit` (the file,
/// flag or tensor at fault) and says what is wrong with it (`diagnosis`).
fn expect_error(args: &[&str], culprit: &str, diagnosis: &str) {
    let o = reel(args);
    let err = stderr(&o);
    assert!(!o.status.success(), "expected failure for {args:?}");
    assert!(!err.contains("panicked"), "panic for {args:?}: {err}");
    assert!(
        err.contains(culprit) && err.contains(diagnosis),
        "error for {args:?} should name {culprit:?} and say {diagnosis:?}: {err}"
    );
    assert_eq!(
        err.trim().lines().count(),
        1,
        "one error line expected: {err}"
    );
}

/// `reel run` greedy for 8 tokens: the model, the device and what else a test passes.
struct RunCmd<'a> {
    model: &'a str,
    device: &'a str,
    extra: &'a [&'a str],
}

impl<'a> RunCmd<'a> {
    fn args(&self) -> Vec<&'a str> {
        let mut v = vec![
            "run",
            "--model",
            self.model,
            "--device",
            self.device,
            "--temperature",
            "0",
            "--max-new-tokens",
            "8",
        ];
        v.extend_from_slice(self.extra);
        v
    }
}

/// `reel run` on the CPU.
fn run_args<'a>(model: &'a str, extra: &'a [&'a str]) -> Vec<&'a str> {
    RunCmd {
        model,
        device: "cpu",
        extra,
    }
    .args()
}

/// Why the CUDA backend does not open here, or None when it does.
fn cuda_unavailable() -> Option<String> {
    reel::backend::cuda::open(0).err().map(|e| e.to_string())
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
        "No such file or directory",
    );
}

#[test]
fn malformed_config() {
    let d = model_copy();
    std::fs::write(d.path().join("config.json"), "{\"hidden_size\": 64,").unwrap();
    expect_error(
        &run_args(d.path().to_str().unwrap(), &[PROMPT]),
        "config.json",
        "malformed JSON",
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
    expect_error(
        &run_args(d.path().to_str().unwrap(), &[PROMPT]),
        &file_name,
        "truncated",
    );
}

#[test]
fn missing_tensor() {
    let d = model_copy();
    let name = "model.layers.1.mlp.up_proj.weight";
    rewrite_shard(d.path(), name, |ts| ts.retain(|t| t.0 != name));
    expect_error(
        &run_args(d.path().to_str().unwrap(), &[PROMPT]),
        name,
        "does not contain it",
    );
}

#[test]
fn wrong_shape() {
    let d = model_copy();
    let name = "model.layers.0.self_attn.k_proj.weight";
    rewrite_shard(d.path(), name, |ts| {
        let t = ts.iter_mut().find(|t| t.0 == name).unwrap();
        t.2 = vec![t.2[1], t.2[0]];
    });
    expect_error(
        &run_args(d.path().to_str().unwrap(), &[PROMPT]),
        name,
        "expected shape [32, 64], found [64, 32]",
    );
}

#[test]
fn unsupported_dtype() {
    let d = model_copy();
    let name = "model.norm.weight";
    rewrite_shard(d.path(), name, |ts| {
        let t = ts.iter_mut().find(|t| t.0 == name).unwrap();
        t.1 = Dtype::I16;
    });
    expect_error(
        &run_args(d.path().to_str().unwrap(), &[PROMPT]),
        name,
        "has dtype I16, which reel cannot use",
    );
}

#[test]
fn empty_prompt() {
    let m = model_dir();
    expect_error(
        &run_args(m.to_str().unwrap(), &["  "]),
        "PROMPT",
        "the prompt is empty",
    );
}

#[test]
fn prompt_longer_than_cache() {
    let m = model_dir();
    expect_error(
        &run_args(m.to_str().unwrap(), &["--ctx", "8", PROMPT]),
        "--ctx",
        "the prompt has 38 tokens but the KV cache holds 8",
    );
}

#[test]
fn unwritable_logits_out() {
    let m = model_dir();
    let bad = "/nonexistent-dir/logits.safetensors";
    expect_error(
        &run_args(m.to_str().unwrap(), &["--logits-out", bad, PROMPT]),
        "--logits-out",
        "directory /nonexistent-dir does not exist",
    );
    assert!(!Path::new(bad).exists());
}

/// `--device cuda` without a usable GPU fails with the backend's own reason (the device
/// name alone would be in any CUDA error).
#[test]
fn cuda_without_gpu() {
    let Some(reason) = cuda_unavailable() else {
        println!("skipped: a CUDA device is present");
        return;
    };
    let m = model_dir();
    let cmd = RunCmd {
        model: m.to_str().unwrap(),
        device: "cuda",
        extra: &[PROMPT],
    };
    expect_error(&cmd.args(), "cuda", &reason);
}

/// Sampling flags follow transformers' ranges (top_p in [0, 1], temperature and the
/// repetition penalty as its warpers take them), checked before the model loads.
#[test]
fn sampling_flags_are_checked() {
    let m = model_dir();
    let m = m.to_str().unwrap();
    for (flags, culprit, diagnosis) in [
        (
            &["--top-p", "1.5"][..],
            "--top-p",
            "must lie in [0, 1], got 1.5",
        ),
        (&["--top-p=-0.1"], "--top-p", "must lie in [0, 1], got -0.1"),
        (
            &["--temperature=-1"],
            "--temperature",
            "must be a finite number >= 0",
        ),
        (
            &["--repetition-penalty", "0"],
            "--repetition-penalty",
            "must be a finite number > 0",
        ),
        (
            &["--ctx", "0"],
            "--ctx",
            "the KV cache needs at least 1 token",
        ),
    ] {
        // A model directory that does not exist: the flag must be refused first.
        let mut args = vec!["run", "--model", "/nonexistent-model-dir"];
        args.extend_from_slice(flags);
        args.push(PROMPT);
        expect_error(&args, culprit, diagnosis);
    }
    // top_p 0 keeps only the most likely token: at temperature 1 it decodes as greedy does.
    let sampled = reel(&[
        "run",
        "--model",
        m,
        "--device",
        "cpu",
        "--max-new-tokens",
        "8",
        "--temperature",
        "1",
        "--top-p",
        "0",
        "--json",
        PROMPT,
    ]);
    assert!(sampled.status.success(), "{}", stderr(&sampled));
    let greedy = reel(&run_args(m, &["--json", PROMPT]));
    let tokens = |o: &Output| -> serde_json::Value {
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["generated_tokens"].clone()
    };
    assert_eq!(tokens(&sampled), tokens(&greedy));
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
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &["--weights", "q5_k"],
            "--weights",
            "unknown weights type `q5_k`",
        ),
        (
            &["--decode-at", "0"],
            "--decode-at",
            "context lengths must be at least 1",
        ),
        (
            &["--decode-at", "1024", "--ctx", "512"],
            "--decode-at",
            "context 1024 + 16 decode tokens exceeds --ctx 512",
        ),
        (
            &["--prompt-len", "600", "--ctx", "512"],
            "--ctx",
            "512 tokens cannot hold --prompt-len 600 + --decode-tokens 16",
        ),
        (&["--ctx", "0"], "--ctx", "0 tokens cannot hold"),
        (&["--layers", "29"], "--layers", "must be in 1..=28, got 29"),
        (&["--layers", "0"], "--layers", "must be in 1..=28, got 0"),
        (&["--prompt-len", "0"], "--prompt-len", "must be at least 1"),
        (
            &["--decode-tokens", "0"],
            "--decode-tokens",
            "must be at least 1",
        ),
        (
            &["--synthetic", "13b"],
            "--synthetic",
            "unknown shape \"13b\"",
        ),
        (
            &["--video-r1", "--vision-layers", "33"],
            "--vision-layers",
            "must be in 1..=32, got 33",
        ),
        (
            &["--vision-layers", "2"],
            "--vision-layers",
            "needs --video-r1",
        ),
        (
            &["--video-r1", "--frames", "3"],
            "--frames",
            "need an even frame count",
        ),
        (
            &["--video-r1", "--height", "450"],
            "--height",
            "positive multiples of 28",
        ),
        (
            &["--video-r1", "--ctx", "1000"],
            "--ctx",
            "the Video-R1 prompt needs",
        ),
        (
            &["--vision", "--json"],
            "--json",
            "is not used with --vision",
        ),
        (
            &["--vision", "--weights", "q8_0"],
            "--weights",
            "is not used with --vision",
        ),
    ];
    for (extra, culprit, diagnosis) in cases {
        let mut args = vec!["bench", "--device", "cpu"];
        args.extend_from_slice(extra);
        expect_error(&args, culprit, diagnosis);
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
    if let Some(reason) = cuda_unavailable() {
        expect_error(&args, "cuda", &reason);
        return;
    }
    let o = reel(&args);
    assert!(o.status.success(), "{}", stderr(&o));
}
