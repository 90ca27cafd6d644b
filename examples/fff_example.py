"""FFF end to end: a small FastFeedForward layer built with fffc.torch, briefly trained to
imitate a dense GELU FFN, exported to ONNX, compiled by fffc, run in ONNX Runtime.

    python examples/fff_example.py      (needs the torch extra: pip install torch==2.13.0)
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import fffc
import fffc.runtime
from fffc.torch import FastFeedForward

HIDDEN, DEPTH, TREES = 128, 7, 2


def main() -> int:
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Linear(HIDDEN, 512), torch.nn.GELU(),
                                  torch.nn.Linear(512, HIDDEN))
    fff = FastFeedForward(HIDDEN, HIDDEN, DEPTH, TREES)
    opt = torch.optim.Adam(fff.parameters(), lr=3e-3)
    for step in range(300):  # a few seconds: distill the dense FFN into the tree
        x = torch.randn(256, HIDDEN)
        loss = torch.nn.functional.mse_loss(fff(x), teacher(x).detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == 299:
            print(f"step {step:3d}: distillation loss {loss.item():.4f}")
    fff.eval()

    out = Path(tempfile.mkdtemp(prefix="fffc-fff-example-"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(fff, (torch.randn(1, 4, HIDDEN),), str(out / "fff.onnx"), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch", 1: "seq"}})
    result = fffc.compile(out / "fff.onnx", out / "fff.fffc")
    for site in result.sites:
        print(f"site {site.name}: {site.family}, {site.decision} — {site.reason} "
              f"(verified rel err {site.max_rel_err:.1e})")

    x = np.random.default_rng(1).standard_normal((1, 32, HIDDEN)).astype(np.float32)
    original = ort.InferenceSession(str(out / "fff.onnx"), providers=["CPUExecutionProvider"])
    compiled = fffc.runtime.InferenceSession(result.artifact)
    want, got = original.run(None, {"x": x})[0], compiled.run(None, {"x": x})[0]
    with torch.no_grad():
        walk = fff.forward_walk(torch.from_numpy(x)).numpy()
    print(f"max abs diff: compiled vs exported {np.abs(got - want).max():.2e}, "
          f"vs PyTorch walk {np.abs(got - walk).max():.2e}")
    for name, sess in (("exported (masked)", original), ("fffc", compiled)):
        sess.run(None, {"x": x})
        t0 = time.perf_counter()
        for _ in range(200):
            sess.run(None, {"x": x})
        print(f"{name:18} {(time.perf_counter() - t0) / 200 * 1e3:.3f} ms per call (32 tokens)")
    return 0 if np.abs(got - want).max() <= 1e-4 * np.abs(want).max() else 1


if __name__ == "__main__":
    sys.exit(main())
