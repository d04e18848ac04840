"""Renders chat messages with a GGUF model's own chat template the way the references do, for
the server's chat-template parity test (serve's `parity serve`, harness/tests/serving.rs).

    python references/chat_template/render.py --model FILE.gguf --conversations '[[{"role": ...}], ...]'

prints a JSON array, one object per conversation: for `transformers` (the tokenizer loaded from the GGUF,
`apply_chat_template(..., add_generation_prompt=True)`, ids without added special tokens) and
for `llamacpp` (llama.cpp's own `llama_chat_apply_template` on the GGUF's template, through
llama-cpp-python, and llama.cpp's tokenizer with special tokens parsed), the rendered `text`
and its token `ids`. Run it with the reference environment's python (scripts/setup-references.sh).
"""

import argparse
import ctypes
import json
import sys
from pathlib import Path


def transformers_render(tok, messages):
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return {"text": text, "ids": [int(i) for i in ids]}


def llamacpp_render(llm, messages):
    import llama_cpp

    template = llama_cpp.llama_model_chat_template(llm.model, None)
    keep = [(m["role"].encode(), m["content"].encode()) for m in messages]
    chat = (llama_cpp.llama_chat_message * len(keep))(*[llama_cpp.llama_chat_message(role=r, content=c) for r, c in keep])
    size = 4096 + sum(len(c) for _, c in keep) * 2
    buf = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_chat_apply_template(template, chat, len(keep), True, buf, size)
    if n < 0 or n > size:
        sys.exit(f"llama.cpp cannot apply the model's chat template (returned {n})")
    text = buf.raw[:n].decode("utf-8")
    ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    return {"text": text, "ids": [int(i) for i in ids]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, type=Path, help="a .gguf file with tokenizer.chat_template")
    p.add_argument("--conversations", required=True, help='a JSON array of arrays of {"role": ..., "content": ...}')
    args = p.parse_args(argv)
    if not args.model.is_file():
        sys.exit(f"render.py: no model file {args.model}")
    try:
        conversations = json.loads(args.conversations)
    except json.JSONDecodeError as e:
        sys.exit(f"render.py: --conversations is not JSON: {e}")
    import llama_cpp
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(args.model.parent), gguf_file=args.model.name)
    llm = llama_cpp.Llama(model_path=str(args.model), vocab_only=True, verbose=False)
    out = [{"transformers": transformers_render(tok, m), "llamacpp": llamacpp_render(llm, m)} for m in conversations]
    json.dump(out, sys.stdout, ensure_ascii=False)
    print()


if __name__ == "__main__":
    main()
