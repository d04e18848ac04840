"""One llama.cpp session in its own process: prompt forward with graph taps, then greedy decoding.

    python capture.py REQUEST.json OUT_DIR

dump.py runs this as a child process so that a crash inside llama.cpp (an abort on a GGML_ASSERT,
a segfault) kills only the child and comes back as an exit status the parent can report in one
line. The request names the graph tensors to tap per architecture (`{"llama": {"blk.{L}.q":
["Qcur-{L}", "MUL_MAT"], ...}}`, `{L}` standing for every layer); this file knows llama.cpp's API,
not what the tensors mean. A graph that gives several layers' nodes one name (Gemma-2's
`ffn_post_norm`) is told apart by a third entry, the name of one of the node's sources (`[
"ffn_post_norm", "MUL", "blk.{L}.post_ffw_norm.weight"]`: the layer's own weight).

The prompt is decoded as one micro-batch with logits requested at every position (otherwise
llama.cpp prunes the last layer to the last token) and flash attention off (so the softmax is a
graph node). While it computes, ggml's eval callback is asked about every graph node; the tapped
ones are copied out as numpy arrays in ggml's reversed axis order. Decoding (dumpkit.decode) then
feeds one token at a time through the same context, so it exercises llama.cpp's own KV cache: the
greedy tokens, or the request's `force_tokens`. The taps are off except at the chosen decode steps
(dumpkit.decode_steps), whose one-token graphs are tapped by the same names and saved as
`@<step>:<key>`. Each one-token batch asks for the
logits of its only position, which llama_get_logits then returns as a single row.

OUT_DIR receives `tensors.npz` (the taps, plus `logits` as llama_get_logits returns them and the
decode steps' `step_logits`) and `meta.json` (sizes, token ids, generated ids). Exit 2 for a prompt the model cannot take, 3 for
anything llama.cpp refuses or fails at; the last stderr line says why.
"""

import ctypes
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))

from dumpkit import DumpError, decode, decode_steps  # noqa: E402

EXIT_USAGE = 2
EXIT_REFERENCE = 3
GGML_LOG_LEVEL_ERROR = 4
GGML_TYPES = {"f32": 0, "f16": 1}


class CaptureError(Exception):
    def __init__(self, message, code=EXIT_REFERENCE):
        super().__init__(message)
        self.code = code


class Taps:
    """The eval callback: says which graph nodes it wants and copies them out once computed."""

    def __init__(self, ggml, wanted):
        self.ggml = ggml
        self.wanted = wanted  # (label, op) or (label, op, source name) -> key
        self.by_source = {node[:2] for node in wanted if len(node) == 3}
        self.arrays = {}  # key -> np.ndarray
        self.active = True
        self.error = None
        self.callback = self._make_callback()

    def _make_callback(self):
        import llama_cpp

        def on_eval(t, ask, _user_data):
            if not self.active or self.error is not None:
                return not ask
            try:
                if not self.ggml.layout_checked:
                    self.ggml.check_layout(t)
                key = self.key_of(t)
                if ask or key is None:
                    return key is not None
                if key in self.arrays:
                    raise CaptureError(f"graph node {self.ggml.label(t)} ({self.ggml.op(t)}) for {key} appears twice in one decode")
                self.arrays[key] = self.ggml.read(t)
                return True
            except Exception as e:  # raised again after llama_decode returns; an exception cannot cross C
                self.error = e
                return False

        return llama_cpp.ggml_backend_sched_eval_callback(on_eval)

    def key_of(self, t):
        """The key the node `t` is tapped for, or None."""
        label_op = (self.ggml.label(t), self.ggml.op(t))
        key = self.wanted.get(label_op)
        if key is None and label_op in self.by_source:
            keys = [self.wanted.get(label_op + (self.ggml.name(s),)) for s in self.ggml.sources(t)]
            key = next((k for k in keys if k is not None), None)
        return key

    def missing(self):
        return [f"{node[0]} ({', '.join(node[1:])}) for {key}" for node, key in self.wanted.items() if key not in self.arrays]


