"""Int4 dReLU FFNs with cold caches, as in a decoder: L layers of distinct weights run one
after the other, 1 token, 2 threads — ONNX Runtime's MatMulNBits FFN (``accuracy_level`` 4)
vs fffc's int4 exact kernel with x rounded to int8 per block (its ``accuracy_level`` 4).

    TVM_NUM_THREADS=2 python bench/bench_quant_cold.py [--layers 16] [--d 2048] [--f 5632]
        [--sparsity 0.885] [--rounds 15] [--tiling rows=8 --tiling ahead=32,up_ahead=8 ...]

Weights ~ N(0, 1/fan_in) quantized by ONNX Runtime's ``matmul_nbits_quantizer`` (bits 4,
block 32, symmetric); the gate bias sets the fraction of closed gates (``--sparsity``; 1.0:
the gate pass alone); the up row 0 is +3 and x[0] = 1, so nearly every up is positive.
ONNX Runtime runs the L FFNs chained in one session; fffc runs its kernel (called through
TVM's runtime) on each layer's weights in turn. Each ``--tiling`` adds a variant of the
kernel's default ``Q4Tiling`` (fields ``name=value``, comma-separated). Printed: median and
minimum milliseconds per FFN over ``--rounds`` interleaved rounds, and ORT / variant.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import replace
from statistics import NormalDist

import numpy as np
from onnx import compose

from fffc.codegen import q4_layout as ql
from fffc.codegen.kernels.exact_q4 import Q4Dot, q4_inputs, q4_tiling
from fffc.codegen.q4_build import Q4Kernel, has_int8_dots
from fffc.contract.kernels import SparseSpec
from fffc.verify import matmul_nbits as mn

THREADS = 2
BLOCK = 32


def _layers(d: int, f: int, n: int, sparsity: float, rng) -> list[tuple]:
    out = []
    for _ in range(n):
        w1 = (rng.standard_normal((d, f)) / np.sqrt(d)).astype(np.float32)
        wu = (rng.standard_normal((d, f)) / np.sqrt(d)).astype(np.float32)
        wu[0] = 3.0
        w2 = (rng.standard_normal((f, d)) / np.sqrt(f)).astype(np.float32)
        b1 = np.full(f, NormalDist().inv_cdf(min(max(1 - sparsity, 1e-9), 1 - 1e-9)), np.float32)
        out.append((*(mn.quantize(w, BLOCK) for w in (w1, wu, w2)), b1))
    return out


def _ort(layers: list[tuple], x: np.ndarray):
    chain = None
    for i, (q1, qu, q2, b1) in enumerate(layers):
        m = compose.add_prefix(mn.ffn_model(q1, q2, qu, b1=b1, up_activation="relu",
                                            accuracy_level=4), f"l{i}_")
        chain = m if chain is None else compose.merge_models(
            chain, m, io_map=[(f"l{i - 1}_y", f"l{i}_x")])
    sess = mn.session(chain, THREADS)
    feed = {chain.graph.input[0].name: x}
    return lambda: sess.run(None, feed)


def _fffc(spec: SparseSpec, tiling, layers: list[tuple], x: np.ndarray):
    k = Q4Kernel(spec, ql.Q4Format(BLOCK, False, True), dot=Q4Dot.INT8, tiling=tiling)
    args = [k.args(x, q4_inputs(spec, q1, ql.columns(q2), qu, b1)) for q1, qu, q2, b1 in layers]
    return lambda: [k.run(a) for a in args]


def _tiling(base, text: str):
    fields = {}
    for kv in text.split(","):
        name, value = kv.split("=")
        fields[name] = type(getattr(base, name))(int(value) if value.isdigit() else
                                                   value == "True")
    return replace(base, **fields)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--d", type=int, default=2048)
    ap.add_argument("--f", type=int, default=5632)
    ap.add_argument("--sparsity", type=float, default=0.885)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--tiling", action="append", default=[])
    args = ap.parse_args()
    os.environ.setdefault("TVM_NUM_THREADS", str(THREADS))
    if not has_int8_dots():
        raise SystemExit("this benchmark's kernel needs AVX-512 VNNI")
    rng = np.random.default_rng(0)
    layers = _layers(args.d, args.f, args.layers, args.sparsity, rng)
    x = rng.standard_normal((1, args.d)).astype(np.float32)
    x[0, 0] = 1.0
    spec = SparseSpec("relu", "relu", "exact", args.d, args.f, args.d, True, False, True)
    base = q4_tiling(spec, 16)
    sides = {"ort int4 L4": _ort(layers, x), "fffc int4 i8": _fffc(spec, base, layers, x)}
    for t in args.tiling:
        sides[f"fffc {t}"] = _fffc(spec, _tiling(base, t), layers, x)
    times: dict[str, list[float]] = {n: [] for n in sides}
    for _ in range(args.rounds):
        for name, fn in sides.items():
            fn()
            t0 = time.perf_counter()
            fn()
            fn()
            times[name].append((time.perf_counter() - t0) / 2 / args.layers * 1e3)
    ort = statistics.median(times["ort int4 L4"])
    print(f"{args.layers} dReLU FFNs {args.d}/{args.f}, {args.sparsity:.1%} of the gates "
          f"closed, 1 token, {THREADS} threads; default tiling {base}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:32s} {med:.3f} ms per FFN (min {min(ts):.3f}), ORT / this {ort / med:.2f}x")


if __name__ == "__main__":
    main()
