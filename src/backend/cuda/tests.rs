//! Tests of the CUDA backend. The first group needs no device: the index math the kernels use
//! (compiled for the host from the same header), the embedded fatbins against the kernel
//! registry, the launch checks and the dispatch. The `device` group (a GPU; `cuda: skipped`
//! elsewhere) checks what the op harness cannot: the quantized kernels against bounds tighter
//! than the harness's, and the sampler inside a captured graph. Every kernel's correctness over
//! the op table's shapes is the harness's (backend::harness, tests/ops.rs); the decode step
//! replayed from a CUDA graph is tests/golden_text.rs's.

use super::attention::{partial_bytes, ATTENTION_PAGED_DECODE};
use super::elementwise::copy_unit;
use super::launch::{self, check_launch, Launch, Limits};
use super::matmul::{pick, MatmulCase, MatmulKernel, QType, XStage};
use super::MODULES;
use crate::tensor::DType;
use std::path::PathBuf;
use std::process::Command;

/// Builds kernels/host_test/index_check.cpp (which includes kernels/index_math.h, the very
/// functions the kernels call) with the host C++ compiler and runs it.
#[test]
fn index_math_host_checks() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("kernels/host_test/index_check.cpp");
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("index_check");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let out = Command::new(&cxx)
        .args(["-std=c++17", "-O1", "-Wall", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the host C++ compiler `{cxx}` (set CXX): {e}"));
    assert!(
        out.status.success(),
        "compiling {}:\n{}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe).output().unwrap();
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "index checks failed:\n{text}");
    assert!(text.contains("all checks passed"), "{text}");
}

/// `.text.<name>` section names of every kernel in a fatbin's cubins.
fn kernels_in(bytes: &[u8]) -> Vec<String> {
    let pat = b".text.";
    let mut names = Vec::new();
    let mut i = 0;
    while i + pat.len() < bytes.len() {
        if &bytes[i..i + pat.len()] == pat {
            let start = i + pat.len();
            let end = bytes[start..]
                .iter()
                .position(|&b| b == 0)
                .map_or(bytes.len(), |p| start + p);
            if let Ok(s) = std::str::from_utf8(&bytes[start..end]) {
                // __internal_* are libdevice helpers (pow, trig slow path), not entry points.
                if !s.is_empty()
                    && !s.starts_with("__")
                    && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    names.push(s.to_string());
                }
            }
            i = end;
        } else {
            i += 1;
        }
    }
    names.sort();
    names.dedup();
    names
}

/// Every kernel a launcher can name exists in its module's fatbin, and every kernel in the
/// fatbins is one the registry knows (no dead or misspelt entry points).
#[test]
fn kernel_names_in_fatbins() {
    if MODULES.is_empty() {
        assert_eq!(super::ARCHS, "", "no modules but ARCHS is set");
        eprintln!("cuda: built without nvcc, no fatbins to check");
        return;
    }
    for (stem, bytes) in MODULES {
        assert!(
            bytes.len() > 1024,
            "module {stem} fatbin is only {} bytes",
            bytes.len()
        );
        let found = kernels_in(bytes);
        assert!(
            !found.is_empty(),
            "module {stem}: no kernels found (is the fatbin compressed?)"
        );
        for name in &found {
            assert!(
                launch::all().any(|k| (k.module, k.name) == (*stem, name.as_str())),
                "kernel {name} in {stem}.cu is not in the launch registry"
            );
        }
    }
    let mut names: Vec<&str> = launch::all().map(|k| k.name).collect();
    names.sort();
    let n = names.len();
    names.dedup();
    assert_eq!(names.len(), n, "a kernel name is registered twice");
    for k in launch::all() {
        let (module, name) = (k.module, k.name);
        let bytes = MODULES
            .iter()
            .find(|(s, _)| *s == module)
            .unwrap_or_else(|| panic!("{k:?}: module {module}.cu is not embedded"))
            .1;
        assert!(
            kernels_in(bytes).iter().any(|n| n == name),
            "{k:?}: kernel {name} missing from {module}.cu's fatbin"
        );
    }
}

