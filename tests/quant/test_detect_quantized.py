"""fffc finds the FFNs of models quantized by ONNX Runtime's own tools, records each
projection's weight format, and reads its weights as ONNX Runtime dequantizes them; what it
cannot read (act-order MatMulNBits, a bias on MatMulNBits) is a near miss that says why."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import fffc
from fffc.contract.kinds import Decision, Granularity, QuantSource, SiteKind
from fffc.passes._common import const_array, quantized_record
from fffc.passes.lowering import site_inputs
from tests.fixtures import quantized as q

NBITS, QDQ, DYNAMIC = QuantSource.MATMUL_NBITS, QuantSource.QDQ, QuantSource.DYNAMIC
BLOCK, CHANNEL, TENSOR = Granularity.BLOCK, Granularity.CHANNEL, Granularity.TENSOR

SITES = {  # the float FFN's site
    "drelu": {"kind": SiteKind.GATED, "activation": "relu", "up_activation": "relu",
              "bias": False, "roles": {"W1", "WU", "W2"}},
    "swiglu": {"kind": SiteKind.GATED, "activation": "silu", "up_activation": "none",
               "bias": False, "roles": {"W1", "WU", "W2"}},
    "relu": {"kind": SiteKind.DENSE, "activation": "relu", "up_activation": "none",
             "bias": True, "roles": {"W1", "W2"}},
}
# form → the format the tool was asked for, on every projection
FORMATS = {
    "nbits4-b32-zp-drelu": dict(source=NBITS, bits=4, granularity=BLOCK, block_size=32, axis=0,
                                symmetric=False, signed=False, accuracy_level=None),
    "nbits4-b128-sym-al4-swiglu": dict(source=NBITS, bits=4, granularity=BLOCK, block_size=128,
                                       axis=0, symmetric=True, signed=False, accuracy_level=4),
    "nbits8-b32-sym-relu": dict(source=NBITS, bits=8, granularity=BLOCK, block_size=32, axis=0,
                                symmetric=True, signed=False, accuracy_level=None),
    "nbits8-b128-zp-drelu": dict(source=NBITS, bits=8, granularity=BLOCK, block_size=128,
                                 axis=0, symmetric=False, signed=False, accuracy_level=None),
    "qdq4-b32-drelu": dict(source=QDQ, bits=4, granularity=BLOCK, block_size=32, axis=0,
                           symmetric=True, signed=True, accuracy_level=None),
    "dynamic-drelu": dict(source=DYNAMIC, bits=8, granularity=TENSOR, block_size=0, axis=None,
                          symmetric=True, signed=True, accuracy_level=None),
    "dynamic-channel-swiglu": dict(source=DYNAMIC, bits=8, granularity=CHANNEL, block_size=0,
                                   axis=1, symmetric=True, signed=True, accuracy_level=None),
}


@pytest.mark.parametrize("form", list(FORMATS))
def test_quantized_ffn_is_a_site_with_its_weight_format(form, quantized_model):
    from tests.quant.conftest import FORMS

    act = FORMS[form][0]
    a = fffc.inspect(quantized_model(form))
    assert a.near_misses == []
    (site,) = a.sites
    want = SITES[act]
    assert (site.kind, site.activation, site.up_activation, site.bias) == (
        want["kind"], want["activation"], want["up_activation"], want["bias"])
    assert (site.d_model, site.d_ff, site.d_out) == (q.D, q.F, q.D)
    assert set(site.weight_formats) == want["roles"]
    for role, fmt in site.weight_formats.items():
        k, n = (q.D, q.F) if role != "W2" else (q.F, q.D)
        assert {f: getattr(fmt, f) for f in FORMATS[form]} == FORMATS[form], role
        assert (fmt.k, fmt.n) == (k, n)


@pytest.mark.parametrize("form", list(FORMATS))
def test_dequantized_weights_are_onnxruntimes(form, quantized_model):
    """Each projection's weight as fffc reads it equals, bit for bit, what ONNX Runtime
    computes from the same codes."""
    path = quantized_model(form)
    model = onnx.load(path)
    a = fffc.inspect(path)
    (site,) = a.sites
    arrays = site_inputs(a.working, site, Decision.DENSE)
    for role in site.weight_formats:
        want = q.ort_weight(model, q.quantizing_node(model, q.WEIGHTS[role]))
        assert arrays[role].dtype == np.float32
        np.testing.assert_array_equal(arrays[role], want, err_msg=role)


@pytest.mark.parametrize("edit,why", [(q.with_g_idx, "MatMulNBits g_idx: act-order"),
                                      (q.with_bias, "MatMulNBits bias")])
def test_unread_nbits_forms_are_near_misses(edit, why, quantized_model, tmp_path):
    path = edit(quantized_model("nbits4-b32-zp-drelu"), tmp_path / "edited.onnx")
    a = fffc.inspect(path)
    assert a.sites == []
    assert a.near_misses, "the FFN is not reported"
    for m in a.near_misses:
        assert m.reason.startswith(why)


@pytest.mark.parametrize("form,granularity,axis", [("static-qdq-tensor-drelu", TENSOR, None),
                                                   ("static-qdq-channel-drelu", CHANNEL, 1)])
def test_static_int8_activations_are_a_site(form, granularity, axis, quantized_model):
    """``quantize_static`` (QDQ) quantizes the activations too: its weights are read (int8,
    per tensor or per channel, equal to ONNX Runtime's) and the FFN is a site whose
    fake-quantized activations inside are part of its function (tests/quant/
    test_static_qdq.py); the pairs on x and y stay outside it."""
    path = quantized_model(form)
    model = onnx.load(path)
    a = fffc.inspect(path)
    assert a.near_misses == []
    (site,) = a.sites
    assert site.act_quant
    weights = [n for n in a.working.graph if n.op_type == "Dequantized"]
    assert len(weights) == 3
    for node in weights:
        fmt = quantized_record(node)
        assert (fmt.source, fmt.bits, fmt.granularity, fmt.axis) == (QDQ, 8, granularity, axis)
        dq = next(n for n in model.graph.node if n.name == node.attributes["original_names"]
                  .value[0])
        np.testing.assert_array_equal(const_array(node.outputs[0]),
                                      q.ort_weight(model, dq))
    outside = [n for n in a.working.graph if n.op_type == "FakeQuant"]
    assert sorted(n.attributes["original_names"].value[0] for n in outside) == [
        "x_QuantizeLinear", "y_QuantizeLinear"]


def test_float16_model_sites_are_found(tmp_path):
    """A float16 model (onnxruntime.transformers.float16): its FFN is a site of dtype
    float16, left as it was."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    path = tmp_path / "fp16.onnx"
    onnx.save(convert_float_to_float16(onnx.load(q.float_ffn(tmp_path / "f.onnx", "drelu"))),
              path)
    a = fffc.inspect(path)
    (site,) = a.sites
    assert (site.kind, site.dtype, site.weight_formats) == (SiteKind.GATED, "float16", {})


def test_quantized_fff_is_a_site(quantized_fff):
    model = onnx.load(quantized_fff)
    a = fffc.inspect(quantized_fff)
    assert a.near_misses == []
    (site,) = a.sites
    assert (site.kind, site.trees, site.depth, site.d_model, site.d_out) == (
        SiteKind.FFF, 4, 3, 128, 128)
    (fmt,) = site.weight_formats.values()
    assert set(site.weight_formats) == {"W_out"}
    assert (fmt.source, fmt.bits, fmt.block_size, fmt.symmetric, fmt.k, fmt.n) == (
        NBITS, 4, 32, True, 60, 128)
    assert site.decision is Decision.DENSE
    node = next(n for n in model.graph.node if n.op_type == "MatMulNBits")
    np.testing.assert_array_equal(site_inputs(a.working, site, Decision.DENSE)["W_out"],
                                  q.ort_weight(model, node))
