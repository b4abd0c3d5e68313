//! Quantize -> run for every preset on the fixture model, with the quality report: KL
//! divergence and top-1 agreement of next-token distributions against the bf16 file, over the
//! positions of 8 greedy steps on the fixture prompts (teacher-forced on the bf16 tokens).

#[path = "../../tests/common/mod.rs"]
mod common;

use common::model_dir;
use reel::engine::{Device, Engine, EngineOptions};
use reel::model::qwen2_5_vl::positions;
use reel::model::Model;
use reel::quantize::quality::compare_logits;
use reel::DType;
use std::path::{Path, PathBuf};
use std::process::Command;

fn quantize(preset: &str, dir: &Path) -> PathBuf {
    let out = dir.join(format!("model-{preset}.gguf"));
    let o = Command::new(env!("CARGO_BIN_EXE_reel-quantize"))
        .args([
            "--model",
            model_dir().to_str().unwrap(),
            "--type",
            preset,
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{preset}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// Logits at every prompt end + forced continuation position, and the greedy tokens.
fn logits(model: &Path, prompt: &str, forced: Option<&[u32]>) -> (Vec<f32>, Vec<u32>) {
    let m = Model::load(model).unwrap();
    let ids = m.text_prompt(prompt, None).unwrap();
    let mut e = Engine::new(
        m,
        EngineOptions {
            device: Device::Cpu,
            act: DType::F32,
            ctx: 256,
            ..Default::default()
        },
    )
    .unwrap();
    let pos: Vec<i32> = (0..3).flat_map(|_| 0..ids.len() as i32).collect();
    let mut l = e.text.forward(e.be.as_mut(), &ids, &pos, None).unwrap();
    let mut all = Vec::new();
    let mut toks = Vec::new();
    for step in 0..8 {
        all.extend_from_slice(&l);
        let greedy = reel::engine::sampling::argmax(&l).unwrap();
        let tok = forced.map(|f| f[step]).unwrap_or(greedy);
        toks.push(greedy);
        let p = positions::decode_positions(ids.len() + step, 0);
        l = e.text.forward(e.be.as_mut(), &[tok], &p, None).unwrap();
    }
    (all, toks)
}

#[test]
fn every_preset_runs_with_quality_report() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = ["Hello, who are you?", "Describe a video of a ball rolling."];
    let reference: Vec<(Vec<f32>, Vec<u32>)> = {
        let bf16 = quantize("bf16", dir.path());
        prompts.iter().map(|p| logits(&bf16, p, None)).collect()
    };
    // The bf16 file holds the checkpoint's own bf16 values: it must reproduce the directory.
    let (direct, _) = logits(&model_dir(), prompts[0], None);
    assert_eq!(
        direct, reference[0].0,
        "bf16 GGUF differs from the safetensors checkpoint"
    );

    println!(
        "preset   mean KL (nats)   max KL   top-1 agreement   (vs bf16, {} prompts x 8 positions)",
        prompts.len()
    );
    for (preset, max_mean_kl) in [("q8_0", 1e-3), ("q4_k_m", 1e-3)] {
        let file = quantize(preset, dir.path());
        let (mut r, mut c) = (Vec::new(), Vec::new());
        for (p, (rl, rt)) in prompts.iter().zip(&reference) {
            let (cl, _) = logits(&file, p, Some(rt));
            r.extend_from_slice(rl);
            c.extend_from_slice(&cl);
        }
        let s = compare_logits(&r, &c, 1024).unwrap();
        println!(
            "{preset:<8} {:>14.3e} {:>8.3e} {:>17.3}",
            s.mean_kl, s.max_kl, s.top1_agreement
        );
        assert!(s.mean_kl < max_mean_kl, "{preset}: mean KL {}", s.mean_kl);
        assert!(
            s.top1_agreement >= 0.9,
            "{preset}: top-1 agreement {}",
            s.top1_agreement
        );
    }
}
