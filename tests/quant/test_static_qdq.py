"""``quantize_static`` in QDQ format (ONNX Runtime's own tool, calibrated): int8 weights per
tensor or per channel and int8 activations, a QuantizeLinear → DequantizeLinear pair on
each. fffc finds its ReLU, ReGLU and dReLU FFNs as sites whose fake-quantized activations
inside the FFN are part of the op's function (``fffc.contract.act_quant``), maps their
weights onto SparseFFN's 8-bit layout with the same dequantized values, and, with no
kernels for them yet, leaves them as they were: the artifact computes what the user's
model computes, bit for bit."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import fffc
from fffc.cli import main
from fffc.contract import int8
from fffc.contract.act_quant import At, FakeQuant, fake_quantize, pack, unpack
from fffc.contract.kinds import Granularity, SiteKind
from fffc.passes._common import const_array, quantized_record
from tests.fixtures import quantized as q

# form → (kind, up activation, places of its fake quantizations, float FFN's activation
# tensors whose QDQ pairs they are)
STATIC = {
    "static-qdq-tensor-drelu": (SiteKind.GATED, "relu", {At.GATE: "ga", At.UP: "ua",
                                                         At.HIDDEN: "h"}),
    "static-qdq-channel-drelu": (SiteKind.GATED, "relu", {At.GATE: "ga", At.UP: "ua",
                                                          At.HIDDEN: "h"}),
    "static-qdq-channel-reglu": (SiteKind.GATED, "none", {At.GATE: "ga", At.UP: "u",
                                                          At.HIDDEN: "h"}),
    "static-qdq-tensor-relu": (SiteKind.DENSE, "none", {At.PRE: "g", At.HIDDEN: "h"}),
    "static-qdq-channel-relu": (SiteKind.DENSE, "none", {At.PRE: "g", At.HIDDEN: "h"}),
}


def _init(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == name)


@pytest.mark.parametrize("form", list(STATIC))
def test_static_qdq_ffn_is_a_site(form, quantized_model):
    path = quantized_model(form)
    model = onnx.load(path)
    a = fffc.inspect(path)
    assert a.near_misses == []
    (site,) = a.sites
    kind, up, places = STATIC[form]
    assert (site.kind, site.activation, site.up_activation) == (kind, "relu", up)
    assert (site.d_model, site.d_ff, site.d_out) == (q.D, q.F, q.D)
    assert set(site.act_quant) == set(places)
    for at, tensor in places.items():  # the calibrated scale and zero point of that tensor
        fq = site.act_quant[at]
        assert fq.scale == float(_init(model, f"{tensor}_scale"))
        assert fq.zero_point == int(_init(model, f"{tensor}_zero_point"))
        assert (fq.qmin, fq.qmax) == (-128, 127)
    assert all(f.bits == 8 for f in site.weight_formats.values())


@pytest.mark.parametrize("form", list(STATIC))
def test_static_qdq_weights_map_onto_the_8bit_layout_exactly(form, quantized_model):
    """Each int8 per-tensor / per-channel weight in SparseFFN's 8-bit layout (block 32, the
    channel's scale repeated per block, codes + 128): dequantized, bit for bit what ONNX
    Runtime's DequantizeLinear computes."""
    path = quantized_model(form)
    model = onnx.load(path)
    a = fffc.inspect(path)
    weights = [n for n in a.working.graph if n.op_type == "Dequantized"]
    assert len(weights) >= 2
    for node in weights:
        fmt = quantized_record(node)
        assert fmt.granularity in (Granularity.TENSOR, Granularity.CHANNEL)
        codes, scale, zp = (const_array(v) for v in node.inputs)
        m = int8.from_per_channel(codes, scale, zp, fmt.axis)
        assert isinstance(m, int8.Q8Matrix), m
        assert m.block == 32 and m.zero_points is None  # symmetric: zero points 0 → 128
        dq = next(n for n in model.graph.node
                  if n.name == node.attributes["original_names"].value[0])
        np.testing.assert_array_equal(int8.dequantize(m), q.ort_weight(model, dq))


