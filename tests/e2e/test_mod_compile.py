"""End to end: a Mixture-of-Depths FFN (static top-k export) compiles to
``ai.fffc::RoutedFFN`` with x86 kernels (routing, the FFN on the selected tokens, the
combine); the artifact equals the export with the shim and without it."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import fffc
import fffc.runtime

pytestmark = [pytest.mark.torch, pytest.mark.slow]


@pytest.mark.parametrize("exporter, combine, bias", [
    ("dynamo18", "paper", True),
    ("torchscript17", "residual_block", False),
])
def test_mod_artifact_matches_the_export(tmp_path, exporter, combine, bias):
    from tests.fixtures.structured_exports import export_mod

    path = export_mod(exporter, tmp_path / "mod.onnx", seq=32, capacity=0.125,
                      combine=combine, bias=bias)
    result = fffc.compile(path, tmp_path / "out.fffc", fffc.CompileOptions(target="x86"))
    manifest = json.loads((result.artifact / "manifest.json").read_text())
    (site,) = manifest["sites"]
    assert site["decision"] == "routed", site["reason"]
    assert site["routing"]["k"] == 4
    assert manifest["verification"]["model_with_shim"]["ok"]
    modes = {e["spec"]["mode"] for e in manifest["kernels"]["entries"]}
    assert modes == {"route_topk_k4_raw", "combine", "b1r256_b1r64"}
    model = onnx.load(str(result.artifact / "model.onnx"))
    assert [n.op_type for n in model.graph.node if n.domain == "ai.fffc"] == ["RoutedFFN"]
    original = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with_shim = fffc.runtime.InferenceSession(result.artifact)
    stock = ort.InferenceSession(str(result.artifact / "model.onnx"),
                                 providers=["CPUExecutionProvider"])
    for b in (1, 2, 5):
        x = np.random.default_rng(b).standard_normal((b, 32, 64)).astype(np.float32)
        x[0, 3] = x[0, 7]  # equal scores: TopK's tie rule (the lower index) must hold
        want = original.run(None, {"x": x})[0]
        np.testing.assert_allclose(with_shim.run(None, {"x": x})[0], want, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(stock.run(None, {"x": x})[0], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k_form", ["module", "floordiv"])
def test_dynamic_sequence_k_artifact_matches_the_export(tmp_path, k_form):
    """k computed from the sequence length in the graph: the shim computes it per call (the
    route kernel reads it), so every length routes the export's number of tokens."""
    from tests.fixtures.structured_exports import export_mod

    path = export_mod("dynamo18", tmp_path / "mod.onnx", seq=16, capacity=0.25, k_form=k_form)
    result = fffc.compile(path, tmp_path / "out.fffc", fffc.CompileOptions(target="x86"))
    manifest = json.loads((result.artifact / "manifest.json").read_text())
    (site,) = manifest["sites"]
    assert site["decision"] == "routed", site["reason"]
    assert "route_topk_kvar_raw" in {e["spec"]["mode"] for e in manifest["kernels"]["entries"]}
    original = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with_shim = fffc.runtime.InferenceSession(result.artifact)
    stock = ort.InferenceSession(str(result.artifact / "model.onnx"),
                                 providers=["CPUExecutionProvider"])
    for b, s in ((1, 1), (2, 3), (1, 16), (3, 21), (2, 64)):
        x = np.random.default_rng(s).standard_normal((b, s, 64)).astype(np.float32)
        want = original.run(None, {"x": x})[0]
        np.testing.assert_allclose(with_shim.run(None, {"x": x})[0], want, rtol=1e-4,
                                   atol=1e-5, err_msg=f"B={b} S={s}")
        np.testing.assert_allclose(stock.run(None, {"x": x})[0], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("exporter", ["dynamo18", "torchscript17"])
def test_causal_mod_artifact_matches_the_export(tmp_path, exporter):
    """The decode form: one token at a time (routed or not) and whole prompts."""
    from tests.fixtures.structured_exports import export_mod

    path = export_mod(exporter, tmp_path / "causal.onnx", causal=True)
    result = fffc.compile(path, tmp_path / "out.fffc", fffc.CompileOptions(target="x86"))
    manifest = json.loads((result.artifact / "manifest.json").read_text())
    (site,) = manifest["sites"]
    assert site["decision"] == "routed" and site["routing"]["selection"] == "threshold"
    original = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with_shim = fffc.runtime.InferenceSession(result.artifact)
    rng = np.random.default_rng(7)
    routed = skipped = 0
    for shape in [(1, 1, 64)] * 12 + [(2, 9, 64), (4, 50, 64)]:
        x = rng.standard_normal(shape).astype(np.float32)
        want = original.run(None, {"x": x})[0]
        got = with_shim.run(None, {"x": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        if shape[1] == 1:
            routed += int(not np.array_equal(want, x))
            skipped += int(np.array_equal(want, x))
    assert routed and skipped  # both decode paths ran: the FFN, and the router alone


def test_masked_mod_artifact_skips_the_ffn_for_masked_tokens(tmp_path):
    """Router-Tuning's masked form (every token runs the FFN in the export): the artifact
    runs it on the kept tokens only and equals the export."""
    from tests.fixtures.mod_graphs import masked_mod

    path = masked_mod(tmp_path, "sub")
    result = fffc.compile(path, tmp_path / "out.fffc", fffc.CompileOptions(target="x86"))
    (site,) = json.loads((result.artifact / "manifest.json").read_text())["sites"]
    assert site["decision"] == "routed" and site["rule"] == "mod_masked"
    original = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with_shim = fffc.runtime.InferenceSession(result.artifact)
    for shape in ((1, 1, 8), (2, 17, 8)):
        x = np.random.default_rng(shape[1]).standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(with_shim.run(None, {"x": x})[0],
                                   original.run(None, {"x": x})[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_prenorm_mod_artifact_matches_the_export(tmp_path, causal):
    """Pre-norm routed block: the routing kernel normalizes the gathered rows (LayerNorm)."""
    from tests.fixtures.structured_exports import export_mod

    path = export_mod("dynamo18", tmp_path / "m.onnx", causal=causal, prenorm=True)
    result = fffc.compile(path, tmp_path / "out.fffc", fffc.CompileOptions(target="x86"))
    manifest = json.loads((result.artifact / "manifest.json").read_text())
    assert [s["decision"] for s in manifest["sites"]] == ["routed"]
    assert any("_ln1e-05" in e["spec"]["mode"] for e in manifest["kernels"]["entries"])
    original = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with_shim = fffc.runtime.InferenceSession(result.artifact)
    for b in (1, 3):
        x = np.random.default_rng(b).standard_normal((b, 16, 64)).astype(np.float32)
        np.testing.assert_allclose(with_shim.run(None, {"x": x})[0],
                                   original.run(None, {"x": x})[0], rtol=1e-4, atol=1e-5)
