"""``fffc compile --calibration CALIB.json --budget ...``: GELU/SiLU sites become
``SparseFFN`` mode=teal (the artifact equals the thresholded reference model, built
independently in standard ONNX ops by ``fffc.allocate.apply``) or mode=predictor (equal
to the float64 NumPy reference with the calibration's predictors), not the original."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import fffc
import fffc.runtime
from fffc import cli
from fffc.contract.config import CompileOptions
from fffc.contract.ops import SPARSE_FFN
from fffc.contract.tolerances import RTOL
from fffc.pipeline import analyze
from fffc.plan import allocate, calibration
from fffc.verify.in_place import run_in_place
from fffc.verify.reference import predictor_ffn
from tests.fixtures.calibration import D
from tests.fixtures.calibration import feeds as _feeds
from tests.fixtures.calibration import two_ffn_model as _models


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
    # calibrated centers (the default): x and a of the GELU FFN, a of the SwiGLU (its x
    # has no bias to hold a center's share)
    assert [s["centered"] for s in m["sites"]] == ["xh", "h"]


def test_masked_artifact_is_checked_site_by_site_in_place(uniform) -> None:
    """With the shim, each kernel site on the input it gets in the model vs its function;
    the outputs' distance from the masked reference is reported beside."""
    v = uniform.manifest["verification"]
    assert v["model_with_shim"]["basis"] == "sites in place" and v["model_with_shim"]["ok"]
    assert set(v["sites_in_place"]) == {"fffc_ffn_0", "fffc_ffn_1"}
    assert all(s["ok"] and s["kernel_calls"] >= 1 for s in v["sites_in_place"].values())
    assert v["model_with_shim_outputs"]["max_rel"] < 1e-3


def _op_inputs(model: onnx.ModelProto, site: str) -> dict[str, np.ndarray]:
    """A SparseFFN node's initializers by op input name, read from the artifact's model."""
    nodes = [n for top in model.graph.node
             for n in [top, *(m for a in top.attribute if a.type == onnx.AttributeProto.GRAPH
                              for m in a.g.node)]]
    node = next(n for n in nodes if n.name == site)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    return {a.name: inits[v] for a, v in zip(SPARSE_FFN.inputs, node.input, strict=False)
            if v in inits}


def test_in_place_check_finds_the_site_whose_kernel_computes_something_else(
        uniform, tmp_path) -> None:
    """The artifact's first site given other thresholds than its function's: the check in
    place flags that site alone (the second one, fed the first's different output, still
    computes its own function on it)."""
    art = Path(shutil.copytree(uniform.artifact, tmp_path / "a.fffc"))
    model = onnx.load(str(art / "model.onnx"))
    want = {s.name: _op_inputs(model, s.name) for s in uniform.sites}
    x = np.random.default_rng(7).standard_normal((1, 1, D)).astype(np.float32)
    feeds = [{"x": x}]  # one token: the kernels serve it

    def check():
        return run_in_place(uniform.sites, art / "model.onnx", art / "libfffc_ops.so", feeds,
                            lambda s: want[s.name], {}, RTOL)

    assert check().ok
    node = next(n for top in model.graph.node for a in top.attribute
                if a.type == onnx.AttributeProto.GRAPH for n in a.g.node
                if n.name == "fffc_ffn_0")
    th = next(i for i in model.graph.initializer if i.name == node.input[6])
    th.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(th) * 0.5, th.name))
    onnx.save(model, str(art / "model.onnx"))
    got = check()
    assert not got.ok
    assert not got.sites["fffc_ffn_0"].ok and got.sites["fffc_ffn_1"].ok


def _alloc(result) -> allocate.Allocation:
    return allocate.Allocation(**{k: result.manifest["calibration"]["allocation"][k] for k in
                                  ("levels", "thresholds", "sparsity", "error_calibration",
                                   "error_held_out")})


def _close(got: np.ndarray, want: np.ndarray, rtol: float = RTOL) -> bool:
    return np.allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max())


