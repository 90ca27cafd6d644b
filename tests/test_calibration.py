"""``fffc calibrate``: streamed per-site statistics whose thresholds give the target
sparsity on the calibration data, computed independently here from the weights."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import fffc
from fffc.cli import main
from fffc.pipeline import analyze
from fffc.plan import calibration
from fffc.plan.calibration import Histogram, Reservoir
from tests.fixtures.calibration import D, F, feeds, masked_feeds, two_ffn_model


def _erf_gelu(x):
    from math import erf

    return 0.5 * x * (1 + np.vectorize(erf)(x / np.sqrt(2)))


def test_histogram_quantile_bounds_the_exact_one() -> None:
    v = np.random.default_rng(0).lognormal(0, 2, 100_000) * np.sign(np.random.default_rng(1).standard_normal(100_000))
    v[:5000] = 0.0
    h = Histogram()
    for part in np.array_split(v, 7):  # streamed
        h.add(part)
    assert h.total == v.size and h.zeros == 5000
    assert h.quantile(0.03) == 0.0  # within the exact zeros
    for q in (0.1, 0.5, 0.9, 0.99):
        exact = np.quantile(np.abs(v), q)
        assert exact <= h.quantile(q) <= exact * 1.013
    assert Histogram.from_json(json.loads(json.dumps(h.to_json()))).quantile(0.5) == h.quantile(0.5)


def test_reservoir_keeps_a_bounded_uniform_sample() -> None:
    r = Reservoir(100, 1, seed=0)
    for start in range(0, 10_000, 250):
        r.add(np.arange(start, start + 250, dtype=np.float32)[:, None])
    s = r.sample()[:, 0]
    assert s.shape == (100,) and r.seen == 10_000 and len(set(s.tolist())) == 100
    assert 3000 < s.mean() < 7000  # not the first 100 rows (mean 49.5)


def _densest_brute(v: np.ndarray, t: float) -> np.ndarray:
    """Per column: the mean of the values in [s, s + 2t] over the start s (a value of the
    column, smallest first on ties) that holds the most values — by counting every window."""
    out = []
    for col in v.T:
        counts = [np.sum((col >= s) & (col <= s + 2 * t)) for s in np.sort(col)]
        s = np.sort(col)[int(np.argmax(counts))]
        out.append(col[(col >= s) & (col <= s + 2 * t)].mean())
    return np.array(out)


def _want_centers(v: np.ndarray, center: str) -> np.ndarray:
    med = np.median(v, 0)
    if center == "median":
        return med
    return _densest_brute(v, float(np.quantile(np.abs(v - med), calibration.WINDOW_LEVEL)))


def test_densest_window_center() -> None:
    """On skewed channels (exponential, as GELU's outputs are one-sided) the densest
    window's mean has more entries within t than the median has — a site's threshold t
    for a sparsity can then be smaller; on a symmetric channel both are about the middle."""
    rng = np.random.default_rng(1)
    v = np.stack([rng.exponential(1.0, 4000), rng.exponential(3.0, 4000) - 2,
                  rng.standard_normal(4000)], axis=1)
    t = 0.3
    got = calibration.densest(v, t)
    np.testing.assert_allclose(got, _densest_brute(v, t), rtol=1e-12)
    med = np.median(v, 0)
    near_mode, near_med = (np.mean(np.abs(v - c) <= t, axis=0) for c in (got, med))
    assert np.all(near_mode[:2] > near_med[:2] + 0.05), (near_mode, near_med)
    assert abs(got[2] - med[2]) < 0.1


@pytest.mark.parametrize("center", ["none", "median", "mode"])
def test_thresholds_give_the_target_sparsity_on_the_data(tmp_path, center) -> None:
    path, w = two_ffn_model(tmp_path)
    data, x = feeds(tmp_path)
    result = fffc.calibrate(path, data, output=tmp_path / "c.json", center=center)
    assert result["feeds"] == 3 and result["center"] == center
    gelu, swiglu = sorted(result["sites"].values(), key=lambda s: s["kind"])
    assert (gelu["family"], swiglu["family"], gelu["tokens"]) == ("gelu FFN", "SwiGLU", 150)
    # independent recomputation of what each histogram saw
    a1 = _erf_gelu(x @ w["W1"] + w["b1"])
    y1 = a1 @ w["W2"]
    g = y1 @ w["Wg"]
    gate = g / (1 + np.exp(-g))
    hidden2 = gate * (y1 @ w["Wu"])
    # centers: per-channel medians or densest windows (every row is in the reservoir here:
    # 150 < 4096) of the dense site's x and of both sites' a; none for the gated site's x
    # and for the gate
    want_centers = ({"input": _want_centers(x, center), "hidden": _want_centers(a1, center)},
                    {"hidden": _want_centers(hidden2, center)}) if center != "none" else ({}, {})
    for site, want in zip((gelu, swiglu), want_centers, strict=True):
        got = site.get("centers", {})
        assert sorted(got) == sorted(want)
        for part, c in want.items():
            np.testing.assert_allclose(got[part], c, rtol=1e-5, atol=1e-6)
    for values, th, c in ((x, gelu["thresholds"]["input"], want_centers[0].get("input", 0.0)),
                          (a1, gelu["thresholds"]["hidden"], want_centers[0].get("hidden", 0.0)),
                          (y1, swiglu["thresholds"]["input"], 0.0),
                          (gate, swiglu["thresholds"]["gate"], 0.0),
                          (hidden2, swiglu["thresholds"]["hidden"], want_centers[1].get("hidden", 0.0))):
        for s in (0.4, 0.5, 0.9):
            frac = np.mean(np.abs(values - c) <= th[f"{s:g}"])
            assert s <= frac <= s + 0.02, (s, frac)
    assert "gate" not in gelu["thresholds"]
    on_disk = json.loads((tmp_path / "c.json").read_text())
    assert on_disk["sites"] == json.loads(json.dumps(result["sites"]))
    samples = np.load(tmp_path / on_disk["samples"])
    assert sorted(samples.files) == sorted(result["sites"])
    assert all(samples[k].shape == (150, D) for k in samples.files)  # all rows: 150 < 4096


def test_cli_calibrate_and_its_errors(tmp_path, capsys) -> None:
    path, _ = two_ffn_model(tmp_path)
    data, _ = feeds(tmp_path, count=1)
    out = tmp_path / "m.calib.json"
    assert main(["calibrate", str(path), "--data", str(data)]) == 0
    assert out.exists() and (tmp_path / "m.calib.samples.npz").exists()
    assert main(["calibrate", str(path), "--data", str(data)]) == 2  # exists, no --force
    assert "--force" in capsys.readouterr().err
    assert main(["calibrate", str(path), "--data", str(data), "--force"]) == 0
    assert main(["calibrate", str(path), "--synthetic", "2", "-o", str(tmp_path / "s.json")]) == 0
    assert main(["calibrate", str(path), "--data", str(data), "--center", "none", "-o",
                 str(tmp_path / "z.json")]) == 0
    centered = json.loads(out.read_text())
    zero = json.loads((tmp_path / "z.json").read_text())
    assert (centered["center"], zero["center"]) == ("mode", "none")
    assert all("centers" in st for st in centered["sites"].values())
    assert not any("centers" in st for st in zero["sites"].values())
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # argparse: usage and code 2
        main(["calibrate", str(path), "--data", str(data), "--center", "mean", "--force"])
    assert exit_info.value.code == 2 and "--center" in capsys.readouterr().err
    bad = tmp_path / "bad.npz"
    np.savez(bad, tokens=np.zeros((1, 3, D), np.float32))
    assert main(["calibrate", str(path), "--data", str(bad), "--force"]) == 2
    assert "lacks model input(s) ['x']" in capsys.readouterr().err
    assert main(["calibrate", str(path), "--force"]) == 2  # neither --data nor --synthetic


def test_calibrated_levels(tmp_path, capsys) -> None:
    """By default every 0.05 (TEAL's greedy step); ``--levels`` writes thresholds for the
    given targets only — what ``--budget uniform=S`` and the search can pick from."""
    path, _ = two_ffn_model(tmp_path)
    data, _ = feeds(tmp_path, count=1)
    default = fffc.calibrate(path, data)
    assert default["sparsities"] == pytest.approx([0.05 * i for i in range(1, 20)])
    th = default["sites"]["fffc_ffn_0"]["thresholds"]["input"]
    keys = [f"{0.05 * i:g}" for i in range(1, 20)]
    assert sorted(th, key=float) == keys
    assert [th[k] for k in keys] == sorted(th.values())  # monotone in the level
    assert main(["calibrate", str(path), "--data", str(data), "--levels", "0.6, 0.3,0.6",
                 "-o", str(tmp_path / "l.json")]) == 0
    got = json.loads((tmp_path / "l.json").read_text())
    assert got["sparsities"] == [0.3, 0.6]
    for name, st in got["sites"].items():
        assert all(sorted(t) == ["0.3", "0.6"] for t in st["thresholds"].values())
        for part, t in st["thresholds"].items():  # the same statistics, fewer levels
            assert t["0.3"] == default["sites"][name]["thresholds"][part]["0.3"]
    capsys.readouterr()
    for bad in ("0.4,1", "0", "40%", ","):
        assert main(["calibrate", str(path), "--data", str(data), "--levels", bad,
                     "-o", str(tmp_path / "b.json")]) == 2
        assert "--levels" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()


@pytest.mark.parametrize("bad", ["missing.npz", "not_npz.npz"])
def test_unreadable_data_is_a_usage_error(tmp_path, bad) -> None:
    path, _ = two_ffn_model(tmp_path)
    (tmp_path / "not_npz.npz").write_text("hello")
    with pytest.raises(fffc.FffcError) as e:
        fffc.calibrate(path, tmp_path / bad)
    assert e.value.exit_code == 2 and bad in str(e.value)


def test_calibrate_trains_predictors_per_site(tmp_path) -> None:
    path, _ = two_ffn_model(tmp_path)
    data, _ = feeds(tmp_path, count=2)
    out = tmp_path / "p.json"
    assert main(["calibrate", str(path), "--data", str(data), "--predictor-rank", "8",
                 "--predictor-sparsity", "0.5", "-o", str(out)]) == 0
    body = json.loads(out.read_text())
    preds = np.load(tmp_path / body["predictors"])
    for name, st in body["sites"].items():
        p = st["predictor"]
        assert (p["rank"], p["target_sparsity"]) == (8, 0.5)
        assert 0.4 < p["held_out"]["active"] < 0.6 and p["held_out"]["recall"] > 0.9
        assert preds[f"{name}/a"].shape == (D, 8) and preds[f"{name}/b"].shape == (8, F)


@pytest.mark.parametrize("center", ["none", "median", "mode"])
def test_thresholded_model_zeroes_below_the_calibrated_thresholds(tmp_path, center) -> None:
    import onnxruntime as ort

    from fffc.plan.calibration import thresholded_model

    path, w = two_ffn_model(tmp_path)
    data, x = feeds(tmp_path)
    calib = fffc.calibrate(path, data, center=center)
    gelu, swiglu = sorted(calib["sites"].values(), key=lambda s: s["kind"])
    model = thresholded_model(analyze(path), calib, 0.4)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Where") == 4 and ops.count("Abs") == 4  # x and a of both sites
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x.reshape(6, 25, D).astype(np.float32)})[0].reshape(-1, D)

    def cut(v, site, part):  # entries within t of the center (0 without one) become it
        t = site["thresholds"][part]["0.4"]
        c = np.asarray(site.get("centers", {}).get(part, 0.0), np.float64)
        return np.where(np.abs(v - c) <= t, c, v)

    y1 = cut(_erf_gelu(cut(x, gelu, "input") @ w["W1"] + w["b1"]), gelu, "hidden") @ w["W2"]
    x2 = cut(y1, swiglu, "input")
    g = x2 @ w["Wg"]
    want = cut(g / (1 + np.exp(-g)) * (x2 @ w["Wu"]), swiglu, "hidden") @ w["Wd"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert ("centers" in gelu) == (center != "none")
    c_in = np.asarray(gelu.get("centers", {}).get("input", 0.0))
    assert np.mean(cut(x, gelu, "input") == c_in) >= 0.4  # the sparsity it was asked for
    with pytest.raises(fffc.FffcError, match=r"no thresholds for sparsity 0\.33"):
        thresholded_model(analyze(path), calib, 0.33)
    other = tmp_path / "other.onnx"  # the same graph, another file
    renamed = onnx.load(str(path))
    renamed.producer_name = "another exporter"
    onnx.save(renamed, str(other))
    with pytest.raises(fffc.FffcError, match="another model"):
        thresholded_model(analyze(other), calib, 0.4)


def test_thresholded_model_parts(tmp_path) -> None:
    from fffc.plan.calibration import thresholded_model

    path, _ = two_ffn_model(tmp_path)
    data, _ = feeds(tmp_path, count=1)
    calib = fffc.calibrate(path, data)
    for parts, wheres in ((("input",), 2), (("hidden",), 2), ((), 0)):
        ops = [n.op_type for n in thresholded_model(analyze(path), calib, 0.5, parts=parts).graph.node]
        assert ops.count("Where") == wheres


def test_centered_thresholds_cost_less_accuracy_on_offset_channels(tmp_path) -> None:
    """Channels that sit at their own offsets (as a LayerNorm's β puts them): thresholds
    around each channel's median keep the output closer to the original than TEAL's
    zero-centered ones at the same sparsity, on feeds the calibration did not see."""
    import onnxruntime as ort

    from fffc.plan.calibration import thresholded_model

    path, _ = two_ffn_model(tmp_path)
    offset = np.random.default_rng(5).standard_normal(D).astype(np.float32) * 1.5
    data = tmp_path / "offset_feeds"
    data.mkdir()
    for i in range(3):
        x = np.random.default_rng(20 + i).standard_normal((2, 25, D)).astype(np.float32)
        np.savez(data / f"{i:02d}.npz", x=x + offset)
    x = np.random.default_rng(99).standard_normal((4, 25, D)).astype(np.float32) + offset
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    err = {}
    for center in ("none", "median", "mode"):
        calib = fffc.calibrate(path, data, center=center)
        model = thresholded_model(analyze(path), calib, 0.5, sites=["fffc_ffn_0"])
        got = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        err[center] = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert err["median"] < 0.7 * err["none"], err
    assert err["mode"] < 0.7 * err["none"], err


def test_padding_rows_are_left_out(tmp_path) -> None:
    """Feeds with an ``attention_mask`` input: rows it marks 0 (padding, here large values
    a model could compute for them) do not enter any statistic: the calibration equals one
    on the real rows alone; ``token_mask=None`` counts them."""
    masked_path, padded, real = masked_feeds(tmp_path)
    got = fffc.calibrate(masked_path, padded)
    want = fffc.calibrate(masked_path, real)
    assert got["token_mask"] == "attention_mask"
    for name, st in got["sites"].items():
        assert st["tokens"] == 26
        assert st["thresholds"] == want["sites"][name]["thresholds"]
        assert st["centers"] == want["sites"][name]["centers"]
    counted = fffc.calibrate(masked_path, padded, token_mask=None)
    assert counted["token_mask"] is None
    assert all(st["tokens"] == 50 for st in counted["sites"].values())
    assert counted["sites"]["fffc_ffn_0"]["thresholds"] != got["sites"]["fffc_ffn_0"]["thresholds"]
