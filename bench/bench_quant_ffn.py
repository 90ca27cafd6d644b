"""Int4 FFNs at 1 token: ONNX Runtime's MatMulNBits dense FFN vs fffc's int4 SparseFFN kernels.

    TVM_NUM_THREADS=2 python bench/bench_quant_ffn.py [--rounds 7] [--sparsity 0.9]
        [--teal-sparsity 0.5] [--predictor-sparsity 0.9] [--rank 128]
        [--only drelu-2048,drelu-4096,relu-2048,teal-swiglu-2048,predictor-drelu-2048]

Sides, 1 token, 2 threads each, timed side by side (``fffc.timing.blocks``: interleaved
rounds, a pause before each block):
  * ``ort fp32``: the dense float FFN in ONNX Runtime (MatMul, Add, Relu or Sigmoid·x, Mul);
  * ``ort int4 L4`` / ``ort int4 L0``: the same dense FFN with every projection a
    ``com.microsoft::MatMulNBits`` node (bits 4, block 32, symmetric, quantized by ONNX
    Runtime's ``matmul_nbits_quantizer``), ``accuracy_level`` 4 (int8 activations, integer
    dot products: its fastest CPU path) and 0 (float activations);
  * ``fffc int4 f32`` / ``fffc int4 i8``: the case's int4 kernel (``kernels/exact_q4.py``,
    ``teal_q4.py``, ``predictor_q4.py``) on the same codes and scales (re-laid out at setup
    where the kernel reads a projection per row), in float32 (exact w.r.t. the dequantized
    weights) and with int8 dots (AVX-512 VNNI, where the CPU has it): exact and predictor
    quantize x per block for the gate and up rows; TEAL quantizes x' and a' per block for
    all three projections, as ONNX Runtime's accuracy_level 4 does), called through TVM's runtime
    directly (one Python → TVM FFI call per token, no ONNX Runtime session around it; in
    an artifact the shim calls it). ``+ort`` adds ONNX Runtime's own per-call
    overhead (a one-Identity model, timed alongside): the kernel's estimated time as a
    custom op.

Cases. x ~ N(0, 1), weights ~ N(0, 1/fan_in); fractions measured and printed.
  * exact (``drelu-*``: dReLU, relu(gate) ⊙ relu(up), 2048/8192 and 4096/11008;
    ``relu-2048``: a ReLU FFN 2048/8192 with biases), sparsity s (``--sparsity``): the
    gate's bias B1 = Φ⁻¹(1 − s) (an Add in ONNX Runtime's graphs, B1 in the kernel), so a
    neuron's gate is positive with probability 1 − s; x[0] = 1 and dReLU's up row 0 is +3,
    so the up projection is positive on ~99.9% of neurons and the activations' sparsity is
    ≈ s;
  * ``teal-swiglu-2048``: TEAL on SwiGLU (silu(gate) ⊙ up) 2048/8192, no biases; TH =
    [t_in, t_hidden] the s-quantiles (``--teal-sparsity``) of |x| and of the hidden
    activations |a| of the thresholded x (float64 on the dequantized weights), so a fraction
    ≈ s of the input channels and of the neurons is skipped;
  * ``predictor-drelu-2048``: the predictor on dReLU 2048/8192 (rank ``--rank``), a
    fraction s (``--predictor-sparsity``) of the neurons not selected: PA ~ N(0, 1/d),
    PB ~ N(0, 1/rank), W1 = 0.9·PA·PB + 0.44·N(0, 1/d) (the gate mostly what the predictor
    predicts), B1 = PC = Φ⁻¹(1 − s), x[0] = 1 and the up row 0 +3 as above.

Deviations: max |y − ref| / max |ref| against the float64 function of the case's mode on
the dequantized weights.
"""

from __future__ import annotations

import argparse
import os
import statistics
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from fffc.codegen import q4_layout as ql
from fffc.codegen.kernels.q4_pieces import Q4Dot, q4_inputs
from fffc.codegen.q4_build import Q4Kernel, has_int8_dots
from fffc.contract.kernels import SparseSpec
from fffc.contract.kinds import SparseMode
from fffc.timing import blocks, identity_session, spread_ms
from fffc.verify import matmul_nbits as mn
from fffc.verify.reference import activation, predictor_ffn, sparse_ffn, teal_ffn

THREADS = 2
BLOCK = 32
SHORT = {Q4Dot.FLOAT32: "f32", Q4Dot.INT8: "i8"}


@dataclass(frozen=True)
class BenchCase:
    mode: SparseMode
    d: int
    f: int
    act: str  # the gate's activation
    up: str | None  # the up projection's activation (None: a dense FFN)


CASES = {"drelu-2048": BenchCase(SparseMode.EXACT, 2048, 8192, "relu", "relu"),
         "drelu-4096": BenchCase(SparseMode.EXACT, 4096, 11008, "relu", "relu"),
         "relu-2048": BenchCase(SparseMode.EXACT, 2048, 8192, "relu", None),
         "teal-swiglu-2048": BenchCase(SparseMode.TEAL, 2048, 8192, "silu", "none"),
         "predictor-drelu-2048": BenchCase(SparseMode.PREDICTOR, 2048, 8192, "relu", "relu")}


