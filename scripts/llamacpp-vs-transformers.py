"""Compare a llama.cpp dump of a Gemma-2 or Phi-3 family model with transformers' own eager model.

    PARITY_LLAMACPP_KV_TYPE=f32 ~/.cache/parity/venv/bin/python references/llamacpp/dump.py \
        --model ~/.cache/parity/models/families/gemma2/model-f32.gguf --prompt TEXT --n-generate 12 --out DIR
    ~/.cache/parity/venv/bin/python scripts/llamacpp-vs-transformers.py gemma2 DIR

An independent check of the llama.cpp dumper's taps (docs/references.md, "Gemma-2 and Phi-3 in
llama.cpp"): transformers' Gemma2ForCausalLM / Phi3ForCausalLM (eager attention, float32) on the
family's HF folder is fed the dump's own prompt ids and greedy tokens in one forward pass; forward
hooks on its modules give each catalog tensor (q_rope/k_rope through transformers' own
apply_rotary_pos_emb), and the decode-step tensors are that pass's rows at the steps' positions.
Prints max |difference| and relative RMS per dumped tensor, largest last, and for Gemma-2 whether
each layer's attention probabilities are zero exactly outside its (sliding-window or causal) mask.
"""

import argparse
import tomllib
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers.models.gemma2 import modeling_gemma2
from transformers.models.phi3 import modeling_phi3

FAMILIES = {
    "gemma2": (transformers.Gemma2ForCausalLM, modeling_gemma2),
    "phi3": (transformers.Phi3ForCausalLM, modeling_phi3),
}
SKIPPED = ("tokens", "generated", "argmax", "probs", "last_logits", "sampler_probs", "sampled")


def as_numpy(t):
    return (t[0] if isinstance(t, tuple) else t).detach()[0].double().numpy()


def hooked_forward(family, ids):
    """{catalog key: float64 array over every position of `ids`} from transformers' model."""
    cls, modeling = FAMILIES[family]
    hf = Path.home() / ".cache" / "parity" / "models" / "families" / family / "hf"
    model = cls.from_pretrained(hf, dtype=torch.float32, attn_implementation="eager").eval()
    cfg = model.config
    H, KV = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    caps = {}

    def keep(name):
        return lambda _m, _i, out: caps.__setitem__(name, as_numpy(out))

    layers = model.model.layers
    layers[0].register_forward_pre_hook(
        lambda _m, args, kw: caps.__setitem__("embed", as_numpy(args[0] if args else kw["hidden_states"])), with_kwargs=True
    )
    for L, layer in enumerate(layers):
        attn = layer.self_attn
        layer.input_layernorm.register_forward_hook(keep(f"blk.{L}.attn_norm"))
        if family == "phi3":
            attn.qkv_proj.register_forward_hook(keep(f"blk.{L}.qkv"))
            layer.post_attention_layernorm.register_forward_hook(keep(f"blk.{L}.ffn_norm"))
        else:
            for n in "qkv":
                getattr(attn, f"{n}_proj").register_forward_hook(keep(f"blk.{L}.{n}"))
            layer.post_attention_layernorm.register_forward_hook(keep(f"blk.{L}.post_attn_norm"))
            layer.pre_feedforward_layernorm.register_forward_hook(keep(f"blk.{L}.ffn_norm"))
            layer.post_feedforward_layernorm.register_forward_hook(keep(f"blk.{L}.post_ffn_norm"))
        attn.o_proj.register_forward_hook(keep(f"blk.{L}.attn_out"))
        attn.register_forward_hook(lambda _m, _i, out, L=L: caps.__setitem__(f"blk.{L}.attn_probs", as_numpy(out[1])))
        layer.mlp.register_forward_hook(keep(f"blk.{L}.ffn_out"))
        layer.register_forward_hook(keep(f"blk.{L}.block_out"))
    model.model.norm.register_forward_hook(keep("final_norm"))
    with torch.no_grad():
        caps["logits"] = as_numpy(model(torch.tensor([ids]), output_attentions=True, use_cache=False).logits)
        P = len(ids)
        cos, sin = model.model.rotary_emb(torch.zeros(1, P, hd), torch.arange(P)[None])
        for L in range(len(layers)):
            if family == "phi3":
                caps[f"blk.{L}.q"], caps[f"blk.{L}.k"], caps[f"blk.{L}.v"] = np.split(caps.pop(f"blk.{L}.qkv"), [H * hd, (H + KV) * hd], axis=1)
            q = torch.tensor(caps[f"blk.{L}.q"]).view(1, P, H, hd).transpose(1, 2)
            k = torch.tensor(caps[f"blk.{L}.k"]).view(1, P, KV, hd).transpose(1, 2)
            q_rope, k_rope = modeling.apply_rotary_pos_emb(q, k, cos, sin)
            caps[f"blk.{L}.q_rope"] = q_rope[0].transpose(0, 1).reshape(P, -1).numpy()
            caps[f"blk.{L}.k_rope"] = k_rope[0].transpose(0, 1).reshape(P, -1).numpy()
            caps[f"blk.{L}.k_cache"] = caps[f"blk.{L}.k_rope"].reshape(P, KV, hd).transpose(1, 0, 2)
            caps[f"blk.{L}.v_cache"] = caps[f"blk.{L}.v"].reshape(P, KV, hd).transpose(1, 0, 2)
    return caps, cfg


