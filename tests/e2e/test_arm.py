"""``--target arm``: an aarch64 artifact built here, run inside aarch64 ONNX Runtime under
qemu-aarch64, compared with the x86 run of the original model.

The aarch64 side is the sysroot of tests/fixtures/aarch64_python.py (aarch64 CPython with
the onnxruntime and numpy versions installed here). Needs root (unshare -m), qemu-user and
g++-aarch64-linux-gnu: scripts/system-deps.sh installs them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import fffc
from fffc.pipeline import analyze
from tests.fixtures.aarch64_python import ROOT, build_sysroot, run_python

RUNNER = '''
import sys, numpy as np, onnxruntime as ort
art, data = sys.argv[1], np.load(sys.argv[2])
so = ort.SessionOptions()
so.register_custom_ops_library(art + "/libfffc_ops.so")
sess = ort.InferenceSession(art + "/model.onnx", so, providers=["CPUExecutionProvider"])
out = {}
for k in data.files:
    out[k] = sess.run(None, {"x": data[k]})[0]
np.savez(sys.argv[3], **out)
print("aarch64 onnxruntime", ort.__version__, "ran", len(out), "inputs")
'''


@pytest.fixture(scope="module")
def sysroot() -> Path:
    return build_sysroot()


def _run_aarch64(sysroot: Path, artifact: Path, inputs: dict[str, np.ndarray], tmp: Path):
    np.savez(tmp / "in.npz", **inputs)
    (tmp / "runner.py").write_text(RUNNER)
    proc = run_python(sysroot, tmp / "runner.py", [artifact, tmp / "in.npz", tmp / "out.npz"])
    assert "aarch64 onnxruntime" in proc.stdout
    return dict(np.load(tmp / "out.npz"))


def test_arm_artifact_runs_in_aarch64_onnxruntime(sysroot, tmp_path):
    sys.path.insert(0, str(ROOT / "examples"))
    from build_example_model import build_example_model

    model = build_example_model(tmp_path / "m.onnx", d_model=64, d_ff=256)
    result = fffc.compile(model, tmp_path / "m.fffc", fffc.CompileOptions(target="arm"))
    art = result.artifact
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["target"]["tvm"]["mtriple"] == "aarch64-linux-gnu"
    assert [s["decision"] for s in manifest["sites"]] == ["exact"] * 3
    header = (art / manifest["shim"]).read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64
    rng = np.random.default_rng(3)
    # 1 and 2 tokens run fffc's kernels, 5 and 24 the dense branch of the token dispatch
    inputs = {f"t{b}x{s}": rng.standard_normal((b, s, 64)).astype(np.float32)
              for b, s in ((1, 1), (1, 2), (1, 5), (2, 12))}
    got = _run_aarch64(sysroot, art, inputs, tmp_path)
    ref = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    for k, x in inputs.items():
        want = ref.run(None, {"x": x})[0]
        np.testing.assert_allclose(got[k], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert onnx.load(str(art / "model.onnx")).graph.node  # the artifact's model is intact


@pytest.mark.parametrize("bits", [4, 8])
def test_arm_quantized_artifact_runs_in_aarch64_onnxruntime(bits, sysroot, tmp_path):
    """A dReLU FFN of 4-bit (and 8-bit) MatMulNBits (ONNX Runtime's quantizer, zero points):
    its int4 (int8) kernel (NEON) serves 1 and 2 tokens — the float FFN on the weights ONNX
    Runtime dequantizes, computed in the test — and ONNX Runtime's MatMulNBits the longer
    calls."""
    from tests.fixtures import quantized as q

    src = q.float_ffn(tmp_path / "drelu.onnx", "drelu")
    path = q.matmul_nbits(src, tmp_path / f"q{bits}.onnx", bits, 32, False)
    result = fffc.compile(path, tmp_path / f"q{bits}.fffc", fffc.CompileOptions(target="arm"))
    assert [s.decision for s in result.sites] == ["exact"]
    (kernel,) = [b["max_tokens"] for b in result.sites[0].dispatch.to_json()["branches"]
                 if b["branch"] == "kernel"]
    model = onnx.load(str(path))
    w = {n: q.ort_weight(model, q.quantizing_node(model, q.WEIGHTS[n])).astype(np.float64)
         for n in ("W1", "WU", "W2")}
    rng = np.random.default_rng(6)
    inputs = {f"t{s}": rng.standard_normal((1, s, q.D)).astype(np.float32)
              for s in (1, 2, kernel + 5)}
    got = _run_aarch64(sysroot, result.artifact, inputs, tmp_path)
    original = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for k, x in inputs.items():
        if x.shape[1] <= kernel:
            x64 = x.astype(np.float64)
            want = (np.maximum(x64 @ w["W1"], 0) * np.maximum(x64 @ w["WU"], 0)) @ w["W2"]
        else:
            want = original.run(None, {"x": x})[0]
        np.testing.assert_allclose(got[k], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_arm_float16_artifact_runs_in_aarch64_onnxruntime(sysroot, tmp_path):
    """A float16 dReLU FFN (``convert_float_to_float16``): its exact kernel (float32 on the
    model's float16 weights, the shim widening them once) serves 1 and 2 tokens — within
    one float16 step of the float64 FFN computed in the test — and the original float16
    subgraph the longer calls (aarch64 ONNX Runtime's, within 8 float16 unit roundoffs of
    x86's)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from tests.fixtures import quantized as q

    path = tmp_path / "drelu16.onnx"
    onnx.save(convert_float_to_float16(onnx.load(q.float_ffn(tmp_path / "drelu.onnx",
                                                             "drelu"))), path)
    result = fffc.compile(path, tmp_path / "f16.fffc", fffc.CompileOptions(target="arm"))
    assert [(s.decision, s.dtype) for s in result.sites] == [("exact", "float16")]
    (kernel,) = [b["max_tokens"] for b in result.sites[0].dispatch.to_json()["branches"]
                 if b["branch"] == "kernel"]
    w = {i.name: onnx.numpy_helper.to_array(i).astype(np.float64)
         for i in onnx.load(str(path)).graph.initializer}
    rng = np.random.default_rng(8)
    inputs = {f"t{s}": rng.standard_normal((1, s, q.D)).astype(np.float16)
              for s in (1, 2, kernel + 5)}
    got = _run_aarch64(sysroot, result.artifact, inputs, tmp_path)
    original = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for k, x in inputs.items():
        assert got[k].dtype == np.float16
        g = got[k].astype(np.float64)
        if x.shape[1] <= kernel:
            x64 = x.astype(np.float64)
            want = (np.maximum(x64 @ w["wg"], 0) * np.maximum(x64 @ w["wu"], 0)) @ w["wd"]
            step = np.spacing(np.abs(want.astype(np.float16))).astype(np.float64)
            assert np.all(np.abs(g - want) <= step + 2.0**-20 * np.abs(want).max())
        else:
            want = original.run(None, {"x": x})[0].astype(np.float64)
            assert np.abs(g - want).max() <= 8 * 2.0**-11 * np.abs(want).max()


def test_arm_int4_cats_artifact_runs_in_aarch64_onnxruntime(sysroot, tmp_path):
    """A calibrated SwiGLU FFN of 4-bit MatMulNBits (zero points) in mode cats: its int4
    kernel (NEON) serves every call, the mode's function on the weights ONNX Runtime
    dequantizes with the artifact's gate threshold (computed in the test)."""
    from fffc.cli import main
    from fffc.contract.kinds import SparseMode
    from tests.fixtures import quantized as q
    from tests.quant.test_compile_quantized_modes import MARGIN, _op, _reference

    src = q.float_ffn(tmp_path / "swiglu.onnx", "swiglu")
    path = q.matmul_nbits(src, tmp_path / "q4.onnx", 4, 32, False)
    calib = tmp_path / "calib.json"
    assert main(["calibrate", str(path), "--synthetic", "2", "--center", "none",
                 "-o", str(calib)]) == 0
    result = fffc.compile(path, tmp_path / "q4.fffc", fffc.CompileOptions(
        target="arm", calibration=calib, budget="cats=0.5", max_sparse_tokens=0))
    assert [s.decision for s in result.sites] == ["cats"]
    _, op = _op(onnx.load(str(result.artifact / "model.onnx")))
    model = onnx.load(str(path))
    w = {n: q.ort_weight(model, q.quantizing_node(model, q.WEIGHTS[k])).astype(np.float64)
         for n, k in (("W1", "W1"), ("W2", "W2"), ("W2U", "WU"))}
    inputs, wants = {}, {}
    for seed in range(8):
        x = np.random.default_rng(seed).standard_normal((1, 1 + seed % 2, q.D)).astype(np.float32)
        want, near = _reference(SparseMode.CATS, x, w, op)
        if near >= MARGIN:
            inputs[f"s{seed}"], wants[f"s{seed}"] = x, want.reshape(x.shape)
    assert len(inputs) >= 3
    got = _run_aarch64(sysroot, result.artifact, inputs, tmp_path)
    for k, want in wants.items():
        np.testing.assert_allclose(got[k], want, rtol=1e-4, atol=1e-5)


@pytest.mark.torch
def test_arm_fff_artifact_runs_in_aarch64_onnxruntime(sysroot, tmp_path):
    """The FastFeedForward op family on aarch64 too (an FFF 2x4 layer, TorchScript export)."""
    import warnings

    import torch

    from fffc.torch import FastFeedForward

    torch.manual_seed(0)
    layer = FastFeedForward(64, 64, 4, 2).eval()
    path = tmp_path / "fff.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(layer, (torch.randn(2, 3, 64),), str(path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "b", 1: "s"}})
    result = fffc.compile(path, tmp_path / "fff.fffc", fffc.CompileOptions(target="arm"))
    assert [s.decision for s in result.sites] == ["tree"]
    rng = np.random.default_rng(4)
    inputs = {f"t{s}": rng.standard_normal((1, s, 64)).astype(np.float32) for s in (1, 9)}
    got = _run_aarch64(sysroot, result.artifact, inputs, tmp_path)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for k, x in inputs.items():
        want = ref.run(None, {"x": x})[0]
        np.testing.assert_allclose(got[k], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("budget, modes", [("uniform=0.4", ["teal", "teal"]),
                                           ("cats=0.5", ["dense", "cats"])])
def test_arm_threshold_modes_run_in_aarch64_onnxruntime(sysroot, tmp_path, budget, modes):
    """``--calibration`` artifacts for aarch64: the GELU FFN + SwiGLU model of the
    calibration tests, TEAL (both sites) or CATS (the gated one), against the thresholded
    reference model (``fffc.allocate.apply``, standard ONNX ops) run on x86 at 1 token (the
    kernels) and the original model at 7 (the arm table's crossover is 1: the original FFNs
    run past it)."""
    from fffc.plan import allocate, calibration
    from tests.fixtures.calibration import D
    from tests.fixtures.calibration import feeds as _feeds
    from tests.fixtures.calibration import two_ffn_model as _models

    path, _ = _models(tmp_path)
    data, _ = _feeds(tmp_path, count=4)
    calib = calibration.calibrate(analyze(path), data)
    calibration.write(calib, tmp_path / "m.calib.json")
    result = fffc.compile(path, tmp_path / "m.fffc", fffc.CompileOptions(
        target="arm", calibration=tmp_path / "m.calib.json", budget=budget))
    assert [s.decision for s in result.sites] == modes
    rng = np.random.default_rng(8)
    inputs = {f"t{s}": rng.standard_normal((1, s, D)).astype(np.float32) for s in (1, 7)}
    got = _run_aarch64(sysroot, result.artifact, inputs, tmp_path)
    # the reference: the same thresholds in standard ops (x86 ONNX Runtime)
    fixed = allocate.Allocation(
        levels={}, sparsity=0.0, error_calibration=0.0, error_held_out=0.0,
        thresholds={s.name: ({"input": s.thresholds[0], "hidden": s.thresholds[1]}
                             if s.decision == "teal" else
                             {"input": s.thresholds[0], "gate": s.thresholds[1]}
                             if s.decision == "cats" else {})
                    for s in result.sites})
    ref = ort.InferenceSession(allocate.apply(analyze(path), calib, fixed).SerializeToString(),
                               providers=["CPUExecutionProvider"])
    original = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for k, x in inputs.items():
        want = (ref if x.shape[1] == 1 else original).run(None, {"x": x})[0]
        np.testing.assert_allclose(got[k], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.torch
@pytest.mark.parametrize("kind", ["blockdense", "mod", "mod_causal"])
def test_arm_structured_and_routed_run_in_aarch64_onnxruntime(sysroot, tmp_path, kind):
    """StructuredFFN (BlockDense, TorchScript export) and RoutedFFN (top-k and causal MoD,
    dynamo exports) artifacts for aarch64, every kernel variant's token range visited."""
    from tests.fixtures.structured_exports import export_mod, export_structured

    if kind == "blockdense":
        path = export_structured("blockdense", "torchscript17", tmp_path / "m.onnx")
        shapes, decision = ((1, 1), (1, 5), (2, 20), (3, 40)), "structured"
    else:
        path = export_mod("dynamo18", tmp_path / "m.onnx", causal=kind == "mod_causal")
        shapes, decision = ((1, 16), (3, 16)) if kind == "mod" else ((1, 1), (2, 9)), "routed"
    result = fffc.compile(path, tmp_path / "m.fffc", fffc.CompileOptions(target="arm"))
    assert [s.decision for s in result.sites] == [decision]
    rng = np.random.default_rng(9)
    inputs = {f"t{b}x{s}": rng.standard_normal((b, s, 64)).astype(np.float32)
              for b, s in shapes}
    got = _run_aarch64(sysroot, result.artifact, inputs, tmp_path)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for k, x in inputs.items():
        want = ref.run(None, {"x": x})[0]
        np.testing.assert_allclose(got[k], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
