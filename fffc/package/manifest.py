"""The artifact's manifest.json: what was compiled, from what, for what, and how it was
verified."""

from __future__ import annotations

import importlib.metadata as md
from dataclasses import replace
from pathlib import Path

from ..codegen.cuda_build import fatbin_entries, fatbin_ptx_isa
from ..codegen.cuda_toolkit import newest
from ..contract.config import CompileOptions
from ..contract.cuda import driver_requirement
from ..contract.sites import NearMiss, Site
from ..contract.targets import TargetRequest
from ..frontend import sha256_file
from ..runtime.integrity import FILES_FORMAT, FILES_KEY, digests
from .contract_header import ORT_API_VERSION
from .layout import MANIFEST, Layout
from .native import glibc_requirement

FORMAT = FILES_FORMAT  # 2: every file's digest listed (``files``)
DISTRIBUTIONS = ("fffc", "onnx", "onnxruntime", "onnxscript", "onnx-ir", "apache-tvm",
                 "apache-tvm-ffi", "numpy")


def versions() -> dict[str, str]:
    out = {}
    for dist in DISTRIBUTIONS:
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def manifest(*, source: Path, options: CompileOptions, target: TargetRequest, library,
             shim: Path | None, staging: Path, layout: Layout, sites: list[Site],
             near_misses: list[NearMiss],
             canonical_rewrites: dict[str, int], report: dict, feeds,
             calibration: dict | None) -> dict:
    """The manifest of an artifact built in ``staging`` (every file written: ``files``
    lists their digests)."""
    opts = replace(options, dump_dir=None)
    out = {
        "format": FORMAT,
        "versions": versions(),
        "source": {"path": str(source.resolve()), "sha256": sha256_file(source)},
        "target": {"family": target.family, "mcpu": target.mcpu,
                   **({"host": target.host} if target.host else {}),
                   "tvm": library.target if library else None},
        **layout.to_json(shim is not None),
        "requires": None if shim is None else {
            "os": "linux", "arch": (library.target.get("mtriple") or "x86_64").split("-")[0],
            "glibc": glibc_requirement(shim),
            "onnxruntime": f">= 1.17 (C API {ORT_API_VERSION}); built and checked with "
                           f"{versions()['onnxruntime']}",
            "cuda": None if library.cuda is None else _driver(library.cuda),
        },
        "cuda": None if library is None or library.cuda is None else _cuda(library.cuda,
                                                                           staging),
        "kernels": None if library is None else {
            "object": str(library.object_path.relative_to(staging)),
            "entries": [{"symbol": k.c_symbol, "variant": k.variant, "min_tokens": k.min_tokens,
                         "max_tokens": k.max_tokens, "args": k.arg_names,
                         "spec": k.spec.row.__dict__ | {"key": k.spec.key}} for k in library.kernels],
        },
        "options": {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
                    for k, v in opts.__dict__.items() if k not in ("dump_dir", "max_memory")},
        "canonical_rewrites": canonical_rewrites,
        "sites": [s.to_json() for s in sites],
        "near_misses": [m.to_json() for m in near_misses],
        "verification": report | {"probes": [{k: list(v.shape) for k, v in f.items()}
                                             for f in feeds]},
    }
    if calibration is not None:
        out["calibration"] = calibration
    out[FILES_KEY] = digests(staging, frozenset({MANIFEST}))
    return out


def _driver(cuda) -> dict:
    """The NVIDIA driver the fatbin needs: from its compiler's CUDA version (the cubins) and
    the PTX ISA version of its PTX, read from the fatbin."""
    return driver_requirement(cuda.cuda, cuda.archs, newest(cuda.archs),
                              fatbin_ptx_isa(cuda.fatbin_path))


def _cuda(cuda, staging: Path) -> dict:
    """Where the GPU code is and how each variant is launched (the shim's table, readable)."""
    return {
        "archs": list(cuda.archs),
        "toolkit": cuda.toolkit,
        "fatbin_contents": [f"{kind} {arch}" for kind, arch in fatbin_entries(cuda.fatbin_path)],
        "fatbin": str(cuda.fatbin_path.relative_to(staging)),
        "source": str(cuda.source_path.relative_to(staging)),
        "variants": [{
            "spec_key": v.spec.key, "variant": v.variant, "min_tokens": v.min_tokens,
            "max_tokens": v.max_tokens, "workspace_floats_per_token": dict(v.workspace),
            "launches": [{"kernel": ln.kernel, "params": list(ln.params),
                          "grid": [f"({g.a}*N+{g.b})//{g.c}" for g in ln.grid],
                          "block": list(ln.block)} for ln in v.launches],
        } for v in cuda.variants],
    }
