//! GGUF v3: writer/reader round trip, validation errors, and a cross-check against the `gguf`
//! Python package (reader, dequantizers and the quantizers it implements).

mod common;

use reel::model::qwen2_5_vl::GgufModelConfig;
use reel::quant::{self, row_bytes};
use reel::quantize::preset::convert_rows;
use reel::store::gguf::{self, GgufModel, GgufStore, GgufWriter, MetaValue, TensorPlan, ValueType};
use reel::DType;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
    }
    fn gauss(&mut self, scale: f32) -> f32 {
        let mut s = -2.0f32;
        for _ in 0..4 {
            s += (self.next() >> 8) as f32 / 16_777_216.0;
        }
        s * scale
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.gauss(scale)).collect()
    }
}

fn metadata() -> Vec<(String, MetaValue)> {
    vec![
        (gguf::KEY_ARCHITECTURE.into(), MetaValue::str("qwen2vl")),
        (
            gguf::KEY_CONFIG_JSON.into(),
            MetaValue::str(r#"{"hidden_size": 64, "note": "ünïcode ✓"}"#),
        ),
        (
            gguf::KEY_TOKENIZER_JSON.into(),
            MetaValue::str(r#"{"model": {"type": "BPE"}}"#),
        ),
        (
            gguf::KEY_CHAT_TEMPLATE.into(),
            MetaValue::str("{% for m in messages %}{{ m.content }}{% endfor %}"),
        ),
        (
            gguf::KEY_GENERATION_CONFIG_JSON.into(),
            MetaValue::str(r#"{"temperature": 0.1}"#),
        ),
        ("t.u8".into(), MetaValue::U8(200)),
        ("t.i8".into(), MetaValue::I8(-100)),
        ("t.u16".into(), MetaValue::U16(60000)),
        ("t.i16".into(), MetaValue::I16(-30000)),
        ("t.u32".into(), MetaValue::U32(4_000_000_000)),
        ("t.i32".into(), MetaValue::I32(-2_000_000_000)),
        ("t.f32".into(), MetaValue::F32(1.5e-6)),
        ("t.bool".into(), MetaValue::Bool(true)),
        ("t.u64".into(), MetaValue::U64(u64::MAX - 1)),
        ("t.i64".into(), MetaValue::I64(i64::MIN + 1)),
        ("t.f64".into(), MetaValue::F64(std::f64::consts::PI)),
        (
            "t.strings".into(),
            MetaValue::strings(["a", "", "<|im_start|>", "ünï"]),
        ),
        ("t.ints".into(), MetaValue::i32s([1, -2, 3])),
        ("t.uints".into(), MetaValue::u32s([7, 8])),
        ("t.floats".into(), MetaValue::f32s([0.5, -1.25])),
        (
            "t.empty".into(),
            MetaValue::Array {
                item_type: ValueType::U64,
                items: vec![],
            },
        ),
        (
            "t.nested".into(),
            MetaValue::Array {
                item_type: ValueType::Array,
                items: vec![MetaValue::i32s([1, 2]), MetaValue::i32s([3])],
            },
        ),
    ]
}

/// Tensors of every type, from a deterministic f32 source. Returns (plan, f32 source, bytes).
fn tensors() -> Vec<(TensorPlan, Vec<f32>, Vec<u8>)> {
    let mut r = Rng(99);
    let specs: Vec<(&str, DType, Vec<usize>)> = vec![
        (
            "model.layers.0.self_attn.q_proj.weight",
            DType::Q8_0,
            vec![8, 96],
        ),
        (
            "model.layers.0.mlp.down_proj.weight",
            DType::Q6K,
            vec![6, 512],
        ),
        (
            "model.layers.0.mlp.up_proj.weight",
            DType::Q4K,
            vec![5, 768],
        ),
        ("model.embed_tokens.weight", DType::BF16, vec![7, 40]),
        (
            "model.layers.0.self_attn.k_proj.weight",
            DType::F16,
            vec![3, 2, 20],
        ),
        ("model.norm.weight", DType::F32, vec![33]),
        (
            "visual.patch_embed.proj.weight",
            DType::BF16,
            vec![4, 3, 2, 2, 2],
        ),
    ];
    specs
        .into_iter()
        .map(|(name, dtype, shape)| {
            let n: usize = shape.iter().product();
            let mut x = r.vec(n, 0.05);
            if name.contains("down_proj") {
                // Some awkward rows: a zero super-block and one all-positive.
                x[..256].fill(0.0);
                for v in &mut x[512..768] {
                    *v = v.abs() + 0.01;
                }
            }
            let k = *shape.last().unwrap();
            let mut bytes = vec![0u8; n / k * row_bytes(dtype, k).unwrap()];
            let src: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
            convert_rows(DType::F32, &src, dtype, k, &mut bytes).unwrap();
            (TensorPlan::new(name, dtype, &shape), x, bytes)
        })
        .collect()
}

fn write_file(path: &Path) -> Vec<(TensorPlan, Vec<f32>, Vec<u8>)> {
    let ts = tensors();
    let mut w =
        GgufWriter::create(path, &metadata(), ts.iter().map(|t| t.0.clone()).collect()).unwrap();
    for (p, _, b) in &ts {
        // Write the biggest tensor in two parts to exercise the chunked path.
        if b.len() > 1000 {
            assert!(!w.write_tensor_part(&p.name, &b[..1000]).unwrap());
            assert!(w.write_tensor_part(&p.name, &b[1000..]).unwrap());
        } else {
            w.write_tensor(&p.name, b).unwrap();
        }
    }
    w.finish().unwrap();
    ts
}

#[test]
fn round_trip_metadata_and_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let ts = write_file(&path);
    let store = GgufStore::open(&path).unwrap();
    assert_eq!(store.version(), 3);
    assert_eq!(store.alignment(), 32);
    assert_eq!(store.data_offset() % 32, 0);
    // The writer adds general.alignment first, then the caller's keys in order.
    let md = store.metadata();
    assert_eq!(md[0], (gguf::KEY_ALIGNMENT.to_string(), MetaValue::U32(32)));
    for (k, v) in metadata() {
        assert_eq!(store.get(&k), Some(&v), "{k}");
    }
    assert_eq!(store.tensors().len(), ts.len());
    for (p, _, b) in &ts {
        let info = store.tensor_info(&p.name).unwrap();
        assert_eq!(info.shape, p.shape, "{}", p.name);
        assert_eq!(info.dtype, p.dtype);
        assert_eq!(info.offset % 32, 0);
        assert_eq!(
            store.tensor_bytes(&p.name).unwrap().as_slice(),
            &b[..],
            "{}",
            p.name
        );
    }
    let e = store.tensor_bytes("nope").unwrap_err().to_string();
    assert!(e.contains("m.gguf") && e.contains("nope"), "{e}");

    let m = GgufModel::open(&path).unwrap();
    assert_eq!(m.architecture(), "qwen2vl");
    assert!(m.config_json().contains("ünïcode ✓"));
    assert_eq!(m.tokenizer_json(), r#"{"model": {"type": "BPE"}}"#);
    assert_eq!(
        m.chat_template().unwrap(),
        "{% for m in messages %}{{ m.content }}{% endfor %}"
    );
    assert_eq!(m.generation_config_json(), Some(r#"{"temperature": 0.1}"#));
    assert_eq!(m.preprocessor_config_json(), None);
}

fn expect_err(bytes: &[u8], name: &str, needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    let e = GgufStore::open(&path).expect_err(needle).to_string();
    assert!(
        e.contains(name) && e.contains(needle),
        "expected `{needle}` naming {name}, got: {e}"
    );
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|w| w == needle).unwrap()
}

#[test]
fn malformed_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("good.gguf");
    write_file(&path);
    let good = std::fs::read(&path).unwrap();
    let store = GgufStore::open(&path).unwrap();
    let data_start = store.data_offset();

    let mut b = good.clone();
    b[..4].copy_from_slice(b"GGML");
    expect_err(&b, "magic.gguf", "bad magic");
    let mut b = good.clone();
    b[4..8].copy_from_slice(&2u32.to_le_bytes());
    expect_err(&b, "v2.gguf", "unsupported version 2");
    expect_err(&good[..10], "short.gguf", "truncated header");
    expect_err(&[], "empty.gguf", "truncated header");
    // Cut inside the metadata (the config JSON string).
    let cut = find(&good, b"hidden_size");
    expect_err(
        &good[..cut],
        "meta.gguf",
        "truncated metadata `reel.config_json`",
    );
    // Cut inside the tensor infos.
    let cut = find(&good, b"model.norm.weight") + 20;
    expect_err(
        &good[..cut],
        "infos.gguf",
        "truncated tensor info `model.norm.weight`",
    );
    // Cut inside the data section.
    expect_err(
        &good[..good.len() - 40],
        "data.gguf",
        "truncated tensor data",
    );
    assert!(data_start < good.len() - 40);

    // The tensor info of `model.norm.weight`: name, n_dims u32, one dim u64, type u32, offset u64.
    let name = b"model.norm.weight";
    let info = find(&good, name) + name.len();
    let (ty_at, off_at) = (info + 4 + 8, info + 4 + 8 + 4);
    let mut b = good.clone();
    b[ty_at..ty_at + 4].copy_from_slice(&2u32.to_le_bytes());
    expect_err(&b, "type.gguf", "ggml type 2 (Q4_0)");
    let mut b = good.clone();
    b[ty_at..ty_at + 4].copy_from_slice(&77u32.to_le_bytes());
    expect_err(&b, "type77.gguf", "ggml type 77");
    let mut b = good.clone();
    let off = u64::from_le_bytes(b[off_at..off_at + 8].try_into().unwrap());
    b[off_at..off_at + 8].copy_from_slice(&(off + 4).to_le_bytes());
    expect_err(&b, "misaligned.gguf", "not a multiple of the alignment 32");
    // Rename `model.norm.weight` to the name of another tensor of the same length.
    let mut b = good.clone();
    let other = b"model.layers.0.self_attn.q_proj.weight";
    let mut renamed = good[..find(&good, name) - 8].to_vec();
    renamed.extend_from_slice(&(other.len() as u64).to_le_bytes());
    renamed.extend_from_slice(other);
    renamed.extend_from_slice(&good[info..]);
    // The parse stops at the duplicate, before any offset is used.
    b.clear();
    b.extend_from_slice(&renamed);
    expect_err(
        &b,
        "dup.gguf",
        "duplicate tensor name `model.layers.0.self_attn.q_proj.weight`",
    );
    // A wrong type for general.alignment.
    let mut b = good.clone();
    let at = find(&good, b"general.alignment") + "general.alignment".len();
    b[at..at + 4].copy_from_slice(&(ValueType::I32 as u32).to_le_bytes());
    expect_err(&b, "align.gguf", "general.alignment");
    // An unknown metadata value type.
    let mut b = good.clone();
    b[at..at + 4].copy_from_slice(&99u32.to_le_bytes());
    expect_err(&b, "vtype.gguf", "unknown value type 99");
    // A corrupt huge string length must not allocate, just fail.
    let mut b = good.clone();
    let at = find(&good, b"reel.config_json") - 8;
    b[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    expect_err(&b, "huge.gguf", "truncated");
}

#[test]
fn model_requires_its_texts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notext.gguf");
    let meta = vec![(
        gguf::KEY_ARCHITECTURE.to_string(),
        MetaValue::str("qwen2vl"),
    )];
    GgufWriter::create(&path, &meta, vec![])
        .unwrap()
        .finish()
        .unwrap();
    assert!(GgufStore::open(&path).is_ok());
    let e = GgufModel::open(&path).unwrap_err().to_string();
    assert!(
        e.contains("notext.gguf") && e.contains("missing required metadata key `reel.config_json`"),
        "{e}"
    );
    // Present but not a string.
    let path = dir.path().join("badtype.gguf");
    let meta = vec![
        (
            gguf::KEY_ARCHITECTURE.to_string(),
            MetaValue::str("qwen2vl"),
        ),
        (gguf::KEY_CONFIG_JSON.to_string(), MetaValue::U32(1)),
        (gguf::KEY_TOKENIZER_JSON.to_string(), MetaValue::str("{}")),
    ];
    GgufWriter::create(&path, &meta, vec![])
        .unwrap()
        .finish()
        .unwrap();
    let e = GgufModel::open(&path).unwrap_err().to_string();
    assert!(e.contains("`reel.config_json` should be a string"), "{e}");
    // A missing file names itself.
    let e = GgufModel::open(dir.path().join("absent.gguf"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("absent.gguf"), "{e}");
}

#[test]
fn writer_refuses_bad_plans_and_data() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("w.gguf");
    let t = |n: &str, d: DType, s: &[usize]| TensorPlan::new(n, d, s);
    let e = GgufWriter::create(
        &p,
        &[],
        vec![t("a", DType::F32, &[2]), t("a", DType::F32, &[2])],
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("duplicate tensor name `a`"));
    let e = GgufWriter::create(&p, &[], vec![t("q", DType::Q4K, &[2, 100])])
        .err()
        .unwrap();
    assert!(e.to_string().contains("row length 100"), "{e}");
    let e = GgufWriter::create(&p, &[], vec![t("u", DType::U8, &[2])])
        .err()
        .unwrap();
    assert!(e.to_string().contains("cannot store u8"), "{e}");
    let bad_align = vec![(gguf::KEY_ALIGNMENT.to_string(), MetaValue::U32(24))];
    assert!(GgufWriter::create(&p, &bad_align, vec![]).is_err());
    let dup = vec![
        ("k".to_string(), MetaValue::U8(1)),
        ("k".to_string(), MetaValue::U8(2)),
    ];
    assert!(GgufWriter::create(&p, &dup, vec![])
        .err()
        .unwrap()
        .to_string()
        .contains("duplicate metadata key `k`"));
    let mixed = vec![(
        "k".to_string(),
        MetaValue::Array {
            item_type: ValueType::U8,
            items: vec![MetaValue::I8(1)],
        },
    )];
    assert!(GgufWriter::create(&p, &mixed, vec![]).is_err());

    let mut w = GgufWriter::create(
        &p,
        &[],
        vec![t("a", DType::F32, &[2]), t("b", DType::F32, &[1])],
    )
    .unwrap();
    assert!(w
        .write_tensor("b", &[0; 4])
        .unwrap_err()
        .to_string()
        .contains("expected data for `a`"));
    assert!(w
        .write_tensor("a", &[0; 4])
        .unwrap_err()
        .to_string()
        .contains("takes 8 bytes, got 4"));
    w.write_tensor("a", &[0; 8]).unwrap();
    let e = w.finish().unwrap_err().to_string();
    assert!(e.contains("only 1 of 2 tensors written"), "{e}");
}

/// The interpreter with the `gguf` package: `$REEL_PY`, else `<repo>/.venv-py/bin/python`.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("REEL_PY") {
        return PathBuf::from(p);
    }
    let p = common::root().join(".venv-py/bin/python");
    assert!(
        p.exists(),
        "{} not found: run scripts/setup.sh (it creates .venv-py with the gguf package), or set REEL_PY",
        p.display()
    );
    p
}

fn type_name(t: ValueType) -> &'static str {
    match t {
        ValueType::U8 => "UINT8",
        ValueType::I8 => "INT8",
        ValueType::U16 => "UINT16",
        ValueType::I16 => "INT16",
        ValueType::U32 => "UINT32",
        ValueType::I32 => "INT32",
        ValueType::F32 => "FLOAT32",
        ValueType::Bool => "BOOL",
        ValueType::String => "STRING",
        ValueType::Array => "ARRAY",
        ValueType::U64 => "UINT64",
        ValueType::I64 => "INT64",
        ValueType::F64 => "FLOAT64",
    }
}

