#!/usr/bin/env bash
# Side-by-side CPU speed of reel and llama.cpp on the same model shape: the Qwen2.5-VL-7B
# language model cut to a few layers, random weights, as bf16, q8_0 and q4_k_m.
#
# What it does (idempotent; everything downloaded or built lives in the cache folder, nothing in
# the repository):
#  1. cmake: installs Debian's `cmake` with apt-get if it is missing (needs root).
#  2. llama.cpp: downloads the llama-cpp-python 0.3.36 sdist from PyPI with pip (its vendored
#     llama.cpp is commit 0c1e57098) and builds llama-bench and llama-quantize once, CPU only,
#     -DGGML_NATIVE=ON, into the cache.
#  3. The model: scripts/cpu_peer_gguf.py writes the synthetic model as a llama.cpp `qwen2` GGUF
#     (bf16, the real Qwen2.5 tokenizer from tests/fixtures/real_tokenizer); llama-quantize makes
#     the Q8_0 and Q4_K_M files from it, Q4_K_M with the same type per tensor as reel's model
#     (the 28-layer mix, see mix28 below).
#  4. Builds reel (release) and runs, per round and weight type, llama-bench and `reel bench`
#     alternately (the order flips every round), then prints the medians and the reel/llama.cpp
#     ratios. Memory bandwidth on a shared machine swings from run to run, so only ratios from
#     the same run mean anything.
#
# Usage: scripts/cpu-peer.sh [--rounds N] [--threads T] [--layers L] [--types bf16,q8_0,q4_k_m]
#                            [--decode N] [--cache DIR]
# Environment: REEL_PEER_CACHE (default ~/.cache/reel-peer), PYTHON (a python with `gguf` and
# `numpy`; default .venv-py/bin/python, else python3), REEL_BIN (a reel binary to use instead of
# building one), REEL_CPU_ISA (passed through to reel).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${REEL_PEER_CACHE:-$HOME/.cache/reel-peer}"
ROUNDS=3
THREADS=2
LAYERS=4
TYPES="bf16,q8_0,q4_k_m"
DECODE=16
LLAMA_PY_VERSION=0.3.36

die() { echo "cpu-peer.sh: $*" >&2; exit 1; }
need_value() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) need_value "$@"; ROUNDS="$2"; shift 2 ;;
    --threads) need_value "$@"; THREADS="$2"; shift 2 ;;
    --layers) need_value "$@"; LAYERS="$2"; shift 2 ;;
    --types) need_value "$@"; TYPES="$2"; shift 2 ;;
    --decode) need_value "$@"; DECODE="$2"; shift 2 ;;
    --cache) need_value "$@"; CACHE="$2"; shift 2 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
for v in ROUNDS THREADS LAYERS DECODE; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "--$(echo "$v" | tr 'A-Z' 'a-z') must be a positive integer, got '${!v}'"
done
IFS=, read -r -a TYPE_LIST <<< "$TYPES"
for t in "${TYPE_LIST[@]}"; do
  case "$t" in bf16|q8_0|q4_k_m) ;; *) die "--types: unknown type '$t' (bf16, q8_0, q4_k_m)" ;; esac
done
mkdir -p "$CACHE"

# 1. cmake
if ! command -v cmake >/dev/null 2>&1; then
  echo "cpu-peer.sh: cmake is missing; installing Debian's cmake with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq cmake >/dev/null || die "could not install cmake"
fi

# 2. llama.cpp from the llama-cpp-python sdist
SDIST="$CACHE/llama_cpp_python-$LLAMA_PY_VERSION.tar.gz"
SRC="$CACHE/llama_cpp_python-$LLAMA_PY_VERSION/vendor/llama.cpp"
BUILD="$CACHE/build"
if [ ! -f "$SDIST" ]; then
  echo "cpu-peer.sh: downloading llama-cpp-python $LLAMA_PY_VERSION (sdist) from PyPI" >&2
  python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python \
    "llama-cpp-python==$LLAMA_PY_VERSION" -d "$CACHE" || die "pip download failed"
fi
if [ ! -d "$SRC" ]; then
  tar -xzf "$SDIST" -C "$CACHE" || die "cannot unpack $SDIST"
