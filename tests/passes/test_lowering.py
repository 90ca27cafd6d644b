"""Lowering: each site kind's lowering, dispatched by the mode registry; SparseFFN for every
mode from one path (inputs, layouts and fallback function from the mode's entry), with a
token dispatch; sites left as they were; ``site_inputs`` gives what the op node is given."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from fffc import passes
from fffc.contract.kinds import Branch, Decision, SiteKind
from fffc.contract.lowering import Masks, SiteLowering
from fffc.contract.modes import MODES, Behaviour, mode
from fffc.contract.ops import DOMAIN, SPARSE_FFN
from fffc.passes.lowering import AS_IT_WAS
from fffc.verify import reference
from tests.fixtures.graphs import D, F, dense_ffn, detect, gated_ffn, rand, run, x_probe


def _lower_and_check(m: onnx.ModelProto, exact: bool = True) -> onnx.ModelProto:
    model, sites = detect(m)
    passes.lower(model, {s.name: SiteLowering(Decision.EXACT if exact else Decision.DENSE)
                         for s in sites})
    out = ir.serde.serialize_model(model)
    onnx.checker.check_model(out)
    x = x_probe()
    np.testing.assert_allclose(run(out, x), run(m, x), rtol=1e-5, atol=1e-5)
    return out


def _initializers(m: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}


def _sparse_node(m: onnx.ModelProto) -> onnx.NodeProto:
    nodes = list(m.graph.node)
    for n in m.graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                nodes += list(a.g.node)
    (node,) = [n for n in nodes if n.domain == DOMAIN and n.op_type == "SparseFFN"]
    return node


@pytest.mark.parametrize("model", [dense_ffn("relu"), dense_ffn("relu", b2=False),
                                   gated_ffn("relu", True), gated_ffn("relu", False, True)])
def test_exact_lowering_emits_sparse_ffn_with_fallback_function(model):
    out = _lower_and_check(model, exact=True)
    nodes = [n for n in out.graph.node if n.domain == DOMAIN]
    assert len(nodes) == 1 and nodes[0].op_type == "SparseFFN"
    funcs = {(f.domain, f.name, f.overload) for f in out.functions}
    assert (DOMAIN, "SparseFFN", nodes[0].overload) in funcs
    assert not any(o.domain.startswith("ai.fffc.canon") for o in out.opset_import)


@pytest.mark.parametrize("model", [dense_ffn("relu"), gated_ffn("relu", True)])
def test_token_dispatch_runs_sparse_up_to_the_limit_and_dense_beyond(model):
    """``max_tokens``: If(Size(X) <= limit·d) { SparseFFN } else { the dense FFN }."""
    lowered, sites = detect(model)
    passes.lower(lowered, {s.name: SiteLowering(Decision.EXACT, max_tokens=4) for s in sites})
    out = ir.serde.serialize_model(lowered)
    onnx.checker.check_model(out)
    (dispatch,) = [n for n in out.graph.node if n.op_type == "If"]
    then_g, else_g = (onnx.helper.get_attribute_value(a) for a in dispatch.attribute)
    assert [n.op_type for n in then_g.node] == ["SparseFFN"] and then_g.node[0].domain == DOMAIN
    assert all(n.domain == "" for n in else_g.node) and "MatMul" in {n.op_type for n in else_g.node}
    limit = next(n for n in out.graph.node if n.op_type == "Constant")
    assert onnx.numpy_helper.to_array(limit.attribute[0].t) == 4 * D
    for tokens in (1, 4, 5, 12):  # both branches, in stock ORT (fallback function)
        x = rand(1, tokens, D)
        np.testing.assert_allclose(run(out, x), run(model, x), rtol=1e-5, atol=1e-5)


def test_gated_lowering_stores_up_projection_row_per_neuron():
    out = _lower_and_check(gated_ffn("relu", True), exact=True)
    node = next(n for n in out.graph.node if n.domain == DOMAIN)
    inits = {i.name: i for i in out.graph.initializer}
    assert list(inits[node.input[5]].dims) == [F, D]  # WU is [d_ff, d_in]


def test_dense_lowering_restores_standard_ops():
    out = _lower_and_check(dense_ffn("gelu"), exact=False)
    assert all(n.domain == "" for n in out.graph.node) and not out.functions


def test_marker_without_a_plan_stays_as_it_was():
    m = dense_ffn("relu")
    model, _ = detect(m)
    passes.lower(model, {})
    out = ir.serde.serialize_model(model)
    assert all(n.domain == "" for n in out.graph.node) and not out.functions
    x = x_probe()
    np.testing.assert_allclose(run(out, x), run(m, x), rtol=1e-5, atol=1e-5)


def test_lowering_is_deterministic():
    m = gated_ffn("relu", True)
    a = _lower_and_check(m).SerializeToString()
    b = _lower_and_check(m).SerializeToString()
    assert a == b


def test_every_decision_has_a_lowering_for_every_kind_it_applies_to():
    """A rewriting decision is lowered by its registered behaviour; any other decision
    leaves a site as it was, which every kind knows how to do."""
    for entry in MODES.values():
        if entry.rewrites:
            assert callable(entry.behaviour(Behaviour.LOWER)) and entry.kinds
        else:
            assert not entry.kinds
    assert set(AS_IT_WAS) == set(SiteKind)


def _site(model_proto, decision: Decision, **planned):
    model, (site,) = detect(model_proto)
    site.decision = decision
    for k, v in planned.items():
        setattr(site, k, v)
    return model, site


MASKED = {  # decision, model, the site's planned parameters (literal)
    "teal-dense-centered": (Decision.TEAL, lambda: dense_ffn("relu"),
                            {"thresholds": (0.3, 0.2),
                             "centers": (rand(D, scale=0.1), rand(F, scale=0.1))}),
    "teal-gated-hidden-center": (Decision.TEAL, lambda: gated_ffn("relu", True),
                                 {"thresholds": (0.3, 0.05),
                                  "centers": (None, rand(F, scale=0.05))}),
    "cats-gated": (Decision.CATS, lambda: gated_ffn("silu", False), {"thresholds": (-1.0, 0.1)}),
    "predictor-dense": (Decision.PREDICTOR, lambda: dense_ffn("relu"),
                        {"predictor_arrays": (rand(D, 4), rand(4, F), rand(F))}),
    "predictor-gated": (Decision.PREDICTOR, lambda: gated_ffn("relu", True),
                        {"predictor_arrays": (rand(D, 4), rand(4, F), rand(F))}),
}
OVERLOADS = {"teal-dense-centered": "relu_none_b1b2xchc_teal",
             "teal-gated-hidden-center": "relu_relu_b2wuhc_teal",
             "cats-gated": "silu_none_wu_cats", "predictor-dense": "relu_none_b1b2_predictor",
             "predictor-gated": "relu_relu_wu_predictor"}


def _reference(decision: Decision, site, x: np.ndarray, w: dict) -> np.ndarray:
    act = {"activation_name": site.activation, "up_activation": site.up_activation}
    if decision is Decision.TEAL:
        return reference.teal_ffn(x, w["W1"], w.get("B1"), w["W2"], w.get("B2"), w.get("WU"),
                                  thresholds=w["TH"], xc=w.get("XC"), hc=w.get("HC"), **act)
    if decision is Decision.CATS:
        return reference.cats_ffn(x, w["W1"], w.get("B1"), w["W2"], w.get("B2"), w["WU"],
                                  thresholds=w["TH"], **act)
    return reference.predictor_ffn(x, w["W1"], w.get("B1"), w["W2"], w.get("B2"), w.get("WU"),
                                   w["PA"], w["PB"], w["PC"], **act)


@pytest.mark.parametrize("case", list(MASKED))
@pytest.mark.parametrize("max_tokens, beyond", [(0, Branch.ORIGINAL), (3, Branch.ORIGINAL),
                                                (3, Branch.MASKED)])
def test_masked_modes_lower_to_their_reference(case, max_tokens, beyond):
    """SparseFFN of each masked mode (its fallback function in stock ORT, behind a token
    dispatch or not) and the site left as it was with the same masks (standard ops) both
    compute the mode's NumPy reference on the op's inputs; past a token dispatch's bound the
    original FFN runs (the model as given), or with ``Branch.MASKED`` the masked one; the
    node is given exactly ``site_inputs``."""
    decision, build, planned = MASKED[case]
    m = build()
    model, site = _site(m, decision, **planned)
    w = passes.site_inputs(model, site)
    masks = mode(decision).masks(site)
    lowered = ir.serde.deserialize_model(ir.serde.serialize_model(model))
    passes.lower(lowered, {site.name: SiteLowering(decision, masks, max_tokens, beyond)})
    out = ir.serde.serialize_model(lowered)
    onnx.checker.check_model(out)
    node = _sparse_node(out)
    assert node.overload == OVERLOADS[case]
    names = [a.name for a in SPARSE_FFN.inputs]
    inits = _initializers(out)
    given = {names[i]: inits[v] for i, v in enumerate(node.input) if v and v in inits}
    assert sorted(given) == sorted(w)
    for k, v in w.items():
        np.testing.assert_array_equal(given[k], v, err_msg=k)
    as_it_was = ir.serde.deserialize_model(ir.serde.serialize_model(model))
    passes.lower(as_it_was, {site.name: SiteLowering(Decision.DENSE, masks)})
    for tokens in (1, 5):  # 2 and 10 tokens: either side of the bound
        x = rand(2, tokens, D)
        masked = _reference(decision, site, x, w)
        kernel = max_tokens == 0 or 2 * tokens <= max_tokens
        want = masked if kernel or beyond is Branch.MASKED else run(m, x)
        np.testing.assert_allclose(run(out, x), want, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(run(as_it_was, x), masked, rtol=1e-4, atol=1e-5)
        assert not np.allclose(run(m, x), masked, rtol=1e-3, atol=1e-3)  # the masks matter


def test_site_inputs_are_in_the_ops_layout_with_the_plans_parameters():
    """Checked against the model's own initializers: W1, WU row per neuron where the mode
    says so, TH from the thresholds, PA/PB/PC as planned, XC/HC with B1/B2 += their share."""
    m = gated_ffn("relu", True)
    init = _initializers(m)
    model, site = _site(m, Decision.EXACT)
    w = passes.site_inputs(model, site)
    assert sorted(w) == ["W1", "W2", "WU"]
    np.testing.assert_array_equal(w["W1"], init["Wg"])
    np.testing.assert_array_equal(w["WU"], init["Wu"].T)
    site.decision, site.thresholds = Decision.CATS, (-1.0, 0.25)
    w = passes.site_inputs(model, site)
    np.testing.assert_array_equal(w["TH"], np.array([-1.0, 0.25], np.float32))
    np.testing.assert_array_equal(w["WU"], init["Wu"].T)
    pa, pb, pc = rand(D, 3), rand(3, F), rand(F)
    site.decision, site.thresholds, site.predictor_arrays = Decision.PREDICTOR, None, (pa, pb, pc)
    w = passes.site_inputs(model, site)
    np.testing.assert_array_equal(w["W1"], init["Wg"].T)
    for k, v in zip(("PA", "PB", "PC"), (pa, pb, pc), strict=True):
        np.testing.assert_array_equal(w[k], v)
    site.decision = Decision.TEAL  # teal reads WU per input channel: as the graph has it
    site.thresholds, site.centers = (0.1, 0.2), (None, rand(F))
    w = passes.site_inputs(model, site)
    np.testing.assert_array_equal(w["WU"], init["Wu"])
    np.testing.assert_array_equal(w["TH"], np.array([0.1, 0.2], np.float32))
    np.testing.assert_allclose(w["B2"], site.centers[1].astype(np.float64) @ init["Wd"],
                               rtol=1e-6, atol=1e-6)
    assert "B1" not in w and "XC" not in w

    m = dense_ffn("relu")
    init = _initializers(m)
    model, site = _site(m, Decision.TEAL, thresholds=(0.1, -1.0),
                        centers=(rand(D), None))
    w = passes.site_inputs(model, site)
    np.testing.assert_array_equal(w["XC"], site.centers[0])
    np.testing.assert_allclose(w["B1"], init["b1"] + site.centers[0].astype(np.float64)
                               @ init["W1"], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(w["B2"], init["b2"])
    assert "HC" not in w
    assert sorted(passes.site_inputs(model, site, Decision.DENSE)) == ["B1", "B2", "W1", "W2"]


def test_a_decision_for_another_kind_is_refused():
    model, (site,) = detect(dense_ffn("relu"))
    with pytest.raises(ValueError, match="decision tree does not apply"):
        passes.lower(model, {site.name: SiteLowering(Decision.TREE)})


def test_a_masked_mode_without_its_parameters_is_refused():
    model, (site,) = detect(dense_ffn("relu"))
    with pytest.raises(ValueError, match="mode teal needs its parameters"):
        passes.lower(model, {site.name: SiteLowering(Decision.TEAL)})


def test_a_gated_input_center_is_refused():
    model, (site,) = detect(gated_ffn("relu", True))
    masks = Masks(input=0.1, hidden=0.1, centers=(rand(D), None))
    with pytest.raises(ValueError, match="gated FFN's input has no center"):
        passes.lower(model, {site.name: SiteLowering(Decision.TEAL, masks)})


@pytest.mark.torch
def test_merged_weights_are_added_only_when_asked(tmp_path):
    from fffc import pipeline
    from fffc.contract.structure import merged_weight
    from tests.fixtures.structured_exports import export_structured

    path = export_structured("blockdense", "dynamo18", tmp_path / "m.onnx", form="bmm",
                             activation="silu", bias=True)
    a = pipeline.analyze(path)
    name = a.sites[0].name
    passes.lower(a.working, {name: SiteLowering(Decision.STRUCTURED, merged_max_tokens=0)})
    node = next(n for n in a.working.graph if n.op_type == "StructuredFFN")
    assert len([v for v in node.inputs if v is not None]) == 7  # X, A1, U1, B1, A2, U2, B2
    assert node.attributes["merged_max_tokens"].value == 0

    b = pipeline.analyze(path)
    passes.lower(b.working, {name: SiteLowering(Decision.STRUCTURED, merged_max_tokens=8)})
    node = next(n for n in b.working.graph if n.op_type == "StructuredFFN")
    m1, m2 = node.inputs[7], node.inputs[8]
    c = pipeline.analyze(path)
    w = passes.site_inputs(c.working, c.sites[0])
    np.testing.assert_allclose(m1.const_value.numpy(), merged_weight(w["A1"], w["U1"]),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m2.const_value.numpy(), merged_weight(w["A2"], w["U2"]),
                               rtol=1e-5, atol=1e-6)
    assert node.attributes["merged_max_tokens"].value == 8
