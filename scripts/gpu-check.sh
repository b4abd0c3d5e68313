#!/usr/bin/env bash
# GPU check for the CUDA backend: kernel unit tests, the op harness (every op table case on
# CUDA against its reference), the end-to-end golden tests on CUDA, compute-sanitizer, the op
# table's perf mode as the kernel table (benches/ops.rs) and `reel bench` end to end per weight
# preset. Writes a report (markdown) to append to docs/gpu-results.md.
#
#   scripts/gpu-check.sh prepare   # on a build machine (cargo + nvcc): builds the test
#                                  # executables into gpu-bin/ (kernels for sm_80/86/89/90a)
#   scripts/gpu-check.sh run       # on the GPU machine: runs gpu-bin/*, writes the report
#   scripts/gpu-check.sh           # both, when this machine has cargo and a GPU
#
# The lent H100/H200 machines have the CUDA 13 driver, nvcc and compute-sanitizer but no Rust
# toolchain and no network, so the usual flow is: `prepare` here, then carry gpu-bin/ to the
# GPU machine packed as gpu-bin.tar.xz (git-ignored, so name it in the call's carry; `prepare`
# prints its size, which must stay under the 64 MiB a call may carry) and call `run` there,
# which unpacks it. Release test executables link only libc/libm/libgcc_s; the FFmpeg feature
# is left out (--no-default-features) so no libav* is needed there. Set REEL_GPU_FEATURES to build with other features.
#
# Environment: NVCC (prepare; default: the setup venv), OUT (report folder; default gpu-out/),
# REEL_BENCH_FILTER (substrings of the op table's `op shape`, space-separated, to time only
# those rows, e.g. "matmul attention_paged"), REEL_GPU_STEPS (groups to run:
# tests,sanitizer,bench,e2e,profile), REEL_GPU_GEMMS (REEL_GEMM candidates timed end to end
# besides the default; default "tiles cublaslt"). Kernel candidates behind selectors (REEL_GEMM
# and the others in README's environment table) are rows with variants in the op table, so
# the tests and bench groups check and time every value. REEL_TEST_DEVICE=cuda is exported
# for every test binary (the golden tests pick the CUDA backend from it), and REEL_REQUIRE_CUDA=1
# (the kernel tests fail rather than skip when the backend does not open). A step whose output
# says "cuda: skipped" counts as failed.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
MODE="${1:-all}"
BIN="$ROOT/gpu-bin"

