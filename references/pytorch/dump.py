"""The PyTorch reference: HF transformers' own model classes (Llama, Qwen2, Qwen3, Gemma-2, Phi-3, GPT-2), instrumented with hooks.

    ~/.cache/parity/venv/bin/python references/pytorch/dump.py --model FILE_OR_HF_DIR \
        --prompt TEXT --n-generate N --temperature T --out DIR [--threads 2] [--force-tokens IDS]

A GGUF file is loaded through transformers' GGUF support (weights dequantized to float32, tokenizer
rebuilt from the file's metadata, then corrected where it tokenizes differently from llama.cpp, so the
prompt ids are llama.cpp's); a folder is loaded as an HF checkpoint with its own tokenizer. The model
runs in float32, eval mode, with eager attention so the attention probabilities exist. The families
and where transformers keeps their code are in family.py.

Gemma-2 from a GGUF: transformers' loader subtracts the 1 llama.cpp's converter added to the norm
weights (Gemma2RMSNorm adds it back) but maps neither soft-cap nor the score scale; they are set
from the file as llama.cpp reads them (gemma2_gguf_config). Its sliding-window layers get a cache
that keeps every position (full_cache), so k_cache/v_cache have the catalog's length and the window
is the mask's. Phi-3: q, k, v are slices of the fused qkv_proj's output; the fused gate_up_proj
stays fused (the FFN's input and output are what the catalog has).

RoPE scaling from a GGUF: transformers' GGUF loader reads no RoPE scaling at all. llama.cpp's
converter stores Llama-3's frequency scaling as the `rope_freqs.weight` tensor (one divisor per
frequency pair) and no metadata, so transformers would silently run Llama-3 unscaled. The dumper
hands that tensor to transformers as the per-pair factors of its own LongRoPE frequency code
(short and long factors both the file's, attention factor 1), which divides each frequency by its
factor, as llama.cpp does with rope_freqs. A GGUF that declares a RoPE scaling type in its metadata
(`<arch>.rope.scaling.type`, which transformers ignores too) is refused.

Tensors come from one forward over the prompt: forward hooks on the norms, projections (q, k, v
with their biases where the model has them), Qwen3's per-head q/k norms, attention, MLP and
decoder layers; a pre-hook on layer 0 for the residual stream entering it; the attention
probabilities from `output_attentions`; the KV cache from the model's own `past_key_values`. RoPE
is a plain function in each family's modeling module, not a module, so `q_rope`/`k_rope` come from
wrapping that function for the duration of the prompt forward. `step_logits` and `generated` come from a
loop that feeds one token at a time with the cache (not `generate()`), so the incremental path is
what gets exercised: the greedy tokens, or the `--force-tokens` history (dumpkit.decode). At the
chosen decode steps (dumpkit.decode_steps) the same hooks and RoPE wrapper stay on for that one-token
forward, which also asks for `output_attentions` (the new position's row over the T+t cached ones);
the cache is read from `past_key_values` after the step, and dumpkit.DecodeTaps stacks them into the
`decode_layers` tensors.
`sampler_probs` come from transformers' own logits warpers (TemperatureLogitsWarper, TopKLogitsWarper,
TopPLogitsWarper) and a softmax, on the logits dumpkit.sample_catalog hands them.

`run` computes in a chosen torch dtype: float32 here, float64 for the ground truth
(references/pytorch-f64/dump.py). Either way the weights are loaded exactly as for float32 (a GGUF
dequantized to float32 by transformers) and then cast, which is exact, so the float64 truth runs on
the very weights the engine runs on. In float64 every op is float64: the embedding, norms,
projections, RoPE, attention, KV cache, the `probs` softmax and the greedy choice. transformers'
decoder families do three things in float32 whatever the model's dtype (RMSNorm upcasts its input to
float32, RoPE builds inv_freq, the angles and cos/sin in float32, eager attention takes its softmax
in float32; Gemma-2 also holds sqrt(d) as a float32 buffer); for float64 those are replaced, for the run, by float64 code of our own
(float64.py), and the whole computation runs under a dispatch guard that fails the dump (exit 3) if
any floating-point op still reads or writes another dtype. Tensors are written as float32 .npy all
the same (dumpkit): the truth is rounded once, at the end, and the manifest's `dtype` says what it
was computed in.
"""

