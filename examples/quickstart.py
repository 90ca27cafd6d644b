"""The main job, end to end: build a small model, compile it for this CPU, run it in ORT.

Prints the FFN sites fffc found, the verification result and the speed ratio against
the original model in ONNX Runtime. Needs no torch. Run: ``make demo``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

import fffc
import fffc.runtime
from fffc.bench import bench

sys.path.insert(0, str(Path(__file__).parent))
from build_example_model import build_example_model

OUT = Path(__file__).resolve().parent.parent / "build" / "demo"


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    model = build_example_model(OUT / "example.onnx")
    print(f"1. example model: {model}")

    t0 = time.perf_counter()
    result = fffc.compile(model, OUT / "example.fffc", fffc.CompileOptions(target="x86", force=True))
    print(f"2. compiled for the host CPU in {time.perf_counter() - t0:.1f}s → {result.artifact}")
    for s in result.sites:
        err = "" if s.max_rel_err is None else f", verified rel err {s.max_rel_err:.1e}"
        print(f"   {s.name}: {s.family}, d_model {s.d_model}, d_ff {s.d_ff} → {s.decision}{err}")
    v = result.manifest["verification"]
    print(f"   whole model with the fffc kernels: rel err {v['model_with_shim']['max_rel']:.1e}; "
          f"without the shim (plain ORT, fallback functions): {v['model_without_shim']['max_rel']:.1e}"
          f" (tolerance {v['rtol']:g})")

    sess = fffc.runtime.InferenceSession(result.artifact)
    plain = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    served = sorted({s.dispatch.describe() for s in result.sites if s.dispatch is not None})
    print(f"3. fffc.runtime.InferenceSession vs original (tokens per call: {'; '.join(served)}; "
          "the original runs in ONNX Runtime where it was faster):")
    for seq in (1, 16):
        x = np.random.default_rng(seq).standard_normal((1, seq, 256)).astype(np.float32)
        got, want = sess.run(None, {"x": x})[0], plain.run(None, {"x": x})[0]
        print(f"   {seq:3d} token(s): max abs diff {np.abs(got - want).max():.2e}")

    print("4. speed, original vs fffc in ONNX Runtime (2 threads, interleaved, medians):")
    print(f"   {'tokens':>6} {'original ms':>12} {'fffc ms':>9} {'speed-up':>9}")
    for r in bench(result.artifact, tokens=(1, 8, 128), threads=2):
        print(f"   {r.tokens:>6} {r.original_ms:>12.3f} {r.fffc_ms:>9.3f} {r.speedup:>8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
