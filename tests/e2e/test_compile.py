"""End to end: compile real exports, run the artifact with and without the shim.

The artifact must equal the original model in ONNX Runtime with the fffc kernels
(shim registered) and without fffc at all (fallback functions), on inputs other than
the probes used at compile time.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import fffc
import fffc.runtime
from fffc.contract.ops import DOMAIN

CASES = [
    ("llama", "drelu", "dynamo20", False),
    ("llama", "relu", "torchscript17", True),
    ("bert", "relu", "torchscript17", False),
    ("gpt2", "relu", "dynamo18", True),
    ("bert", "relu", "dynamo20_noopt", False),
]


def _fffc_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """ai.fffc nodes of a graph and its If branches (sites behind a token dispatch)."""
    out = []
    for n in graph.node:
        if n.domain == DOMAIN:
            out.append(n)
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                out += _fffc_nodes(a.g)
    return out


def _equals_original(path, artifact, token_counts) -> None:
    """The artifact (with its shim) computes what the original model does at each count of
    tokens of a [1, tokens, 16] input ``x``, whichever branch serves that count."""
    original = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    sess = fffc.runtime.InferenceSession(artifact)
    for tokens in token_counts:
        x = np.random.default_rng(tokens).standard_normal((1, tokens, 16)).astype(np.float32)
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], original.run(None, {"x": x})[0],
                                   rtol=1e-4, atol=1e-5)


def _feed(path, batch: int, seq: int, seed: int) -> dict:
    from fffc.verify.feeds import probe_inputs

    return probe_inputs(onnx.load(str(path)), batch, seq, seed, count=1)[0]


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_compiled_export_matches_original(case, export_model, tmp_path):
    path = export_model(*case)
    result = fffc.compile(path, tmp_path / "out.fffc", fffc.CompileOptions(target="x86"))
    art = result.artifact
    manifest = json.loads((art / "manifest.json").read_text())
    assert [s["decision"] for s in manifest["sites"]] == ["exact", "exact"]
    assert manifest["verification"]["model_with_shim"]["ok"]
    assert (art / manifest["shim"]).exists() and (art / manifest["kernels"]["object"]).exists()
    model = onnx.load(str(art / "model.onnx"))
    assert len(_fffc_nodes(model.graph)) == 2
    dispatch = [s["dispatch"] for s in manifest["sites"]]  # the x86 table: kernel 1..2
    assert all(d["basis"] == "table" and [b["branch"] for b in d["branches"]]
               == ["kernel", "original"] and d["branches"][0]["max_tokens"] > 0 for d in dispatch)
    assert sum(n.op_type == "If" for n in model.graph.node) == 2  # token dispatch per site

    original = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with_shim = fffc.runtime.InferenceSession(art)
    stock = ort.InferenceSession(str(art / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch, seq, seed in ((1, 1, 11), (3, 5, 12), (2, 33, 13)):
        feed = _feed(path, batch, seq, seed)
        want = original.run(None, feed)
        for sess in (with_shim, stock):
            for got, ref in zip(sess.run(None, feed), want, strict=True):
                np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.slow
def test_example_model_compiles_deterministically(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
    from build_example_model import build_example_model

    model = build_example_model(tmp_path / "ex.onnx")
    a = fffc.compile(model, tmp_path / "a.fffc").artifact
    b = fffc.compile(model, tmp_path / "b.fffc").artifact
    assert (a / "model.onnx").read_bytes() == (b / "model.onnx").read_bytes()
    sites = json.loads((a / "manifest.json").read_text())["sites"]
    assert [s["decision"] for s in sites] == ["exact"] * len(sites) and len(sites) == 3


@pytest.mark.slow
def test_cross_cpu_artifact_is_checked_with_a_host_build(tmp_path):
    """Kernels for a CPU this host cannot run are compared through a host build of them."""
    from fffc.codegen.build import host_can_run
    from tests.fixtures.graphs import dense_ffn

    candidates = ("znver5", "znver3", "sapphirerapids", "skylake-avx512")
    foreign = [c for c in candidates
               if not host_can_run({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": c})]
    if not foreign:
        pytest.skip("this host runs code for every candidate CPU")
    path = tmp_path / "m.onnx"
    onnx.save(dense_ffn("relu"), str(path))
    art = fffc.compile(path, tmp_path / "x.fffc", fffc.CompileOptions(mcpu=foreign[0])).artifact
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["target"]["tvm"]["mcpu"] == foreign[0]
    assert "host build" in manifest["verification"]["kernels_checked_on"]
    assert manifest["verification"]["kernels"] and all(
        k["ok"] for k in manifest["verification"]["kernels"].values())


def test_output_in_a_new_directory(tmp_path):
    from tests.fixtures.graphs import dense_ffn

    path = tmp_path / "m.onnx"
    onnx.save(dense_ffn("relu"), str(path))
    out = tmp_path / "new" / "dir" / "m.fffc"
    art = fffc.compile(path, out).artifact
    assert art == out and (out / "manifest.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".fffc-")]


def test_site_failing_verification_is_left_as_it_was(tmp_path):
    """rtol 0: the fp32 original cannot equal the float64 reference, so no site is kept."""
    from tests.fixtures.graphs import dense_ffn

    path = tmp_path / "m.onnx"
    onnx.save(dense_ffn("relu"), str(path))
    result = fffc.compile(path, tmp_path / "m.fffc", fffc.CompileOptions(rtol=0.0))
    (site,) = result.sites
    assert site.decision == "dense" and site.reason.startswith("verification failed")
    model = onnx.load(str(result.artifact / "model.onnx"))
    assert not _fffc_nodes(model.graph)
    assert result.manifest["shim"] is None
    x = np.random.default_rng(0).standard_normal((2, 3, 16)).astype(np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    got = fffc.runtime.InferenceSession(result.artifact).run(None, {"x": x})
    np.testing.assert_array_equal(got[0], want[0])


def test_dump_writes_every_stage(tmp_path):
    from tests.fixtures.graphs import gated_ffn

    path = tmp_path / "m.onnx"
    onnx.save(gated_ffn("relu", True), str(path))
    dump = tmp_path / "dump"
    fffc.compile(path, tmp_path / "m.fffc", fffc.CompileOptions(dump_dir=dump))
    names = sorted(p.name for p in dump.iterdir())
    assert names == ["00-loaded.onnx", "01-canonical.onnx", "02-sites.json", "03-plan.json",
                     "04-verify.json", "05-rewritten.onnx", "06-kernels", "07-shim",
                     "08-check.json"]
    kernels = list((dump / "06-kernels").glob("fffc_sparse_ffn_*.py"))
    assert kernels and all("@T.prim_func" in k.read_text() for k in kernels)
    onnx.checker.check_model(onnx.load(str(dump / "05-rewritten.onnx")))
    # the dumped models run in a stock ONNX Runtime (the rewritten one on its fallbacks)
    x = np.random.default_rng(0).standard_normal((2, 8, 16)).astype(np.float32)
    outs = [ort.InferenceSession(str(dump / n)).run(None, {"x": x})[0]
            for n in ("00-loaded.onnx", "01-canonical.onnx", "05-rewritten.onnx")]
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outs[2], outs[0], rtol=1e-4, atol=1e-4)
    assert json.loads((dump / "02-sites.json").read_text())["sites"][0]["kind"] == "gated"


@pytest.mark.parametrize("limit", [0, 3])
def test_max_sparse_tokens_sets_the_dispatch(tmp_path, limit):
    """0: the kernel serves every call (no If); N: If(tokens <= N) { SparseFFN } else { the
    original }; the manifest says which branch serves which counts, and that the option set
    them."""
    from tests.fixtures.graphs import dense_ffn

    path = tmp_path / "m.onnx"
    onnx.save(dense_ffn("relu"), str(path))
    result = fffc.compile(path, tmp_path / "m.fffc", fffc.CompileOptions(max_sparse_tokens=limit))
    model = onnx.load(str(result.artifact / "model.onnx"))
    (site,) = result.manifest["sites"]
    kernel = {"branch": "kernel", "min_tokens": 1, "max_tokens": limit or None}
    rest = [{"branch": "original", "min_tokens": limit + 1, "max_tokens": None}] if limit else []
    assert site["dispatch"] == {"branches": [kernel, *rest], "basis": "option",
                                "note": "--max-sparse-tokens"}
    ifs = [n for n in model.graph.node if n.op_type == "If"]
    assert len(ifs) == (1 if limit else 0) and len(_fffc_nodes(model.graph)) == 1
    _equals_original(path, result.artifact, (1, 3, 4, 9))


def test_crossover_is_measured_on_this_machine(tmp_path):
    """--crossovers measured (the default outside the tests): the kernel and ONNX Runtime's
    original FFN timed at 1, 2, 4, ... tokens until the kernel lost; the bound is the prefix
    it won (what the numbers are is the machine's), recorded with the timings, and the
    artifact equals the original whichever branch serves."""
    from tests.fixtures.graphs import dense_ffn

    path = tmp_path / "m.onnx"
    onnx.save(dense_ffn("relu"), str(path))
    result = fffc.compile(path, tmp_path / "m.fffc", fffc.CompileOptions(crossovers="measured"))
    (site,) = result.manifest["sites"]
    d = site["dispatch"]
    assert d["basis"] == "measured"
    rows = d["timings"]
    assert [r["tokens"] for r in rows] == [1, 2, 4, 8, 16, 32, 64][:len(rows)]
    won = [r["kernel_ms"] < r["original_ms"] for r in rows]
    assert all(won[:-1])  # measured up to the first loss
    bound = None if all(won) else (rows[-2]["tokens"] if len(rows) > 1 else 0)
    kernel = [b for b in d["branches"] if b["branch"] == "kernel"]
    if bound == 0:
        assert site["decision"] == "dense" and not kernel
    else:
        assert site["decision"] == "exact" and kernel[0]["max_tokens"] == bound
    model = onnx.load(str(result.artifact / "model.onnx"))
    assert sum(n.op_type == "If" for n in model.graph.node) == (1 if bound else 0)
    _equals_original(path, result.artifact, (1, 2, 5, 70))
    # the manifest's timings, pinned: the same bounds, the same model, byte for byte
    again = fffc.compile(path, tmp_path / "again.fffc", fffc.CompileOptions(
        timings=result.artifact / "manifest.json"))
    (pinned,) = again.manifest["sites"]
    assert pinned["dispatch"] == {**d, "basis": "pinned"}
    assert ((again.artifact / "model.onnx").read_bytes()
            == (result.artifact / "model.onnx").read_bytes())


@pytest.mark.parametrize("won", [(False,), (True, True, False)])
def test_measured_bounds_shape_the_artifact(tmp_path, monkeypatch, won):
    """The measure stage's decisions, its timings replaced (what the machine measures is
    not the test's): the kernel beaten at 1 token leaves the site as it was — the reason
    given, the kernels built for it dropped, no shim; beaten at 4 tokens, the model is
    lowered again with If(tokens <= 2). Either way the artifact equals the original."""
    from fffc.contract.dispatch import Timing
    from fffc.stages import measure
    from tests.fixtures.graphs import dense_ffn

    timings = tuple(Timing(1 << i, 1.0, 2.0 if w else 0.5) for i, w in enumerate(won))
    monkeypatch.setattr(measure, "time_site", lambda *args, **kw: timings)
    path = tmp_path / "m.onnx"
    onnx.save(dense_ffn("relu"), str(path))
    result = fffc.compile(path, tmp_path / "m.fffc", fffc.CompileOptions(crossovers="measured"))
    (site,) = result.manifest["sites"]
    assert site["dispatch"]["basis"] == "measured"
    assert len(site["dispatch"]["timings"]) == len(won)
    model = onnx.load(str(result.artifact / "model.onnx"))
    if won[0]:
        assert site["decision"] == "exact"
        assert site["dispatch"]["branches"][0] == {"branch": "kernel", "min_tokens": 1,
                                                   "max_tokens": 2}
        assert [n.op_type for n in model.graph.node if n.op_type == "If"] == ["If"]
    else:
        assert site["decision"] == "dense" and "faster than the kernel at 1 token" in site["reason"]
        assert result.manifest["kernels"] is None and result.manifest["shim"] is None
        assert not list((result.artifact).glob("*.so")) and not _fffc_nodes(model.graph)
    _equals_original(path, result.artifact, (1, 2, 3, 9))


def test_a_site_that_cannot_be_timed_takes_the_table(tmp_path, monkeypatch):
    from fffc.stages import measure
    from tests.fixtures.graphs import dense_ffn

    def fails(*args, **kw):
        raise RuntimeError("no such node")

    monkeypatch.setattr(measure, "time_site", fails)
    path = tmp_path / "m.onnx"
    onnx.save(dense_ffn("relu"), str(path))
    result = fffc.compile(path, tmp_path / "m.fffc", fffc.CompileOptions(crossovers="measured"))
    (site,) = result.manifest["sites"]
    assert site["decision"] == "exact"
    assert site["dispatch"]["basis"] == "table" and "no such node" in site["dispatch"]["note"]
    assert site["dispatch"]["branches"][0]["max_tokens"] == 2  # the x86 table, exact dense