@pytest.mark.parametrize("tokens", [1, 40])  # the kernel; the If's original FFN beyond
def test_artifact_equals_the_thresholded_reference_where_its_kernel_serves(
        calibrated, uniform, tokens) -> None:
    """1 token: the thresholded model (the kernel); 40 tokens: the original model, within
    the exact tolerance (prefill dense: the If runs the original FFN past 1 token)."""
    _, path, _, calib = calibrated
    reference = ort.InferenceSession(
        allocate.apply(analyze(path), calib, _alloc(uniform)).SerializeToString(),
        providers=["CPUExecutionProvider"])
    original = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(tokens).standard_normal((1, tokens, D)).astype(np.float32)
    got = fffc.runtime.InferenceSession(uniform.artifact).run(None, {"x": x})[0]
    masked, plain = reference.run(None, {"x": x})[0], original.run(None, {"x": x})[0]
    want, other = (masked, plain) if tokens == 1 else (plain, masked)
    assert _close(got, want) and not _close(got, other, 1e-3)


def test_dispatch_is_recorded_per_site(uniform) -> None:
    """The x86 table (the tests' crossovers): the masked kernels serve 1 token, the original
    FFN the rest."""
    for s in uniform.manifest["sites"]:
        assert s["dispatch"]["branches"] == [
            {"branch": "kernel", "min_tokens": 1, "max_tokens": 1},
            {"branch": "original", "min_tokens": 2, "max_tokens": None}]
        assert s["dispatch"]["basis"] == "table"


def test_sparse_prefill_keeps_the_thresholds_at_every_length(calibrated, uniform) -> None:
    """--sparse-prefill: past 1 token the If runs the thresholded FFN in standard ops, so
    many-token calls equal the thresholded model too; the manifest says so."""
    tmp, path, data, calib = calibrated
    result = fffc.compile(path, tmp / "prefill.fffc", CompileOptions(
        calibration=tmp / "m.calib.json", budget="uniform=0.4", data=data,
        sparse_prefill=True))
    for s in result.manifest["sites"]:
        assert [b["branch"] for b in s["dispatch"]["branches"]] == ["kernel", "masked"]
    assert result.manifest["verification"]["model_with_shim"]["ok"]
    reference = ort.InferenceSession(
        allocate.apply(analyze(path), calib, _alloc(result)).SerializeToString(),
        providers=["CPUExecutionProvider"])
    original = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    sess = fffc.runtime.InferenceSession(result.artifact)
    for tokens in (1, 40):
        x = np.random.default_rng(tokens).standard_normal((1, tokens, D)).astype(np.float32)
        got = sess.run(None, {"x": x})[0]
        assert _close(got, reference.run(None, {"x": x})[0]), tokens
        assert not _close(got, original.run(None, {"x": x})[0], 1e-3), tokens


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
        (["--budget", "uniform=0.4"], "add --calibration"),
        (["--calibration", str(tmp_path / "missing.json"), "--budget", "uniform=0.4"],
         "cannot read the calibration"),
        (["--calibration", calib_file], "needs a --budget"),
        (["--calibration", calib_file, "--budget", "predictor"], "no predictors"),
        (["--calibration", calib_file, "--budget", "sparsity=2"], "expected sparsity=S"),
        (["--calibration", calib_file, "--budget", "uniform=0.33"], "not a calibrated level"),
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


def test_pinned_timings_set_each_sites_bound(calibrated, tmp_path) -> None:
    """--timings: the first FFN's kernel pinned faster up to 32 tokens, the second's at 1
    only. The check holds each probe to the branches that serve it (its 16- and 18-token
    probes run the first FFN thresholded and the second as it was; a 33-token probe, added
    because no probe was past 32, both as they were), and so does the artifact."""
    tmp, path, _, calib = calibrated

    def rows(last: int) -> list[dict]:
        return [{"tokens": n, "kernel_ms": 1.0, "original_ms": 2.0 if n <= last else 0.5}
                for n in (1, 2, 4, 8, 16, 32, 64)]

    pins = tmp_path / "timings.json"
    pins.write_text(json.dumps({"fffc_ffn_0": rows(32), "fffc_ffn_1": rows(1)}))
    # no --data: the made-up probes (2 x 8 and 2 x 9 tokens, then 1) are verification's
    result = fffc.compile(path, tmp_path / "pinned.fffc", CompileOptions(
        calibration=tmp / "m.calib.json", budget="uniform=0.4", timings=pins))
    sites = {s["name"]: s["dispatch"] for s in result.manifest["sites"]}
    assert {n: d["branches"][0]["max_tokens"] for n, d in sites.items()} == {
        "fffc_ffn_0": 32, "fffc_ffn_1": 1}
    assert {d["basis"] for d in sites.values()} == {"pinned"}
    assert sites["fffc_ffn_1"]["timings"] == rows(1)  # as given
    v = result.manifest["verification"]
    assert v["model_with_shim"]["ok"] and v["model_without_shim"]["ok"]
    assert v["beyond_probes"] == [{"x": [1, 33, D]}]
    alloc = _alloc(result)
    first = allocate.Allocation(alloc.levels, {**alloc.thresholds, "fffc_ffn_1": {}},
                                alloc.sparsity, alloc.error_calibration, alloc.error_held_out)
    models = {name: ort.InferenceSession(allocate.apply(analyze(path), calib, a)
                                         .SerializeToString(), providers=["CPUExecutionProvider"])
              for name, a in (("both", alloc), ("first", first))}
    models["original"] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    sess = fffc.runtime.InferenceSession(result.artifact)
    for tokens, expect in ((1, "both"), (16, "first"), (32, "first"), (33, "original")):
        x = np.random.default_rng(tokens).standard_normal((1, tokens, D)).astype(np.float32)
        got = sess.run(None, {"x": x})[0]
        outs = {k: m.run(None, {"x": x})[0] for k, m in models.items()}
        assert [k for k, y in outs.items() if _close(got, y)] == [expect], tokens


