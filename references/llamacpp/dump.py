"""The llama.cpp reference: llama-cpp-python's low-level API with ggml's graph eval callback.

    ~/.cache/parity/venv/bin/python references/llamacpp/dump.py --model FILE.gguf \
        --prompt TEXT --n-generate N --temperature T --out DIR [--threads 2] [--force-tokens IDS]

capture.py (run as a child process, so a crash in llama.cpp is an exit status here) decodes the
prompt once and copies out the named graph nodes listed in GRAPH below; this file turns them into
the catalog's row-major layouts:

- ggml's axes are reversed (ne[0] is the fastest), so a node arrives as numpy `[..., ne1, ne0]`.
- llama GGUF files store the Q and K projection rows permuted within each head so that RoPE rotates
  adjacent pairs (llama.cpp's "norm" RoPE); HF rotates the halves. q, k, q_rope, k_rope and k_cache
  are put back into HF order: a head's dims [0, 2, 4, ..., 1, 3, 5, ...] are HF's [0, 1, 2, ...].
- k_cache and v_cache are read from llama.cpp's KV cache itself (the views the attention reads,
  after the prompt's keys and values are stored), cells [0, T). The cache has llama.cpp's default
  type, float16, so they are k_rope/v rounded to half precision; PARITY_LLAMACPP_KV_TYPE=f32 asks
  for a float32 cache (then llama.cpp's attention has no rounding step the other references lack,
  and on SmolLM2 the greedy continuation follows PyTorch's rather than llama.cpp's default one).
  Gemma-2's sliding-window layers have their own cache in llama.cpp; capture.py asks for it at full
  size (one cell a position, `swa_full`), so their views are read the same way and hold every
  position, the ones outside the window too: the window is applied by the mask, and attn_probs
  shows it as zeros.
- Phi-3's q, k and v are the three column blocks of the fused QKV product (`wqkv-L`), the same
  elements llama.cpp's Qcur/Kcur/Vcur views of it read (0.3.20 names two of those views
  `wqkv-L (view)`, so the product is tapped, not the views).
- attn_probs is the SOFT_MAX node `[H, T, n_kv cells]`, cut to the T prompt cells after checking
  that no probability falls on the cells beyond them.
- the decode_layers tensors come from the same graph nodes tapped during the chosen decode steps'
  one-token llama_decode calls (capture.py), turned into the same layouts with one row and T+t
  cells (the softmax node again cut to them after the check), stacked by dumpkit.DecodeTaps.
- logits are llama_get_logits over every position; probs = softmax(last_logits / temperature) in
  numpy; step_logits and generated come from decoding one token at a time through llama.cpp's KV
  cache (the greedy tokens, or the --force-tokens history), one llama_get_logits row per step.
- sampler_probs come from llama.cpp's own samplers (llama_sampler_init_temp, _top_k, _top_p, then
  _dist, whose softmax over what is left is the distribution it draws from), chained in the
  catalog's order. llama.cpp's common default chain applies the temperature last, after top-p;
  the chain here is built in the catalog's order (temperature first, as transformers does).
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "common"))

try:
    import numpy as np
    from dumpkit import EXIT_REFERENCE, EXIT_USAGE, DecodeTaps, Dump, DumpError, main, sample_catalog
except ImportError as e:  # outside the reference environment: the documented exit code, in one line
    print(f"llamacpp: reference not installed ({e}); run scripts/setup-references.sh", file=sys.stderr)
    sys.exit(3)

# Catalog key (with {L} for the layer) -> [graph node name, ggml op] in llama.cpp's graph. A name
# can label several nodes (Qcur-L is the projection, its reshape and its RoPE), so the op picks one.
# GPT-2's attention output projection has a bias and llama.cpp names neither node, nor do the Qwen
# graphs name theirs; it is found by what it computes (ggml_tensor.Ggml.label).
#
# The RMSNorm decoders (src/models/llama.cpp, qwen2.cpp, qwen3.cpp, gemma2-iswa.cpp, phi3.cpp) name these nodes alike:
DECODER_NODES = {
    "embed": ["embd", "GET_ROWS"],
    "blk.{L}.attn_norm": ["attn_norm-{L}", "MUL"],
    "blk.{L}.q": ["Qcur-{L}", "MUL_MAT"],
    "blk.{L}.k": ["Kcur-{L}", "MUL_MAT"],
    "blk.{L}.v": ["Vcur-{L}", "MUL_MAT"],
    "blk.{L}.q_rope": ["Qcur-{L}", "ROPE"],
    "blk.{L}.k_rope": ["Kcur-{L}", "ROPE"],
    "blk.{L}.k_cache": ["cache_k_l{L} (view) (permuted)", "PERMUTE"],
    "blk.{L}.v_cache": ["cache_v_l{L} (view) (permuted)", "PERMUTE"],
    "blk.{L}.attn_probs": ["kq_soft_max-{L}", "SOFT_MAX"],
    "blk.{L}.ffn_norm": ["ffn_norm-{L}", "MUL"],
    "blk.{L}.ffn_out": ["ffn_out-{L}", "MUL_MAT"],
    "blk.{L}.block_out": ["l_out-{L}", "ADD"],
    "final_norm": ["result_norm", "MUL"],
}
# The output projection of the merged heads, where the graph leaves it unnamed.
UNNAMED_ATTN_OUT = ["MUL_MAT(blk.{L}.attn_output.weight, kqv_out-{L})", "MUL_MAT"]
GRAPH = {
    "llama": {**DECODER_NODES, "blk.{L}.attn_out": ["attn_out-{L}", "MUL_MAT"]},
    # build_qkv names the projection and then its bias add "Qcur-L": the ADD is q as the model uses it.
    "qwen2": {
        **DECODER_NODES,
        "blk.{L}.q": ["Qcur-{L}", "ADD"],
        "blk.{L}.k": ["Kcur-{L}", "ADD"],
        "blk.{L}.v": ["Vcur-{L}", "ADD"],
        "blk.{L}.attn_out": UNNAMED_ATTN_OUT,
    },
    # The per-head RMSNorm times attn_q_norm/attn_k_norm, before RoPE.
    "qwen3": {
        **DECODER_NODES,
        "blk.{L}.q_norm": ["Qcur_normed-{L}", "MUL"],
        "blk.{L}.k_norm": ["Kcur_normed-{L}", "MUL"],
        "blk.{L}.attn_out": UNNAMED_ATTN_OUT,
    },
    # src/models/gemma2-iswa.cpp. The embedding after its sqrt(d) scale; the post-norms (the output
    # norms of the attention and the FFN). llama.cpp names every layer's FFN post-norm alike, so that
    # one is found by its layer's weight among its sources (capture.py). The soft-capped scores
    # (kq_scaled_1, kq_tanh, kq_scaled_2) feed kq_soft_max, which applies the (sliding-window) mask.
    "gemma2": {
        **DECODER_NODES,
        "embed": ["inp_scaled", "SCALE"],
        "blk.{L}.attn_out": UNNAMED_ATTN_OUT,
        "blk.{L}.post_attn_norm": ["attn_post_norm-{L}", "MUL"],
        "blk.{L}.post_ffn_norm": ["ffn_post_norm", "MUL", "blk.{L}.post_ffw_norm.weight"],
    },
    # src/models/phi3.cpp: one fused QKV product, tapped whole and cut into q, k, v (layer_tensors).
    "phi3": {
        **{key: node for key, node in DECODER_NODES.items() if key not in ("blk.{L}.q", "blk.{L}.k", "blk.{L}.v")},
        "blk.{L}.qkv": ["wqkv-{L}", "MUL_MAT"],
        "blk.{L}.attn_out": UNNAMED_ATTN_OUT,
    },
    "gpt2": {
        "embed": ["inpL", "ADD"],
        "blk.{L}.attn_norm": ["attn_norm-{L}", "ADD"],
        "blk.{L}.q": ["Qcur-{L}", "VIEW"],
        "blk.{L}.k": ["Kcur-{L}", "VIEW"],
        "blk.{L}.v": ["Vcur-{L}", "VIEW"],
        "blk.{L}.k_cache": ["cache_k_l{L} (view) (permuted)", "PERMUTE"],
        "blk.{L}.v_cache": ["cache_v_l{L} (view) (permuted)", "PERMUTE"],
        "blk.{L}.attn_probs": ["kq_soft_max-{L}", "SOFT_MAX"],
        "blk.{L}.attn_out": ["ADD(MUL_MAT(blk.{L}.attn_output.weight, kqv_out-{L}), blk.{L}.attn_output.bias)", "ADD"],
        "blk.{L}.ffn_norm": ["ffn_norm-{L}", "ADD"],
        "blk.{L}.ffn_out": ["ffn_out-{L}", "ADD"],
        "blk.{L}.block_out": ["l_out-{L}", "ADD"],
        "final_norm": ["result_norm", "ADD"],
    },
}

LLAMA_ROPE_TYPE_NORM = 0
LLAMA_ROPE_TYPE_NEOX = 2  # llama.h: GGML_ROPE_TYPE_NEOX


def capture(args, kv_type):
    """Runs capture.py on the request; returns (meta, tensors) or raises a one-line DumpError."""
    with tempfile.TemporaryDirectory(prefix="parity-llamacpp-") as tmp:
        request = dict(
            model=str(args.model),
            prompt=args.prompt,
            n_generate=args.n_generate,
            force_tokens=args.force_tokens,
            threads=args.threads,
            kv_type=kv_type,
            graph=GRAPH,
        )
        (Path(tmp) / "request.json").write_text(json.dumps(request))
        out = Path(tmp) / "out"
        result = subprocess.run([sys.executable, str(HERE / "capture.py"), str(Path(tmp) / "request.json"), str(out)], capture_output=True, text=True)
        if result.returncode != 0:
            raise DumpError(failure_line(result.returncode, result.stderr), EXIT_USAGE if result.returncode == EXIT_USAGE else EXIT_REFERENCE)
        meta = json.loads((out / "meta.json").read_text())
        with np.load(out / "tensors.npz") as npz:
            tensors = {k: npz[k] for k in npz.files}
    return meta, tensors


def failure_line(returncode, stderr):
    """One line for a failed capture: its own message, or for a crash what llama.cpp said last."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if returncode > 0:
        return lines[-1] if lines else f"capture.py exited {returncode} without a message"
    try:
        how = signal.Signals(-returncode).name
    except ValueError:
        how = f"signal {-returncode}"
    said = [line for line in lines if "GGML_ASSERT" in line or "error" in line.lower()] or lines
    return f"llama.cpp crashed ({how})" + (f": {said[-1]}" if said else "")


