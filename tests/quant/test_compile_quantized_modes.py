"""``fffc calibrate`` then ``fffc compile --calibration`` of a SwiGLU FFN that ONNX Runtime's
own quantizer made int4 (MatMulNBits, accuracy_level 0): each masked mode (teal, cats,
predictor) gets its int4 kernel on the site's codes (x86), and the artifact, with the shim
and without it (the fallback function), computes the mode's function on the weights ONNX
Runtime dequantizes: the float64 NumPy reference below, with the thresholds or predictor
the artifact holds applied."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from fffc.cli import main
from fffc.contract.kinds import SparseMode
from fffc.contract.ops import SPARSE_FFN
from fffc.verify.in_place import all_nodes
from tests.fixtures import quantized as q

INPUTS = [a.name for a in SPARSE_FFN.inputs]
MARGIN = 1e-5  # relative distance of every decision from its threshold (float32 sums agree)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """(the int4 SwiGLU model, its calibration: synthetic feeds, uncentered thresholds, a
    rank-16 predictor)."""
    root = tmp_path_factory.mktemp("int4modes")
    src = q.float_ffn(root / "swiglu.onnx", "swiglu")
    model = q.matmul_nbits(src, root / "swiglu-int4.onnx", 4, 32, symmetric=False)
    calib = root / "calib.json"
    assert main(["calibrate", str(model), "--synthetic", "4", "--center", "none",
                 "--predictor-rank", "16", "-o", str(calib)]) == 0
    return model, calib


def _silu(v: np.ndarray) -> np.ndarray:
    return v / (1 + np.exp(-v))


def _op(artifact: onnx.ModelProto) -> tuple[onnx.NodeProto, dict[str, np.ndarray]]:
    """The SparseFFN node and its initializer inputs by op input name."""
    (node,) = [n for n in all_nodes(artifact.graph) if n.op_type == SPARSE_FFN.name]
    inits = {i.name: numpy_helper.to_array(i) for i in artifact.graph.initializer}
    return node, {name: inits[v] for name, v in zip(INPUTS, node.input, strict=False)
                  if v in inits}


def _reference(mode: SparseMode, x: np.ndarray, w: dict[str, np.ndarray],
               op: dict[str, np.ndarray]) -> tuple[np.ndarray, float]:
    """The mode's FFN in float64 on ONNX Runtime's dequantized weights ``w``, and the
    smallest relative distance of a decision from its threshold."""
    x = x.reshape(-1, q.D).astype(np.float64)
    if mode is SparseMode.PREDICTOR:
        s = (x @ op["PA"]) @ op["PB"] + op["PC"]
        a = np.where(s > 0, _silu(x @ w["W1"]) * (x @ w["W2U"]), 0.0)
        return a @ w["W2"], float(np.abs(s).min() / np.abs(s).max())
    t_in, t1 = (float(t) for t in op["TH"])
    kept = np.where(np.abs(x) <= t_in, 0.0, x)
    near = np.abs(np.abs(x) - t_in).min() / np.abs(x).max() if t_in >= 0 else 1.0
    g = _silu(kept @ w["W1"])
    if mode is SparseMode.CATS:
        gate = np.where(np.abs(g) <= t1, 0.0, g)
        a = gate * (kept @ w["W2U"])
        near = min(near, np.abs(np.abs(g) - t1).min() / np.abs(g).max())
    else:
        a = g * (kept @ w["W2U"])
        near = min(near, np.abs(np.abs(a) - t1).min() / np.abs(a).max())
        a = np.where(np.abs(a) <= t1, 0.0, a)
    return a @ w["W2"], float(near)


@pytest.mark.slow
@pytest.mark.parametrize(("budget", "mode"), [("uniform=0.5", SparseMode.TEAL),
                                              ("cats=0.5", SparseMode.CATS),
                                              ("predictor", SparseMode.PREDICTOR)])
def test_masked_modes_on_int4_codes(calibrated, budget, mode, tmp_path):
    from fffc.runtime import InferenceSession

    model, calib = calibrated
    out = tmp_path / "out.fffc"
    assert main(["compile", str(model), "-o", str(out), "--target", "x86", "--calibration",
                 str(calib), "--budget", budget, "--max-sparse-tokens", "0"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    (site,) = manifest["sites"]
    assert SparseMode(site["decision"]) is mode
    assert manifest["verification"]["model_with_shim"]["ok"]

    original = onnx.load(model)
    node, op = _op(onnx.load(out / "model.onnx"))
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["bits"] == 4 and SparseMode(attrs["mode"].decode()) is mode
    # the codes: W2 re-laid out per neuron, W1 and WU per input channel in teal, as
    # MatMulNBits holds them (a row of blocks per neuron) otherwise
    assert op["W2"].shape == (q.F, q.D // 2)
    assert op["W1"].shape == ((q.D, q.F // 2) if mode is SparseMode.TEAL else (q.F, q.D // 32, 16))
    assert "W1Z" in op  # the quantizer's zero points, kept
    w = {n: q.ort_weight(original, q.quantizing_node(original, q.WEIGHTS[n])).astype(np.float64)
         for n in ("W1", "W2")}
    w["W2U"] = q.ort_weight(original, q.quantizing_node(original, q.WEIGHTS["WU"])).astype(
        np.float64)

    sess = InferenceSession(str(out))
    plain = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    checked = 0
    for seed in range(16):
        x = np.random.default_rng(seed).standard_normal((1, 1 + seed % 2, q.D)).astype(np.float32)
        want, near = _reference(mode, x, w, op)
        if near < MARGIN:  # a decision within float32 rounding: either way is right
            continue
        want = want.reshape(x.shape[0], x.shape[1], q.D)
        assert np.abs(want).max() > 0.1
        for got in (sess.run(None, {"x": x})[0], plain.run(None, {"x": x})[0]):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        checked += 1
    assert checked >= 6


def test_cuda_keeps_int4_sites_exact_only(calibrated, tmp_path):
    """The CUDA int4 kernels are for mode exact: a calibrated int4 SwiGLU site is left as it
    was on --target cuda, saying why."""
    model, calib = calibrated
    out = tmp_path / "out.fffc"
    assert main(["compile", str(model), "-o", str(out), "--target", "cuda", "--calibration",
                 str(calib), "--budget", "cats=0.5"]) == 0
    (site,) = json.loads((out / "manifest.json").read_text())["sites"]
    assert site["decision"] == "dense"
    assert site["reason"].endswith("silu is never exactly zero: no exact skipping (the cuda "
                                   "int4 kernels are for mode exact only); left as it was")


def test_accuracy_level_4_sites_get_no_masked_mode(tmp_path):
    """A site whose MatMulNBits round x to int8 (accuracy_level 4): the masked modes' int4
    kernels take x in float32, so a calibration leaves it as it was, saying why."""
    src = q.float_ffn(tmp_path / "swiglu.onnx", "swiglu")
    model = q.matmul_nbits(src, tmp_path / "al4.onnx", 4, 32, True, 4)
    calib = tmp_path / "calib.json"
    assert main(["calibrate", str(model), "--synthetic", "2", "--center", "none",
                 "-o", str(calib)]) == 0
    out = tmp_path / "out.fffc"
    assert main(["compile", str(model), "-o", str(out), "--target", "x86", "--calibration",
                 str(calib), "--budget", "cats=0.5"]) == 0
    (site,) = json.loads((out / "manifest.json").read_text())["sites"]
    assert site["decision"] == "dense"
    assert "take x in float32, not rounded to int8 as accuracy_level 4 asks" in site["reason"]
