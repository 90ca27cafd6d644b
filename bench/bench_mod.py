"""Issue 7 benchmark: a Mixture-of-Depths FFN (capacity 12.5%, top-k routing) compiled by
fffc vs the dense FFN on every token and vs the exported MoD graph, in ONNX Runtime.

The model is ``fffc.torch.MoDFFN`` around a dense GELU FFN (d_model 1024, d_ff 4096, biases;
random weights) exported with the dynamo exporter (opset 18) at a fixed sequence length
(``--seq``, default 512: k = 64 tokens per sequence) and a dynamic batch. Columns, all in
ONNX Runtime with the same session options (``--threads`` intra-op threads): the dense FFN
over all tokens (``nn.Sequential`` of the same FFN exported alone: what the layer costs
without routing); the exported MoD graph as ORT runs it (TopK, GatherElements, the FFN on
the k gathered tokens, ScatterElements); the fffc artifact (``ai.fffc::RoutedFFN``, shim
pool FFFC_NUM_THREADS = ``--threads``). Alternating blocks (``fffc.timing``), medians.

Then decode (1 token per call) with the causal form (``forward_causal``): a routed token vs
a skipped one, against the dense FFN on that token and the exported causal graph.

    python bench/bench_mod.py [--batch 1,4] [--seq 512] [--repeat 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "build" / "bench"
D, F = 1024, 4096


def export_causal(capacity: float) -> tuple[Path, object]:
    """The decode form (``forward_causal``, dynamic batch and length) and the module."""
    import torch

    from fffc.torch import MoDFFN

    class Causal(torch.nn.Module):
        def __init__(self, mod):
            super().__init__()
            self.mod = mod

        def forward(self, x):
            return self.mod.forward_causal(x)

    torch.manual_seed(0)
    ffn = torch.nn.Sequential(torch.nn.Linear(D, F), torch.nn.GELU(), torch.nn.Linear(F, D))
    m = Causal(MoDFFN(ffn, D, capacity=capacity)).eval()
    path = OUT / "mod_causal.onnx"
    with torch.no_grad():
        torch.onnx.export(m, (torch.randn(1, 4, D),), str(path), dynamo=True, opset_version=18,
                          input_names=["x"], output_names=["y"], external_data=False,
                          dynamic_shapes=({0: torch.export.Dim("batch"),
                                           1: torch.export.Dim("seq")},))
    return path, m


def export(seq: int, capacity: float) -> tuple[Path, Path]:
    import torch

    from fffc.torch import MoDFFN

    torch.manual_seed(0)
    ffn = torch.nn.Sequential(torch.nn.Linear(D, F), torch.nn.GELU(), torch.nn.Linear(F, D))
    mod = MoDFFN(ffn, D, capacity=capacity).eval()
    x = torch.randn(1, seq, D)
    paths = (OUT / f"mod_{seq}.onnx", OUT / f"mod_dense_{seq}.onnx")
    with torch.no_grad():
        for module, path, dims in ((mod, paths[0], {0: torch.export.Dim("batch")}),
                                   (ffn, paths[1], {0: torch.export.Dim("batch"),
                                                    1: torch.export.Dim("seq")})):
            torch.onnx.export(module, (x,), str(path), dynamo=True, opset_version=18,
                              input_names=["x"], output_names=["y"], external_data=False,
                              dynamic_shapes=(dims,))
    return paths


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", default="1,4")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--capacity", type=float, default=0.125)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    os.environ.setdefault("FFFC_NUM_THREADS", str(args.threads))
    import onnxruntime as ort

    import fffc
    import fffc.runtime
    from fffc import timing

    OUT.mkdir(parents=True, exist_ok=True)
    mod_path, dense_path = export(args.seq, args.capacity)
    result = fffc.compile(mod_path, mod_path.with_suffix(".fffc"), fffc.CompileOptions(force=True))
    site = result.sites[0]
    print(f"site: {site.family}, decision {site.decision}: {site.reason}", flush=True)
    so = timing.session_options
    dense = ort.InferenceSession(str(dense_path), so(args.threads), providers=["CPUExecutionProvider"])
    plain = ort.InferenceSession(str(mod_path), so(args.threads), providers=["CPUExecutionProvider"])
    art = fffc.runtime.InferenceSession(result.artifact, so(args.threads),
                                        providers=["CPUExecutionProvider"])
    rows = []
    for b in (int(v) for v in args.batch.split(",")):
        feed = {"x": np.random.default_rng(b).standard_normal((b, args.seq, D)).astype(np.float32)}
        got, want = art.run(None, feed)[0], plain.run(None, feed)[0]
        err = float(np.abs(got - want).max() / np.abs(want).max())
        inner = min(5, args.repeat)
        calls = {"dense": lambda f=feed: dense.run(None, f),
                 "mod_ort": lambda f=feed: plain.run(None, f),
                 "fffc": lambda f=feed: art.run(None, f)}
        med = timing.medians_ms(calls, rounds=-(-args.repeat // inner), inner=inner, settle=0.2)
        row = {"batch": b, "seq": args.seq, "k": site.routing["k"], "dense_all_tokens_ms":
               med["dense"], "mod_ort_ms": med["mod_ort"], "fffc_ms": med["fffc"],
               "max_rel_err_vs_export": err}
        rows.append(row)
        print(f"batch {b} x seq {args.seq} (k={row['k']}): dense FFN on all tokens "
              f"{med['dense']:.2f} ms, exported MoD in ORT {med['mod_ort']:.2f} ms, fffc "
              f"{med['fffc']:.2f} ms: {med['dense'] / med['fffc']:.2f}x vs dense, "
              f"{med['mod_ort'] / med['fffc']:.2f}x vs ORT MoD (rel err {err:.1e})", flush=True)
    print("\n| batch × seq | k | ORT dense FFN, all tokens ms | ORT exported MoD ms | fffc ms | "
          "fffc vs dense | fffc vs ORT MoD |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} × {r['seq']} | {r['k']} | {r['dense_all_tokens_ms']:.2f} | "
              f"{r['mod_ort_ms']:.2f} | {r['fffc_ms']:.2f} | "
              f"{r['dense_all_tokens_ms'] / r['fffc_ms']:.2f}x | {r['mod_ort_ms'] / r['fffc_ms']:.2f}x |")
    rows_decode = decode(args, dense_path)
    if args.json:
        args.json.write_text(json.dumps({"prefill": rows, "decode": rows_decode}, indent=2))
    return 0


def decode(args, dense_path: Path) -> list[dict]:
    """Decode (1 token per call) with the causal form: a token the auxiliary predictor routes
    runs the FFN, any other costs the two score dot products (selection and router)."""
    import onnxruntime as ort
    import torch

    import fffc
    import fffc.runtime
    from fffc import timing

    path, module = export_causal(args.capacity)
    result = fffc.compile(path, path.with_suffix(".fffc"), fffc.CompileOptions(force=True))
    print(f"decode site: {result.sites[0].family}, decision {result.sites[0].decision}")
    so = timing.session_options
    dense = ort.InferenceSession(str(dense_path), so(args.threads), providers=["CPUExecutionProvider"])
    plain = ort.InferenceSession(str(path), so(args.threads), providers=["CPUExecutionProvider"])
    art = fffc.runtime.InferenceSession(result.artifact, so(args.threads),
                                        providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((64, 1, 1, D)).astype(np.float32)
    with torch.no_grad():
        routed = [bool(module.mod.aux(torch.from_numpy(x)).item() > 0) for x in xs]
    rows = []
    for label, want in (("routed", True), ("skipped", False)):
        x = xs[routed.index(want)]
        feed = {"x": x}
        np.testing.assert_allclose(art.run(None, feed)[0], plain.run(None, feed)[0], rtol=1e-4,
                                   atol=1e-5)
        calls = {"dense": lambda f=feed: dense.run(None, f),
                 "mod_ort": lambda f=feed: plain.run(None, f),
                 "fffc": lambda f=feed: art.run(None, f)}
        med = timing.medians_ms(calls, rounds=max(4, args.repeat), inner=10)
        rows.append({"token": label, "dense_ms": med["dense"], "mod_ort_ms": med["mod_ort"],
                     "fffc_ms": med["fffc"]})
        print(f"decode, 1 token {label}: dense FFN {med['dense']:.3f} ms, exported causal MoD "
              f"in ORT {med['mod_ort']:.3f} ms, fffc {med['fffc']:.3f} ms: "
              f"{med['dense'] / med['fffc']:.2f}x vs dense", flush=True)
    print("\n| decode, 1 token | ORT dense FFN ms | ORT exported causal MoD ms | fffc ms | "
          "fffc vs dense | fffc vs ORT MoD |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['token']} | {r['dense_ms']:.3f} | {r['mod_ort_ms']:.3f} | {r['fffc_ms']:.3f} |"
              f" {r['dense_ms'] / r['fffc_ms']:.2f}x | {r['mod_ort_ms'] / r['fffc_ms']:.2f}x |")
    return rows


if __name__ == "__main__":
    sys.exit(main())
