#!/usr/bin/env python3
"""Writes a Qwen2.5-VL-7B-shaped checkpoint with random bf16 weights, cut to a few decoder
layers, as a Hugging Face checkpoint directory `reel` loads like the real one: config.json with
the 7B dimensions, model.safetensors with the transformers tensor names, the real Qwen2.5
tokenizer (tests/fixtures/real_tokenizer) and the fixture model's chat template and
preprocessor config. For timing whole front-end runs (`reel eval`, `reel run`) at the real
shape; the outputs are meaningless.

Usage: synth_checkpoint.py OUT_DIR [--layers 4] [--vision-depth 32] [--seed 0]
Needs only numpy.
"""
import argparse
import json
import os
import shutil
import struct
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")

# Qwen2.5-VL-7B-Instruct's config.json (Video-R1's checkpoints share it).
TEXT = dict(hidden=3584, inter=18944, heads=28, kv_heads=4, vocab=152064)
VIS = dict(hidden=1280, inter=3420, heads=16, out=3584, patch=14, temporal=2, merge=2)


def config(layers, depth):
    full = [7, 15, 23, 31]
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "hidden_act": "silu",
        "hidden_size": TEXT["hidden"],
        "image_token_id": 151655,
        "initializer_range": 0.02,
        "intermediate_size": TEXT["inter"],
        "max_position_embeddings": 128000,
        "max_window_layers": 28,
        "model_type": "qwen2_5_vl",
        "num_attention_heads": TEXT["heads"],
        "num_hidden_layers": layers,
        "num_key_value_heads": TEXT["kv_heads"],
        "rms_norm_eps": 1e-06,
        "rope_scaling": {"mrope_section": [16, 24, 24], "rope_type": "default", "type": "default"},
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.49.0",
        "use_cache": True,
        "use_sliding_window": False,
        "video_token_id": 151656,
        "vision_config": {
            "depth": depth,
            "fullatt_block_indexes": [i for i in full if i < depth],
            "hidden_act": "silu",
            "hidden_size": VIS["hidden"],
            "in_chans": 3,
            "intermediate_size": VIS["inter"],
            "model_type": "qwen2_5_vl",
            "num_heads": VIS["heads"],
            "out_hidden_size": VIS["out"],
            "patch_size": VIS["patch"],
            "spatial_merge_size": VIS["merge"],
            "spatial_patch_size": VIS["patch"],
            "temporal_patch_size": VIS["temporal"],
            "tokens_per_second": 2,
            "window_size": 112,
        },
        "vision_end_token_id": 151653,
        "vision_start_token_id": 151652,
        "vision_token_id": 151654,
        "vocab_size": TEXT["vocab"],
    }


def tensors(layers, depth):
    """(name, shape, kind): kind is 'w' (random, std 0.02), 'b' (small bias) or 'norm' (ones)."""
    h, i, v = TEXT["hidden"], TEXT["inter"], TEXT["vocab"]
    hd = h // TEXT["heads"]
    kv = TEXT["kv_heads"] * hd
    out = [("model.embed_tokens.weight", [v, h], "w")]
    for l in range(layers):
        p = f"model.layers.{l}."
        out += [
            (p + "input_layernorm.weight", [h], "norm"),
            (p + "self_attn.q_proj.weight", [h, h], "w"),
            (p + "self_attn.q_proj.bias", [h], "b"),
            (p + "self_attn.k_proj.weight", [kv, h], "w"),
            (p + "self_attn.k_proj.bias", [kv], "b"),
            (p + "self_attn.v_proj.weight", [kv, h], "w"),
            (p + "self_attn.v_proj.bias", [kv], "b"),
            (p + "self_attn.o_proj.weight", [h, h], "w"),
            (p + "post_attention_layernorm.weight", [h], "norm"),
            (p + "mlp.gate_proj.weight", [i, h], "w"),
            (p + "mlp.up_proj.weight", [i, h], "w"),
            (p + "mlp.down_proj.weight", [h, i], "w"),
        ]
    out += [("model.norm.weight", [h], "norm"), ("lm_head.weight", [v, h], "w")]
    vh, vi = VIS["hidden"], VIS["inter"]
    out.append(("visual.patch_embed.proj.weight", [vh, 3, VIS["temporal"], VIS["patch"], VIS["patch"]], "w"))
    for b in range(depth):
        p = f"visual.blocks.{b}."
        out += [
            (p + "norm1.weight", [vh], "norm"),
            (p + "norm2.weight", [vh], "norm"),
            (p + "attn.qkv.weight", [3 * vh, vh], "w"),
            (p + "attn.qkv.bias", [3 * vh], "b"),
            (p + "attn.proj.weight", [vh, vh], "w"),
            (p + "attn.proj.bias", [vh], "b"),
            (p + "mlp.gate_proj.weight", [vi, vh], "w"),
            (p + "mlp.gate_proj.bias", [vi], "b"),
            (p + "mlp.up_proj.weight", [vi, vh], "w"),
            (p + "mlp.up_proj.bias", [vi], "b"),
            (p + "mlp.down_proj.weight", [vh, vi], "w"),
            (p + "mlp.down_proj.bias", [vh], "b"),
        ]
    m = vh * VIS["merge"] ** 2
    out += [
        ("visual.merger.ln_q.weight", [vh], "norm"),
        ("visual.merger.mlp.0.weight", [m, m], "w"),
        ("visual.merger.mlp.0.bias", [m], "b"),
        ("visual.merger.mlp.2.weight", [VIS["out"], m], "w"),
        ("visual.merger.mlp.2.bias", [VIS["out"]], "b"),
    ]
    return out


def bf16(x):
    """float32 array -> bf16 bit patterns (round to nearest even)."""
    u = x.astype(np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vision-depth", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if not 1 <= a.layers <= 28 or not 1 <= a.vision_depth <= 32:
        sys.exit("synth_checkpoint.py: --layers must be 1..28 and --vision-depth 1..32")
    os.makedirs(a.out, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    lut_w = bf16(rng.standard_normal(1 << 16, dtype=np.float32) * 0.02)
    lut_b = bf16(rng.standard_normal(1 << 16, dtype=np.float32) * 0.01)
    specs = tensors(a.layers, a.vision_depth)
    header, offset = {}, 0
    for name, shape, _ in specs:
        n = 2 * int(np.prod(shape))
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": "pt"}
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    path = os.path.join(a.out, "model.safetensors")
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for name, shape, kind in specs:
            n = int(np.prod(shape))
            if kind == "norm":
                x = np.ones(n, np.float32)
            else:
                # Values drawn from a table of 65,536 normal samples: as good as fresh draws for
                # timing, and fast enough for billions of weights.
                lut = lut_w if kind == "w" else lut_b
                step = 1 << 26
                for s in range(0, n, step):
                    c = min(step, n - s)
                    f.write(lut[rng.integers(0, 1 << 16, size=c, dtype=np.uint16)].tobytes())
                continue
            f.write(bf16(x).tobytes())
    os.replace(tmp, path)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(config(a.layers, a.vision_depth), f, indent=2)
    with open(os.path.join(a.out, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 151643, "pad_token_id": 151643, "do_sample": False,
                   "eos_token_id": [151645, 151643], "transformers_version": "4.49.0"}, f, indent=2)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(FIX, "real_tokenizer", name), a.out)
    for name in ("chat_template.json", "preprocessor_config.json"):
        shutil.copy(os.path.join(FIX, "model", name), a.out)
    print(f"{a.out}: {len(specs)} tensors, {offset / 1e9:.2f} GB, {a.layers} layers, "
          f"vision depth {a.vision_depth}")


if __name__ == "__main__":
    main()
