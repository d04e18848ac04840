"""llama.cpp's own speed on a GGUF file, for `parity bench` to set the engine's figures against.

    python references/llamacpp/bench.py --model FILE --threads N --prompt-tokens 128 \
        --gen-tokens 64 --runs 5 --tokens ID,ID,...

Measures, per run, a prefill of the given prompt tokens in one batch and then a decode of one token
at a time through the KV cache (feeding the given ids, so no sampling cost is timed), in a fresh
context each run. Prints one JSON object: {"version", "load_s", "prefill_s": [...], "decode_s": [...]}.
Exit codes: 0 measured; 2 usage error; 3 llama.cpp failed.
"""

import argparse
import json
import sys
import time


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--tokens", required=True, help="comma-separated ids: the prompt, then the tokens to decode")
    p.add_argument("--prompt-tokens", type=int, default=128)
    args = p.parse_args()
    ids = [int(t) for t in args.tokens.split(",") if t]
    if len(ids) <= args.prompt_tokens:
        print("bench.py: --tokens must hold more ids than --prompt-tokens", file=sys.stderr)
        return 2
    try:
        import llama_cpp as lc
    except ImportError as e:
        print(f"bench.py: llama_cpp is not installed ({e}); run scripts/setup-references.sh", file=sys.stderr)
        return 3
    lc.llama_backend_init()
    mp = lc.llama_model_default_params()
    t0 = time.perf_counter()
    model = lc.llama_model_load_from_file(args.model.encode(), mp)
    load_s = time.perf_counter() - t0
    if not model:
        print(f"bench.py: llama.cpp could not load {args.model}", file=sys.stderr)
        return 3
    prompt, rest = ids[: args.prompt_tokens], ids[args.prompt_tokens :]
    result = {"version": lc.__version__, "load_s": load_s, "prefill_s": [], "decode_s": []}
    for _ in range(args.runs):
        cp = lc.llama_context_default_params()
        cp.n_ctx = len(ids) + 16
        cp.n_batch = max(512, len(prompt))
        cp.n_ubatch = cp.n_batch
        cp.n_threads = args.threads
        cp.n_threads_batch = args.threads
        ctx = lc.llama_init_from_model(model, cp)
        if not ctx:
            print("bench.py: llama.cpp could not create a context", file=sys.stderr)
            return 3
        batch = lc.llama_batch_init(len(prompt), 0, 1)
        for i, t in enumerate(prompt):
            batch.token[i] = t
            batch.pos[i] = i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = i == len(prompt) - 1
        batch.n_tokens = len(prompt)
        t0 = time.perf_counter()
        if lc.llama_decode(ctx, batch) != 0:
            print("bench.py: llama_decode failed on the prompt", file=sys.stderr)
            return 3
        lc.llama_get_logits_ith(ctx, -1)
        result["prefill_s"].append(time.perf_counter() - t0)
        lc.llama_batch_free(batch)
        one = lc.llama_batch_init(1, 0, 1)
        t0 = time.perf_counter()
        for k, t in enumerate(rest):
            one.token[0] = t
            one.pos[0] = len(prompt) + k
            one.n_seq_id[0] = 1
            one.seq_id[0][0] = 0
            one.logits[0] = True
            one.n_tokens = 1
            if lc.llama_decode(ctx, one) != 0:
                print("bench.py: llama_decode failed while decoding", file=sys.stderr)
                return 3
            lc.llama_get_logits_ith(ctx, -1)
        result["decode_s"].append(time.perf_counter() - t0)
        lc.llama_batch_free(one)
        lc.llama_free(ctx)
    lc.llama_model_free(model)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
