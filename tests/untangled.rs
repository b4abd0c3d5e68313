//! The layering stays (docs/ARCHITECTURE.md): from the `crate::` paths in src/, the
//! top-level modules import each other without a circle, the lower layers import none of the
//! upper ones (store not model; backend not engine, model or anything built on it), no backend
//! reaches into another backend's files, and the engine names no particular backend.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A `crate::` reference: the file, its line, the referring top-level module, and the path.
#[derive(Clone, Debug)]
struct Ref {
    file: PathBuf,
    line: usize,
    from: String,
    path: String,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The paths after `crate::` in `line`, a `crate::{a, b::c}` group expanded.
fn crate_paths(line: &str) -> Vec<String> {
    let mut v = Vec::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect::<String>()
            .trim_end_matches(':')
            .to_string()
    };
    let mut rest = line;
    while let Some(i) = rest.find("crate::") {
        // `$crate::` in macros and identifiers ending in `crate` are not paths from the root.
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let p = ident(item.trim());
                if !p.is_empty() {
                    v.push(p);
                }
            }
        } else {
            v.push(ident(rest));
        }
    }
    v
}

/// The top-level module a root path names (`Error`, `DType`... are the root's re-exports).
fn top(path: &str) -> String {
    let first = path.split("::").next().unwrap_or("");
    match first {
        "Error" | "Result" => "error".into(),
        "DType" | "Shape" => "tensor".into(),
        m => m.into(),
    }
}

fn scan() -> Vec<Ref> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut refs = Vec::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let from = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if from == "lib" || from == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for path in crate_paths(code) {
                refs.push(Ref {
                    file: rel.to_path_buf(),
                    line: i + 1,
                    from: from.clone(),
                    path,
                });
            }
        }
    }
    refs
}

fn show(r: &Ref) -> String {
    format!("{}:{}: crate::{}", r.file.display(), r.line, r.path)
}

#[test]
fn paths_are_found() {
    assert_eq!(
        crate_paths("use crate::backend::{Backend, TRef}; x = crate::quant::row_bytes(1);"),
        ["backend", "quant::row_bytes"]
    );
    assert_eq!(
        crate_paths("use crate::{Error, Result};"),
        ["Error", "Result"]
    );
    assert!(crate_paths("$crate::backend::TRef; foo_crate::x").is_empty());
    assert_eq!(top("Result"), "error");
}

#[test]
fn top_level_modules_form_no_circle() {
    let refs = scan();
    assert!(refs.len() > 100, "only {} crate:: paths found", refs.len());
    let mut edges: BTreeMap<String, BTreeMap<String, Ref>> = BTreeMap::new();
    for r in &refs {
        let to = top(&r.path);
        if to != r.from && !to.is_empty() {
            edges
                .entry(r.from.clone())
                .or_default()
                .entry(to)
                .or_insert_with(|| r.clone());
        }
    }
    // Depth-first search for a back edge; report the circle with one reference per step.
    fn visit(
        m: &str,
        edges: &BTreeMap<String, BTreeMap<String, Ref>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == m) {
            let mut circle = stack[i..].to_vec();
            circle.push(m.to_string());
            return Some(circle);
        }
        if done.contains(m) {
            return None;
        }
        stack.push(m.to_string());
        for next in edges
            .get(m)
            .map(|e| e.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            if let Some(c) = visit(&next, edges, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for m in edges.keys() {
        if let Some(c) = visit(m, &edges, &mut Vec::new(), &mut done) {
            let steps: Vec<String> = c
                .windows(2)
                .map(|w| format!("  {} -> {}: {}", w[0], w[1], show(&edges[&w[0]][&w[1]])))
                .collect();
            panic!("import circle {}:\n{}", c.join(" -> "), steps.join("\n"));
        }
    }
}

#[test]
fn lower_layers_import_no_upper_one() {
    let forbidden: &[(&str, &[&str])] = &[
        ("store", &["model", "engine", "graph", "kv"]),
        (
            "backend",
            &[
                "engine", "model", "graph", "kv", "store", "prompt", "media", "eval",
            ],
        ),
        ("graph", &["engine", "model", "kv", "store"]),
        ("kv", &["engine", "model", "graph", "store"]),
        ("quant", &["engine", "model", "backend", "store"]),
        (
            "media",
            &[
                "engine", "model", "backend", "graph", "kv", "store", "quant",
            ],
        ),
        (
            "prompt",
            &[
                "engine", "model", "backend", "graph", "kv", "store", "quant",
            ],
        ),
        ("model", &["engine", "eval"]),
    ];
    let bad: Vec<String> = scan()
        .iter()
        .filter(|r| {
            forbidden
                .iter()
                .any(|(from, to)| r.from == *from && to.contains(&top(&r.path).as_str()))
        })
        .map(show)
        .collect();
    assert!(bad.is_empty(), "upward imports:\n{}", bad.join("\n"));
}

#[test]
fn backends_keep_to_themselves() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut bad = Vec::new();
    for (dir, other) in [("cpu", "cuda"), ("cuda", "cpu")] {
        let mut files = Vec::new();
        rust_files(&src.join("backend").join(dir), &mut files);
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for (i, line) in text.lines().enumerate() {
                let l = line.trim_start();
                if l.starts_with("//") {
                    continue;
                }
                if l.contains(&format!("backend::{other}"))
                    || l.contains(&format!("super::{other}"))
                {
                    bad.push(format!("{}:{}: {}", f.display(), i + 1, l));
                }
            }
        }
    }
    // The engine runs whatever backend the options name; it picks none itself.
    for r in scan().iter().filter(|r| r.from == "engine") {
        if r.path.starts_with("backend::cpu") || r.path.starts_with("backend::cuda") {
            bad.push(show(r));
        }
    }
    assert!(
        bad.is_empty(),
        "backend internals used across the boundary:\n{}",
        bad.join("\n")
    );
}
