"""TEAL threshold sparsity at decode (1 token): fffc's teal kernel vs the dense FFN in ORT.

    python bench/bench_teal.py [--shapes gelu768,swiglu2048] [--levels 0.25,0.4,0.5] [--repeat 60]

Issue 4's benchmark shapes, one FFN per ONNX model over x [batch, seq, d]: BERT-base's GELU
FFN (768 → 3072 → 768, biases, com.microsoft Gelu) and a LLaMA-style SwiGLU FFN (2048 →
8192 → 2048, no biases, ``Mul(g, Sigmoid(g))``), random weights ~ N(0, 1/fan_in). Each
model goes through the user's path: ``fffc calibrate`` (16 synthetic feeds of 64 tokens,
x ~ N(0, 1)), then ``fffc compile --calibration --budget uniform=S`` for each level S: x and
the down projection's input both at the calibrated S-quantile of their magnitudes, so S of
all FFN weight bytes are skipped. The compiled model computes the thresholded FFN (checked
by ``fffc compile`` against it); the "rel err" column is its distance from the original on
held-out inputs (random weights: a pessimistic case, trained FFNs are more concentrated).

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
from fffc import calibration, timing
from fffc.config import CompileOptions

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


def _options() -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    return so


def bench_shape(name: str, levels: list[float], repeat: int, tmp: Path) -> None:
    kind, d, f = SHAPES[name]
    path = _model(kind, d, f, tmp / f"{name}.onnx")
    calib = calibration.calibrate(path, synthetic=16, seq=64, sparsities=levels)
    calibration.write(calib, tmp / f"{name}.calib.json", force=True)
    sessions = {"dense (ORT)": ort.InferenceSession(str(path), _options(),
                                                    providers=["CPUExecutionProvider"])}
    for s in levels:
        result = fffc.compile(path, tmp / f"{name}-{s:g}.fffc", CompileOptions(
            calibration=tmp / f"{name}.calib.json", budget=f"uniform={s:g}", force=True))
        assert all(site.decision == "teal" for site in result.sites), result.sites
        sessions[f"teal {s:.0%}"] = fffc.runtime.InferenceSession(result.artifact, _options())
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
