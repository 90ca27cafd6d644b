"""How often a quantized site's gate decides a neuron otherwise than ONNX Runtime's own
kernel on the same input.

An exact site skips neuron j where its gate ``h_j = (x·W1)_j + b1_j`` is not positive. On
int4 or int8 weights fffc computes ``h`` on the dequantized codes (x rounded to int8 per block where
the model's MatMulNBits use ``accuracy_level`` 4): the function its kernels compute up to
float32 reassociation, taken here in float64. ONNX Runtime's MatMulNBits computes the same
product with its own roundings (another order of summation; at accuracy_level 4 its own
computation of x's int8 blocks), so a gate within those roundings of 0 is on in one and off
in the other. Each such neuron changes the FFN's output by at most its own
small contribution; the count says how many there are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from ..contract.int4 import Int4Weights, float_weights, quantize_x
from ..contract.kinds import QuantSource
from ..contract.quant import QuantizedWeight
from ..contract.sites import GateFlips

MS = "com.microsoft"


def _gate_session(fmt: QuantizedWeight, weights: Mapping[str, np.ndarray]) -> ort.InferenceSession:
    """ONNX Runtime's MatMulNBits as the site's gate node is (its K, N, bits, block and
    accuracy_level), its weights initializers as in the model: ONNX Runtime prepacks
    constant weights, and only prepacked ones take the accuracy_level 4 path."""
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in weights.items()]
    node = helper.make_node("MatMulNBits", ["X", *weights], ["Y"], domain=MS, K=fmt.k,
                            N=fmt.n, bits=fmt.bits, block_size=fmt.block_size,
                            accuracy_level=fmt.accuracy_level or 0)
    graph = helper.make_graph(
        [node], "gate", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", fmt.k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["T", fmt.n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(MS, 1)])
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])


def gate_flips(q: Int4Weights, fmt: QuantizedWeight, xs: Sequence[np.ndarray],
               inputs: Mapping[str, np.ndarray]) -> GateFlips | None:
    """Gate decisions of an int4 or int8 site (its op ``inputs``: W1, W1S, [W1Z], [B1], W2...) on the
    captured inputs ``xs`` that differ between fffc's function and ONNX Runtime's
    MatMulNBits; None where the gate is not MatMulNBits."""
    if fmt.source is not QuantSource.MATMUL_NBITS:
        return None
    w1 = float_weights(inputs)["W1"].astype(np.float64)
    b1 = inputs.get("B1")
    feeds = {"B": np.asarray(inputs["W1"]).reshape(fmt.n, fmt.k // fmt.block_size, -1),
             "S": np.asarray(inputs["W1S"], np.float32)}
    if inputs.get("W1Z") is not None:
        feeds["Z"] = np.asarray(inputs["W1Z"])
    session = _gate_session(fmt, feeds)
    differ = of = 0
    for x in xs:
        x2 = np.asarray(x, np.float32).reshape(-1, fmt.k)
        theirs = session.run(None, {"X": x2})[0]
        ours = (quantize_x(x2, q.block) if q.int8_x else x2).astype(np.float64) @ w1
        if b1 is not None:
            theirs = theirs + np.asarray(b1, np.float32)
            ours = ours + np.asarray(b1, np.float64)
        differ += int(np.count_nonzero((theirs > 0) != (ours > 0)))
        of += theirs.size
    return GateFlips(differ, of)
