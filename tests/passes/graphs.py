"""Tiny hand-built ONNX graphs for rule tests: one exporter variant each, built in code."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(0)
D, F = 16, 48


def rand(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def scalar(v: float) -> np.ndarray:
    return np.array(v, dtype=np.float32)


class G:
    """Accumulates nodes and initializers; ``model()`` wraps them with input x and output y."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, np.ndarray] = {}
        self._n = 0

    def init(self, name: str, arr: np.ndarray) -> str:
        self.inits[name] = arr
        return name

    def op(self, op_type: str, *inputs: str, domain: str = "", **attrs) -> str:
        self._n += 1
        out = f"t{self._n}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=f"n{self._n}_{op_type}",
                                           domain=domain, **attrs))
        return out

    def model(self, y: str, opset: int = 17, d_in: int = D, d_out: int | None = None,
              ms: bool = False, elem: int = TensorProto.FLOAT) -> onnx.ModelProto:
        self.nodes.append(helper.make_node("Identity", [y], ["y"], name="out"))
        graph = helper.make_graph(
            self.nodes, "g",
            [helper.make_tensor_value_info("x", elem, ["B", "S", d_in])],
            [helper.make_tensor_value_info("y", elem, ["B", "S", "Dout"])],
            [numpy_helper.from_array(a, n) for n, a in self.inits.items()],
        )
        ops = [helper.make_opsetid("", opset)] + ([helper.make_opsetid("com.microsoft", 1)] if ms else [])
        m = helper.make_model(graph, opset_imports=ops)
        m.ir_version = 8
        return m


def erf_gelu(g: G, h: str, order: str) -> str:
    c = g.op("Erf", g.op("Div", h, g.init(f"s{len(g.inits)}", scalar(math.sqrt(2)))))
    one_plus = g.op("Add", c, g.init(f"one{len(g.inits)}", scalar(1.0)))
    half = g.init(f"half{len(g.inits)}", scalar(0.5))
    if order == "dynamo":  # Mul(h, Mul(0.5, 1+erf))
        return g.op("Mul", h, g.op("Mul", half, one_plus))
    return g.op("Mul", g.op("Mul", h, one_plus), half)  # TorchScript


def tanh_gelu(g: G, h: str) -> str:
    cube = g.op("Mul", g.op("Pow", h, g.init("three", scalar(3.0))), g.init("c", scalar(0.044715)))
    inner = g.op("Mul", g.op("Add", h, cube), g.init("k", scalar(math.sqrt(2 / math.pi))))
    one_plus = g.op("Add", g.op("Tanh", inner), g.init("one", scalar(1.0)))
    return g.op("Mul", g.op("Mul", h, g.init("half", scalar(0.5))), one_plus)


def to_ir(m: onnx.ModelProto) -> ir.Model:
    return ir.serde.deserialize_model(m)


def run(m: onnx.ModelProto | ir.Model, x: np.ndarray) -> np.ndarray:
    if isinstance(m, ir.Model):
        m = ir.serde.serialize_model(m)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]
                                ).run(None, {"x": x})[0]


def x_probe(d: int = D) -> np.ndarray:
    return rand(2, 5, d)
