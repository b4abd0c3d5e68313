#!/usr/bin/env bash
# Time to first token of a follow-up question about an already-encoded video, against the first
# question's, in `reel chat` on a Qwen2.5-VL-7B-shaped checkpoint with random weights
# (scripts/synth-7b.sh). The video is the Video-R1 evaluation input by default: 16 s of
# 448x448 at fps 2 = 32 frames -> 16,384 patches -> 4,096 visual tokens. The first question runs
# the vision tower and prefills everything; the follow-up reuses the KV pages of the whole
# conversation so far (prefix cache) and prefills only its own turn.
#
# Usage: scripts/followup-ttft.sh [--seconds S] [--size PX] [--layers L] [--device cpu|cuda]
#                                 [--threads T]
# Environment: REEL_EVALBENCH_CACHE (default ~/.cache/reel-evalbench), REEL_BIN, REEL_SYNTH_BIN.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${REEL_EVALBENCH_CACHE:-$HOME/.cache/reel-evalbench}"
SECONDS_=16 SIZE=448 LAYERS=4 DEVICE=cpu THREADS=2

die() { echo "followup-ttft.sh: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  [ $# -ge 2 ] || die "$1 needs a value"
  case "$1" in
    --seconds) SECONDS_="$2" ;;
    --size) SIZE="$2" ;;
    --layers) LAYERS="$2" ;;
    --device) DEVICE="$2" ;;
    --threads) THREADS="$2" ;;
    *) die "unknown argument '$1' (see the header of $0)" ;;
  esac
  shift 2
done
for v in SECONDS_ SIZE LAYERS THREADS; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer"
done
command -v ffmpeg >/dev/null || die "needs the ffmpeg command (Debian package ffmpeg) to make the clip"

# shellcheck source=scripts/frontend-bench.sh
. "$ROOT/scripts/frontend-bench.sh"
CLIP="$CACHE/clip-${SECONDS_}s-${SIZE}.mp4"
if [ ! -f "$CLIP" ]; then
  ffmpeg -loglevel error -f lavfi -i "testsrc2=size=${SIZE}x${SIZE}:rate=30:duration=$SECONDS_" \
    -c:v libx264 -pix_fmt yuv420p "$CLIP.part.mp4" && mv "$CLIP.part.mp4" "$CLIP"
fi

LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT
printf 'What happens in the video?\n/stats\nWhat colour is the largest shape?\n/stats\n' |
  "$REEL" chat --model "$MODEL" --video "$CLIP" --device "$DEVICE" --threads "$THREADS" \
    --max-new-tokens 4 --temperature 0 >/dev/null 2>"$LOG" || { cat "$LOG" >&2; die "reel chat failed"; }
echo "reel chat, Qwen2.5-VL-7B shape with $LAYERS decoder layers (random bf16 weights), --device $DEVICE;"
echo "video: $SECONDS_ s of ${SIZE}x${SIZE} (testsrc2, H.264)"
grep -E "^prompt [0-9]+ tokens" "$LOG" | sed -e '1s/^/first question: /' -e '2s/^/follow-up:      /'
