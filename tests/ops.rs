//! The op harness: every case of the op table (`reel::backend::harness`: each op × a sweep of
//! shapes, small, awkward and real Qwen2.5-VL-7B ones) × activation dtypes {f32, bf16} × every
//! available backend, against the op's scalar reference under its error bound (the metric and
//! the bounds are in the harness's module docs). The same table's timed cases are
//! benches/ops.rs.
//!
//! `REEL_OPS_FILTER` (comma-separated substrings of `op shape`) and `REEL_OPS_BACKEND` (a
//! backend name prefix: cpu, cpu-avx512, cpu-avx2, cpu-scalar, cuda) narrow a run, e.g. under compute-sanitizer.
//! With `REEL_REQUIRE_CUDA=1` a CUDA backend that does not open fails the run.

use reel::backend::harness::{self, attention::paged_kv, read_i32, Ctx, Mode};
use reel::backend::{cpu::CpuBackend, Backend, MropeParams, PagedKv, SampleArgs, TRef};
use reel::{DType, Shape};

fn env_list(name: &str) -> Vec<String> {
    std::env::var(name)
        .map(|v| {
            v.split(',')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn ops_match_reference() {
    let (mut targets, notes) = harness::targets();
    for n in &notes {
        println!("{n}");
        if std::env::var("REEL_REQUIRE_CUDA").is_ok_and(|v| v == "1") {
            panic!("REEL_REQUIRE_CUDA=1: {n}");
        }
    }
    if let Ok(b) = std::env::var("REEL_OPS_BACKEND") {
        targets.retain(|t| t.name.starts_with(b.as_str()));
        assert!(
            !targets.is_empty(),
            "REEL_OPS_BACKEND={b} names no backend here"
        );
    }
    let failures = harness::check(
        &harness::cases(),
        &targets,
        &[DType::F32, DType::BF16],
        &env_list("REEL_OPS_FILTER"),
    );
    assert!(
        failures.is_empty(),
        "{} rows over their bounds:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Every op of the Backend trait (read from its declaration in src/backend/mod.rs) has a
/// checked and a timed case in the table.
#[test]
fn every_backend_op_has_cases() {
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/backend/mod.rs"))
        .unwrap();
    let start = src
        .find("// ---- ops ----")
        .expect("the trait's ops section");
    let end = start + src[start..].find("// ---- graph capture").expect("its end");
    let ops: Vec<&str> = src[start..end]
        .split("fn ")
        .skip(1)
        .map(|s| s.split('(').next().unwrap())
        .collect();
    assert!(ops.len() >= 16, "{ops:?}");
    let cases = harness::cases();
    for op in ops {
        assert!(
            cases.iter().any(|c| c.op == op && c.checked),
            "{op}: no checked case"
        );
        assert!(
            cases.iter().any(|c| c.op == op && c.timed),
            "{op}: no timed case"
        );
    }
}

/// Every op refuses inputs it cannot handle with an error (never a panic).
#[test]
fn ops_reject_bad_inputs() {
    let mut cpu = CpuBackend::new();
    let mut cx = Ctx::new(&mut cpu, DType::F32, 1, Mode::Check);
    let f = DType::F32;
    let x = cx.put(&[1.0; 12], f, &[3, 4], 0).unwrap();
    let x5 = cx.put(&[1.0; 15], f, &[3, 5], 0).unwrap();
    let o = cx.out(f, &[3, 4], 0).unwrap();
    let w = cx.put_weight(&[1.0; 20], DType::BF16, &[5, 4]).unwrap();
    let w4 = cx.put_weight(&[1.0; 4], DType::BF16, &[4]).unwrap();
    let ids = cx.i32s(&[0, 1, 7], &[3]).unwrap();
    let tab = cx.put_weight(&[0.0; 8], DType::BF16, &[2, 4]).unwrap();
    let nan = cx.put(&[0.0, f32::NAN, 1.0, 2.0], f, &[2, 2], 0).unwrap();
    let oi = cx.i32s(&[0, 0], &[2]).unwrap();
    let args = cx.i32s(&SampleArgs::greedy().to_words(), &[8]).unwrap();
    let short = cx.i32s(&[0; 4], &[4]).unwrap();
    let xr = cx.put(&[0.0; 2 * 2 * 8], f, &[2, 2, 8], 0).unwrap();
    let pos = cx.i32s(&[0; 6], &[3, 2]).unwrap();
    let xv = cx.put(&[0.0; 2 * 6], f, &[2, 1, 6], 0).unwrap();
    let pv = cx.i32s(&[0; 4], &[2, 2]).unwrap();
    let kv = paged_kv(&mut cx, 2, 8, 4, 5).unwrap();
    let q3 = cx.put(&[0.0; 3 * 8], f, &[1, 3, 8], 0).unwrap();
    let q6 = cx.put(&[0.0; 6 * 4 * 8], f, &[6, 4, 8], 0).unwrap();
    let o6 = cx.out(f, &[6, 4, 8], 0).unwrap();
    let bad_pages = PagedKv {
        indices: cx.i32s(&[99, 0, 0], &[3]).unwrap(),
        ..kv
    };
    let q1 = cx.put(&[0.0; 4 * 8], f, &[1, 4, 8], 0).unwrap();
    let qv = cx.put(&[0.0; 4 * 8], f, &[4, 1, 8], 0).unwrap();
    let cu = cx.i32s(&[0, 3], &[2]).unwrap();
    let xq = cx.put(&[0.5; 2 * 48], f, &[2, 48], 0).unwrap();
    let oq = cx.out(f, &[2, 3], 0).unwrap();
    let wbytes = cx.put_weight(&[0.0; 12], f, &[3, 4]).unwrap();
    let be: &mut dyn Backend = cx.be;
    let msg = |r: reel::Result<()>| r.expect_err("must be an error").to_string();

    // matmul: K mismatch, wrong out shape, quantized weights of another K, i32 activations.
    assert!(msg(be.matmul(x5, w, None, o)).contains("K = 4"));
    assert!(msg(be.matmul(x, w, None, o)).contains("out"));
    let q = TRef {
        dtype: DType::Q8_0,
        shape: Shape::new(&[5, 32]),
        row_stride: 32,
        ..w
    };
    assert!(msg(be.matmul(x, q, None, o)).contains("do not fit"));
    // Quantized K that does not fill whole blocks.
    let q48 = TRef {
        dtype: DType::Q8_0,
        shape: Shape::new(&[3, 48]),
        row_stride: 48,
        ..w
    };
    assert!(msg(be.matmul(xq, q48, None, oq)).contains("K = 48"));
    let xi = TRef {
        dtype: DType::I32,
        ..x
    };
    assert!(msg(be.matmul(xi, w, None, o)).contains("f32 or bf16"));
    // A view that overruns its buffer.
    let big = TRef {
        shape: Shape::new(&[30, 4]),
        ..x
    };
    assert!(msg(be.add(big, big, big)).contains("overruns"));
    // Elementwise shape mismatch; rms_norm weight length.
    assert!(msg(be.add(x, x5, o)).contains("shape"));
    assert!(msg(be.rms_norm(x5, w4, x5, 1e-6)).contains("D = 4"));
    // Embedding id out of range.
    assert!(msg(be.embedding(tab, ids, o)).contains("ids[2] = 7"));
    // argmax on NaN, and on a non-i32 output.
    assert!(msg(be.argmax(nan, oi)).contains("NaN"));
    assert!(msg(be.argmax(nan, nan)).contains("i32"));
    // sample: args too short, a non-i32 output, a NaN row (-1, not an error: the kernel cannot
    // fail, the engine turns -1 into an error).
    assert!(msg(be.sample(x, short, oi)).contains("args"));
    assert!(msg(be.sample(x, args, x)).contains("out"));
    be.sample(nan, args, oi).unwrap();
    assert_eq!(read_i32(be, &oi).unwrap(), [-1, 1]);
    // RoPE: sections not summing to d/2; vision d not a multiple of 4.
    let p = MropeParams {
        theta: 1e6,
        sections: [1, 1, 1],
    };
    assert!(msg(be.rope_mrope(xr, pos, xr, p)).contains("sections"));
    assert!(msg(be.rope_vision(xv, pv, xv, 1e4)).contains("multiple of 4"));
    // Paged attention: GQA ratio; too many query rows; a layer outside the pool; a page index
    // outside the pool.
    assert!(msg(be.attention_paged(q3, &kv, 0, q3, 1.0)).contains("multiple"));
    assert!(msg(be.attention_paged(q6, &kv, 0, o6, 1.0)).contains("holds only 5"));
    assert!(msg(be.attention_paged(q6, &kv, 2, o6, 1.0)).contains("layer 2"));
    assert!(msg(be.attention_paged(q1, &bad_pages, 0, q1, 1.0)).contains("page index 99"));
    // Varlen: cu_seqlens that do not end at N.
    assert!(msg(be.attention_varlen(qv, qv, qv, cu, qv, 1.0)).contains("cu_seqlens"));
    // Writing into a weight buffer.
    assert!(msg(be.add(x, x, wbytes)).contains("read-only"));
}
