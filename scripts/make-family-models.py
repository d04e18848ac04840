"""Builds the model-family suite's models with seeded random weights, in the cache, converted by llama.cpp.

    ~/.cache/parity/venv/bin/python scripts/make-family-models.py            # build what is missing
    ~/.cache/parity/venv/bin/python scripts/make-family-models.py --only qwen3

Each family is built with transformers' own model class from a config of that family at a small
but realistic shape (several layers, grouped-query attention, head dim 64 or 128), with seeded
random weights, saved as HF safetensors, and converted to GGUF by llama.cpp's own converter
(`convert_hf_to_gguf.py`, vendored in the pinned llama-cpp-python source distribution), F32 and
Q8_0: a conversion mistake of ours cannot hide behind our own GGUF reader.

Weights: every matrix and embedding normal(0, 0.02) (transformers' own initializer range), norm
weights 1 + 0.1*noise and projection biases 0.1*noise instead of exactly 1 and 0, so a dropped or
misapplied one changes the result.

Tokenizers: the real ones of each family where llama.cpp ships them as vocab-only GGUF files for
its tokenizer tests (`models/ggml-vocab-*.gguf`: Llama-3's and Qwen2's byte-level BPE, Phi-3's
SentencePiece), turned into an HF tokenizer by transformers' GGUF reader. For Llama-3 its
post-processor is given the `<|begin_of_text|>` prefix the real tokenizer.json has, and the pad
token transformers adds is left out; the converter recognises both by the hash of their output on
its test string (llama-bpe, qwen2), so the GGUF carries llama.cpp's own pre-tokenizer name for them.
Gemma's 256k and Mistral's 32k SentencePiece vocabularies are not available offline: both get
Llama's 32k SentencePiece vocabulary (`llama-spm`), the same code path (SentencePiece BPE with byte
fallback), Gemma-2's without the dummy prefix, as Gemma's tokenizer has none. llama.cpp's converter
reads SentencePiece vocabularies from `tokenizer.model`, written here from the vocab GGUF's pieces,
scores and types (`sentencepiece_model`).

Output $PARITY_CACHE/models/families/<family>/: hf/ (config.json, model.safetensors, tokenizer
files), model-f32.gguf, model-q8_0.gguf. Skipped when present with a matching sha256 manifest
(parity_assets.py). The llama-cpp-python source distribution is downloaded once into
$PARITY_CACHE/src/ with pip (the pin of scripts/setup-references.sh).
"""

import argparse
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from parity_assets import build_dir, build_file, is_complete, models_dir, size_report

SEED = 20261129
SCRIPTS = Path(__file__).resolve().parent

# What the three share: 4 layers, hidden size 256, 4 query heads, FFN 768, context 1024.
SHAPE = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=1024)
QWEN = dict(
    SHAPE,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    rope_parameters=dict(rope_type="default", rope_theta=1000000.0),
    bos_token_id=151643,
    eos_token_id=151643,
)

# family -> (transformers config class, config keywords, vocab file)
FAMILIES = {
    "llama3": (
        "LlamaConfig",
        dict(
            SHAPE,
            num_key_value_heads=1,
            head_dim=64,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            # Llama-3.1's frequency scaling, with a short original context so that most of the
            # 32 frequency pairs are scaled or interpolated (wavelengths above 128 scaled by 1/8).
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=500000.0,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=128,
            ),
            bos_token_id=128000,
            eos_token_id=128001,
        ),
        "llama-bpe",
    ),
    "qwen2": ("Qwen2Config", dict(QWEN, num_key_value_heads=2), "qwen2"),
    # Qwen3's heads are wider than hidden_size / heads: q and k are 512 wide.
    "qwen3": ("Qwen3Config", dict(QWEN, num_key_value_heads=2, head_dim=128), "qwen2"),
    # Gemma-2: every other layer (0 and 2) attends to an 8-token window, so that prompts and
    # generations longer than 8 tokens reach past it; the soft-caps are set at these weights' score
    # and logit scale (about 0.1-1, where real Gemma-2 has 50 and 30 at its scale), so that tanh
    # is curved where the values are. llama.cpp scales scores by 1/sqrt(head_dim), so
    # query_pre_attn_scalar is the head dim, as in Gemma-2 2B and 9B.
    "gemma2": (
        "Gemma2Config",
        dict(
            SHAPE,
            num_key_value_heads=2,
            head_dim=128,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            rope_parameters=dict(rope_type="default", rope_theta=10000.0),
            query_pre_attn_scalar=128,
            sliding_window=8,
            attn_logit_softcapping=0.5,
            final_logit_softcapping=1.0,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        ),
        "llama-spm",
    ),
    # Mistral 7B v0.2 and later: the Llama block with GQA 4:1 and RoPE base 1e6, no sliding window
    # (v0.1's 4096-token window llama.cpp's converter drops: llama.cpp runs it as a plain Llama).
    # Llama's 32k SentencePiece vocabulary stands in for Mistral's own (same kind, same size).
    "mistral": (
        "MistralConfig",
        dict(
            SHAPE,
            num_key_value_heads=1,
            head_dim=64,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            rope_parameters=dict(rope_type="default", rope_theta=1000000.0),
            sliding_window=None,
            bos_token_id=1,
            eos_token_id=2,
        ),
        "llama-spm",
    ),
    # Phi-3: Q, K and V in one fused projection, gate and up in another; grouped-query attention
    # as in Phi-3-medium (Phi-3-mini has as many KV heads as query heads); no sliding window
    # (llama.cpp's converter writes 0, as for Phi-4).
    "phi3": (
        "Phi3Config",
        dict(
            SHAPE,
            num_key_value_heads=2,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            rope_parameters=dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=1.0),
            original_max_position_embeddings=1024,
            sliding_window=None,
            bos_token_id=1,
            eos_token_id=32000,
            pad_token_id=32000,
        ),
        "phi-3",
    ),
}
OUT_TYPES = ("f32", "q8_0")