fn scalar_json(v: &MetaValue) -> serde_json::Value {
    use serde_json::json;
    match v {
        MetaValue::U8(x) => json!(x),
        MetaValue::I8(x) => json!(x),
        MetaValue::U16(x) => json!(x),
        MetaValue::I16(x) => json!(x),
        MetaValue::U32(x) => json!(x),
        MetaValue::I32(x) => json!(x),
        MetaValue::F32(x) => json!(x),
        MetaValue::Bool(x) => json!(x),
        MetaValue::String(x) => json!(x),
        MetaValue::U64(x) => json!(x),
        MetaValue::I64(x) => json!(x),
        MetaValue::F64(x) => json!(x),
        MetaValue::Array { items, .. } => {
            serde_json::Value::Array(items.iter().map(scalar_json).collect())
        }
    }
}

/// `{"key", "type", "value"[, "item"]}` with the gguf package's type names.
fn meta_json(k: &str, v: &MetaValue) -> serde_json::Value {
    let mut o =
        serde_json::json!({"key": k, "type": type_name(v.value_type()), "value": scalar_json(v)});
    if let MetaValue::Array { item_type, .. } = v {
        o["item"] = type_name(*item_type).into();
    }
    o
}

fn write_f32(path: &Path, v: &[f32]) {
    std::fs::write(
        path,
        v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
    )
    .unwrap();
}

