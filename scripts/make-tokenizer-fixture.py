#!/usr/bin/env python3
"""Builds fixtures/tokenizer/: three vocabularies and the token ids independent
tokenizers give for a list of tricky strings. The engine's tokenizer tests compare
against these ids.

Vocabularies:
  smollm2/   SmolLM2-135M's byte-level BPE (smollm pre-tokenizer), taken from the GGUF:
             tokens.txt and merges.txt (one per line) and meta.json.
  spm-tiny/  a small SentencePiece BPE vocabulary (pieces with scores, 256 <0xXX> byte
             tokens, <unk> <s> </s>) trained here, as vocab.json and as a vocab-only
             GGUF (spm-tiny.gguf) that llama.cpp can load.
  bpe-tiny/  a small byte-level BPE (GPT-2 pre-tokenizer) trained here with HF tokenizers,
             as tokenizer.json + tokenizer_config.json and as a vocab-only GGUF.

Expected ids (expected.json), per vocabulary and string:
  llama_cpp          llama-cpp-python, Llama(vocab_only=True).tokenize(add_bos=True, special=False)
                     (add_bos=True adds BOS only when the vocabulary asks for it)
  llama_cpp_special  the same with special=True (control-token texts become tokens)
  hf                 HF tokenizers: SmolLM2's tokenizer.json pipeline rebuilt from the GGUF data
                     (Digits(individual) then ByteLevel); tokenizer.json itself for bpe-tiny;
                     the sentencepiece library itself for spm-tiny
  hf_gguf            transformers.AutoTokenizer.from_pretrained(gguf_file=...) (its GGUF converter)
A case where the implementations disagree is listed under "disagreements".

Run with the reference environment:
  ~/.cache/parity/venv/bin/python scripts/make-tokenizer-fixture.py
"""

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFWriter, TokenType

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "tokenizer"
SMOLLM2_GGUF = Path(os.environ.get("PARITY_MODELS", Path.home() / ".cache/parity/models")) / "SmolLM2-135M-Instruct.Q4_1.gguf"

STRINGS = [
    "",
    " ",
    "  leading spaces",
    "Hello world",
    "hello  world",
    "trailing space ",
    "\n\n",
    "tab\tsep",
    "12345 and 3.14159",
    "don't I'm we've they'll",
    "naïve café, Zürich",
    "日本語のテキスト",
    "I ❤️ 🦀 Rust",
    "The quick brown fox jumps over the lazy dog.",
    'fn main() { println!("hi"); }',
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "<|im_start|>user\nHi there<|im_end|>\n",
    # beyond the brief's list: places where pre-tokenizers tend to differ
    "a  1",
    "x\u00b2\u00b3 \u00bd \u216b",
    "I'M HERE 'S",
    "line\r\nbreak",
    "nbsp\u00a0here\u2028and",
    "   \n  x",
    "<s> and </s>",
    "call <tool> now",
    # SmolLM2's vocabulary has no token for the bytes 0x04, 0x06, 0x13, 0x14, 0x16, 0x1D
    "ctrl\x04\x13 bytes\x1d",
]

CORPUS = """\
The quick brown fox jumps over the lazy dog. Hello world, hello again.
A tokenizer turns text into pieces; the pieces become ids, and ids become vectors.
Numbers like 12, 345 and 3.14159 appear in text, as do dates such as 2024-11-22.
fn main() { println!("hello"); } def main(): print("hello world") # code
She said: don't worry, we'll see; they've gone and I'm here, it's fine.
Rust is fast and memory safe. Python is friendly. C is close to the machine.
The cat sat on the mat. The dog ate the bone. The bird sang in the tree.
Leading and trailing spaces matter   in tokenization, as do tabs\tand newlines.
Zurich, Geneva and Basel are cities; naive and cafe are borrowed words.
"""


def say(*args):
    print(*args, file=sys.stderr)


def field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


# ---------------------------------------------------------------- vocabularies


