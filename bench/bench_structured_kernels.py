"""Kernel-level benchmark: fffc's StructuredFFN TVM kernels vs ONNX Runtime's dense FFN.

    TVM_NUM_THREADS=2 python bench/bench_structured_kernels.py [--tokens 1,16,512,2048]
        [--rounds 9] [--all-variants]

What it measures, per token count: milliseconds per call of

* ``ORT dense``: the dense FFN d_model 1024 → d_ff 4096 → 1024 with biases and exact GELU
  as an ONNX model (MatMul → Add → Gelu (opset 20) → MatMul → Add) in ONNX Runtime's CPU
  EP, ``intra_op_num_threads`` = threads (``fffc.timing.session_options``);
* the ``ai.fffc::StructuredFFN`` kernels (``fffc/codegen/kernels/structured_ffn.py``) with
  ~32% of the dense parameters, biases, GELU:
  - ``LowRank``: k = 1, r = 256 on both projections, with U (31.3% of the parameters);
  - ``BlockDense``: k = 4 blocks, r = 416, with U (31.7%);
  - ``BlockShuffle``: Monarch with 4 blocks, no U, fffc.torch.BlockShuffleLinear's layout
    (A1 [4, 256, 256], S1 [4, 256, 1024]; A2 [4, 1024, 256], S2 [4, 256, 256]; 31.3%);
  - ``merged``: the same kernel on the merged dense shape (k = 1, no U: A1 = W1, A2 = W2,
    100%), which the compiler compares with the structured path to pick a crossover.
  Each runs the variant ``structured_variants`` picks for the token count (with
  ``--all-variants``, every variant) and is timed in C++ by TVM's time_evaluator
  (``fffc.codegen._tvm.time_function``, TVM's thread pool: set TVM_NUM_THREADS).

The machine is shared and noisy: in each round every candidate in turn gets a short pause
(the other thread pools go to sleep), one untimed call, then a timed block of calls; the
tables show the median (and the minimum) over rounds of the per-call block means, and
``x`` columns are ORT's time divided by the kernel's (> 1: the kernel is faster). Every kernel is first
checked against ``fffc.verify.reference.structured_ffn`` (float64).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from fffc import timing
from fffc.codegen import _tvm
from fffc.codegen.kernels.structured_ffn import structured_ffn_primfunc, structured_variants
from fffc.contract.kernels import Projection, StructuredSpec
from fffc.contract.structure import merged_weight
from fffc.verify.reference import structured_ffn

D, F = 1024, 4096
SHAPES = {  # name: the two projections (blocks, width, U[, BlockShuffle blocks, width])
    "LowRank": (Projection(1, 256, True), Projection(1, 256, True)),
    "BlockDense": (Projection(4, 416, True), Projection(4, 416, True)),
    "BlockShuffle": (Projection(4, D, False, 4, F // 4), Projection(4, D, False, 4, D // 4)),
    "merged": (Projection(1, F, False), Projection(1, D, False)),
}
SETTLE = 0.1  # s of pause before each timed block (other pools' spinning workers park)


def _spec(name: str) -> StructuredSpec:
    return StructuredSpec("gelu", D, F, D, *SHAPES[name], True, True)


def structured_weights(spec: StructuredSpec, rng) -> dict[str, np.ndarray]:
    pr1, pr2 = spec.projections
    k1, r1, k2, r2 = pr1.blocks, pr1.width, pr2.blocks, pr2.width
    p1, p2 = spec.d_in // k1, spec.d_ff // k2
    w = {"A1": rng.standard_normal((k1, p1, r1 // k1)) / np.sqrt(p1),
         "U1": rng.standard_normal((r1, spec.d_ff)) / np.sqrt(r1),
         "B1": rng.standard_normal(spec.d_ff) * 0.1,
         "A2": rng.standard_normal((k2, p2, r2 // k2)) / np.sqrt(p2),
         "U2": rng.standard_normal((r2, spec.d_out)) / np.sqrt(r2),
         "B2": rng.standard_normal(spec.d_out) * 0.1}
    for n, p in ((1, pr1), (2, pr2)):  # BlockShuffle's S [m, r/m, s] (only without U here)
        if p.shuffle_blocks:
            m, r = p.shuffle_blocks, p.width
            w[f"S{n}"] = rng.standard_normal((m, r // m, p.shuffle_width)) / np.sqrt(r // m)
    return {k: np.asarray(v, np.float32) for k, v in w.items()}


def dense_model(w: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The dense FFN with the merged weights of ``w`` (the LowRank shape's, so that
    outputs can be cross-checked), as ORT would run the unstructured model."""
    inits = {"W1": merged_weight(w["A1"], w["U1"]), "B1": w["B1"],
             "W2": merged_weight(w["A2"], w["U2"]), "B2": w["B2"]}
    n = helper.make_node
    nodes = [n("MatMul", ["x", "W1"], ["h"]), n("Add", ["h", "B1"], ["hb"]),
             n("Gelu", ["hb"], ["a"]), n("MatMul", ["a", "W2"], ["o"]),
             n("Add", ["o", "B2"], ["y"])]
    graph = helper.make_graph(
        nodes, "ffn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", D])],
        [numpy_helper.from_array(np.asarray(a, np.float32), k) for k, a in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    m.ir_version = 9
    return m


class Kernels:
    """Every variant of one spec, compiled in-process."""

    def __init__(self, name: str, spec: StructuredSpec, w: dict[str, np.ndarray]):
        self.name, self.spec, self.w = name, spec, w
        self.variants = structured_variants(spec)
        self.symbols = {v: f"bench_{name}_{v}" for v, _, _ in self.variants}
        funcs = {sym: structured_ffn_primfunc(spec, v, sym) for v, sym in self.symbols.items()}
        self.ex = _tvm.compile_module(funcs, {"kind": "llvm", "mcpu": _tvm.host_cpu()})

    def variant_for(self, tokens: int) -> str:
        return next(v for v, lo, hi in self.variants if lo <= tokens <= hi)

    def args(self, x: np.ndarray) -> list:
        ws = [_tvm.tensor(self.w[n]) for n in self.spec.arg_names()[1:-1]]
        return [_tvm.tensor(x), *ws, _tvm.empty((x.shape[0], self.spec.d_out))]

    def check(self, x: np.ndarray, variant: str) -> float:
        args = self.args(x)
        self.ex[self.symbols[variant]](*args)
        s, w = self.spec, self.w
        ref = structured_ffn(x, w["A1"], w["U1"] if s.first.dense else None, w["B1"], w["A2"],
                             w["U2"] if s.second.dense else None, w["B2"], activation_name="gelu",
                             s1=w.get("S1"), s2=w.get("S2"))
        return float(np.max(np.abs(args[-1].numpy() - ref)) / np.max(np.abs(ref)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", default="1,16,512,2048")
    ap.add_argument("--rounds", type=int, default=9, help="alternating rounds (median)")
    ap.add_argument("--threads", type=int, default=2, help="ORT intra-op threads")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--all-variants", action="store_true", help="time every variant")
    a = ap.parse_args()
    if "TVM_NUM_THREADS" not in os.environ:
        raise SystemExit("set TVM_NUM_THREADS (e.g. 2): TVM's pool size is read at start-up")
    rng = np.random.default_rng(0)
    kernels = []
    for name in a.shapes.split(","):
        spec = _spec(name)
        w = structured_weights(spec, rng)
        if name == "merged":  # the LowRank weights merged: the same function as LowRank's
            low = structured_weights(_spec("LowRank"), rng)
            w = {"A1": merged_weight(low["A1"], low["U1"])[None].astype(np.float32),
                 "A2": merged_weight(low["A2"], low["U2"])[None].astype(np.float32),
                 "B1": low["B1"], "B2": low["B2"]}
        t0 = time.perf_counter()
        kernels.append(Kernels(name, spec, w))
        print(f"compiled {name}: {[v for v, _, _ in kernels[-1].variants]} "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
    ort_w = structured_weights(_spec("LowRank"), rng)
    sess = ort.InferenceSession(dense_model(ort_w).SerializeToString(),
                                timing.session_options(a.threads),
                                providers=["CPUExecutionProvider"])

    cols = [(k, v) for k in kernels for v in ([x for x, _, _ in k.variants] if a.all_variants
                                               else [None])]
    head = ["tokens", "ORT dense ms"] + [
        f"{k.name}{'/' + v if v else ''} ms" for k, v in cols] + [
        f"x {k.name}{'/' + v if v else ''}" for k, v in cols]
    tables: dict[str, list[list[str]]] = {"median": [], "min": []}
    for tokens in (int(t) for t in a.tokens.split(",")):
        x = rng.standard_normal((tokens, D)).astype(np.float32)
        inner = max(1, min(50, int(2000 / tokens)))
        feeds = {"x": x}
        calls = {}

        def ort_block(feeds=feeds, inner=inner) -> float:
            sess.run(None, feeds)
            t0 = time.perf_counter()
            for _ in range(inner):
                sess.run(None, feeds)
            return (time.perf_counter() - t0) / inner

        calls["ort"] = ort_block
        for k, v in cols:
            variant = v or k.variant_for(tokens)
            err = k.check(x, variant)
            assert err < 1e-4, f"{k.name}/{variant} at {tokens} tokens: rel err {err:.2e}"
            args, sym = k.args(x), k.symbols[variant]

            def tvm_block(k=k, sym=sym, args=args, inner=inner) -> float:
                k.ex[sym](*args)
                return _tvm.time_function(k.ex, sym, args, number=inner, repeat=1)[0]

            calls[(k.name, v)] = tvm_block
        samples: dict = {key: [] for key in calls}
        for _ in range(a.rounds):  # alternating: every candidate sees the same drift
            for key, block in calls.items():
                time.sleep(SETTLE)
                samples[key].append(block())
        label = {(k.name, v): v or k.variant_for(tokens) for k, v in cols}
        for stat, fn in (("median", statistics.median), ("min", min)):
            ms = {key: fn(v) * 1e3 for key, v in samples.items()}
            tables[stat].append(
                [str(tokens), f"{ms['ort']:.3f}"]
                + [f"{ms[(k.name, v)]:.3f} ({label[(k.name, v)]})" for k, v in cols]
                + [f"{ms['ort'] / ms[(k.name, v)]:.2f}x" for k, v in cols])
        print("  ".join(tables["median"][-1]), flush=True)
    print(f"\nTVM_NUM_THREADS={os.environ['TVM_NUM_THREADS']}, ORT intra_op_num_threads="
          f"{a.threads}, d_model {D}, d_ff {F}, GELU, biases; {a.rounds} alternating rounds")
    for stat, rows in tables.items():
        print(f"\n{stat} over rounds:\n")
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for r in rows:
            print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
