"""Kernel-level benchmark: fffc's TVM SparseFFN kernels vs the dense FFN in ONNX Runtime.

    TVM_NUM_THREADS=2 python bench/bench_kernels.py [--tokens 1,8,128] [--sparsity 0.5,0.8,0.9]

Shapes: the acceptance shapes, a ReLU FFN (d 768, d_ff 3072, biases) and a bias-free dReLU
FFN (d 1024, d_ff 4096). Inputs x ~ N(0, 1), weights ~ N(0, 1/fan_in), so every
pre-activation is ~ N(0, 1). Sparsity s is set at the quantile Φ⁻¹(1 − s):
  * ReLU: b1 = Φ⁻¹(1 − s) (negative), so each neuron is active with probability 1 − s.
  * dReLU (no bias input): channel 0 of x is the constant 1 and row 0 of W1 (the gate) is
    Φ⁻¹(1 − s), a bias carried by a constant input column; column 0 of WU is +3 so the up
    projection is positive on ~99.9% of neurons and the product's sparsity is ≈ s.
The measured fraction of zero activations is printed.

TVM kernels are timed in C++ (time_evaluator, TVM's own thread pool, TVM_NUM_THREADS);
ORT runs the original dense graph (MatMul→Add→Relu→MatMul→Add, gated MatMul, Relu,
MatMul, Relu, Mul, MatMul) with intra_op_num_threads = 2. Rounds are interleaved and
medians compared. ``ort+`` adds ORT's per-call overhead (a one-Identity model) to the
kernel time: an estimate of the kernel inside ORT, the acceptance setting.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from statistics import NormalDist

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from fffc.codegen.build import compile_for_test
from fffc.contract.kernels import SparseSpec
from fffc.verify.reference import sparse_ffn

THREADS = 2
SETTLE = 0.2  # s: let one pool's spinning workers sleep before the other runs (2 cores)


def _model(nodes, inits: dict, d_in: int, d_out: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "ffn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", d_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", d_out])],
        [numpy_helper.from_array(np.asarray(a, np.float32), n) for n, a in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def relu_case(d: int, f: int, s: float, rng) -> tuple[SparseSpec, dict, onnx.ModelProto]:
    w = {"W1": rng.standard_normal((d, f)) / np.sqrt(d),
         "B1": np.full(f, NormalDist().inv_cdf(1 - s)),  # P(h > 0) = 1 − s
         "W2": rng.standard_normal((f, d)) / np.sqrt(f), "B2": rng.standard_normal(d) * 0.1}
    w = {k: np.asarray(v, np.float32) for k, v in w.items()}
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]),
             helper.make_node("Add", ["h", "B1"], ["hb"]), helper.make_node("Relu", ["hb"], ["a"]),
             helper.make_node("MatMul", ["a", "W2"], ["o"]),
             helper.make_node("Add", ["o", "B2"], ["y"])]
    spec = SparseSpec("relu", "none", "exact", d, f, d, True, True, False)
    return spec, w, _model(nodes, w, d, d)


def drelu_case(d: int, f: int, s: float, rng) -> tuple[SparseSpec, dict, onnx.ModelProto]:
    w1 = rng.standard_normal((d, f)) / np.sqrt(d)
    w1[0] = NormalDist().inv_cdf(1 - s)  # x[:, 0] == 1: a gate bias via a constant column
    wu = rng.standard_normal((f, d)) / np.sqrt(d)
    wu[:, 0] = 3.0
    w = {"W1": w1, "W2": rng.standard_normal((f, d)) / np.sqrt(f), "WU": wu}
    w = {k: np.asarray(v, np.float32) for k, v in w.items()}
    inits = {"W1": w["W1"], "WUT": np.ascontiguousarray(w["WU"].T), "W2": w["W2"]}
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["g"]), helper.make_node("Relu", ["g"], ["ga"]),
             helper.make_node("MatMul", ["x", "WUT"], ["u"]), helper.make_node("Relu", ["u"], ["ua"]),
             helper.make_node("Mul", ["ga", "ua"], ["z"]), helper.make_node("MatMul", ["z", "W2"], ["y"])]
    spec = SparseSpec("relu", "relu", "exact", d, f, d, False, False, True)
    return spec, w, _model(nodes, inits, d, d)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _ort_times(sess: ort.InferenceSession, x: np.ndarray, number: int) -> float:
    feeds = {"x": x}
    sess.run(None, feeds)
    t0 = time.perf_counter()
    for _ in range(number):
        sess.run(None, feeds)
    return (time.perf_counter() - t0) / number


def _overhead(d: int) -> float:
    node = helper.make_node("Identity", ["x"], ["y"])
    sess = _session(_model([node], {}, d, d))
    x = np.zeros((1, d), np.float32)
    return statistics.median(_ort_times(sess, x, 200) for _ in range(5))


def bench(name: str, make, d: int, f: int, tokens: list[int], sparsities: list[float],
          rounds: int, rng) -> None:
    overhead = _overhead(d)
    print(f"\n{name} d={d} d_ff={f}  (ORT per-call overhead ≈ {overhead * 1e6:.1f} µs)")
    print(f"{'T':>4} {'target':>6} {'zeros':>6} {'ORT µs':>9} {'fffc µs':>9} {'ratio':>6} {'ort+':>6}")
    kernels = None
    for s in sparsities:
        spec, w, model = make(d, f, s, rng)
        kernels = kernels or compile_for_test(spec)
        sess = _session(model)
        args = [w[n] for n in spec.arg_names()[1:-1]]
        for t in tokens:
            x = rng.standard_normal((t, d)).astype(np.float32)
            if spec.gated:
                x[:, 0] = 1.0
            ref = sparse_ffn(x, w["W1"], w.get("B1"), w["W2"], w.get("B2"), w.get("WU"),
                             up_activation=spec.up_activation)
            y = kernels(x, *args)
            err = float(np.max(np.abs(y - ref)) / (np.max(np.abs(ref)) + 1e-12))
            assert err < 1e-4, f"kernel mismatch: rel err {err:.2e}"
            h = x.astype(np.float64) @ w["W1"] + w.get("B1", 0)
            zeros = float(np.mean(h <= 0))
            number = max(3, int(2000 / t))
            ort_t, tvm_t = [], []
            for _ in range(rounds):  # interleaved: both see the same machine state
                ort_t.append(_ort_times(sess, x, number))
                time.sleep(SETTLE)
                tvm_t.extend(kernels.time(x, *args, number=number, repeat=1))
                time.sleep(SETTLE)
            o, k = statistics.median(ort_t), statistics.median(tvm_t)
            print(f"{t:>4} {s:>6.0%} {zeros:>6.1%} {o * 1e6:>9.1f} {k * 1e6:>9.1f} "
                  f"{o / k:>5.2f}x {o / (k + overhead):>5.2f}x", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", default="1,2,8,32,128")
    ap.add_argument("--sparsity", default="0.5,0.8,0.9")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--only", choices=["relu", "drelu"], default=None)
    a = ap.parse_args()
    if "TVM_NUM_THREADS" not in os.environ:
        raise SystemExit("set TVM_NUM_THREADS=2 (TVM's pool defaults to 1 thread on this VM)")
    tokens = [int(t) for t in a.tokens.split(",")]
    sparsities = [float(s) for s in a.sparsity.split(",")]
    rng = np.random.default_rng(0)
    if a.only in (None, "relu"):
        bench("ReLU FFN", relu_case, 768, 3072, tokens, sparsities, a.rounds, rng)
    if a.only in (None, "drelu"):
        bench("dReLU FFN", drelu_case, 1024, 4096, tokens, sparsities, a.rounds, rng)


if __name__ == "__main__":
    main()
