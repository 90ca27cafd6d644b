"""UltraFastBERT FFF layer in ONNX Runtime (CPU): the exported masked form vs fffc's walk.

    python bench/bench_fff.py [--tokens 1,8,128] [--shapes 1x11,4x9,16x7,128x4] [--repeat 30]

A ``fffc.torch.FastFeedForward`` (hidden 768, 1x11: 12 of 4095 nodes per token, as
UltraFastBERT-1x11) is exported with the TorchScript exporter (opset 17), compiled by
``fffc compile`` (the FFF site becomes ``ai.fffc::FastFeedForward``: fffc's x86 kernel
through the shim, with a fallback function in standard ops: the conditional walk, or the
masked form for wide shallow forests, ``passes/standard_forms.fff_fallback``) and
timed against the original export and against the dense GELU FFNs it replaces: BERT-base's
768 → 3072 → 768 and the same width as the tree, 768 → 4095 → 768. The fallback is timed
by running the artifact without the shim; a one-Identity model shows what any ONNX Runtime
call costs (the floor under every column). Same session options (2 intra-op threads), sessions
timed in alternating blocks (``fffc.timing``), medians.
Needs the torch extra.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from fffc import timing


def _dense_gelu_ffn(h: int, f: int, path: Path) -> Path:
    rng = np.random.default_rng(0)
    inits = {"W1": rng.standard_normal((h, f)) / np.sqrt(h), "b1": np.zeros(f),
             "W2": rng.standard_normal((f, h)) / np.sqrt(f), "b2": np.zeros(h)}
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["a"]), helper.make_node("Add", ["a", "b1"], ["b"]),
             helper.make_node("Gelu", ["b"], ["c"], domain="com.microsoft"),
             helper.make_node("MatMul", ["c", "W2"], ["d"]), helper.make_node("Add", ["d", "b2"], ["y"])]
    g = helper.make_graph(nodes, "ffn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["t", h])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["t", h])],
                          [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                            helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def _identity(h: int, path: Path) -> Path:
    """One Identity node: what any ONNX Runtime call costs from Python (the floor)."""
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "floor",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["t", h])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["t", h])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path



def _shape(text: str) -> tuple[int, int]:
    trees, depth = text.lower().split("x")
    return int(trees), int(depth)


def bench_shape(h: int, trees: int, depth: int, tokens: list[int], repeat: int, tmp: Path) -> None:
    """One FFF shape: export, compile, verify, time against the masked export and dense FFNs."""
    import torch

    import fffc
    import fffc.runtime
    from fffc.torch import FastFeedForward

    torch.manual_seed(0)
    layer = FastFeedForward(h, h, depth, trees).eval()
    name = f"fff_{trees}x{depth}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(layer, (torch.randn(4, h),), str(tmp / f"{name}.onnx"), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "t"}})
    result = fffc.compile(tmp / f"{name}.onnx", tmp / f"{name}.fffc")
    (site,) = result.sites
    print(f"\nsite: {site.family} ({trees * (depth + 1)} of {site.d_ff} nodes per token), "
          f"decision {site.decision}, verified rel err {site.max_rel_err:.1e}")
    sessions = {
        "dense GELU FFN 768/3072": ort.InferenceSession(
            str(_dense_gelu_ffn(h, 3072, tmp / "dense3072.onnx")), timing.session_options(),
            providers=["CPUExecutionProvider"]),
        "dense GELU FFN 768/4095": ort.InferenceSession(
            str(_dense_gelu_ffn(h, 4095, tmp / "dense4095.onnx")), timing.session_options(),
            providers=["CPUExecutionProvider"]),
        "FFF export (masked)": ort.InferenceSession(str(tmp / f"{name}.onnx"), timing.session_options(),
                                                    providers=["CPUExecutionProvider"]),
        "FFF fallback (no shim)": ort.InferenceSession(str(result.artifact / "model.onnx"), timing.session_options(),
                                                   providers=["CPUExecutionProvider"]),
        "FFF fffc kernel": fffc.runtime.InferenceSession(result.artifact, timing.session_options()),
        "ORT call (one Identity)": ort.InferenceSession(
            str(_identity(h, tmp / "identity.onnx")), timing.session_options(),
            providers=["CPUExecutionProvider"]),
    }
    print(f"{'tokens':>6} " + " ".join(f"{k:>24}" for k in sessions)
          + "   kernel vs: masked  dense3072  dense4095  fallback")
    for n in tokens:
        x = np.random.default_rng(n).standard_normal((n, h)).astype(np.float32)
        want = sessions["FFF export (masked)"].run(None, {"x": x})[0]
        for k in ("FFF fallback (no shim)", "FFF fffc kernel"):
            # a token whose logit is within float32 rounding of 0 at some node may take the
            # other branch in a differently ordered sum: tolerate such tokens, 1 in 1000
            got = sessions[k].run(None, {"x": x})[0]
            off = int((np.abs(got - want).max(axis=-1) > 1e-4 * np.abs(want).max()).sum())
            if off:
                print(f"  {k}: {off} of {n} tokens off (tie flips at a node)")
            assert off <= n // 1000, f"{k} differs on {off} of {n} tokens"
        reps = repeat if n <= 2048 else max(3, repeat // 8)
        inner = min(5, reps)
        med = timing.medians_ms({k: (lambda s=sess, f={"x": x}: s.run(None, f))
                                 for k, sess in sessions.items()},
                                rounds=-(-reps // inner), inner=inner)
        kern = med["FFF fffc kernel"]
        print(f"{n:6d} " + " ".join(f"{v:21.3f} ms" for v in med.values())
              + f"   {med['FFF export (masked)'] / kern:13.1f}x"
              + f" {med['dense GELU FFN 768/3072'] / kern:9.1f}x"
              + f" {med['dense GELU FFN 768/4095'] / kern:9.1f}x {med['FFF fallback (no shim)'] / kern:5.1f}x")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", default="1,8,128")
    p.add_argument("--shapes", default="1x11", help="trees x depth, e.g. 1x11,4x9,16x7,128x4")
    p.add_argument("--repeat", type=int, default=30)
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fffc-bench-fff-"))
    for shape in a.shapes.split(","):
        bench_shape(768, *_shape(shape), [int(t) for t in a.tokens.split(",")], a.repeat, tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
