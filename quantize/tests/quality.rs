//! reel-quantize --report on the fixture model and on a synthetic model from
//! reel-synth-checkpoint, and the synthetic checkpoint's own statistics.

#[path = "../../tests/common/mod.rs"]
mod common;

use common::model_dir;
use reel::quant::dequantize_row;
use reel::store::gguf::GgufModel;
use reel::DType;
use safetensors::SafeTensors;
use std::path::Path;
use std::process::Command;

/// Runs reel-quantize with --report --json; returns the JSON object and stderr.
fn report(model: &Path, preset: &str, dir: &Path, extra: &[&str]) -> (serde_json::Value, String) {
    let out = dir.join(format!("{preset}.gguf"));
    let o = Command::new(env!("CARGO_BIN_EXE_reel-quantize"))
        .args([
            "--model",
            model.to_str().unwrap(),
            "--type",
            preset,
            "--out",
        ])
        .arg(&out)
        .args(["--quiet", "--report", "--json"])
        .args(extra)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{preset}: {err}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    (v, err)
}

fn q(v: &serde_json::Value, key: &str) -> f64 {
    v["quality"][key].as_f64().unwrap()
}

fn print_row(model: &str, preset: &str, v: &serde_json::Value) {
    println!(
        "{model:<10} {preset:<7} mean KL {:>10.3e}  max KL {:>10.3e}  top-1 {:.3}  ({} positions)",
        q(v, "mean_kl"),
        q(v, "max_kl"),
        q(v, "top1_agreement"),
        v["quality"]["positions"]
    );
}

#[test]
fn report_on_fixture_model() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, "Hello, who are you?\n\nWhat is 2 + 2?\n").unwrap();
    let p = prompts.to_str().unwrap();
    let args = ["--report-prompts", p, "--report-tokens", "6"];
    let (bf16, _) = report(&model_dir(), "bf16", dir.path(), &args);
    let (q8, _) = report(&model_dir(), "q8_0", dir.path(), &args);
    let (q4, err) = report(&model_dir(), "q4_k_m", dir.path(), &args);
    for (name, v) in [("bf16", &bf16), ("q8_0", &q8), ("q4_k_m", &q4)] {
        print_row("fixture", name, v);
        // 2 prompts (the blank line is skipped) x 6 positions.
        assert_eq!(v["quality"]["positions"], 12, "{v}");
        assert_eq!(v["quality"]["prompts"], 2);
        assert!(v["peak_rss_bytes"].as_u64().unwrap() > 0);
    }
    // bf16 stores the checkpoint's own values: the same distributions exactly.
    assert_eq!(q(&bf16, "mean_kl"), 0.0);
    assert_eq!(q(&bf16, "top1_agreement"), 1.0);
    let kl8 = q(&q8, "mean_kl");
    assert!(kl8 > 0.0 && kl8 < 1e-3, "q8_0 mean KL {kl8}");
    assert!(q(&q8, "max_kl") >= kl8);
    assert!(q(&q8, "top1_agreement") >= 0.9);
    // The fixture's rows (64, 128) are not multiples of 256: every K-quant falls back to Q8_0,
    // so q4_k_m is the q8_0 file and its figures are identical.
    assert!(err.contains("fallback"), "{err}");
    assert_eq!(q(&q4, "mean_kl"), kl8);
    assert_eq!(q(&q4, "top1_agreement"), q(&q8, "top1_agreement"));
}

