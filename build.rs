//! Compiles `kernels/*.cu` into fatbins embedded in the binary, and generates the Rust side of
//! the kernel parameter structs (`kernels/params.h`) with bindgen so host and device agree on
//! layouts by construction (each one launchable: `DeviceRepr`).
//!
//! nvcc is looked up in `$NVCC`, `$CUDA_HOME/bin`, `$CUDA_PATH/bin`, `PATH`, then the setup venv
//! (`$CUDA_PIP_VENV`, default `.venv-cuda`). Without nvcc the build succeeds with no kernels and a
//! warning, unless `CUDA_KERNELS_REQUIRED=1` (CI, GPU machines), which makes it an error.
//! `REEL_PTXAS_VERBOSE=1` prints ptxas register/spill figures for every kernel as build warnings.
//! Spills and stack frames are always reported, except the small frame of the rope kernels
//! (accurate sin/cos slow-path argument reduction, see kernels/rope.cu); `REEL_PTXAS_STRICT=1` makes
//! any other spill or stack frame a build error.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const ENV_VARS: &[&str] = &[
    "NVCC",
    "CUDA_HOME",
    "CUDA_PATH",
    "CUDA_PIP_VENV",
    "CUDA_ARCHS",
    "CUDA_PTX_ARCH",
    "NVCC_CCBIN",
    "CUDA_KERNELS_REQUIRED",
    "REEL_PTXAS_VERBOSE",
    "REEL_PTXAS_STRICT",
    "PATH",
];

/// (module, kernel) pairs whose ptxas stack frame is expected: accurate sin/cos's Payne-Hanek
/// slow path keeps a small local array (kernels/rope.cu explains why it stays).
const EXPECTED_FRAMES: &[(&str, &str)] = &[("rope", "rope_mrope"), ("rope", "rope_vision")];

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    for v in ENV_VARS {
        println!("cargo:rerun-if-env-changed={v}");
    }
    let kdir = manifest.join("kernels");
    println!("cargo:rerun-if-changed=kernels");

    bind_params(&kdir, &out_dir);

    let mut sources: Vec<PathBuf> = std::fs::read_dir(&kdir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    sources.retain(|p| p.extension().is_some_and(|e| e == "cu"));
    sources.sort();
    for entry in std::fs::read_dir(&kdir).into_iter().flatten().flatten() {
        println!("cargo:rerun-if-changed={}", entry.path().display());
    }

    let required = env::var("CUDA_KERNELS_REQUIRED").is_ok_and(|v| v == "1");
    let nvcc = find_nvcc(&manifest);
    if let Some(p) = &nvcc {
        // Watch the compiler we found (never a missing path: that forces a rebuild every time).
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let archs = env::var("CUDA_ARCHS").unwrap_or_else(|_| "80,86,89,90a".into());
    let ptx_arch = env::var("CUDA_PTX_ARCH").unwrap_or_else(|_| "80".into());
    let verbose = env::var("REEL_PTXAS_VERBOSE").is_ok_and(|v| v == "1");
    let strict = env::var("REEL_PTXAS_STRICT").is_ok_and(|v| v == "1");

    let mut modules = Vec::new();
    match &nvcc {
        None if required => panic!(
            "CUDA_KERNELS_REQUIRED=1 but nvcc was not found (set NVCC or CUDA_HOME, or run scripts/setup.sh)"
        ),
        None => println!(
            "cargo:warning=nvcc not found (NVCC, CUDA_HOME, CUDA_PATH, PATH, .venv-cuda): building without CUDA kernels"
        ),
        Some(nvcc) => {
            let cuda13 = check_version(nvcc);
            // nvcc runs for several files at once (cargo's NUM_JOBS), each emitting all targets.
            let jobs: usize = env::var("NUM_JOBS").ok().and_then(|j| j.parse().ok()).unwrap_or(1).max(1);
            let mut cmds = Vec::new();
            for src in &sources {
                let stem = src.file_stem().unwrap().to_string_lossy().to_string();
                let out = out_dir.join(format!("{stem}.fatbin"));
                let mut cmd = Command::new(nvcc);
                cmd.args(["-fatbin", "-O3", "-std=c++17", "-lineinfo"]);
                cmd.arg("-I").arg(&kdir);
                cmd.args(["-Xptxas", "-warn-spills,-warn-lmem-usage,-v"]);
                if cuda13 {
                    // Uncompressed, so the kernel names can be checked in the embedded bytes.
                    cmd.arg("--compress-mode=none");
                }
                if let Ok(cc) = env::var("NVCC_CCBIN") {
                    cmd.arg("-ccbin").arg(cc);
                }
                for a in archs.split(',').filter(|a| !a.is_empty()) {
                    cmd.arg("-gencode").arg(format!("arch=compute_{a},code=sm_{a}"));
                }
                if ptx_arch != "none" {
                    cmd.arg("-gencode")
                        .arg(format!("arch=compute_{ptx_arch},code=compute_{ptx_arch}"));
                }
                cmd.arg(src).arg("-o").arg(&out);
                cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
                cmds.push((src.clone(), stem, out, cmd));
            }
            for batch in cmds.chunks_mut(jobs) {
                let children: Vec<_> = batch
                    .iter_mut()
                    .map(|(_, _, _, cmd)| {
                        cmd.spawn().unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()))
                    })
                    .collect();
                for (child, (src, stem, out, _)) in children.into_iter().zip(batch.iter()) {
                    let output = child.wait_with_output().expect("waiting for nvcc");
                    let stderr = String::from_utf8_lossy(&output.stderr);
                    if !output.status.success() {
                        panic!("nvcc failed on {}:\n{stderr}", src.display());
                    }
                    check_ptxas(stem, &stderr, verbose, strict, src);
                    modules.push((stem.clone(), out.clone()));
                }
            }
        }
    }

    let mut gen = String::new();
    gen.push_str("/// Embedded CUDA modules: (file stem, fatbin bytes).\n");
    gen.push_str("pub const MODULES: &[(&str, &[u8])] = &[\n");
    for (stem, path) in &modules {
        gen.push_str(&format!(
            "    ({stem:?}, include_bytes!({:?})),\n",
            path.display().to_string()
        ));
    }
    gen.push_str("];\n");
    gen.push_str(&format!(
        "/// Architectures the fatbins hold SASS for, plus the PTX fallback.\npub const ARCHS: &str = {:?};\n",
        if modules.is_empty() { String::new() } else { format!("sm_{archs} + compute_{ptx_arch}") }
    ));
    std::fs::write(out_dir.join("kernels_gen.rs"), gen).unwrap();
}

