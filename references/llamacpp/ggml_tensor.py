"""Reading a ggml graph tensor from Python: its name, op, sources and data as a numpy array.

The eval callback hands us a bare `struct ggml_tensor *`. ggml has accessor functions for the name,
the op and the byte size, but none for the shape, strides or sources, so the head of the struct is
mirrored here with ctypes. `check_layout` compares the mirrored name field with `ggml_get_name` on
a live tensor, which catches a ggml whose struct no longer matches before any number is trusted.
"""

import ctypes

import numpy as np

GGML_MAX_DIMS = 4
GGML_MAX_OP_PARAMS = 64  # bytes
GGML_MAX_SRC = 10
GGML_MAX_NAME = 64

# ggml_type ids of the element types we can read without dequantizing.
NUMPY_TYPES = {0: np.float32, 1: np.float16, 26: np.int32, 27: np.int64}


class _Tensor(ctypes.Structure):
    """The leading fields of `struct ggml_tensor` (ggml.h), in declaration order."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
        ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * GGML_MAX_SRC),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * GGML_MAX_NAME),
    ]


class Ggml:
    """The few ggml functions the capture needs, typed once."""

    def __init__(self, lib):
        self.lib = lib
        for fn, restype, argtypes in (
            ("ggml_get_name", ctypes.c_char_p, [ctypes.c_void_p]),
            ("ggml_op_desc", ctypes.c_char_p, [ctypes.c_void_p]),
            ("ggml_nbytes", ctypes.c_size_t, [ctypes.c_void_p]),
            ("ggml_type_name", ctypes.c_char_p, [ctypes.c_int]),
            ("ggml_backend_tensor_get", None, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]),
        ):
            f = getattr(lib, fn)
            f.restype, f.argtypes = restype, argtypes
        self.layout_checked = False

    def check_layout(self, t):
        mirrored = _Tensor.from_address(t).name
        if mirrored != self.lib.ggml_get_name(t):
            raise RuntimeError(
                f"ggml_tensor layout mismatch (mirrored name {mirrored!r}, ggml_get_name {self.lib.ggml_get_name(t)!r}): "
                "this ggml is not the one references/llamacpp/ggml_tensor.py mirrors"
            )
        self.layout_checked = True

    def name(self, t):
        return self.lib.ggml_get_name(t).decode("utf-8", "replace")

    def op(self, t):
        return self.lib.ggml_op_desc(t).decode()

    def sources(self, t):
        return [s for s in _Tensor.from_address(t).src if s]

    def label(self, t, depth=3):
        """The tensor's name, or for an unnamed node (`node_<n>`, which graph builders leave when they
        do not call the naming callback) its op applied to its sources' labels, e.g.
        `ADD(MUL_MAT(blk.0.attn_output.weight, kqv_out-0), blk.0.attn_output.bias)`."""
        name = self.name(t)
        if not name.startswith("node_") or depth == 0:
            return name
        return f"{self.op(t)}({', '.join(self.label(s, depth - 1) for s in self.sources(t))})"

    def read(self, t):
        """The tensor's elements as a numpy array in ggml's axis order reversed (numpy shape
        `ne[3], ne[2], ne[1], ne[0]`, so the last numpy axis is ggml's fastest), copied out of the
        backend buffer and honouring the strides of views and permutes."""
        h = _Tensor.from_address(t)
        dtype = NUMPY_TYPES.get(h.type)
        if dtype is None:
            raise RuntimeError(f"cannot read {self.name(t)}: element type {self.lib.ggml_type_name(h.type).decode()} is not plain")
        span = self.lib.ggml_nbytes(t)
        raw = np.empty(span, dtype=np.uint8)
        self.lib.ggml_backend_tensor_get(t, raw.ctypes.data, 0, span)
        shape = tuple(reversed(h.ne[:]))
        strides = tuple(reversed(h.nb[:]))
        view = np.lib.stride_tricks.as_strided(raw.view(dtype), shape=shape, strides=strides)
        return view.astype(np.float32 if dtype == np.float16 else dtype, order="C")