#[test]
fn report_flags_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "\n  \n").unwrap();
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_reel-quantize"))
            .args(["--model", model_dir().to_str().unwrap(), "--type", "q8_0"])
            .arg("--out")
            .arg(dir.path().join("x.gguf"))
            .arg("--quiet")
            .args(extra)
            .output()
            .unwrap()
    };
    let o = run(&["--report", "--report-prompts", empty.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("--report-prompts") && err.contains("no prompts"),
        "{err}"
    );
    let o = run(&["--report", "--report-prompts", "/nonexistent/prompts.txt"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/prompts.txt"));
    let o = run(&["--report", "--report-tokens", "0"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--report-tokens"));
    // --report-prompts without --report is a usage error.
    let o = run(&["--report-prompts", empty.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--report"));
    // Nothing was written by the failed runs.
    assert!(!dir.path().join("x.gguf").exists());
}

fn synth(out: &Path) {
    let o = Command::new(env!("CARGO_BIN_EXE_reel-synth-checkpoint"))
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// f32 values of a bf16 tensor of a single-file checkpoint.
fn tensor(st: &SafeTensors, name: &str) -> (Vec<usize>, Vec<f32>) {
    let v = st.tensor(name).unwrap();
    let mut f = vec![0.0f32; v.shape().iter().product()];
    dequantize_row(DType::BF16, v.data(), &mut f).unwrap();
    (v.shape().to_vec(), f)
}

#[test]
fn synthetic_checkpoint_has_the_intended_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    synth(&a);
    synth(&b);
    let bytes = std::fs::read(a.join("model.safetensors")).unwrap();
    assert_eq!(
        bytes,
        std::fs::read(b.join("model.safetensors")).unwrap(),
        "the generator is not deterministic"
    );
    // A refused, non-empty output directory.
    let o = Command::new(env!("CARGO_BIN_EXE_reel-synth-checkpoint"))
        .arg("--out")
        .arg(&a)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not empty"));

    let st = SafeTensors::deserialize(&bytes).unwrap();
    // Every language-model matrix row is a multiple of 256 (so every preset keeps its types).
    for (name, v) in st.tensors() {
        if !name.starts_with("visual.") && v.shape().len() == 2 {
            assert_eq!(v.shape()[1] % 256, 0, "{name}");
        }
    }
    // A linear weight: std about 1/sqrt(in) (times the log-normal scales' RMS, ~1.13), heavy
    // tails (kurtosis well above a Gaussian's 3).
    let (shape, w) = tensor(&st, "model.layers.1.mlp.up_proj.weight");
    let n = w.len() as f64;
    let var = w.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / n;
    let kurt = w.iter().map(|&x| (x as f64).powi(4)).sum::<f64>() / n / (var * var);
    let want = 1.13 / (shape[1] as f64).sqrt();
    assert!(
        (var.sqrt() / want - 1.0).abs() < 0.25,
        "std {} vs {want}",
        var.sqrt()
    );
    assert!(kurt > 5.0, "kurtosis {kurt}");
    // Embedding: a few hidden channels carry much larger values than the median channel.
    let (shape, e) = tensor(&st, "model.embed_tokens.weight");
    let hidden = shape[1];
    let mut col_rms: Vec<f64> = (0..hidden)
        .map(|j| {
            let s: f64 = e.chunks(hidden).map(|r| (r[j] as f64).powi(2)).sum();
            (s / shape[0] as f64).sqrt()
        })
        .collect();
    col_rms.sort_by(f64::total_cmp);
    assert!(
        col_rms[hidden - 1] > 5.0 * col_rms[hidden / 2],
        "{col_rms:?}"
    );
    assert!(col_rms[hidden - 4] < 3.0 * col_rms[hidden / 2]);
    // Norm weights positive, around 1 per layer and around 2 for the final norm.
    let (_, g) = tensor(&st, "model.layers.0.input_layernorm.weight");
    let mean = g.iter().sum::<f32>() / g.len() as f32;
    assert!(
        g.iter().all(|&x| x > 0.0) && (mean - 1.0).abs() < 0.1,
        "{mean}"
    );
    let (_, g) = tensor(&st, "model.norm.weight");
    let mean = g.iter().sum::<f32>() / g.len() as f32;
    assert!((mean - 2.0).abs() < 0.2, "{mean}");
}

#[test]
fn report_on_synthetic_model_orders_presets() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("synth");
    synth(&model);
    let args = ["--report-tokens", "8"];
    let mut rows = Vec::new();
    for preset in ["bf16", "q8_0", "q4_k_m"] {
        let (v, _) = report(&model, preset, dir.path(), &args);
        print_row("synthetic", preset, &v);
        rows.push(v);
    }
    // The q4_k_m file really holds Q4_K and Q6_K tensors here.
    let m = GgufModel::open(dir.path().join("q4_k_m.gguf")).unwrap();
    let types: Vec<DType> = m.store().tensors().iter().map(|t| t.dtype).collect();
    assert!(types.contains(&DType::Q4K) && types.contains(&DType::Q6K));
    assert!(!types.contains(&DType::Q8_0));

    let (bf16, q8, q4) = (&rows[0], &rows[1], &rows[2]);
    assert_eq!(q(bf16, "mean_kl"), 0.0);
    assert_eq!(q(bf16, "top1_agreement"), 1.0);
    let (kl8, kl4) = (q(q8, "mean_kl"), q(q4, "mean_kl"));
    assert!(kl8 > 0.0 && kl8 < 0.1, "q8_0 mean KL {kl8}");
    assert!(kl4 > 10.0 * kl8, "q4_k_m mean KL {kl4} vs q8_0 {kl8}");
    assert!(q(q8, "top1_agreement") >= 0.75);
    assert!(q(q8, "top1_agreement") > q(q4, "top1_agreement"));
    assert_eq!(q8["quality"]["positions"], 32);
}
