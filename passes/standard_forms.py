"""Opset-correct standard-op bodies: activations and the FFN math, built on an IR tape.

One builder serves three places: ``legalize`` (canonical activations left outside FFN
sites), sites that stay dense (inlined back), and the model-local fallback function of
every ``ai.fffc`` node. Gelu is emitted as one node from opset 20 on, as its erf or tanh
chain below.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir


def _const(tape: ir.tape.Tape, value: float) -> ir.Value:
    return tape.op("Constant", [], {"value": ir.tensor(np.array(value, dtype=np.float32))})


def activation(tape: ir.tape.Tape, name: str, x: ir.Value, opset: int) -> ir.Value:
    """``name`` (relu/gelu/gelu_tanh/silu/none) applied to x with opset-``opset`` ops."""
    if name == "none":
        return x
    if name == "relu":
        return tape.op("Relu", [x])
    if name == "silu":
        return tape.op("Mul", [x, tape.op("Sigmoid", [x])])
    if name in ("gelu", "gelu_tanh"):
        if opset >= 20:
            return tape.op("Gelu", [x], {"approximate": "tanh" if name == "gelu_tanh" else "none"})
        if name == "gelu":
            cdf = tape.op("Erf", [tape.op("Div", [x, _const(tape, math.sqrt(2.0))])])
        else:
            cube = tape.op("Mul", [tape.op("Mul", [x, x]), x])
            inner = tape.op("Add", [x, tape.op("Mul", [cube, _const(tape, 0.044715)])])
            scaled = tape.op("Mul", [inner, _const(tape, math.sqrt(2.0 / math.pi))])
            cdf = tape.op("Tanh", [scaled])
        one_plus = tape.op("Add", [cdf, _const(tape, 1.0)])
        return tape.op("Mul", [tape.op("Mul", [x, _const(tape, 0.5)]), one_plus])
    raise ValueError(f"unknown activation {name!r}")


def ffn(
    tape: ir.tape.Tape,
    x: ir.Value,
    w1: ir.Value,
    b1: ir.Value | None,
    w2: ir.Value,
    b2: ir.Value | None,
    wu: ir.Value | None,
    *,
    activation_name: str,
    up_activation: str,
    opset: int,
    wu_rows: bool,
) -> ir.Value:
    """``act(x·W1+b1) [⊙ up_act(x·WU)] · W2 + b2``; ``wu_rows``: WU is stored [d_ff, d_in]."""
    h = tape.op("MatMul", [x, w1])
    if b1 is not None:
        h = tape.op("Add", [h, b1])
    a = activation(tape, activation_name, h, opset)
    if wu is not None:
        wu_in_out = tape.op("Transpose", [wu], {"perm": [1, 0]}) if wu_rows else wu
        u = activation(tape, up_activation, tape.op("MatMul", [x, wu_in_out]), opset)
        a = tape.op("Mul", [a, u])
    y = tape.op("MatMul", [a, w2])
    if b2 is not None:
        y = tape.op("Add", [y, b2])
    return y