def smollm2_vocab():
    r = GGUFReader(str(SMOLLM2_GGUF))
    tokens = field(r, "tokenizer.ggml.tokens")
    merges = field(r, "tokenizer.ggml.merges")
    types = field(r, "tokenizer.ggml.token_type")
    assert not any("\n" in t for t in tokens + merges), "one-per-line files need tokens without newlines"
    out = OUT / "smollm2"
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokens.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    (out / "merges.txt").write_text("".join(m + "\n" for m in merges), encoding="utf-8")
    meta = {
        "source": SMOLLM2_GGUF.name,
        "model": field(r, "tokenizer.ggml.model"),
        "pre": field(r, "tokenizer.ggml.pre"),
        "bos_id": field(r, "tokenizer.ggml.bos_token_id"),
        "eos_id": field(r, "tokenizer.ggml.eos_token_id"),
        "unk_id": field(r, "tokenizer.ggml.unknown_token_id"),
        "add_bos": field(r, "tokenizer.ggml.add_bos_token"),
        "add_space_prefix": field(r, "tokenizer.ggml.add_space_prefix"),
        # every token not listed here is normal (type 1)
        "token_types": {str(i): int(t) for i, t in enumerate(types) if t != 1},
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return tokens, merges, types, meta


def write_vocab_only_gguf(
    path, tokens, types, *, scores=None, merges=None, model, pre=None, bos=None, eos=None, unk=None, add_bos=None, add_space_prefix=None
):
    # llama.cpp reads the architecture's hyperparameters even for vocab_only, so give a tiny set.
    w = GGUFWriter(str(path), "llama")
    w.add_name(path.stem)
    w.add_context_length(256)
    w.add_embedding_length(64)
    w.add_feed_forward_length(128)
    w.add_block_count(1)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(32)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model(model)
    if pre is not None:
        w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    if scores is not None:
        w.add_token_scores(scores)
    w.add_token_types(types)
    if merges is not None:
        w.add_token_merges(merges)
    if bos is not None:
        w.add_bos_token_id(bos)
    if eos is not None:
        w.add_eos_token_id(eos)
    if unk is not None:
        w.add_unk_token_id(unk)
    if add_bos is not None:
        w.add_add_bos_token(add_bos)
    if add_space_prefix is not None:
        w.add_add_space_prefix(add_space_prefix)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def spm_tiny_vocab(tmp):
    import sentencepiece as spm

    corpus = Path(tmp) / "corpus.txt"
    corpus.write_text(CORPUS * 3)
    prefix = str(Path(tmp) / "spm-tiny")
    # Llama-like settings: no normalization, a dummy prefix space, spaces kept as they are.
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=prefix,
        model_type="bpe",
        vocab_size=600,
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        split_digits=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(float(sp.get_score(i)))
        if sp.is_unknown(i):
            types.append(TokenType.UNKNOWN)
        elif sp.is_control(i):
            types.append(TokenType.CONTROL)
        elif sp.is_byte(i):
            types.append(TokenType.BYTE)
        elif sp.is_unused(i):
            types.append(TokenType.UNUSED)
        else:
            types.append(TokenType.NORMAL)
    out = OUT / "spm-tiny"
    out.mkdir(parents=True, exist_ok=True)
    gguf_path = out / "spm-tiny.gguf"
    write_vocab_only_gguf(
        gguf_path, tokens, [int(t) for t in types], scores=scores, model="llama", bos=1, eos=2, unk=0, add_bos=True, add_space_prefix=True
    )
    vocab = {
        "model": "llama",
        "bos_id": 1,
        "eos_id": 2,
        "unk_id": 0,
        "add_bos": True,
        "add_space_prefix": True,
        "tokens": tokens,
        "scores": scores,
        "token_types": [int(t) for t in types],
    }
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
    say(f"spm-tiny: {len(tokens)} tokens")
    return sp, gguf_path


def bpe_tiny_vocab():
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        min_frequency=2,
        show_progress=False,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([CORPUS] * 3, trainer=trainer)
    # a non-special added token: user-defined in GGUF terms, matched in text by both libraries
    tok.add_tokens([AddedToken("<tool>", special=False, normalized=False)])
    out = OUT / "bpe-tiny"
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "add_bos_token": False,
                "bos_token": "<|endoftext|>",
                "eos_token": "<|endoftext|>",
            },
            indent=1,
        )
        + "\n"
    )

    data = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = dict(data["model"]["vocab"])
    added = {a["content"]: a for a in data["added_tokens"]}
    for a in data["added_tokens"]:
        vocab[a["content"]] = a["id"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    types = [(TokenType.CONTROL if added[t]["special"] else TokenType.USER_DEFINED) if t in added else TokenType.NORMAL for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    gguf_path = out / "bpe-tiny.gguf"
    write_vocab_only_gguf(gguf_path, tokens, [int(t) for t in types], merges=merges, model="gpt2", pre="gpt-2", bos=0, eos=0, add_bos=False)
    say(f"bpe-tiny: {len(tokens)} tokens, {len(merges)} merges")
    return Tokenizer.from_file(str(out / "tokenizer.json")), gguf_path


def smollm2_hf(tokens, merges, types):
    """SmolLM2's HF tokenizer.json pipeline, rebuilt from the GGUF's vocabulary."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=[tuple(m.split(" ", 1)) for m in merges])
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == TokenType.CONTROL])
    return tok


# ---------------------------------------------------------------- expected ids


def llama_cpp_ids(gguf_path):
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    return lambda text, special: llm.tokenize(text.encode("utf-8"), add_bos=True, special=special)


def hf_gguf_ids(gguf_path):
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        return lambda text: tok(text)["input_ids"]
    except Exception as e:  # recorded, not fatal: the converter is a third opinion
        say(f"transformers could not load {gguf_path.name}: {e}")
        return None


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    tokens, merges, types, _ = smollm2_vocab()
    with tempfile.TemporaryDirectory() as tmp:
        sp, spm_gguf = spm_tiny_vocab(tmp)
    bpe_tiny_hf, bpe_gguf = bpe_tiny_vocab()
    smollm2_tok = smollm2_hf(tokens, merges, types)

    vocabs = {
        "smollm2": (SMOLLM2_GGUF, lambda t: smollm2_tok.encode(t).ids),
        "spm-tiny": (spm_gguf, lambda t: [1] + sp.encode(t)),
        "bpe-tiny": (bpe_gguf, lambda t: bpe_tiny_hf.encode(t).ids),
    }
    cases, disagreements = [], []
    for name, (gguf_path, hf) in vocabs.items():
        lc = llama_cpp_ids(gguf_path)
        hg = hf_gguf_ids(gguf_path) if name != "bpe-tiny" else None
        for text in STRINGS:
            case = {
                "vocab": name,
                "text": text,
                "llama_cpp": lc(text, False),
                "llama_cpp_special": lc(text, True),
                "hf": hf(text),
            }
            if hg is not None:
                case["hf_gguf"] = hg(text)
            cases.append(case)
            for other in ("hf", "hf_gguf"):
                if other in case and case[other] != case["llama_cpp"]:
                    what = "llama_cpp_special" if case[other] == case["llama_cpp_special"] else "llama_cpp"
                    note = (
                        "agrees with llama.cpp parse_special=true: the library always parses special tokens"
                        if what == "llama_cpp_special"
                        else "differs from llama.cpp"
                    )
                    disagreements.append({"vocab": name, "text": text, "with": other, "note": note})

    expected = {
        "generated_by": "scripts/make-tokenizer-fixture.py",
        "versions": versions(),
        "cases": cases,
        "disagreements": disagreements,
    }
    (OUT / "expected.json").write_text(json.dumps(expected, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    for d in disagreements:
        say(f"DISAGREE {d['vocab']} {d['with']}: {d['text']!r}: {d['note']}")
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    say(f"wrote {OUT} ({total / 1e6:.2f} MB)")


def versions():
    import importlib.metadata as md

    out = {}
    for pkg in ("llama_cpp_python", "tokenizers", "transformers", "sentencepiece", "gguf"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


if __name__ == "__main__":
    np.seterr(all="raise")
    main()
