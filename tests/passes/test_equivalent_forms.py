"""Detection survives equivalent rewrites: every form of ``tests/fixtures/equivalent_forms``
(dense, gated and MoD FFNs with reshapes before or after the activation, constant or
computed reshape targets, Gemm/Transpose/Einsum projections, tokens flattened or kept; and
torch modules written those ways, from both exporters) is one site with the shapes and
activations the form was built with; canonicalization leaves every model computing what it
computed; a subset is lowered and compiled and equals the original."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from fffc import passes
from fffc.contract.kinds import Decision, SiteKind
from fffc.contract.lowering import SiteLowering
from tests.fixtures.equivalent_forms import (
    TORCH_FORMS,
    D,
    Form,
    S,
    build,
    covering_forms,
    export_torch_form,
    near_miss_form,
    torch_truth,
    truth,
)

FORMS = covering_forms()


def _run(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]
                                ).run(None, {"x": x})[0]


def _probe(b: int = 3, s: int = S) -> np.ndarray:
    return np.random.default_rng(b).standard_normal((b, s, D)).astype(np.float32)


def _fields(site) -> tuple:
    return (site.kind, site.activation, site.up_activation, site.d_model, site.d_ff,
            site.has_b1, site.has_b2)


def _want(t) -> tuple:
    return (t.kind, t.activation, t.up_activation, t.d_model, t.d_ff, t.has_b1, t.has_b2)


def test_the_covering_set_covers_every_pair_and_stays_small():
    dense = [f for f in FORMS if f.family is SiteKind.DENSE]
    for a, b in [("act", "proj"), ("proj", "layout"), ("layout", "side"), ("layout", "shape"),
                 ("proj", "shape"), ("act", "layout")]:
        seen = {(getattr(f, a), getattr(f, b)) for f in dense}
        assert len(seen) == len({getattr(f, a) for f in dense}) * len({getattr(f, b) for f in dense})
    assert 40 <= len(FORMS) <= 80


@pytest.mark.parametrize("form", FORMS, ids=lambda f: f.id)
def test_every_form_is_one_site_with_the_truth(form: Form):
    m = build(form)
    model = ir.serde.deserialize_model(m)
    passes.canonicalize(model)
    canonical = ir.serde.deserialize_model(ir.serde.serialize_model(model))
    passes.legalize(canonical)
    out = ir.serde.serialize_model(canonical)
    onnx.checker.check_model(out)
    for b in (1, 3):  # canonicalization changed nothing (standard ops, any batch)
        np.testing.assert_allclose(_run(out, _probe(b)), _run(m, _probe(b)), rtol=1e-5, atol=1e-5)
    sites = passes.detect(model)
    want = truth(form)
    assert [_fields(s) for s in sites] == [_want(want)], [r.reason for r in passes.near_misses(model)]
    if want.routing is not None:
        r = sites[0].routing
        assert {k: r[k] for k in want.routing} == want.routing
    assert passes.near_misses(model) == []


def test_computed_reshape_targets_become_constants():
    form = Form(SiteKind.DENSE, "relu", layout="roundtrip", side="after", shape="gather")
    model = ir.serde.deserialize_model(build(form))
    passes.canonicalize(model)
    ops = [n.op_type for n in model.graph]
    assert "Shape" not in ops and "Concat" not in ops and "Gather" not in ops, ops
    # the reshape pair around the activation is gone; the flatten and unflatten stay
    assert ops.count("Reshape") == 2, ops


def test_einsum_with_a_constant_weight_becomes_matmul():
    model = ir.serde.deserialize_model(build(Form(SiteKind.GATED, "silu", proj="einsum_t")))
    passes.canonicalize(model)
    ops = [n.op_type for n in model.graph]
    assert "Einsum" not in ops and ops.count("MatMul") == 3, ops


def test_a_reshape_not_proven_stays():
    """A target read from another tensor's shape (which need not match) is not resolved."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Shape", ["other"], ["s"]),
             helper.make_node("Reshape", ["x", "s"], ["r"]),
             helper.make_node("Relu", ["r"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 6]),
                     helper.make_tensor_value_info("other", TensorProto.FLOAT, ["P", "Q"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.zeros(1, np.float32), "unused")])
    model = ir.serde.deserialize_model(helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18)]))
    passes.canonicalize(model)
    assert "Shape" in [n.op_type for n in model.graph]