/// The embedded PTX (compute_80) uses the instructions each design relies on: tensor-core mma,
/// ldmatrix and cp.async in the GEMM, 16-byte non-coherent loads in the GEMV, and no
/// approximate sin/cos in the rope kernels (angles reach 1e4+ rad).
#[test]
fn fatbin_ptx_uses_intended_instructions() {
    if MODULES.is_empty() || !super::ARCHS.contains("compute_") {
        eprintln!("cuda: no PTX embedded, nothing to check");
        return;
    }
    let module = |stem: &str| {
        MODULES
            .iter()
            .find(|(s, _)| *s == stem)
            .map(|m| m.1)
            .unwrap()
    };
    let has = |bytes: &[u8], pat: &str| bytes.windows(pat.len()).any(|w| w == pat.as_bytes());
    let gemm = module("gemm");
    for pat in [
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32",
        "ldmatrix.sync.aligned.m8n8.x4.shared.b16",
        "cp.async.cg.shared.global",
        "cp.async.wait_group",
    ] {
        assert!(has(gemm, pat), "gemm PTX lacks {pat}");
    }
    let fa = module("attention_mma");
    for pat in [
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32",
        "ldmatrix.sync.aligned.m8n8.x4.shared.b16",
        "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16",
        "cp.async.cg.shared.global",
        "ex2.approx",
    ] {
        assert!(has(fa, pat), "attention_mma PTX lacks {pat}");
    }
    assert!(
        has(module("gemv"), "ld.global.nc.v4"),
        "gemv PTX lacks 16-byte loads"
    );
    let quant = module("quant");
    for pat in [
        "ld.global.nc.v4",
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32",
        "ldmatrix.sync.aligned.m8n8.x4.shared.b16",
        "cp.async.cg.shared.global",
    ] {
        assert!(has(quant, pat), "quant PTX lacks {pat}");
    }
    let rope = module("rope");
    assert!(has(rope, ".entry rope_mrope"), "rope PTX missing");
    assert!(
        !has(rope, "sin.approx") && !has(rope, "cos.approx"),
        "rope uses approximate sin/cos"
    );
}

#[test]
fn launch_checks() {
    let lim = Limits {
        smem_optin: 227 * 1024,
    };
    let ok = Launch {
        grid: (10, 4, 64),
        block: 128,
        dyn_smem: 0,
    };
    assert!(check_launch(ATTENTION_PAGED_DECODE, &ok, 128, 20736, &lim).is_ok());
    let cases = [
        (
            Launch {
                grid: (0, 1, 1),
                ..ok
            },
            "empty grid",
        ),
        (
            Launch {
                grid: (1, 65536, 1),
                ..ok
            },
            "exceeds the device limits",
        ),
        (
            Launch {
                grid: (1, 1, 70000),
                ..ok
            },
            "exceeds the device limits",
        ),
        (Launch { block: 100, ..ok }, "multiple of 32"),
        (Launch { block: 2048, ..ok }, "multiple of 32"),
        (Launch { block: 256, ..ok }, "kernel's limit"),
        (
            Launch {
                dyn_smem: 220 * 1024,
                ..ok
            },
            "opt-in limit",
        ),
    ];
    for (l, msg) in cases {
        let e = check_launch(ATTENTION_PAGED_DECODE, &l, 128, 20736, &lim).unwrap_err();
        assert!(
            e.contains(msg) && e.contains("attention_paged_decode"),
            "{l:?}: {e}"
        );
    }
}

/// A case with the 7B's K and types; `aligned` for both operands' rows.
fn case(m: usize, n: usize, k: usize, w: DType, x: DType, aligned: bool) -> MatmulCase {
    MatmulCase {
        m,
        n,
        k,
        w,
        x,
        x_rows_16b: aligned,
        w_rows_16b: aligned,
    }
}

