//! Shared helpers for the integration tests (the quantize crate's too, through `#[path]`):
//! fixture paths and golden tensors.
#![allow(dead_code)]

use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The repository root: this package's directory (the quantize crate's parent).
pub fn root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    match here.file_name() {
        Some(n) if n == "quantize" => here.parent().expect("the workspace root").into(),
        _ => here.into(),
    }
}

pub fn fixtures() -> PathBuf {
    root().join("tests/fixtures")
}

/// A fixture file, which must exist.
pub fn fixture(rel: &str) -> PathBuf {
    let p = fixtures().join(rel);
    assert!(
        p.exists(),
        "fixture missing: {} (reference files are committed on main under tests/fixtures; merge main)",
        p.display()
    );
    p
}

pub fn model_dir() -> PathBuf {
    fixtures().join("model")
}

/// A golden tensor, widened to f64 (exact for the f32 and i64 values stored).
pub struct Golden {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl Golden {
    pub fn f32(&self) -> Vec<f32> {
        self.data.iter().map(|&x| x as f32).collect()
    }
    pub fn i64(&self) -> Vec<i64> {
        self.data.iter().map(|&x| x as i64).collect()
    }
}

pub fn load_golden(case_file: &str) -> HashMap<String, Golden> {
    let path = fixtures().join(case_file);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let d = view.data();
        let data: Vec<f64> = match view.dtype() {
            Dtype::F32 => d
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            Dtype::I64 => d
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            Dtype::I32 => d
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            Dtype::U8 => d.iter().map(|&b| b as f64).collect(),
            other => panic!("{name}: unexpected dtype {other:?}"),
        };
        out.insert(
            name.to_string(),
            Golden {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    out
}

/// Largest absolute difference, and the largest absolute reference value.
pub fn max_diff(got: &[f32], want: &[f32]) -> (f32, f32) {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let mut d = 0f32;
    let mut m = 0f32;
    for (a, b) in got.iter().zip(want) {
        assert!(a.is_finite(), "non-finite output");
        d = d.max((a - b).abs());
        m = m.max(b.abs());
    }
    (d, m)
}

pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// The fixture's case list.
pub fn cases() -> serde_json::Value {
    let p = fixtures().join("cases.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

pub fn case(name: &str) -> serde_json::Value {
    cases()["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no case {name}"))
        .clone()
}
