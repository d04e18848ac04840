"""Builds the tiny test models under fixtures/models/, deterministically.

    ~/.cache/parity/venv/bin/python scripts/make-fixtures.py            # write, then cross-check
    ~/.cache/parity/venv/bin/python scripts/make-fixtures.py --no-check # write only

Two random-weight models, each generated once in HF layout and written twice (GGUF and HF safetensors),
so every reference can load the same model from either format:

tiny-llama/  Llama: 2 layers, d=64, 4 query heads, 2 KV heads (GQA), head dim 16, SwiGLU FFN 128,
             RMSNorm eps 1e-5, RoPE theta 10000, context 128, untied output. SentencePiece-style
             vocabulary (<unk>, <s>, </s>, 256 byte-fallback tokens, characters and BPE pieces learned
             from CORPUS below), BOS added.
             model-f32.gguf, model-f16.gguf (2-D weights F16), model-q8_0.gguf (2-D weights Q8_0), hf/.
             GGUF stores attn_q/attn_k rows permuted within each head the way llama.cpp's converter
             does (RoPE on adjacent pairs); HF keeps the rotate-half order.
tiny-gpt2/   GPT-2: 2 layers, d=64, 4 heads, FFN 256, LayerNorm eps 1e-5, GELU(tanh), learned
             positions, context 128, tied lm_head, biases everywhere. Byte-level BPE (256 byte tokens
             in GPT-2's byte-to-unicode order, merges learned from CORPUS, then <|endoftext|>), no BOS.
             model-f32.gguf, model-f16.gguf, hf/ (Conv1D [in, out] weights).

Weight scales (d=64): the defaults of big models (std 0.02) give near-constant logits here, so the
projections use std 1/sqrt(fan_in) (unit-variance outputs), Q/K a little more (1.5/sqrt(d)) so
attention is visibly non-uniform, embeddings std 1 (Llama) or 0.3 (GPT-2, tied with the output),
and the output projection std 0.3, which gives logits a spread (std) of about 2-3 units. Norm
weights are 1 + 0.1*noise and biases 0.1*noise, so a dropped or misapplied one changes the result.

Everything comes from fixed numpy seeds, the GGUF/safetensors writers add no timestamps, and
rerunning gives byte-identical files. After writing, the script loads each model through
llama-cpp-python and transformers and prints how closely their logits agree.
"""

import argparse
import collections
import json
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "fixtures" / "models"

CORPUS = """\
The capital of France is Paris. The capital of Italy is Rome, and the capital of Spain is Madrid.
Once upon a time there was a little town by the sea. In the town there lived a baker, a teacher and
a fisherman. Every morning the baker made bread for the people of the town, and every evening the
fisherman came back with his boat full of fish. The teacher taught the children to read and to write,
to count the stars and to name the rivers of the world. One day a storm came over the sea. The wind
was strong and the waves were high, and the fisherman did not come home. The people of the town
waited on the shore all night. When the sun rose in the morning they saw a small light far out on the
water. It was the boat, and the fisherman was standing in it, waving his hat. Everyone was happy, and
the baker made a cake for the whole town. The children wrote a story about the storm, and the teacher
read it out loud. This is a simple test of the tokenizer and of the model. A quick brown fox jumps over
the lazy dog. We are testing the inference engine with a tiny model and a short prompt.
"""

# Test strings for the tokenizer checks: plain text, a word outside the corpus, doubled and leading
# spaces, digits, punctuation and characters that need byte fallback.
TOKENIZER_PROBES = [
    "The capital of France is",
    "Hello world",
    'Once upon a time, the fisherman said: "we are home!"',
    "  two  spaces and 12345 numbers",
    " leading space",
    "caf\u00e9 na\u00efve \u00fcber \u2014 \u65e5\u672c \U0001f642",
]

LLAMA = dict(n_layers=2, d=64, n_heads=4, n_kv_heads=2, head_dim=16, ffn=128, eps=1e-5, rope_theta=10000.0, ctx=128)
GPT2 = dict(n_layers=2, d=64, n_heads=4, ffn=256, eps=1e-5, ctx=128)
LLAMA_MERGES = 150
GPT2_MERGES = 150
SEED_LLAMA = 1234
SEED_GPT2 = 5678