#[test]
fn matmul_dispatch() {
    use MatmulKernel::*;
    let bf = DType::BF16;
    assert_eq!(pick(&case(1, 4608, 3584, bf, bf, true)), GemvV16);
    assert_eq!(pick(&case(8, 4608, 3584, bf, bf, true)), GemvV16);
    assert_eq!(pick(&case(9, 4608, 3584, bf, bf, true)), GemmMma);
    // ViT down_proj: K = 3420 is not a multiple of 8; the GEMM reads its tails (and its
    // 8-byte aligned rows) at any M, the 16-byte GEMV cannot.
    assert_eq!(pick(&case(4096, 1280, 3420, bf, bf, false)), GemmMma);
    assert_eq!(pick(&case(4, 1280, 3420, bf, bf, false)), GemmMma);
    // A column view at a 2-byte offset, or a row stride of 132 elements.
    assert_eq!(pick(&case(64, 128, 128, bf, bf, false)), GemmMma);
    assert_eq!(pick(&case(1, 128, 128, bf, bf, false)), GemmMma);
    let one_unaligned = MatmulCase {
        w_rows_16b: false,
        ..case(3, 128, 128, bf, bf, true)
    };
    assert_eq!(pick(&one_unaligned), GemmMma);
    // f32 activations or f16/f32 weights take the scalar path at any M.
    assert_eq!(
        pick(&case(512, 3584, 3584, bf, DType::F32, true)),
        GemvScalar
    );
    assert_eq!(
        pick(&case(512, 3584, 3584, DType::F16, bf, true)),
        GemvScalar
    );
}

/// What counts as 16-byte aligned rows: the base address and the row stride in bytes.
#[test]
fn rows_16b_alignment() {
    use super::rows_16b;
    assert!(rows_16b(4096, 3584, DType::BF16));
    assert!(rows_16b(4096, 3 * 1280, DType::BF16));
    assert!(!rows_16b(4098, 3584, DType::BF16));
    assert!(!rows_16b(4096, 132 + 2, DType::BF16));
    assert!(rows_16b(4096, 132, DType::F32));
    assert!(!rows_16b(4096, 130, DType::F32));
}

/// Quantized matmul: GEMV for M <= 8 and for f32 activations at any M, the GEMM for larger
/// bf16 M with aligned rows; grid sizes at the 7B shapes.
#[test]
fn quant_matmul_dispatch_and_grids() {
    use MatmulKernel::*;
    let (bf, f32_) = (DType::BF16, DType::F32);
    let q = |m, w, x, aligned| pick(&case(m, 3584, 3584, w, x, aligned));
    assert_eq!(
        q(1, DType::Q8_0, bf, true),
        QGemv(QType::Q8_0, XStage::Bf16)
    );
    assert_eq!(q(8, DType::Q4K, bf, true), QGemv(QType::Q4K, XStage::Bf16));
    assert_eq!(q(3, DType::Q6K, f32_, true), QGemv(QType::Q6K, XStage::F32));
    assert_eq!(
        q(3, DType::Q6K, DType::F16, true),
        QGemv(QType::Q6K, XStage::F32)
    );
    assert_eq!(q(9, DType::Q8_0, bf, true), QGemm(QType::Q8_0));
    assert_eq!(q(70, DType::Q4K, bf, true), QGemm(QType::Q4K));
    assert_eq!(q(4096, DType::Q6K, bf, true), QGemm(QType::Q6K));
    // f32 activations, or bf16 rows the cp.async path cannot take, stay on the GEMV.
    assert_eq!(
        q(70, DType::Q4K, f32_, true),
        QGemv(QType::Q4K, XStage::F32)
    );
    assert_eq!(
        q(70, DType::Q6K, bf, false),
        QGemv(QType::Q6K, XStage::Bf16)
    );
    assert_eq!(
        QGemv(QType::Q4K, XStage::F32).kernel().name,
        "qgemv_q4_k_f32"
    );
    assert_eq!(QGemm(QType::Q6K).kernel().name, "qgemm_q6_k");

    // One warp per output column, 8 per block: N = 3584 -> 448 blocks, lm_head -> 19008.
    let g = |k: MatmulKernel, m, n| k.grid(m, n).unwrap();
    let q8 = QGemv(QType::Q8_0, XStage::Bf16);
    assert_eq!(g(q8, 1, 3584), ((448, 1, 1), 256));
    assert_eq!(
        g(QGemv(QType::Q4K, XStage::Bf16), 1, 152_064),
        ((19_008, 1, 1), 256)
    );
    // Awkward N rounds up (the kernel masks warps past N); M walks grid.y in slices of 8.
    let q6f = QGemv(QType::Q6K, XStage::F32);
    assert_eq!(g(q6f, 3, 37), ((5, 1, 1), 256));
    assert_eq!(g(q6f, 70, 37), ((5, 9, 1), 256));
    assert_eq!(g(GemvScalar, 70, 37), ((5, 9, 1), 256));
    // GEMM: 128 x 128 tiles.
    assert_eq!(g(QGemm(QType::Q4K), 4096, 3584), ((28, 32, 1), 256));
    assert_eq!(g(QGemm(QType::Q8_0), 70, 37), ((1, 1, 1), 256));
    assert_eq!(g(GemmMma, 4096, 37_888), ((296, 32, 1), 256));
    let e = QGemv(QType::Q8_0, XStage::F32)
        .grid(8 * 65_536, 16)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("too large") && e.contains("qgemv_q8_0_f32"),
        "{e}"
    );
}

