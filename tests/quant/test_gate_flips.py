"""The count of gate decisions that differ between fffc's function on int4 and int8 weights and ONNX
Runtime's MatMulNBits: equal to the count taken here independently, on weights from ONNX
Runtime's own quantizer."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fffc.contract import int4, int8
from fffc.contract.int4 import Int4Weights
from fffc.contract.kinds import Granularity, QuantSource, WeightBits
from fffc.contract.quant import QuantizedWeight
from fffc.verify import matmul_nbits
from fffc.verify.decisions import gate_flips
from tests.fixtures.quantized import ort_weight

K, N, BLOCK, TOKENS = 256, 512, 32, 24


def columns(m):
    return (int4.columns if isinstance(m, int4.Q4Matrix) else int8.columns)(m)


def _gate(m, level: int) -> tuple[onnx.ModelProto, onnx.NodeProto]:
    node, inits = matmul_nbits.node("x", "y", "w1", m, accuracy_level=level)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", N])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model, node


def _rounded(x: np.ndarray) -> np.ndarray:
    """x rounded to int8 per block of BLOCK (scale max|x|/127, ties to even), in float32."""
    out = np.empty_like(x)
    for t in range(x.shape[0]):
        for b in range(0, K, BLOCK):
            v = x[t, b:b + BLOCK]
            am = np.float32(np.abs(v).max())
            q = np.round(v * (np.float32(127) / am)) if am > 0 else np.zeros_like(v)
            out[t, b:b + BLOCK] = q * (am / np.float32(127))
    return out


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("level,int8_x", [(4, True), (0, False), (0, True)])
def test_flips_are_the_decisions_that_differ(bits, symmetric, level, int8_x):
    """(0, True): fffc's function rounds x, ONNX Runtime's node does not: decisions near 0
    differ, and the count is still the count."""
    rng = np.random.default_rng(3)
    quantize = matmul_nbits.quantize if bits == 4 else matmul_nbits.quantize8
    m = quantize(rng.standard_normal((K, N)).astype(np.float32), BLOCK, symmetric)
    down = columns(quantize(rng.standard_normal((N, K)).astype(np.float32), BLOCK, symmetric))
    model, node = _gate(m, level)
    b1 = (0.1 * rng.standard_normal(N)).astype(np.float32)
    xs = [rng.standard_normal((TOKENS // 2, K)).astype(np.float32) for _ in range(2)]

    session = matmul_nbits.session(model)
    w = ort_weight(model, node).astype(np.float64)  # ONNX Runtime's dequantized W [K, N]
    want = 0
    for x in xs:
        theirs = session.run(None, {"x": x})[0] + b1
        ours = (_rounded(x) if int8_x else x).astype(np.float64) @ w + b1
        want += int(((theirs > 0) != (ours > 0)).sum())

    fmt = QuantizedWeight(QuantSource.MATMUL_NBITS, bits, K, N, Granularity.BLOCK, BLOCK, 0,
                          symmetric, accuracy_level=level)
    inputs = {"W1": m.codes, "W1S": m.scales, "B1": b1, "W2": down.codes, "W2S": down.scales,
              **({} if symmetric else {"W1Z": m.zero_points, "W2Z": down.zero_points})}
    got = gate_flips(Int4Weights(BLOCK, not symmetric, int8_x, WeightBits(bits)), fmt, xs, inputs)
    assert (got.differ, got.of) == (want, TOKENS * N)
    if level == 0 and int8_x:
        assert got.differ > 0
    else:
        assert got.rate < 0.01