# ---- BPE training -----------------------------------------------------------------------------------


def train_bpe(words, n_merges):
    """Plain BPE over a word-frequency table: repeatedly fuse the most frequent adjacent pair.

    `words` maps a tuple of initial symbols to its count. Ties go to the lexicographically smallest
    pair so the result does not depend on dict order. Returns the merges in order.
    """
    words = dict(words)
    merges = []
    for _ in range(n_merges):
        pairs = collections.Counter()
        for symbols, count in words.items():
            for a, b in zip(symbols, symbols[1:]):
                pairs[(a, b)] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        fused = {}
        for symbols, count in words.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            fused[tuple(out)] = fused.get(tuple(out), 0) + count
        words = fused
    return merges


# ---- tokenizers -------------------------------------------------------------------------------------


def llama_vocab():
    """SentencePiece-style vocabulary: (pieces, scores, token_types).

    Pieces learned by merging come first, best (earliest merge) scoring highest, then the single
    characters; llama.cpp's SPM tokenizer merges by the score of the resulting piece, which then
    reproduces the BPE merge order.
    """
    counts = collections.Counter("\u2581" + w for w in CORPUS.split())
    chars = sorted({c for w in counts for c in w})
    merges = train_bpe({tuple(w): n for w, n in counts.items()}, LLAMA_MERGES)
    learned = []
    for a, b in merges:
        if a + b not in learned and a + b not in chars:
            learned.append(a + b)
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    scores = [0.0, 0.0, 0.0] + [0.0] * 256
    for i, p in enumerate(learned + chars):
        pieces.append(p)
        types.append(1)
        scores.append(-float(i))
    return pieces, scores, types


def llama_merges_from_vocab(pieces, scores, types):
    """HF BPE merges equivalent to SPM scoring: every split of a piece into two vocabulary pieces,
    ranked by the score of the piece they form."""
    index = {p: i for i, p in enumerate(pieces) if types[i] == 1}
    ranked = []
    for piece, i in index.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in index and right in index:
                ranked.append((-scores[i], index[left], index[right], left, right))
    ranked.sort()
    return [[left, right] for *_, left, right in ranked]


