"""The float16-screened 1-token exact kernel vs the plain decode kernel, in-process.

Both kernels run through TVM's runtime (``KernelRunner``, TVM's thread pool, time_evaluator
medians) on the same weights, for a ReLU FFN (d 768, d_ff 3072, biases) and a dReLU FFN
(d 1024, d_ff 4096), with the first projection's bias (ReLU) or the gate's constant-channel
row (dReLU, as in bench_sparse_ffn.py) set so that a given fraction of the neurons is
active. This is where the shim's crossover (exact_screened.SCREEN_MAX_ACTIVE) comes from:
the screen saves half of W1's bytes but recomputes every candidate from a row of W1ᵀ.

    python bench/bench_screen.py [--active 0.1,0.2,0.3,0.5] [--number 200]
"""

from __future__ import annotations

import argparse
import sys
from statistics import NormalDist, median

import numpy as np

from fffc.codegen.build import KernelRunner
from fffc.contract.kernels import SparseSpec


def _case(gated: bool, active: float, rng) -> tuple[SparseSpec, list[np.ndarray]]:
    d, f = (1024, 4096) if gated else (768, 3072)
    spec = SparseSpec("relu", "relu" if gated else "none", "exact", d, f, d,
                      not gated, not gated, gated)
    shift = NormalDist().inv_cdf(active)  # pre-activations ~ N(shift, 1): P(> 0) = active
    w1 = rng.standard_normal((d, f)) / np.sqrt(d - gated)
    w2 = rng.standard_normal((f, d)) / np.sqrt(f)
    if gated:  # channel 0 of x is the constant 1: the gate's bias; the up row ~always > 0
        w1[0] = shift
        wu = rng.standard_normal((f, d)) / np.sqrt(d - 1)
        wu[:, 0] = 3.0
        return spec, [w1, w2, wu]
    return spec, [w1, np.full(f, shift), w2, rng.standard_normal(d) * 0.1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--active", default="0.1,0.2,0.3,0.5")
    ap.add_argument("--number", type=int, default=200)
    args = ap.parse_args()
    print("| model | active neurons | screened ms | decode ms | screened / decode |")
    print("|---|---|---|---|---|")
    for gated in (False, True):
        runners = None
        for active in (float(a) for a in args.active.split(",")):
            rng = np.random.default_rng(0)
            spec, weights = _case(gated, active, rng)
            if runners is None:
                runners = {v: KernelRunner(spec, v) for v in ("screened", "decode")}
            x = rng.standard_normal((1, spec.d_in)).astype(np.float32)
            if gated:
                x[0, 0] = 1.0
            ys = {v: r(x, *weights) for v, r in runners.items()}
            assert np.allclose(ys["screened"], ys["decode"], rtol=1e-4, atol=1e-4)
            ms = {v: median(r.time(x, *weights, number=args.number, repeat=5)) * 1e3
                  for v, r in runners.items()}
            name = "dReLU 1024/4096" if gated else "ReLU 768/3072"
            print(f"| {name} | {active:.0%} | {ms['screened']:.4f} | {ms['decode']:.4f} | "
                  f"{ms['screened'] / ms['decode']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
