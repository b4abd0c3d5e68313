"""Cross-check of a GGUF file written by reel against the `gguf` Python package.

Usage: gguf_crosscheck.py FILE.gguf DUMP_DIR

DUMP_DIR holds expect.json (tensor list and typed metadata) and, per tensor i, i.src (the f32
source) and i.deq (reel's dequantization), raw little-endian f32. Checks, each printed on success:
- the file parses with gguf.GGUFReader; names, types and shapes (ggml order = reversed) match;
- gguf.quants.dequantize of every tensor equals reel's dequantization bit for bit;
- gguf.quants.quantize of the source equals reel's bytes for every type the package implements
  (it has no Q4_K/Q6_K quantizer; those are checked against ggml's C reference in src/quant);
- every metadata key has the written type and value.
Exits non-zero on the first mismatch.
"""
import json
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T, GGUFValueType as V

TYPES = {"q8_0": T.Q8_0, "q4_k": T.Q4_K, "q6_k": T.Q6_K, "bf16": T.BF16, "f16": T.F16, "f32": T.F32}


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def main():
    path, dump = sys.argv[1], sys.argv[2]
    with open(os.path.join(dump, "expect.json"), encoding="utf-8") as f:
        expect = json.load(f)
    r = gguf.GGUFReader(path)
    by_name = {t.name: t for t in r.tensors}
    if len(by_name) != len(expect["tensors"]):
        fail(f"{len(by_name)} tensors in file, {len(expect['tensors'])} expected")
    for e in expect["tensors"]:
        t = by_name.get(e["name"])
        if t is None:
            fail(f"tensor {e['name']} missing")
        qt = TYPES[e["type"]]
        if t.tensor_type != qt:
            fail(f"{e['name']}: type {t.tensor_type.name}, expected {qt.name}")
        shape = list(e["shape"])
        if len(shape) > 4:  # stored as [shape[0], rest]; the true shape is in reel.tensor_shape.*
            shape = [shape[0], int(np.prod(shape[1:]))]
        if [int(d) for d in t.shape] != shape[::-1]:
            fail(f"{e['name']}: ggml shape {list(t.shape)}, expected reversed {shape}")
        deq = np.asarray(gguf.quants.dequantize(t.data, qt), dtype=np.float32).reshape(-1)
        ours = np.fromfile(os.path.join(dump, f"{e['index']}.deq"), dtype="<f4")
        if deq.shape != ours.shape or not np.array_equal(deq.view(np.uint32), ours.view(np.uint32)):
            bad = np.flatnonzero(deq.view(np.uint32) != ours.view(np.uint32))[:5]
            fail(f"{e['name']} ({e['type']}): dequantization differs at {bad}: gguf {deq[bad]} reel {ours[bad]}")
        print(f"dequant exact {e['type']} {e['name']} ({deq.size} values)")
        src = np.fromfile(os.path.join(dump, f"{e['index']}.src"), dtype="<f4").reshape(shape)
        try:
            q = gguf.quants.quantize(src, qt)
        except NotImplementedError:
            print(f"quantize not implemented in gguf {e['type']} (skipped)")
            continue
        want = np.asarray(q).view(np.uint8).reshape(-1)
        got = np.asarray(t.data).view(np.uint8).reshape(-1)
        if not np.array_equal(want, got):
            bad = np.flatnonzero(want != got)[:5]
            fail(f"{e['name']} ({e['type']}): quantized bytes differ at {bad}: gguf {want[bad]} reel {got[bad]}")
        print(f"quantize bytes exact {e['type']} {e['name']} ({got.size} bytes)")

    for m in expect["metadata"]:
        key, typ, val = m["key"], m["type"], m["value"]
        f = r.fields.get(key)
        if f is None:
            fail(f"metadata {key} missing")
        if f.types[0] != V[typ]:
            fail(f"metadata {key}: type {f.types[0].name}, expected {typ}")
        if typ == "ARRAY":
            # (the package records no item type for an empty array)
            if val and f.types[-1] != V[m["item"]] and m["item"] != "ARRAY":
                fail(f"metadata {key}: item type {f.types[-1].name}, expected {m['item']}")
            if m["item"] == "ARRAY":
                continue  # the package does not decode nested arrays; parsing past them is the check
            got = f.contents()
            if m["item"] == "F32":
                ok = np.array_equal(np.asarray(got, dtype=np.float32), np.asarray(val, dtype=np.float32))
            else:
                ok = list(got) == val
        elif typ == "F32":
            ok = np.float32(f.contents()) == np.float32(val)
        else:
            ok = f.contents() == val
        if not ok:
            fail(f"metadata {key}: {f.contents()!r}, expected {val!r}")
    print(f"metadata ok ({len(expect['metadata'])} keys)")
    al = r.fields["general.alignment"].contents()
    for t in r.tensors:
        if t.data_offset % al:
            fail(f"{t.name}: data offset {t.data_offset} not aligned to {al}")
    print("alignment ok")


if __name__ == "__main__":
    main()
