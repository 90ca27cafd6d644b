"""``fffc compile --calibration CALIB.json --budget ...``: GELU/SiLU sites become
``SparseFFN`` mode=teal, and the artifact equals the thresholded reference model (built
independently, in standard ONNX ops, by ``fffc.allocate.apply``), not the original."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

import fffc
import fffc.runtime
from fffc import allocate, calibration, cli
from fffc.config import CompileOptions
from tests.test_calibration import D, _feeds, _models


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("teal")
    path, _ = _models(tmp)
    data, _ = _feeds(tmp, count=4)
    calib = fffc.calibrate(path, data)
    calibration.write(calib, tmp / "m.calib.json")
    return tmp, path, data, calib


def _compile(calibrated, budget: str, name: str):
    tmp, path, data, _ = calibrated
    return fffc.compile(path, tmp / name, CompileOptions(
        calibration=tmp / "m.calib.json", budget=budget, data=data))


@pytest.fixture(scope="module")
def uniform(calibrated):
    return _compile(calibrated, "uniform=0.4", "uniform.fffc")


def test_gelu_and_swiglu_sites_become_teal(uniform) -> None:
    assert [s.decision for s in uniform.sites] == ["teal", "teal"]
    for s in uniform.sites:
        assert s.thresholds[0] > 0 and s.thresholds[1] > 0
        assert s.max_rel_err < 1e-5  # op reference vs the thresholded graph's site outputs
        assert s.deviation > 1e-3  # vs the original: what the thresholds cost, reported
    m = uniform.manifest
    assert m["calibration"]["allocation"]["levels"]["fffc_ffn_0"] == {"input": 0.4, "hidden": 0.4}
    v = m["verification"]
    assert v["model_with_shim"]["ok"] and v["model_without_shim"]["ok"]
    assert all(k["ok"] for k in v["kernels"].values()) and len(v["kernels"]) == 2
    assert v["deviation_from_original"]["max_rel"] > 1e-3
    modes = {e["spec"]["mode"] for e in m["kernels"]["entries"]}
    assert modes == {"teal"}


@pytest.mark.parametrize("tokens", [1, 40])  # the kernel, and the If's thresholded dense branch
def test_artifact_equals_the_thresholded_reference(calibrated, uniform, tokens) -> None:
    _, path, _, calib = calibrated
    alloc = allocate.Allocation(**{k: uniform.manifest["calibration"]["allocation"][k] for k in
                                   ("levels", "thresholds", "sparsity", "error_calibration",
                                    "error_held_out")})
    reference = ort.InferenceSession(allocate.apply(path, calib, alloc).SerializeToString(),
                                     providers=["CPUExecutionProvider"])
    original = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(tokens).standard_normal((1, tokens, D)).astype(np.float32)
    got = fffc.runtime.InferenceSession(uniform.artifact).run(None, {"x": x})[0]
    want = reference.run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert not np.allclose(got, original.run(None, {"x": x})[0], rtol=1e-3, atol=1e-3)


def test_error_budget_is_recorded_and_held(calibrated) -> None:
    result = _compile(calibrated, "error=0.05", "error.fffc")
    alloc = result.manifest["calibration"]["allocation"]
    assert alloc["error_held_out"] <= 0.05 and alloc["sparsity"] > 0
    teal = [s for s in result.sites if s.decision == "teal"]
    assert teal and all(s.decision in ("teal", "dense") for s in result.sites)


def test_bad_calibration_inputs_are_clear_errors(calibrated, tmp_path, capsys) -> None:
    tmp, path, _, calib = calibrated
    calib_file = str(tmp / "m.calib.json")
    cases = [
        (["--calibration", calib_file], "needs a --budget"),
        (["--calibration", calib_file, "--budget", "sparsity=2"], "expected sparsity=S"),
        (["--calibration", calib_file, "--budget", "uniform=0.33"], "not a calibrated level"),
        (["--calibration", calib_file, "--budget", "uniform=0.4", "--target", "cuda"],
         "CPU targets"),
    ]
    other = json.loads(json.dumps({k: v for k, v in calib.items() if not k.startswith("_")}))
    other["model"]["sha256"] = "0" * 64
    (tmp_path / "other.json").write_text(json.dumps(other))
    cases.append((["--calibration", str(tmp_path / "other.json"), "--budget", "uniform=0.4"],
                  "another model"))
    for i, (extra, message) in enumerate(cases):
        code = cli.main(["compile", str(path), "-o", str(tmp_path / f"a{i}"), *extra])
        err = capsys.readouterr().err
        assert code == 2 and message in err, (extra, code, err)
        assert "Traceback" not in err and not (tmp_path / f"a{i}").exists()
