#!/usr/bin/env bash
# `reel eval` throughput, one item at a time against --max-batch B, on a Qwen2.5-VL-7B-shaped
# checkpoint with random weights (scripts/synth-7b.sh: cut to a few decoder layers, the full
# 32-block vision tower). The items are Video-R1 multiple-choice questions about small images;
# an item stops at --max-new-tokens unless the random model happens to produce <|im_end|>.
#
# Prints, per run, the generated tokens, the wall time of the items (from the results'
# timings) and the aggregate tokens/s, then the ratio of the batched rate to the one-at-a-time
# rate. Runs alternate (1, B, B, 1, ...) because this machine's speed swings between runs.
#
# Usage: scripts/eval-batch.sh [--batch B] [--items N] [--new-tokens T] [--rounds R]
#                              [--layers L] [--threads T] [--device cpu|cuda]
# Environment: REEL_EVALBENCH_CACHE (default ~/.cache/reel-evalbench: the checkpoint, ~5.4 GB
# at 4 layers), REEL_BIN (a reel binary instead of building one), REEL_SYNTH_BIN.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${REEL_EVALBENCH_CACHE:-$HOME/.cache/reel-evalbench}"
BATCH=8 ITEMS=8 NEW=1024 ROUNDS=1 LAYERS=4 THREADS=2 DEVICE=cpu

die() { echo "eval-batch.sh: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  [ $# -ge 2 ] || die "$1 needs a value"
  case "$1" in
    --batch) BATCH="$2" ;;
    --items) ITEMS="$2" ;;
    --new-tokens) NEW="$2" ;;
    --rounds) ROUNDS="$2" ;;
    --layers) LAYERS="$2" ;;
    --threads) THREADS="$2" ;;
    --device) DEVICE="$2" ;;
    *) die "unknown argument '$1' (see the header of $0)" ;;
  esac
  shift 2
done
for v in BATCH ITEMS NEW ROUNDS LAYERS THREADS; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "--$(echo "$v" | tr 'A-Z' 'a-z') must be a positive integer"
done
case "$DEVICE" in cpu|cuda) ;; *) die "--device: cpu or cuda" ;; esac

# shellcheck source=scripts/frontend-bench.sh
. "$ROOT/scripts/frontend-bench.sh"

DATA="$CACHE/items-$ITEMS"
mkdir -p "$DATA/media"
cp "$ROOT/tests/fixtures/eval/media/scene.png" "$ROOT/tests/fixtures/eval/media/sign.png" "$DATA/media/"
python3 - "$DATA/items.json" "$ITEMS" <<'EOF'
import json, sys
out, n = sys.argv[1], int(sys.argv[2])
items = []
for i in range(n):
    items.append({
        "problem_id": i + 1,
        "problem": f"Question {i + 1}: which object is closest to the camera in this picture?",
        "data_type": "image",
        "path": "./media/" + ("scene.png" if i % 2 == 0 else "sign.png"),
        "problem_type": "multiple choice",
        "options": ["A. a car", "B. a tree", "C. a sign", "D. a person"],
        "solution": "<answer>C</answer>",
        "data_source": "synthetic",
    })
json.dump(items, open(out, "w"), indent=1)
EOF


OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
run() { # batch round
  local res="$OUT/r-$1-$2.jsonl"
  "$REEL" eval --model "$MODEL" --data "$DATA/items.json" --out "$res" --device "$DEVICE" \
    --threads "$THREADS" --max-batch "$1" --max-new-tokens "$NEW" --json \
    >"$OUT/s-$1-$2.json" 2>"$OUT/e-$1-$2.log" || { cat "$OUT/e-$1-$2.log" >&2; die "reel eval failed"; }
}
for r in $(seq 1 "$ROUNDS"); do
  echo "eval-batch.sh: round $r/$ROUNDS" >&2
  if [ $((r % 2)) = 1 ]; then run 1 "$r"; run "$BATCH" "$r"; else run "$BATCH" "$r"; run 1 "$r"; fi
done

python3 - "$OUT" "$ROUNDS" "$BATCH" "$ITEMS" "$NEW" "$LAYERS" "$DEVICE" <<'EOF'
import json, statistics, subprocess, sys
out, rounds, batch, items, new, layers, device = sys.argv[1:]
rate = {}
print(f"{items} items, {new} new tokens each, Qwen2.5-VL-7B shape with {layers} decoder layers, "
      f"random bf16 weights, --device {device}")
print()
print("| round | --max-batch | generated tokens | items' wall time | aggregate tokens/s |")
print("|---|---|---|---|---|")
for r in range(1, int(rounds) + 1):
    for b in ("1", batch):
        t = json.load(open(f"{out}/s-{b}-{r}.json"))["total"]
        rate.setdefault(b, []).append(t["tokens_per_s"])
        print(f"| {r} | {b} | {t['generated_tokens']} | {t['wall_s']:.1f} s | {t['tokens_per_s']:.2f} |")
one, many = statistics.median(rate["1"]), statistics.median(rate[batch])
print()
print(f"--max-batch {batch} / one at a time: {many / one:.2f}x (medians of {rounds} round(s))")
EOF