def test_an_ffn_shaped_form_no_rule_takes_is_a_near_miss():
    model = ir.serde.deserialize_model(near_miss_form())
    passes.canonicalize(model)
    assert passes.detect(model) == []
    misses = passes.near_misses(model)
    assert len(misses) == 1 and misses[0].reason


@pytest.mark.torch
@pytest.mark.parametrize("exporter", ["dynamo18", "torchscript17"])
@pytest.mark.parametrize("name", list(TORCH_FORMS))
def test_torch_forms_from_both_exporters(name, exporter):
    pytest.importorskip("torch")
    path = export_torch_form(name, exporter)
    a = passes_analysis(path)
    want = torch_truth(name)
    assert [_fields(s) for s in a.sites] == [_want(want)], [m.reason for m in a.near_misses]
    if want.routing is not None:
        assert {k: a.sites[0].routing[k] for k in want.routing} == want.routing
    assert a.near_misses == []


def passes_analysis(path):
    from fffc.pipeline import analyze

    return analyze(path)


@pytest.mark.parametrize("form", [
    Form(SiteKind.DENSE, "relu", proj="gemm", layout="split", side="after", shape="unsqueeze"),
    Form(SiteKind.GATED, "drelu", proj="einsum", layout="mid", side="after", shape="slice"),
    Form(SiteKind.GATED, "relu", proj="transpose", layout="flat", shape="gather", packed=True),
], ids=lambda f: f.id)
def test_exact_lowering_equals_the_original(form):
    m = build(form)
    model = ir.serde.deserialize_model(m)
    passes.canonicalize(model)
    sites = passes.detect(model)
    passes.lower(model, {s.name: SiteLowering(Decision.EXACT) for s in sites})
    out = ir.serde.serialize_model(model)
    onnx.checker.check_model(out)
    assert any(n.op_type == "SparseFFN" for n in out.graph.node)
    for b in (1, 3):  # the op's fallback function, in a stock ONNX Runtime
        np.testing.assert_allclose(_run(out, _probe(b)), _run(m, _probe(b)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("form", [
    Form(SiteKind.DENSE, "relu", proj="einsum_t", layout="roundtrip", shape="gather"),
    Form(SiteKind.ROUTED, "gelu", proj="gemm", layout="flat", shape="gather", router="view"),
], ids=lambda f: f.id)
def test_compiled_form_equals_the_original(form, tmp_path):
    """x86 compile (crossovers from the table): the artifact with the shim equals the form."""
    import fffc
    import fffc.runtime

    m = build(form)
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path))
    result = fffc.compile(path, tmp_path / "m.fffc")
    assert [s.kind for s in result.sites] == [truth(form).kind]
    sess = fffc.runtime.InferenceSession(result.artifact)
    for b in (1, 3):
        x = _probe(b)
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], _run(m, x), rtol=1e-4, atol=1e-4)


def test_a_weight_expanded_beyond_x_batch_stays():
    """x [1, S, D] times W expanded to 4 batches is 4 products, not one: left as it is."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((1, D, 8)).astype(np.float32)
    nodes = [helper.make_node("Expand", ["w", "to"], ["we"]),
             helper.make_node("MatMul", ["x", "we"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, S, D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"),
         numpy_helper.from_array(np.array([4, D, 8], np.int64), "to")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model = ir.serde.deserialize_model(m)
    passes.canonicalize(model)
    out = ir.serde.serialize_model(model)
    x = _probe(1)
    assert _run(out, x).shape == (4, S, 8)
    np.testing.assert_array_equal(_run(out, x), _run(m, x))
