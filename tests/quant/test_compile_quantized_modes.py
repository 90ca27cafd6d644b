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


def _dequantized(original: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The gate (W1), up (W2U) and down (W2) weights as ONNX Runtime dequantizes them, in
    float64."""
    nodes = {"W1": "W1", "W2": "W2", "W2U": "WU"}
    return {n: q.ort_weight(original, q.quantizing_node(original, q.WEIGHTS[w])).astype(
        np.float64) for n, w in nodes.items()}


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
    w = _dequantized(original)

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


# --------------------------------------------------------------- accuracy_level 4
# ONNX Runtime's quantizer with accuracy_level 4 (what the GenAI builder's -p int4 writes):
# its MatMulNBits round x to int8 per block. The masked modes compute on the rounded values
# (``fffc.contract.int4``'s module text): teal x' and a', cats x', the predictor the selected
# rows' x (its scores on float x).
L4_BLOCK = 32
ROUND_MARGIN = 2e-4  # a code of a' this close to a half step may round either way (teal)


def _round(v: np.ndarray) -> np.ndarray:
    """v [..., K] rounded to int8 per block of L4_BLOCK in float32 (MatMulNBits' level-4
    quantization of its input: step max|v| / 127, round half to even) and scaled back."""
    b = np.asarray(v, np.float32).reshape(*v.shape[:-1], -1, L4_BLOCK)
    top = np.abs(b).max(axis=-1, keepdims=True)
    inv = np.divide(np.float32(127), top, out=np.zeros_like(top), where=top > 0)
    return (np.rint(b * inv) * (top / np.float32(127))).astype(np.float32).reshape(v.shape)


def _half_steps(v: np.ndarray) -> float:
    """The smallest distance (in steps) of a nonzero code of v's rounding from a half step."""
    b = np.asarray(v, np.float32).reshape(*v.shape[:-1], -1, L4_BLOCK)
    top = np.abs(b).max(axis=-1, keepdims=True)
    t = np.divide(b * 127, top, out=np.zeros_like(b), where=top > 0)
    d = np.abs(np.abs(t - np.floor(t)) - 0.5)
    return float(d[b != 0].min()) if (b != 0).any() else 1.0


def _reference_l4(mode: SparseMode, x: np.ndarray, w: dict[str, np.ndarray],
                  op: dict[str, np.ndarray]) -> tuple[np.ndarray, float]:
    """The mode at accuracy_level 4 in float64 on ONNX Runtime's dequantized weights (the
    roundings by ``_round``), and the smallest relative distance of a decision from its
    threshold (or of a rounded a' code from a half step)."""
    x32 = x.reshape(-1, q.D).astype(np.float32)
    if mode is SparseMode.PREDICTOR:
        xd = x32.astype(np.float64)
        s = (xd @ op["PA"]) @ op["PB"] + op["PC"]
        xr = _round(x32).astype(np.float64)
        a = np.where(s > 0, _silu(xr @ w["W1"]) * (xr @ w["W2U"]), 0.0)
        return a @ w["W2"], float(np.abs(s).min() / np.abs(s).max())
    t_in, t1 = (float(t) for t in op["TH"])
    kept = np.where(np.abs(x32) <= np.float32(t_in), np.float32(0), x32) if t_in >= 0 else x32
    near = np.abs(np.abs(x32) - t_in).min() / np.abs(x32).max() if t_in >= 0 else 1.0
    xr = _round(kept).astype(np.float64)
    g = _silu(xr @ w["W1"])
    if mode is SparseMode.CATS:
        a = np.where(np.abs(g) <= t1, 0.0, g) * (xr @ w["W2U"])
        near = min(near, np.abs(np.abs(g) - t1).min() / np.abs(g).max())
        return a @ w["W2"], float(near)
    a = g * (xr @ w["W2U"])
    if t1 >= 0:
        near = min(near, np.abs(np.abs(a) - t1).min() / np.abs(a).max())
        a = np.where(np.abs(a) <= t1, 0.0, a)
    near = min(near, _half_steps(a) / ROUND_MARGIN * MARGIN)
    return _round(a).astype(np.float64) @ w["W2"], float(near)


@pytest.fixture(scope="module")
def calibrated_l4(tmp_path_factory):
    """(the int4 SwiGLU model at accuracy_level 4, symmetric as the GenAI builder writes
    it, and its uncentered calibration with a rank-16 predictor)."""
    root = tmp_path_factory.mktemp("int4l4")
    src = q.float_ffn(root / "swiglu.onnx", "swiglu")
    model = q.matmul_nbits(src, root / "swiglu-int4-l4.onnx", 4, L4_BLOCK, True, 4)
    calib = root / "calib.json"
    assert main(["calibrate", str(model), "--synthetic", "4", "--center", "none",
                 "--predictor-rank", "16", "-o", str(calib)]) == 0
    return model, calib


@pytest.mark.slow
@pytest.mark.parametrize("mcpu", [None, "haswell"], ids=["int8-dots", "float-dots"])
@pytest.mark.parametrize(("budget", "mode"), [("uniform=0.5", SparseMode.TEAL),
                                              ("cats=0.5", SparseMode.CATS),
                                              ("predictor", SparseMode.PREDICTOR)])
def test_masked_modes_at_accuracy_level_4(calibrated_l4, budget, mode, mcpu, tmp_path):
    """Each mode on the level-4 site, built for this CPU (int8 dots where it has AVX-512
    VNNI) and for an AVX2 one (float32 dots on the rounded values): the artifact with the
    shim and without it (the fallback function) equals the NumPy level-4 reference, on one
    and two tokens (the kernel) and on three and four (past --max-sparse-tokens 2:
    --sparse-prefill's masked FFN in standard ops)."""
    from fffc.runtime import InferenceSession

    model, calib = calibrated_l4
    out = tmp_path / "out.fffc"
    assert main(["compile", str(model), "-o", str(out), "--target", "x86", "--calibration",
                 str(calib), "--budget", budget, "--max-sparse-tokens", "2",
                 "--sparse-prefill", *(["--mcpu", mcpu] if mcpu else [])]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    (site,) = manifest["sites"]
    assert SparseMode(site["decision"]) is mode
    assert "rounded to int8 per block" in site["reason"]
    assert "as accuracy_level 4 asks (int8 dots where the CPU has them" in site["reason"]
    assert 0 < site["deviation"] < 1  # from ONNX Runtime's own level-4 output, relative
    assert manifest["verification"]["model_with_shim"]["ok"]

    original = onnx.load(model)
    artifact = onnx.load(out / "model.onnx")
    assert any(n.op_type == "If" for n in artifact.graph.node)  # the token dispatch
    node, op = _op(artifact)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["bits"] == 4 and attrs["accuracy_level"] == 4
    w = _dequantized(original)

    sess = InferenceSession(str(out))
    plain = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    checked = {True: 0, False: 0}  # beyond max_tokens: the masked branch
    for seed in range(24):
        tokens = 1 + seed % 4
        x = np.random.default_rng(seed).standard_normal((1, tokens, q.D)).astype(np.float32)
        want, near = _reference_l4(mode, x, w, op)
        if near < MARGIN:  # a decision (or a code) within float32 rounding: either way
            continue
        want = want.reshape(1, tokens, q.D)
        assert np.abs(want).max() > 0.1
        for got in (sess.run(None, {"x": x})[0], plain.run(None, {"x": x})[0]):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
            assert np.linalg.norm(got - want) <= 1e-4 * np.linalg.norm(want)
        checked[tokens > 2] += 1
    assert checked[True] >= 3 and checked[False] >= 3


def test_level_4_rounding_matters(calibrated_l4):
    """The level-4 reference above differs from the level-0 one by more than the tests'
    tolerance (the rounding is what they check)."""
    model, _ = calibrated_l4
    original = onnx.load(model)
    w = _dequantized(original)
    x = np.random.default_rng(0).standard_normal((1, 2, q.D)).astype(np.float32)
    op = {"TH": np.array([0.3, 0.01], np.float32)}
    for mode in (SparseMode.TEAL, SparseMode.CATS):
        l4, l0 = _reference_l4(mode, x, w, op)[0], _reference(mode, x, w, op)[0]
        assert np.linalg.norm(l4 - l0) > 1e-3 * np.linalg.norm(l0)


def test_level_4_int8_codes_stay_dense(tmp_path):
    """8-bit codes at accuracy_level 4: the int8 kernels are for mode exact only, so a
    calibration leaves the site as it was, saying why."""
    src = q.float_ffn(tmp_path / "swiglu.onnx", "swiglu")
    model = q.matmul_nbits(src, tmp_path / "al4-8.onnx", 8, 32, True, 4)
    calib = tmp_path / "calib.json"
    assert main(["calibrate", str(model), "--synthetic", "2", "--center", "none",
                 "-o", str(calib)]) == 0
    out = tmp_path / "out.fffc"
    assert main(["compile", str(model), "-o", str(out), "--target", "x86", "--calibration",
                 str(calib), "--budget", "cats=0.5"]) == 0
    (site,) = json.loads((out / "manifest.json").read_text())["sites"]
    assert site["decision"] == "dense"
    assert "the int8 kernels are for mode exact only" in site["reason"]