@dataclass
class Setup:
    """One case's FFN: the float weights, the int4 projections, the kernel's inputs, x and
    the float64 reference, and what the header line reports."""

    spec: SparseSpec
    w: dict[str, np.ndarray]  # float32 W1, W2, WU, B1, B2 as the dense FFN takes them
    q: dict[str, ql.Q4Matrix]
    inputs: dict[str, np.ndarray]
    x: np.ndarray
    ref: np.ndarray
    fractions: str
    dots: list[Q4Dot] = field(default_factory=list)


def _quantize(w: dict[str, np.ndarray]) -> dict[str, ql.Q4Matrix]:
    return {k: mn.quantize(w[k], BLOCK) for k in ("W1", "W2", "WU") if k in w}


def _x(d: int, rng) -> np.ndarray:
    x = rng.standard_normal((1, d)).astype(np.float32)
    x[:, 0] = 1.0
    return x


def _dots() -> list[Q4Dot]:
    return [Q4Dot.FLOAT32, *([Q4Dot.INT8] if has_int8_dots() else [])]


def _exact(c: BenchCase, s: float, rng) -> Setup:
    d, f, gated = c.d, c.f, c.up is not None
    w = {"W1": rng.standard_normal((d, f)) / np.sqrt(d),
         "B1": np.full(f, NormalDist().inv_cdf(1 - s)),
         "W2": rng.standard_normal((f, d)) / np.sqrt(f)}
    if gated:
        w["WU"] = rng.standard_normal((d, f)) / np.sqrt(d)
        w["WU"][0] = 3.0  # x[0] = 1: the up projection positive on nearly every neuron
    else:
        w["B2"] = rng.standard_normal(d) * 0.1
    w = {k: np.asarray(v, np.float32) for k, v in w.items()}
    up = c.up or "none"
    spec = SparseSpec("relu", up, SparseMode.EXACT, d, f, d, True, not gated, gated)
    q = _quantize(w)
    b1, b2 = w["B1"], w.get("B2")
    inputs = q4_inputs(spec, q["W1"], ql.columns(q["W2"]), q.get("WU"), b1, b2)
    x = _x(d, rng)
    deq = {k: ql.dequantize(m) for k, m in q.items()}
    ref = sparse_ffn(x, deq["W1"], b1, deq["W2"], b2, deq["WU"].T if gated else None,
                     up_activation=up)
    xd = x.astype(np.float64)
    h = xd @ deq["W1"] + b1
    a = np.maximum(h, 0) * (np.maximum(xd @ deq["WU"], 0) if gated else 1)
    frac = f"gates <= 0: {np.mean(h <= 0):.1%}, activations == 0: {np.mean(a == 0):.1%}"
    return Setup(spec, w, q, inputs, x, ref, frac, _dots())


def _teal(c: BenchCase, s: float, rng) -> Setup:
    d, f = c.d, c.f
    w = {"W1": rng.standard_normal((d, f)) / np.sqrt(d),
         "W2": rng.standard_normal((f, d)) / np.sqrt(f),
         "WU": rng.standard_normal((d, f)) / np.sqrt(d)}
    w = {k: np.asarray(v, np.float32) for k, v in w.items()}
    spec = SparseSpec(c.act, c.up, SparseMode.TEAL, d, f, d, False, False, True)
    q = _quantize(w)
    x = rng.standard_normal((1, d)).astype(np.float32)
    deq = {k: ql.dequantize(m) for k, m in q.items()}
    t_in = np.float32(np.quantile(np.abs(x), s))
    xd = np.where(np.abs(x) <= t_in, 0.0, x.astype(np.float64))
    a = activation(c.act, xd @ deq["W1"]) * activation(c.up, xd @ deq["WU"])
    th = np.array([t_in, np.quantile(np.abs(a), s)], np.float32)
    inputs = q4_inputs(spec, ql.columns(q["W1"]), ql.columns(q["W2"]), ql.columns(q["WU"]),
                       TH=th)
    ref = teal_ffn(x, deq["W1"], None, deq["W2"], None, deq["WU"], thresholds=th,
                   activation_name=c.act, up_activation=c.up)
    frac = (f"x entries skipped: {np.mean(np.abs(x) <= th[0]):.1%}, activations skipped: "
            f"{np.mean(np.abs(a) <= th[1]):.1%}")
    return Setup(spec, w, q, inputs, x, ref, frac, _dots())


