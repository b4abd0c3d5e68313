//! `reel chat` with scripted stdin on the fixture model: each answer equals, token for token, a
//! fresh greedy `reel run` of the whole conversation so far, although follow-up questions are
//! decoded from the cached KV of the conversation (the vision tower does not run again).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn model() -> String {
    root().join("tests/fixtures/model").display().to_string()
}

fn media(name: &str) -> String {
    root()
        .join("tests/fixtures/eval/media")
        .join(name)
        .display()
        .to_string()
}

const GREEDY: [&str; 6] = [
    "--device",
    "cpu",
    "--temperature",
    "0",
    "--max-new-tokens",
    "8",
];

fn chat(args: &[&str], stdin: &str) -> Output {
    let model = model();
    let mut all = vec!["chat", "--model", &model];
    all.extend_from_slice(&GREEDY);
    all.extend_from_slice(args);
    let mut child = Command::new(env!("CARGO_BIN_EXE_reel"))
        .args(&all)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run reel chat");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn tokens(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect()
}

/// The tokens a fresh `reel run` generates for the first `n` messages of a transcript.
fn fresh_run(dir: &Path, transcript: &Value, n: usize) -> Vec<u64> {
    let msgs = &transcript["messages"].as_array().unwrap()[..n];
    let p = dir.join(format!("conv-{n}.json"));
    std::fs::write(&p, serde_json::to_string(msgs).unwrap()).unwrap();
    let model = model();
    let mut args = vec!["run", "--model", &model, "--json", "--messages"];
    args.push(p.to_str().unwrap());
    args.extend_from_slice(&GREEDY);
    let o = Command::new(env!("CARGO_BIN_EXE_reel"))
        .args(&args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    tokens(&v["generated_tokens"])
}

#[test]
fn follow_ups_decode_from_the_cache_and_match_a_fresh_run() {
    let dir = tempfile::tempdir().unwrap();
    let (t1, t2) = (dir.path().join("t1.json"), dir.path().join("t2.json"));
    let script = format!(
        "What is in the video?\n/stats\nAnd what colour is it?\n/stats\n/image {}\nDescribe the picture too.\n/save {}\n/reset\nWhat is in the video?\n/save {}\n",
        media("scene.png"),
        t1.display(),
        t2.display()
    );
    let o = chat(&["--video", &media("clip_shared.mp4")], &script);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains("error"), "{err}");
    // /stats after each of the first two answers.
    let stats: Vec<&str> = err.lines().filter(|l| l.starts_with("prompt ")).collect();
    assert_eq!(stats.len(), 2, "{err}");
    assert!(stats[0].contains("vision tower ran"), "{}", stats[0]);
    assert!(stats[1].contains("vision tower not run"), "{}", stats[1]);

    let t = read_json(&t1);
    let msgs = t["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 6);
    let answers = t["answers"].as_array().unwrap();
    assert_eq!(answers.len(), 3);
    // clip_shared.mp4: 4 frames of 392x280, grid 2x20x28, 280 merged tokens.
    let video_tokens = 280;
    // The first question prefills everything and runs the vision tower.
    assert_eq!(answers[0]["vision_run"], true);
    assert_eq!(answers[0]["reused_tokens"], 0);
    // The follow-up reuses the cached video and first turn.
    let a1 = &answers[1];
    assert_eq!(a1["vision_run"], false);
    let reused = a1["reused_tokens"].as_u64().unwrap();
    let prompt = a1["prompt_tokens"].as_u64().unwrap();
    assert!(reused > video_tokens, "{a1}");
    assert_eq!(a1["prefilled_tokens"].as_u64().unwrap(), prompt - reused);
    assert!(prompt > answers[0]["prompt_tokens"].as_u64().unwrap() + 8);
    // A new image runs the vision tower for itself; the conversation before it (the video
    // included) still comes from the prefix cache.
    assert_eq!(answers[2]["vision_run"], true);
    assert!(answers[2]["reused_tokens"].as_u64().unwrap() > video_tokens);

    // Each answer equals a fresh run of the conversation up to its question.
    for (k, a) in answers.iter().enumerate() {
        assert_eq!(
            tokens(&a["tokens"]),
            fresh_run(dir.path(), &t, 2 * k + 1),
            "answer {k}"
        );
    }
    // The stdout holds the three answers, then the fourth after /reset.
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.lines().count(), 4, "{out}");

    // /reset keeps the media of the command line and starts afresh.
    let t2 = read_json(&t2);
    let a = &t2["answers"][0];
    assert_eq!(t2["messages"].as_array().unwrap().len(), 2);
    // The engine's prefix cache outlives the conversation: the same first question is served
    // from it, with the same tokens.
    assert_eq!(a["vision_run"], false);
    assert!(a["reused_tokens"].as_u64().unwrap() > video_tokens);
    assert_eq!(a["tokens"], answers[0]["tokens"]);
    assert_eq!(t2["messages"][0], msgs[0]);
}

#[test]
fn bad_input_is_reported_and_the_loop_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t.json");
    let script = format!(
        "/frobnicate\n/image {}\n/video\nHello?\n/save {}\n",
        dir.path().join("missing.png").display(),
        t.display()
    );
    let o = chat(&[], &script);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("unknown command /frobnicate"), "{err}");
    assert!(err.contains("missing.png"), "{err}");
    assert!(err.contains("/video needs a file"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let v = read_json(&t);
    assert_eq!(v["messages"].as_array().unwrap().len(), 2);
    assert_eq!(v["messages"][0]["content"][0]["text"], "Hello?");

    // A missing file on the command line stops before the model loads.
    let o = chat(&["--video", "/nonexistent/v.mp4"], "");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("--video") && err.contains("/nonexistent/v.mp4"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
