"""Where a 1-token SparseFFN (mode exact) spends its time: in-process kernel vs ORT call.

    FFFC_NUM_THREADS=2 TVM_NUM_THREADS=2 python bench/bench_call_overhead.py

The two models of ``bench_sparse_ffn.py`` at 90% zeros (ReLU FFN 768/3072 with biases,
dReLU 1024/4096), compiled twice: as shipped (an ``If`` on the token count sends calls of
more than 2 tokens to ONNX Runtime's dense FFN) and with ``--max-sparse-tokens 0`` (no
``If``). For 1 token, side by side (blocks, ``fffc.timing``, 2 threads): the dense model,
both artifacts, the same kernel called in-process by TVM's ``time_evaluator`` (its own
thread pool, no ONNX Runtime), and from ONNX Runtime's profiler the ``SparseFFN`` node's
kernel time and the whole run (``model_run``) of the artifact without ``If``. The
differences are the costs of the layers: kernel → node (ORT's thread pool ParallelFor,
output allocation), node → run (the session), run → artifact (the ``If``).
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_sparse_ffn as models

import fffc
import fffc.runtime
from fffc import timing
from fffc.codegen.build import KernelRunner
from fffc.contract.kernels import SparseSpec


def _options(profile: str | None = None) -> ort.SessionOptions:
    so = timing.session_options()
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = profile
    return so


def _profile(sess: ort.InferenceSession, feed: dict, runs: int = 300) -> dict[str, float]:
    for _ in range(runs):
        sess.run(None, feed)
    times: dict[str, list[float]] = defaultdict(list)
    for e in json.loads(Path(sess.end_profiling()).read_text()):
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            times["node " + e["name"].removesuffix("_kernel_time")].append(e["dur"])
        elif e.get("cat") == "Session" and e["name"] == "model_run":
            times["model_run"].append(e["dur"])
    return {k: float(np.median(v)) / 1e3 for k, v in times.items()}


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="fffc-overhead-"))
    print("| model | dense ms | fffc ms | fffc, no If ms | kernel in-process ms | "
          "SparseFFN node ms | model_run ms | speed-up (as shipped) |")
    print("|---|---|---|---|---|---|---|---|")
    for fam, d, f, build in (("ReLU 768/3072", 768, 3072, models.relu_ffn),
                             ("dReLU 1024/4096", 1024, 4096, models.drelu_ffn)):
        path = tmp / f"{fam.split()[0]}.onnx"
        onnx.save(build(d, f, 0.9, np.random.default_rng(0)), str(path))
        arts = {name: fffc.compile(path, tmp / f"{path.stem}-{name}.fffc",
                                   fffc.CompileOptions(max_sparse_tokens=mst)).artifact
                for name, mst in (("if", None), ("noif", 0))}
        x = models.inputs(d, 1, np.random.default_rng(1), fam.startswith("dReLU"))
        feed = {"x": x}
        sess = {"dense": ort.InferenceSession(str(path), _options(),
                                              providers=["CPUExecutionProvider"]),
                "fffc": fffc.runtime.InferenceSession(arts["if"], _options()),
                "noif": fffc.runtime.InferenceSession(arts["noif"], _options())}
        med = timing.medians_ms({k: (lambda s=s, f=feed: s.run(None, f)) for k, s in sess.items()},
                                rounds=10, inner=10, settle=0.05)
        prof = _profile(fffc.runtime.InferenceSession(arts["noif"], _options(str(tmp / "p"))),
                        feed)
        model = onnx.load(str(arts["noif"] / "model.onnx"))
        node = next(n for n in model.graph.node if n.op_type == "SparseFFN")
        w = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        gated = fam.startswith("dReLU")
        spec = SparseSpec("relu", "relu" if gated else "none", "exact", d, f, d,
                          not gated, not gated, gated)
        kernel = KernelRunner(spec, "decode")
        args = [x.reshape(1, d)] + [w[i] for i in node.input[1:] if i]
        inproc = float(np.median(kernel.time(*args, number=200, repeat=7))) * 1e3
        node_ms = next(v for k, v in prof.items() if k.startswith("node "))
        print(f"| {fam}, 90% zeros | {med['dense']:.4f} | {med['fffc']:.4f} | {med['noif']:.4f} | "
              f"{inproc:.4f} | {node_ms:.4f} | {prof['model_run']:.4f} | "
              f"{med['dense'] / med['fffc']:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
