//! The fuzz corpus and crashers in CI: every committed input under tests/fuzz/<target>/ goes
//! through the same entry points the fuzz targets call (`reel::fuzz`), then a bounded
//! structure-aware mutation loop runs a few thousand fresh cases per target. A panic fails
//! the test with the input saved; an abort or a hang fails the run.
//!
//! `cargo test --test fuzz_replay make_seeds -- --ignored` regenerates the seed inputs that are
//! built rather than copied from tests/fixtures.

use reel::fuzz::{self, Context, Rng, Target};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture_model() -> PathBuf {
    root().join("tests/fixtures/model")
}

/// Mutated cases per target; `REEL_FUZZ_CASES` overrides (e.g. for a longer local soak).
fn cases_per_target() -> usize {
    std::env::var("REEL_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500)
}

/// The committed inputs of a target: `corpus/` (seeds and what the fuzzer kept) and
/// `crashers/` (inputs that once crashed), sorted by path.
fn committed(t: Target) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for sub in ["corpus", "crashers"] {
        let dir = root().join("tests/fuzz").join(t.name()).join(sub);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_file() {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Runs one input; a panic is returned as its message (the input is written where the
/// message says, to be added to crashers/).
fn check(cx: &Context, t: Target, input: &[u8], what: &str) -> Result<(), String> {
    match panic::catch_unwind(AssertUnwindSafe(|| fuzz::run(t, cx, input))) {
        Ok(_) => Ok(()),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let dir = std::env::temp_dir().join("reel-fuzz-failures");
            std::fs::create_dir_all(&dir).unwrap();
            let hash = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
                (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
            });
            let saved = dir.join(format!("{}-{hash:016x}", t.name()));
            std::fs::write(&saved, input).unwrap();
            Err(format!(
                "{} panicked on {what}: {msg}\n  input saved to {}",
                t.name(),
                saved.display()
            ))
        }
    }
}

fn replay(t: Target) {
    let cx = Context::new(&fixture_model()).unwrap();
    let inputs = committed(t);
    assert!(
        !inputs.is_empty(),
        "no committed corpus for {} under tests/fuzz/{}/",
        t.name(),
        t.name()
    );
    let mut failures = Vec::new();
    for (path, bytes) in &inputs {
        if let Err(e) = check(&cx, t, bytes, &path.display().to_string()) {
            failures.push(e);
        }
    }
    // Mutation loop: seeded by the target so every run sees the same cases.
    let mut rng = Rng::new(
        t.name()
            .bytes()
            .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)),
    );
    let n = cases_per_target();
    for case in 0..n {
        let base = &inputs[rng.below(inputs.len())].1;
        let other = &inputs[rng.below(inputs.len())].1;
        let mut data = base.clone();
        for _ in 0..1 + rng.below(4) {
            data = fuzz::mutate(t, &data, other, &mut rng);
        }
        if let Err(e) = check(&cx, t, &data, &format!("mutated case {case}")) {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} inputs panicked:\n{}",
        failures.len(),
        inputs.len() + n,
        failures.join("\n")
    );
}

#[test]
fn replay_safetensors() {
    replay(Target::Safetensors);
}

#[test]
fn replay_safetensors_index() {
    replay(Target::SafetensorsIndex);
}

#[test]
fn replay_config() {
    replay(Target::Config);
}

#[test]
fn replay_tokenizer() {
    replay(Target::Tokenizer);
}

#[test]
fn replay_template() {
    replay(Target::Template);
}

#[test]
fn replay_messages() {
    replay(Target::Messages);
}

#[test]
fn replay_image() {
    replay(Target::Image);
}

#[test]
fn replay_video() {
    replay(Target::Video);
}

#[test]
fn replay_gguf() {
    replay(Target::Gguf);
}

#[test]
fn replay_eval_data() {
    replay(Target::EvalData);
}

