"""Prompt tokenization from a GGUF file's own vocabulary, the way llama.cpp does it by default.

tinygrad's `SimpleTokenizer` knows only a few byte-level presets (llama3, qwen2, ...), merges by token id
rather than by the GGUF merge list, and has no SentencePiece mode, so it cannot reproduce llama.cpp's ids
for SmolLM2 (`smollm` pre-tokenizer), GPT-2 or the tiny SentencePiece fixture. This module covers the two
vocabulary kinds the project's models use:

- `tokenizer.ggml.model = "gpt2"`: byte-level BPE; words from the pre-tokenizer regexes, then merges
  by rank from `tokenizer.ggml.merges`. Pre-tokenizers (`tokenizer.ggml.pre`): `gpt-2`/`default`,
  `smollm`, `llama-bpe` (Llama-3) and `qwen2`, each with llama.cpp's regex and flags (`PreTokenizer`).
- `tokenizer.ggml.model = "llama"`: SentencePiece-style BPE; a "▁" prefix and "▁" for spaces, then
  the highest-scoring adjacent merge first, and `<0xXX>` tokens for characters without a piece.

Control-token text in the prompt is not parsed (llama.cpp's `parse_special=false` default); user-defined
tokens (token type 4, e.g. an added `<tool>`) are, as llama.cpp always does.
"""

from dataclasses import dataclass

import regex

# GPT-2's word pattern. llama.cpp keeps text that no alternative matches as a piece of its own; the
# final `\s+` does that here.
GPT2_WORDS = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

# The Llama-3 and Qwen2 word patterns as llama.cpp writes them (llama-vocab.cpp, its adaptation of
# the tokenizer.json regexes with the case-insensitive contractions spelled out); they differ only
# in how many digits make a word: up to three for Llama-3, one for Qwen2.
LLAMA3_WORDS = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_WORDS = LLAMA3_WORDS.replace(r"\p{N}{1,3}", r"\p{N}")

USER_DEFINED = 4  # llama.cpp's token type for added tokens that match in plain text


@dataclass(frozen=True)
class PreTokenizer:
    """How llama.cpp splits a byte-level BPE vocabulary's text before merging (llama-vocab.cpp).

    `patterns` are applied in turn, each splitting the previous pieces; with `ignore_merges` a piece
    that is a token as a whole is that token, unmerged; `add_bos` is the default when the GGUF has
    no `tokenizer.ggml.add_bos_token`."""

    patterns: tuple
    ignore_merges: bool = False
    add_bos: bool = False


# By `tokenizer.ggml.pre`.
PRE_TOKENIZERS = {
    "gpt-2": PreTokenizer((GPT2_WORDS,)),
    "default": PreTokenizer((GPT2_WORDS,)),
    "smollm": PreTokenizer((r"\p{N}", GPT2_WORDS)),
    "llama-bpe": PreTokenizer((LLAMA3_WORDS,), ignore_merges=True, add_bos=True),
    "qwen2": PreTokenizer((QWEN2_WORDS,)),
}


class TokenizerError(Exception):
    pass


def _bytes_to_unicode():
    """GPT-2's reversible map from bytes to printable characters (the alphabet of byte-level vocabularies)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _split(pieces, pattern):
    """Splits every piece at the pattern's matches, keeping the unmatched text between them."""
    out = []
    for piece in pieces:
        pos = 0
        for m in regex.finditer(pattern, piece):
            if m.start() > pos:
                out.append(piece[pos : m.start()])
            if m.end() > m.start():
                out.append(m.group())
            pos = m.end()
        if pos < len(piece):
            out.append(piece[pos:])
    return out


