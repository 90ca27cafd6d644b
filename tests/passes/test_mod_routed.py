"""mod_routed: the top-k, causal and masked forms of Mixture-of-Depths (``fffc.torch.MoDFFN``
from both exporters, hand-written graphs) become one routed site; the combine is read off
the graph (paper's x + w·Δ and the residual-block (1+w)·x + w·Δ), not assumed; the lowered
model equals the export as standard ops and as the RoutedFFN fallback function. Regions
that are not a MoD around a dense FFN are refused with a reason."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from fffc import pipeline
from fffc.contract.kinds import Decision
from fffc.contract.lowering import SiteLowering
from fffc.passes import lower, mod_routed
from tests.fixtures.mod_graphs import handmade_mod, masked_mod

pytestmark = pytest.mark.torch
EXPORTERS = ("dynamo18", "dynamo_noopt", "torchscript17")
COMBINES = {"paper": ([1.0, 0.0], [0.0, 1.0]), "residual_block": ([1.0, 1.0], [0.0, 1.0])}


def _export(tmp_path, exporter: str, combine: str = "paper", **kw):
    from tests.fixtures.structured_exports import export_mod

    return export_mod(exporter, tmp_path / f"mod-{exporter}-{combine}.onnx", combine=combine,
                      **kw)


def _run(model, x: np.ndarray) -> np.ndarray:
    data = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("combine", list(COMBINES))
def test_mod_is_one_routed_site_with_the_combine_read_off(tmp_path, exporter, combine):
    path = _export(tmp_path, exporter, combine, capacity=0.25, seq=16)
    a = pipeline.analyze(path)
    assert [s.kind for s in a.sites] == ["routed"], [m.reason for m in a.near_misses]
    r = a.sites[0].routing
    assert (r["selection"], r["k"], r["router"]) == ("topk", 4, "raw")
    assert (r["x_coef"], r["delta_coef"]) == COMBINES[combine]
    assert (a.sites[0].d_model, a.sites[0].d_ff) == (64, 256)


@pytest.mark.parametrize("decision", ["dense", "routed"])
@pytest.mark.parametrize("exporter, combine", [("dynamo18", "residual_block"),
                                               ("torchscript17", "paper")])
def test_lowered_model_equals_the_export(tmp_path, exporter, combine, decision):
    path = _export(tmp_path, exporter, combine, capacity=0.25, seq=16)
    a = pipeline.analyze(path)
    lower(a.working, {a.sites[0].name: SiteLowering(Decision(decision))})
    model = ir.serde.serialize_model(a.working)
    onnx.checker.check_model(model, full_check=True)
    ops = {n.op_type for n in model.graph.node}
    assert ("RoutedFFN" in ops) == (decision == "routed")
    for b in (1, 3):
        x = np.random.default_rng(b).standard_normal((b, 16, 64)).astype(np.float32)
        np.testing.assert_allclose(_run(model, x), _run(str(path), x), rtol=1e-5, atol=1e-5)


K_FORMS = {  # k_form → (capacity attributes, k at S = 1, 16, 20, 33) with capacity 0.25
    "module": ({"scale": 0.25, "divisor": 0, "round": "trunc", "min": 1}, (1, 4, 5, 8)),
    "floordiv": ({"scale": 0.0, "divisor": 4, "round": "trunc", "min": 0}, (0, 4, 5, 8)),
    "ceil": ({"scale": 0.25, "divisor": 0, "round": "ceil", "min": 0}, (1, 4, 5, 9)),
}


@pytest.mark.parametrize("exporter", ["dynamo18", "dynamo_noopt"])
@pytest.mark.parametrize("k_form", list(K_FORMS))
def test_k_computed_from_the_sequence_length(tmp_path, exporter, k_form):
    """A dynamic sequence axis: TopK's k is computed in the graph (max(1, int(c·S)), S // q,
    ceil(c·S)); the site carries the rule, and the lowered op (its fallback function) equals
    the export at other lengths, k included."""
    from fffc.contract.ops import capacity_k

    path = _export(tmp_path, exporter, capacity=0.25, seq=16, k_form=k_form)
    a = pipeline.analyze(path)
    assert [s.kind for s in a.sites] == ["routed"], [m.reason for m in a.near_misses]
    cap, ks = K_FORMS[k_form]
    assert a.sites[0].routing["capacity"] == cap
    assert [capacity_k(s, 0, cap) for s in (1, 16, 20, 33)] == list(ks)
    lower(a.working, {a.sites[0].name: SiteLowering(Decision.ROUTED)})
    model = ir.serde.serialize_model(a.working)
    onnx.checker.check_model(model, full_check=True)
    assert "RoutedFFN" in {n.op_type for n in model.graph.node}
    for s in (4, 16, 20, 33):
        x = np.random.default_rng(s).standard_normal((2, s, 64)).astype(np.float32)
        np.testing.assert_allclose(_run(model, x), _run(str(path), x), rtol=1e-5, atol=1e-5,
                                   err_msg=f"S={s}")


def test_overwrite_combine_is_read_as_written(tmp_path):
    """ScatterElements without reduction writes r·(x+Δ) over the selected tokens: the site
    says (0 + 1·w)·x + (0 + 1·w)·Δ, and the routed lowering computes exactly that."""
    path = handmade_mod(tmp_path, reduction="none", combine="overwrite_residual")
    a = pipeline.analyze(path)
    assert [s.kind for s in a.sites] == ["routed"]
    r = a.sites[0].routing
    assert (r["x_coef"], r["delta_coef"]) == ([0.0, 1.0], [0.0, 1.0])
    lower(a.working, {a.sites[0].name: SiteLowering(Decision.ROUTED)})
    x = np.random.default_rng(0).standard_normal((2, 6, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(ir.serde.serialize_model(a.working), x), _run(path, x),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant, reason", [
    ({"combine": "squared"}, "router weight enters twice"),
    ({"combine": "softmax"}, "product of two computed tensors"),
    ({"k_from_shape": "Sub"}, "TopK's k is computed by Sub"),
    ({"gather_other": True}, "FFN input"),
])
def test_refused_regions_say_why(tmp_path, variant, reason):
    path = handmade_mod(tmp_path, **variant)
    a = pipeline.analyze(path)
    assert [s.kind for s in a.sites] != ["routed"]
    reasons = [m.reason for m in a.near_misses]
    assert any(reason in m and "Mixture-of-Depths" in m for m in reasons), reasons
    # the top-k rule's own result at the scatter: failed, with that reason
    (root,) = [n for n in a.working.graph if mod_routed.mod_topk_rule.takes(n)]
    result = mod_routed.mod_topk_rule.check(root)
    assert not result and reason in result.reason


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("combine", list(COMBINES))
def test_causal_form_is_a_threshold_site(tmp_path, exporter, combine):
    """``forward_causal`` (a token takes the FFN iff sigmoid(aux(x)) > 0.5; NonZero, GatherND,
    ScatterND) becomes a routed site with selection threshold and the aux score as its
    selection score; lowered, it equals the export at any batch and length, 1 token
    included."""
    path = _export(tmp_path, exporter, combine, causal=True)
    a = pipeline.analyze(path)
    assert [s.kind for s in a.sites] == ["routed"], [m.reason for m in a.near_misses]
    r = a.sites[0].routing
    assert (r["selection"], r["selection_score"], r["selection_bias"]) == ("threshold", True,
                                                                          True)
    # forward_causal adds the update to xs: x + (xs + u) over the selected rows, written over
    want_x, want_d = COMBINES[combine]
    assert (r["x_coef"], r["delta_coef"]) == (want_x, want_d)
    for decision in ("dense", "routed"):
        b = pipeline.analyze(path)
        lower(b.working, {b.sites[0].name: SiteLowering(Decision(decision))})
        model = ir.serde.serialize_model(b.working)
        onnx.checker.check_model(model, full_check=True)
        for shape in ((1, 1, 64), (3, 9, 64), (2, 33, 64)):
            x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
            np.testing.assert_allclose(_run(model, x), _run(str(path), x), rtol=1e-5, atol=1e-5)


def test_double_residual_combine_is_read_as_written(tmp_path):
    """sramshetty's form: the block returns x_sel + w·Δ and scatter_add adds it to x: the
    selected tokens get 2·x + w·Δ. fffc reports that (it is what the graph computes) and
    the routed lowering equals the export."""
    path = handmade_mod(tmp_path, combine="double_residual")
    a = pipeline.analyze(path)
    r = a.sites[0].routing
    assert (r["x_coef"], r["delta_coef"]) == ([2.0, 0.0], [0.0, 1.0])
    lower(a.working, {a.sites[0].name: SiteLowering(Decision.ROUTED)})
    x = np.random.default_rng(1).standard_normal((3, 6, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(ir.serde.serialize_model(a.working), x), _run(path, x),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("form", ["sub", "sigmoid", "raw"])
def test_masked_form_runs_the_ffn_on_kept_tokens_only(tmp_path, form):
    """y = x + 1[score > t]·FFN(x) computes the FFN for every token; read as a causal
    selection (threshold folded into the selection bias), the FFN runs on the kept ones
    only, and the lowering equals the export."""
    path = masked_mod(tmp_path, form)
    a = pipeline.analyze(path)
    assert [s.kind for s in a.sites] == ["routed"], [m.reason for m in a.near_misses]
    r = a.sites[0].routing
    assert r["selection"] == "threshold" and r["selection_score"] and r["selection_bias"]
    assert (r["x_coef"], r["delta_coef"]) == ([1.0, 0.0], [1.0, 0.0])
    lower(a.working, {a.sites[0].name: SiteLowering(Decision.ROUTED)})
    model = ir.serde.serialize_model(a.working)
    for shape in ((1, 1, 8), (4, 9, 8)):
        x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(_run(model, x), _run(path, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("exporter", ["dynamo18", "torchscript17"])
@pytest.mark.parametrize("causal", [False, True])
def test_prenorm_block_is_routed_with_its_layer_norm(tmp_path, exporter, causal):
    """A pre-norm routed block (LayerNorm → FFN on the selected tokens, the residual the raw
    x): the LayerNorm joins the op (LS, LB, epsilon), and the lowering equals the export."""
    path = _export(tmp_path, exporter, "paper", causal=causal, prenorm=True)
    a = pipeline.analyze(path)
    assert [s.kind for s in a.sites] == ["routed"], [m.reason for m in a.near_misses]
    assert a.sites[0].routing["layer_norm_epsilon"] == pytest.approx(1e-5)
    for decision in ("dense", "routed"):
        b = pipeline.analyze(path)
        lower(b.working, {b.sites[0].name: SiteLowering(Decision(decision))})
        model = ir.serde.serialize_model(b.working)
        onnx.checker.check_model(model, full_check=True)
        x = np.random.default_rng(3).standard_normal((2, 16, 64)).astype(np.float32)
        np.testing.assert_allclose(_run(model, x), _run(str(path), x), rtol=1e-5, atol=1e-5)
