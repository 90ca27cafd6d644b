"""A small transformer-style model with ~90%-sparse ReLU and dReLU FFNs, built with onnx only.

Three pre-LayerNorm residual blocks over ``x [batch, seq, 256]`` (dynamic batch and seq):
two ReLU FFNs (256 → 1024 → 256, with biases) and one dReLU gated FFN (no biases).

How the ~90% activation sparsity comes about: after LayerNorm each channel is ~N(0, 1)
and the weights are ~N(0, 1/d), so every pre-activation is ~N(0, 1) over inputs.
* ReLU FFN: b1 = −1.2816 (the 90% quantile of N(0, 1)), so ~10% of neurons are positive.
* dReLU FFN: its LayerNorm's bias is 1 on channel 0 (a constant direction, as hidden
  states often have); the gate weights of that channel are −1.2816·σ and the up weights
  +3·σ, so ~10% of gates are positive and almost every up value is.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

QUANTILE_90 = 1.2815516


def build_example_model(path: str | Path, d_model: int = 256, d_ff: int = 1024, seed: int = 0) -> Path:
    """Write the model to ``path`` and return the path."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], {}

    def w(name: str, arr: np.ndarray) -> str:
        inits[name] = arr.astype(np.float32)
        return name

    def node(op: str, inputs: list[str], name: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    x = "x"
    for layer in range(3):
        p = f"layer{layer}"
        beta = np.zeros(d_model)
        if layer == 2:
            beta[0] = 1.0
        h = node("LayerNormalization", [x, w(f"{p}.ln.gamma", np.ones(d_model)),
                                        w(f"{p}.ln.beta", beta)], f"{p}/ln", axis=-1, epsilon=1e-5)
        if layer < 2:
            w1 = rng.standard_normal((d_model, d_ff)) / np.sqrt(d_model)
            a = node("Relu", [node("Add", [node("MatMul", [h, w(f"{p}.fc1.weight", w1)], f"{p}/fc1"),
                                            w(f"{p}.fc1.bias", np.full(d_ff, -QUANTILE_90))],
                                   f"{p}/fc1_bias")], f"{p}/relu")
            w2 = rng.standard_normal((d_ff, d_model)) / np.sqrt(d_ff)
            y = node("Add", [node("MatMul", [a, w(f"{p}.fc2.weight", w2)], f"{p}/fc2"),
                             w(f"{p}.fc2.bias", rng.standard_normal(d_model) * 0.1)], f"{p}/fc2_bias")
        else:
            wg = rng.standard_normal((d_model, d_ff)) / np.sqrt(d_model - 1)
            wu = rng.standard_normal((d_model, d_ff)) / np.sqrt(d_model - 1)
            wg[0] = -QUANTILE_90
            wu[0] = 3.0
            g = node("Relu", [node("MatMul", [h, w(f"{p}.gate.weight", wg)], f"{p}/gate")], f"{p}/gate_relu")
            u = node("Relu", [node("MatMul", [h, w(f"{p}.up.weight", wu)], f"{p}/up")], f"{p}/up_relu")
            z = node("Mul", [g, u], f"{p}/mul")
            wd = rng.standard_normal((d_ff, d_model)) / np.sqrt(d_ff)
            y = node("MatMul", [z, w(f"{p}.down.weight", wd)], f"{p}/down")
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
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


if __name__ == "__main__":
    print(build_example_model(sys.argv[1] if len(sys.argv) > 1 else "example.onnx"))
