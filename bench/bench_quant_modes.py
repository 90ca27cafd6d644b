"""Every SparseFFN mode on int4 and int8 weights at 1 token: fffc's kernels vs ONNX Runtime's
MatMulNBits dense FFN of the same bits and block (``accuracy_level`` 4), side by side.

    TVM_NUM_THREADS=2 python bench/bench_quant_modes.py [--shapes drelu-2048,drelu-4096,swiglu-2048]
        [--modes exact,teal,cats,predictor] [--bits 4,8] [--dots f32,i8] [--rounds 15]
        [--inner 20] [--sparsity 0.9] [--teal-sparsity 0.5] [--cats-sparsity 0.5]
        [--predictor-sparsity 0.9] [--rank 128]

Per shape, one ``fffc.timing.blocks`` run (interleaved rounds, a pause and an untimed call
before each block, 2 threads each) times every side together:
  * ``ort fp32``: the dense float FFN in ONNX Runtime (MatMul, [Add,] Relu or x·Sigmoid(x),
    Mul);
  * ``ort int4 L4`` / ``ort int8 L4``: the same dense FFN with every projection a
    ``com.microsoft::MatMulNBits`` node (bits 4 / 8, block 32, symmetric, quantized by ONNX
    Runtime's ``matmul_nbits_quantizer``) at ``accuracy_level`` 4 (x rounded to int8 per
    block, integer dots: its fastest CPU path);
  * ``fffc intB MODE DOT``: the mode's kernel on the same codes and scales (re-laid out at
    setup where it reads a projection per row: ``kernels/exact_q4.py``, ``teal_q4.py``,
    ``cats_q4.py``, ``predictor_q4.py``, ``exact_q8.py``), ``f32``: float32 dots (exact
    with respect to the dequantized weights, what ``fffc compile`` builds for an
    ``accuracy_level`` 0 site), ``i8``: x (TEAL: x' and a') rounded to int8 per block and
    integer dots (AVX-512 VNNI), as ONNX Runtime's level 4; called through TVM's runtime
    (one FFI call per token, no ONNX Runtime session around it: add the printed ``ort
    overhead``, a one-Identity session, for the kernel inside an artifact).
``--split`` adds ``fffc intB teal-gate DOT``: TEAL with t_hidden above every activation, so
its time is the compaction and gate/up pass alone (the down projection takes the rest).
Modes without a kernel for the bits (today: int8 codes take mode exact only) and exact on
an activation without exact zeros (SwiGLU) are listed as such.

Weights ~ N(0, 1/fan_in), x ~ N(0, 1), float32, one set per shape (the predictor's gate its
own, below); fractions measured on the dequantized weights and printed.
  * exact (dReLU only), sparsity s: B1 = Φ⁻¹(1 − s), x[0] = 1 and the up row 0 is +3, so
    a fraction ≈ s of the gates is closed and nearly every up is positive;
  * teal (``--teal-sparsity`` s): TH = the s-quantiles of |x| and of |a| (a: the FFN's
    activations on the thresholded x, float64), no bias;
  * cats (``--cats-sparsity`` s): TH = [off, the s-quantile of |act(x·W1)|], no bias;
  * predictor (``--predictor-sparsity`` s, rank r): PA ~ N(0, 1/d), PB ~ N(0, 1/r), W1 =
    0.9·PA·PB + 0.44·N(0, 1/d), PC = Φ⁻¹(1 − s) (and B1 = PC for dReLU), so a fraction ≈ s
    of the neurons is not selected.
Deviation: max |y − ref| / max |ref|, ref the mode's float64 function on the dequantized
weights. The table at the end: medians, and the goals of the issue (TEAL at 50% ≥ 1.5x and
the predictor at 90% ≥ 4x over ``ort intB L4``); "MiB read": the weight bytes (codes, block
scales, the predictor's float32 PA, PB, PC) the kernel's layout makes it read for this x —
a count from the masks, not a measurement — and "bound" the dense FFN's bytes over that:
the ratio a purely bandwidth-bound pair would show. A block's scales are read whenever one
of its rows is (TEAL's input channels, every listed neuron of the down projection).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import onnxruntime as ort

from fffc.codegen import q4_layout as ql
from fffc.codegen.kernels.exact_q8 import q8_inputs
from fffc.codegen.kernels.q4_pieces import Q4Dot, q4_inputs
from fffc.codegen.q4_build import Q4Kernel, has_int8_dots
from fffc.codegen.q8_build import Q8Kernel
from fffc.contract import int8 as q8
from fffc.contract.kernels import SparseSpec
from fffc.contract.kinds import SparseMode
from fffc.timing import blocks, identity_session, spread_ms
from fffc.verify import matmul_nbits as mn
from fffc.verify.reference import activation, cats_ffn, predictor_ffn, sparse_ffn, teal_ffn

THREADS = 2
BLOCK = 32
DOTS = {"f32": Q4Dot.FLOAT32, "i8": Q4Dot.INT8}
GOALS = {SparseMode.TEAL: (0.5, 1.5), SparseMode.PREDICTOR: (0.9, 4.0)}  # sparsity, ratio


@dataclass(frozen=True)
class Shape:
    d: int
    f: int
    act: str  # the gate's activation
    up: str  # the up projection's activation

    @property
    def kind(self) -> str:
        return "SwiGLU" if self.act == "silu" else "dReLU"


SHAPES = {"drelu-2048": Shape(2048, 8192, "relu", "relu"),
          "drelu-4096": Shape(4096, 11008, "relu", "relu"),
          "swiglu-2048": Shape(2048, 8192, "silu", "none")}


@dataclass
class Side:
    """One fffc kernel of a shape: its call, output, reference and what it skips."""

    name: str
    mode: SparseMode
    bits: int
    run: Callable[[], None]
    out: Callable[[], np.ndarray]
    ref: np.ndarray
    read: int  # bytes of weights the kernel reads (the layout's model, not measured)
    fractions: str


def _quantize(bits: int, w: np.ndarray):
    return mn.quantize(w, BLOCK) if bits == 4 else mn.quantize8(w, BLOCK)


def _deq(m) -> np.ndarray:
    return (ql.dequantize(m) if isinstance(m, ql.Q4Matrix) else q8.dequantize(m)).astype(np.float64)


def _columns(m):
    return ql.columns(m) if isinstance(m, ql.Q4Matrix) else q8.columns(m)


class Weights:
    """A shape's float weights, their int4/int8 codes (per bits, lazily) and x."""

    def __init__(self, s: Shape, rng, rank: int):
        d, f = s.d, s.f
        self.s, self.rank = s, rank
        g = lambda *shape: rng.standard_normal(shape, dtype=np.float32)  # noqa: E731
        self.w = {"W1": g(d, f) / np.float32(np.sqrt(d)), "WU": g(d, f) / np.float32(np.sqrt(d)),
                  "W2": g(f, d) / np.float32(np.sqrt(f))}
        if s.up == "relu":
            self.w["WU"][0] = 3.0  # x[0] = 1: the up projection positive on nearly every neuron
        self.pa = g(d, rank) / np.float32(np.sqrt(d))
        self.pb = g(rank, f) / np.float32(np.sqrt(rank))
        self.w["W1P"] = (0.9 * (self.pa @ self.pb) + 0.44 * g(d, f) / np.float32(np.sqrt(d))
                         ).astype(np.float32)
        self.x = g(1, d)
        self.x[0, 0] = 1.0
        self._q: dict[tuple[int, str], object] = {}
        self._deq: dict[tuple[int, str], np.ndarray] = {}

    def q(self, bits: int, name: str):
        if (bits, name) not in self._q:
            self._q[bits, name] = _quantize(bits, self.w[name])
        return self._q[bits, name]

    def deq(self, bits: int, name: str) -> np.ndarray:
        if (bits, name) not in self._deq:
            self._deq[bits, name] = _deq(self.q(bits, name))
        return self._deq[bits, name]


