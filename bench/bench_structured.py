"""Issue 7 benchmark: structured FFNs (LowRank, BlockDense, BlockShuffle at ~32% of the dense
parameters)
compiled by fffc vs the dense FFN in ONNX Runtime, d_model 1024 / d_ff 4096, GELU, biases.

Models are ``fffc.torch.StructuredMLP`` modules (random weights) exported with the dynamo
exporter (opset 18): ``dense`` (the baseline: what the model would be without structure),
``lowrank`` (rank 256: 31% of the parameters), ``blockdense`` (4 blocks, rank 416: 32%)
and ``blockshuffle`` (Monarch, 4 blocks: 31%).
Columns, all in ONNX Runtime with the same session options (``--threads`` intra-op threads):
the dense export; the structured export as ORT runs it (its bmm/transposes/GEMMs); the fffc
artifact (``ai.fffc::StructuredFFN``, shim pool FFFC_NUM_THREADS = ``--threads``). Sessions
are timed in alternating blocks (``fffc.timing``), medians compared; ratios are dense /
other. The fffc artifact's merged-path crossover and the crossover between its kernel and
ORT running the structured export are measured at compile time (printed).

    python bench/bench_structured.py [--kinds lowrank,blockdense,blockshuffle]
        [--tokens 1,16,512,2048] [--repeat 20] [--json out.json]
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
KINDS = {"lowrank": 256, "blockdense": 416, "blockshuffle": None}


def export(kind: str, rank: int | None, path: Path) -> tuple[Path, float]:
    import torch

    from fffc.torch import StructuredMLP

    torch.manual_seed(0)
    m = StructuredMLP(D, F, kind, rank=rank, blocks=4, activation="gelu").eval()
    x = torch.randn(1, 8, D)
    with torch.no_grad():
        torch.onnx.export(m, (x,), str(path), dynamo=True, opset_version=18,
                          input_names=["x"], output_names=["y"], external_data=False,
                          dynamic_shapes={"x": {0: torch.export.Dim("batch"),
                                                1: torch.export.Dim("seq")}})
    frac = m.params_fraction() if kind != "dense" else 1.0
    return path, frac


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", default="1,16,512,2048")
    ap.add_argument("--kinds", default="lowrank,blockdense,blockshuffle")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--merged-max-tokens", type=int, default=None,
                    help="pin the artifact's merged path (default: measured at compile time)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    os.environ.setdefault("FFFC_NUM_THREADS", str(args.threads))
    import onnxruntime as ort

    import fffc
    import fffc.runtime
    from fffc import timing

    OUT.mkdir(parents=True, exist_ok=True)
    dense_path, _ = export("dense", None, OUT / "structured_dense.onnx")
    dense = ort.InferenceSession(str(dense_path), timing.session_options(args.threads),
                                 providers=["CPUExecutionProvider"])
    rows = []
    for kind in args.kinds.split(","):
        path, frac = export(kind, KINDS[kind], OUT / f"structured_{kind}.onnx")
        result = fffc.compile(path, path.with_suffix(".fffc"), fffc.CompileOptions(
            force=True, merged_max_tokens=args.merged_max_tokens))
        st = result.sites[0].structure
        how = st["crossover"] if isinstance(st["crossover"], str) else "measured"
        print(f"{kind}: {frac:.1%} of the dense parameters; merged path up to "
              f"{st['merged_max_tokens']} tokens ({how})", flush=True)
        if isinstance(st["crossover"], dict):
            for r in st["crossover"]["timings"]:
                print(f"   crossover {r['tokens']:>4} tokens: structured "
                      f"{r['structured_ms']:.3f} ms, merged {r['merged_ms']:.3f} ms")
        d = result.sites[0].dispatch
        print(f"   {result.sites[0].decision}; tokens per call: {d.describe()} ({d.basis})")
        for t in d.timings:
            print(f"   dispatch {t.tokens:>4} tokens: kernel {t.kernel_ms:.3f} ms, "
                  f"original {t.other_ms:.3f} ms")
        plain = ort.InferenceSession(str(path), timing.session_options(args.threads),
                                     providers=["CPUExecutionProvider"])
        art = fffc.runtime.InferenceSession(result.artifact, timing.session_options(args.threads),
                                            providers=["CPUExecutionProvider"])
        for n in (int(t) for t in args.tokens.split(",")):
            feed = {"x": np.random.default_rng(n).standard_normal((1, n, D)).astype(np.float32)}
            got, want = art.run(None, feed)[0], plain.run(None, feed)[0]
            err = float(np.abs(got - want).max() / np.abs(want).max())
            reps = args.repeat if n <= 16 else max(5, args.repeat // 4)
            inner = min(5, reps)
            calls = {"dense": lambda f=feed: dense.run(None, f),
                     "structured_ort": lambda f=feed, s=plain: s.run(None, f),
                     "fffc": lambda f=feed, s=art: s.run(None, f)}
            med = timing.medians_ms(calls, rounds=-(-reps // inner), inner=inner)
            row = {"kind": kind, "params": round(frac, 3), "tokens": n, "dense_ms": med["dense"],
                   "structured_ort_ms": med["structured_ort"], "fffc_ms": med["fffc"],
                   "max_rel_err_vs_export": err}
            rows.append(row)
            print(f"{kind:<10} tokens={n:<5} dense {med['dense']:9.3f} ms  structured in ORT "
                  f"{med['structured_ort']:9.3f} ms  fffc {med['fffc']:9.3f} ms  "
                  f"vs dense {med['dense'] / med['fffc']:5.2f}x  vs ORT structured "
                  f"{med['structured_ort'] / med['fffc']:5.2f}x  rel err {err:.1e}", flush=True)
    print("\n| FFN | params | tokens | ORT dense ms | ORT structured export ms | fffc ms | "
          "fffc vs dense | fffc vs ORT structured |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kind']} | {r['params']:.0%} | {r['tokens']} | {r['dense_ms']:.3f} | "
              f"{r['structured_ort_ms']:.3f} | {r['fffc_ms']:.3f} | "
              f"{r['dense_ms'] / r['fffc_ms']:.2f}x | {r['structured_ort_ms'] / r['fffc_ms']:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