import os
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # family.py, float64.py (also when pytorch-f64 loads this file)

try:
    from dumpkit import EXIT_USAGE, DecodeTaps, Dump, DumpError, decode, main, sample_catalog
    from family import FAMILIES
    from float64 import computing_in
except ImportError as e:  # dumpkit needs numpy: without it, still fail the documented way (exit 3, one line)
    print(f"pytorch: reference not installed ({e}); run scripts/setup-references.sh", file=sys.stderr)
    sys.exit(3)

DTYPES = ("float32", "float64")  # what `run` computes in; the names are torch's and the manifest's


class Model:
    """A loaded reference: the transformers model, its config, and a tokenizer that gives the
    same ids as llama.cpp for a GGUF file (or the checkpoint's own tokenizer for an HF folder)."""

    def __init__(self, model_path):
        from transformers import AutoConfig

        path = Path(model_path)
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise DumpError(f"{path} has no config.json: pass a GGUF file or an HF model folder", EXIT_USAGE)
            if not any(path.glob("*.safetensors")):
                raise DumpError(f"{path} has no *.safetensors weights: pass a GGUF file or an HF model folder", EXIT_USAGE)
            self.path, self.where, self.gguf_kw, self.gguf_meta = path, str(path), {}, None
        else:
            self.path, self.where, self.gguf_kw, self.gguf_meta = path, str(path.parent), {"gguf_file": path.name}, read_gguf_metadata(path)
            arch = self.gguf_meta.get("general.architecture")
            if arch not in FAMILIES:
                raise DumpError(f"unsupported GGUF architecture {arch!r} in {path} (the PyTorch dumper knows {sorted(FAMILIES)})")
        self.config = AutoConfig.from_pretrained(self.where, **self.gguf_kw)
        if self.config.model_type not in FAMILIES:
            raise DumpError(f"unsupported model type {self.config.model_type!r} (the PyTorch dumper knows {sorted(FAMILIES)})")
        self.family = FAMILIES[self.config.model_type]
        if self.gguf_meta is not None:
            self.complete_gguf_config()
        self.arch = self.family.arch
        self.n_layers = self.config.num_hidden_layers
        self.model = None
        self.tokenizer = None

    def complete_gguf_config(self):
        """What transformers' GGUF loader leaves out of the config, from the file itself."""
        meta, arch = self.gguf_meta, self.gguf_meta["general.architecture"]
        if arch == "gpt2":
            # transformers maps gpt2.context_length to n_ctx only, not to n_positions (the size of the
            # learned position table), so a GPT-2 file whose context is not 1024 would not load.
            self.config.n_positions = int(meta["gpt2.context_length"])
            return
        # Qwen3's heads are wider than hidden_size / heads; transformers maps no key_length for it
        # and would fall back on Qwen3Config's default head_dim.
        if f"{arch}.attention.key_length" in meta:
            self.config.head_dim = int(meta[f"{arch}.attention.key_length"])
        scaling = meta.get(f"{arch}.rope.scaling.type")
        if scaling not in (None, "none"):
            raise DumpError(
                f"{self.path} declares RoPE scaling {scaling!r}, which transformers' GGUF loader does not read: refused rather than run unscaled"
            )
        factors = read_gguf_tensor(self.path, "rope_freqs.weight")
        if factors is not None:
            self.config.rope_parameters = rope_factor_parameters(self.config, factors, self.path)
        if arch == "gemma2":
            gemma2_gguf_config(self.config, meta, self.path)
        elif arch == "phi3":
            phi3_gguf_config(self.config, meta, self.path)

    def load(self, dtype="float32"):
        """The weights (eval, eager attention) and the tokenizer: the slow part.

        The weights load as float32 whatever `dtype` is, then are cast to it: float32 -> float64 is
        exact, so a float64 model holds the same values as the float32 one (for a GGUF, transformers'
        own float32 dequantization, not a float64 one that would round some blocks differently).
        """
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self.gguf_meta is None:
            self.tokenizer = AutoTokenizer.from_pretrained(self.where)
        else:
            self.tokenizer = gguf_tokenizer(self.where, self.gguf_kw["gguf_file"], self.gguf_meta)
        model, info = AutoModelForCausalLM.from_pretrained(
            self.where, config=self.config, dtype=torch.float32, attn_implementation="eager", output_loading_info=True, **self.gguf_kw
        )
        # transformers fills weights the file lacks with random ones and only logs it; a reference must not.
        bad = sorted(info["missing_keys"]) + sorted(str(k) for k in info["mismatched_keys"])
        if bad:
            raise DumpError(
                f"{self.path} lacks {len(bad)} weights the {self.arch} model needs (e.g. {', '.join(bad[:3])}): is it a vocab-only or partial file?",
                EXIT_USAGE,
            )
        self.model = model.to(getattr(torch, dtype)).eval()

    def encode(self, text):
        """Prompt ids. Special-token text in the prompt stays text, as with llama.cpp's parse_special=false."""
        if self.gguf_meta is None:
            return self.tokenizer(text, split_special_tokens=True)["input_ids"]
        return encode_like_llama_cpp(self.tokenizer, self.gguf_meta, text)