def llama_pin():
    """The llama-cpp-python version setup-references.sh installs."""
    text = (SCRIPTS / "setup-references.sh").read_text()
    match = re.search(r'LLAMA_PIN="llama-cpp-python==([0-9.]+)"', text)
    if not match:
        sys.exit("make-family-models: no LLAMA_PIN in scripts/setup-references.sh")
    return match.group(1)


def llama_cpp_tree():
    """The vendored llama.cpp tree of the pinned llama-cpp-python sdist, downloaded once."""
    version = llama_pin()
    src = models_dir().parent / "src"
    tree = src / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    if (tree / "convert_hf_to_gguf.py").is_file():
        return tree
    src.mkdir(parents=True, exist_ok=True)
    tarball = src / f"llama_cpp_python-{version}.tar.gz"
    if not tarball.is_file():
        tmp = src / "download.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        pip = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "-d", str(tmp)]
        subprocess.run([*pip, f"llama-cpp-python=={version}"], check=True)
        (tmp / tarball.name).rename(tarball)
        shutil.rmtree(tmp)
    partial = src / f"llama_cpp_python-{version}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    with tarfile.open(tarball) as tar:
        prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
        wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "models/ggml-vocab-")
        members = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.name[len(prefix) :].startswith(wanted)]
        tar.extractall(partial, members=members, filter="data")
    (partial / f"llama_cpp_python-{version}").rename(src / f"llama_cpp_python-{version}")
    partial.rmdir()
    return tree


def tokenizer(tree, vocab, folder, dummy_prefix=True):
    """The family's real tokenizer from llama.cpp's vocab-only GGUF, saved as HF files in `folder`."""
    from tokenizers import pre_tokenizers, processors
    from transformers import AutoTokenizer

    name = f"ggml-vocab-{vocab}.gguf"
    scratch = folder / "vocab"
    scratch.mkdir()
    shutil.copy(tree / "models" / name, scratch / name)
    tok = AutoTokenizer.from_pretrained(str(scratch), gguf_file=name)
    if vocab in ("llama-spm", "phi-3"):
        # Gemma's SentencePiece adds no dummy prefix: "The" is one piece, not "▁The".
        if not dummy_prefix:
            tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="never", split=False)
        # Phi-3's tokenizer.model is Llama's 32,000 pieces (its vocab GGUF retypes some of them);
        # its added tokens are in tokenizer.json.
        sys.path.insert(0, str(tree / "gguf-py"))
        spm = tree / "models" / "ggml-vocab-llama-spm.gguf"
        (folder / "tokenizer.model").write_bytes(sentencepiece_model(spm, dummy_prefix=dummy_prefix))
    if vocab == "llama-bpe":
        bos = tok.convert_tokens_to_ids("<|begin_of_text|>")
        template = processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)])
        tok.backend_tokenizer.post_processor = processors.Sequence([processors.ByteLevel(trim_offsets=False), template])
    tok.save_pretrained(str(folder))
    shutil.rmtree(scratch)
    if vocab == "llama-bpe":
        drop_added_pad(folder, limit=128256)


