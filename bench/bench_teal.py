"""TEAL thresholds and predictors at decode (1 token): fffc's kernels vs the dense FFN in ORT.

    python bench/bench_teal.py [--shapes gelu768,swiglu2048] [--levels 0.25,0.4,0.5] [--repeat 60]

Issue 4's benchmark shapes, one FFN per ONNX model over x [batch, seq, d]: BERT-base's GELU
FFN (768 → 3072 → 768, biases, com.microsoft Gelu) and a LLaMA-style SwiGLU FFN (2048 →
8192 → 2048, no biases, ``Mul(g, Sigmoid(g))``), random weights ~ N(0, 1/fan_in). Each
model goes through the user's path: ``fffc calibrate`` (64 synthetic feeds of 64 tokens,
x ~ N(0, 1)), then ``fffc compile --calibration --budget uniform=S`` for each level S: x and
the down projection's input both at the calibrated S-quantile of their magnitudes, so S of
all FFN weight bytes are skipped. The compiled model computes the thresholded FFN (checked
by ``fffc compile`` against it); the "rel err" column is its distance from the original on
held-out inputs (random weights: a pessimistic case, trained FFNs are more concentrated).

CATS rows (SwiGLU only): ``--budget cats=S`` closes the S least active gates (calibrated
quantile of |silu(x·Wg)|); the gate GEMV is dense, up and down rows only for open gates,
so S of the up and down bytes (2/3 of the FFN) are skipped.

Predictor mode (last row): ``fffc calibrate --predictor-rank d_ff/32 --predictor-sparsity
0.9`` trains a low-rank predictor per FFN (labels: the 10% largest |a|); its cut is then
moved so that it selects 10% of the neurons on held-out tokens ("90% predicted
sparsity"; calibration sets it for 99% recall, which on random weights selects far more),
and ``fffc compile --budget predictor`` builds the artifact. Its recall of the 10% most
active neurons at that cut (same held-out tokens) is printed.

All sessions run in ONNX Runtime with 2 intra-op threads, timed in alternating blocks
(``fffc.timing``), medians; speed-up = dense ms / fffc ms.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import fffc
import fffc.runtime
from fffc import timing
from fffc.contract.config import CompileOptions
from fffc.pipeline import analyze
from fffc.plan import calibration

SHAPES = {"gelu768": ("gelu", 768, 3072), "swiglu2048": ("swiglu", 2048, 8192)}


def _model(kind: str, d: int, f: int, path: Path) -> Path:
    rng = np.random.default_rng(0)
    n = helper.make_node
    if kind == "gelu":
        w = {"W1": rng.standard_normal((d, f)) / np.sqrt(d), "b1": rng.standard_normal(f) * 0.1,
             "W2": rng.standard_normal((f, d)) / np.sqrt(f), "b2": rng.standard_normal(d) * 0.1}
        nodes = [n("MatMul", ["x", "W1"], ["h"]), n("Add", ["h", "b1"], ["hb"]),
                 n("Gelu", ["hb"], ["a"], domain="com.microsoft"), n("MatMul", ["a", "W2"], ["o"]),
                 n("Add", ["o", "b2"], ["y"])]
    else:
        w = {"Wg": rng.standard_normal((d, f)) / np.sqrt(d),
             "Wu": rng.standard_normal((d, f)) / np.sqrt(d),
             "Wd": rng.standard_normal((f, d)) / np.sqrt(f)}
        nodes = [n("MatMul", ["x", "Wg"], ["g"]), n("Sigmoid", ["g"], ["sg"]),
                 n("Mul", ["g", "sg"], ["sw"]), n("MatMul", ["x", "Wu"], ["u"]),
                 n("Mul", ["sw", "u"], ["z"]), n("MatMul", ["z", "Wd"], ["y"])]
    graph = helper.make_graph(
        nodes, kind, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", d])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def _select_ten_percent(calib_path: Path, kind: str, model_path: Path) -> float:
    """Move the predictor's cut so it selects 10% of the neurons on 1024 held-out tokens
    (rewrites CALIB.predictors.npz); returns the recall of the 10% largest |a| there."""
    import json

    from fffc.verify.reference import activation

    calib = json.loads(calib_path.read_text())
    (site,) = calib["sites"]
    pred_file = calib_path.with_name(calib["predictors"])
    with np.load(pred_file) as z:
        arrays = {k: z[k] for k in z.files}
    x = np.random.default_rng(77).standard_normal((1024, arrays[f"{site}/a"].shape[0]))
    score = (x @ arrays[f"{site}/a"]) @ arrays[f"{site}/b"] + arrays[f"{site}/c"]
    cut = float(np.quantile(score, 0.9))
    arrays[f"{site}/cut"] = np.float32(cut)
    np.savez_compressed(pred_file, **arrays)
    w = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(model_path)).graph.initializer}
    if kind == "gelu":
        a = activation("gelu", x @ w["W1"] + w["b1"])
    else:
        a = activation("silu", x @ w["Wg"]) * (x @ w["Wu"])
    active = np.abs(a) > np.quantile(np.abs(a), 0.9, axis=1, keepdims=True)
    return float((active & (score > cut)).sum() / active.sum())



def bench_shape(name: str, levels: list[float], repeat: int, tmp: Path) -> None:
    kind, d, f = SHAPES[name]
    path = _model(kind, d, f, tmp / f"{name}.onnx")
    rank = f // 32
    calib = calibration.calibrate(analyze(path), synthetic=64, seq=64, sparsities=[*levels, 0.9],
                                  predictor_rank=rank, predictor_sparsity=0.9)
    calibration.write(calib, tmp / f"{name}.calib.json", force=True)
    recall = _select_ten_percent(tmp / f"{name}.calib.json", kind, path)
    sessions = {"dense (ORT)": ort.InferenceSession(str(path), timing.session_options(),
                                                    providers=["CPUExecutionProvider"])}
    for s in levels:
        result = fffc.compile(path, tmp / f"{name}-{s:g}.fffc", CompileOptions(
            calibration=tmp / f"{name}.calib.json", budget=f"uniform={s:g}", force=True))
        assert all(site.decision == "teal" for site in result.sites), result.sites
        sessions[f"teal {s:.0%}"] = fffc.runtime.InferenceSession(result.artifact, timing.session_options())
    for s in levels if kind == "swiglu" else ():  # CATS: gated FFNs only
        result = fffc.compile(path, tmp / f"{name}-cats{s:g}.fffc", CompileOptions(
            calibration=tmp / f"{name}.calib.json", budget=f"cats={s:g}", force=True))
        assert all(site.decision == "cats" for site in result.sites), result.sites
        sessions[f"cats {s:.0%}"] = fffc.runtime.InferenceSession(result.artifact, timing.session_options())
    result = fffc.compile(path, tmp / f"{name}-pred.fffc", CompileOptions(
        calibration=tmp / f"{name}.calib.json", budget="predictor", force=True))
    assert all(site.decision == "predictor" for site in result.sites), result.sites
    sessions[f"predictor r{rank}, 10% selected"] = fffc.runtime.InferenceSession(
        result.artifact, timing.session_options())
    rng = np.random.default_rng(123)
    held = [rng.standard_normal((1, 1, d)).astype(np.float32) for _ in range(32)]
    want = [sessions["dense (ORT)"].run(None, {"x": x})[0] for x in held]
    errs = {}
    for k, sess in sessions.items():
        got = [sess.run(None, {"x": x})[0] for x in held]
        errs[k] = float(np.sqrt(sum(np.sum((g - w) ** 2) for g, w in zip(got, want, strict=True))
                                / sum(np.sum(w**2) for w in want)))
    x = held[0]
    inner = min(10, repeat)
    med = timing.medians_ms({k: (lambda s=sess: s.run(None, {"x": x})) for k, sess in sessions.items()},
                            rounds=-(-repeat // inner), inner=inner, settle=0.05)
    dense = med["dense (ORT)"]
    print(f"\n{name} ({kind}, {d}/{f}), 1 token:")
    print("| model | ms | speed-up vs dense | rel L2 err vs original (32 held-out tokens) |")
    print("|---|---|---|---|")
    for k, ms in med.items():
        print(f"| {k} | {ms:.4f} | {dense / ms:.2f}x | {errs[k]:.4f} |", flush=True)
    print(f"predictor: recall of the 10% most active neurons at the 10% cut: {recall:.3f} "
          "(random selection: 0.100)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default="gelu768,swiglu2048")
    p.add_argument("--levels", default="0.25,0.4,0.5")
    p.add_argument("--repeat", type=int, default=60)
    a = p.parse_args()
    warnings.filterwarnings("ignore")
    levels = [float(v) for v in a.levels.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.shapes.split(","):
            bench_shape(name, levels, a.repeat, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
