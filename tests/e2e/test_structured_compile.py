"""End to end: structured MLP exports compile to ``ai.fffc::StructuredFFN`` with
x86 kernels; the artifact equals the export with the shim (structured path, pre-merged
path) and without it (fallback function), on token counts the probes did not use."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import fffc
import fffc.runtime

pytestmark = [pytest.mark.torch, pytest.mark.slow]


def _export(tmp_path, kind: str, exporter: str, **kw):
    from tests.fixtures.structured_exports import export_structured

    return export_structured(kind, exporter, tmp_path / f"{kind}-{exporter}.onnx", **kw)


def _original(path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


TOKENS = [(1, 1), (1, 3), (2, 7), (3, 101)]  # 1, 3, 14 and 303 tokens: every variant


@pytest.mark.parametrize("kind, exporter, form, activation", [
    ("lowrank", "torchscript17", "bmm", "gelu"),
    ("blockdense", "dynamo18", "bmm", "silu"),
    ("blockdense", "dynamo_noopt", "einsum", "relu"),
    ("blockshuffle", "dynamo_noopt", "bmm", "gelu"),
    ("blockshuffle", "torchscript17", "bmm", "silu"),
    ("blockshuffle", "dynamo18", "einsum", "gelu"),
])
def test_structured_artifact_matches_the_export(tmp_path, kind, exporter, form, activation):
    path = _export(tmp_path, kind, exporter, form=form, activation=activation)
    result = fffc.compile(path, tmp_path / "out.fffc",
                          fffc.CompileOptions(target="x86", merged_max_tokens=0))
    manifest = json.loads((result.artifact / "manifest.json").read_text())
    (site,) = manifest["sites"]
    assert site["decision"] == "structured", site["reason"]
    assert site["structure"]["merged_max_tokens"] == 0
    assert manifest["verification"]["model_with_shim"]["ok"]
    model = onnx.load(str(result.artifact / "model.onnx"))
    assert [n.op_type for n in model.graph.node if n.domain == "ai.fffc"] == ["StructuredFFN"]
    with_shim = fffc.runtime.InferenceSession(result.artifact)
    stock = ort.InferenceSession(str(result.artifact / "model.onnx"),
                                 providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    for b, s in TOKENS:
        x = rng.standard_normal((b, s, 64)).astype(np.float32)
        want = _original(path, x)
        np.testing.assert_allclose(with_shim.run(None, {"x": x})[0], want, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(stock.run(None, {"x": x})[0], want, rtol=1e-5, atol=1e-6)


def test_merged_path_serves_few_tokens_and_only_those(tmp_path):
    """With --merged-max-tokens 4 the kernel reads M1/M2 up to 4 tokens and the factors
    beyond: poisoning the merged weights changes exactly the calls of up to 4 tokens."""
    path = _export(tmp_path, "blockdense", "torchscript17", activation="gelu")
    result = fffc.compile(path, tmp_path / "out.fffc",
                          fffc.CompileOptions(target="x86", merged_max_tokens=4))
    manifest = json.loads((result.artifact / "manifest.json").read_text())
    assert manifest["sites"][0]["structure"]["merged_max_tokens"] == 4
    assert manifest["verification"]["model_with_shim"]["ok"]
    specs = {e["spec"]["mode"] for e in manifest["kernels"]["entries"]}
    assert specs == {"b4r32u_b4r32u", "b1r256_b1r64"}  # structured and merged kernels
    rng = np.random.default_rng(5)
    xs = {n: rng.standard_normal((1, n, 64)).astype(np.float32) for n in (1, 4, 5, 40)}
    sess = fffc.runtime.InferenceSession(result.artifact)
    for x in xs.values():
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], _original(path, x), rtol=1e-4,
                                   atol=1e-5)

    model = onnx.load(str(result.artifact / "model.onnx"))
    for init in model.graph.initializer:
        if init.name.endswith("__merged_1"):
            init.CopyFrom(onnx.numpy_helper.from_array(
                np.zeros(tuple(init.dims), np.float32), init.name))
    onnx.save(model, str(result.artifact / "model.onnx"))
    with pytest.raises(fffc.runtime.ArtifactError, match=r"model\.onnx"):
        fffc.runtime.InferenceSession(result.artifact)
    poisoned = fffc.runtime.InferenceSession(result.artifact, check_files=False)
    for n, x in xs.items():
        got, want = poisoned.run(None, {"x": x})[0], _original(path, x)
        assert np.allclose(got, want, rtol=1e-4, atol=1e-5) == (n > 4), n


def test_crossover_is_measured_and_recorded(tmp_path):
    """Without --merged-max-tokens the compile times both paths on the site's weights; the
    choice and the timings land in the manifest (what the numbers are is the machine's)."""
    path = _export(tmp_path, "lowrank", "dynamo18")
    result = fffc.compile(path, tmp_path / "out.fffc",
                          fffc.CompileOptions(target="x86", crossovers="measured"))
    st = json.loads((result.artifact / "manifest.json").read_text())["sites"][0]["structure"]
    rows = st["crossover"]["timings"]
    assert [r["tokens"] for r in rows] == [1, 2, 4, 8, 16, 32, 64, 128]
    assert all(r["structured_ms"] > 0 and r["merged_ms"] > 0 for r in rows)
    faster = [r["tokens"] for r in rows if r["merged_ms"] < 0.95 * r["structured_ms"]]
    prefix = 0
    for r in rows:
        if r["tokens"] not in faster:
            break
        prefix = r["tokens"]
    assert st["merged_max_tokens"] == prefix


def _pin(tmp_path, name: str, last: int | None) -> Path:
    """Timings that say the kernel beat the original up to ``last`` tokens (None: never)."""
    rows = [{"tokens": n, "kernel_ms": 1.0,
             "original_ms": 2.0 if last is not None and n <= last else 0.5}
            for n in (1, 2, 4, 8, 16)]
    path = tmp_path / "timings.json"
    path.write_text(json.dumps({name: rows}))
    return path


def test_site_whose_original_is_faster_is_left_with_the_reason(tmp_path):
    """Pinned timings where ONNX Runtime ran the structured export faster at every count:
    the site stays as it was (no StructuredFFN, no kernels), the manifest says why."""
    path = _export(tmp_path, "lowrank", "dynamo18")
    (site,) = fffc.inspect(path).sites
    result = fffc.compile(path, tmp_path / "out.fffc", fffc.CompileOptions(
        target="x86", merged_max_tokens=0, timings=_pin(tmp_path, site.name, None)))
    (got,) = json.loads((result.artifact / "manifest.json").read_text())["sites"]
    assert got["decision"] == "dense"
    assert "faster than the kernel at 1 token" in got["reason"]
    assert got["dispatch"]["branches"] == [
        {"branch": "original", "min_tokens": 1, "max_tokens": None}]
    assert got["dispatch"]["basis"] == "pinned"
    model = onnx.load(str(result.artifact / "model.onnx"))
    assert not any(n.domain == "ai.fffc" for n in model.graph.node)
    assert result.manifest["kernels"] is None
    x = np.random.default_rng(0).standard_normal((2, 3, 64)).astype(np.float32)
    sess = fffc.runtime.InferenceSession(result.artifact)
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], _original(path, x), rtol=1e-5,
                               atol=1e-6)


