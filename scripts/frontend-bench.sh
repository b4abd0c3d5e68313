# Sourced by eval-batch.sh and followup-ttft.sh (needs ROOT, CACHE, LAYERS and die()):
# MODEL, the 7B-shaped random checkpoint with LAYERS decoder layers (made once into CACHE by
# synth-7b.sh), and REEL, the reel binary (REEL_BIN, else a release build).
MODEL="$CACHE/synth-7b-l$LAYERS"
if [ ! -f "$MODEL/config.json" ]; then
  mkdir -p "$CACHE"
  echo "$(basename "$0"): writing the synthetic checkpoint to $MODEL" >&2
  "$ROOT/scripts/synth-7b.sh" "$MODEL" "$LAYERS"
fi
if [ -n "${REEL_BIN:-}" ]; then
  REEL="$REEL_BIN"
else
  (cd "$ROOT" && cargo build --release --quiet --bin reel) || die "cargo build failed"
  REEL="$ROOT/target/release/reel"
fi