def read_gguf_metadata(path):
    """The scalar metadata of a GGUF file (the token tables are left out)."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:
        raise DumpError(f"cannot read GGUF {path}: {e}", EXIT_USAGE) from e
    big = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.scores", "tokenizer.ggml.token_type")
    return {k: f.contents() for k, f in reader.fields.items() if k not in big and not k.startswith("GGUF.")}


def read_gguf_tensor(path, name):
    """A float tensor of a GGUF file as a float32 numpy array, or None when the file has none of that name."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(path))
    for t in reader.tensors:
        if t.name == name:
            if t.tensor_type not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
                raise DumpError(f"{path}: {name} is {t.tensor_type.name}, not a float tensor", EXIT_USAGE)
            return np.asarray(t.data, dtype=np.float32).reshape(-1)
    return None


def gemma2_gguf_config(config, meta, path):
    """Gemma-2's settings transformers' GGUF loader does not map (it would run Gemma2Config's
    defaults: caps 50 and 30, query_pre_attn_scalar 256), set as llama.cpp reads them from the file.

    Soft-caps: `gemma2.attn_logit_softcapping` and `gemma2.final_logit_softcapping` when present
    (llama.cpp's defaults when absent are Gemma2Config's, 50 and 30). Score scale: llama.cpp derives
    it, there is no key: 1/sqrt(d / heads) for the 46-layer (27B) model, 1/sqrt(key_length)
    otherwise; transformers' is query_pre_attn_scalar^-0.5. Local layers: llama.cpp's Gemma-2
    pattern makes the even layers sliding-window ones, as transformers' default layer_types does;
    written out here so it does not hang on a default. A file with its own pattern or a separate
    RoPE base for the local layers is refused.
    """
    for key in ("gemma2.attention.sliding_window_pattern", "gemma2.rope.freq_base_swa"):
        if key in meta:
            raise DumpError(f"{path} sets {key}, which the PyTorch dumper does not map onto transformers' Gemma-2: refused rather than guessed")
    for key, field in (("gemma2.attn_logit_softcapping", "attn_logit_softcapping"), ("gemma2.final_logit_softcapping", "final_logit_softcapping")):
        if key in meta:
            setattr(config, field, float(meta[key]))
    heads = config.num_attention_heads
    config.query_pre_attn_scalar = config.hidden_size // heads if config.num_hidden_layers == 46 else config.head_dim
    config.layer_types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(config.num_hidden_layers)]


def phi3_gguf_config(config, meta, path):
    """Phi-3's settings from the file. LongRoPE factors (`rope_factors_long/short.weight`, the
    128k-context models) are refused: transformers' GGUF loader does not read them. A sliding window
    (`phi3.attention.sliding_window`) is left out as llama.cpp leaves it out (it disables Phi-3's
    window); transformers maps none either, so both attend causally over every position."""
    for name in ("rope_factors_long.weight", "rope_factors_short.weight"):
        if read_gguf_tensor(path, name) is not None:
            raise DumpError(f"{path} has {name} (Phi-3 LongRoPE), which transformers' GGUF loader does not read: refused rather than run unscaled")
    if "phi3.rope.scaling.original_context_length" in meta:
        config.original_max_position_embeddings = int(meta["phi3.rope.scaling.original_context_length"])