def expand(graph, n_layers):
    """{key template: [label template, op(, source template)]} -> {(label, op(, source)): key} for every layer."""
    wanted = {}
    for key, node in graph.items():
        layers = range(n_layers) if "{L}" in key else [None]
        for layer in layers:
            wanted[tuple(part.replace("{L}", str(layer)) for part in node)] = key.replace("{L}", str(layer))
    return wanted


class Session:
    """A loaded model and context, freed on exit."""

    def __init__(self, request):
        import llama_cpp
        from ggml_tensor import Ggml
        from llama_cpp._ggml import libggml

        self.L = L = llama_cpp
        self.ggml = Ggml(libggml)
        self.errors = []
        # llama.cpp logs to stderr unless told otherwise; keep only errors, they explain a failure.
        self._log = L.llama_log_callback(self._on_log)
        L.llama_log_set(self._log, None)
        L.llama_backend_init()
        self.model = L.llama_model_load_from_file(request["model"].encode(), L.llama_model_default_params())
        if not self.model:
            raise CaptureError(f"llama.cpp could not load {request['model']}: {self.first_error()}")
        self.ctx = None
        self.vocab = L.llama_model_get_vocab(self.model)
        self.arch = self.meta("general.architecture")
        self.n_layers = L.llama_model_n_layer(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)

    def _on_log(self, level, text, _user_data):
        if level == GGML_LOG_LEVEL_ERROR and text:
            self.errors.append(text.decode("utf-8", "replace").strip())

    def last_error(self):
        return self.errors[-1] if self.errors else "no error logged"

    def first_error(self):
        """The root cause when llama.cpp logs a chain of errors while unwinding."""
        return self.errors[0] if self.errors else "no error logged"

    def meta(self, key):
        buf = ctypes.create_string_buffer(256)
        n = self.L.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode() if n >= 0 else None

    def sizes(self):
        L, m = self.L, self.model
        return dict(
            version=L.__version__,
            arch=self.arch,
            n_layers=self.n_layers,
            d=L.llama_model_n_embd(m),
            H=L.llama_model_n_head(m),
            KV=L.llama_model_n_head_kv(m),
            V=self.n_vocab,
            rope_type=L.llama_model_rope_type(m),
            n_ctx_train=L.llama_model_n_ctx_train(m),
        )

    def tokenize(self, text):
        """llama.cpp's ids; BOS/EOS added as the GGUF metadata says, special tokens in the text not parsed."""
        data = text.encode()
        cap = len(data) + 8
        buf = (self.L.llama_token * cap)()
        n = self.L.llama_tokenize(self.vocab, data, len(data), buf, cap, True, False)
        if n < 0:
            raise CaptureError(f"llama_tokenize needs {-n} slots, more than {cap}")
        return list(buf[:n])

    def piece(self, token):
        buf = ctypes.create_string_buffer(256)
        n = self.L.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        return buf.raw[: max(n, 0)]

    def open_context(self, n_ctx, n_batch, threads, kv_type, taps):
        L = self.L
        p = L.llama_context_default_params()
        p.n_ctx = n_ctx
        p.n_batch = p.n_ubatch = n_batch  # the whole prompt in one micro-batch, so each tap is seen once
        p.n_seq_max = 1
        # Sliding-window layers (Gemma-2) get a cache as large as the others, one cell a position
        # (llama.cpp's default, said here so it cannot change under us): the window is then the
        # mask's work alone, and their cache views hold every position, those outside it included.
        p.swa_full = True
        p.n_threads = p.n_threads_batch = threads
        p.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
        p.type_k = p.type_v = GGML_TYPES[kv_type]
        p.cb_eval = taps.callback
        p.cb_eval_user_data = None
        p.no_perf = True
        self.ctx = L.llama_init_from_model(self.model, p)
        if not self.ctx:
            raise CaptureError(f"llama.cpp could not create a context: {self.last_error()}")

    def decode(self, tokens, first_pos, all_logits):
        L = self.L
        batch = L.llama_batch_init(len(tokens), 0, 1)
        try:
            for i, token in enumerate(tokens):
                batch.token[i] = token
                batch.pos[i] = first_pos + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = all_logits or i == len(tokens) - 1
            batch.n_tokens = len(tokens)
            status = L.llama_decode(self.ctx, batch)
        finally:
            L.llama_batch_free(batch)
        return status

    def logits(self, n_rows):
        ptr = self.L.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(ptr, shape=(n_rows * self.n_vocab,)).reshape(n_rows, self.n_vocab).copy()

    def close(self):
        if self.ctx:
            self.L.llama_free(self.ctx)
        if self.model:
            self.L.llama_model_free(self.model)


