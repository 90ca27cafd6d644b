"""Int4 FFNs at 1 token: ONNX Runtime's MatMulNBits dense FFN vs fffc's int4 exact kernel.

    TVM_NUM_THREADS=2 python bench/bench_quant_ffn.py [--rounds 7] [--sparsity 0.9]
        [--only drelu-2048,drelu-4096,relu-2048]

Sides, 1 token, 2 threads each, timed side by side (``fffc.timing.blocks``: interleaved
rounds, a pause before each block):
  * ``ort fp32``: the float FFN in ONNX Runtime (MatMul, Add, Relu, Mul);
  * ``ort int4 L4`` / ``ort int4 L0``: the same FFN with every projection a
    ``com.microsoft::MatMulNBits`` node (bits 4, block 32, symmetric, quantized by ONNX
    Runtime's ``matmul_nbits_quantizer``), ``accuracy_level`` 4 (int8 activations, integer
    dot products: its fastest CPU path) and 0 (float activations);
  * ``fffc int4 f32`` / ``fffc int4 i8``: ``kernels/exact_q4.py`` on the same codes and
    scales (W2 re-laid out at setup), its gate and up dots in float32 (exact w.r.t. the
    dequantized weights) and on int8-quantized x (AVX-512 VNNI, where the CPU has it),
    called through TVM's runtime directly (one Python → TVM FFI call per token, no
    ONNX Runtime session around it; in an artifact the shim calls it). ``+ort``
    adds ONNX Runtime's own per-call overhead (a one-Identity model, timed alongside): the
    kernel's estimated time as a custom op.

Shapes: dReLU (gated, relu(gate) ⊙ relu(up)) 2048/8192 and 4096/11008, and a ReLU FFN
2048/8192 with biases. x ~ N(0, 1) with x[0] = 1, weights ~ N(0, 1/fan_in). Sparsity s: the
gate's bias B1 = Φ⁻¹(1 − s) (an Add in ONNX Runtime's graphs, B1 in the kernel), so a
neuron's gate is positive with probability 1 − s; dReLU's up row 0 is +3 (x[0] = 1), so the
up projection is positive on ~99.9% of neurons and the activations' sparsity is ≈ s. Both
fractions are measured and printed. Deviations: max |y − ref| / max |ref| against the
float64 FFN on the dequantized weights.
"""

from __future__ import annotations

import argparse
import os
import statistics
from statistics import NormalDist

import numpy as np
from onnx import TensorProto, helper

from fffc.codegen import q4_layout as ql
from fffc.codegen.kernels.exact_q4 import Q4Dot, q4_inputs
from fffc.codegen.q4_build import Q4Kernel, has_int8_dots
from fffc.contract.kernels import SparseSpec
from fffc.contract.kinds import SparseMode
from fffc.timing import blocks
from fffc.verify import matmul_nbits as mn
from fffc.verify.reference import sparse_ffn

THREADS = 2
BLOCK = 32
SHORT = {Q4Dot.FLOAT32: "f32", Q4Dot.INT8: "i8"}
CASES = {"drelu-2048": (2048, 8192, True), "drelu-4096": (4096, 11008, True),
         "relu-2048": (2048, 8192, False)}


def _weights(d: int, f: int, gated: bool, s: float, rng) -> dict[str, np.ndarray]:
    w = {"W1": rng.standard_normal((d, f)) / np.sqrt(d),
         "B1": np.full(f, NormalDist().inv_cdf(1 - s)),
         "W2": rng.standard_normal((f, d)) / np.sqrt(f)}
    if gated:
        w["WU"] = rng.standard_normal((d, f)) / np.sqrt(d)
        w["WU"][0] = 3.0  # x[0] = 1: the up projection positive on nearly every neuron
    else:
        w["B2"] = rng.standard_normal(d) * 0.1
    return {k: np.asarray(v, np.float32) for k, v in w.items()}


def _identity_session(d: int):
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "id",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", d])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return mn.session(m, THREADS)


def _stats(ts: list[float]) -> str:
    ms = sorted(t * 1e3 for t in ts)
    return f"{ms[0]:8.3f} {statistics.median(ms):8.3f} {ms[-1]:8.3f}"


