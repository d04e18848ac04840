"""Dequantizes the SmolLM2 GGUF into F32 and F16 GGUFs and an HF folder, in the cache (outside git).

    ~/.cache/parity/venv/bin/python scripts/convert-smollm2.py            # convert what is missing, then check
    ~/.cache/parity/venv/bin/python scripts/convert-smollm2.py --no-check

Input: $PARITY_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch-models.sh), a llama-arch
GGUF with Q4_1 matrices, a Q8_0 tied token embedding and F32 norms. Outputs, next to it:

  SmolLM2-135M-Instruct.F32.gguf  every tensor dequantized to F32 (gguf.quants.dequantize)
  SmolLM2-135M-Instruct.F16.gguf  2-D tensors F16, norms F32 (as llama.cpp's converter does)
  SmolLM2-135M-Instruct-hf/       model.safetensors (HF names, Q/K rows back in rotate-half order),
                                  config.json (LlamaForCausalLM, tied embeddings), tokenizer files

Both GGUFs keep the source's tensor order and all its metadata, tokenizer included; only
general.file_type changes. The dequantized values are exact in F32, so the F32 GGUF and the HF
folder hold the same numbers as the Q4_1 file. The tokenizer comes from transformers' GGUF
tokenizer conversion, with SmolLM2's pre-tokenizer (single digits, then GPT-2's byte-level split)
put back: the conversion drops the digit split that llama.cpp's "smollm" pre-tokenizer applies.

Each output is skipped when present with a matching sha256 manifest (see parity_assets.py).
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from parity_assets import build_dir, build_file, fixtures, is_complete, models_dir, size_report

NAME = "SmolLM2-135M-Instruct"
PROMPT_IDS = [504, 3575, 282, 4649, 314]  # "The capital of France is"
PROMPT = "The capital of France is"
CONTINUATION = " Paris.\n\nThe answer is:"
TOKENIZER_PROBES = [
    "The capital of France is",
    "Hello world, it's 2026!",
    "12345 and 3.14159",
    "a  1",
    "  leading spaces\n\n\ttab",
    "don't I'm we've they'll",
    "naïve café, Zürich 日本語 🦀",
    "x\u00b2\u00b3 \u00bd \u216b",
]
# Keys the writer sets itself (or that describe the file rather than the model).
SKIPPED_KEYS = {"general.architecture", "general.file_type"}


# ---- reading the source ------------------------------------------------------------------------------


def read_source(path):
    """(arch, [(key, value, type, sub_type)], {name: float32 array}) from a GGUF, tensors dequantized."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    arch = reader.fields["general.architecture"].contents()
    fields = []
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in SKIPPED_KEYS:
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        fields.append((key, field.contents(), vtype, sub_type))
    tensors = {}
    for t in reader.tensors:
        a = gguf.quants.dequantize(t.data, t.tensor_type)
        tensors[t.name] = np.ascontiguousarray(a, dtype=np.float32)
    return arch, fields, tensors


def meta(fields, key):
    return next(value for k, value, *_ in fields if k == key)


def f32_value(x):
    """A float32 metadata value as the short decimal it was written from (9.9999997e-06 -> 1e-05)."""
    return float(str(np.float32(x)))


# ---- writers -----------------------------------------------------------------------------------------


def write_gguf(path, arch, fields, tensors, kind):
    def metadata(writer):
        for key, value, vtype, sub_type in fields:
            writer.add_key_value(key, value, vtype, sub_type)

    fixtures.write_gguf(path, arch, kind, metadata, tensors)