@pytest.fixture(scope="module")
def with_predictors(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pred")
    path, w = _models(tmp)
    data, _ = _feeds(tmp, count=4)
    calib = calibration.calibrate(analyze(path), data, predictor_rank=8, predictor_sparsity=0.7)
    calibration.write(calib, tmp / "m.calib.json")
    result = fffc.compile(path, tmp / "m.fffc", CompileOptions(
        calibration=tmp / "m.calib.json", budget="predictor"))
    with np.load(tmp / "m.calib.predictors.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return path, w, arrays, result


def test_predictor_sites_and_their_quality_are_reported(with_predictors) -> None:
    _, _, _, result = with_predictors
    assert [s.decision for s in result.sites] == ["predictor", "predictor"]
    for s in result.sites:
        assert s.predictor["rank"] == 8 and s.predictor["recall"] >= 0.9
        assert s.max_rel_err < 1e-5 and s.deviation > 1e-3
    m = result.manifest
    assert set(m["calibration"]["predictors"]) == {"fffc_ffn_0", "fffc_ffn_1"}
    assert {e["spec"]["mode"] for e in m["kernels"]["entries"]} == {"predictor"}
    assert m["verification"]["model_with_shim"]["ok"] and m["verification"]["model_without_shim"]["ok"]


@pytest.mark.parametrize("tokens", [1, 40])  # the kernel; the If's original FFN beyond
def test_predictor_artifact_equals_numpy_reference(with_predictors, tokens) -> None:
    """1 token: the two-FFN model (GELU FFN, then SwiGLU) with each FFN computed only on the
    neurons its predictor selects, in float64 from the original weights and the
    .predictors.npz; 40 tokens: the original model."""
    path, w, arrays, result = with_predictors
    x = np.random.default_rng(tokens).standard_normal((1, tokens, D)).astype(np.float32)

    def pred(site: str) -> tuple:
        return (arrays[f"{site}/a"], arrays[f"{site}/b"],
                arrays[f"{site}/c"] - arrays[f"{site}/cut"])

    y1 = predictor_ffn(x, w["W1"].T, w["b1"], w["W2"], None, None, *pred("fffc_ffn_0"),
                       activation_name="gelu")
    y = predictor_ffn(y1, w["Wg"].T, None, w["Wd"], None, w["Wu"].T, *pred("fffc_ffn_1"),
                      activation_name="silu")
    got = fffc.runtime.InferenceSession(result.artifact).run(None, {"x": x})[0]
    original = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    plain = original.run(None, {"x": x})[0]
    want, other = (y, plain) if tokens == 1 else (plain, y)
    assert _close(got, want) and not _close(got, other, 1e-3)


def test_shim_names_a_missing_or_misshapen_mode_input(uniform, with_predictors) -> None:
    """The shim refuses a teal node without TH and a predictor node whose PA does not fit,
    by name, instead of running a kernel on the wrong tensors."""
    import onnx
    from onnx import numpy_helper

    from fffc.runtime import shim_path
    from fffc.verify.artifact import single_node_model

    def drop_th(model) -> None:
        del model.graph.node[0].input[6]

    def shrink(position: int):
        def edit(model) -> None:
            name = model.graph.node[0].input[position]
            init = next(i for i in model.graph.initializer if i.name == name)
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init)[:-1], init.name))
        return edit

    for artifact, edit, message in ((uniform.artifact, drop_th, "required by mode teal"),
                                    (uniform.artifact, shrink(10), r"XC must be \[d_in\]"),
                                    (uniform.artifact, shrink(11), r"HC must be \[d_ff\]"),
                                    (with_predictors[3].artifact, shrink(7), "predictor shapes")):
        model = single_node_model(onnx.load(str(artifact / "model.onnx")), "fffc_ffn_0")
        edit(model)
        so = ort.SessionOptions()
        so.log_severity_level = 4
        so.register_custom_ops_library(str(shim_path(artifact)))
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        with pytest.raises(Exception, match=message):
            sess.run(None, {"X": np.ones((1, D), np.float32)})