def rope_factor_parameters(config, factors, path):
    """rope_parameters under which transformers divides each RoPE frequency by the GGUF's
    `rope_freqs` factor of its pair, as llama.cpp does: its LongRoPE type with the file's factors as
    both the short and the long list (so the context length never switches them) and attention
    factor 1 (no cos/sin scaling)."""
    params = dict(config.rope_parameters or {})
    if params.get("rope_type", "default") != "default":
        raise DumpError(f"{path} has rope_freqs and transformers already set RoPE type {params['rope_type']!r}: the dumper does not combine them")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if factors.shape != (head_dim // 2,):
        raise DumpError(f"{path}: rope_freqs has {factors.size} factors for {head_dim // 2} frequency pairs", EXIT_USAGE)
    listed = [float(f) for f in factors]
    return dict(
        rope_type="longrope",
        rope_theta=params["rope_theta"],
        short_factor=listed,
        long_factor=listed,
        attention_factor=1.0,
        original_max_position_embeddings=config.max_position_embeddings,
    )


def gguf_tokenizer(folder, name, meta):
    """transformers' tokenizer rebuilt from a GGUF's metadata, corrected where it differs from llama.cpp.

    SentencePiece (`llama`): its Metaspace pre-tokenizer prepends the space marker only when the text
    does not already start with one, so a leading run of spaces loses a space; llama.cpp (like
    sentencepiece) always prepends one and turns every space into the marker.
    `smollm` pre-tokenizer: llama.cpp splits digits one by one before the GPT-2 split; transformers
    builds a plain ByteLevel pre-tokenizer, which differs when spaces precede a number.
    `llama-bpe` (Llama-3) and `qwen2`: transformers builds each one's own split pattern, and the ids
    agree with llama.cpp's (BOS from the GGUF metadata added as below), so they are left as built.
    Gemma-2 (`gemma2` with a SentencePiece vocabulary): transformers rebuilds the merges in the
    order the tokens appear in the file; llama.cpp merges by the file's token scores, as transformers
    does for `llama` files, so the merges are rebuilt by score (score_merges).
    Checked against llama.cpp's ids for the strings in fixtures/tokenizer/expected.json (test_dump.py).
    """
    from tokenizers import normalizers, pre_tokenizers
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    backend = tokenizer.backend_tokenizer
    model, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre", "default")
    if model == "llama" and meta.get("general.architecture") == "gemma2":
        score_merges(backend, Path(folder) / name)
    if model == "llama":
        steps = [normalizers.Replace(" ", "\u2581")]
        if meta.get("tokenizer.ggml.add_space_prefix", True):
            steps.insert(0, normalizers.Prepend("\u2581"))
        backend.normalizer = normalizers.Sequence(steps)
        backend.pre_tokenizer = None
    elif model == "gpt2" and pre == "smollm":
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
        )
    return tokenizer


def score_merges(backend, path):
    """Replaces the BPE model of `backend` by one with the same vocabulary whose merges are ranked
    by the GGUF's token scores (the score of the merged token, best first), the order llama.cpp's
    SentencePiece tokenizer merges in; transformers' own `generate_merges` builds the list."""
    import json

    import gguf
    from tokenizers import models
    from transformers.tokenization_utils_base import generate_merges

    reader = gguf.GGUFReader(str(path))
    field = reader.fields.get("tokenizer.ggml.scores")
    if field is None:
        raise DumpError(f"{path}: a SentencePiece vocabulary without tokenizer.ggml.scores", EXIT_USAGE)
    scores = [float(field.parts[i][0]) for i in field.data]
    bpe = json.loads(backend.to_str())["model"]
    vocab = bpe["vocab"]
    if len(vocab) != len(scores):
        raise DumpError(f"{path}: {len(scores)} token scores for {len(vocab)} tokens", EXIT_USAGE)
    merges = generate_merges(vocab, {token: scores[i] for token, i in vocab.items()})
    backend.model = models.BPE(vocab, merges, unk_token=bpe["unk_token"], fuse_unk=bpe["fuse_unk"], byte_fallback=bpe["byte_fallback"])


def encode_like_llama_cpp(tokenizer, meta, text):
    """The ids llama.cpp gives `text` (add_bos=true, parse_special=false) with the GGUF's metadata."""
    ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    # llama.cpp adds BOS/EOS as the GGUF says; without the key, SentencePiece vocabularies get BOS.
    if meta.get("tokenizer.ggml.add_bos_token", meta.get("tokenizer.ggml.model") == "llama"):
        ids = [int(meta["tokenizer.ggml.bos_token_id"])] + ids
    if meta.get("tokenizer.ggml.add_eos_token", False):
        ids = ids + [int(meta["tokenizer.ggml.eos_token_id"])]
    return ids


