"""TEAL on a whole random-weight LLaMA-style model at decode shape (1 token per call).

    python bench/bench_llama_teal.py [--hidden 1024 --ff 2816 --layers 4] [--levels 0.25,0.4,0.5]

A ``transformers`` LlamaModel (SwiGLU FFNs, RMSNorm, rotary attention; random weights
~ N(0, 0.02), vocabulary 1000) is exported with the TorchScript exporter (opset 17,
``input_ids → last_hidden_state``), calibrated by ``fffc calibrate --synthetic 16`` (random
token ids, 64 per feed) and compiled with ``--calibration --budget uniform=S`` for each
level S. Timed: one call with 1 token (``input_ids [1, 1]``, the decode shape of every
projection; no KV cache in this export, so attention is over that one token) and one with
64 tokens (where the artifact runs the thresholded FFN in ONNX Runtime: the cost of the
``Where`` ops TEAL adds). ONNX Runtime, 2 intra-op threads, blocks (``fffc.timing``),
medians. "rel err" is the relative L2 distance of the last hidden state from the
original's over 16 held-out 1-token inputs. Needs the torch extra and transformers.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort


def export(hidden: int, ff: int, layers: int, path: Path) -> None:
    import torch
    import transformers as tf

    cfg = tf.LlamaConfig(vocab_size=1000, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
                         intermediate_size=ff, max_position_embeddings=128)
    torch.manual_seed(0)
    model = tf.LlamaModel(cfg).eval()

    class Last(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids):
            return self.m(input_ids=input_ids).last_hidden_state

    ids = torch.randint(0, 1000, (1, 7))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Last(model), (ids,), str(path), dynamo=False, opset_version=17,
                          input_names=["input_ids"], output_names=["hidden"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "seq"},
                                        "hidden": {0: "batch", 1: "seq"}})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--ff", type=int, default=2816)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--levels", default="0.25,0.4,0.5")
    ap.add_argument("--repeat", type=int, default=40)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import fffc
    import fffc.runtime
    from fffc import timing
    from fffc.contract.config import CompileOptions
    from fffc.pipeline import analyze
    from fffc.plan import calibration

    levels = [float(v) for v in args.levels.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="fffc-llama-"))
    path = tmp / "llama.onnx"
    export(args.hidden, args.ff, args.layers, path)
    found = fffc.inspect(path)
    print(f"LLaMA-style, hidden {args.hidden}, ff {args.ff}, {args.layers} layers: "
          f"{len(found.sites)} FFN sites ({', '.join(sorted({s.family for s in found.sites}))})")
    calib = calibration.calibrate(analyze(path), synthetic=16, seq=64, sparsities=levels)
    calibration.write(calib, tmp / "llama.calib.json")


    sessions = {"original (ORT)": ort.InferenceSession(str(path), timing.session_options(),
                                                       providers=["CPUExecutionProvider"])}
    for s in levels:
        result = fffc.compile(path, tmp / f"teal-{s:g}.fffc", CompileOptions(
            calibration=tmp / "llama.calib.json", budget=f"uniform={s:g}"))
        teal = sum(site.decision == "teal" for site in result.sites)
        print(f"uniform={s:g}: {teal} of {len(result.sites)} sites teal; deviation from the "
              f"original on the compile probes: rel "
              f"{result.manifest['verification']['deviation_from_original']['max_rel']:.3f}")
        sessions[f"teal {s:.0%}"] = fffc.runtime.InferenceSession(result.artifact, timing.session_options())
    rng = np.random.default_rng(5)
    held = [rng.integers(0, 1000, (1, 1), dtype=np.int64) for _ in range(16)]
    want = [sessions["original (ORT)"].run(None, {"input_ids": i})[0] for i in held]
    errs = {}
    for k, sess in sessions.items():
        got = [sess.run(None, {"input_ids": i})[0] for i in held]
        errs[k] = float(np.sqrt(sum(np.sum((g - w) ** 2) for g, w in zip(got, want, strict=True))
                                / sum(np.sum(w**2) for w in want)))
    rows = {}
    for tokens in (1, 64):
        ids = rng.integers(0, 1000, (1, tokens), dtype=np.int64)
        inner = min(10, args.repeat)
        rows[tokens] = timing.medians_ms(
            {k: (lambda s=sess, f={"input_ids": ids}: s.run(None, f)) for k, sess in sessions.items()},
            rounds=-(-args.repeat // inner), inner=inner, settle=0.05)
    base1, base64 = rows[1]["original (ORT)"], rows[64]["original (ORT)"]
    print("\n| model | 1 token ms | speed-up | 64 tokens ms | speed-up | rel err (1 token) |")
    print("|---|---|---|---|---|---|")
    for k in sessions:
        print(f"| {k} | {rows[1][k]:.3f} | {base1 / rows[1][k]:.2f}x | {rows[64][k]:.3f} | "
              f"{base64 / rows[64][k]:.2f}x | {errs[k]:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