def expected(key, got_shape, caps, T, steps):
    """transformers' counterpart of the dumped tensor `key` (prompt rows, or the decode steps' rows)."""
    name = key.rsplit(".", 1)[-1]
    if key == "step_logits":
        return caps["logits"][T - 1 : T - 1 + got_shape[0]]
    if not name.startswith("dec_"):
        full = caps[key]
        return full[:, :T] if name in ("k_cache", "v_cache") else full[:, :T, :T] if name == "attn_probs" else full[:T]
    full = caps[key.replace("dec_", "")]
    per_step = []
    for step in steps:
        pos = T + step - 1  # decode step `step` feeds the token at this position
        if name in ("dec_k_cache", "dec_v_cache", "dec_attn_probs"):
            row = np.zeros(got_shape[1:])
            row[:, : pos + 1] = full[:, pos, : pos + 1] if name == "dec_attn_probs" else full[:, : pos + 1]
        else:
            row = full[pos]
        per_step.append(row)
    return np.stack(per_step)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("family", choices=sorted(FAMILIES))
    parser.add_argument("dump", type=Path)
    args = parser.parse_args()
    manifest = tomllib.loads((args.dump / "manifest.toml").read_text())
    tokens = np.load(args.dump / "tokens.npy").tolist()
    generated = np.load(args.dump / "generated.npy").tolist()
    T, N = len(tokens), len(generated)
    steps = sorted({1, N // 2, N - 1}) if N >= 2 else []
    caps, cfg = hooked_forward(args.family, tokens + generated[:-1])
    rows = []
    for key, entry in manifest["tensors"].items():
        if "file" not in entry or key in SKIPPED:
            continue
        got = np.load(args.dump / entry["file"]).astype(np.float64)
        want = expected(key, got.shape, caps, T, steps)
        rel = float(np.sqrt(np.mean((got - want) ** 2) / max(np.mean(want**2), 1e-300)))
        rows.append((rel, float(np.abs(got - want).max()), key))
    print(f"{args.family}: {T} prompt ids, {N} generated, decode steps {steps}; llama.cpp ({manifest['version']}) vs transformers eager float32")
    for rel, worst, key in sorted(rows):
        print(f"  {key:28s} max |diff| {worst:.2e}  relative RMS {rel:.2e}")
    if args.family == "gemma2":
        i, j = np.indices((T, T))
        for L in range(cfg.num_hidden_layers):
            probs = np.load(args.dump / f"blk.{L}.attn_probs.npy")
            window = cfg.layer_types[L] == "sliding_attention"
            allowed = (j <= i) & ((i - j < cfg.sliding_window) if window else True)
            exact = bool((probs[:, ~allowed] == 0).all() and (probs[:, allowed] > 0).all())
            print(f"  layer {L}: attention zero exactly outside its {'sliding-window' if window else 'causal'} mask: {exact}")


if __name__ == "__main__":
    main()
