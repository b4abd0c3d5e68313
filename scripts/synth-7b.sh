#!/usr/bin/env bash
# Writes a Qwen2.5-VL-7B-shaped checkpoint cut to L decoder layers (the full 32-block vision
# tower) with reel-synth-checkpoint's random weights, set up for chat: the real Qwen2.5
# tokenizer (tests/fixtures/real_tokenizer) and its special-token ids, the fixture model's chat
# template and preprocessor config. For timing whole front-end runs (`reel eval`, `reel chat`)
# at the real shape; the outputs are meaningless.
#
# Usage: scripts/synth-7b.sh OUT_DIR [LAYERS (default 4)]
# Environment: REEL_SYNTH_BIN (a reel-synth-checkpoint binary instead of building one).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
die() { echo "synth-7b.sh: $*" >&2; exit 1; }
[ $# -ge 1 ] || die "usage: synth-7b.sh OUT_DIR [LAYERS]"
OUT="$1" LAYERS="${2:-4}"
[[ "$LAYERS" =~ ^[1-9][0-9]*$ ]] || die "LAYERS must be a positive integer"

if [ -n "${REEL_SYNTH_BIN:-}" ]; then
  SYNTH="$REEL_SYNTH_BIN"
else
  (cd "$ROOT" && cargo build --release --quiet -p reel-quantize --bin reel-synth-checkpoint) \
    || die "cargo build failed"
  SYNTH="$ROOT/target/release/reel-synth-checkpoint"
fi

TPL="$(mktemp -d)"
trap 'rm -rf "$TPL"' EXIT
FIX="$ROOT/tests/fixtures"
cp "$FIX/real_tokenizer/tokenizer.json" "$FIX/real_tokenizer/tokenizer_config.json" \
  "$FIX/model/chat_template.json" "$FIX/model/preprocessor_config.json" "$TPL/"
python3 - "$FIX/model/config.json" "$TPL" <<'PY'
import json, sys
src, tpl = sys.argv[1], sys.argv[2]
c = json.load(open(src))
# Qwen2.5-VL's special-token ids in the real tokenizer.
c.update(bos_token_id=151643, eos_token_id=151645, vision_start_token_id=151652,
         vision_end_token_id=151653, vision_token_id=151654, image_token_id=151655,
         video_token_id=151656, vocab_size=152064)
json.dump(c, open(f"{tpl}/config.json", "w"), indent=2)
json.dump({"bos_token_id": 151643, "pad_token_id": 151643, "do_sample": False,
           "eos_token_id": [151645, 151643]}, open(f"{tpl}/generation_config.json", "w"), indent=2)
PY
rm -rf "$OUT.part"
"$SYNTH" --out "$OUT.part" --shape 7b --layers "$LAYERS" --template "$TPL" >&2
mv "$OUT.part" "$OUT"
