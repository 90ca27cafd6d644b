"""``fffc compile`` of a float16 model (``onnxruntime.transformers.float16``'s
``convert_float_to_float16``, or a torch export of a ``.half()`` module): its dense and
gated ReLU FFNs get SparseFFN exact kernels computing in float32 on the model's own float16
weights, x cast to float32 before the op and y back to float16 after; the original float16
subgraph past the token bound. A bfloat16 model (torch's export of a ``.bfloat16()``
module) cannot run on ONNX Runtime's CPU provider, which verification needs: refused in one
line."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from fffc.cli import main
from fffc.runtime import InferenceSession
from fffc.verify.in_place import all_nodes
from tests.fixtures import quantized as q

U16 = 2.0**-11  # float16's unit roundoff
# the check's tolerance for a float16 model, as the docs state it: 8 unit roundoffs
RTOL16 = 8 * U16


def _fp16(tmp_path, act: str):
    from onnxruntime.transformers.float16 import convert_float_to_float16

    path = tmp_path / f"{act}16.onnx"
    onnx.save(convert_float_to_float16(onnx.load(q.float_ffn(tmp_path / f"{act}.onnx", act))),
              path)
    return path


def _ffn64(model: onnx.ModelProto, x: np.ndarray, act: str) -> np.ndarray:
    """The FFN in float64 on the model's float16 weights (read from the file)."""
    w = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}
    x = x.astype(np.float64)
    if act == "relu":
        return np.maximum(x @ w["wg"] + w["b1"], 0) @ w["wd"] + w["b2"]
    return (np.maximum(x @ w["wg"], 0) * np.maximum(x @ w["wu"], 0)) @ w["wd"]


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]


@pytest.mark.parametrize("act", ["relu", "drelu"])
def test_float16_model_gets_exact_kernels(act, tmp_path, capsys):
    path = _fp16(tmp_path, act)
    out = tmp_path / "out.fffc"
    assert main(["compile", str(path), "-o", str(out), "--target", "x86"]) == 0
    capsys.readouterr()
    manifest = json.loads((out / "manifest.json").read_text())
    (site,) = manifest["sites"]
    assert (site["decision"], site["dtype"]) == ("exact", "float16")
    assert "in float32 on its float16 weights" in site["reason"]
    check = manifest["verification"]
    assert check["rtol"] == RTOL16
    assert check["model_with_shim"]["ok"] and check["model_without_shim"]["ok"]
    assert site["deviation"] <= RTOL16

    original = onnx.load(path)
    artifact = onnx.load(out / "model.onnx")
    inits = {i.name: numpy_helper.to_array(i) for i in artifact.graph.initializer}
    for init in original.graph.initializer:  # the model's own tensors, byte for byte
        a, b = inits[init.name], numpy_helper.to_array(init)
        assert (a.dtype, a.shape, a.tobytes()) == (b.dtype, b.shape, b.tobytes())
    # no float32 copy of a weight matrix: float32 tensors are the biases' (q.F values)
    assert all(a.size <= q.F for a in inits.values() if a.dtype == np.float32)
    nodes = list(all_nodes(artifact.graph))
    (op,) = [n for n in nodes if n.op_type == "SparseFFN"]
    assert (op.input[1], op.input[3]) == ("wg", "wd")  # the float16 weights themselves
    assert inits["wg"].dtype == np.float16
    made = {o: n for n in nodes for o in n.output}
    cast_x = made[op.input[0]]
    assert (cast_x.op_type, cast_x.input[0]) == ("Cast", "x")
    assert next(a.i for a in cast_x.attribute if a.name == "to") == onnx.TensorProto.FLOAT
    (cast_y,) = [n for n in nodes if op.output[0] in n.input]
    assert cast_y.op_type == "Cast"
    assert next(a.i for a in cast_y.attribute if a.name == "to") == onnx.TensorProto.FLOAT16

    (bound,) = [b["max_tokens"] for b in site["dispatch"]["branches"] if b["branch"] == "kernel"]
    shim = InferenceSession(str(out), providers=["CPUExecutionProvider"])
    plain = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(5)
    for shape in ((1, 1, q.D), (1, bound, q.D)):
        for _ in range(20):
            x = rng.standard_normal(shape).astype(np.float16)
            want = _ffn64(original, x, act)
            rounded = want.astype(np.float16)
            # float32 math rounded once: within one float16 step of the float64 FFN, plus
            # float32's own accumulation error (2^-20 of the largest output: where an
            # output is small by cancellation, a float16 step of it is smaller still)
            step = np.spacing(np.abs(rounded)).astype(np.float64) + 2.0**-20 * np.abs(
                want).max()
            for got in (shim.run(None, {"x": x})[0], plain.run(None, {"x": x})[0]):
                assert got.dtype == np.float16
                assert np.all(np.abs(got.astype(np.float64) - want) <= step)
            # and within the documented tolerance of ONNX Runtime's own float16 subgraph
            theirs = _run(path, x).astype(np.float64)
            assert np.abs(got - theirs).max() <= RTOL16 * np.abs(theirs).max()
    x = rng.standard_normal((2, bound + 3, q.D)).astype(np.float16)  # past the bound
    np.testing.assert_array_equal(shim.run(None, {"x": x})[0], _run(path, x))


