"""``fffc compile`` of a quantized model: fffc has no kernels for quantized weights yet, so
each site is left as it was, saying why in one line, and the artifact is the user's model:
the same quantized nodes reading the same initializers, byte for byte, computing the same
outputs."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from fffc.cli import main
from tests.fixtures import quantized as q

QUANTIZING = {"MatMulNBits", "DequantizeLinear", "MatMulInteger", "DynamicQuantizeLinear"}
FORMS = ["nbits4-b32-zp-drelu", "nbits4-b128-sym-al4-swiglu", "nbits8-b32-sym-relu",
         "qdq4-b32-drelu", "dynamic-drelu", "dynamic-channel-swiglu"]


def _outputs(path, x: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})


def _quantizing(model: onnx.ModelProto) -> list[tuple]:
    """The quantized projections' nodes: op, name, inputs that are initializers, attributes."""
    inits = {i.name for i in model.graph.initializer}
    return sorted((n.op_type, n.domain, n.name, tuple(i for i in n.input if i in inits),
                   tuple(a.SerializeToString() for a in n.attribute))
                  for n in model.graph.node if n.op_type in QUANTIZING)


@pytest.mark.parametrize("form", FORMS)
def test_quantized_sites_are_left_as_they_were(form, quantized_model, tmp_path, capsys):
    path = quantized_model(form)
    out = tmp_path / "out.fffc"
    assert main(["compile", str(path), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    (site,) = manifest["sites"]
    assert site["decision"] == "dense"
    formats = {f["describe"] for f in site["weight_formats"].values()}
    assert len(formats) == 1
    reason = f"{formats.pop()}: no fffc kernels for this weight format yet; left as it was"
    assert site["reason"] == reason
    assert f"{site['name']}: {reason}" in " ".join(printed.split())

    original, artifact = onnx.load(path), onnx.load(out / "model.onnx")
    assert _quantizing(artifact) == _quantizing(original)
    got = {i.name: i for i in artifact.graph.initializer}
    for init in original.graph.initializer:  # every tensor, the quantized ones included
        assert init.name in got, init.name
        a, b = numpy_helper.to_array(got[init.name]), numpy_helper.to_array(init)
        assert (a.dtype, a.shape, a.tobytes()) == (b.dtype, b.shape, b.tobytes()), init.name

    x = np.random.default_rng(3).standard_normal((2, 5, q.D)).astype(np.float32)
    for g, w in zip(_outputs(out / "model.onnx", x), _outputs(path, x), strict=True):
        np.testing.assert_array_equal(g, w)


def test_float16_model_is_refused_in_one_line(tmp_path, capsys):
    from onnxruntime.transformers.float16 import convert_float_to_float16

    path = tmp_path / "fp16.onnx"
    onnx.save(convert_float_to_float16(onnx.load(q.float_ffn(tmp_path / "f.onnx", "swiglu"))),
              path)
    assert main(["compile", str(path), "-o", str(tmp_path / "out.fffc")]) == 5
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("fffc: error")]
    assert len(lines) == 1
    assert "float16 weights and activations (a float16 model)" in lines[0]
    assert "Traceback" not in err and "internal error" not in err


def test_quantized_fff_is_left_as_it_was(quantized_fff, tmp_path):
    out = tmp_path / "out.fffc"
    assert main(["compile", str(quantized_fff), "-o", str(out)]) == 0
    (site,) = json.loads((out / "manifest.json").read_text())["sites"]
    assert site["decision"] == "dense"
    original, artifact = onnx.load(quantized_fff), onnx.load(out / "model.onnx")
    assert _quantizing(artifact) == _quantizing(original)
    x = np.random.default_rng(4).standard_normal((2, 5, 128)).astype(np.float32)
    for g, w in zip(_outputs(out / "model.onnx", x), _outputs(quantized_fff, x), strict=True):
        np.testing.assert_array_equal(g, w)


@pytest.mark.slow
def test_float_site_gets_kernels_next_to_a_quantized_one(tmp_path):
    """Two dReLU FFNs, the first made int4: the float one is lowered with exact kernels,
    the quantized one left as it was (its nodes and codes as they were)."""
    path = q.matmul_nbits(q.two_drelu_ffns(tmp_path / "two.onnx"), tmp_path / "mixed.onnx",
                          4, 32, True, exclude=("gate1", "up1", "down1"))
    out = tmp_path / "out.fffc"
    assert main(["compile", str(path), "-o", str(out), "--target", "x86"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(s["decision"], bool(s["weight_formats"])) for s in manifest["sites"]] == [
        ("dense", True), ("exact", False)]
    assert manifest["verification"]["model_with_shim"]["ok"]
    original, artifact = onnx.load(path), onnx.load(out / "model.onnx")
    assert _quantizing(artifact) == _quantizing(original)
    got = {i.name: i for i in artifact.graph.initializer}
    for init in original.graph.initializer:
        if init.data_type == onnx.TensorProto.UINT8 or init.name.endswith("_scales"):
            assert got[init.name].SerializeToString() == init.SerializeToString(), init.name
