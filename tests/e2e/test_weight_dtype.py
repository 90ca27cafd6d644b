"""``--target cuda --weight-dtype fp16|bf16`` artifacts on a machine without a GPU.

The model stores the FFN weight matrices in 16 bits (the kernels' own format); in a stock
ONNX Runtime the fallback functions widen them; with the shim on the CPU EP the x86 kernels
run on float32 copies made once per weight. All of it equals the model with rounded weights
(what fffc verifies the artifact against), and the distance from the float32 original is
reported in the manifest. The CUDA kernels themselves run in the CPU emulator at compile time
and through the shim's CUDA path in tests/runtime/test_cuda_fake_driver.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import fffc

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
    from build_example_model import build_example_model

    return build_example_model(tmp_path_factory.mktemp("ex") / "ex.onnx", d_model=64, d_ff=256)


def _weight_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer if len(t.dims) == 2)


@pytest.mark.parametrize("dtype, tag, elem, bound", [
    ("float16", "f16", onnx.TensorProto.FLOAT16, 3e-3),
    ("bfloat16", "bf16", onnx.TensorProto.BFLOAT16, 2e-2)])
def test_16bit_artifact_on_the_cpu(example, tmp_path, dtype, tag, elem, bound) -> None:
    result = fffc.compile(example, tmp_path / "a.fffc",
                          fffc.CompileOptions(target="cuda", weight_dtype=dtype))
    art, manifest = result.artifact, result.manifest
    assert [s.decision for s in result.sites] == ["exact"] * 3  # 2 ReLU (W1, W2), 1 dReLU (3)
    model = onnx.load(str(art / "model.onnx"))
    narrow = [t for t in model.graph.initializer if t.data_type == elem]
    assert len(narrow) == 7 and all(t.name.endswith(f"__{tag}") for t in narrow)
    assert not [t for t in model.graph.initializer  # no float32 copy of a weight matrix left
                if len(t.dims) == 2 and t.data_type == onnx.TensorProto.FLOAT]
    assert _weight_bytes(model) * 2 == _weight_bytes(onnx.load(str(example)))
    assert {f.overload.rsplit("_", 1)[1] for f in model.functions} == {tag}
    assert manifest["options"]["weight_dtype"] == dtype
    dev = manifest["verification"]["deviation_from_original"]["max_rel"]
    assert 0 < dev < bound  # rounding costs something, at 16-bit precision
    assert all(0 < s.deviation < bound for s in result.sites)

    opts = ort.SessionOptions()
    opts.register_custom_ops_library(str(art / "libfffc_ops.so"))
    opts.enable_profiling = True
    opts.profile_file_prefix = str(tmp_path / "prof")
    shim = ort.InferenceSession(str(art / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    stock = ort.InferenceSession(str(art / "model.onnx"), providers=["CPUExecutionProvider"])
    original = ort.InferenceSession(str(example), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    for shape in [(1, 1, 64), (1, 6, 64), (3, 50, 64)]:  # the kernels, and the dense branch
        feed = {"x": rng.standard_normal(shape).astype(np.float32)}
        got, ref = shim.run(None, feed)[0], stock.run(None, feed)[0]
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
        want = original.run(None, feed)[0]
        assert np.abs(got - want).max() / np.abs(want).max() < bound
    events = json.loads(Path(shim.end_profiling()).read_text())
    ran = {(e["args"]["op_name"], e["args"]["provider"]) for e in events if e.get("cat") == "Node"}
    assert ("SparseFFN", "CPUExecutionProvider") in ran  # the x86 kernels, not the fallback