/// Reports spills and unexpected stack frames from ptxas's output (all figures when verbose);
/// with `strict` they fail the build.
fn check_ptxas(stem: &str, stderr: &str, verbose: bool, strict: bool, src: &Path) {
    let mut bad = Vec::new();
    for line in stderr.lines() {
        let expected = EXPECTED_FRAMES
            .iter()
            .any(|(s, f)| *s == stem && line.contains(&format!("'{f}'")));
        let problem = (line.contains("spill") && !line.contains(" 0 bytes spill"))
            || line.contains("stack frame")
            || line.contains("warning");
        // Indented "N bytes stack frame, ..." lines repeat what the named warnings say.
        let figures = line.trim_start().starts_with(|c: char| c.is_ascii_digit());
        if problem && !expected && !figures {
            bad.push(line.to_string());
            println!("cargo:warning={stem}: {line}");
        } else if verbose
            && (line.contains("Used") || line.contains("Compiling") || line.contains("bytes stack"))
        {
            println!("cargo:warning={stem}: {line}");
        }
    }
    if strict && !bad.is_empty() {
        panic!(
            "REEL_PTXAS_STRICT=1: ptxas reported spills or stack frames in {}:\n{}",
            src.display(),
            bad.join("\n")
        );
    }
}

fn bind_params(kdir: &Path, out_dir: &Path) {
    let header = kdir.join("params.h");
    let bindings = bindgen::Builder::default()
        .header(header.to_string_lossy())
        .allowlist_type("Reel.*")
        .allowlist_var("REEL_.*")
        .derive_default(true)
        .derive_debug(true)
        .layout_tests(false)
        .generate()
        .expect("bindgen failed on kernels/params.h");
    // Every struct may be a launch's by-value argument: plain C data, so DeviceRepr holds.
    let mut code = bindings.to_string();
    let structs: Vec<String> = code
        .split("pub struct ")
        .skip(1)
        .filter_map(|rest| {
            rest.split(|c: char| !c.is_alphanumeric() && c != '_')
                .next()
        })
        .map(str::to_string)
        .collect();
    for name in structs {
        code.push_str(&format!(
            "unsafe impl cudarc::driver::DeviceRepr for {name} {{}}\n"
        ));
    }
    std::fs::write(out_dir.join("params.rs"), code).unwrap();
}

fn find_nvcc(manifest: &Path) -> Option<PathBuf> {
    let exists = |p: PathBuf| p.is_file().then_some(p);
    if let Ok(p) = env::var("NVCC") {
        if let Some(p) = exists(PathBuf::from(p)) {
            return Some(p);
        }
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(h) = env::var(var) {
            if let Some(p) = exists(Path::new(&h).join("bin/nvcc")) {
                return Some(p);
            }
        }
    }
    if let Ok(path) = env::var("PATH") {
        for dir in env::split_paths(&path) {
            if let Some(p) = exists(dir.join("nvcc")) {
                return Some(p);
            }
        }
    }
    let venv = env::var("CUDA_PIP_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| manifest.join(".venv-cuda"));
    let lib = venv.join("lib");
    for entry in std::fs::read_dir(lib).into_iter().flatten().flatten() {
        let p = entry.path().join("site-packages/nvidia/cu13/bin/nvcc");
        if let Some(p) = exists(p) {
            return Some(p);
        }
    }
    None
}

/// Warns unless nvcc is CUDA 13.0; returns whether it is a 13.x release.
fn check_version(nvcc: &Path) -> bool {
    if let Ok(out) = Command::new(nvcc).arg("--version").output() {
        let s = String::from_utf8_lossy(&out.stdout);
        if !s.contains("release 13.0") {
            println!(
                "cargo:warning={} is not CUDA 13.0; PTX it emits may be too new for a 13.0 driver",
                nvcc.display()
            );
        }
        return s.contains("release 13.");
    }
    false
}