def check_gguf(path):
    path = Path(path)
    if path.is_dir():
        raise DumpError(f"{path} is a folder; the llama.cpp reference reads GGUF files", EXIT_USAGE)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise DumpError(f"cannot read {path}: {e.strerror}", EXIT_USAGE)
    if magic != b"GGUF":
        raise DumpError(f"{path} is not a GGUF file (magic {magic!r})", EXIT_USAGE)


def hf_head_order(x, head_dim):
    """Undo the GGUF converter's Q/K row permutation along the last axis (heads of `head_dim`):
    within each head, GGUF dims [0, 2, 4, ...] are HF's first half and [1, 3, 5, ...] its second."""
    heads = x.reshape(x.shape[:-1] + (-1, head_dim))
    return np.concatenate([heads[..., 0::2], heads[..., 1::2]], axis=-1).reshape(x.shape)


def rows(a, n_cols):
    """A [.., T, n_cols]-shaped graph node (trailing ggml axes of size 1 dropped) as [T, n_cols]."""
    return a.reshape(-1, n_cols)


def llama_cpp_distribution(logits, temperature, top_k, top_p):
    """The probabilities llama.cpp's sampler chain (temperature, top-k, top-p, dist) leaves on the
    candidates it keeps, 0 for the rest: dist normalises what top-k and top-p left before drawing."""
    import ctypes

    import llama_cpp as ll

    n = len(logits)
    data = (ll.llama_token_data * n)()
    for i, v in enumerate(np.asarray(logits, dtype=np.float32).tolist()):
        data[i].id, data[i].logit, data[i].p = i, v, 0.0
    candidates = ll.llama_token_data_array(data=data, size=n, selected=-1, sorted=False)
    chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
    try:
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_temp(temperature))
        if top_k > 0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_k(top_k))
        if top_p < 1.0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_p(top_p, 1))
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_dist(0))
        ll.llama_sampler_apply(chain, ctypes.byref(candidates))
    finally:
        ll.llama_sampler_free(chain)  # frees the samplers added to it too
    probs = np.zeros(n, dtype=np.float32)
    kept = candidates.size
    probs[[data[i].id for i in range(kept)]] = [data[i].p for i in range(kept)]
    return probs


