"""The shim of a ``--target cuda`` artifact on a machine without a GPU.

It must load (no CUDA library is linked: the driver is opened at first use), register its
CPU kernels, carry the fatbin, and fail a CUDA launch with a clear message instead of
crashing. The launch path itself ran on an H100 through the same harness
(bench/bench_cuda.py); ONNX Runtime's CUDA EP could not be installed there.
"""

from __future__ import annotations

import ctypes
import json
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import fffc
import fffc.runtime
from fffc.codegen.build import build_kernel_library
from fffc.codegen.schedules import family
from fffc.contract.config import sanitizers
from fffc.contract.kernels import SparseSpec
from fffc.package.native import build_shim
from fffc.package.toolchain import find_zig
from tests.fixtures.shim import relu_ffn_model

HARNESS = Path(__file__).with_name("cuda_harness.cc")
SPEC = SparseSpec("relu", "none", "exact", 32, 128, 32, True, True, False)


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return build_kernel_library([SPEC], family("cuda"), tmp_path_factory.mktemp("k"))


def test_cuda_library_keeps_portable_cpu_kernels(library) -> None:
    assert library.family == "cuda" and library.target["mcpu"] == "x86-64-v3"
    assert library.object_path.exists() and library.cuda.fatbin_path.exists()


@pytest.mark.parametrize("glibc", [None, pytest.param("2.28", marks=pytest.mark.skipif(
    find_zig() is None or bool(sanitizers()),
    reason="--glibc builds need zig (pip install 'fffc[glibc]'), no FFFC_SANITIZE"))])
def test_shim_links_no_cuda_and_embeds_the_fatbin(library, tmp_path: Path, glibc) -> None:
    """g++'s shim, and zig's for glibc 2.28 (its assembler embeds the fatbin as well)."""
    shim = build_shim(library, tmp_path, glibc=glibc)
    needed = subprocess.run(["readelf", "-d", str(shim)], capture_output=True, text=True).stdout
    assert "libcuda" not in needed and "libcudart" not in needed
    lines = subprocess.run(["nm", "-D", "--defined-only", str(shim)], capture_output=True,
                           text=True).stdout.splitlines()
    assert [ln.split()[-1] for ln in lines if " T " in ln] == ["RegisterCustomOps"]
    assert library.cuda.fatbin_path.read_bytes() in shim.read_bytes()


def test_launch_without_a_driver_is_an_error_not_a_crash(library, tmp_path: Path) -> None:
    lib = ctypes.CDLL(str(build_shim(library, tmp_path, extra_sources=(HARNESS,),
                                     name="libharness.so")))
    lib.fffc_test_launch.restype = ctypes.c_char_p
    lib.fffc_test_entry.restype = ctypes.c_char_p
    assert lib.fffc_test_num_entries() == len(library.cuda.variants)
    lo, hi = ctypes.c_longlong(), ctypes.c_longlong()
    assert lib.fffc_test_entry(0, ctypes.byref(lo), ctypes.byref(hi)) == b"decode1"
    assert (lo.value, hi.value) == (1, 1)
    names = (ctypes.c_char_p * 1)(b"X")
    ptrs = (ctypes.c_ulonglong * 1)(0)
    err = lib.fffc_test_launch(0, 1, names, ptrs, 1, None).decode()
    if Path("/dev/nvidia0").exists():
        pytest.skip("a GPU is present: the no-driver path does not apply")
    assert "libcuda.so.1" in err or "cuInit" in err


def test_compile_target_cuda_end_to_end(tmp_path: Path) -> None:
    """Artifact with fatbin + launch table; CUDA kernels checked by emulation at compile
    time; on a CPU-only machine the same artifact runs on the CPU EP through the shim."""
    path = relu_ffn_model(tmp_path / "m.onnx")
    result = fffc.compile(path, tmp_path / "m.fffc", fffc.CompileOptions(target="cuda"))
    art = result.artifact
    m = json.loads((art / "manifest.json").read_text())
    assert m["target"]["family"] == "cuda"
    assert m["cuda"]["fatbin_contents"] == ["elf sm_80", "ptx sm_90", "elf sm_90"]
    assert (art / m["cuda"]["fatbin"]).exists() and (art / m["cuda"]["source"]).exists()
    emulated = m["verification"]["cuda_kernels"]
    site = m["sites"][0]["name"]
    assert set(emulated[site]) == {"decode1", "decode4", "decode8", "decode16", "gemm"}
    assert all(r["ok"] for r in emulated[site].values())
    x = np.random.default_rng(5).standard_normal((2, 3, 32)).astype(np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    got = fffc.runtime.InferenceSession(art).run(None, {"x": x})
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-5)