prepare() {
  set -e
  if [ -z "${NVCC:-}" ]; then
    NVCC="$(ls "$ROOT"/.venv-cuda/lib/python3*/site-packages/nvidia/cu13/bin/nvcc 2>/dev/null | head -1 || true)"
    [ -n "$NVCC" ] || NVCC="$(ls /work/main/.venv-cuda/lib/python3*/site-packages/nvidia/cu13/bin/nvcc 2>/dev/null | head -1 || true)"
  fi
  [ -n "$NVCC" ] || { echo "gpu-check prepare: nvcc not found (set NVCC or run scripts/setup.sh)"; exit 1; }
  export NVCC CUDA_KERNELS_REQUIRED=1
  local feats="${REEL_GPU_FEATURES---no-default-features}"
  echo "== building release test executables (NVCC=$NVCC, features: ${feats:-default})"
  local json
  if ! json="$(nice -n 10 cargo test --release $feats --no-run --message-format=json 2>/dev/null)"; then
    echo "   (features '$feats' failed to build; falling back to the default features, which link FFmpeg)"
    feats=""
    json="$(nice -n 10 cargo test --release --no-run --message-format=json 2>/dev/null)" || {
      echo "cargo test --no-run failed; rerun without --message-format to see why"; exit 1; }
  fi
  # The CLI binary too: tests run it through CARGO_BIN_EXE_reel (a build-machine path).
  nice -n 10 cargo build --release $feats --bin reel >/dev/null 2>&1 || true
  # The op table's perf mode (benches/ops.rs, harness = false: a plain release binary).
  local bench_json
  bench_json="$(nice -n 10 cargo build --release $feats --bench ops --message-format=json 2>/dev/null)" || {
    echo "cargo build --bench ops failed; rerun without --message-format to see why"; exit 1; }
  rm -rf "$BIN" && mkdir -p "$BIN"
  # "executable":"/path" of each test target; name them by target (lib -> reel-lib).
  echo "$json" | python3 -c '
import json, sys, shutil, os
out = sys.argv[1]
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    exe = m.get("executable")
    if m.get("reason") != "compiler-artifact" or not exe or not m.get("profile", {}).get("test"):
        continue
    t = m["target"]
    name = "reel-lib" if "lib" in t["kind"] else t["name"]
    # Only the targets that exercise the GPU; the CPU-only suites stay home (carry budget).
    if name not in ("reel-lib", "ops", "golden_text", "golden_vision", "vision", "batching"):
        continue
    shutil.copy2(exe, os.path.join(out, name))
    print("  ", name)
' "$BIN"
  echo "$bench_json" | python3 -c '
import json, sys, shutil, os
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "bench" in m["target"]["kind"]:
        shutil.copy2(m["executable"], os.path.join(sys.argv[1], "ops-bench"))
        print("   ops-bench")
' "$BIN"
  [ -x "$BIN/ops-bench" ] || { echo "gpu-check prepare: no ops bench executable"; exit 1; }
  [ -x target/release/reel ] && cp target/release/reel "$BIN/reel-cli"
  for f in "$BIN"/*; do strip --strip-debug "$f" 2>/dev/null || true; done
  # Tests that find fixtures through CARGO_MANIFEST_DIR see this path; `run` links it.
  echo "$ROOT" > "$BIN/MANIFEST_DIR"
  # The executables embed every kernel for every target (~20 MB of fatbins each), so they
  # travel packed: xz brings ~130 MB down to ~14 MB, inside the 64 MiB a device call carries.
  rm -f "$ROOT/gpu-bin.tar.xz"
  tar -C "$ROOT" -cJf "$ROOT/gpu-bin.tar.xz" gpu-bin
  echo "gpu-bin: $(du -sh "$BIN" | cut -f1), packed gpu-bin.tar.xz: $(du -sh "$ROOT/gpu-bin.tar.xz" | cut -f1) (carry gpu-bin.tar.xz with the call; limit 64 MiB with the tree)"
  set +e
}

run() {
  local out="${OUT:-$ROOT/gpu-out}"
  mkdir -p "$out"
  local report="$out/gpu-report.md" log="$out/gpu-check.log"
  : > "$log"
  if [ ! -d "$BIN" ] && [ -f "$ROOT/gpu-bin.tar.xz" ]; then
    echo "unpacking gpu-bin.tar.xz"
    tar -C "$ROOT" -xJf "$ROOT/gpu-bin.tar.xz" 2>/dev/null ||
      python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$ROOT/gpu-bin.tar.xz" "$ROOT" ||
      { echo "gpu-check run: cannot unpack gpu-bin.tar.xz (needs xz or python3)"; exit 1; }
  fi
  [ -d "$BIN" ] || { echo "gpu-check run: $BIN is missing; run 'scripts/gpu-check.sh prepare' on a build machine"; exit 1; }
  # REEL_REQUIRE_CUDA=1: the kernel tests fail instead of skipping when no device opens.
  export REEL_TEST_DEVICE=cuda REEL_REQUIRE_CUDA=1 RUST_BACKTRACE=1
  if ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu-check run: nvidia-smi finds no GPU here; run this on the GPU machine"
    exit 1
  fi
  # Fixtures are found through the build machine's path baked into the executables.
  local baked
  baked="$(cat "$BIN/MANIFEST_DIR" 2>/dev/null || true)"
  if [ -n "$baked" ] && [ "$baked" != "$ROOT" ] && [ ! -e "$baked" ]; then
    mkdir -p "$(dirname "$baked")" && ln -s "$ROOT" "$baked" && echo "linked $baked -> $ROOT"
  fi
  if [ -x "$BIN/reel-cli" ] && [ ! -e "$ROOT/target/release/reel" ]; then
    mkdir -p "$ROOT/target/release" && cp "$BIN/reel-cli" "$ROOT/target/release/reel"
  fi
  local dev drv
  dev="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
  drv="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)"
  {
    echo "## GPU check $(date -u +%Y-%m-%dT%H:%MZ) on ${dev:-unknown GPU} (driver ${drv:-?})"
    echo
    echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (dirty)')"
    echo
    echo "| step | result | seconds |"
    echo "|---|---|---|"
  } > "$report"
  local failed=0
  step() {  # step NAME TIMEOUT CMD...
    local name="$1" limit="$2"; shift 2
    echo "== $name: $*" | tee -a "$log"
    local t0=$SECONDS rc
    timeout "$limit" "$@" > "$out/step.log" 2>&1
    rc=$?
    cat "$out/step.log" >> "$log"
    # A backend that failed to open shows up as a skip, not a failure: count it as one.
    if [ $rc -eq 0 ] && grep -q "cuda: skipped" "$out/step.log"; then rc=3; fi
    local dt=$((SECONDS - t0)) res="pass"
    [ $rc -eq 124 ] && res="TIMEOUT (${limit}s)"
    [ $rc -eq 3 ] && res="FAIL (CUDA backend did not open: cuda: skipped)"
    [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ $rc -ne 3 ] && res="FAIL (rc $rc)"
    [ $rc -ne 0 ] && failed=1
    echo "| $name | $res | $dt |" >> "$report"
    echo "   -> $res in ${dt}s" | tee -a "$log"
    grep -E "test result|panicked|FAIL|ERROR|error" "$out/step.log" | tail -n 5 || true
  }
  have() { [ -x "$BIN/$1" ]; }
  # REEL_GPU_STEPS picks groups (comma-separated: tests, sanitizer, bench, e2e, profile; default
  # all), so
  # the check can be split over several calls when one must stay under a time limit.
  want() { [[ ",${REEL_GPU_STEPS:-tests,sanitizer,bench,e2e,profile}," == *",$1,"* ]]; }

  want tests && have reel-lib && step "kernel tests vs f64 (lib backend::cuda)" 180 "$BIN/reel-lib" backend::cuda --test-threads=1 --nocapture
  want tests && have ops && step "op harness CUDA vs CPU (tests/ops.rs)" 240 "$BIN/ops" --test-threads=1 --nocapture
  for g in golden_text golden_vision vision; do
    want tests && have "$g" || continue
    # golden_vision runs the CLI, which links FFmpeg when built with the video feature.
    if [ "$g" = golden_vision ] && ldd "$ROOT/target/release/reel" 2>/dev/null | grep -q "not found"; then
      echo "| golden $g | skipped: the reel CLI needs FFmpeg libraries this machine lacks | - |" >> "$report"
      continue
    fi
    step "golden $g (REEL_TEST_DEVICE=cuda)" 240 "$BIN/$g" --test-threads=1 --nocapture
  done
  want tests && have batching && step "batched greedy = alone (bf16, tests/batching.rs)" 180 \
    "$BIN/batching" cuda_bf16_batch --test-threads=1 --nocapture
  if ! want sanitizer; then
    :
  elif command -v compute-sanitizer >/dev/null 2>&1; then
    have reel-lib && step "compute-sanitizer memcheck (kernel tests)" 240 \
      compute-sanitizer --tool memcheck --error-exitcode 9 "$BIN/reel-lib" backend::cuda::tests::device --test-threads=1
    have reel-lib && step "compute-sanitizer racecheck (kernel tests)" 240 \
      compute-sanitizer --tool racecheck --error-exitcode 9 "$BIN/reel-lib" backend::cuda::tests::device --test-threads=1
    # The op harness on the CUDA backend alone: every kernel over the table's shapes
    # (attention and the GEMMs use shared memory most: racecheck takes those).
    have ops && step "compute-sanitizer memcheck (op harness)" 300 \
      env REEL_OPS_BACKEND=cuda compute-sanitizer --tool memcheck --error-exitcode 9 "$BIN/ops" --test-threads=1
    have ops && step "compute-sanitizer racecheck (op harness: attention, matmul)" 300 \
      env REEL_OPS_BACKEND=cuda REEL_OPS_FILTER=attention,matmul,rms_norm,argmax,sample \
      compute-sanitizer --tool racecheck --error-exitcode 9 "$BIN/ops" ops_match_reference --test-threads=1
  else
    echo "| compute-sanitizer | not installed | - |" >> "$report"
  fi
  if want bench && have ops-bench; then
    echo "== kernel benchmarks (op table perf mode, benches/ops.rs)" | tee -a "$log"
    local t0=$SECONDS
    # shellcheck disable=SC2086
    if timeout 300 "$BIN/ops-bench" --backend cuda ${REEL_BENCH_FILTER:-} > "$out/bench.txt" 2>&1; then
      echo "| kernel benchmarks | pass | $((SECONDS - t0)) |" >> "$report"
    else
      echo "| kernel benchmarks | FAIL | $((SECONDS - t0)) |" >> "$report"; failed=1
    fi
    cat "$out/bench.txt" >> "$log"
    { echo; echo "### Kernel benchmarks"; echo; grep -E "^(Device|\|)" "$out/bench.txt" || echo "(no table; see gpu-check.log)"; } >> "$report"
  fi
  # End to end on synthetic weights of the real 7B shape, one run per weight preset: prefill,
  # decode at 1k/4k/16k cached tokens, and (bf16) the Video-R1 input's time to first token.
  if want e2e && [ -x "$BIN/reel-cli" ]; then
    { echo; echo "### End to end (reel bench, synthetic 7B)"; echo; } >> "$report"
    local w extra
    for w in bf16 q8_0 q4_k_m; do
      extra=""
      [ "$w" = bf16 ] && extra="--video-r1"
      step "reel bench --weights $w" 300 "$BIN/reel-cli" bench --synthetic 7b --device cuda \
        --weights "$w" --prompt-len 512 --decode-tokens 64 --decode-at 1024,4096,16384 $extra
      { echo; echo "\`\`\`"; sed -n '1,60p' "$out/step.log"; echo "\`\`\`"; } >> "$report"
    done
  fi
  # Candidates end to end: the Video-R1 time to first token with each REEL_GEMM value (the
  # kernel table above has them per shape; bf16 weights, the default is the first row above).
  if want e2e && [ -x "$BIN/reel-cli" ]; then
    local g
    for g in ${REEL_GPU_GEMMS:-tiles cublaslt}; do
      step "reel bench --video-r1 REEL_GEMM=$g" 240 env REEL_GEMM="$g" "$BIN/reel-cli" bench \
        --synthetic 7b --device cuda --weights bf16 --prompt-len 512 --decode-tokens 16 --video-r1
      { echo; echo "\`\`\`"; sed -n '1,40p' "$out/step.log"; echo "\`\`\`"; } >> "$report"
    done
  fi
  # Per-kernel profile of the Video-R1 input's time to first token and of a decode run:
  # Nsight Systems' kernel summary (all launches, low overhead), and Nsight Compute's per-kernel
  # summary of the decode run (kernel replay is slow: decode only, a few tokens).
  if want profile && [ -x "$BIN/reel-cli" ]; then
    { echo; echo "### Per-kernel profile"; echo; } >> "$report"
    local ttft=(bench --synthetic 7b --device cuda --weights bf16 --prompt-len 128 --decode-tokens 4 --video-r1)
    local dec=(bench --synthetic 7b --device cuda --weights bf16 --prompt-len 128 --decode-tokens 16)
    if command -v nsys >/dev/null 2>&1; then
      step "nsys: Video-R1 time to first token" 240 nsys profile -o "$out/ttft" --force-overwrite true \
        --stats=false "$BIN/reel-cli" "${ttft[@]}"
      nsys stats --report cuda_gpu_kern_sum --format csv -o "$out/ttft" "$out/ttft.nsys-rep" >/dev/null 2>&1 || true
      step "nsys: decode" 180 nsys profile -o "$out/decode" --force-overwrite true \
        --stats=false "$BIN/reel-cli" "${dec[@]}"
      nsys stats --report cuda_gpu_kern_sum --format csv -o "$out/decode" "$out/decode.nsys-rep" >/dev/null 2>&1 || true
      local f
      for f in ttft decode; do
        { echo; echo "nsys kernel summary, $f (top 25 by total time):"; echo; echo "\`\`\`";
          head -n 26 "$out/${f}_cuda_gpu_kern_sum.csv" 2>/dev/null | cut -c1-220 || echo "(no summary)";
          echo "\`\`\`"; } >> "$report"
      done
    else
      echo "| nsys | not installed | - |" >> "$report"
    fi
    if command -v ncu >/dev/null 2>&1; then
      step "ncu: decode per-kernel summary" 240 ncu --print-summary per-kernel \
        --metrics gpu__time_duration.sum "$BIN/reel-cli" "${dec[@]}"
      { echo; echo "\`\`\`"; grep -E "^  [a-z_0-9]+|gpu__time_duration" "$out/step.log" | head -n 80; echo "\`\`\`"; } >> "$report"
    else
      echo "| ncu | not installed | - |" >> "$report"
    fi
  fi
  echo >> "$report"
  echo "Full log: gpu-check.log" >> "$report"
  echo
  cat "$report"
  echo
  echo "report: $report (append it to docs/gpu-results.md)"
  return $failed
}

case "$MODE" in
  prepare) prepare ;;
  run) run ;;
  all)
    if command -v cargo >/dev/null 2>&1; then prepare; fi
    run ;;
  *) echo "usage: $0 [prepare|run|all]"; exit 2 ;;
esac