def bench(name: str, d: int, f: int, gated: bool, s: float, rounds: int, inner: int,
          rng) -> None:
    w = _weights(d, f, gated, s, rng)
    up = "relu" if gated else "none"
    spec = SparseSpec("relu", up, SparseMode.EXACT, d, f, d, True, not gated, gated)
    q = {k: mn.quantize(w[k], BLOCK) for k in ("W1", "W2", "WU") if k in w}
    b1, b2 = w["B1"], w.get("B2")
    sessions = {
        "ort fp32": mn.session(mn.ffn_model(w["W1"], w["W2"], w.get("WU"), b1, b2, up), THREADS),
        **{f"ort int4 L{lvl}": mn.session(mn.ffn_model(q["W1"], q["W2"], q.get("WU"), b1, b2, up,
                                                       accuracy_level=lvl), THREADS)
           for lvl in (4, 0)}}
    dots = [Q4Dot.FLOAT32, *([Q4Dot.INT8] if has_int8_dots() else [])]
    kernels = {f"fffc int4 {SHORT[dot]}": Q4Kernel(spec, ql.Q4Format(BLOCK), dot=dot)
               for dot in dots}
    inputs = q4_inputs(spec, q["W1"], ql.columns(q["W2"]), q.get("WU"), b1, b2)

    x = rng.standard_normal((1, d)).astype(np.float32)
    x[:, 0] = 1.0
    deq = {k: ql.dequantize(m) for k, m in q.items()}
    ref = sparse_ffn(x, deq["W1"], b1, deq["W2"], b2, deq["WU"].T if gated else None,
                     up_activation=up)
    xd = x.astype(np.float64)
    h = xd @ deq["W1"] + b1
    a = np.maximum(h, 0) * (np.maximum(xd @ deq["WU"], 0) if gated else 1)
    args = {k: kern.args(x, inputs) for k, kern in kernels.items()}
    outs = {k: sess.run(None, {"x": x})[0] for k, sess in sessions.items()}
    for k, kern in kernels.items():
        kern.run(args[k])
        outs[k] = args[k][-1].numpy()
    scale = np.abs(ref).max()
    feeds = {"x": x}
    ident = _identity_session(d)
    calls = {**{k: (lambda sess=sess: sess.run(None, feeds)) for k, sess in sessions.items()},
             **{k: (lambda kern=kern, a=args[k]: kern.run(a)) for k, kern in kernels.items()},
             "ort overhead": lambda: ident.run(None, feeds)}
    times = blocks(calls, rounds, inner)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{name}: d {d}, d_ff {f}, {'dReLU' if gated else 'ReLU'}, gates <= 0: "
          f"{np.mean(h <= 0):.1%}, activations == 0: {np.mean(a == 0):.1%}  "
          f"({rounds}x{inner} calls per side)")
    print(f"{'side':<14} {'min ms':>8} {'med ms':>8} {'max ms':>8} {'rel dev':>9}")
    for k in calls:
        dev = (f"{np.abs(outs[k] - ref).max() / scale:9.2e}" if k in outs else "")
        print(f"{k:<14} {_stats(times[k])} {dev}")
    over = med["ort overhead"]
    for k in kernels:
        for base in ("ort int4 L4", "ort int4 L0", "ort fp32"):
            print(f"  {base} / {k}: {med[base] / med[k]:5.2f}x   "
                  f"(+ort overhead: {med[base] / (med[k] + over):5.2f}x)")
    print(f"  ort fp32 / ort int4 L4: {med['ort fp32'] / med['ort int4 L4']:5.2f}x", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--inner", type=int, default=20)
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--only", default=",".join(CASES))
    a = ap.parse_args()
    if os.environ.get("TVM_NUM_THREADS") != str(THREADS):
        raise SystemExit(f"set TVM_NUM_THREADS={THREADS} (TVM's pool defaults to 1 thread here)")
    rng = np.random.default_rng(0)
    for name in a.only.split(","):
        bench(name, *CASES[name], a.sparsity, a.rounds, a.inner, rng)


if __name__ == "__main__":
    main()