def rope_unpermute(w, n_heads):
    """llama.cpp's adjacent-pair row order -> HF rotate-half order, within each head."""
    rows, cols = w.shape
    hd = rows // n_heads
    return np.ascontiguousarray(w.reshape(n_heads, hd // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols))


def hf_config(fields, arch):
    a = lambda key: meta(fields, f"{arch}.{key}")  # noqa: E731
    d, n_heads = a("embedding_length"), a("attention.head_count")
    theta = f32_value(a("rope.freq_base"))
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": len(meta(fields, "tokenizer.ggml.tokens")),
        "hidden_size": d,
        "intermediate_size": a("feed_forward_length"),
        "num_hidden_layers": a("block_count"),
        "num_attention_heads": n_heads,
        "num_key_value_heads": a("attention.head_count_kv"),
        "head_dim": d // n_heads,
        "hidden_act": "silu",
        "max_position_embeddings": a("context_length"),
        "rms_norm_eps": f32_value(a("attention.layer_norm_rms_epsilon")),
        "rope_theta": theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": theta},
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": True,
        "bos_token_id": meta(fields, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta(fields, "tokenizer.ggml.eos_token_id"),
        "pad_token_id": meta(fields, "tokenizer.ggml.padding_token_id"),
        "torch_dtype": "float32",
    }


def hf_weights(tensors, config):
    """GGUF llama tensors -> HF LlamaForCausalLM names (tied: no lm_head)."""
    if "output.weight" in tensors:
        raise SystemExit("convert-smollm2: this GGUF has an untied output.weight; the HF export assumes tied embeddings")
    w = {"model.embed_tokens.weight": tensors["token_embd.weight"], "model.norm.weight": tensors["output_norm.weight"]}
    names = {
        "attn_norm": "input_layernorm",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_norm": "post_attention_layernorm",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    for i in range(config["num_hidden_layers"]):
        b, p = f"blk.{i}.", f"model.layers.{i}."
        for g, h in names.items():
            w[p + h + ".weight"] = tensors[b + g + ".weight"]
        w[p + "self_attn.q_proj.weight"] = rope_unpermute(tensors[b + "attn_q.weight"], config["num_attention_heads"])
        w[p + "self_attn.k_proj.weight"] = rope_unpermute(tensors[b + "attn_k.weight"], config["num_key_value_heads"])
    if len(w) != len(tensors):
        raise SystemExit(
            f"convert-smollm2: {len(tensors)} GGUF tensors but only {len(w)} mapped to HF names; "
            "this GGUF has tensors the llama export does not know"
        )
    return w


def write_hf(folder, src, fields, tensors, arch):
    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer

    config = hf_config(fields, arch)
    fixtures.write_safetensors(folder / "model.safetensors", hf_weights(tensors, config))
    fixtures.write_json(folder / "config.json", config)
    tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    if meta(fields, "tokenizer.ggml.pre") != "smollm":
        raise SystemExit("convert-smollm2: expected tokenizer.ggml.pre 'smollm'; the pre-tokenizer fix below is for that one")
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    tok.model_max_length = config["max_position_embeddings"]
    tok.save_pretrained(str(folder))


# ---- checks ------------------------------------------------------------------------------------------


def check(hf_dir, f32_gguf, f16_gguf):
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()
    ok = True
    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    cpp = Llama(model_path=str(f32_gguf), n_ctx=256, logits_all=True, n_threads=2, verbose=False, seed=0)
    for text in TOKENIZER_PROBES:
        a = cpp.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        b = tok(text)["input_ids"]
        ok &= a == b
        print(f"  tokenizer {'same' if a == b else 'DIFFERENT'}: {text!r} -> {a}" + ("" if a == b else f" hf={b}"))
    ids = tok(PROMPT)["input_ids"]
    ok &= ids == PROMPT_IDS
    print(f"  prompt ids {ids} ({'as expected' if ids == PROMPT_IDS else 'EXPECTED ' + str(PROMPT_IDS)})")

    def load(**kw):
        return AutoModelForCausalLM.from_pretrained(dtype=torch.float32, attn_implementation="eager", **kw).eval()

    n_new = len(tok(CONTINUATION)["input_ids"])
    results = {}
    for label, model in (
        ("hf/", load(pretrained_model_name_or_path=str(hf_dir))),
        ("F32 GGUF", load(pretrained_model_name_or_path=str(f32_gguf.parent), gguf_file=f32_gguf.name)),
    ):
        with torch.no_grad():
            logits = model(torch.tensor([PROMPT_IDS])).logits[0].numpy()
            out = model.generate(torch.tensor([PROMPT_IDS]), max_new_tokens=n_new, do_sample=False)[0, len(PROMPT_IDS) :]
        results[label] = (logits, out.tolist())
        text = tok.decode(out)
        ok &= text == CONTINUATION
        print(f"  transformers {label}: last argmax {int(logits[-1].argmax())}, greedy {text!r}")
        del model
    (hf_logits, hf_gen), (gg_logits, gg_gen) = results["hf/"], results["F32 GGUF"]
    same = np.array_equal(hf_logits, gg_logits) and hf_gen == gg_gen
    ok &= same
    print(
        f"  transformers hf/ vs F32 GGUF: logits {'identical' if same else 'DIFFER'} "
        f"(max |diff| {float(np.abs(hf_logits - gg_logits).max()):.2e})"
    )

    for path in (f32_gguf, f16_gguf):
        llm = cpp if path == f32_gguf else Llama(model_path=str(path), n_ctx=256, logits_all=True, n_threads=2, verbose=False, seed=0)
        llm.reset()
        llm.eval(PROMPT_IDS)
        logits = np.array(llm.scores[: len(PROMPT_IDS)], dtype=np.float32)
        gen = []
        for _ in range(n_new):
            gen.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            llm.eval([gen[-1]])
        cos = fixtures.cosine(logits, hf_logits)
        err = float(np.abs(logits - hf_logits).max())
        text = tok.decode(gen)
        if path == f32_gguf:
            ok &= cos > 0.9999 and text == CONTINUATION
        print(
            f"  llama.cpp {path.name} vs transformers hf/: cosine {cos:.8f}, max |diff| {err:.3e}, "
            f"last argmax {int(logits[-1].argmax())}, greedy {text!r}"
        )
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=models_dir() / f"{NAME}.Q4_1.gguf")
    ap.add_argument("--no-check", action="store_true", help="convert only, skip the transformers/llama.cpp checks")
    args = ap.parse_args()
    if not args.src.is_file():
        raise SystemExit(f"convert-smollm2: {args.src} not found; run scripts/fetch-models.sh first")

    out = args.src.parent
    targets = {"f32": out / f"{NAME}.F32.gguf", "f16": out / f"{NAME}.F16.gguf", "hf": out / f"{NAME}-hf"}
    source = None
    for kind, path in targets.items():
        if is_complete(path):
            print(f"{path.name}: present, sha256 manifest matches; skipped")
            continue
        start = time.time()
        if source is None:
            source = read_source(args.src)
        arch, fields, tensors = source
        if kind == "hf":
            build_dir(path, lambda tmp: write_hf(tmp, args.src, fields, tensors, arch))
        else:
            build_file(path, lambda tmp: write_gguf(tmp, arch, fields, tensors, kind))
        print(f"{path.name}: written in {time.time() - start:.1f} s")
    print("\n".join(size_report(targets.values())))

    if args.no_check:
        return 0
    start = time.time()
    ok = check(targets["hf"], targets["f32"], targets["f16"])
    print(f"checks {'passed' if ok else 'FAILED'} in {time.time() - start:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