def _by_row(bits: int, k: int, n: int, rows: int) -> int:
    """Bytes of ``rows`` of the N rows of a [K, N] MatMulNBits projection (codes and the
    scales of each block of K), read per row as the node holds it."""
    return rows * (k * bits // 8 + k // BLOCK * 4)


def _by_column(bits: int, n: int, listed: np.ndarray) -> int:
    """Bytes of the listed K-rows (``listed``: a mask over K) of a [K, N] projection re-laid
    out per K-row: their codes, and the scales of every block of K holding one of them."""
    groups = listed.reshape(-1, BLOCK).any(axis=1).sum()
    return int(listed.sum()) * n * bits // 8 + int(groups) * n * 4


def dense_bytes(s: Shape, bits: int) -> int:
    """Bytes of the dense FFN's three projections (codes and scales)."""
    return 2 * _by_row(bits, s.d, s.f, s.f) + _by_row(bits, s.f, s.d, s.d)


def _kernel(spec: SparseSpec, dot: Q4Dot, inputs: dict, x: np.ndarray):
    k = (Q8Kernel(spec, dot=dot) if spec.bits == 8
         else Q4Kernel(spec, ql.Q4Format(BLOCK), dot=dot))
    args = k.args(x, inputs)
    return (lambda: k.run(args)), (lambda: args[-1].numpy())


def _spec(s: Shape, mode: SparseMode, bits: int, has_b1: bool, rank: int = 0) -> SparseSpec:
    return SparseSpec(s.act, s.up, mode, s.d, s.f, s.d, has_b1, False, True, rank=rank,
                      **({"bits": bits, "block": BLOCK} if bits == 8 else {}))


def _exact(wt: Weights, bits: int, s_: float):
    s, x = wt.s, wt.x
    b1 = np.full(s.f, NormalDist().inv_cdf(1 - s_), np.float32)
    spec = _spec(s, SparseMode.EXACT, bits, True)
    w1, wu, w2 = wt.q(bits, "W1"), wt.q(bits, "WU"), _columns(wt.q(bits, "W2"))
    inputs = (q4_inputs if bits == 4 else q8_inputs)(spec, w1, w2, wu, b1)
    d1, du, d2 = wt.deq(bits, "W1"), wt.deq(bits, "WU"), wt.deq(bits, "W2")
    ref = sparse_ffn(x, d1, b1, d2, None, du.T, up_activation=s.up)
    h = x.astype(np.float64) @ d1 + b1
    a = np.maximum(h, 0) * np.maximum(x.astype(np.float64) @ du, 0)
    read = (_by_row(bits, s.d, s.f, s.f) + _by_row(bits, s.d, s.f, int((h > 0).sum()))
            + _by_column(bits, s.d, a[0] != 0))
    return spec, inputs, ref, read, (f"gates <= 0 {np.mean(h <= 0):.1%}, a == 0 "
                                     f"{np.mean(a == 0):.1%}")


def _teal(wt: Weights, bits: int, s_: float):
    s, x = wt.s, wt.x
    spec = _spec(s, SparseMode.TEAL, bits, False)
    d1, du, d2 = wt.deq(bits, "W1"), wt.deq(bits, "WU"), wt.deq(bits, "W2")
    t_in = np.float32(np.quantile(np.abs(x), s_))
    xd = np.where(np.abs(x) <= t_in, 0.0, x.astype(np.float64))
    a = activation(s.act, xd @ d1) * activation(s.up, xd @ du)
    th = np.array([t_in, np.quantile(np.abs(a), s_)], np.float32)
    inputs = q4_inputs(spec, *(_columns(wt.q(bits, n)) for n in ("W1", "W2", "WU")), TH=th)
    ref = teal_ffn(x, d1, None, d2, None, du, thresholds=th, activation_name=s.act,
                   up_activation=s.up)
    read = (2 * _by_column(bits, s.f, np.abs(x[0]) > th[0])
            + _by_column(bits, s.d, np.abs(a[0]) > th[1]))
    return spec, inputs, ref, read, (f"x skipped {np.mean(np.abs(x) <= th[0]):.1%}, a "
                                     f"skipped {np.mean(np.abs(a) <= th[1]):.1%}")


def _cats(wt: Weights, bits: int, s_: float):
    s, x = wt.s, wt.x
    spec = _spec(s, SparseMode.CATS, bits, False)
    d1, du, d2 = wt.deq(bits, "W1"), wt.deq(bits, "WU"), wt.deq(bits, "W2")
    g = np.abs(activation(s.act, x.astype(np.float64) @ d1))
    th = np.array([-1.0, np.quantile(g, s_)], np.float32)
    inputs = q4_inputs(spec, wt.q(bits, "W1"), _columns(wt.q(bits, "W2")), wt.q(bits, "WU"),
                       TH=th)
    ref = cats_ffn(x, d1, None, d2, None, du.T, thresholds=th, activation_name=s.act,
                   up_activation=s.up)
    read = (_by_row(bits, s.d, s.f, s.f) + _by_row(bits, s.d, s.f, int((g > th[1]).sum()))
            + _by_column(bits, s.d, g[0] > th[1]))
    return spec, inputs, ref, read, f"gates skipped {np.mean(g <= th[1]):.1%}"


def _predictor(wt: Weights, bits: int, s_: float):
    s, x, rank = wt.s, wt.x, wt.rank
    cut = NormalDist().inv_cdf(1 - s_)
    b1 = np.full(s.f, cut, np.float32) if s.act == "relu" else None
    pred = {"PA": wt.pa, "PB": wt.pb, "PC": np.full(s.f, cut, np.float32)}
    spec = _spec(s, SparseMode.PREDICTOR, bits, b1 is not None, rank)
    inputs = q4_inputs(spec, wt.q(bits, "W1P"), _columns(wt.q(bits, "W2")), wt.q(bits, "WU"),
                       b1, **pred)
    d1, du, d2 = wt.deq(bits, "W1P"), wt.deq(bits, "WU"), wt.deq(bits, "W2")
    ref = predictor_ffn(x, d1.T, b1, d2, None, du.T, pred["PA"], pred["PB"], pred["PC"],
                        activation_name=s.act, up_activation=s.up)
    xd = x.astype(np.float64)
    sel = (xd @ wt.pa) @ wt.pb + pred["PC"] > 0
    h = xd @ d1 + (0 if b1 is None else b1)
    a = activation(s.act, h) * activation(s.up, xd @ du)
    read = (4 * (wt.pa.size + wt.pb.size + s.f) + 2 * _by_row(bits, s.d, s.f, int(sel.sum()))
            + _by_column(bits, s.d, (sel & (a != 0))[0]))
    return spec, inputs, ref, read, (f"rank {rank}, neurons not selected "
                                     f"{np.mean(~sel):.1%}, predictor {4 * (wt.pa.size + wt.pb.size) / 2**20:.1f} MiB")


SETUPS = {SparseMode.EXACT: _exact, SparseMode.TEAL: _teal, SparseMode.CATS: _cats,
          SparseMode.PREDICTOR: _predictor}


def _missing(s: Shape, mode: SparseMode, bits: int) -> str:
    """Why no kernel runs (mode, bits) on ``s`` ("" where one does)."""
    if mode is SparseMode.EXACT and s.act != "relu":
        return f"{s.act} is never exactly zero: no exact mode"
    if bits == 8 and mode is not SparseMode.EXACT:
        return "no int8 kernel for this mode (int8 codes: mode exact only)"
    return ""



def bench_shape(name: str, s: Shape, a, rng) -> list[tuple]:
    """Time one shape's sides; the table rows ``(shape, mode, bits, dot, ratio L4, ratio
    fp32, goal)``."""
    wt = Weights(s, rng, a.rank)
    bits_all = [int(b) for b in a.bits.split(",")]
    modes = [SparseMode(m) for m in a.modes.split(",")]
    sparsity = {SparseMode.EXACT: a.sparsity, SparseMode.TEAL: a.teal_sparsity,
                SparseMode.CATS: a.cats_sparsity, SparseMode.PREDICTOR: a.predictor_sparsity}
    dots = [DOTS[t] for t in a.dots.split(",")]
    if Q4Dot.INT8 in dots and not has_int8_dots():
        print("this CPU has no AVX-512 VNNI: float32 dots only")
        dots = [Q4Dot.FLOAT32]
    b1_ort = None
    if SparseMode.EXACT in modes and s.act == "relu":
        b1_ort = np.full(s.f, NormalDist().inv_cdf(1 - a.sparsity), np.float32)
    ort_sides = {"ort fp32": mn.session(mn.ffn_model(wt.w["W1"], wt.w["W2"], wt.w["WU"], b1_ort,
                                                     None, s.up, activation=s.act), THREADS)}
    for bits in bits_all:
        ort_sides[f"ort int{bits} L4"] = mn.session(mn.ffn_model(
            wt.q(bits, "W1"), wt.q(bits, "W2"), wt.q(bits, "WU"), b1_ort, None, s.up,
            accuracy_level=4, activation=s.act), THREADS)
    feeds = {"x": wt.x}
    sides: list[Side] = []
    notes = []
    for bits in bits_all:
        for mode in modes:
            why = _missing(s, mode, bits)
            if why:
                notes.append(f"fffc int{bits} {mode}: {why}")
                continue
            spec, inputs, ref, read, frac = SETUPS[mode](wt, bits, sparsity[mode])
            for dot in dots:
                run, out = _kernel(spec, dot, inputs, wt.x)
                short = next(k for k, v in DOTS.items() if v is dot)
                sides.append(Side(f"fffc int{bits} {mode} {short}", mode, bits, run, out, ref,
                                  read, frac))
                if a.split and mode is SparseMode.TEAL:
                    # no neuron above t_hidden: phases 0-2 alone, the down projection skipped
                    gate = dict(inputs, TH=np.array([inputs["TH"][0], np.finfo(np.float32).max],
                                                    np.float32))
                    run, out = _kernel(spec, dot, gate, wt.x)
                    sides.append(Side(f"fffc int{bits} teal-gate {short}", mode, bits, run, out,
                                      np.zeros_like(ref), read, "down projection skipped"))
    ident = identity_session(s.d, THREADS)
    calls = {**{k: (lambda sess=sess: sess.run(None, feeds)) for k, sess in ort_sides.items()},
             **{sd.name: sd.run for sd in sides}, "ort overhead": lambda: ident.run(None, feeds)}
    for sd in sides:
        sd.run()
    times = blocks(calls, a.rounds, a.inner)
    med = {k: statistics.median(v) for k, v in times.items()}
    low = {k: min(v) for k, v in times.items()}
    print(f"\n{name}: {s.kind} {s.d}/{s.f}, 1 token, {THREADS} threads "
          f"({a.rounds}x{a.inner} calls per side), load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    for n in notes:
        print(f"  {n}")
    print(f"{'side':<26} {'min ms':>8} {'med ms':>8} {'max ms':>8} {'rel dev':>9}  skipped")
    for k in ort_sides:
        print(f"{k:<26} {spread_ms(times[k])}")
    for sd in sides:
        dev = np.abs(sd.out() - sd.ref).max() / max(np.abs(sd.ref).max(), 1e-30)
        print(f"{sd.name:<26} {spread_ms(times[sd.name])} {dev:9.2e}  {sd.fractions}")
    print(f"{'ort overhead':<26} {spread_ms(times['ort overhead'])}")
    rows = []
    for sd in sides:
        base = f"ort int{sd.bits} L4"
        r4, r32 = med[base] / med[sd.name], med["ort fp32"] / med[sd.name]
        goal = ""
        if "teal-gate" in sd.name:
            goal = "(the gate/up pass alone; bound: not its bytes)"
        elif sd.mode in GOALS and abs(sparsity[sd.mode] - GOALS[sd.mode][0]) < 1e-9:
            want = GOALS[sd.mode][1]
            verdict = {True: "met", False: "not met"}
            goal = (f">= {want}x: medians {verdict[r4 >= want]}, minima "
                    f"{verdict[low[base] / low[sd.name] >= want]}")
        rows.append((name, sd.name.removeprefix("fffc "), r4, low[base] / low[sd.name], r32,
                     med[base] * 1e3, med[sd.name] * 1e3, goal,
                     dense_bytes(s, sd.bits) / sd.read, sd.read))
    for bits in bits_all:
        rows.append((name, f"(ort int{bits} L4 dense)", 1.0, 1.0,
                     med["ort fp32"] / med[f"ort int{bits} L4"], med[f"ort int{bits} L4"] * 1e3,
                     med[f"ort int{bits} L4"] * 1e3, "", 1.0, dense_bytes(s, bits)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--modes", default=",".join(str(m) for m in SETUPS))
    ap.add_argument("--bits", default="4,8")
    ap.add_argument("--dots", default="f32,i8")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--inner", type=int, default=20)
    ap.add_argument("--sparsity", type=float, default=0.9, help="exact")
    ap.add_argument("--teal-sparsity", type=float, default=0.5)
    ap.add_argument("--cats-sparsity", type=float, default=0.5)
    ap.add_argument("--predictor-sparsity", type=float, default=0.9)
    ap.add_argument("--rank", type=int, default=128, help="the predictor's rank")
    ap.add_argument("--split", action="store_true",
                    help="also time TEAL with t_hidden above every activation (its gate/up "
                         "pass alone: the rest of its time is the down projection)")
    a = ap.parse_args()
    if os.environ.get("TVM_NUM_THREADS") != str(THREADS):
        raise SystemExit(f"set TVM_NUM_THREADS={THREADS} (TVM's pool defaults to 1 thread here)")
    import tvm

    start = datetime.datetime.now(datetime.UTC)
    print(f"{start:%Y-%m-%d %H:%M:%S} UTC, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, onnxruntime {ort.__version__}, TVM {tvm.__version__}, "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    rng = np.random.default_rng(0)
    rows = []
    for name in a.shapes.split(","):
        rows += bench_shape(name, SHAPES[name], a, rng)
    end = datetime.datetime.now(datetime.UTC)
    print(f"\nmedians ({start:%H:%M}–{end:%H:%M} UTC); ratios: ort L4 of the same bits / side "
          "(of the medians; of the minima), ort fp32 / side (medians)")
    print(f"{'shape':<12} {'side':<22} {'ort L4 ms':>9} {'side ms':>8} {'vs L4':>7} "
          f"{'(min)':>7} {'vs fp32':>8} {'MiB read':>8} {'bound':>6}  goal")
    for shape, side, r4, r4min, r32, base, t, goal, bound, read in rows:
        print(f"{shape:<12} {side:<22} {base:9.3f} {t:8.3f} {r4:6.2f}x {r4min:6.2f}x "
              f"{r32:7.2f}x {read / 2**20:8.2f} {bound:5.2f}x  {goal}")


if __name__ == "__main__":
    main()