@pytest.mark.parametrize("tokens", [1, 40])
def test_cats_closes_gates_of_gated_sites_only(calibrated, tokens) -> None:
    """``--budget cats=0.5``: the SwiGLU site becomes mode cats (half its gates closed, at
    the calibrated |silu(gate)| threshold), the GELU FFN stays as it was; at 1 token the
    artifact equals the float64 CATS reference of the SwiGLU behind the original GELU FFN,
    at 40 the original SwiGLU (the If's original FFN)."""
    from fffc.verify.compare import compare
    from fffc.verify.reference import cats_ffn, sparse_ffn

    tmp, path, _, calib = calibrated
    out = tmp / "cats.fffc"
    result = (fffc.compile(path, out, CompileOptions(calibration=tmp / "m.calib.json",
                                                     budget="cats=0.5"))
              if not out.exists() else None)
    if result is not None:
        assert [s.decision for s in result.sites] == ["dense", "cats"]
        t_gate = calib["sites"]["fffc_ffn_1"]["thresholds"]["gate"]["0.5"]
        assert result.sites[1].thresholds == (-1.0, pytest.approx(t_gate))
        assert {e["spec"]["mode"] for e in result.manifest["kernels"]["entries"]} == {"cats"}
    w = _weights_of(path)
    x = np.random.default_rng(tokens).standard_normal((1, tokens, D)).astype(np.float32)
    y1 = sparse_ffn(x, w["W1"], w["b1"], w["W2"], None, activation_name="gelu")
    t_gate = calib["sites"]["fffc_ffn_1"]["thresholds"]["gate"]["0.5"]
    want, slack = cats_ffn(y1.astype(np.float32), w["Wg"], None, w["Wd"], None, w["Wu"].T,
                           thresholds=np.array([-1.0, t_gate], np.float32),
                           activation_name="silu", slack=True)  # gates at rounding of t
    got = fffc.runtime.InferenceSession(out).run(None, {"x": x})[0]
    dense = sparse_ffn(y1, w["Wg"], None, w["Wd"], None, w["Wu"].T, activation_name="silu")
    if tokens == 1:
        assert compare(got, want, 1e-4, slack).ok
        assert not compare(got, dense, 1e-3).ok  # gates really closed
    else:
        assert compare(got, dense, 1e-4).ok and not compare(got, want, 1e-3).ok