#[test]
fn crosscheck_with_gguf_python_package() {
    let py = python();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.gguf");
    let ts = write_file(&path);
    let dump = dir.path().join("dump");
    std::fs::create_dir(&dump).unwrap();
    // Reel's dequantization and the f32 source of every tensor, as raw little-endian f32.
    let mut manifest = Vec::new();
    for (i, (p, x, b)) in ts.iter().enumerate() {
        let mut y = vec![0.0f32; x.len()];
        quant::dequantize_row(p.dtype, b, &mut y).unwrap();
        write_f32(&dump.join(format!("{i}.deq")), &y);
        write_f32(&dump.join(format!("{i}.src")), x);
        manifest.push(serde_json::json!({
            "index": i, "name": p.name, "type": p.dtype.name(), "shape": p.shape,
        }));
    }
    let meta: Vec<serde_json::Value> = metadata().iter().map(|(k, v)| meta_json(k, v)).collect();
    let expect = serde_json::json!({"tensors": manifest, "metadata": meta});
    std::fs::write(dump.join("expect.json"), expect.to_string()).unwrap();

    let script = common::root().join("tests/gguf_crosscheck.py");
    let out = Command::new(&py)
        .arg(&script)
        .arg(&path)
        .arg(&dump)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running {}: {e} (run scripts/setup.sh or set REEL_PY)",
                py.display()
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(
        out.status.success(),
        "gguf cross-check failed:\n{stdout}\n{stderr}"
    );
    // The script reports one line per check; make sure the exact ones ran.
    for needle in [
        "dequant exact q8_0",
        "dequant exact q4_k",
        "dequant exact q6_k",
        "dequant exact bf16",
        "dequant exact f16",
        "quantize bytes exact q8_0",
        "quantize bytes exact bf16",
        "metadata ok",
    ] {
        assert!(
            stdout.contains(needle),
            "missing check `{needle}` in:\n{stdout}"
        );
    }
}

