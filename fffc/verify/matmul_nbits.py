"""ONNX Runtime's ``com.microsoft::MatMulNBits`` (int4, int8) as the quantized kernels' ground
truth.

* ``quantize``: a float matrix quantized by ONNX Runtime's own quantizer
  (``onnxruntime.quantization.matmul_nbits_quantizer``, round to nearest, blocks along K);
* ``dequantize``: the float32 matrix a MatMulNBits node computes with, read back from
  ONNX Runtime by running the node on an identity matrix (``accuracy_level`` 0: float
  activations, so row i of the product is row i of the dequantized matrix, exactly);
* ``ffn_model``: a dense FFN whose projections are MatMulNBits nodes (or float MatMuls),
  what the int4 kernels are timed against.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from fffc.codegen.q4_layout import Q4Matrix
from fffc.contract.int8 import Q8Matrix

MS_DOMAIN = "com.microsoft"
BITS = 4


def quantize(w: np.ndarray, block: int = 32, symmetric: bool = True) -> Q4Matrix:
    """``w [K, N]`` float32 quantized to int4 by ONNX Runtime's MatMulNBits quantizer."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        DefaultWeightOnlyQuantizer,
    )

    config = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=symmetric, bits=BITS)
    packed, scales, zp = DefaultWeightOnlyQuantizer(config).qbits_block_quant(
        np.ascontiguousarray(w, np.float32))
    return Q4Matrix(codes=packed, scales=np.ascontiguousarray(scales, np.float32),
                    zero_points=None if symmetric else zp, k=w.shape[0], block=block)


def quantize8(w: np.ndarray, block: int = 32, symmetric: bool = True) -> Q8Matrix:
    """``w [K, N]`` float32 quantized to int8 by ONNX Runtime's MatMulNBits quantizer (bits
    8: one code a byte, zero points one a byte, 128 where symmetric)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        DefaultWeightOnlyQuantizer,
    )

    config = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=symmetric, bits=8)
    codes, scales, zp = DefaultWeightOnlyQuantizer(config).qbits_block_quant(
        np.ascontiguousarray(w, np.float32))
    return Q8Matrix(codes=codes, scales=np.ascontiguousarray(scales, np.float32),
                    zero_points=None if symmetric else zp, k=w.shape[0], block=block)


def node(a: str, out: str, prefix: str, m: Q4Matrix | Q8Matrix,
         accuracy_level: int = 0) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    """A MatMulNBits node ``out = a · W`` for ``m``, and its initializers (named ``prefix``…)."""
    inits = [numpy_helper.from_array(m.codes, f"{prefix}_q4"),
             numpy_helper.from_array(m.scales, f"{prefix}_scales")]
    if m.zero_points is not None:
        inits.append(numpy_helper.from_array(m.zero_points, f"{prefix}_zp"))
    n = helper.make_node("MatMulNBits", [a, *(t.name for t in inits)], [out], domain=MS_DOMAIN,
                         K=m.k, N=m.n, bits=8 if isinstance(m, Q8Matrix) else BITS,
                         block_size=m.block,
                         accuracy_level=accuracy_level)
    return n, inits


def _model(nodes, inits, d_in: int, d_out: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", d_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", d_out])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                helper.make_opsetid(MS_DOMAIN, 1)])
    m.ir_version = 8
    return m


def session(model: onnx.ModelProto, threads: int = 1) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def projection(m: Q4Matrix | Q8Matrix, accuracy_level: int = 0) -> onnx.ModelProto:
    """A model of one MatMulNBits node ``y = x · W`` for ``m``, its weights initializers
    (ONNX Runtime prepacks constant weights; only prepacked ones take accuracy_level 4's
    integer path)."""
    n, inits = node("x", "y", "w", m, accuracy_level)
    return _model([n], inits, m.k, m.n)


def dequantize(m: Q4Matrix | Q8Matrix, rows: int = 512) -> np.ndarray:
    """``W [K, N]`` float32 as ONNX Runtime dequantizes ``m``: a MatMulNBits node
    (accuracy_level 0) run on the K×K identity, ``rows`` rows of it per run."""
    sess = session(projection(m))
    out = []
    for k0 in range(0, m.k, rows):
        eye = np.zeros((min(rows, m.k - k0), m.k), np.float32)
        eye[np.arange(eye.shape[0]), k0 + np.arange(eye.shape[0])] = 1
        out.append(sess.run(None, {"x": eye})[0])
    return np.concatenate(out)


Projection = Q4Matrix | Q8Matrix | np.ndarray  # MatMulNBits or float32 [K, N] (MatMul)


def _projection(a: str, out: str, prefix: str, w: Projection, accuracy_level: int):
    if isinstance(w, Q4Matrix | Q8Matrix):
        return node(a, out, prefix, w, accuracy_level)
    t = numpy_helper.from_array(np.ascontiguousarray(w, np.float32), prefix)
    return helper.make_node("MatMul", [a, prefix], [out]), [t]


def ffn_model(w1: Projection, w2: Projection, wu: Projection | None = None,
              b1: np.ndarray | None = None, b2: np.ndarray | None = None,
              up_activation: str = "none", accuracy_level: int = 0,
              activation: str = "relu") -> onnx.ModelProto:
    """The dense FFN ``y = (act(x·W1 + B1) [⊙ up(x·WU)])·W2 + B2`` (``wu`` None: a dense FFN;
    ``activation`` "relu" or "silu" (x·Sigmoid(x)); ``up_activation`` "relu": dReLU, "none":
    ReGLU / SwiGLU), each projection a MatMulNBits node (Q4Matrix, ``accuracy_level``) or a
    float MatMul ([K, N] array)."""
    nodes, inits = [], []

    def add(made):
        nodes.append(made[0])
        inits.extend(made[1])

    add(_projection("x", "h", "W1", w1, accuracy_level))
    h = "h"
    if b1 is not None:
        inits.append(numpy_helper.from_array(np.asarray(b1, np.float32), "B1"))
        nodes.append(helper.make_node("Add", ["h", "B1"], ["hb"]))
        h = "hb"
    if activation == "silu":
        nodes += [helper.make_node("Sigmoid", [h], ["sg"]), helper.make_node("Mul", [h, "sg"], ["a"])]
    elif activation == "relu":
        nodes.append(helper.make_node("Relu", [h], ["a"]))
    else:
        raise ValueError(f"ffn_model: activation {activation!r}: relu or silu")
    a = "a"
    if wu is not None:
        add(_projection("x", "u", "WU", wu, accuracy_level))
        u = "u"
        if up_activation == "relu":
            nodes.append(helper.make_node("Relu", ["u"], ["ur"]))
            u = "ur"
        nodes.append(helper.make_node("Mul", ["a", u], ["z"]))
        a = "z"
    add(_projection(a, "o" if b2 is not None else "y", "W2", w2, accuracy_level))
    if b2 is not None:
        inits.append(numpy_helper.from_array(np.asarray(b2, np.float32), "B2"))
        nodes.append(helper.make_node("Add", ["o", "B2"], ["y"]))
    k_in = w1.k if isinstance(w1, Q4Matrix | Q8Matrix) else w1.shape[0]
    n_out = w2.n if isinstance(w2, Q4Matrix | Q8Matrix) else w2.shape[1]
    return _model(nodes, inits, k_in, n_out)