def _weights_of(path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def test_greedy_budget_with_predictors_matches_its_reference(with_predictors, tmp_path) -> None:
    """``--budget sparsity=0.5`` on a calibration with predictors: each site is planned as
    the allocation chose (teal, cats, predictor or left dense) and the artifact equals the
    masked reference ``allocate.apply`` builds from the manifest's allocation."""
    from fffc.plan.calibration import load_predictors

    path, _, _, result = with_predictors
    calib_file = result.manifest["calibration"]["path"]
    calib = json.loads(Path(calib_file).read_text())
    out = fffc.compile(path, tmp_path / "g.fffc", CompileOptions(
        calibration=calib_file, budget="sparsity=0.5"))
    alloc_json = out.manifest["calibration"]["allocation"]
    alloc = allocate.Allocation(**{k: alloc_json[k] for k in
                                   ("levels", "thresholds", "sparsity", "error_calibration",
                                    "error_held_out")})
    assert alloc.sparsity >= 0.5
    for s in out.sites:
        t = alloc.thresholds[s.name]
        expect = ("predictor" if t.get("predictor", -1) > 0 else
                  "cats" if t.get("gate", -1) >= 0 else
                  "teal" if max(t.get("input", -1), t.get("hidden", -1)) >= 0 else "dense")
        assert s.decision == expect, (s.name, t)
    predictors = load_predictors(calib_file, calib)
    ref = ort.InferenceSession(allocate.apply(analyze(path), calib, alloc, predictors).SerializeToString(),
                               providers=["CPUExecutionProvider"])
    original = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for tokens in (1, 30):  # the kernels; the original beyond
        x = np.random.default_rng(tokens).standard_normal((1, tokens, D)).astype(np.float32)
        got = fffc.runtime.InferenceSession(out.artifact).run(None, {"x": x})[0]
        want = (ref if tokens == 1 else original).run(None, {"x": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_cli_reports_what_the_thresholds_cost(calibrated, tmp_path, capsys) -> None:
    tmp, path, data, _ = calibrated
    code = cli.main(["compile", str(path), "-o", str(tmp_path / "a.fffc"), "--calibration",
                     str(tmp / "m.calib.json"), "--budget", "error=0.3", "--data", str(data)])
    out = capsys.readouterr().out
    assert code == 0
    assert "vs the reference (masked)" in out and "differs from the original by design" in out
    assert "allocation (error=0.3)" in out and "site output vs the original" in out


def test_calibrate_budget_is_applied_by_compile(tmp_path, capsys) -> None:
    """``fffc calibrate --budget`` searches the allocation on its own feeds and stores it;
    ``fffc compile --calibration`` without a budget applies exactly that (the same levels
    and thresholds as ``--budget`` with the same feeds at compile time, and the same
    artifact function); ``--budget`` at compile time still wins; rules are stored as is."""
    path, _ = _models(tmp_path)
    data, x = _feeds(tmp_path, count=4)
    out = tmp_path / "b.calib.json"
    assert cli.main(["calibrate", str(path), "--data", str(data), "--budget", "sparsity=0.3",
                     "-o", str(out)]) == 0
    assert "allocation (sparsity=0.3)" in capsys.readouterr().out
    stored = json.loads(out.read_text())["allocation"]
    assert stored["budget"] == "sparsity=0.3" and stored["sparsity"] >= 0.3
    kept = fffc.compile(path, tmp_path / "kept.fffc", CompileOptions(calibration=out))
    searched = fffc.compile(path, tmp_path / "searched.fffc", CompileOptions(
        calibration=out, budget="sparsity=0.3", data=data))
    got, want = (r.manifest["calibration"] for r in (kept, searched))
    assert got["budget"] == "sparsity=0.3" and "fffc calibrate --budget" in got["feeds"]
    assert got["allocation"]["levels"] == want["allocation"]["levels"]
    assert got["allocation"]["thresholds"] == want["allocation"]["thresholds"]
    for feed in ({"x": x[:1].reshape(1, 1, D).astype(np.float32)},  # the kernels
                 {"x": x[:50].reshape(2, 25, D).astype(np.float32)}):
        a, b = (fffc.runtime.InferenceSession(r.artifact).run(None, feed)[0]
                for r in (kept, searched))
        np.testing.assert_array_equal(a, b)
    other = fffc.compile(path, tmp_path / "other.fffc", CompileOptions(
        calibration=out, budget="uniform=0.6", data=data))
    assert other.manifest["calibration"]["budget"] == "uniform=0.6"
    assert {lv for s in other.manifest["calibration"]["allocation"]["levels"].values()
            for lv in s.values()} == {0.6}
    rule = fffc.calibrate(path, data, budget="cats=0.5", output=tmp_path / "c.calib.json")
    assert rule["allocation"] == {"budget": "cats=0.5"}
    cats = fffc.compile(path, tmp_path / "cats.fffc",
                        CompileOptions(calibration=tmp_path / "c.calib.json"))
    assert [s.decision for s in cats.sites if s.kind == "gated"] == ["cats"]
    for bad, message in ((["--budget", "sparsity=2"], "expected sparsity=S"),
                         (["--budget", "predictor"], "add --predictor-rank")):
        assert cli.main(["calibrate", str(path), "--data", str(data), *bad,
                         "-o", str(tmp_path / "bad.json")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "bad.json").exists()
