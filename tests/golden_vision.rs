//! Images and videos end to end through the CLI against transformers 4.49 + qwen-vl-utils
//! goldens: prompt ids (pads expanded per grid), last-position logits and 8 greedy tokens for
//! every vision case of tests/fixtures/cases.json, run with `--messages`.

mod common;

use common::*;
use std::process::Command;

/// Rewrites media paths to absolute ones so the messages file can live anywhere.
fn absolute_messages(messages: &serde_json::Value) -> serde_json::Value {
    let mut m = messages.clone();
    for msg in m.as_array_mut().unwrap() {
        if let Some(items) = msg["content"].as_array_mut() {
            for it in items {
                for key in ["image", "video"] {
                    if let Some(p) = it.get(key).and_then(|v| v.as_str()) {
                        let abs = fixtures().join(p);
                        it[key] = serde_json::Value::String(abs.to_string_lossy().into_owned());
                    }
                }
            }
        }
    }
    m
}

/// The backend the golden tests run on: `REEL_TEST_DEVICE=cuda` selects the GPU.
fn device() -> &'static str {
    match std::env::var("REEL_TEST_DEVICE").as_deref() {
        Ok("cuda") => "cuda",
        _ => "cpu",
    }
}

fn run_case(name: &str) {
    let c = case(name);
    let g = load_golden(c["golden"].as_str().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let msgs = dir.path().join("messages.json");
    std::fs::write(
        &msgs,
        serde_json::to_string(&absolute_messages(&c["messages"])).unwrap(),
    )
    .unwrap();
    let logits = dir.path().join("logits.safetensors");
    let o = Command::new(env!("CARGO_BIN_EXE_reel"))
        .args([
            "run",
            "--model",
            model_dir().to_str().unwrap(),
            "--device",
            device(),
            "--dtype",
            "f32",
        ])
        .args(["--temperature", "0", "--max-new-tokens", "8", "--json"])
        .args([
            "--messages",
            msgs.to_str().unwrap(),
            "--logits-out",
            logits.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{name}: reel failed: {err}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ids = |k: &str| -> Vec<i64> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect()
    };
    assert_eq!(
        ids("prompt_tokens"),
        g["in.input_ids"].i64(),
        "{name}: prompt ids"
    );

    let bytes = std::fs::read(&logits).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let last: Vec<f32> = st
        .tensor("logits_last")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let (d, m) = max_diff(&last, &g["logits_last"].f32());
    println!("{name}: logits_last max |diff| {d:.2e} (max |ref| {m:.2})");
    assert!(d <= 1e-4 * m.max(1.0), "{name}: logits_last max diff {d}");
    assert_eq!(
        ids("generated_tokens"),
        g["greedy.tokens"].i64(),
        "{name}: greedy tokens"
    );
}

#[test]
fn image_small() {
    run_case("image_small");
}

#[test]
fn image_medium() {
    run_case("image_medium");
}

#[test]
fn image_wide() {
    run_case("image_wide");
}

#[test]
fn two_images() {
    run_case("two_images");
}

#[test]
fn video() {
    run_case("video");
}

#[test]
fn video_odd_fps() {
    run_case("video_odd_fps");
}

#[test]
fn image_video() {
    run_case("image_video");
}

#[test]
fn video_r1_prompt() {
    run_case("video_r1_prompt");
}

/// The short form: `--video` + `--template video-r1` flags build the same prompt as the
/// messages file of the Video-R1 evaluation case, and `think`/`answer` are fields of the JSON.
#[test]
fn video_r1_flags_match_messages() {
    let g = load_golden("golden/video_r1_prompt.safetensors");
    let video = fixtures().join("inputs/video_24f_6fps_60x80.mp4");
    let o = Command::new(env!("CARGO_BIN_EXE_reel"))
        .args([
            "run",
            "--model",
            model_dir().to_str().unwrap(),
            "--device",
            device(),
            "--dtype",
            "f32",
        ])
        .args(["--temperature", "0", "--max-new-tokens", "8", "--json"])
        .args([
            "--video",
            video.to_str().unwrap(),
            "--fps",
            "2",
            "--min-pixels",
            "3136",
            "--max-pixels",
            "12544",
        ])
        .args([
            "--template",
            "video-r1",
            "--problem-type",
            "multiple-choice",
        ])
        .args([
            "--options",
            "A. a ball",
            "--options",
            "B. a car",
            "--options",
            "C. nothing",
            "--options",
            "D. a cat",
        ])
        .arg("What is moving in the video?")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ids: Vec<i64> = v["prompt_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect();
    assert_eq!(ids, g["in.input_ids"].i64());
    assert_eq!(v["vision"][0]["frames_sampled"], 8);
    assert_eq!(v["vision"][0]["grid_thw"], serde_json::json!([4, 4, 6]));
    assert!(v.get("think").is_some() && v.get("answer").is_some());
}