def _predictor(c: BenchCase, s: float, rank: int, rng) -> Setup:
    d, f = c.d, c.f
    pa = rng.standard_normal((d, rank)) / np.sqrt(d)
    pb = rng.standard_normal((rank, f)) / np.sqrt(rank)
    cut = NormalDist().inv_cdf(1 - s)
    w = {"W1": 0.9 * (pa @ pb) + 0.44 * rng.standard_normal((d, f)) / np.sqrt(d),
         "B1": np.full(f, cut), "W2": rng.standard_normal((f, d)) / np.sqrt(f),
         "WU": rng.standard_normal((d, f)) / np.sqrt(d)}
    w["WU"][0] = 3.0  # x[0] = 1: the up projection positive on nearly every neuron
    w = {k: np.asarray(v, np.float32) for k, v in w.items()}
    pred = {"PA": pa.astype(np.float32), "PB": pb.astype(np.float32),
            "PC": np.full(f, cut, np.float32)}
    spec = SparseSpec(c.act, c.up, SparseMode.PREDICTOR, d, f, d, True, False, True, rank=rank)
    q = _quantize(w)
    inputs = q4_inputs(spec, q["W1"], ql.columns(q["W2"]), q["WU"], w["B1"], **pred)
    x = _x(d, rng)
    deq = {k: ql.dequantize(m) for k, m in q.items()}
    ref = predictor_ffn(x, deq["W1"].T, w["B1"], deq["W2"], None, deq["WU"].T, pred["PA"],
                        pred["PB"], pred["PC"], activation_name=c.act, up_activation=c.up)
    xd = x.astype(np.float64)
    sel = (xd @ pred["PA"]) @ pred["PB"] + pred["PC"] > 0
    h = xd @ deq["W1"] + w["B1"]
    a = np.maximum(h, 0) * np.maximum(xd @ deq["WU"], 0)
    frac = (f"rank {rank}, neurons not selected: {np.mean(~sel):.1%}, activations == 0: "
            f"{np.mean(a == 0):.1%}, selected and active: {np.mean(sel & (a != 0)):.1%}")
    return Setup(spec, w, q, inputs, x, ref, frac, _dots())



def bench(name: str, c: BenchCase, setup: Setup, rounds: int, inner: int) -> None:
    st, w, q = setup, setup.w, setup.q
    d, gated = c.d, c.up is not None
    up = c.up or "none"
    b1, b2 = w.get("B1"), w.get("B2")
    sessions = {
        "ort fp32": mn.session(mn.ffn_model(w["W1"], w["W2"], w.get("WU"), b1, b2, up,
                                            activation=c.act), THREADS),
        **{f"ort int4 L{lvl}": mn.session(mn.ffn_model(q["W1"], q["W2"], q.get("WU"), b1, b2, up,
                                                       accuracy_level=lvl, activation=c.act),
                                          THREADS)
           for lvl in (4, 0)}}
    kernels = {f"fffc int4 {SHORT[dot]}": Q4Kernel(st.spec, ql.Q4Format(BLOCK), dot=dot)
               for dot in st.dots}
    x, ref = st.x, st.ref
    args = {k: kern.args(x, st.inputs) for k, kern in kernels.items()}
    outs = {k: sess.run(None, {"x": x})[0] for k, sess in sessions.items()}
    for k, kern in kernels.items():
        kern.run(args[k])
        outs[k] = args[k][-1].numpy()
    scale = np.abs(ref).max()
    feeds = {"x": x}
    ident = identity_session(d, THREADS)
    calls = {**{k: (lambda sess=sess: sess.run(None, feeds)) for k, sess in sessions.items()},
             **{k: (lambda kern=kern, a=args[k]: kern.run(a)) for k, kern in kernels.items()},
             "ort overhead": lambda: ident.run(None, feeds)}
    times = blocks(calls, rounds, inner)
    med = {k: statistics.median(v) for k, v in times.items()}
    kind = ("SwiGLU" if c.act == "silu" else "dReLU") if gated else c.act.upper()
    print(f"\n{name}: {c.mode}, d {d}, d_ff {c.f}, {kind}, {st.fractions}  "
          f"({rounds}x{inner} calls per side)")
    print(f"{'side':<14} {'min ms':>8} {'med ms':>8} {'max ms':>8} {'rel dev':>9}")
    for k in calls:
        dev = (f"{np.abs(outs[k] - ref).max() / scale:9.2e}" if k in outs else "")
        print(f"{k:<14} {spread_ms(times[k])} {dev}")
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
    ap.add_argument("--sparsity", type=float, default=0.9, help="exact cases")
    ap.add_argument("--teal-sparsity", type=float, default=0.5)
    ap.add_argument("--predictor-sparsity", type=float, default=0.9)
    ap.add_argument("--rank", type=int, default=128, help="the predictor's rank")
    ap.add_argument("--only", default=",".join(CASES))
    a = ap.parse_args()
    if os.environ.get("TVM_NUM_THREADS") != str(THREADS):
        raise SystemExit(f"set TVM_NUM_THREADS={THREADS} (TVM's pool defaults to 1 thread here)")
    rng = np.random.default_rng(0)
    for name in a.only.split(","):
        c = CASES[name]
        if c.mode is SparseMode.TEAL:
            setup = _teal(c, a.teal_sparsity, rng)
        elif c.mode is SparseMode.PREDICTOR:
            setup = _predictor(c, a.predictor_sparsity, a.rank, rng)
        else:
            setup = _exact(c, a.sparsity, rng)
        bench(name, c, setup, a.rounds, a.inner)


if __name__ == "__main__":
    main()