@pytest.mark.parametrize("act", ["swiglu", "gelu", "gelu_tanh"])
def test_float16_non_relu_ffn_is_left_as_it_was(act, tmp_path, capsys):
    """SwiGLU and GELU FFNs made float16 (the GELU forms rebuilt in standard ops with
    float16 constants): left as they were, the artifact computing the original bit for
    bit."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from tests.fixtures.graphs import dense_ffn

    if act == "swiglu":
        path, d, why = _fp16(tmp_path, act), q.D, "silu is never exactly zero"
    else:
        path, d, why = tmp_path / f"{act}16.onnx", 16, f"{act} is never exactly zero"
        onnx.save(convert_float_to_float16(dense_ffn(act)), path)
    out = tmp_path / "out.fffc"
    assert main(["compile", str(path), "-o", str(out), "--target", "x86"]) == 0
    (site,) = json.loads((out / "manifest.json").read_text())["sites"]
    assert (site["decision"], site["dtype"]) == ("dense", "float16")
    assert why in site["reason"] and "thresholds on a float16 model: not yet" in site["reason"]
    x = np.random.default_rng(6).standard_normal((2, 3, d)).astype(np.float16)
    np.testing.assert_array_equal(_run(out / "model.onnx", x), _run(path, x))


def _torch_ffn(dtype):
    import torch

    class GatedFFN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gate = torch.nn.Linear(q.D, q.F, bias=False)
            self.up = torch.nn.Linear(q.D, q.F, bias=False)
            self.down = torch.nn.Linear(q.F, q.D, bias=False)

        def forward(self, x):
            return self.down(torch.relu(self.gate(x)) * torch.relu(self.up(x)))

    torch.manual_seed(0)
    return GatedFFN().to(dtype).eval()


def _export(module, path, dtype):
    import torch

    torch.onnx.export(module, (torch.zeros(1, 2, q.D, dtype=dtype),), str(path),
                      input_names=["x"], output_names=["y"], opset_version=17, dynamo=False,
                      dynamic_axes={"x": {0: "b", 1: "s"}, "y": {0: "b", 1: "s"}})
    return path


def test_torch_half_export_gets_exact_kernels(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    path = _export(_torch_ffn(torch.float16), tmp_path / "half.onnx", torch.float16)
    out = tmp_path / "out.fffc"
    assert main(["compile", str(path), "-o", str(out), "--target", "x86"]) == 0
    (site,) = json.loads((out / "manifest.json").read_text())["sites"]
    assert (site["kind"], site["decision"], site["dtype"]) == ("gated", "exact", "float16")
    x = np.random.default_rng(7).standard_normal((1, 1, q.D)).astype(np.float16)
    want, got = _run(path, x), InferenceSession(str(out)).run(None, {"x": x})[0]
    assert np.abs(got.astype(np.float64) - want).max() <= RTOL16 * np.abs(want).max()


def test_bfloat16_model_is_refused_in_one_line(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    path = _export(_torch_ffn(torch.bfloat16), tmp_path / "bf16.onnx", torch.bfloat16)
    assert main(["compile", str(path), "-o", str(tmp_path / "out.fffc")]) == 4
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("fffc: error")]
    assert len(lines) == 1
    assert "ONNX Runtime's CPU provider cannot run the original model" in lines[0]
    assert "MatMul" in lines[0]
    assert "Traceback" not in err and "internal error" not in err


def test_float16_fff_is_refused_in_one_line(tmp_path, capsys):
    """A FastFeedForward made float16: found, and the model refused in one line."""
    torch = pytest.importorskip("torch")
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from fffc.torch import FastFeedForward
    from tests.fixtures.fff_exports import export_fff

    torch.manual_seed(0)
    src = export_fff(FastFeedForward(64, 64, depth=2, trees=2).eval(), tmp_path / "fff.onnx",
                     dynamo=False, opset=17)
    path = tmp_path / "fff16.onnx"
    onnx.save(convert_float_to_float16(onnx.load(src)), path)
    capsys.readouterr()
    assert main(["compile", str(path), "-o", str(tmp_path / "out.fffc")]) == 5
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("fffc: error")]
    assert len(lines) == 1 and "(fff)" in lines[0]
    assert "fffc compiles the dense and gated FFNs of 16-bit models only" in lines[0]
    assert "Traceback" not in err and "internal error" not in err