def layer_tensors(g, prefix, layer, n_rows, n_cells, sizes):
    """One layer's catalog tensors from the graph nodes `g[prefix + key]` of a decode of `n_rows`
    tokens whose attention covers KV cells [0, n_cells) (the prompt: T and T; a decode step: 1 and
    T+t), in the catalog's layouts. The softmax node spans every cell the cache had in use; the cells
    beyond `n_cells` are cut after checking that no probability falls on them."""
    d, H, KV, hd, unpermute = (sizes[k] for k in ("d", "H", "KV", "hd", "unpermute"))

    def node(name):
        return g[f"{prefix}blk.{layer}.{name}"]

    graph = GRAPH[sizes["arch"]]
    out = {}
    for name in ("attn_norm", "attn_out", "post_attn_norm", "ffn_norm", "ffn_out", "post_ffn_norm", "block_out"):
        if f"blk.{{L}}.{name}" in graph:
            out[name] = rows(node(name), d)
    if "blk.{L}.qkv" in graph:
        # Phi-3's fused product: q, k and v are its consecutive column blocks, the same elements
        # llama.cpp's own views of it (Qcur/Kcur/Vcur) read.
        q, k, v = np.split(rows(node("qkv"), (H + 2 * KV) * hd), [H * hd, (H + KV) * hd], axis=1)
    else:
        q, k, v = rows(node("q"), H * hd), rows(node("k"), KV * hd), rows(node("v"), KV * hd)
    out["q"], out["k"], out["v"] = (np.ascontiguousarray(a) for a in (unpermute(q), unpermute(k), v))
    # What the architecture has beyond q/k/v (GRAPH names it): Qwen3's per-head norms, RoPE.
    for name, heads in (("q_norm", H), ("k_norm", KV), ("q_rope", H), ("k_rope", KV)):
        if f"blk.{{L}}.{name}" in graph:
            out[name] = unpermute(rows(node(name), heads * hd))
    # The cache views: keys [KV, cells, hd], values transposed [KV, hd, cells].
    k_cells = node("k_cache").reshape(KV, -1, hd)
    v_cells = node("v_cache").reshape(KV, hd, -1).transpose(0, 2, 1)
    out["k_cache"] = unpermute(k_cells[:, :n_cells])
    out["v_cache"] = v_cells[:, :n_cells]
    probs = node("attn_probs").reshape(H, n_rows, -1)
    if np.any(probs[:, :, n_cells:] != 0):
        where = "the prompt's" if prefix == "" else f"decode step {prefix.strip('@:')}'s"
        raise DumpError(f"layer {layer}: llama.cpp put attention on KV cells beyond {where} {n_cells}; the cache layout is not the expected one")
    out["attn_probs"] = probs[:, :, :n_cells]
    return {f"blk.{layer}.{name}": a for name, a in out.items()}