#[test]
fn gguf_store_is_a_weight_store() {
    use reel::store::WeightStore;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ws.gguf");
    let ts = write_file(&path);
    let store = GgufStore::open(&path).unwrap();
    let ws: &dyn WeightStore = &store;
    let mut names: Vec<String> = ts.iter().map(|t| t.0.name.clone()).collect();
    names.sort();
    assert_eq!(ws.names(), names);
    for (p, _, b) in &ts {
        let t = ws.get(&p.name).unwrap();
        assert_eq!(
            (t.dtype, &t.shape, t.bytes.as_slice()),
            (p.dtype, &p.shape, &b[..])
        );
    }
    assert!(ws.get("missing").is_none());
    assert_eq!(
        ws.file_dtype("model.layers.0.mlp.up_proj.weight")
            .as_deref(),
        Some("Q4_K")
    );
    assert!(ws.describe().contains("ws.gguf") && ws.describe().contains("7 tensors"));
}

#[test]
fn model_config_from_the_embedded_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cfg.gguf");
    let fixture = common::model_dir().join("config.json");
    let cfg = std::fs::read_to_string(fixture).unwrap();
    let meta = vec![
        (
            gguf::KEY_ARCHITECTURE.to_string(),
            MetaValue::str("qwen2vl"),
        ),
        (gguf::KEY_CONFIG_JSON.to_string(), MetaValue::str(cfg)),
        (gguf::KEY_TOKENIZER_JSON.to_string(), MetaValue::str("{}")),
    ];
    GgufWriter::create(&path, &meta, vec![])
        .unwrap()
        .finish()
        .unwrap();
    let m = GgufModel::open(&path).unwrap();
    let c = m.model_config().unwrap();
    assert_eq!(
        (
            c.text.hidden_size,
            c.text.num_hidden_layers,
            c.text.vocab_size
        ),
        (64, 2, 1024)
    );
    // A broken embedded config names the file and key.
    let path = dir.path().join("badcfg.gguf");
    let meta = vec![
        (
            gguf::KEY_ARCHITECTURE.to_string(),
            MetaValue::str("qwen2vl"),
        ),
        (
            gguf::KEY_CONFIG_JSON.to_string(),
            MetaValue::str("{not json"),
        ),
        (gguf::KEY_TOKENIZER_JSON.to_string(), MetaValue::str("{}")),
    ];
    GgufWriter::create(&path, &meta, vec![])
        .unwrap()
        .finish()
        .unwrap();
    let e = GgufModel::open(&path)
        .unwrap()
        .model_config()
        .unwrap_err()
        .to_string();
    assert!(e.contains("badcfg.gguf:reel.config_json"), "{e}");
}
