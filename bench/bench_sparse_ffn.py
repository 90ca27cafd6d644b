"""Acceptance benchmark of exact SparseFFN against the dense FFN in ONNX Runtime.

Models: a ReLU FFN (d_model 768, d_ff 3072, biases) and a dReLU gated FFN (d_model 1024,
d_ff 4096, no biases), each as a one-FFN ONNX model over x [batch, seq, d].

How the activation sparsity s is set: inputs are x ~ N(0, 1); weights ~ N(0, 1/d) so every
pre-activation is ~ N(0, 1) over inputs.
  * ReLU FFN: b1 = −Φ⁻¹(1 − s), so each neuron is positive with probability 1 − s.
  * dReLU: channel 0 of x is the constant 1 (a bias folded into the weights, as in models
    whose hidden state has a constant direction); the gate row of that channel is set to
    −Φ⁻¹(1 − s) and the up row to +3, so P(gate > 0) = 1 − s and the up projection is
    positive on ~99.9% of neurons: the product's sparsity is ≈ s.
The measured fraction of zero activations is printed next to the target.

Both models run in ONNX Runtime with the same session options (intra_op_num_threads = 2);
fffc runs the compiled artifact through fffc.runtime (shim pool FFFC_NUM_THREADS = 2);
the column "FFFC_EXACT_SCREEN=0" is the same artifact without the float16 screen of the
1-token kernels (kernels/exact_screened.py): rows of 2+ tokens run the same kernels.
Sessions are timed in alternating blocks (``fffc.timing``) and medians compared.

    python bench/bench_sparse_ffn.py [--tokens 1,8,128] [--repeat 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from statistics import NormalDist

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from fffc import timing

OUT = Path(__file__).resolve().parent.parent / "build" / "bench"


def _model(nodes, inits, d_in: int, d_out: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "ffn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", d_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", d_out])],
        [numpy_helper.from_array(a.astype(np.float32), n) for n, a in inits.items()],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def relu_ffn(d: int, f: int, sparsity: float, rng) -> onnx.ModelProto:
    shift = -NormalDist().inv_cdf(1 - sparsity)
    inits = {"W1": rng.standard_normal((d, f)) / np.sqrt(d), "b1": np.full(f, -shift),
             "W2": rng.standard_normal((f, d)) / np.sqrt(f), "b2": rng.standard_normal(d) * 0.1}
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["a"]), helper.make_node("MatMul", ["a", "W2"], ["o"]),
             helper.make_node("Add", ["o", "b2"], ["y"])]
    return _model(nodes, inits, d, d)


def drelu_ffn(d: int, f: int, sparsity: float, rng) -> onnx.ModelProto:
    wg = rng.standard_normal((d, f)) / np.sqrt(d - 1)
    wu = rng.standard_normal((d, f)) / np.sqrt(d - 1)
    wg[0] = NormalDist().inv_cdf(1 - sparsity)  # channel 0 of x is the constant 1
    wu[0] = 3.0
    inits = {"Wg": wg, "Wu": wu, "Wd": rng.standard_normal((f, d)) / np.sqrt(f)}
    nodes = [helper.make_node("MatMul", ["x", "Wg"], ["g"]), helper.make_node("Relu", ["g"], ["ga"]),
             helper.make_node("MatMul", ["x", "Wu"], ["u"]), helper.make_node("Relu", ["u"], ["ua"]),
             helper.make_node("Mul", ["ga", "ua"], ["z"]), helper.make_node("MatMul", ["z", "Wd"], ["y"])]
    return _model(nodes, inits, d, d)


def inputs(d: int, tokens: int, rng, constant_channel: bool) -> np.ndarray:
    x = rng.standard_normal((1, tokens, d)).astype(np.float32)
    if constant_channel:
        x[..., 0] = 1.0
    return x


def measured_sparsity(model: onnx.ModelProto, x: np.ndarray) -> float:
    """Fraction of zero activations feeding the down projection, measured in ORT."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    act = "a" if any(n.output[0] == "a" for n in m.graph.node) else "z"
    m.graph.output.append(helper.make_tensor_value_info(act, TensorProto.FLOAT, None))
    a = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[1]
    return float(np.mean(a == 0))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", default="1,8,128")
    ap.add_argument("--sparsity", default="0.5,0.8,0.9")
    ap.add_argument("--repeat", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    os.environ.setdefault("FFFC_NUM_THREADS", str(args.threads))
    import fffc
    import fffc.runtime

    tokens = [int(t) for t in args.tokens.split(",")]
    sparsities = [float(s) for s in args.sparsity.split(",")]
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    for family, d, f, build in (("ReLU FFN", 768, 3072, relu_ffn), ("dReLU gated FFN", 1024, 4096, drelu_ffn)):
        for s in sparsities:
            rng = np.random.default_rng(0)
            model = build(d, f, s, rng)
            path = OUT / f"{family.split()[0].lower()}_{d}x{f}_s{int(s * 100)}.onnx"
            onnx.save(model, str(path))
            art = fffc.compile(path, path.with_suffix(".fffc"), fffc.CompileOptions(force=True)).artifact
            so = ort.SessionOptions()
            so.intra_op_num_threads = args.threads
            so.log_severity_level = 3
            dense = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            so2 = ort.SessionOptions()
            so2.intra_op_num_threads = args.threads
            so2.log_severity_level = 3
            sparse = fffc.runtime.InferenceSession(art, so2, providers=["CPUExecutionProvider"])
            os.environ["FFFC_EXACT_SCREEN"] = "0"  # read when the kernels are created
            plain = fffc.runtime.InferenceSession(art, timing.session_options(args.threads),
                                                  providers=["CPUExecutionProvider"])
            del os.environ["FFFC_EXACT_SCREEN"]
            for n in tokens:
                feed = {"x": inputs(d, n, np.random.default_rng(n), family.startswith("dReLU"))}
                got, want = sparse.run(None, feed)[0], dense.run(None, feed)[0]
                err = float(np.abs(got - want).max() / np.abs(want).max())
                err = max(err, float(np.abs(plain.run(None, feed)[0] - want).max() / np.abs(want).max()))
                reps = max(5, args.repeat if n <= 8 else args.repeat // 2)
                for _ in range(3):
                    dense.run(None, feed), sparse.run(None, feed)
                inner = min(5, reps)
                sessions = {"dense": dense, "fffc": sparse, "plain": plain}
                med = timing.medians_ms({k: lambda s=v, f=feed: s.run(None, f)
                                         for k, v in sessions.items()},
                                        rounds=-(-reps // inner), inner=inner)
                row = {"model": f"{family} {d}/{f}", "target_sparsity": s,
                       "measured_sparsity": round(measured_sparsity(model, feed["x"]), 3),
                       "tokens": n, "ort_dense_ms": med["dense"], "fffc_ms": med["fffc"],
                       "fffc_no_screen_ms": med["plain"], "max_rel_err": err}
                row["speedup"] = row["ort_dense_ms"] / row["fffc_ms"]
                rows.append(row)
                print(f"{row['model']:<24} s={s:.0%} (measured {row['measured_sparsity']:.0%}) "
                      f"tokens={n:<4} ORT dense {row['ort_dense_ms']:8.3f} ms  fffc {row['fffc_ms']:8.3f} ms"
                      f" (no screen {row['fffc_no_screen_ms']:.3f})"
                      f"  speed-up {row['speedup']:5.2f}x  rel err {err:.1e}", flush=True)
    print("\n| model | sparsity (target / measured) | tokens | ORT dense ms | fffc ms | "
          "fffc, FFFC_EXACT_SCREEN=0 | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['target_sparsity']:.0%} / {r['measured_sparsity']:.0%} | {r['tokens']} | "
              f"{r['ort_dense_ms']:.3f} | {r['fffc_ms']:.3f} | {r['fffc_no_screen_ms']:.3f} | "
              f"{r['speedup']:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
