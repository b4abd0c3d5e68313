#!/usr/bin/env bash
# Builds the libFuzzer targets on the stable toolchain (SanitizerCoverage instrumentation, as
# cargo-fuzz applies it with --sanitizer none) and runs one of them:
#
#   fuzz/fuzz.sh TARGET [SECONDS] [libFuzzer flags...]     (default 600 s)
#   fuzz/fuzz.sh build                                     (build every target only)
#
# A run starts from the committed inputs (tests/fuzz/TARGET/corpus and crashers) and writes what
# it finds to fuzz/corpus/TARGET; a crash is saved under fuzz/artifacts/TARGET/. Inputs worth
# keeping are merged into the committed corpus with
#   target/fuzz/<host>/release/TARGET -merge=1 tests/fuzz/TARGET/corpus fuzz/corpus/TARGET
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: fuzz/fuzz.sh TARGET [SECONDS] [libFuzzer flags...]}
secs=${2:-600}
shift $(($# < 2 ? $# : 2))
host=$(rustc -vV | sed -n 's/^host: //p')
# --target keeps the instrumentation off build scripts and proc macros. No CUDA kernels: the
# parsers are host code.
RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing" \
NVCC= CUDA_HOME= CUDA_PATH= CUDA_PIP_VENV=/nonexistent CUDA_KERNELS_REQUIRED=0 \
    cargo build --release --manifest-path fuzz/Cargo.toml --target "$host" \
    --target-dir target/fuzz --bins
[ "$target" = build ] && exit 0
bin=target/fuzz/$host/release/$target
mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
dirs=("fuzz/corpus/$target")
for d in "tests/fuzz/$target/corpus" "tests/fuzz/$target/crashers"; do
    [ -d "$d" ] && dirs+=("$d")
done
# Scratch files of the targets go to a folder removed afterwards.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
TMPDIR=$scratch "$bin" -max_total_time="$secs" -print_final_stats=1 -max_len=65536 \
    -artifact_prefix="fuzz/artifacts/$target/" "$@" "${dirs[@]}"
