#!/usr/bin/env bash
# Prints the ptxas resource table of docs/gpu-results.md (registers per target, stack, spills,
# static shared memory) by compiling every kernels/*.cu to a cubin per target with -Xptxas -v.
# Needs only nvcc (NVCC, default: the setup venv); no GPU.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
NVCC="${NVCC:-$(ls "$ROOT"/.venv-cuda/lib/python3*/site-packages/nvidia/cu13/bin/nvcc 2>/dev/null | head -1)}"
[ -x "$NVCC" ] || { echo "ptxas-table: nvcc not found (set NVCC or run scripts/setup.sh)" >&2; exit 1; }
ARCHS="${ARCHS:-80 86 89 90a}"
TMP="$(mktemp -d)"; trap 'rm -rf "$TMP"' EXIT
for src in "$ROOT"/kernels/*.cu; do
  for a in $ARCHS; do
    echo "### $(basename "$src") sm_$a"
    "$NVCC" -cubin -O3 -std=c++17 -I "$ROOT/kernels" -arch="sm_$a" -Xptxas -v \
      "$src" -o "$TMP/k.cubin" 2>&1
  done
done | python3 -c '
import re, sys
rows, order = {}, []
cur_file = cur_arch = fn = None
for line in sys.stdin:
    m = re.match(r"### (\S+) sm_(\S+)", line)
    if m:
        cur_file, cur_arch = m.groups(); continue
    m = re.search(r"Function properties for (\S+)", line)
    if m:
        fn = m.group(1); continue
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
    if m and fn:
        key = (cur_file, fn)
        if key not in rows:
            rows[key] = {"regs": {}, "stack": 0, "spill": [0, 0], "smem": 0}; order.append(key)
        r = rows[key]
        if cur_arch == "90a": r["stack"] = int(m.group(1))
        r["spill"][0] += int(m.group(2)); r["spill"][1] += int(m.group(3)); continue
    m = re.search(r"Compiling entry function .(\w+). for", line)
    if m:
        fn = m.group(1); continue
    m = re.search(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?", line)
    if m and fn and (cur_file, fn) in rows:
        r = rows[(cur_file, fn)]
        r["regs"][cur_arch] = m.group(1)
        if m.group(2): r["smem"] = max(r["smem"], int(m.group(2)))
print("| file | kernel | registers sm_80/86/89/90a | stack B (sm_90a) | spill stores/loads (all) | static smem B |")
print("|---|---|---|---|---|---|")
for f, k in order:
    r = rows[(f, k)]
    if not r["regs"]:
        continue  # a device function (no entry of its own)
    regs = "/".join(r["regs"].get(a, "?") for a in ["80", "86", "89", "90a"])
    st, sp, sm = r["stack"], r["spill"], r["smem"]
    print(f"| {f} | {k} | {regs} | {st} | {sp[0]}/{sp[1]} | {sm} |")
'
