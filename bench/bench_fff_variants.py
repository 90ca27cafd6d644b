"""In-process timing of FastFeedForward CPU kernel variants (issue 3, item 4).

    TVM_NUM_THREADS=2 python bench/bench_fff_variants.py [--shapes 1x11,4x9,128x4] [--tokens 1,8,128,2048]

TVM's ``time_evaluator`` (no ONNX Runtime), H 768, against the float64 reference:
* ``walk`` — the shipped kernel (``fffc/codegen/kernels/fff.py``): each token walks its
  trees alone, 16 float lanes in the dot product; ``walk32``/``walk64``: 32/64 lanes
  (more independent accumulators);
* ``level<B>`` — level-synchronous: a block of B tokens advances one level at a time
  (all B dot products of a level, then the next level), so B independent row fetches are
  in flight. It lives here, not in the kernels, because it was measured and not adopted.
"""

from __future__ import annotations

import argparse

import numpy as np

from fffc.codegen import _tvm
from fffc.codegen.kernels import fff as F
from fffc.ops import fff_kernel_spec
from fffc.reference import fast_feed_forward

LEVEL_MAJOR = '''
@T.prim_func
def kernel(x: T.handle, W_in: T.Buffer(({R}, {D}), "float32", align=4),
           B_in: T.Buffer(({R},), "float32", align=4), W_out: T.Buffer(({R}, {DO}), "float32", align=4),
           y: T.handle):
    T.func_attr({{"global_symbol": "{symbol}", "tirx.noalias": True}})
    N = T.int32()
    X = T.match_buffer(x, (N, {D}), "float32", align=4)
    Y = T.match_buffer(y, (N, {DO}), "float32", align=4)
    for c in T.parallel((N + {TC} - 1) // {TC}):
        part = T.alloc_buffer(({VL},), "float32", scope="local")
        node = T.alloc_buffer(({TC},), "int32", scope="local")
        h = T.alloc_buffer((1,), "float32", scope="local")
        g = T.alloc_buffer((1,), "float32", scope="local")
        for tt in range({TC}):
            if c * {TC} + tt < N:
                for jb in range({DO} // {VLO}):
                    for v in T.vectorized({VLO}):
                        Y[c * {TC} + tt, jb * {VLO} + v] = T.float32(0)
        for k in range({K}):
            for tt in range({TC}):
                node[tt] = 0
            for lvl in range({LEVELS}):
                for tt in range({TC}):
                    if c * {TC} + tt < N:
                        for v in T.vectorized({VL}):
                            part[v] = T.float32(0)
                        for kb in range({D} // {VL}):
                            for v in T.vectorized({VL}):
                                part[v] = part[v] + X[c * {TC} + tt, kb * {VL} + v] * W_in[k * {NN} + node[tt], kb * {VL} + v]
                        h[0] = B_in[k * {NN} + node[tt]]
                        for v in range({VL}):
                            h[0] = h[0] + part[v]
                        g[0] = T.float32(0.5) * h[0] * (T.float32(1) + T.erf(h[0] * T.float32(0.7071067811865476)))
                        for jb in range({DO} // {VLO}):
                            for v in T.vectorized({VLO}):
                                Y[c * {TC} + tt, jb * {VLO} + v] = Y[c * {TC} + tt, jb * {VLO} + v] + g[0] * W_out[k * {NN} + node[tt], jb * {VLO} + v]
                        node[tt] = node[tt] * 2 + 1 + T.Select(h[0] > T.float32(0), 1, 0)
'''


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
        spec = fff_kernel_spec(h, h, trees, depth)
        n = 2 ** (depth + 1) - 1
        rng = np.random.default_rng(0)
        w_in = (rng.standard_normal((trees * n, h)) / np.sqrt(h)).astype(np.float32)
        b_in = (rng.standard_normal(trees * n) * 0.1).astype(np.float32)
        w_out = (rng.standard_normal((trees * n, h)) / np.sqrt(trees * (depth + 1))).astype(np.float32)
        funcs = {f"walk{'' if lanes == 16 else lanes}": F.fff_cpu_primfunc(
            spec, f"walk{'' if lanes == 16 else lanes}", lanes) for lanes in (16, 32, 64)}
        for b in map(int, args.blocks.split(",")):
            funcs[f"level{b}"] = _tvm.from_source(LEVEL_MAJOR.format(
                R=spec.d_ff, D=h, DO=h, K=trees, NN=n, LEVELS=depth + 1, TC=b, VL=16, VLO=16,
                symbol=f"level{b}"))
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
