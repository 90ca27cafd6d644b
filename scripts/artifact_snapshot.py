"""The artifacts of a catalog of models, reduced to what a refactoring must not change.

Compiles the example model and test exports (every site kind; exact, teal, cats and
predictor sites; x86, arm and cuda targets; 16-bit weights) with ``fffc.compile`` and
records, per job, the SHA-256 of the artifact's ``model.onnx`` and the manifest's sites
(timings removed: a structured site's measured crossover is pinned with
``merged_max_tokens``, and every kernel's crossover comes from its target's table,
``FFFC_CROSSOVERS=table``). Only the public API is used, so two checkouts can be compared:

    python scripts/artifact_snapshot.py models DIR        # build the models (needs torch)
    python scripts/artifact_snapshot.py save OUT.json --models DIR
    python scripts/artifact_snapshot.py compare A.json B.json
    python scripts/artifact_snapshot.py check --base REV  # all of it, REV in a worktree

Each side takes a few minutes per job on 2 cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# job: (model file, compile options, calibration (fffc.calibrate keywords) or None)
JOBS = {
    "example-x86": ("example.onnx", {}, None),
    "example-x86-always": ("example.onnx", {"max_sparse_tokens": 0}, None),
    "example-arm": ("example.onnx", {"target": "arm"}, None),
    "example-cuda": ("example.onnx", {"target": "cuda"}, None),
    "example-cuda-fp16": ("example.onnx", {"target": "cuda", "weight_dtype": "float16"}, None),
    "bert-relu": ("bert-relu.onnx", {}, None),
    "llama-drelu": ("llama-drelu.onnx", {}, None),
    "llama-silu-dense": ("llama-default.onnx", {}, None),
    "gpt2-teal": ("gpt2-default.onnx", {"budget": "sparsity=0.4"}, {}),
    "llama-teal": ("llama-default.onnx", {"budget": "sparsity=0.4"}, {}),
    "llama-cats": ("llama-default.onnx", {"budget": "cats=0.5"}, {}),
    "bert-predictor": ("bert-default.onnx", {"budget": "predictor"}, {"predictor_rank": 8}),
    "lowrank": ("lowrank.onnx", {"merged_max_tokens": 4}, None),
    "blockdense-cuda": ("blockdense.onnx", {"target": "cuda"}, None),
    "mod-topk": ("mod-topk.onnx", {}, None),
    "mod-causal-cuda": ("mod-causal.onnx", {"target": "cuda"}, None),
    "fff": ("fff.onnx", {}, None),
    "fff-cuda": ("fff.onnx", {"target": "cuda"}, None),
}


def build_models(folder: Path) -> None:
    """The catalog's models, written with this checkout's test fixtures."""
    import torch

    sys.path.insert(0, str(ROOT))
    from examples.build_example_model import build_example_model
    from fffc.torch import FastFeedForward
    from tests.fixtures import models, structured_exports

    folder.mkdir(parents=True, exist_ok=True)
    build_example_model(folder / "example.onnx")
    for name, (family, act, exporter) in {
            "bert-relu": ("bert", "relu", "dynamo20"), "llama-drelu": ("llama", "drelu",
                                                                      "torchscript17"),
            "llama-default": ("llama", "default", "dynamo20"),
            "gpt2-default": ("gpt2", "default", "torchscript17"),
            "bert-default": ("bert", "default", "dynamo18")}.items():
        (folder / f"{name}.onnx").write_bytes(models.export_model(family, act, exporter)
                                              .read_bytes())
    structured_exports.export_structured("lowrank", "dynamo18", folder / "lowrank.onnx")
    structured_exports.export_structured("blockdense", "torchscript17",
                                         folder / "blockdense.onnx")
    structured_exports.export_mod("torchscript17", folder / "mod-topk.onnx")
    structured_exports.export_mod("dynamo18", folder / "mod-causal.onnx", causal=True)
    torch.manual_seed(0)
    fff = FastFeedForward(32, 32, 4, 2).eval()
    structured_exports.export(fff, torch.randn(2, 7, 32), "torchscript17", folder / "fff.onnx")


def _feeds(model: Path, folder: Path, count: int = 6, seq: int = 12) -> Path:
    """Calibration feeds: short sequences of token ids (or floats) for the model's inputs."""
    import numpy as np
    import onnx

    folder.mkdir()
    proto = onnx.load(str(model), load_external_data=False)
    rng = np.random.default_rng(0)
    for i in range(count):
        feed = {}
        for vi in proto.graph.input:
            t = vi.type.tensor_type
            dims = [d.dim_value or (1 if j == 0 else seq)
                    for j, d in enumerate(t.shape.dim)]
            if t.elem_type == onnx.TensorProto.INT64:
                feed[vi.name] = rng.integers(0, 64, size=dims).astype(np.int64)
            else:
                feed[vi.name] = rng.standard_normal(dims).astype(np.float32)
        np.savez(folder / f"{i}.npz", **feed)
    return folder