def run(args):
    started = time.time()
    check_gguf(args.model)
    kv_type = os.environ.get("PARITY_LLAMACPP_KV_TYPE", "f16")
    if kv_type not in ("f32", "f16"):
        raise DumpError(f"PARITY_LLAMACPP_KV_TYPE must be f32 or f16, not {kv_type!r}", EXIT_USAGE)
    meta, g = capture(args, kv_type)

    arch, n_layers, d, H, KV, V = (meta[k] for k in ("arch", "n_layers", "d", "H", "KV", "V"))
    dump = Dump("llamacpp", f"llama-cpp-python {meta['version']}, kv cache {kv_type}", args, arch, n_layers)
    dump.started = started
    tokens = meta["tokens"]
    T = len(tokens)
    # The Q/K row order RoPE works on: llama.cpp's converter permutes llama's rows for its pairwise
    # ("norm") RoPE, and leaves the Qwen ones in HF's order, which its "neox" RoPE rotates by halves.
    permuted = arch == "llama"
    if permuted and meta["rope_type"] != LLAMA_ROPE_TYPE_NORM:
        raise DumpError(f"llama model with RoPE type {meta['rope_type']}: its Q/K row order is not the one this dumper undoes")
    if arch in ("qwen2", "qwen3", "gemma2", "phi3") and meta["rope_type"] != LLAMA_ROPE_TYPE_NEOX:
        raise DumpError(f"{arch} model with RoPE type {meta['rope_type']}: its Q/K rows are not in the half-split order this dumper expects")
    hd = g["blk.0.k_cache"].shape[-1]
    unpermute = (lambda x: hf_head_order(x, hd)) if permuted else (lambda x: x)

    dump.put("tokens", np.array(tokens, dtype=np.int64))
    dump.put("embed", rows(g["embed"], d))
    sizes = dict(d=d, H=H, KV=KV, hd=hd, unpermute=unpermute, arch=arch)
    for layer in range(n_layers):
        for key, a in layer_tensors(g, "", layer, T, T, sizes).items():
            dump.put(key, a)
    # The chosen decode steps: step t's one-token graph, its attention and cache over T+t cells.
    taps = DecodeTaps(T, args.n_generate, dict(d=d, H=H, KV=KV, hd=hd))
    for step in taps.steps:
        for layer in range(n_layers):
            for key, a in layer_tensors(g, f"@{step}:", layer, 1, T + step, sizes).items():
                taps.keep(step, key, a)
    taps.put_into(dump)
    dump.put("final_norm", rows(g["final_norm"], d))

    logits = g["logits"].reshape(T, V)
    dump.put("logits", logits)
    dump.put("last_logits", logits[-1])
    dump.put("argmax", np.int64(np.argmax(logits[-1])))
    scaled = logits[-1].astype(np.float64) / args.temperature
    e = np.exp(scaled - scaled.max())
    dump.put("probs", e / e.sum())
    dump.put("step_logits", g["step_logits"].reshape(args.n_generate, V))
    dump.put("generated", np.array(meta["generated"], dtype=np.int64))
    sample_catalog(dump, logits[-1], llama_cpp_distribution)
    print(f"llamacpp: {T} prompt tokens, generated {meta['text']!r}", file=sys.stderr)
    return dump


if __name__ == "__main__":
    main("llamacpp", run)