def test_site_whose_original_is_faster_beyond_a_count_is_dispatched(tmp_path):
    """Pinned timings where the kernel won up to 4 tokens: If(tokens <= 4) runs the
    StructuredFFN, the original projections beyond; both equal the export."""
    path = _export(tmp_path, "lowrank", "dynamo18")
    (site,) = fffc.inspect(path).sites
    result = fffc.compile(path, tmp_path / "out.fffc", fffc.CompileOptions(
        target="x86", merged_max_tokens=0, timings=_pin(tmp_path, site.name, 4)))
    (got,) = result.manifest["sites"]
    assert got["decision"] == "structured"
    assert got["dispatch"]["branches"] == [
        {"branch": "kernel", "min_tokens": 1, "max_tokens": 4},
        {"branch": "original", "min_tokens": 5, "max_tokens": None}]
    model = onnx.load(str(result.artifact / "model.onnx"))
    (dispatch,) = [n for n in model.graph.node if n.op_type == "If"]
    then = next(a.g for a in dispatch.attribute if a.name == "then_branch")
    assert [n.op_type for n in then.node] == ["StructuredFFN"]
    sess = fffc.runtime.InferenceSession(result.artifact)
    rng = np.random.default_rng(1)
    for b, s in TOKENS:
        x = rng.standard_normal((b, s, 64)).astype(np.float32)
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], _original(path, x), rtol=1e-4,
                                   atol=1e-5)


def test_structured_on_cuda_target_builds_cuda_kernels(tmp_path):
    """--target cuda: StructuredFFN with CUDA kernels (checked by emulation at compile time;
    run through the shim's CUDA path in tests/runtime/test_cuda_fake_driver.py), no merged
    path; the stock-ORT fallback still equals the export."""
    path = _export(tmp_path, "lowrank", "dynamo18")
    result = fffc.compile(path, tmp_path / "cuda.fffc", fffc.CompileOptions(target="cuda"))
    manifest = json.loads((result.artifact / "manifest.json").read_text())
    (site,) = manifest["sites"]
    assert site["decision"] == "structured", site["reason"]
    assert site["structure"]["merged_max_tokens"] == 0
    cuda = manifest["verification"]["cuda_kernels"][site["name"]]
    assert cuda and all(r["ok"] for r in cuda.values()), cuda
    assert {v["spec_key"] for v in manifest["cuda"]["variants"]}
    x = np.random.default_rng(0).standard_normal((2, 3, 64)).astype(np.float32)
    stock = ort.InferenceSession(str(result.artifact / "model.onnx"),
                                 providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(stock.run(None, {"x": x})[0], _original(path, x), rtol=1e-5,
                               atol=1e-6)
    with pytest.raises(fffc.contract.errors.UsageError, match="no pre-merged path"):
        fffc.compile(path, tmp_path / "cuda2.fffc",
                     fffc.CompileOptions(target="cuda", merged_max_tokens=4))


def test_negative_merged_max_tokens_is_a_usage_error(tmp_path):
    path = _export(tmp_path, "lowrank", "dynamo18")
    with pytest.raises(fffc.contract.errors.UsageError, match="merged-max-tokens"):
        fffc.compile(path, tmp_path / "o", fffc.CompileOptions(merged_max_tokens=-1))