class Tokenizer:
    def __init__(self, kv):
        self.model = kv.get("tokenizer.ggml.model")
        if self.model not in ("gpt2", "llama"):
            raise TokenizerError(f"tokenizer model {self.model!r} is not supported (only gpt2 and llama)")
        self.tokens = kv["tokenizer.ggml.tokens"]
        self.ids = {t: i for i, t in enumerate(self.tokens)}
        self.bos = kv.get("tokenizer.ggml.bos_token_id")
        types = kv.get("tokenizer.ggml.token_type", [])
        user = sorted((t for t, ty in zip(self.tokens, types) if ty == USER_DEFINED), key=len, reverse=True)
        self.user_defined = regex.compile("|".join(regex.escape(t) for t in user)) if user else None
        if self.model == "gpt2":
            pre = kv.get("tokenizer.ggml.pre", "default")
            if pre not in PRE_TOKENIZERS:
                raise TokenizerError(f"pre-tokenizer {pre!r} is not supported (known: {', '.join(PRE_TOKENIZERS)})")
            self.pre = PRE_TOKENIZERS[pre]
            self.ranks = {tuple(m.split(" ", 1)): r for r, m in enumerate(kv["tokenizer.ggml.merges"])}
            self.byte_chars = _bytes_to_unicode()
        else:
            self.scores = kv["tokenizer.ggml.scores"]
            self.space_prefix = bool(kv.get("tokenizer.ggml.add_space_prefix", True))
        default_bos = self.pre.add_bos if self.model == "gpt2" else True
        self.add_bos = bool(kv.get("tokenizer.ggml.add_bos_token", default_bos))

    def encode(self, text):
        ids = [self.bos] if self.add_bos and self.bos is not None else []
        after_token = True  # llama.cpp gives the SentencePiece space prefix to text that follows a token
        for fragment, is_token in self._partition(text):
            if is_token:
                ids.append(self.ids[fragment])
            elif self.model == "gpt2":
                ids += self._encode_bpe(fragment)
            else:
                ids += self._encode_spm(fragment, after_token)
            after_token = is_token
        return ids

    def _partition(self, text):
        """Splits the text into (fragment, is_user_defined_token) pairs."""
        pos = 0
        for m in self.user_defined.finditer(text) if self.user_defined else ():
            if m.start() > pos:
                yield text[pos : m.start()], False
            yield m.group(), True
            pos = m.end()
        if pos < len(text):
            yield text[pos:], False

    # ---- byte-level BPE ------------------------------------------------------------------------

    def _encode_bpe(self, text):
        pieces = [text] if text else []
        for pattern in self.pre.patterns:
            pieces = _split(pieces, pattern)
        out = []
        for piece in pieces:
            word = "".join(self.byte_chars[b] for b in piece.encode("utf-8"))
            if self.pre.ignore_merges and word in self.ids:
                out.append(self.ids[word])
                continue
            for sym in self._merge_by_rank(list(word)):
                if sym in self.ids:
                    out.append(self.ids[sym])
                else:  # a symbol without a token falls back to its characters; bytes without one are dropped
                    out.extend(self.ids[c] for c in sym if c in self.ids)
        return out

    def _merge_by_rank(self, syms):
        while len(syms) > 1:
            best, at = None, -1
            for i in range(len(syms) - 1):
                r = self.ranks.get((syms[i], syms[i + 1]))
                if r is not None and (best is None or r < best):
                    best, at = r, i
            if best is None:
                break
            syms[at : at + 2] = [syms[at] + syms[at + 1]]
        return syms

    # ---- SentencePiece-style BPE ---------------------------------------------------------------

    def _encode_spm(self, text, after_token):
        if self.space_prefix and after_token:
            text = " " + text
        syms = list(text.replace(" ", "\u2581"))
        while len(syms) > 1:
            best, at = None, -1
            for i in range(len(syms) - 1):
                tid = self.ids.get(syms[i] + syms[i + 1])
                if tid is not None and (best is None or self.scores[tid] > best):
                    best, at = self.scores[tid], i
            if best is None:
                break
            syms[at : at + 2] = [syms[at] + syms[at + 1]]
        out = []
        for sym in syms:
            if sym in self.ids:
                out.append(self.ids[sym])
                continue
            for b in sym.encode("utf-8"):
                tid = self.ids.get(f"<0x{b:02X}>")
                if tid is None:
                    raise TokenizerError(f"no token for byte 0x{b:02X} and no byte-fallback token in the vocabulary")
                out.append(tid)
        return out
