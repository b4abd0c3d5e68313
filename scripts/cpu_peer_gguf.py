#!/usr/bin/env python3
"""Writes the synthetic text model `reel bench --synthetic 7b --layers N` times as a GGUF that
llama.cpp loads as `qwen2`: the Qwen2.5-VL-7B language model's shape (hidden 3584, 28 heads,
4 KV heads, FFN 18944, vocab 152064, rope theta 1e6) cut to N layers, random bf16 weights, and
the real Qwen2.5 tokenizer (tests/fixtures/real_tokenizer). Used by scripts/cpu-peer.sh.

Usage: cpu_peer_gguf.py OUT.gguf [--layers 4] [--tokenizer DIR] [--seed 0]
Needs the `gguf` and `numpy` packages (scripts/setup.sh puts them in .venv-py).
"""

import argparse
import json
import os
import sys

import numpy as np

try:
    import gguf
except ImportError:
    sys.exit("cpu_peer_gguf.py: the gguf package is missing (pip install gguf==0.19.0 numpy)")

HIDDEN = 3584
HEADS = 28
KV_HEADS = 4
HEAD_DIM = HIDDEN // HEADS
FFN = 18944
VOCAB = 152064
CTX = 128000
ROPE_THETA = 1_000_000.0
EPS = 1e-6


def bf16(rng, shape, scale):
    """Normal(0, scale) values as bf16 bits (round to nearest even), uint16 array."""
    x = (rng.standard_normal(size=shape, dtype=np.float32) * np.float32(scale)).view(np.uint32)
    rounded = (x + 0x7FFF + ((x >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def tokenizer_vocab(tok_dir):
    with open(os.path.join(tok_dir, "tokenizer.json"), encoding="utf-8") as f:
        tj = json.load(f)
    vocab = tj["model"]["vocab"]
    added = {t["id"]: t for t in tj["added_tokens"]}
    size = max(max(vocab.values()), max(added)) + 1
    if size > VOCAB:
        sys.exit(f"cpu_peer_gguf.py: tokenizer has {size} tokens, more than the model's {VOCAB}")
    tokens = [f"[PAD{i}]" for i in range(VOCAB)]
    types = [gguf.TokenType.UNUSED] * VOCAB
    for text, i in vocab.items():
        tokens[i] = text
        types[i] = gguf.TokenType.NORMAL
    for i, t in added.items():
        tokens[i] = t["content"]
        types[i] = gguf.TokenType.CONTROL if t.get("special") else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    ids = {t["content"]: i for i, t in added.items()}
    return tokens, types, merges, ids


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--tokenizer",
        default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "real_tokenizer"),
    )
    a = ap.parse_args()
    if a.layers < 1:
        sys.exit("cpu_peer_gguf.py: --layers must be at least 1")
    tokens, types, merges, ids = tokenizer_vocab(a.tokenizer)

    tmp = a.out + ".partial"
    w = gguf.GGUFWriter(tmp, "qwen2")
    w.add_name(f"reel synthetic Qwen2.5-VL-7B text, {a.layers} layers")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_BF16)
    w.add_context_length(CTX)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_block_count(a.layers)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(ROPE_THETA)
    w.add_layer_norm_rms_eps(EPS)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(ids["<|im_end|>"])
    w.add_bos_token_id(ids["<|endoftext|>"])
    w.add_pad_token_id(ids["<|endoftext|>"])
    w.add_add_bos_token(False)

    rng = np.random.default_rng(a.seed)
    bf = gguf.GGMLQuantizationType.BF16
    f32 = gguf.GGMLQuantizationType.F32

    def mat(name, rows, cols, scale):
        w.add_tensor(name, bf16(rng, (rows, cols), scale), raw_dtype=bf)

    def vec(name, n, center, scale):
        v = (center + rng.standard_normal(n, dtype=np.float32) * np.float32(scale)).astype(np.float32)
        w.add_tensor(name, v, raw_dtype=f32)

    mat("token_embd.weight", VOCAB, HIDDEN, 0.02)
    kv = KV_HEADS * HEAD_DIM
    for i in range(a.layers):
        p = f"blk.{i}."
        vec(p + "attn_norm.weight", HIDDEN, 1.0, 0.05)
        mat(p + "attn_q.weight", HIDDEN, HIDDEN, 0.02)
        vec(p + "attn_q.bias", HIDDEN, 0.0, 0.1)
        mat(p + "attn_k.weight", kv, HIDDEN, 0.02)
        vec(p + "attn_k.bias", kv, 0.0, 0.1)
        mat(p + "attn_v.weight", kv, HIDDEN, 0.02)
        vec(p + "attn_v.bias", kv, 0.0, 0.1)
        mat(p + "attn_output.weight", HIDDEN, HIDDEN, 0.02)
        vec(p + "ffn_norm.weight", HIDDEN, 1.0, 0.05)
        mat(p + "ffn_gate.weight", FFN, HIDDEN, 0.02)
        mat(p + "ffn_up.weight", FFN, HIDDEN, 0.02)
        mat(p + "ffn_down.weight", HIDDEN, FFN, 0.02)
    vec("output_norm.weight", HIDDEN, 1.0, 0.05)
    mat("output.weight", VOCAB, HIDDEN, 0.02)

    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, a.out)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


if __name__ == "__main__":
    main()