/// Builds kernels/host_test/quant_check.cpp (the kernels' own decoders and streaming geometry,
/// kernels/quant_decode.h) and checks that the GEMV window walk, the GEMM tile mapping and the
/// embedding mapping each reproduce `quant::dequantize_row` bit for bit, on quantized rows and
/// on raw random blocks, with rows at every even misalignment class.
#[test]
fn quant_decode_host_checks() {
    use crate::quant::{dequantize_row, quantize_row};
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("kernels/host_test/quant_check.cpp");
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("quant_check");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    // No contraction, like the device code's explicitly rounded products.
    let out = Command::new(&cxx)
        .args(["-std=c++17", "-O1", "-Wall", "-ffp-contract=off", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the host C++ compiler `{cxx}` (set CXX): {e}"));
    assert!(
        out.status.success(),
        "compiling {}:\n{}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );

    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // (type, K, rows, shift, raw random blocks)
    let cases = [
        (DType::Q8_0, 32usize, 3usize, 0usize, false),
        (DType::Q8_0, 96, 5, 2, false),
        (DType::Q8_0, 3584, 3, 6, true),
        (DType::Q8_0, 2080, 2, 14, true),
        (DType::Q4K, 256, 3, 0, false),
        (DType::Q4K, 3584, 3, 8, true),
        (DType::Q4K, 18944, 2, 2, false),
        (DType::Q6K, 512, 4, 0, false),
        (DType::Q6K, 3584, 3, 4, true),
        (DType::Q6K, 18944, 2, 10, true),
    ];
    let mut input = Vec::new();
    let mut want: Vec<Vec<f32>> = Vec::new();
    for &(dt, k, rows, shift, raw) in &cases {
        let code = QType::of(dt).unwrap().code();
        for v in [code, k as i32, rows as i32, shift as i32] {
            input.extend_from_slice(&v.to_le_bytes());
        }
        let rb = dt.bytes_for(k);
        let mut bytes = vec![0u8; rb * rows];
        if raw {
            bytes.iter_mut().for_each(|b| *b = next() as u8);
            // Finite fp16 scales (d, dmin / d): clear a saturated exponent.
            let fix = |b: &mut [u8], at: usize| {
                if b[at + 1] & 0x7c == 0x7c {
                    b[at + 1] &= !0x40;
                }
            };
            for blk in bytes.chunks_exact_mut(dt.block_bytes()) {
                match dt {
                    DType::Q8_0 => fix(blk, 0),
                    DType::Q4K => {
                        fix(blk, 0);
                        fix(blk, 2);
                    }
                    _ => fix(blk, 208),
                }
            }
        } else {
            for row in bytes.chunks_exact_mut(rb) {
                let scale = 0.01 + (next() % 1000) as f32 / 100.0;
                let vals: Vec<f32> = (0..k)
                    .map(|i| {
                        // a zero block now and then (d = 0 path)
                        if (i / 256) % 5 == 4 {
                            0.0
                        } else {
                            ((next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
                        }
                    })
                    .collect();
                quantize_row(dt, &vals, row).unwrap();
            }
        }
        input.extend_from_slice(&bytes);
        let mut w = vec![0f32; k * rows];
        for (r, o) in bytes.chunks_exact(rb).zip(w.chunks_exact_mut(k)) {
            dequantize_row(dt, r, o).unwrap();
        }
        want.push(w);
    }
    let inp = dir.path().join("in.bin");
    let outp = dir.path().join("out.bin");
    std::fs::write(&inp, &input).unwrap();
    let run = Command::new(&exe).arg(&inp).arg(&outp).output().unwrap();
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "quant checks failed:\n{text}");
    assert!(text.contains("all checks passed"), "{text}");
    let got: Vec<f32> = std::fs::read(&outp)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let names = [
        "gemv mc1 bf16",
        "gemv mc3 bf16",
        "gemv mc8 bf16",
        "gemv mc1 f32",
        "gemv mc3 f32",
        "gemv mc8 f32",
        "gemm tile",
        "embedding",
    ];
    let mut at = 0;
    for (&(dt, k, rows, shift, raw), w) in cases.iter().zip(&want) {
        for name in names {
            let g = &got[at..at + k * rows];
            at += k * rows;
            if let Some(i) = (0..w.len()).find(|&i| g[i].to_bits() != w[i].to_bits()) {
                panic!(
                    "{dt} K={k} shift={shift} raw={raw} {name}: row {} weight {}: got {} want {}",
                    i / k,
                    i % k,
                    g[i],
                    w[i]
                );
            }
        }
    }
    assert_eq!(at, got.len(), "output length");
}

#[test]
fn copy_units_and_partials() {
    assert_eq!(copy_unit(&[7168, 7168, 7168, 256, 512]), 16);
    assert_eq!(copy_unit(&[6840, 6840, 6840, 0, 0]), 4);
    assert_eq!(copy_unit(&[6, 6, 6, 0, 0]), 1);
    let (lse, total) = partial_bytes(64, 28, 128);
    assert_eq!(lse, 64 * 28 * 128 * 4);
    assert_eq!(total, lse + 64 * 28 * 4);
}

#[test]
fn open_without_device_is_a_clear_error() {
    if super::driver_present() {
        eprintln!("cuda: a driver is present; open() is exercised by the device tests");
        return;
    }
    let e = super::open(0)
        .err()
        .expect("open must fail without a driver")
        .to_string();
    assert!(
        e.contains("cuda") && (e.contains("driver") || e.contains("no CUDA kernels")),
        "{e}"
    );
}

/// What the op harness (backend::harness, tests/ops.rs) cannot see from outside: quantized
/// kernels against tighter bounds than a CPU that quantizes activations allows, and the
/// sampler replayed inside a captured graph (needs a GPU; skipped otherwise).
mod device {
    use crate::backend::{Backend, TRef};
    use crate::tensor::{DType, Shape};
    use half::bf16;

    /// The device, or None (test skipped) where none opens; with REEL_REQUIRE_CUDA=1 (set by
    /// scripts/gpu-check.sh) a device that does not open fails the test instead.
    fn backend() -> Option<Box<dyn Backend>> {
        match super::super::open(0) {
            Ok(b) => Some(b),
            Err(e) if std::env::var("REEL_REQUIRE_CUDA").is_ok_and(|v| v == "1") => {
                panic!("REEL_REQUIRE_CUDA=1 but the CUDA backend did not open: {e}")
            }
            Err(e) => {
                eprintln!("cuda: skipped ({e})");
                None
            }
        }
    }

    /// xorshift; uniform in [-1, 1).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
        fn bf16s(&mut self, n: usize) -> Vec<bf16> {
            (0..n).map(|_| bf16::from_f32(self.next())).collect()
        }
    }

    fn upload_bf16(be: &mut dyn Backend, v: &[bf16], dims: &[usize]) -> TRef {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let b = be.alloc(bytes.len()).unwrap();
        be.write(b, 0, &bytes).unwrap();
        TRef::new(b, 0, DType::BF16, Shape::new(dims))
    }

    fn upload_f32(be: &mut dyn Backend, v: &[f32], dims: &[usize]) -> TRef {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let b = be.alloc(bytes.len()).unwrap();
        be.write(b, 0, &bytes).unwrap();
        TRef::new(b, 0, DType::F32, Shape::new(dims))
    }

    /// `x[m, k] @ w[n, k]^T (+ bias)` in f64.
    fn matmul_ref(
        x: &[f64],
        w: &[f64],
        bias: Option<&[f64]>,
        m: usize,
        n: usize,
        k: usize,
    ) -> Vec<f64> {
        (0..m * n)
            .map(|i| {
                let (r, c) = (i / n, i % n);
                let dot: f64 = (0..k).map(|j| x[r * k + j] * w[c * k + j]).sum();
                dot + bias.map_or(0.0, |b| b[c])
            })
            .collect()
    }

    fn upload_i32(be: &mut dyn Backend, v: &[i32]) -> TRef {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let b = be.alloc(bytes.len().max(4)).unwrap();
        be.write(b, 0, &bytes).unwrap();
        TRef::new(b, 0, DType::I32, Shape::new(&[v.len().max(1)]))
    }

    /// An output buffer poisoned with NaN (0xFFFF in bf16), so unwritten elements fail.
    fn poisoned(be: &mut dyn Backend, dt: DType, dims: &[usize]) -> TRef {
        let n: usize = dims.iter().product();
        let bytes = vec![0xFFu8; dt.bytes_for(n)];
        let b = be.alloc(bytes.len()).unwrap();
        be.write(b, 0, &bytes).unwrap();
        TRef::new(b, 0, dt, Shape::new(dims))
    }

    /// ||out - ref|| / ||ref|| with NaN failing.
    fn rel_err(out: &[f32], reference: &[f64]) -> f64 {
        assert_eq!(out.len(), reference.len());
        let (mut num, mut den) = (0.0f64, 0.0f64);
        for (o, r) in out.iter().zip(reference) {
            assert!(o.is_finite(), "non-finite output {o}");
            num += (*o as f64 - r).powi(2);
            den += r * r;
        }
        (num / den.max(1e-30)).sqrt()
    }

    fn f(v: &[bf16]) -> Vec<f64> {
        v.iter().map(|x| x.to_f64()).collect()
    }

    /// `vals` [rows, k] quantized row by row and loaded as a weight; with the dequantized
    /// values (what the kernels must reproduce).
    fn quantized_weight(
        be: &mut dyn Backend,
        dt: DType,
        vals: &[f32],
        rows: usize,
        k: usize,
    ) -> (TRef, Vec<f32>) {
        use crate::backend::HostBytes;
        use crate::quant::{dequantize_row, quantize_row, row_bytes};
        let rb = row_bytes(dt, k).unwrap();
        let mut bytes = vec![0u8; rb * rows];
        let mut deq = vec![0f32; rows * k];
        for ((src, dst), back) in vals
            .chunks_exact(k)
            .zip(bytes.chunks_exact_mut(rb))
            .zip(deq.chunks_exact_mut(k))
        {
            quantize_row(dt, src, dst).unwrap();
            dequantize_row(dt, dst, back).unwrap();
        }
        let buf = be.load_weight(HostBytes::from_vec(bytes)).unwrap();
        (TRef::new(buf, 0, dt, Shape::new(&[rows, k])), deq)
    }

    /// Quantized weights on the device against "dequantize, then multiply" in f64: the GEMV
    /// (bf16 and f32 x, f32 out) must agree to f32 summation error, the GEMM (weights rounded
    /// to bf16 for the tensor cores) to a few bf16 ulps, and the embedding bit for bit.
    #[test]
    fn quant_matmul_and_embedding_exact() {
        let Some(mut be) = backend() else { return };
        let be = be.as_mut();
        let mut rng = Rng(0xC0FF_EE11);
        for dt in [DType::Q8_0, DType::Q4K, DType::Q6K] {
            // (M, N, K, x bf16): GEMV bf16, GEMV f32 with an 8-row slice tail, GEMM, GEMV f32 at
            // M > 8 (sliced), a K with several smem chunks of x (M = 8, f32).
            for (m, n, k, xb) in [
                (1usize, 77usize, 3584usize, true),
                (3, 300, 768, false),
                (70, 133, 1024, true),
                (11, 20, 512, false),
                (8, 9, 2304, false),
            ] {
                let wv: Vec<f32> = (0..n * k).map(|_| rng.next() * 0.1).collect();
                let (wt, wq) = quantized_weight(be, dt, &wv, n, k);
                let bias = rng.bf16s(n);
                let bt = upload_bf16(be, &bias, &[n]);
                let x: Vec<f32> = rng.bf16s(m * k).iter().map(|v| v.to_f32()).collect();
                let xt = if xb {
                    let xv: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
                    upload_bf16(be, &xv, &[m, k])
                } else {
                    upload_f32(be, &x, &[m, k])
                };
                let out = poisoned(be, DType::F32, &[m, n]);
                be.matmul(xt, wt, Some(bt), out).unwrap();
                let mut raw = vec![0u8; m * n * 4];
                be.read(out.buf, 0, &mut raw).unwrap();
                let got: Vec<f32> = raw
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                let as64 = |v: &[f32]| v.iter().map(|&e| e as f64).collect::<Vec<_>>();
                let reference = matmul_ref(&as64(&x), &as64(&wq), Some(&f(&bias)), m, n, k);
                let e = rel_err(&got, &reference);
                let gemm = m > 8 && xb;
                let bound = if gemm { 4e-3 } else { 1e-5 };
                assert!(
                    e < bound,
                    "{dt} {m}x{n}x{k} x bf16 {xb}: rel err {e} >= {bound}"
                );
            }
            // Embedding: the dequantized rows, bit for bit (f32 out).
            let (v, d) = (6usize, 512usize);
            let tv: Vec<f32> = (0..v * d).map(|_| rng.next() * 3.0).collect();
            let (tt, tq) = quantized_weight(be, dt, &tv, v, d);
            let ids = [5, 0, 3, 3];
            let it = upload_i32(be, &ids);
            let out = poisoned(be, DType::F32, &[ids.len(), d]);
            be.embedding(tt, it, out).unwrap();
            let mut raw = vec![0u8; ids.len() * d * 4];
            be.read(out.buf, 0, &mut raw).unwrap();
            for (t, &id) in ids.iter().enumerate() {
                for j in 0..d {
                    let o = (t * d + j) * 4;
                    let g = f32::from_le_bytes([raw[o], raw[o + 1], raw[o + 2], raw[o + 3]]);
                    let w = tq[id as usize * d + j];
                    assert_eq!(g.to_bits(), w.to_bits(), "{dt} embedding id {id} col {j}");
                }
            }
        }
    }

    /// The sampler inside a captured graph: its arguments live in a device buffer, so one graph
    /// replayed after the host rewrites them samples with the new ones, and every draw equals
    /// the CPU twin exactly; the token comes back through the pinned slots.
    #[test]
    fn sample_replays_in_a_graph_and_matches_the_twin() {
        use crate::backend::sample::sample_row;
        use crate::backend::SampleArgs;
        let Some(mut be) = backend() else { return };
        let be = be.as_mut();
        let mut rng = Rng(2024);
        let v = 152_064;
        let x: Vec<bf16> = (0..v).map(|_| bf16::from_f32(rng.next() * 8.0)).collect();
        let xf: Vec<f32> = x.iter().map(|b| b.to_f32()).collect();
        let xt = upload_bf16(be, &x, &[1, v]);
        let base = SampleArgs {
            temperature: 0.9,
            top_k: 40,
            top_p: 0.95,
            seed: 11,
            step: 0,
            uniform: None,
        };
        let at = upload_i32(be, &base.to_words());
        let out = upload_i32(be, &[-7]);
        assert!(be.capture_begin().unwrap());
        be.sample(xt, at, out).unwrap();
        let g = be.capture_end().unwrap();
        for step in 0..9u32 {
            let a = SampleArgs {
                step,
                top_k: [0, 40, 1][step as usize % 3],
                top_p: [1.0, 0.95, 0.5][step as usize / 3],
                ..base
            };
            be.write(at.buf, at.offset, &a.to_bytes()).unwrap();
            be.replay(g).unwrap();
            let p = be.read_token_start(out).unwrap();
            let got = be.read_token_wait(p).unwrap();
            assert_eq!(got, sample_row(&xf, &a.to_words()), "{a:?}");
        }
        be.drop_graph(g);
    }
}