fi
if [ ! -x "$BUILD/bin/llama-bench" ] || [ ! -x "$BUILD/bin/llama-quantize" ]; then
  echo "cpu-peer.sh: building llama.cpp (CPU, native) in $BUILD; this takes a while" >&2
  cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF >"$CACHE/cmake.log" 2>&1 \
    || die "cmake configure failed, see $CACHE/cmake.log"
  cmake --build "$BUILD" --target llama-bench llama-quantize -j "$(nproc)" >"$CACHE/build.log" 2>&1 \
    || die "llama.cpp build failed, see $CACHE/build.log"
fi
LLAMA_BENCH="$BUILD/bin/llama-bench"
LLAMA_QUANTIZE="$BUILD/bin/llama-quantize"

# 3. the model
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x "$ROOT/.venv-py/bin/python" ]; then PY="$ROOT/.venv-py/bin/python"; else PY=python3; fi
fi
"$PY" -c "import gguf, numpy" 2>/dev/null \
  || die "$PY lacks the gguf/numpy packages (scripts/setup.sh installs them in .venv-py)"
BASE="$CACHE/synth-${LAYERS}l"
if [ ! -f "$BASE-bf16.gguf" ]; then
  echo "cpu-peer.sh: writing $BASE-bf16.gguf" >&2
  "$PY" "$ROOT/scripts/cpu_peer_gguf.py" "$BASE-bf16.gguf" --layers "$LAYERS" || die "GGUF writer failed"
fi
# The quantized files hold the same types per tensor as reel's synthetic model, which is the
# first L of the 28-layer model and so keeps the 28-layer Q4_K_M mix: attn_v and ffn_down at
# Q6_K in the layers llama.cpp's use_more_bits(i, 28) picks. llama-quantize alone would choose by
# the file's own L layers (for L = 4: layers 2-3 instead of 0-2, 18 MB fewer per token).
model() { # type -> its GGUF
  if [ "$1" = bf16 ]; then echo "$BASE-bf16.gguf"; else echo "$BASE-$1-of28.gguf"; fi
}
mix28() { # the --tensor-type flags of the 28-layer Q4_K_M mix for layers 0..L-1
  local i
  for ((i = 0; i < LAYERS; i++)); do
    local ty=q4_k
    if ((i < 28 / 8 || i >= 7 * 28 / 8 || (i - 28 / 8) % 3 == 2)); then ty=q6_k; fi
    printf -- '--tensor-type blk\\.%d\\.ffn_down=%s --tensor-type blk\\.%d\\.attn_v=%s ' "$i" "$ty" "$i" "$ty"
  done
}
for t in "${TYPE_LIST[@]}"; do
  [ "$t" = bf16 ] && continue
  f="$(model "$t")"
  if [ ! -f "$f" ]; then
    q=$(echo "$t" | tr 'a-z' 'A-Z')
    flags=()
    [ "$t" = q4_k_m ] && read -r -a flags <<<"$(mix28)"
    echo "cpu-peer.sh: quantizing to $q with llama-quantize ${flags[*]}" >&2
    "$LLAMA_QUANTIZE" "${flags[@]}" "$BASE-bf16.gguf" "$f.partial" "$q" "$THREADS" \
      >"$CACHE/quantize-$t.log" 2>&1 \
      || { rm -f "$f.partial"; die "llama-quantize $q failed, see $CACHE/quantize-$t.log"; }
    mv "$f.partial" "$f"
  fi
done

# 4. reel
REEL="${REEL_BIN:-}"
if [ -z "$REEL" ]; then
  (cd "$ROOT" && cargo build --release --quiet --bin reel) || die "cargo build failed"
  REEL="$ROOT/target/release/reel"
fi

OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
# Weight types whose llama-bench runs with --repack 0: its default repacked (on AMX CPUs, AMX)
# buffers crashed for them on this machine; the table says so.
declare -A NO_REPACK=()
run_llama() { # type round
  local t="$1" r="$2" rc=0 extra=()
  [ -n "${NO_REPACK[$t]:-}" ] && extra=(--repack 0)
  "$LLAMA_BENCH" -m "$(model "$t")" -t "$THREADS" -p 128,512 -n "$DECODE" -r 1 "${extra[@]}" -o json \
    >"$OUT/llama-$t-$r.json" 2>"$OUT/llama-$t-$r.err" || rc=$?
  [ "$rc" = 0 ] && return
  if [ -z "${NO_REPACK[$t]:-}" ]; then
    echo "cpu-peer.sh: llama-bench failed on $t with its default repacked weights (exit $rc); using --repack 0 for $t" >&2
    NO_REPACK[$t]=$rc
    echo "$t $rc" >>"$OUT/no-repack"
    run_llama "$t" "$r"
    return
  fi
  cat "$OUT/llama-$t-$r.err" >&2
  die "llama-bench failed"
}
run_reel() { # type round
  "$REEL" bench --device cpu --threads "$THREADS" --weights "$1" --layers "$LAYERS" \
    --prompt-len 128 --decode-tokens "$DECODE" --json >"$OUT/reel-$1-$2-128.json" \
    || die "reel bench failed"
  "$REEL" bench --device cpu --threads "$THREADS" --weights "$1" --layers "$LAYERS" \
    --prompt-len 512 --decode-tokens 1 --json >"$OUT/reel-$1-$2-512.json" \
    || die "reel bench failed"
}
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 "$ROUNDS"); do
  for t in "${TYPE_LIST[@]}"; do
    echo "cpu-peer.sh: round $r/$ROUNDS, $t" >&2
    if [ $((r % 2)) = 1 ]; then run_llama "$t" "$r"; run_reel "$t" "$r"; else run_reel "$t" "$r"; run_llama "$t" "$r"; fi
  done
done

CPU_MODEL="$(lscpu | sed -n 's/^Model name: *//p' | head -1)"
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"
FLAGS="$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|avx512f|avx512bw|avx512vl|avx512_bf16|avx512_vnni|avx_vnni|amx_bf16|amx_int8|amx_tile)$' | tr '\n' ' ')"
python3 - "$OUT" "$ROUNDS" "$TYPES" "$THREADS" "$LAYERS" "$CPU_MODEL" "$FLAGS" "$LOAD_BEFORE" "$LOAD_AFTER" <<'EOF'
import json, statistics, sys, datetime, os
out, rounds, types, threads, layers, cpu, flags, load0, load1 = sys.argv[1:]
rounds = int(rounds)
rows = []
reel_backend = llama_build = ""
for t in types.split(","):
    ll = {"pp128": [], "pp512": [], "tg": []}
    rl = {"pp128": [], "pp512": [], "tg": []}
    for r in range(1, rounds + 1):
        for e in json.load(open(f"{out}/llama-{t}-{r}.json")):
            llama_build = e.get("build_commit", llama_build)
            if e["n_gen"] == 0:
                ll[f"pp{e['n_prompt']}"].append(e["avg_ts"])
            else:
                ll["tg"].append(e["avg_ts"])
        a = json.load(open(f"{out}/reel-{t}-{r}-128.json"))
        b = json.load(open(f"{out}/reel-{t}-{r}-512.json"))
        reel_backend = a["backend"]
        rl["pp128"].append(a["prefill"]["tokens_per_s"])
        rl["tg"].append(a["decode"][0]["tokens_per_s"])
        rl["pp512"].append(b["prefill"]["tokens_per_s"])
    for key, what in [("tg", "decode"), ("pp128", "prefill 128 tokens"), ("pp512", "prefill 512 tokens")]:
        lm, rm = statistics.median(ll[key]), statistics.median(rl[key])
        # The same round's two runs, side by side: how far the machine moved the ratio.
        per = [r / l for l, r in zip(ll[key], rl[key])]
        rows.append((f"{what} {t}, tokens/s", lm, rm, rm / lm, min(per), max(per)))
print()
print(f"{datetime.date.today()}, {cpu}, {threads} threads, {layers} layers of the Qwen2.5-VL-7B text model")
print(f"CPU flags: {flags.strip()}")
print(f"llama.cpp {llama_build} (llama-cpp-python 0.3.36 sdist, CPU, native); reel: {reel_backend}")
print(f"medians of {rounds} alternating rounds; load average {load0} before, {load1} after")
if os.path.exists(f"{out}/no-repack"):
    for line in open(f"{out}/no-repack"):
        t, rc = line.split()
        print(f"llama.cpp ran {t} with --repack 0: with its default repacked weights llama-bench exited with {rc}")
print()
print("| | llama.cpp | reel | reel / llama.cpp | per round |")
print("|---|---|---|---|---|")
for what, lm, rm, ratio, lo, hi in rows:
    print(f"| {what} | {lm:.1f} | {rm:.1f} | {ratio:.2f} | {lo:.2f}-{hi:.2f} |")
EOF
