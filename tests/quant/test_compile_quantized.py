"""``fffc compile`` of a quantized model. A ReLU-gated (or ReLU) FFN whose projections are
4-bit or 8-bit MatMulNBits gets SparseFFN exact kernels on its int4 / int8 codes (x86): the
artifact computes
the float FFN on the weights ONNX Runtime dequantizes wherever the kernel serves, and ONNX
Runtime's own MatMulNBits past the crossover. Every other quantized site is left as it was,
saying why in one line, and the artifact is then the user's model: the same quantized nodes
reading the same initializers, byte for byte, computing the same outputs."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from fffc.cli import main
from fffc.verify.in_place import all_nodes
from tests.fixtures import quantized as q

QUANTIZING = {"MatMulNBits", "DequantizeLinear", "MatMulInteger", "DynamicQuantizeLinear"}
# form → what the reason says after the weight format
NBITS_ONLY = "SparseFFN's bits 4 and 8 take MatMulNBits' block-wise codes only"
LEFT = {"nbits4-b128-sym-al4-swiglu": "silu is never exactly zero",
        "qdq4-b32-drelu": NBITS_ONLY,
        "dynamic-drelu": NBITS_ONLY,
        "dynamic-channel-swiglu": NBITS_ONLY}


def _outputs(path, x: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})


def _quantizing(model: onnx.ModelProto) -> list[tuple]:
    """The quantized projections' nodes (in If branches too): op, name, inputs that are
    initializers, attributes."""
    inits = {i.name for i in model.graph.initializer}
    return sorted((n.op_type, n.domain, n.name, tuple(i for i in n.input if i in inits),
                   tuple(a.SerializeToString() for a in n.attribute))
                  for n in all_nodes(model.graph) if n.op_type in QUANTIZING)


def _same_initializers(original: onnx.ModelProto, artifact: onnx.ModelProto) -> None:
    got = {i.name: i for i in artifact.graph.initializer}
    for init in original.graph.initializer:  # every tensor, the quantized ones included
        assert init.name in got, init.name
        a, b = numpy_helper.to_array(got[init.name]), numpy_helper.to_array(init)
        assert (a.dtype, a.shape, a.tobytes()) == (b.dtype, b.shape, b.tobytes()), init.name


@pytest.mark.parametrize("form", LEFT)
def test_quantized_sites_are_left_as_they_were(form, quantized_model, tmp_path, capsys):
    path = quantized_model(form)
    out = tmp_path / "out.fffc"
    assert main(["compile", str(path), "-o", str(out), "--target", "x86"]) == 0
    printed = capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    (site,) = manifest["sites"]
    assert site["decision"] == "dense"
    formats = {f["describe"] for f in site["weight_formats"].values()}
    assert len(formats) == 1
    assert site["reason"].startswith(f"{formats.pop()}: {LEFT[form]}")
    assert site["reason"].endswith("left as it was")
    assert f"{site['name']}: {site['reason']}" in " ".join(printed.split())

    original, artifact = onnx.load(path), onnx.load(out / "model.onnx")
    assert _quantizing(artifact) == _quantizing(original)
    _same_initializers(original, artifact)
    x = np.random.default_rng(3).standard_normal((2, 5, q.D)).astype(np.float32)
    for g, w in zip(_outputs(out / "model.onnx", x), _outputs(path, x), strict=True):
        np.testing.assert_array_equal(g, w)


def _drelu_reference(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """relu(x·Wg)·relu(x·Wu)·Wd in float64 on the matrices ONNX Runtime dequantizes."""
    w = {n: q.ort_weight(model, q.quantizing_node(model, q.WEIGHTS[n])).astype(np.float64)
         for n in ("W1", "WU", "W2")}
    h = np.maximum(x @ w["W1"], 0) * np.maximum(x @ w["WU"], 0)
    return h @ w["W2"]


@pytest.mark.slow
def test_int4_drelu_gets_exact_kernels_on_its_codes(quantized_model, tmp_path, capsys):
    """MatMulNBits int4 with zero points: SparseFFN bits 4 reads the gate and up codes from
    the user's own initializers (no float32 copy of any projection), the artifact with the
    shim computes the float FFN on ONNX Runtime's dequantized weights for decode calls and
    is ONNX Runtime's MatMulNBits itself past the crossover; without the shim the fallback
    function computes the same float FFN."""
    from fffc.runtime import InferenceSession

    path = quantized_model("nbits4-b32-zp-drelu")
    out = tmp_path / "out.fffc"
    assert main(["compile", str(path), "-o", str(out), "--target", "x86"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    manifest = json.loads((out / "manifest.json").read_text())
    (site,) = manifest["sites"]
    assert site["decision"] == "exact"
    assert site["reason"].endswith("on its int4 codes (block 32)")
    assert manifest["verification"]["model_with_shim"]["ok"]
    assert "int4 weights dequantized to float32" in printed
    # the site against ONNX Runtime's own int4 FFN, measured and reported: without an
    # accuracy_level MatMulNBits computes in float too, so only rounding differs
    assert site["deviation"] < 1e-5

    original, artifact = onnx.load(path), onnx.load(out / "model.onnx", load_external_data=False)
    (node,) = [n for n in artifact.graph.node if n.op_type == "If"]
    kernel = next(a.g for a in node.attribute if a.name == "then_branch")
    (op,) = [n for n in kernel.node if n.op_type == "SparseFFN"]
    assert next(a.i for a in op.attribute if a.name == "bits") == 4
    wg = q.quantizing_node(original, "wg")
    assert op.input[1:2] == wg.input[1:2]  # W1: the gate's own codes
    assert list(op.input[12:14]) == list(wg.input[2:4])  # W1S, W1Z: its scales, zero points
    sizes = [int(np.prod(i.dims)) for i in artifact.graph.initializer
             if i.data_type == onnx.TensorProto.FLOAT]
    assert max(sizes) < q.D * q.F // 8  # scales only: no float32 matrix
    _same_initializers(original, artifact)
    assert _quantizing(artifact) == _quantizing(original)  # past the crossover

    rng = np.random.default_rng(3)
    sess = InferenceSession(str(out))
    plain = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (bound,) = [b["max_tokens"] for b in site["dispatch"]["branches"] if b["branch"] == "kernel"]
    for shape in ((1, 1, q.D), (2, 1, q.D)):
        x = rng.standard_normal(shape).astype(np.float32)
        if x.size // q.D > bound:
            continue
        want = _drelu_reference(original, x.astype(np.float64))
        for got in (sess.run(None, {"x": x})[0], plain.run(None, {"x": x})[0]):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    x = rng.standard_normal((2, bound + 3, q.D)).astype(np.float32)  # past the bound
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], _outputs(path, x)[0])


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
def test_float_and_int4_sites_in_one_model(tmp_path):
    """Two dReLU FFNs, the first made int4: both get exact kernels, the int4 one on its
    codes (bits 4), the float one on float32 weights; the int4 site's MatMulNBits nodes
    stay, reading the same codes, in its branch past the crossover."""
    path = q.matmul_nbits(q.two_drelu_ffns(tmp_path / "two.onnx"), tmp_path / "mixed.onnx",
                          4, 32, True, exclude=("gate1", "up1", "down1"))
    out = tmp_path / "out.fffc"
    assert main(["compile", str(path), "-o", str(out), "--target", "x86"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(s["decision"], bool(s["weight_formats"])) for s in manifest["sites"]] == [
        ("exact", True), ("exact", False)]
    ops = [n for n in all_nodes(onnx.load(out / "model.onnx").graph) if n.op_type == "SparseFFN"]
    assert sorted(next((a.i for a in n.attribute if a.name == "bits"), 0) for n in ops) == [0, 4]
    assert manifest["verification"]["model_with_shim"]["ok"]
    original, artifact = onnx.load(path), onnx.load(out / "model.onnx")
    assert _quantizing(artifact) == _quantizing(original)
    got = {i.name: i for i in artifact.graph.initializer}
    for init in original.graph.initializer:
        if init.data_type == onnx.TensorProto.UINT8 or init.name.endswith("_scales"):
            assert got[init.name].SerializeToString() == init.SerializeToString(), init.name


@pytest.mark.slow
def test_weight_dtype_int4_quantizes_a_float_model(tmp_path, capsys):
    """``--weight-dtype int4`` on a float dReLU FFN: its weights become 4-bit symmetric
    MatMulNBits codes (block 32) read by the int4 kernels, no float32 matrix left; the
    artifact computes what ONNX Runtime's own MatMulNBitsQuantizer makes of the model (run
    with float activations), at every token count, and its distance from the float model is
    reported."""
    from fffc.runtime import InferenceSession

    src = q.float_ffn(tmp_path / "drelu.onnx", "drelu")
    out = tmp_path / "out.fffc"
    assert main(["compile", str(src), "-o", str(out), "--target", "x86",
                 "--weight-dtype", "int4"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    manifest = json.loads((out / "manifest.json").read_text())
    (site,) = manifest["sites"]
    assert site["decision"] == "exact"
    assert {f["describe"] for f in site["weight_formats"].values()} == {
        "int4 MatMulNBits weights (block 32, symmetric)"}
    assert manifest["verification"]["model_with_shim"]["ok"]
    assert site["deviation"] > 1e-3  # the rounding to int4, reported
    assert "int4-rounded weights" in printed
    artifact = onnx.load(out / "model.onnx")
    assert not [i.name for i in artifact.graph.initializer
                if i.data_type == onnx.TensorProto.FLOAT and np.prod(i.dims) >= q.D * q.F]

    tool = q.matmul_nbits(src, tmp_path / "tool.onnx", 4, 32, True)  # no accuracy_level
    sess = InferenceSession(str(out))
    rng = np.random.default_rng(9)
    for shape in ((1, 1, q.D), (1, 2, q.D), (2, 7, q.D)):
        x = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], _outputs(tool, x)[0],
                                   rtol=1e-4, atol=1e-5)


def test_accuracy_level_4_site_gets_cuda_kernels(tmp_path, capsys):
    """A site whose MatMulNBits round x to int8 (accuracy_level 4) gets the CUDA int4
    kernels with x rounded the same way (integer dots, ``i8`` in the kernel table's mode);
    the compile's emulated check of every variant passes."""
    src = q.float_ffn(tmp_path / "drelu.onnx", "drelu")
    path = q.matmul_nbits(src, tmp_path / "q4.onnx", 4, 32, True, 4)
    out = tmp_path / "out.fffc"
    assert main(["compile", str(path), "-o", str(out), "--target", "cuda"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    (site,) = manifest["sites"]
    assert site["decision"] == "exact", site["reason"]
    emulated = manifest["verification"]["cuda_kernels"][site["name"]]
    assert set(emulated) == {"int4_1", "int4_2", "int4_4", "int4_8"}, emulated
    assert all(r["ok"] for r in emulated.values()), emulated
    source = (out / "kernels").rglob("*.cu")
    text = "".join(p.read_text() for p in source)
    assert "__dp4a" in text


def _ffn_reference(model: onnx.ModelProto, x: np.ndarray, act: str,
                   xq: np.ndarray | None = None) -> np.ndarray:
    """The FFN in float64 on the matrices ONNX Runtime dequantizes: ``relu`` relu(x·Wg +
    b1)·Wd + b2, ``drelu`` relu(x·Wg)·relu(x·Wu)·Wd; the gate and up products on ``xq``
    where given (x as accuracy_level 4 rounds it)."""
    names = ("W1", "W2") if act == "relu" else ("W1", "WU", "W2")
    w = {n: q.ort_weight(model, q.quantizing_node(model, q.WEIGHTS[n])).astype(np.float64)
         for n in names}
    xin = x if xq is None else xq
    if act == "relu":
        inits = {i.name: numpy_helper.to_array(i).astype(np.float64)
                 for i in model.graph.initializer}
        return np.maximum(xin @ w["W1"] + inits["b1"], 0) @ w["W2"] + inits["b2"]
    return (np.maximum(xin @ w["W1"], 0) * np.maximum(xin @ w["WU"], 0)) @ w["W2"]


def _rounded_x(x: np.ndarray, block: int) -> np.ndarray:
    """x as MatMulNBits' accuracy_level 4 rounds it: per block, round(x·127/max|x|) times
    max|x|/127 (float64)."""
    xb = x.astype(np.float64).reshape(*x.shape[:-1], -1, block)
    am = np.abs(xb).max(axis=-1, keepdims=True)
    inv = np.divide(127.0, am, out=np.zeros_like(am), where=am > 0)
    return (np.rint(xb * inv) * (am / 127)).reshape(x.shape)


def _sparse_op(artifact: onnx.ModelProto) -> tuple[onnx.NodeProto, int]:
    """The SparseFFN node in the kernel branch of the site's If, and that branch's bound."""
    (node,) = [n for n in artifact.graph.node if n.op_type == "If"]
    kernel = next(a.g for a in node.attribute if a.name == "then_branch")
    (op,) = [n for n in kernel.node if n.op_type == "SparseFFN"]
    return op, node


@pytest.mark.slow
@pytest.mark.parametrize("form,act,block", [("nbits8-b32-sym-relu", "relu", 32),
                                            ("nbits8-b128-zp-drelu", "drelu", 128)])
def test_int8_sites_get_exact_kernels_on_their_codes(form, act, block, quantized_model,
                                                      tmp_path, capsys):
    """MatMulNBits int8 (symmetric, and with zero points): SparseFFN bits 8 reads the gate's
    (and up's) codes from the user's own initializers, no float32 copy of a projection; the
    artifact with the shim and without it (the fallback function) computes the float FFN on
    ONNX Runtime's dequantized weights where the kernel serves, and is ONNX Runtime's own
    MatMulNBits past the bound."""
    from fffc.runtime import InferenceSession

    path = quantized_model(form)
    out = tmp_path / "out.fffc"
    assert main(["compile", str(path), "-o", str(out), "--target", "x86",
                 "--crossovers", "table"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    manifest = json.loads((out / "manifest.json").read_text())
    (site,) = manifest["sites"]
    assert site["decision"] == "exact"
    assert site["reason"].endswith(f"on its int8 codes (block {block})")
    assert manifest["verification"]["model_with_shim"]["ok"]
    assert manifest["verification"]["model_without_shim"]["ok"]
    assert "int8 weights dequantized to float32" in printed
    assert site["deviation"] < 1e-5  # no accuracy_level: ONNX Runtime computes in float too

    original, artifact = onnx.load(path), onnx.load(out / "model.onnx", load_external_data=False)
    op, _ = _sparse_op(artifact)
    assert next(a.i for a in op.attribute if a.name == "bits") == 8
    wg = q.quantizing_node(original, "wg")
    assert op.input[1:2] == wg.input[1:2]  # W1: the gate's own codes
    assert list(op.input[12:12 + len(wg.input) - 2]) == list(wg.input[2:])  # W1S, [W1Z]
    sizes = [int(np.prod(i.dims)) for i in artifact.graph.initializer
             if i.data_type == onnx.TensorProto.FLOAT]
    assert max(sizes) < q.D * q.F // 8  # scales only: no float32 matrix
    _same_initializers(original, artifact)
    assert _quantizing(artifact) == _quantizing(original)  # past the bound

    rng = np.random.default_rng(3)
    sess = InferenceSession(str(out))
    plain = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (bound,) = [b["max_tokens"] for b in site["dispatch"]["branches"] if b["branch"] == "kernel"]
    for shape in ((1, 1, q.D), (1, 2, q.D)):
        x = rng.standard_normal(shape).astype(np.float32)
        assert x.size // q.D <= bound
        want = _ffn_reference(original, x.astype(np.float64), act)
        for got in (sess.run(None, {"x": x})[0], plain.run(None, {"x": x})[0]):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    x = rng.standard_normal((2, bound + 3, q.D)).astype(np.float32)  # past the bound
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], _outputs(path, x)[0])


@pytest.mark.slow
def test_int8_accuracy_level_4_rounds_x_and_reports_the_deviation(tmp_path, capsys):
    """MatMulNBits int8 at accuracy_level 4: the kernel rounds x to int8 per block as that
    level says (SparseFFN accuracy_level 4), computing the float FFN on the dequantized
    weights of the rounded x; its distance from ONNX Runtime's own int8 arithmetic is
    measured and reported."""
    from fffc.runtime import InferenceSession

    src = q.float_ffn(tmp_path / "drelu.onnx", "drelu")
    path = q.matmul_nbits(src, tmp_path / "q8al4.onnx", 8, 32, True, 4)
    out = tmp_path / "out.fffc"
    assert main(["compile", str(path), "-o", str(out), "--target", "x86",
                 "--crossovers", "table"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    manifest = json.loads((out / "manifest.json").read_text())
    (site,) = manifest["sites"]
    assert site["decision"] == "exact"
    assert "x rounded to int8 per block (accuracy_level 4)" in printed
    assert 0 < site["deviation"] < 3e-2  # vs ONNX Runtime's own int8 products, reported
    op, _ = _sparse_op(onnx.load(out / "model.onnx", load_external_data=False))
    attrs = {a.name: a.i for a in op.attribute if a.type == onnx.AttributeProto.INT}
    assert (attrs["bits"], attrs["accuracy_level"]) == (8, 4)

    original = onnx.load(path)
    sess = InferenceSession(str(out))
    x = np.random.default_rng(5).standard_normal((1, 1, q.D)).astype(np.float32)
    want = _ffn_reference(original, x.astype(np.float64), "drelu", _rounded_x(x, 32))
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], want, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_weight_dtype_int8_quantizes_a_float_model(tmp_path, capsys):
    """``--weight-dtype int8`` on a float dReLU FFN: its weights become 8-bit symmetric
    MatMulNBits codes (block 32) read by the int8 kernels, no float32 matrix left; the
    artifact computes what ONNX Runtime's own MatMulNBitsQuantizer (bits 8) makes of the
    model (run with float activations), at every token count, and its distance from the
    float model is reported (smaller than int4's)."""
    from fffc.runtime import InferenceSession

    src = q.float_ffn(tmp_path / "drelu.onnx", "drelu")
    out = tmp_path / "out.fffc"
    assert main(["compile", str(src), "-o", str(out), "--target", "x86",
                 "--weight-dtype", "int8"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    manifest = json.loads((out / "manifest.json").read_text())
    (site,) = manifest["sites"]
    assert site["decision"] == "exact"
    assert {f["describe"] for f in site["weight_formats"].values()} == {
        "int8 MatMulNBits weights (block 32, symmetric)"}
    assert manifest["verification"]["model_with_shim"]["ok"]
    assert 0 < site["deviation"] < 5e-2  # the rounding to int8, reported
    assert "int8-rounded weights" in printed
    artifact = onnx.load(out / "model.onnx")
    assert not [i.name for i in artifact.graph.initializer
                if i.data_type == onnx.TensorProto.FLOAT and np.prod(i.dims) >= q.D * q.F]
    ops = [n for n in all_nodes(artifact.graph) if n.op_type == "SparseFFN"]
    assert {next(a.i for a in n.attribute if a.name == "bits") for n in ops} == {8}

    tool = q.matmul_nbits(src, tmp_path / "tool.onnx", 8, 32, True)  # no accuracy_level
    sess = InferenceSession(str(out))
    rng = np.random.default_rng(9)
    for shape in ((1, 1, q.D), (1, 2, q.D), (2, 7, q.D)):
        x = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], _outputs(tool, x)[0],
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_weight_dtype_int8_on_cuda(tmp_path):
    """``--weight-dtype int8 --target cuda`` on a float ReLU FFN: 8-bit codes in SparseFFN
    bits 8, the CUDA int8 variants, each checked by the compile's emulated run."""
    src = q.float_ffn(tmp_path / "relu.onnx", "relu")
    out = tmp_path / "out.fffc"
    assert main(["compile", str(src), "-o", str(out), "--target", "cuda",
                 "--weight-dtype", "int8"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    (site,) = manifest["sites"]
    assert site["decision"] == "exact", site["reason"]
    emulated = manifest["verification"]["cuda_kernels"][site["name"]]
    assert set(emulated) == {"int8_1", "int8_2", "int8_4", "int8_8"}, emulated
    assert all(r["ok"] for r in emulated.values()), emulated


def test_int8_site_gets_cuda_kernels(quantized_model, tmp_path):
    """An 8-bit MatMulNBits site (ONNX Runtime's quantizer, block 128, zero points) gets the
    CUDA exact kernels on its int8 codes on --target cuda: SparseFFN bits 8 in the artifact,
    a variant per token tile in the kernel table, each checked by the compile's emulated
    run; the shim builds with nvcc."""
    out = tmp_path / "out.fffc"
    assert main(["compile", str(quantized_model("nbits8-b128-zp-drelu")), "-o", str(out),
                 "--target", "cuda"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    (site,) = manifest["sites"]
    assert site["decision"] == "exact", site["reason"]
    assert "int8 codes (block 128)" in site["reason"], site["reason"]
    emulated = manifest["verification"]["cuda_kernels"][site["name"]]
    assert set(emulated) == {"int8_1", "int8_2", "int8_4", "int8_8"}, emulated
    assert all(r["ok"] for r in emulated.values()), emulated
    artifact = onnx.load(out / "model.onnx")
    ops = [n for n in all_nodes(artifact.graph) if n.op_type == "SparseFFN"]
    attrs = [{a.name: helper.get_attribute_value(a) for a in n.attribute} for n in ops]
    assert [(a["bits"], a["mode"]) for a in attrs] == [(8, b"exact")], attrs
    shim = (out / manifest["shim"]).read_bytes()  # its CUDA table: the int8 call's mode,
    assert b"exact/q8b128z\0" in shim  # the int8 kernels in the embedded fatbin
    assert b"_int8_1_rows_kernel" in shim
