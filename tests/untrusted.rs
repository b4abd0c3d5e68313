//! Hostile files through the `reel` binary: the crashes fuzzing found are one clear error
//! naming the file and the field, a non-zero exit, no panic and no abort.
//!
//! The binary runs under an address-space limit, so a regression to an unbounded allocation
//! fails here as an abort instead of exhausting the machine.

use reel::store::gguf::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/model")
}

/// `reel ARGS` with at most 8 GiB of address space.
fn reel_limited(args: &[&str]) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 8388608 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_reel"))
        .args(args)
        .output()
        .expect("run reel")
}

/// A clean failure: an exit code (not a signal), no panic, one line naming every culprit.
fn expect_clean_error(o: &Output, culprits: &[&str]) {
    use std::os::unix::process::ExitStatusExt;
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.signal(), None, "killed by a signal: {err}");
    assert!(!o.status.success(), "expected a failure: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert!(
        !err.contains("memory allocation"),
        "allocation failure: {err}"
    );
    assert_eq!(
        err.trim().lines().count(),
        1,
        "one error line expected: {err}"
    );
    for c in culprits {
        assert!(err.contains(c), "the error should name {c:?}: {err}");
    }
}

fn copy_model() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixture_model()).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    dir
}

fn run_args(model: &Path) -> Vec<String> {
    [
        "run",
        "--model",
        &model.display().to_string(),
        "--device",
        "cpu",
        "--temperature",
        "0",
        "--max-new-tokens",
        "2",
        "hi",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// config.json's `num_hidden_layers` of 2^40 used to abort `reel run` with "memory allocation
/// of 1161084278931456 bytes failed"; every size field is now checked against a maximum.
#[test]
fn huge_layer_count_is_a_config_error() {
    let dir = copy_model();
    let cfg = dir.path().join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let bad = text.replace(
        "\"num_hidden_layers\": 2,",
        "\"num_hidden_layers\": 1099511627776,",
    );
    assert_ne!(bad, text);
    std::fs::write(&cfg, bad).unwrap();
    let o = reel_limited(&strs(&run_args(dir.path())));
    expect_clean_error(&o, &["config.json", "num_hidden_layers", "1099511627776"]);
    let o = reel_limited(&["info", "--model", dir.path().to_str().unwrap()]);
    expect_clean_error(&o, &["config.json", "num_hidden_layers"]);

    // The same for the other sizes, in both tower configs.
    for (from, to, field) in [
        (
            "\"vocab_size\": 1024",
            "\"vocab_size\": 4294967296",
            "vocab_size",
        ),
        (
            "\"intermediate_size\": 128,",
            "\"intermediate_size\": 18446744073709551615,",
            "intermediate_size",
        ),
        (
            "\"depth\": 4,",
            "\"depth\": 1099511627776,",
            "vision_config.depth",
        ),
        (
            "\"hidden_size\": 32,",
            "\"hidden_size\": 1099511627776,",
            "vision_config.hidden_size",
        ),
    ] {
        let bad = text.replace(from, to);
        assert_ne!(bad, text, "{from}");
        std::fs::write(&cfg, bad).unwrap();
        let o = reel_limited(&strs(&run_args(dir.path())));
        expect_clean_error(&o, &["config.json", field]);
    }
}

/// A layer count within the limits but beyond the tensors present is an error naming the
/// first missing tensor, not an allocation by the count.
#[test]
fn layer_count_beyond_the_tensors_names_the_missing_tensor() {
    let dir = copy_model();
    let cfg = dir.path().join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("\"num_hidden_layers\": 2,", "\"num_hidden_layers\": 1024,"),
    )
    .unwrap();
    let o = reel_limited(&strs(&run_args(dir.path())));
    expect_clean_error(&o, &["model.layers.2.", "missing"]);
}

/// A reel GGUF file holding the fixture's config and the given tokenizer.json text.
fn gguf_with_tokenizer(dir: &Path, tokenizer: &str) -> PathBuf {
    let text = |n: &str| std::fs::read_to_string(fixture_model().join(n)).unwrap();
    let meta = vec![
        (KEY_ARCHITECTURE.to_string(), MetaValue::str("qwen2_5_vl")),
        (
            KEY_CONFIG_JSON.to_string(),
            MetaValue::str(text("config.json")),
        ),
        (KEY_TOKENIZER_JSON.to_string(), MetaValue::str(tokenizer)),
    ];
    let path = dir.join("model.gguf");
    let w = GgufWriter::create(&path, &meta, Vec::new()).unwrap();
    w.finish().unwrap();
    path
}

/// A GGUF file whose embedded tokenizer JSON is broken inside `decoder` used to make
/// `reel info` and `reel run` panic inside the tokenizers crate ("expected `,` or `}`").
#[test]
fn corrupt_embedded_tokenizer_is_an_error() {
    let tok = std::fs::read_to_string(fixture_model().join("tokenizer.json")).unwrap();
    // Drop the comma after the decoder's `"type": "ByteLevel"`.
    let decoder_at = tok.find("\"decoder\"").unwrap();
    let (head, tail) = tok.split_at(decoder_at);
    let broken = format!(
        "{head}{}",
        tail.replacen("\"ByteLevel\",", "\"ByteLevel\"", 1)
    );
    assert_ne!(broken, tok);
    // The crate itself still panics on it: the fence is what turns that into an error.
    let inner = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(broken.as_bytes()));
    assert!(inner.is_err(), "tokenizers no longer panics here");

    let dir = tempfile::tempdir().unwrap();
    let gguf = gguf_with_tokenizer(dir.path(), &broken);
    let g = gguf.display().to_string();
    for args in [
        vec!["info", "--model", &g],
        vec![
            "run",
            "--model",
            &g,
            "--device",
            "cpu",
            "--max-new-tokens",
            "1",
            "hi",
        ],
    ] {
        let o = reel_limited(&args);
        expect_clean_error(&o, &["model.gguf", "tokenizer.json", "expected `,` or `}`"]);
    }

    // The library call names the origin too.
    let e = reel::prompt::Tokenizer::from_bytes(broken.as_bytes(), "x/tokenizer.json")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("x/tokenizer.json") && e.contains("malformed JSON"),
        "{e}"
    );
}