def run(request, out):
    session = Session(request)
    try:
        graph = request["graph"].get(session.arch)
        if graph is None:
            raise CaptureError(f"architecture {session.arch!r} is not supported (supported: {', '.join(request['graph'])})")
        sizes = session.sizes()
        tokens = session.tokenize(request["prompt"])
        n_generate = request["n_generate"]
        if not tokens:
            raise CaptureError("the prompt tokenizes to nothing", EXIT_USAGE)
        if len(tokens) + n_generate > sizes["n_ctx_train"]:
            raise CaptureError(
                f"{len(tokens)} prompt tokens + {n_generate} generated exceed the model's context of {sizes['n_ctx_train']}: "
                "shorten the prompt or --n-generate",
                EXIT_USAGE,
            )

        taps = Taps(session.ggml, expand(graph, session.n_layers))
        session.open_context(len(tokens) + max(n_generate, 1), len(tokens), request["threads"], request["kv_type"], taps)
        status = session.decode(tokens, 0, all_logits=True)
        if taps.error is not None:
            raise taps.error
        if status != 0:
            raise CaptureError(f"llama_decode of the prompt returned {status}: {session.last_error()}")
        if taps.missing():
            raise CaptureError(f"llama.cpp's {session.arch} graph has no {taps.missing()[0]} (of {len(taps.missing())} missing taps)")
        logits = session.logits(len(tokens))
        taps.active = False

        prompt_arrays = taps.arrays
        chosen = decode_steps(n_generate)

        def feed(token, step):
            # Decode step `step` puts its token at position T+step-1; at a chosen step the same
            # graph nodes are tapped, kept as "@<step>:<key>".
            taps.arrays, taps.active = {}, step in chosen
            status = session.decode([token], len(tokens) + step - 1, all_logits=False)
            if taps.error is not None:
                raise taps.error
            if status != 0:
                raise CaptureError(f"llama_decode of decode step {step} (token {token}) returned {status}: {session.last_error()}")
            if taps.active and taps.missing():
                raise CaptureError(f"llama.cpp's {session.arch} decode graph has no {taps.missing()[0]} (of {len(taps.missing())} missing taps)")
            if taps.active:
                prompt_arrays.update({f"@{step}:{key}": a for key, a in taps.arrays.items()})
            taps.active = False
            return session.logits(1)[0]  # the one position that asked for logits

        step_logits, generated = decode(logits[-1], feed, n_generate, request.get("force_tokens"))
        generated = generated.tolist()

        out.mkdir(parents=True, exist_ok=True)
        np.savez(out / "tensors.npz", logits=logits, step_logits=step_logits, **prompt_arrays)
        meta = dict(sizes, tokens=tokens, generated=generated, text=b"".join(session.piece(t) for t in generated).decode("utf-8", "replace"))
        (out / "meta.json").write_text(json.dumps(meta))
    finally:
        session.close()


def main(argv):
    if len(argv) != 3:
        print("usage: capture.py REQUEST.json OUT_DIR", file=sys.stderr)
        return EXIT_USAGE
    try:
        request = json.loads(Path(argv[1]).read_text())
        run(request, Path(argv[2]))
    except (CaptureError, DumpError) as e:
        print(e, file=sys.stderr)
        return e.code
    except ImportError as e:
        print(f"reference not installed ({e}); run scripts/setup-references.sh", file=sys.stderr)
        return EXIT_REFERENCE
    except Exception as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_REFERENCE
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
