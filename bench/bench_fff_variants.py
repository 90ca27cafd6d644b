"""In-process timing of FastFeedForward CPU kernel variants.

    TVM_NUM_THREADS=2 python bench/bench_fff_variants.py [--shapes 1x11,4x9,128x4] [--tokens 1,8,128,2048]

TVM's ``time_evaluator`` (no ONNX Runtime), H 768, against the float64 reference:
* ``walk`` — the shipped kernel (``fffc/codegen/kernels/fff.py``): each token walks its
  trees alone, 16 float lanes in the dot product; ``walk32``/``walk64``: 32/64 lanes
  (more independent accumulators);
* ``level<B>`` — level-synchronous (``fff_level_primfunc``): a block of B tokens advances
  one level at a time (all B dot products of a level, then the next level), so B
  independent row fetches are in flight and the block shares the upper nodes' rows.
  The artifact's token ranges for walk and level16 (``fffc/codegen/build.py``) come
  from this table.
"""

from __future__ import annotations

import argparse

import numpy as np

from fffc.codegen import _tvm
from fffc.codegen.kernels import fff as F
from fffc.contract.kernels import FffSpec
from fffc.verify.reference import fast_feed_forward


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="1x11,4x9,128x4")
    ap.add_argument("--tokens", default="1,8,128,2048")
    ap.add_argument("--blocks", default="4,8,16")
    args = ap.parse_args()
    h = 768
    target = {"kind": "llvm", "mcpu": _tvm.host_cpu()}
    for shape in args.shapes.split(","):
        trees, depth = map(int, shape.split("x"))
        spec = FffSpec(h, h, trees, depth)
        n = 2 ** (depth + 1) - 1
        rng = np.random.default_rng(0)
        w_in = (rng.standard_normal((trees * n, h)) / np.sqrt(h)).astype(np.float32)
        b_in = (rng.standard_normal(trees * n) * 0.1).astype(np.float32)
        w_out = (rng.standard_normal((trees * n, h)) / np.sqrt(trees * (depth + 1))).astype(np.float32)
        funcs = {f"walk{'' if lanes == 16 else lanes}": F.fff_cpu_primfunc(
            spec, f"walk{'' if lanes == 16 else lanes}", lanes) for lanes in (16, 32, 64)}
        for b in map(int, args.blocks.split(",")):
            funcs[f"level{b}"] = F.fff_level_primfunc(spec, f"level{b}", block=b)
        ex = _tvm.compile_module(funcs, target)
        print(f"\n| {shape} tokens | " + " | ".join(f"{k} ms" for k in funcs) + " |")
        print("|---" * (len(funcs) + 1) + "|")
        for tokens in map(int, args.tokens.split(",")):
            x = rng.standard_normal((tokens, h)).astype(np.float32)
            want = fast_feed_forward(x, w_in, b_in, w_out, trees=trees, depth=depth)
            tvm_args = [_tvm.tensor(a) for a in (x, w_in, b_in, w_out)]
            row = []
            for name in funcs:
                y = _tvm.empty((tokens, h))
                ex[name](*tvm_args, y)
                err = np.abs(y.numpy() - want).max() / np.abs(want).max()
                assert err < 1e-4, (name, err)
                t = _tvm.time_function(ex, name, [*tvm_args, y], number=max(1, 2000 // tokens),
                                       repeat=7)
                row.append(float(np.median(t)) * 1e3)
            print(f"| {tokens} | " + " | ".join(f"{v:.4f}" for v in row) + " |", flush=True)


if __name__ == "__main__":
    main()
