"""Writes fixtures/gguf/types.gguf: one small tensor per weight type the engine supports, and
fixtures/gguf/types.expected.json: each tensor's values as the `gguf` package dequantizes them.

The engine's GGUF reader and kernels are tested against these values, which come from an
implementation that is not ours (gguf-py's numpy quantizers).

    ~/.cache/parity/venv/bin/python scripts/make-gguf-types-fixture.py
"""

import json
from pathlib import Path

import gguf
import numpy as np

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "gguf"
TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"]
SHAPE = (3, 64)  # rows x cols: two 32-value blocks per row


def main():
    rng = np.random.default_rng(20261122)
    OUT.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(OUT / "types.gguf"), "llama")
    writer.add_string("parity.fixture", "one tensor per supported type")
    writer.add_array("parity.ints", [1, -2, 3])
    writer.add_float32("parity.pi", 3.140625)
    writer.add_bool("parity.flag", True)
    expected = {}
    for name in TYPES:
        values = (rng.standard_normal(SHAPE) * 0.7).astype(np.float32)
        qtype = getattr(gguf.GGMLQuantizationType, name)
        data = gguf.quants.quantize(values, qtype) if name != "F32" else values
        writer.add_tensor(f"w.{name.lower()}", data, raw_dtype=qtype)
        back = gguf.quants.dequantize(data, qtype).astype(np.float32).reshape(SHAPE)
        expected[f"w.{name.lower()}"] = {"type": name, "shape": list(SHAPE), "values": [float(v) for v in back.reshape(-1)]}
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    (OUT / "types.expected.json").write_text(json.dumps(expected) + "\n")
    print(f"wrote {OUT}/types.gguf and types.expected.json")


if __name__ == "__main__":
    main()