/// Every target has a committed corpus, and every folder under tests/fuzz is a target.
#[test]
fn corpus_folders_match_the_targets() {
    for t in Target::ALL {
        assert!(
            root()
                .join("tests/fuzz")
                .join(t.name())
                .join("corpus")
                .is_dir(),
            "tests/fuzz/{}/corpus is missing",
            t.name()
        );
    }
    for e in std::fs::read_dir(root().join("tests/fuzz")).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            assert!(Target::from_name(&name).is_some(), "unknown target {name}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Seeds that are built rather than copied.

fn write_seed(t: Target, name: &str, bytes: &[u8]) {
    let dir = root().join("tests/fuzz").join(t.name()).join("corpus");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn copy_seed(t: Target, from: &Path, name: &str) {
    write_seed(t, name, &std::fs::read(root().join(from)).unwrap());
}

/// A tiny safetensors file: header length, JSON header (optionally with a 1-byte pad so the
/// first tensor starts unaligned), data.
fn tiny_safetensors(unaligned: bool) -> Vec<u8> {
    let pad = usize::from(unaligned);
    let header = format!(
        r#"{{"__metadata__":{{"format":"pt"}},"a":{{"dtype":"F32","shape":[2,3],"data_offsets":[{},{}]}},"b":{{"dtype":"BF16","shape":[4],"data_offsets":[{},{}]}},"c":{{"dtype":"U8","shape":[5],"data_offsets":[{},{}]}},"d":{{"dtype":"F64","shape":[1],"data_offsets":[{},{}]}}}}"#,
        pad,
        pad + 24,
        pad + 24,
        pad + 32,
        pad + 32,
        pad + 37,
        pad + 37,
        pad + 45
    );
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend((0..pad + 45).map(|i| i as u8));
    out
}

/// A small reel GGUF model file: the fixture's config, tokenizer and template in the
/// metadata, and two of its tensors.
fn tiny_gguf(dir: &Path) -> Vec<u8> {
    use reel::store::gguf::*;
    use reel::store::WeightStore;
    let model = fixture_model();
    let text = |n: &str| std::fs::read_to_string(model.join(n)).unwrap();
    let template: serde_json::Value = serde_json::from_str(&text("chat_template.json")).unwrap();
    let meta = vec![
        (KEY_ARCHITECTURE.to_string(), MetaValue::str("qwen2_5_vl")),
        (
            KEY_CONFIG_JSON.to_string(),
            MetaValue::str(text("config.json")),
        ),
        (
            KEY_TOKENIZER_JSON.to_string(),
            MetaValue::str(text("tokenizer.json")),
        ),
        (
            KEY_CHAT_TEMPLATE.to_string(),
            MetaValue::str(template["chat_template"].as_str().unwrap()),
        ),
        (
            KEY_GENERATION_CONFIG_JSON.to_string(),
            MetaValue::str(text("generation_config.json")),
        ),
        ("reel.test.array".to_string(), MetaValue::u32s([1, 2, 3, 4])),
    ];
    let store = reel::store::SafetensorsStore::open_dir(&model).unwrap();
    let names = ["model.norm.weight", "model.layers.0.input_layernorm.weight"];
    let plan: Vec<TensorPlan> = names
        .iter()
        .map(|n| {
            let t = store.get(n).unwrap();
            TensorPlan::new(*n, t.dtype, &t.shape)
        })
        .collect();
    let path = dir.join("tiny.gguf");
    let mut w = GgufWriter::create(&path, &meta, plan).unwrap();
    for n in names {
        let t = store.get(n).unwrap();
        w.write_tensor(n, t.bytes.as_slice()).unwrap();
    }
    w.finish().unwrap();
    std::fs::read(&path).unwrap()
}

#[test]
#[ignore = "regenerates tests/fuzz/*/corpus seeds"]
fn make_seeds() {
    let tmp = tempfile::tempdir().unwrap();
    write_seed(
        Target::Safetensors,
        "tiny.safetensors",
        &tiny_safetensors(false),
    );
    write_seed(
        Target::Safetensors,
        "tiny_unaligned.safetensors",
        &tiny_safetensors(true),
    );
    copy_seed(
        Target::SafetensorsIndex,
        Path::new("tests/fixtures/model/model.safetensors.index.json"),
        "fixture_index.json",
    );
    for f in [
        "config.json",
        "generation_config.json",
        "preprocessor_config.json",
    ] {
        copy_seed(
            Target::Config,
            &Path::new("tests/fixtures/model").join(f),
            f,
        );
    }
    // The >= 4.52 layout: text fields under text_config.
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture_model().join("config.json")).unwrap())
            .unwrap();
    let top = v.as_object_mut().unwrap();
    let mut text = serde_json::Map::new();
    for k in [
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "intermediate_size",
        "vocab_size",
        "rope_scaling",
    ] {
        text.insert(k.into(), top.remove(k).unwrap());
    }
    top.insert("text_config".into(), text.into());
    write_seed(
        Target::Config,
        "config_text_config.json",
        serde_json::to_string_pretty(&v).unwrap().as_bytes(),
    );
    copy_seed(
        Target::Tokenizer,
        Path::new("tests/fixtures/model/tokenizer.json"),
        "fixture_tokenizer.json",
    );
    copy_seed(
        Target::Template,
        Path::new("tests/fixtures/model/chat_template.json"),
        "chat_template.json",
    );
    write_seed(
        Target::Template,
        "stock.jinja",
        reel::prompt::template::STOCK_CHAT_TEMPLATE.as_bytes(),
    );
    write_seed(
        Target::Messages,
        "mixed.json",
        br#"[{"role": "system", "content": "Be brief."},
 {"role": "user", "content": [
  {"type": "image", "image": "a.png", "min_pixels": 3136, "max_pixels": 200704},
  {"type": "video", "video": "file://b.mp4", "fps": 2.0, "max_frames": 16, "total_pixels": 90316800.0},
  {"type": "text", "text": "What changes?"}]},
 {"role": "assistant", "content": "<think>x</think><answer>A</answer>"},
 {"role": "user", "content": [{"image_url": {"url": "c.jpg"}, "resized_height": 56, "resized_width": 84}, {"text": "And here?"}]}]"#,
    );
    write_seed(
        Target::Messages,
        "object.json",
        br#"{"messages": [{"role": "user", "content": [{"video": "v.mp4", "nframes": 4, "min_pixels": 3136}, {"type": "text", "text": "Count."}]}]}"#,
    );
    for f in [
        "png_1bit.png",
        "png_L2bit.png",
        "jpeg_odd_17x9_420.jpg",
        "bad_jpeg_header_only.jpg",
        "bmp_1bit.bmp",
        "webp_lossy_alpha.webp",
    ] {
        copy_seed(
            Target::Image,
            &Path::new("tests/fixtures/images/inputs").join(f),
            f,
        );
    }
    // Tiny images of the formats and modes the fixtures only have large files of.
    let mut buf = std::io::Cursor::new(Vec::new());
    image::RgbaImage::from_fn(5, 3, |x, y| {
        image::Rgba([x as u8 * 40, y as u8 * 80, 7, 128])
    })
    .write_to(&mut buf, image::ImageFormat::Png)
    .unwrap();
    write_seed(Target::Image, "rgba_5x3.png", buf.get_ref());
    let mut buf = std::io::Cursor::new(Vec::new());
    image::RgbaImage::from_fn(6, 4, |x, y| {
        let v = (x * 30 + y) as u8;
        image::Rgba([v, v, v, 255])
    })
    .write_to(&mut buf, image::ImageFormat::Gif)
    .unwrap();
    write_seed(Target::Image, "grey_6x4.gif", buf.get_ref());
    for f in ["clip_other.mp4", "broken.mp4"] {
        copy_seed(
            Target::Video,
            &Path::new("tests/fixtures/eval/media").join(f),
            f,
        );
    }
    write_seed(Target::Gguf, "tiny.gguf", &tiny_gguf(tmp.path()));
    copy_seed(
        Target::EvalData,
        Path::new("tests/fixtures/eval/eval_fixture.json"),
        "eval_fixture.json",
    );
    write_seed(
        Target::EvalData,
        "lines.jsonl",
        br#"{"problem_id": 1, "problem": "Q?", "problem_type": "multiple choice", "options": ["A. x", "B. y"], "solution": "<answer>A</answer>", "data_type": "video", "path": "./v.mp4", "data_source": "s"}
{"problem_id": "v2", "problem": "N?", "problem_type": "numerical", "options": [], "solution": "<answer>3</answer>", "data_type": "image", "path": "i.png", "extra": {"k": [1, 2]}}
"#,
    );
}
