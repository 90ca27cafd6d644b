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

from ..contract import int4, int8
from ..contract.int4 import Int4Weights, float_weights, quantize_x
from ..contract.kinds import QuantSource, WeightBits
from ..contract.quant import QuantizedWeight
from ..contract.sites import GateFlips
from . import matmul_nbits


def gate_flips(q: Int4Weights, fmt: QuantizedWeight, xs: Sequence[np.ndarray],
               inputs: Mapping[str, np.ndarray]) -> GateFlips | None:
    """Gate decisions of an int4 or int8 site (its op ``inputs``: W1, W1S, [W1Z], [B1],
    W2, ...) on the captured inputs ``xs`` that differ between fffc's function and ONNX Runtime's
    MatMulNBits; None where the gate is not MatMulNBits."""
    if fmt.source is not QuantSource.MATMUL_NBITS:
        return None
    w1 = float_weights(inputs)["W1"].astype(np.float64)
    b1 = inputs.get("B1")
    rows = int8.rows_matrix if fmt.bits == WeightBits.INT8 else int4.rows_matrix
    gate = rows(np.asarray(inputs["W1"]).reshape(fmt.n, fmt.k // fmt.block_size, -1),
                inputs["W1S"], inputs.get("W1Z"))
    session = matmul_nbits.session(matmul_nbits.projection(gate, fmt.accuracy_level or 0))
    differ = of = 0
    for x in xs:
        x2 = np.asarray(x, np.float32).reshape(-1, fmt.k)
        theirs = session.run(None, {"x": x2})[0]
        ours = (quantize_x(x2, q.block) if q.int8_x else x2).astype(np.float64) @ w1
        if b1 is not None:
            theirs = theirs + np.asarray(b1, np.float32)
            ours = ours + np.asarray(b1, np.float64)
        differ += int(np.count_nonzero((theirs > 0) != (ours > 0)))
        of += theirs.size
    return GateFlips(differ, of)