def test_asymmetric_uint8_weights_map_exactly():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (64, 48)).astype(np.uint8)
    scale = rng.uniform(0.001, 0.01, 48).astype(np.float32)
    zp = rng.integers(0, 256, 48).astype(np.uint8)
    m = int8.from_per_channel(codes, scale, zp, 1)
    want = ((codes.astype(np.int32) - zp.astype(np.int32)).astype(np.float32) * scale)
    np.testing.assert_array_equal(int8.dequantize(m), want)
    assert "axis 0" in int8.from_per_channel(codes, scale[:1].repeat(64), None, 0)
    assert "multiple of the block" in int8.from_per_channel(codes[:40], scale, zp, 1)


def _ort_qdq(v: np.ndarray, fq: FakeQuant) -> np.ndarray:
    """QuantizeLinear → DequantizeLinear in ONNX Runtime."""
    dtype = TensorProto.INT8 if fq.qmin < 0 else TensorProto.UINT8
    inits = [numpy_helper.from_array(np.array(fq.scale, np.float32), "s"),
             helper.make_tensor("z", dtype, [], [fq.zero_point])]
    g = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["v", "s", "z"], ["q"]),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])], "qdq",
        [helper.make_tensor_value_info("v", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"v": v})[0]


def _fq(scale: float, z: int, qmin: int, qmax: int) -> FakeQuant:
    return FakeQuant(float(np.float32(scale)), z, qmin, qmax)  # a model's float32 scale


@pytest.mark.parametrize("fq", [_fq(0.0075, -128, -128, 127), _fq(0.0176, -10, -128, 127),
                                _fq(0.02, 127, -128, 127), _fq(0.004, 0, 0, 255),
                                _fq(0.05, 200, 0, 255)])
def test_fake_quantization_is_onnxruntimes_and_keeps_zeros(fq):
    """fq(0) = 0 for every zero point in range (a skipped neuron stays skipped), fq keeps
    non-negative values non-negative, a qmin zero point is a ReLU too, and fq is ONNX
    Runtime's QuantizeLinear → DequantizeLinear bit for bit (halves included)."""
    rng = np.random.default_rng(1)
    halves = (np.arange(-300, 300) + 0.5).astype(np.float32) * np.float32(fq.scale)
    v = np.concatenate([rng.standard_normal(4000).astype(np.float32) * 100 * fq.scale,
                        halves, np.zeros(3, np.float32)]).astype(np.float32)
    got = fake_quantize(v, fq)
    np.testing.assert_array_equal(got, _ort_qdq(v, fq))
    assert fake_quantize(np.zeros(5, np.float32), fq).tolist() == [0.0] * 5
    assert np.all(fake_quantize(np.abs(v), fq) >= 0)
    if fq.clamps_at_zero:
        np.testing.assert_array_equal(got, fake_quantize(np.maximum(v, 0), fq))
    assert unpack(pack({At.HIDDEN: fq})) == {At.HIDDEN: fq}


@pytest.mark.parametrize("form", ["static-qdq-channel-drelu", "static-qdq-tensor-relu"])
def test_compile_leaves_a_static_qdq_site_as_it_was(form, quantized_model, tmp_path):
    """No kernel applies the fake quantization yet: the site is reported and left as it
    was, its QDQ pairs rebuilt from the same scales and zero points (a dense FFN's quantized
    b1 read as its float32 values: one DequantizeLinear fewer); the artifact's outputs
    equal the user's model's bit for bit."""
    path = quantized_model(form)
    out = tmp_path / "out.fffc"
    assert main(["compile", str(path), "-o", str(out), "--target", "x86"]) == 0
    (site,) = json.loads((out / "manifest.json").read_text())["sites"]
    assert site["decision"] == "dense"
    assert site["reason"].startswith("static int8 activations (QDQ on ")
    assert site["reason"].endswith("left as it was")
    original, artifact = onnx.load(path), onnx.load(out / "model.onnx")
    count = lambda m, op: sum(n.op_type == op for n in m.graph.node)  # noqa: E731
    folded_bias = int(STATIC[form][0] is SiteKind.DENSE)
    assert count(artifact, "DequantizeLinear") == count(original, "DequantizeLinear") - folded_bias
    for op in ("QuantizeLinear", "MatMul"):
        assert count(artifact, op) == count(original, op), op
    x = np.random.default_rng(3).standard_normal((2, 5, q.D)).astype(np.float32)

    def run(p):
        return ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(
            None, {"x": x})[0]

    np.testing.assert_array_equal(run(out / "model.onnx"), run(path))
