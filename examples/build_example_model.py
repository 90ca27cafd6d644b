"""A small transformer-style model with ~90%-sparse ReLU and dReLU FFNs, built with onnx only.

Three pre-LayerNorm residual blocks over ``x [batch, seq, d_model]`` (dynamic batch and seq),
opset 17, IR version 8:

* blocks 0 and 1: ``x + FFN(LN(x))`` with a ReLU FFN
  ``MatMul W1[d, f] → Add b1 → Relu → MatMul W2[f, d] → Add b2``;
* block 2: ``x + dReLU(LN(x))`` with a bias-free gated FFN
  ``MatMul(h, Wd) ∘ (Relu(MatMul(h, Wg)) * Relu(MatMul(h, Wu)))``.

Why ~90% of the activations are zero. After a LayerNorm with unit gain and zero shift, each
token's hidden state has zero mean and unit variance over channels, so for typical inputs
(any token whose direction is not aligned with a neuron) neuron j's pre-activation
``h · W1[:, j]`` is ~N(0, ‖W1[:, j]‖²) across tokens. Setting
``b1[j] = −1.2816 · ‖W1[:, j]‖`` (1.2816 = the 90% quantile of N(0, 1)) leaves ~10% of
pre-activations positive: the bias sits at the 90% quantile of the pre-activation
distribution.

The gated block has no biases, so it gets one from the input instead: its LayerNorm has
gain 0 and shift 1 on channel 0, a constant channel as the "massive activation" channels of
real LLMs are. Row 0 of a weight then acts as a bias: ``Wg[0, j] = −1.2816 · ‖Wg[1:, j]‖``
makes ~10% of gates positive, ``Wu[0, j] = +3 · ‖Wu[1:, j]‖`` keeps ~99.9% of up values
positive, so ``relu(gate) * relu(up)`` is ~90% zeros, set by the gate.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

QUANTILE_90 = 1.2815516  # Φ⁻¹(0.9)


def build_example_model(path: str | Path, d_model: int = 256, d_ff: int = 1024, seed: int = 0) -> Path:
    """Write the example model to ``path`` (checked with onnx.checker) and return the path."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: dict[str, np.ndarray] = {}

    def w(name: str, arr: np.ndarray) -> str:
        inits[name] = np.asarray(arr, dtype=np.float32)
        return name

    def node(op: str, inputs: list[str], name: str, **attrs: object) -> str:
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def gaussian(rows: int, cols: int) -> np.ndarray:
        return rng.standard_normal((rows, cols)) / np.sqrt(rows)

    x = "x"
    for layer in range(3):
        p = f"layer{layer}"
        gamma, beta = np.ones(d_model), np.zeros(d_model)
        if layer == 2:
            gamma[0], beta[0] = 0.0, 1.0  # channel 0 of LN(x) is the constant 1
        h = node("LayerNormalization", [x, w(f"{p}.ln.gamma", gamma), w(f"{p}.ln.beta", beta)],
                 f"{p}/ln", axis=-1, epsilon=1e-5)
        if layer < 2:
            w1 = gaussian(d_model, d_ff)
            b1 = -QUANTILE_90 * np.linalg.norm(w1, axis=0)
            a = node("MatMul", [h, w(f"{p}.fc1.weight", w1)], f"{p}/fc1")
            a = node("Add", [a, w(f"{p}.fc1.bias", b1)], f"{p}/fc1_bias")
            a = node("Relu", [a], f"{p}/relu")
            y = node("MatMul", [a, w(f"{p}.fc2.weight", gaussian(d_ff, d_model))], f"{p}/fc2")
            y = node("Add", [y, w(f"{p}.fc2.bias", 0.1 * rng.standard_normal(d_model))],
                     f"{p}/fc2_bias")
        else:
            wg, wu = gaussian(d_model, d_ff), gaussian(d_model, d_ff)
            wg[0] = -QUANTILE_90 * np.linalg.norm(wg[1:], axis=0)
            wu[0] = 3.0 * np.linalg.norm(wu[1:], axis=0)
            g = node("Relu", [node("MatMul", [h, w(f"{p}.gate.weight", wg)], f"{p}/gate")],
                     f"{p}/gate_relu")
            u = node("Relu", [node("MatMul", [h, w(f"{p}.up.weight", wu)], f"{p}/up")],
                     f"{p}/up_relu")
            z = node("Mul", [g, u], f"{p}/mul")
            y = node("MatMul", [z, w(f"{p}.down.weight", gaussian(d_ff, d_model))], f"{p}/down")
        x = node("Add", [x, y], f"{p}/residual")
    nodes[-1].output[0] = "y"

    graph = helper.make_graph(
        nodes, "fffc_example",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", d_model])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", d_model])],
        [numpy_helper.from_array(a, n) for n, a in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="fffc-example")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


if __name__ == "__main__":
    print(build_example_model(sys.argv[1] if len(sys.argv) > 1 else "example.onnx"))
