"""Writes a Llama-2-7B-shaped F16 GGUF with seeded random weights, for the memory and speed
benchmarks (about 13.5 GB; created on demand in the cache folder, never committed).

    $PARITY_CACHE/venv/bin/python scripts/make-llama7b-f16.py [OUT]   # default $PARITY_CACHE/models/llama7b-random-f16.gguf

Only numpy is needed (the reference environment has it). Tensors are streamed to disk one at a time, so the script itself uses little
memory. Weights are drawn from one pool of normal(0, 0.02) values at seeded random offsets: random
enough for timing and memory, cheap to produce. The vocabulary is a synthetic SentencePiece one
(byte pieces plus generated words) so the engine and llama.cpp can tokenize prompts.
"""

import os
import struct
import sys
from pathlib import Path

import numpy as np

D, LAYERS, HEADS, FFN, VOCAB, CONTEXT = 4096, 32, 32, 11008, 32000, 4096
ALIGN = 32
GGML_F32, GGML_F16 = 0, 1


def gguf_string(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def kv(key, type_id, payload):
    return gguf_string(key) + struct.pack("<I", type_id) + payload


def kv_u32(key, v):
    return kv(key, 4, struct.pack("<I", v))


def kv_f32(key, v):
    return kv(key, 6, struct.pack("<f", v))


def kv_str(key, v):
    return kv(key, 8, gguf_string(v))


def kv_array(key, item_type, items, pack):
    return kv(key, 9, struct.pack("<IQ", item_type, len(items)) + b"".join(pack(i) for i in items))


def vocabulary():
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    rng = np.random.default_rng(7)
    letters = "abcdefghijklmnopqrstuvwxyz"
    seen = set(pieces)
    while len(pieces) < VOCAB:
        n = int(rng.integers(1, 8))
        word = "".join(letters[i] for i in rng.integers(0, 26, n))
        piece = ("\u2581" + word) if rng.random() < 0.6 else word
        if piece not in seen:
            seen.add(piece)
            pieces.append(piece)
            types.append(1)
    scores = [0.0, 0.0, 0.0] + [0.0] * 256 + [-float(i) for i in range(VOCAB - 259)]
    return pieces, scores, types


def tensors():
    """(name, shape row-major, ggml type) in file order."""
    out = [("token_embd.weight", (VOCAB, D), GGML_F16)]
    for layer in range(LAYERS):
        p = f"blk.{layer}."
        out += [
            (p + "attn_norm.weight", (D,), GGML_F32),
            (p + "attn_q.weight", (D, D), GGML_F16),
            (p + "attn_k.weight", (D, D), GGML_F16),
            (p + "attn_v.weight", (D, D), GGML_F16),
            (p + "attn_output.weight", (D, D), GGML_F16),
            (p + "ffn_norm.weight", (D,), GGML_F32),
            (p + "ffn_gate.weight", (FFN, D), GGML_F16),
            (p + "ffn_up.weight", (FFN, D), GGML_F16),
            (p + "ffn_down.weight", (D, FFN), GGML_F16),
        ]
    out += [("output_norm.weight", (D,), GGML_F32), ("output.weight", (VOCAB, D), GGML_F16)]
    return out


def main():
    cache = Path(os.environ.get("PARITY_CACHE", Path.home() / ".cache" / "parity"))
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else cache / "models" / "llama7b-random-f16.gguf"
    if out.exists():
        print(f"make-llama7b-f16: {out} exists ({out.stat().st_size / 1e9:.2f} GB); delete it to rebuild")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    pieces, scores, types = vocabulary()
    meta = [
        kv_str("general.architecture", "llama"),
        kv_str("general.name", "llama7b-random-f16"),
        kv_u32("llama.context_length", CONTEXT),
        kv_u32("llama.embedding_length", D),
        kv_u32("llama.block_count", LAYERS),
        kv_u32("llama.feed_forward_length", FFN),
        kv_u32("llama.rope.dimension_count", D // HEADS),
        kv_u32("llama.attention.head_count", HEADS),
        kv_u32("llama.attention.head_count_kv", HEADS),
        kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5),
        kv_f32("llama.rope.freq_base", 10000.0),
        kv_u32("general.file_type", 1),
        kv_str("tokenizer.ggml.model", "llama"),
        kv_array("tokenizer.ggml.tokens", 8, pieces, gguf_string),
        kv_array("tokenizer.ggml.scores", 6, scores, lambda v: struct.pack("<f", v)),
        kv_array("tokenizer.ggml.token_type", 5, types, lambda v: struct.pack("<i", v)),
        kv_u32("tokenizer.ggml.unknown_token_id", 0),
        kv_u32("tokenizer.ggml.bos_token_id", 1),
        kv_u32("tokenizer.ggml.eos_token_id", 2),
    ]
    specs = tensors()
    infos, offset = [], 0
    for name, shape, ty in specs:
        size = int(np.prod(shape)) * (4 if ty == GGML_F32 else 2)
        ne = list(reversed(shape))
        infos.append(gguf_string(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne) + struct.pack("<IQ", ty, offset))
        offset += (size + ALIGN - 1) // ALIGN * ALIGN
    header = b"GGUF" + struct.pack("<IQQ", 3, len(specs), len(meta)) + b"".join(meta) + b"".join(infos)
    header += b"\0" * ((-len(header)) % ALIGN)

    rng = np.random.default_rng(20261122)
    pool = (rng.standard_normal(1 << 24) * 0.02).astype(np.float16)
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(header)
        for i, (name, shape, ty) in enumerate(specs):
            n = int(np.prod(shape))
            if ty == GGML_F32:
                data = np.ones(n, dtype=np.float32).tobytes()
                f.write(data)
                written = len(data)
            else:
                written = 0
                while written < n * 2:
                    take = min(len(pool), n - written // 2)
                    start = int(rng.integers(0, len(pool) - take + 1))
                    f.write(pool[start : start + take].tobytes())
                    written += take * 2
            f.write(b"\0" * ((-written) % ALIGN))
            if i % 20 == 0:
                print(f"make-llama7b-f16: {i + 1}/{len(specs)} tensors", flush=True)
    tmp.rename(out)
    print(f"make-llama7b-f16: wrote {out} ({out.stat().st_size / 1e9:.2f} GB)")


if __name__ == "__main__":
    main()
