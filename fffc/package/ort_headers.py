"""ONNX Runtime's C API headers for building the shim, fetched once into a cache.

No PyPI package ships ``onnxruntime_c_api.h``; the npm registry package
``com.github.asus4.onnxruntime`` does (inside its iOS xcframework). It is fetched with the
ordinary npm client, only its headers are kept, and nothing third-party is committed.
``ORT_INCLUDE_DIR`` overrides all of this.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from ..contract.config import cache_dir, ort_include_dir_override
from ..contract.errors import PackagingError

NPM_PACKAGE = "com.github.asus4.onnxruntime"
NPM_VERSION = "0.4.9"  # carries ONNX Runtime's C API headers, API version 29
HEADER = "onnxruntime_c_api.h"
_SLICE = "ios-arm64_x86_64-simulator/onnxruntime.framework/Headers/"


def ensure_ort_headers() -> Path:
    """A directory containing ``onnxruntime_c_api.h``."""
    override = ort_include_dir_override()
    if override is not None:
        if not (override / HEADER).exists():
            raise PackagingError(f"ORT_INCLUDE_DIR has no {HEADER}", path=override)
        return override
    dest = cache_dir() / "ort-headers" / f"{NPM_PACKAGE}-{NPM_VERSION}"
    if (dest / HEADER).exists():
        return dest
    npm = shutil.which("npm")
    if npm is None:
        raise PackagingError(f"npm not found: it fetches ONNX Runtime's C API headers "
                             f"({NPM_PACKAGE}); install npm or set ORT_INCLUDE_DIR")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        proc = subprocess.run([npm, "pack", f"{NPM_PACKAGE}@{NPM_VERSION}", "--silent",
                               "--pack-destination", tmp], capture_output=True, text=True)
        tgz = next(Path(tmp).glob("*.tgz"), None)
        if proc.returncode != 0 or tgz is None:
            first = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise PackagingError(f"npm pack {NPM_PACKAGE}@{NPM_VERSION} failed: {first[0]}; "
                                 "set ORT_INCLUDE_DIR to a directory with the headers instead")
        staged = Path(tmp) / "headers"
        staged.mkdir()
        with tarfile.open(tgz) as tar:
            for member in tar.getmembers():
                if member.isfile() and _SLICE in member.name and member.name.endswith(".h"):
                    member.name = Path(member.name).name
                    tar.extract(member, staged, filter="data")
        if not (staged / HEADER).exists():
            raise PackagingError(f"{NPM_PACKAGE}@{NPM_VERSION} has no {HEADER}")
        try:
            staged.rename(dest)  # atomic: a concurrent build sees all headers or none
        except OSError:
            if not (dest / HEADER).exists():
                raise
    return dest