def sentencepiece_model(vocab_gguf, dummy_prefix):
    """A SentencePiece `ModelProto` (BPE, byte fallback) of a vocab GGUF's pieces, scores and types.

    Written as protobuf wire format by hand (fields of sentencepiece_model.proto: ModelProto pieces
    1, trainer_spec 2, normalizer_spec 3; SentencePiece piece 1, score 2, type 3; TrainerSpec
    model_type 3, vocab_size 4, byte_fallback 35; NormalizerSpec name 1, add_dummy_prefix 3,
    remove_extra_whitespaces 4, escape_whitespaces 5), so no protobuf package is needed.
    """
    import struct

    import gguf

    def varint(n):
        out = bytearray()
        while True:
            low, n = n & 0x7F, n >> 7
            out.append(low | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def field(number, value):
        if isinstance(value, bytes):
            return varint(number << 3 | 2) + varint(len(value)) + value
        if isinstance(value, float):
            return varint(number << 3 | 5) + struct.pack("<f", value)
        return varint(number << 3) + varint(value)

    reader = gguf.GGUFReader(str(vocab_gguf))

    def array(key):
        f = reader.fields[key]
        return [f.parts[i] for i in f.data]

    pieces = zip(array("tokenizer.ggml.tokens"), array("tokenizer.ggml.scores"), array("tokenizer.ggml.token_type"))
    body = b"".join(field(1, field(1, bytes(t)) + field(2, float(s[0])) + field(3, int(ty[0]))) for t, s, ty in pieces)
    trainer = field(3, 2) + field(4, len(reader.fields["tokenizer.ggml.tokens"].data)) + field(35, 1)
    normalizer = field(1, b"identity") + field(3, int(dummy_prefix)) + field(4, 0) + field(5, 1)
    return body + field(2, trainer) + field(3, normalizer)


def drop_added_pad(folder, limit):
    """Removes the tokens transformers added past the vocabulary's `limit` ids (a pad token)."""
    import json

    path = folder / "tokenizer.json"
    spec = json.loads(path.read_text())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["id"] < limit]
    spec["model"]["vocab"] = {k: v for k, v in spec["model"]["vocab"].items() if v < limit}
    path.write_text(json.dumps(spec, ensure_ascii=False))
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("pad_token", None)
    for key in [k for k, v in config.get("added_tokens_decoder", {}).items() if int(k) >= limit]:
        del config["added_tokens_decoder"][key]
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False))


def randomize(model, seed):
    """Seeded weights: matrices normal(0, 0.02), norm scales 1 + 0.1 noise, biases 0.1 noise."""
    import torch

    gemma = model.config.model_type.startswith("gemma")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith("norm.weight"):
                # Gemma's norms scale by (1 + weight): its weights are centred on 0.
                p.copy_((0.0 if gemma else 1.0) + 0.1 * noise)
            elif name.endswith(".bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.02 * noise)


def build_hf(family, tree, out):
    import torch
    import transformers

    config_class, kwargs, vocab = FAMILIES[family]

    def write(folder):
        tokenizer(tree, vocab, folder, dummy_prefix=family != "gemma2")
        from transformers import AutoTokenizer

        n_vocab = len(AutoTokenizer.from_pretrained(str(folder)))
        # The embedding rows the real models have, past the tokenizer's ids.
        n_rows = {"qwen2": 151936, "phi-3": 32064}.get(vocab, n_vocab)
        config = getattr(transformers, config_class)(vocab_size=n_rows, **kwargs)
        torch.manual_seed(SEED)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        randomize(model, SEED + sum(map(ord, family)))
        model.save_pretrained(str(folder), safe_serialization=True)

    build_dir(out, write)


def convert(tree, hf, out, outtype):
    def write(tmp):
        cmd = [sys.executable, str(tree / "convert_hf_to_gguf.py"), str(hf), "--outfile", str(tmp), "--outtype", outtype]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)

    build_file(out, write)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(FAMILIES), action="append", help="build only these families")
    args = parser.parse_args()
    tree = llama_cpp_tree()
    for family in args.only or sorted(FAMILIES):
        start = time.time()
        folder = models_dir() / "families" / family
        folder.mkdir(parents=True, exist_ok=True)
        hf = folder / "hf"
        outputs = [hf] + [folder / f"model-{t}.gguf" for t in OUT_TYPES]
        if all(is_complete(p) for p in outputs):
            print(f"{family}: present")
            continue
        if not is_complete(hf):
            build_hf(family, tree, hf)
        for t in OUT_TYPES:
            if not is_complete(folder / f"model-{t}.gguf"):
                convert(tree, hf, folder / f"model-{t}.gguf", t)
        print(f"{family}: built in {time.time() - start:.0f} s")
        print("\n".join(size_report(outputs)))


if __name__ == "__main__":
    main()
