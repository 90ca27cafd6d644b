"""runtime/CMakeLists.txt builds the shim of an artifact without Python, and the library it
builds computes what fffc's own build (fffc/native.py) computes.

The CMake build gets only what a C++ user has: the runtime sources, ONNX Runtime's and
apache-tvm-ffi's headers, the artifact's kernel object (and fatbin) and the kernel tables
``fffc compile --dump`` wrote.
"""

from __future__ import annotations

import importlib.resources
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import fffc
from fffc.package.native import _ffi_include
from fffc.package.ort_headers import ensure_ort_headers

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")]

D, F = 32, 128


def _dense_ffn(path: Path) -> Path:
    """Y = relu(X·W1 + b1)·W2 + b2, X [batch, seq, 32] (one exact site)."""
    rng = np.random.default_rng(0)
    inits = {"W1": rng.standard_normal((D, F)) / np.sqrt(D), "b1": np.full(F, -0.5),
             "W2": rng.standard_normal((F, D)) / np.sqrt(F), "b2": rng.standard_normal(D)}
    h = onnx.helper
    nodes = [h.make_node("MatMul", ["x", "W1"], ["a"]), h.make_node("Add", ["a", "b1"], ["b"]),
             h.make_node("Relu", ["b"], ["c"]), h.make_node("MatMul", ["c", "W2"], ["e"]),
             h.make_node("Add", ["e", "b2"], ["y"])]
    graph = h.make_graph(
        nodes, "ffn", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["b", "s", D])],
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["b", "s", D])],
        [onnx.numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _cmake_build(tmp: Path, art: Path, dump: Path, manifest: dict) -> Path:
    runtime = Path(str(importlib.resources.files("fffc.runtime")))
    args = [f"-DORT_INCLUDE_DIR={ensure_ort_headers()}", f"-DTVM_FFI_INCLUDE_DIR={_ffi_include()}",
            f"-DFFFC_KERNEL_OBJECT={art / manifest['kernels']['object']}",
            f"-DFFFC_KERNEL_TABLE={dump / '07-shim' / 'kernel_table.cc'}"]
    if manifest["cuda"]:
        args += ["-DFFFC_CUDA=ON", f"-DFFFC_CUDA_TABLE={dump / '07-shim' / 'cuda_table.cc'}",
                 f"-DFFFC_CUDA_FATBIN={art / manifest['cuda']['fatbin']}"]
    build = tmp / "build"
    for cmd in (["cmake", "-S", str(runtime), "-B", str(build), *args],
                ["cmake", "--build", str(build), "-j", "2"]):
        proc = subprocess.run(["nice", "-n", "10", *cmd], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return build / "libfffc_ops.so"


def _session(model: Path, shim: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.register_custom_ops_library(str(shim))
    return ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("target", ["x86", "cuda"])
def test_cmake_shim_equals_fffc_shim(tmp_path: Path, target: str) -> None:
    if target == "cuda" and shutil.which("nvcc") is None:
        pytest.skip("nvcc is needed to compile a --target cuda artifact")
    dump = tmp_path / "dump"
    art = fffc.compile(_dense_ffn(tmp_path / "m.onnx"), tmp_path / "m.fffc",
                       fffc.CompileOptions(target=target, dump_dir=dump)).artifact
    manifest = json.loads((art / "manifest.json").read_text())
    assert [s["decision"] for s in manifest["sites"]] == ["exact"]
    shim = _cmake_build(tmp_path, art, dump, manifest)

    symbols = subprocess.run(["nm", "-D", "--defined-only", str(shim)], capture_output=True,
                             text=True, check=True).stdout.split("\n")
    assert [ln.split()[-1] for ln in symbols if " T " in ln] == ["RegisterCustomOps"]
    needed = subprocess.run(["readelf", "-d", str(shim)], capture_output=True, text=True).stdout
    assert "libstdc++" not in needed and "libcuda" not in needed
    if manifest["cuda"]:
        assert (art / manifest["cuda"]["fatbin"]).read_bytes() in shim.read_bytes()

    # without the fallback functions only a registered kernel can run the ai.fffc node
    bare = onnx.load(str(art / "model.onnx"))
    del bare.functions[:]
    model = tmp_path / "bare.onnx"
    onnx.save(bare, str(model))
    with pytest.raises(Exception, match="SparseFFN"):
        ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    theirs, ours = _session(model, shim), _session(model, art / manifest["shim"])
    rng = np.random.default_rng(7)
    for batch, seq in ((1, 1), (1, 2), (2, 3), (1, 17)):
        x = rng.standard_normal((batch, seq, D)).astype(np.float32)
        np.testing.assert_array_equal(theirs.run(None, {"x": x})[0], ours.run(None, {"x": x})[0])