class Recorder:
    """Forward hooks that copy module outputs of one forward pass into `self.out`."""

    def __init__(self):
        self.out = {}
        self.handles = []
        self.active = False

    def keep(self, key, tensor):
        if self.active:
            if key in self.out:
                raise DumpError(f"internal: {key} captured twice in one forward")
            self.out[key] = tensor.detach().clone()

    def output(self, module, key, pick=lambda o: o):
        def hook(_module, _inputs, output):
            self.keep(key, pick(output[0] if isinstance(output, tuple) else output))

        self.handles.append(module.register_forward_hook(hook))

    def input(self, module, key):
        def hook(_module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            self.keep(key, hidden)

        self.handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def remove(self):
        for h in self.handles:
            h.remove()


@contextmanager
def rope_recorder(recorder, attention_modules, modeling):
    """Wraps `apply_rotary_pos_emb` of the family's modeling module (the function its attention
    calls by that global name) to record its outputs per layer.

    The function knows no layer, so a pre-hook on each attention module says which one is running.
    """
    original = modeling.apply_rotary_pos_emb
    current = {"layer": None}

    def wrapped(q, k, *args, **kwargs):
        q_rot, k_rot = original(q, k, *args, **kwargs)
        layer = current["layer"]
        # [1, heads, T, hd] -> [T, heads*hd], the HF head/dim order of q and k.
        recorder.keep(f"blk.{layer}.q_rope", q_rot[0].transpose(0, 1).reshape(q_rot.shape[2], -1))
        recorder.keep(f"blk.{layer}.k_rope", k_rot[0].transpose(0, 1).reshape(k_rot.shape[2], -1))
        return q_rot, k_rot

    handles = []
    for i, attn in enumerate(attention_modules):
        handles.append(attn.register_forward_pre_hook(lambda _m, _a, i=i: current.__setitem__("layer", i)))
    modeling.apply_rotary_pos_emb = wrapped
    try:
        yield
    finally:
        modeling.apply_rotary_pos_emb = original
        for h in handles:
            h.remove()


def hook_decoder(rec, model, family):
    """Hooks on a Llama-layout decoder (Llama, Qwen2, Qwen3, Gemma-2, Phi-3). q/k/v are the
    projections' outputs, biases included (Qwen2's nn.Linear adds them), or for Phi-3 the three
    slices of its fused qkv_proj's output, as its attention cuts them; Qwen3's q_norm/k_norm run on
    [1, T, heads, hd]. Gemma-2's norm after attention is post_attn_norm, the one before the FFN
    ffn_norm, the one after it post_ffn_norm."""
    c = model.config
    hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    q_width, kv_width = c.num_attention_heads * hd, c.num_key_value_heads * hd
    for i, layer in enumerate(model.model.layers):
        p = f"blk.{i}."
        rec.output(layer.input_layernorm, p + "attn_norm")
        if family.fused_qkv:
            rec.output(layer.self_attn.qkv_proj, p + "q", lambda t: t[0, :, :q_width])
            rec.output(layer.self_attn.qkv_proj, p + "k", lambda t: t[0, :, q_width : q_width + kv_width])
            rec.output(layer.self_attn.qkv_proj, p + "v", lambda t: t[0, :, q_width + kv_width :])
        else:
            rec.output(layer.self_attn.q_proj, p + "q", lambda t: t[0])
            rec.output(layer.self_attn.k_proj, p + "k", lambda t: t[0])
            rec.output(layer.self_attn.v_proj, p + "v", lambda t: t[0])
        if family.qk_norm:
            rec.output(layer.self_attn.q_norm, p + "q_norm", lambda t: t[0].flatten(1))
            rec.output(layer.self_attn.k_norm, p + "k_norm", lambda t: t[0].flatten(1))
        rec.output(layer.self_attn, p + "attn_out")
        if family.sandwich_norms:
            rec.output(layer.post_attention_layernorm, p + "post_attn_norm")
            rec.output(layer.pre_feedforward_layernorm, p + "ffn_norm")
            rec.output(layer.post_feedforward_layernorm, p + "post_ffn_norm")
        else:
            rec.output(layer.post_attention_layernorm, p + "ffn_norm")
        rec.output(layer.mlp, p + "ffn_out")
        rec.output(layer, p + "block_out")
    rec.input(model.model.layers[0], "embed")
    rec.output(model.model.norm, "final_norm")
    return [layer.self_attn for layer in model.model.layers]


def hook_gpt2(rec, model):
    d = model.config.n_embd
    for i, block in enumerate(model.transformer.h):
        p = f"blk.{i}."
        rec.output(block.ln_1, p + "attn_norm")
        # c_attn is fused: [.., 3d] = q | k | v.
        rec.output(block.attn.c_attn, p + "q", lambda t: t[0, :, :d])
        rec.output(block.attn.c_attn, p + "k", lambda t: t[0, :, d : 2 * d])
        rec.output(block.attn.c_attn, p + "v", lambda t: t[0, :, 2 * d :])
        rec.output(block.attn, p + "attn_out")
        rec.output(block.ln_2, p + "ffn_norm")
        rec.output(block.mlp, p + "ffn_out")
        rec.output(block, p + "block_out")
    rec.input(model.transformer.h[0], "embed")
    rec.output(model.transformer.ln_f, "final_norm")
    return []


def cache_layer(cache, i):
    """(keys, values) of layer i, each [1, KV, T, hd], across the cache APIs transformers has had."""
    if hasattr(cache, "layers"):
        return cache.layers[i].keys, cache.layers[i].values
    if hasattr(cache, "key_cache"):
        return cache.key_cache[i], cache.value_cache[i]
    return cache[i][0], cache[i][1]


def full_cache(family):
    """The cache the prompt forward starts with: None (the model's own) for families without a
    sliding window; for those with one, a cache that keeps every position on every layer (the
    model's own keeps only the window on its local layers), so k_cache/v_cache are the catalog's
    [KV, T, hd] and the window is applied by the attention mask alone."""
    if not family.sliding_window:
        return None
    from transformers import DynamicCache

    return DynamicCache()


def squeeze_batch(t):
    """[1, T, X] -> [T, X]; leaves already-squeezed tensors alone."""
    return t[0] if t.dim() == 3 else t


def run(args, dtype="float32", reference="pytorch"):
    """The dump of `args` computed in `dtype` (one of DTYPES), under the reference name `reference`."""
    import torch
    import transformers

    if dtype not in DTYPES:
        raise DumpError(f"internal: dtype {dtype!r} is not one of {DTYPES}")
    torch.set_num_threads(args.threads)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    ref = Model(args.model)
    # Made before the weights load so the manifest's wall time includes loading.
    version = f"transformers {transformers.__version__}, torch {torch.__version__}" + ("" if dtype == "float32" else f", {dtype}")
    dump = Dump(reference, version, args, ref.arch, ref.n_layers, dtype=dtype)
    ref.load(dtype)
    model, n_layers = ref.model, ref.n_layers

    ids = ref.encode(args.prompt)
    if not ids:
        raise DumpError("the prompt tokenizes to nothing", EXIT_USAGE)
    if len(ids) + args.n_generate > ref.config.max_position_embeddings:
        raise DumpError(
            f"{len(ids)} prompt tokens + {args.n_generate} generated exceed the model's context of "
            f"{ref.config.max_position_embeddings}: shorten the prompt or --n-generate",
            EXIT_USAGE,
        )
    dump.put("tokens", ids)

    rec = Recorder()
    family = ref.family
    attention_modules = hook_gpt2(rec, model) if family.arch == "gpt2" else hook_decoder(rec, model, family)
    rope = rope_recorder(rec, attention_modules, family.module()) if family.rope else nullcontext()
    with torch.no_grad(), computing_in(model, family, dtype), rope:
        rec.active = True
        out = model(torch.tensor([ids]), past_key_values=full_cache(family), use_cache=True, output_attentions=True)
        rec.active = False

        for key, t in rec.out.items():
            dump.put(key, squeeze_batch(t).numpy())
        if family.rope and not any(k.endswith("q_rope") for k in rec.out):
            for i in range(n_layers):
                for name in ("q_rope", "k_rope"):
                    dump.mark_unavailable(f"blk.{i}.{name}", f"transformers did not call {family.modeling}.apply_rotary_pos_emb (kernelized RoPE?)")

        cache = out.past_key_values
        for i in range(n_layers):
            # [1, KV, T, hd] -> [KV, T, hd]; Dump.put copies, so the loop below cannot change them.
            keys, values = cache_layer(cache, i)
            dump.put(f"blk.{i}.k_cache", keys[0].numpy())
            dump.put(f"blk.{i}.v_cache", values[0].numpy())
            if out.attentions is not None and out.attentions[i] is not None:
                dump.put(f"blk.{i}.attn_probs", out.attentions[i][0].numpy())
            else:
                dump.mark_unavailable(f"blk.{i}.attn_probs", "output_attentions returned nothing")

        logits = out.logits[0]  # the model's dtype: the probs softmax and the greedy choice stay in it
        last = logits[-1]
        dump.put("logits", logits.numpy())
        dump.put("last_logits", last.numpy())
        dump.put("argmax", int(torch.argmax(last)))  # torch.argmax returns the first maximum
        dump.put("probs", torch.softmax(last / args.temperature, dim=-1).numpy())

        # One token at a time through the cache (not generate()), so the incremental path is
        # exercised; at the chosen decode steps the same hooks (and the RoPE wrapper) record it.
        c = ref.config
        heads = c.num_attention_heads
        sizes = dict(
            d=c.hidden_size, H=heads, KV=getattr(c, "num_key_value_heads", None) or heads, hd=getattr(c, "head_dim", None) or c.hidden_size // heads
        )
        taps = DecodeTaps(len(ids), args.n_generate, sizes)

        def feed(token, step):
            nonlocal cache
            chosen = taps.wants(step)
            rec.out, rec.active = {}, chosen
            out = model(torch.tensor([[token]]), past_key_values=cache, use_cache=True, output_attentions=chosen)
            rec.active = False
            cache = out.past_key_values
            if chosen:
                for key, t in rec.out.items():
                    if key.startswith("blk."):
                        taps.keep(step, key, squeeze_batch(t).numpy())
                for i in range(n_layers):
                    keys, values = cache_layer(cache, i)  # after this step: [1, KV, T+step, hd]
                    taps.keep(step, f"blk.{i}.k_cache", keys[0].numpy())
                    taps.keep(step, f"blk.{i}.v_cache", values[0].numpy())
                    if out.attentions is not None and out.attentions[i] is not None:
                        taps.keep(step, f"blk.{i}.attn_probs", out.attentions[i][0].numpy())  # [H, 1, T+step]
            return out.logits[0, -1].numpy()

        step_logits, generated = decode(last.numpy(), feed, args.n_generate, args.force_tokens)
        taps.put_into(dump)
        dump.put("step_logits", step_logits)
        dump.put("generated", generated)
        sample_catalog(dump, last.numpy(), lambda logits, t, k, p: sampler_distribution(logits, t, k, p, dtype))
    rec.remove()
    print(f"{reference}: {len(ids)} prompt tokens, generated {ref.tokenizer.decode(generated.tolist())!r}", file=sys.stderr)
    return dump


def sampler_distribution(logits, temperature, top_k, top_p, dtype):
    """transformers' own logits warpers, in the order its generate() applies them (temperature,
    top-k, top-p), then the softmax, all in `dtype`: what its sampling draws from."""
    import numpy as np
    import torch
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    scores = torch.from_numpy(np.asarray(logits).astype(dtype))[None]  # widened by numpy: no float32 op under the guard
    warpers = [TemperatureLogitsWarper(temperature)]
    warpers += [TopKLogitsWarper(top_k)] if top_k > 0 else []
    warpers += [TopPLogitsWarper(top_p)] if top_p < 1.0 else []
    no_ids = torch.zeros((1, 0), dtype=torch.long)  # the warpers here do not look at the tokens so far
    for warp in warpers:
        scores = warp(no_ids, scores)
    return torch.softmax(scores, dim=-1)[0].numpy()


def cli(reference="pytorch", dtype="float32"):
    """The command line (dumpkit's contract and exit codes) of the dumper named `reference`, computing in `dtype`."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF loader has its own progress bar
    main(reference, lambda args: run(args, dtype=dtype, reference=reference))


if __name__ == "__main__":
    cli()
