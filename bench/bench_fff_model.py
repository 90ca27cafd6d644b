"""A crammedBERT-shaped encoder with FFF 1x11 layers, compiled by fffc, vs its dense twin.

    python bench/bench_fff_model.py [--layers 16] [--seq 128] [--repeat 10]

16 pre-LayerNorm layers, hidden 768, 12 heads (plain softmax attention), random weights; the FFN of each layer is a
``fffc.torch.FastFeedForward`` 1x11 (the UltraFastBERT-1x11 layout) or, in the dense twin,
a GELU FFN 768 → 3072 → 768. Both are exported with the TorchScript exporter (opset 17);
the FFF model as exported (the released masked form) is what users run today. fffc
compiles the FFF model (every layer found and lowered to ``ai.fffc::FastFeedForward``),
checks it, and all three run in ONNX Runtime (2 intra-op threads, interleaved, medians).
Needs the torch extra.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort

from fffc import timing


def _encoder(layers: int, hidden: int, heads: int, fff: bool):
    import torch
    from torch import nn

    from fffc.torch import FastFeedForward

    class Attention(nn.Module):  # exports with symbolic batch and sequence
        def __init__(self):
            super().__init__()
            self.qkv, self.out = nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.qkv(x).view(b, t, 3, heads, hidden // heads).permute(2, 0, 3, 1, 4)
            att = torch.softmax(q @ k.transpose(-1, -2) / (hidden // heads) ** 0.5, dim=-1)
            return self.out((att @ v).transpose(1, 2).reshape(b, t, hidden))

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
            self.attn = Attention()
            self.ffn = (FastFeedForward(hidden, hidden, 11, 1) if fff else
                        nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(),
                                      nn.Linear(4 * hidden, hidden)))

        def forward(self, x):
            h = self.ln1(x)
            x = x + self.attn(h)
            return x + self.ffn(self.ln2(x))

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(Layer() for _ in range(layers))

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    torch.manual_seed(0)
    return Encoder().eval()


def _export(model, path: Path, seq: int, hidden: int) -> Path:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, seq, hidden),), str(path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch", 1: "seq"}})
    return path


def main() -> int:
    import fffc
    import fffc.runtime

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--repeat", type=int, default=10)
    a = p.parse_args()
    hidden, heads = 768, 12
    tmp = Path(tempfile.mkdtemp(prefix="fffc-bench-fff-model-"))
    fff_path = _export(_encoder(a.layers, hidden, heads, True), tmp / "fff.onnx", a.seq, hidden)
    dense_path = _export(_encoder(a.layers, hidden, heads, False), tmp / "dense.onnx", a.seq, hidden)
    t0 = time.perf_counter()
    result = fffc.compile(fff_path, tmp / "fff.fffc")
    kinds = {s.family for s in result.sites}
    print(f"compiled in {time.perf_counter() - t0:.0f}s: {len(result.sites)} sites {kinds}, "
          f"decisions {sorted({s.decision for s in result.sites})}, max verified rel err "
          f"{max(s.max_rel_err for s in result.sites):.1e}")


    sessions = {
        "dense twin (GELU 3072)": ort.InferenceSession(str(dense_path), timing.session_options(),
                                                       providers=["CPUExecutionProvider"]),
        "FFF as exported": ort.InferenceSession(str(fff_path), timing.session_options(),
                                                providers=["CPUExecutionProvider"]),
        "FFF via fffc": fffc.runtime.InferenceSession(result.artifact, timing.session_options()),
    }
    x = np.random.default_rng(1).standard_normal((1, a.seq, hidden)).astype(np.float32)
    want = sessions["FFF as exported"].run(None, {"x": x})[0]
    got = sessions["FFF via fffc"].run(None, {"x": x})[0]
    err = float(np.abs(got - want).max() / np.abs(want).max())
    med = timing.medians_ms({k: (lambda s=sess: s.run(None, {"x": x}))
                             for k, sess in sessions.items()}, rounds=a.repeat, inner=3)
    print(f"{a.layers} layers, seq {a.seq}, hidden {hidden}: fffc vs exported rel err {err:.1e}")
    for k, v in med.items():
        print(f"  {k:24} {v:9.2f} ms")
    f = med["FFF via fffc"]
    print(f"  fffc vs FFF as exported {med['FFF as exported'] / f:.2f}x, "
          f"vs dense twin {med['dense twin (GELU 3072)'] / f:.2f}x")
    return 0 if err <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
