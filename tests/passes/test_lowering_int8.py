"""The int8 fallback's dequantization in standard ops (``passes/lowering/int4.py``: the 8-bit
gate/up rows and the re-laid-out down columns) gives, bit for bit, the matrix ONNX Runtime's
own MatMulNBits (bits 8) computes with."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

from fffc.contract import int8 as q8
from fffc.passes.lowering.int4 import dequantize_columns8, dequantize_rows8
from fffc.verify import matmul_nbits as mn


def _run(build, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """The graph ``build(tape, *inputs)`` makes, on ``arrays`` (its inputs by name)."""
    tape = ir.tape.Tape()
    inputs = [ir.Value(name=n, type=ir.TensorType(ir.DataType.from_numpy(a.dtype)),
                       shape=ir.Shape(a.shape)) for n, a in arrays.items()]
    out = build(tape, *inputs)
    out.name = "w"
    graph = ir.Graph(inputs, [out], nodes=tape.nodes, opset_imports={"": 18})
    proto = ir.serde.serialize_model(ir.Model(graph, ir_version=9))
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, arrays)[0]


@pytest.mark.parametrize("zero_points", [False, True], ids=["symmetric", "zero_points"])
@pytest.mark.parametrize("block", [32, 128])
def test_fallback_dequantizes_as_onnxruntime(block: int, zero_points: bool) -> None:
    w = np.random.default_rng(7).standard_normal((2 * block, 96)).astype(np.float32)
    m = mn.quantize8(w, block, symmetric=not zero_points)
    want = mn.dequantize(m)  # [K, N]: ONNX Runtime's MatMulNBits on the identity
    rows = {"b": m.codes, "s": m.scales, **({"z": m.zero_points} if zero_points else {})}
    got = _run(lambda t, b, s, z=None: dequantize_rows8(t, b, s, z), rows)
    np.testing.assert_array_equal(got.T, want)
    c = q8.columns(m)
    cols = {"b": c.codes, "s": c.scales, **({"z": c.zero_points} if zero_points else {})}
    got = _run(lambda t, b, s, z=None: dequantize_columns8(t, b, s, z), cols)
    np.testing.assert_array_equal(got, want)