def _sites(manifest: dict) -> list[dict]:
    out = []
    for s in manifest["sites"]:
        s = dict(s)
        if s.get("structure"):
            s["structure"] = {k: v for k, v in s["structure"].items() if k != "crossover"}
        out.append(s)
    return out


def save(models: Path, out: Path, only: str = "") -> int:
    os.environ.setdefault("FFFC_CROSSOVERS", "table")  # no timings: the same artifact each run
    import fffc

    records = {}
    with tempfile.TemporaryDirectory(prefix="fffc-artifacts-") as tmp:
        for job, (model, options, calibration) in JOBS.items():
            if only and only not in job:
                continue
            work = Path(tmp) / job
            work.mkdir()
            src = work / model
            src.write_bytes((models / model).read_bytes())
            opts = dict(options)
            if calibration is not None:
                calib = work / "m.calib.json"
                fffc.calibrate(src, _feeds(src, work / "feeds"), **calibration, output=calib)
                opts["calibration"] = calib
            result = fffc.compile(src, work / "out.fffc", fffc.CompileOptions(**opts))
            body = (result.artifact / "model.onnx").read_bytes()
            records[job] = {"model_onnx_sha256": hashlib.sha256(body).hexdigest(),
                            "sites": _sites(result.manifest)}
            print(f"{job}: {len(result.sites)} site(s), model.onnx "
                  f"{records[job]['model_onnx_sha256'][:12]}", file=sys.stderr)
    out.write_text(json.dumps(records, indent=1, sort_keys=True, default=str))
    return 0


def compare(a: Path, b: Path) -> int:
    old, new = json.loads(a.read_text()), json.loads(b.read_text())
    bad = 0
    for job in sorted(set(old) | set(new)):
        if job not in old or job not in new:
            print(f"{job}: only in {'the first' if job in old else 'the second'}")
            bad += 1
            continue
        same_model = old[job]["model_onnx_sha256"] == new[job]["model_onnx_sha256"]
        same_sites = old[job]["sites"] == new[job]["sites"]
        print(f"{job}: model.onnx {'same' if same_model else 'DIFFERS'}, sites "
              f"{'same' if same_sites else 'DIFFER'}")
        bad += not (same_model and same_sites)
    return 1 if bad else 0


def check(base: str, only: str = "") -> int:
    with tempfile.TemporaryDirectory(prefix="fffc-artifact-check-") as tmp:
        tmp = Path(tmp)
        build_models(tmp / "models")
        tree = tmp / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), base],
                       check=True, capture_output=True)
        try:
            # the installed fffc maps fffc.passes and fffc.runtime to folders beside fffc/
            for sub in ("passes", "runtime"):
                if not (tree / "fffc" / sub).exists():
                    (tree / "fffc" / sub).symlink_to(tree / sub)
            env = dict(os.environ, PYTHONPATH=str(tree))
            subprocess.run([sys.executable, __file__, "save", str(tmp / "base.json"),
                            "--models", str(tmp / "models"), "--only", only],
                           check=True, env=env, cwd=tmp)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                           check=False, capture_output=True)
        save(tmp / "models", tmp / "head.json", only)
        return compare(tmp / "base.json", tmp / "head.json")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("models").add_argument("folder", type=Path)
    s = sub.add_parser("save")
    s.add_argument("out", type=Path)
    s.add_argument("--models", type=Path, required=True)
    s.add_argument("--only", default="", help="only the jobs whose name contains this")
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    k = sub.add_parser("check")
    k.add_argument("--base", required=True)
    k.add_argument("--only", default="")
    args = p.parse_args(argv)
    if args.cmd == "models":
        build_models(args.folder)
        return 0
    if args.cmd == "save":
        return save(args.models, args.out, args.only)
    if args.cmd == "compare":
        return compare(args.a, args.b)
    return check(args.base, args.only)


if __name__ == "__main__":
    raise SystemExit(main())