def llama_tokenizer_json(pieces, scores, types):
    vocab = {p: i for i, p in enumerate(pieces)}
    specials = [
        {"id": i, "content": pieces[i], "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
        for i in range(3)
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": specials,
        # llama.cpp (like sentencepiece's add_dummy_prefix) always prepends one space, even before a
        # leading space; Metaspace(prepend_scheme="first") would not, so spell it as a normalizer.
        "normalizer": {
            "type": "Sequence",
            "normalizers": [
                {"type": "Prepend", "prepend": "\u2581"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
            ],
        },
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                {"SpecialToken": {"id": "<s>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "<s>", "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
        },
        "decoder": {
            "type": "Sequence",
            "decoders": [
                {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0},
            ],
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": "<unk>",
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": llama_merges_from_vocab(pieces, scores, types),
        },
    }


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable character table, in GPT-2's order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    table, extra = {}, 0
    for b in printable:
        table[b] = chr(b)
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def gpt2_vocab():
    """Byte-level BPE: (tokens, merges) with the end-of-text token last."""
    import regex

    table = bytes_to_unicode()
    counts = collections.Counter("".join(table[b] for b in w.encode("utf-8")) for w in regex.findall(GPT2_SPLIT, CORPUS))
    merges = train_bpe({tuple(w): n for w, n in counts.items()}, GPT2_MERGES)
    tokens = list(table.values())
    for a, b in merges:
        if a + b not in tokens:
            tokens.append(a + b)
    tokens.append("<|endoftext|>")
    return tokens, merges


def gpt2_tokenizer_json(tokens, merges):
    eot = len(tokens) - 1
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": eot, "content": "<|endoftext|>", "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {t: i for i, t in enumerate(tokens)},
            "merges": [[a, b] for a, b in merges],
        },
    }


# ---- weights ----------------------------------------------------------------------------------------


def llama_weights(vocab_size):
    """HF-layout Llama weights as float32 numpy arrays, keyed by HF name."""
    c = LLAMA
    rng = np.random.default_rng(SEED_LLAMA)
    d, hd = c["d"], c["head_dim"]

    def normal(shape, std):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def norm_weight():
        return (1.0 + 0.1 * rng.standard_normal(d)).astype(np.float32)

    w = {"model.embed_tokens.weight": normal((vocab_size, d), 1.0)}
    for i in range(c["n_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm_weight()
        w[p + "self_attn.q_proj.weight"] = normal((c["n_heads"] * hd, d), 1.5 / np.sqrt(d))
        w[p + "self_attn.k_proj.weight"] = normal((c["n_kv_heads"] * hd, d), 1.5 / np.sqrt(d))
        w[p + "self_attn.v_proj.weight"] = normal((c["n_kv_heads"] * hd, d), 1.0 / np.sqrt(d))
        w[p + "self_attn.o_proj.weight"] = normal((d, c["n_heads"] * hd), 1.0 / np.sqrt(c["n_heads"] * hd))
        w[p + "post_attention_layernorm.weight"] = norm_weight()
        w[p + "mlp.gate_proj.weight"] = normal((c["ffn"], d), 1.0 / np.sqrt(d))
        w[p + "mlp.up_proj.weight"] = normal((c["ffn"], d), 1.0 / np.sqrt(d))
        w[p + "mlp.down_proj.weight"] = normal((d, c["ffn"]), 1.0 / np.sqrt(c["ffn"]))
    w["model.norm.weight"] = norm_weight()
    w["lm_head.weight"] = normal((vocab_size, d), 0.3)
    return w


def gpt2_weights(vocab_size):
    """HF-layout GPT-2 weights (Conv1D weights are [in, out]) as float32 numpy arrays."""
    c = GPT2
    rng = np.random.default_rng(SEED_GPT2)
    d, f = c["d"], c["ffn"]

    def normal(shape, std):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def ln_weight():
        return (1.0 + 0.1 * rng.standard_normal(d)).astype(np.float32)

    w = {"transformer.wte.weight": normal((vocab_size, d), 0.3), "transformer.wpe.weight": normal((c["ctx"], d), 0.1)}
    for i in range(c["n_layers"]):
        p = f"transformer.h.{i}."
        w[p + "ln_1.weight"] = ln_weight()
        w[p + "ln_1.bias"] = normal((d,), 0.1)
        qkv = normal((d, 3 * d), 1.0 / np.sqrt(d))
        qkv[:, : 2 * d] *= 1.5
        w[p + "attn.c_attn.weight"] = qkv
        w[p + "attn.c_attn.bias"] = normal((3 * d,), 0.1)
        w[p + "attn.c_proj.weight"] = normal((d, d), 1.0 / np.sqrt(d))
        w[p + "attn.c_proj.bias"] = normal((d,), 0.1)
        w[p + "ln_2.weight"] = ln_weight()
        w[p + "ln_2.bias"] = normal((d,), 0.1)
        w[p + "mlp.c_fc.weight"] = normal((d, f), 1.0 / np.sqrt(d))
        w[p + "mlp.c_fc.bias"] = normal((f,), 0.1)
        w[p + "mlp.c_proj.weight"] = normal((f, d), 1.0 / np.sqrt(f))
        w[p + "mlp.c_proj.bias"] = normal((d,), 0.1)
    w["transformer.ln_f.weight"] = ln_weight()
    w["transformer.ln_f.bias"] = normal((d,), 0.1)
    return w


def rope_permute(w, n_heads):
    """HF rotate-half row order -> llama.cpp's adjacent-pair order, within each head."""
    rows, cols = w.shape
    hd = rows // n_heads
    return np.ascontiguousarray(w.reshape(n_heads, 2, hd // 2, cols).swapaxes(1, 2).reshape(rows, cols))


def gpt2_gguf_tensors(w, n_layers):
    """HF GPT-2 weights -> GGUF names; Conv1D [in, out] weights transposed to [out, in]."""
    g = {"token_embd.weight": w["transformer.wte.weight"], "position_embd.weight": w["transformer.wpe.weight"]}
    for i in range(n_layers):
        p, b = f"transformer.h.{i}.", f"blk.{i}."
        g[b + "attn_norm.weight"] = w[p + "ln_1.weight"]
        g[b + "attn_norm.bias"] = w[p + "ln_1.bias"]
        g[b + "attn_qkv.weight"] = np.ascontiguousarray(w[p + "attn.c_attn.weight"].T)
        g[b + "attn_qkv.bias"] = w[p + "attn.c_attn.bias"]
        g[b + "attn_output.weight"] = np.ascontiguousarray(w[p + "attn.c_proj.weight"].T)
        g[b + "attn_output.bias"] = w[p + "attn.c_proj.bias"]
        g[b + "ffn_norm.weight"] = w[p + "ln_2.weight"]
        g[b + "ffn_norm.bias"] = w[p + "ln_2.bias"]
        g[b + "ffn_up.weight"] = np.ascontiguousarray(w[p + "mlp.c_fc.weight"].T)
        g[b + "ffn_up.bias"] = w[p + "mlp.c_fc.bias"]
        g[b + "ffn_down.weight"] = np.ascontiguousarray(w[p + "mlp.c_proj.weight"].T)
        g[b + "ffn_down.bias"] = w[p + "mlp.c_proj.bias"]
    g["output_norm.weight"] = w["transformer.ln_f.weight"]
    g["output_norm.bias"] = w["transformer.ln_f.bias"]
    return g


# ---- writers ----------------------------------------------------------------------------------------


def add_tensor(writer, name, a, kind):
    """Adds one tensor: 1-D stays F32; 2-D becomes `kind` (f32, f16 or q8_0 when rows allow it)."""
    import gguf

    if a.ndim == 1 or kind == "f32":
        writer.add_tensor(name, a.astype(np.float32))
    elif kind == "f16":
        writer.add_tensor(name, a.astype(np.float16))
    elif kind == "q8_0" and a.shape[-1] % 32 == 0:
        q = gguf.quants.quantize(a.astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:
        writer.add_tensor(name, a.astype(np.float16))


FILE_TYPE = {"f32": 0, "f16": 1, "q8_0": 7}


def write_gguf(path, arch, kind, metadata, tensors):
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    metadata(writer)
    writer.add_file_type(FILE_TYPE[kind])
    for name, a in tensors.items():
        add_tensor(writer, name, a, kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_safetensors(path, weights):
    from safetensors.numpy import save_file

    save_file({k: weights[k] for k in sorted(weights)}, str(path), metadata={"format": "pt"})


def write_json(path, obj):
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def build_llama(folder):
    c = LLAMA
    pieces, scores, types = llama_vocab()
    w = llama_weights(len(pieces))

    def metadata(writer):
        writer.add_name("tiny-llama")
        writer.add_context_length(c["ctx"])
        writer.add_embedding_length(c["d"])
        writer.add_block_count(c["n_layers"])
        writer.add_feed_forward_length(c["ffn"])
        writer.add_head_count(c["n_heads"])
        writer.add_head_count_kv(c["n_kv_heads"])
        writer.add_rope_dimension_count(c["head_dim"])
        writer.add_rope_freq_base(c["rope_theta"])
        writer.add_layer_norm_rms_eps(c["eps"])
        writer.add_vocab_size(len(pieces))
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(pieces)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_unk_token_id(0)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        writer.add_add_space_prefix(True)

    g = {"token_embd.weight": w["model.embed_tokens.weight"]}
    for i in range(c["n_layers"]):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        g[b + "attn_norm.weight"] = w[p + "input_layernorm.weight"]
        g[b + "attn_q.weight"] = rope_permute(w[p + "self_attn.q_proj.weight"], c["n_heads"])
        g[b + "attn_k.weight"] = rope_permute(w[p + "self_attn.k_proj.weight"], c["n_kv_heads"])
        g[b + "attn_v.weight"] = w[p + "self_attn.v_proj.weight"]
        g[b + "attn_output.weight"] = w[p + "self_attn.o_proj.weight"]
        g[b + "ffn_norm.weight"] = w[p + "post_attention_layernorm.weight"]
        g[b + "ffn_gate.weight"] = w[p + "mlp.gate_proj.weight"]
        g[b + "ffn_up.weight"] = w[p + "mlp.up_proj.weight"]
        g[b + "ffn_down.weight"] = w[p + "mlp.down_proj.weight"]
    g["output_norm.weight"] = w["model.norm.weight"]
    g["output.weight"] = w["lm_head.weight"]
    for kind in ("f32", "f16", "q8_0"):
        write_gguf(folder / f"model-{kind}.gguf", "llama", kind, metadata, g)

    hf = folder / "hf"
    hf.mkdir()
    write_safetensors(hf / "model.safetensors", w)
    write_json(
        hf / "config.json",
        {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": len(pieces),
            "hidden_size": c["d"],
            "intermediate_size": c["ffn"],
            "num_hidden_layers": c["n_layers"],
            "num_attention_heads": c["n_heads"],
            "num_key_value_heads": c["n_kv_heads"],
            "head_dim": c["head_dim"],
            "hidden_act": "silu",
            "max_position_embeddings": c["ctx"],
            "rms_norm_eps": c["eps"],
            "rope_theta": c["rope_theta"],
            "rope_parameters": {"rope_type": "default", "rope_theta": c["rope_theta"]},
            "attention_bias": False,
            "mlp_bias": False,
            "tie_word_embeddings": False,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "torch_dtype": "float32",
        },
    )
    write_json(hf / "tokenizer.json", llama_tokenizer_json(pieces, scores, types))
    write_json(
        hf / "tokenizer_config.json",
        {
            # Not LlamaTokenizer: that class rebuilds its own Metaspace pre-tokenizer and drops the
            # normalizer above; the generic class keeps tokenizer.json as written.
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_bos_token": True,
            "add_eos_token": False,
            "add_prefix_space": True,
            "legacy": False,
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "clean_up_tokenization_spaces": False,
            "model_max_length": c["ctx"],
        },
    )
    return len(pieces)


def build_gpt2(folder):
    c = GPT2
    tokens, merges = gpt2_vocab()
    eot = len(tokens) - 1
    w = gpt2_weights(len(tokens))

    def metadata(writer):
        writer.add_name("tiny-gpt2")
        writer.add_context_length(c["ctx"])
        writer.add_embedding_length(c["d"])
        writer.add_block_count(c["n_layers"])
        writer.add_feed_forward_length(c["ffn"])
        writer.add_head_count(c["n_heads"])
        writer.add_layer_norm_eps(c["eps"])
        writer.add_vocab_size(len(tokens))
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("gpt-2")  # llama.cpp's name for the GPT-2 split regex
        writer.add_token_list(tokens)
        writer.add_token_types([1] * eot + [3])
        writer.add_token_merges([f"{a} {b}" for a, b in merges])
        writer.add_bos_token_id(eot)
        writer.add_eos_token_id(eot)
        writer.add_add_bos_token(False)
        writer.add_add_eos_token(False)

    g = gpt2_gguf_tensors(w, c["n_layers"])
    for kind in ("f32", "f16"):
        write_gguf(folder / f"model-{kind}.gguf", "gpt2", kind, metadata, g)

    hf = folder / "hf"
    hf.mkdir()
    write_safetensors(hf / "model.safetensors", w)
    write_json(
        hf / "config.json",
        {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": len(tokens),
            "n_positions": c["ctx"],
            "n_ctx": c["ctx"],
            "n_embd": c["d"],
            "n_layer": c["n_layers"],
            "n_head": c["n_heads"],
            "n_inner": c["ffn"],
            "activation_function": "gelu_new",
            "layer_norm_epsilon": c["eps"],
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            "scale_attn_weights": True,
            "tie_word_embeddings": True,
            "bos_token_id": eot,
            "eos_token_id": eot,
            "torch_dtype": "float32",
        },
    )
    write_json(hf / "tokenizer.json", gpt2_tokenizer_json(tokens, merges))
    write_json(hf / "vocab.json", {t: i for i, t in enumerate(tokens)})
    (hf / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    write_json(
        hf / "tokenizer_config.json",
        {
            "tokenizer_class": "GPT2Tokenizer",
            "add_bos_token": False,
            "add_prefix_space": False,
            "bos_token": "<|endoftext|>",
            "eos_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>",
            "clean_up_tokenization_spaces": False,
            "model_max_length": c["ctx"],
        },
    )
    return len(tokens)


# ---- cross-checks -----------------------------------------------------------------------------------


def cosine(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def llama_cpp_run(path, text):
    """Token ids and all-position logits from llama.cpp."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=128, logits_all=True, n_threads=2, verbose=False, seed=0)
    # add_bos=True means "add the specials this vocabulary asks for": llama.cpp skips BOS for GPT-2.
    ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)], dtype=np.float32)
    return ids, logits, llm


def transformers_logits(model_dir, ids, gguf_file=None):
    import torch
    from transformers import AutoModelForCausalLM

    kw = {"gguf_file": gguf_file} if gguf_file else {}
    if gguf_file and Path(model_dir).name == "tiny-gpt2":
        # transformers maps gpt2.context_length to n_ctx only, leaving n_positions at 1024.
        kw["n_positions"] = GPT2["ctx"]
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="eager", **kw).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def check(folder, ggufs, prompt):
    """Tokenizers and logits of llama.cpp (each GGUF) against transformers (HF dir and GGUF)."""
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    ok = True
    hf_tok = AutoTokenizer.from_pretrained(str(folder / "hf"))
    gg_tok = AutoTokenizer.from_pretrained(str(folder), gguf_file="model-f32.gguf")
    cpp = Llama(model_path=str(folder / "model-f32.gguf"), n_ctx=128, vocab_only=True, verbose=False)
    for text in TOKENIZER_PROBES:
        a = cpp.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        b = hf_tok(text)["input_ids"]
        c = gg_tok(text)["input_ids"]
        # hf/ must match llama.cpp; transformers' own GGUF tokenizer is reported, not required
        # (its Llama tokenizer skips the dummy prefix before a leading space).
        ok &= a == b
        verdict = "same" if a == b == c else "hf/ DIFFERENT" if a != b else "hf/ same, transformers-from-GGUF differs"
        print(f"  tokenizer {verdict}: {text!r} -> {a}" + ("" if a == b == c else f" hf/={b} transformers-gguf={c}"))
    ids = hf_tok(prompt)["input_ids"]
    ref = transformers_logits(folder / "hf", ids)
    print(f"  prompt {prompt!r} ids {ids}; HF logits std {ref.std():.3f}, last-position argmax {int(ref[-1].argmax())}")
    for name in ggufs:
        _, cpp_logits, _ = llama_cpp_run(folder / name, prompt)
        cos = cosine(cpp_logits, ref)
        err = float(np.abs(cpp_logits - ref).max())
        line = f"  llama.cpp {name} vs transformers hf/: cosine {cos:.8f}, max |diff| {err:.2e}"
        if name.endswith("f32.gguf"):
            ok &= cos > 0.9999
            tg = transformers_logits(folder, ids, gguf_file=name)
            line += f"; transformers {name} vs hf/: cosine {cosine(tg, ref):.8f}, max |diff| {float(np.abs(tg - ref).max()):.2e}"
        print(line)
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-check", action="store_true", help="write the files, skip the llama.cpp/transformers checks")
    args = ap.parse_args()

    for name, build in (("tiny-llama", build_llama), ("tiny-gpt2", build_gpt2)):
        folder = OUT / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        n_vocab = build(folder)
        print(f"{name}: vocab {n_vocab}")
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                print(f"  {f.relative_to(OUT)}  {f.stat().st_size} bytes")
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"total {total} bytes")

    if args.no_check:
        return 0
    ok = True
    print("tiny-llama checks:")
    ok &= check(OUT / "tiny-llama", ["model-f32.gguf", "model-f16.gguf", "model-q8_0.gguf"], "The capital of France is")
    print("tiny-gpt2 checks:")
    ok &= check(OUT / "tiny-gpt2", ["model-f32.gguf", "model-f16.gguf"], "The capital of France is")
    print("all checks passed" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
