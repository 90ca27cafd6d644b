"""Mixture-of-Depths detection (issue 7): the static top-k form of ``fffc.torch.MoDFFN``
from both exporters becomes one routed site; the combine is read off the graph (paper's
x + w·Δ and the residual-block (1+w)·x + w·Δ), not assumed; the lowered model equals the
export as standard ops and as the RoutedFFN fallback function. Regions that are not a
top-k MoD around a dense FFN are refused with a reason."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fffc import pipeline
from fffc.contract.kinds import Decision
from fffc.contract.lowering import SiteLowering
from fffc.passes import lower

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
    from fffc.ops import capacity_k

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


def _handmade(tmp_path, *, reduction="add", combine="paper", k_from_shape: str = "",
              gather_other=False) -> str:
    """A MoD graph written by hand, to vary one piece at a time."""
    rng = np.random.default_rng(0)
    d, f, s = 8, 16, 6
    inits = {"wr": rng.standard_normal((d, 1)), "w1": rng.standard_normal((d, f)),
             "b1": rng.standard_normal(f), "w2": rng.standard_normal((f, d)),
             "b2": rng.standard_normal(d)}
    ints = {"k": np.array([2]), "axes": np.array([-1]), "ex": np.array([1, 1, d]),
            "other": np.array([0, 1])}
    nodes = [helper.make_node("MatMul", ["x", "wr"], ["r3"]),
             helper.make_node("Squeeze", ["r3", "axes"], ["r"])]
    if k_from_shape:
        nodes += [helper.make_node("Shape", ["x"], ["shp"]),
                  helper.make_node("Gather", ["shp", "one"], ["slen"], axis=0),
                  helper.make_node(k_from_shape, ["slen", "three"], ["kk"]),
                  helper.make_node("Reshape", ["kk", "axes1"], ["kdyn"])]
        ints.update(one=np.array(1), three=np.array(3), axes1=np.array([1]))
    nodes += [helper.make_node("TopK", ["r", "kdyn" if k_from_shape else "k"], ["tv", "ti"],
                               axis=1),
              helper.make_node("Unsqueeze", ["ti", "axes"], ["ti3"]),
              helper.make_node("Expand", ["ti3", "ex"], ["e"])]
    if gather_other:  # the FFN input is gathered at other indices than the scatter writes
        ints["zero"] = np.array(0)
        nodes += [helper.make_node("Add", ["ti3", "zero"], ["ti3o"]),
                  helper.make_node("Expand", ["ti3o", "ex"], ["e2"]),
                  helper.make_node("GatherElements", ["x", "e2"], ["xs"], axis=1)]
    else:
        nodes.append(helper.make_node("GatherElements", ["x", "e"], ["xs"], axis=1))
    nodes += [helper.make_node("GatherElements", ["r", "ti"], ["wg"], axis=1),
              helper.make_node("Unsqueeze", ["wg", "axes"], ["w"]),
              helper.make_node("MatMul", ["xs", "w1"], ["h"]),
              helper.make_node("Add", ["h", "b1"], ["hb"]),
              helper.make_node("Relu", ["hb"], ["a"]), helper.make_node("MatMul", ["a", "w2"], ["o"]),
              helper.make_node("Add", ["o", "b2"], ["delta"])]
    if combine == "paper":
        nodes.append(helper.make_node("Mul", ["delta", "w"], ["u"]))
    elif combine == "overwrite_residual":  # r·(x + Δ) written over x
        nodes += [helper.make_node("Add", ["xs", "delta"], ["xd"]),
                  helper.make_node("Mul", ["w", "xd"], ["u"])]
    elif combine == "double_residual":  # the block adds x_sel itself, scatter_add adds x
        nodes += [helper.make_node("Mul", ["delta", "w"], ["dw"]),
                  helper.make_node("Add", ["xs", "dw"], ["u"])]
    elif combine == "softmax":  # weights normalized over the selected tokens: not causal
        nodes += [helper.make_node("Softmax", ["wg"], ["wsm"], axis=1),
                  helper.make_node("Unsqueeze", ["wsm", "axes"], ["ws"]),
                  helper.make_node("Mul", ["delta", "ws"], ["u"])]
    elif combine == "squared":
        nodes += [helper.make_node("Mul", ["delta", "w"], ["dw"]),
                  helper.make_node("Mul", ["dw", "w"], ["u"])]
    nodes.append(helper.make_node("ScatterElements", ["x", "e", "u"], ["y"], axis=1,
                                  reduction=reduction))
    graph = helper.make_graph(
        nodes, "mod", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", s, d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", s, d])],
        [numpy_helper.from_array(v.astype(np.float32), n) for n, v in inits.items()]
        + [numpy_helper.from_array(v.astype(np.int64), n) for n, v in ints.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    path = tmp_path / f"hand-{reduction}-{combine}-{k_from_shape}-{gather_other}.onnx"
    onnx.save(model, str(path))
    return str(path)


def test_overwrite_combine_is_read_as_written(tmp_path):
    """ScatterElements without reduction writes r·(x+Δ) over the selected tokens: the site
    says (0 + 1·w)·x + (0 + 1·w)·Δ, and the routed lowering computes exactly that."""
    path = _handmade(tmp_path, reduction="none", combine="overwrite_residual")
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
    path = _handmade(tmp_path, **variant)
    a = pipeline.analyze(path)
    assert [s.kind for s in a.sites] != ["routed"]
    reasons = [m.reason for m in a.near_misses]
    assert any(reason in m and "Mixture-of-Depths" in m for m in reasons), reasons


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
    path = _handmade(tmp_path, combine="double_residual")
    a = pipeline.analyze(path)
    r = a.sites[0].routing
    assert (r["x_coef"], r["delta_coef"]) == ([2.0, 0.0], [0.0, 1.0])
    lower(a.working, {a.sites[0].name: SiteLowering(Decision.ROUTED)})
    x = np.random.default_rng(1).standard_normal((3, 6, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(ir.serde.serialize_model(a.working), x), _run(path, x),
                               rtol=1e-5, atol=1e-5)


def _masked(tmp_path, form: str) -> str:
    """Router-Tuning's masked MoD: every token runs the FFN, y = x + mask·FFN(x), the mask
    ``Sigmoid(x·w_r) − τ >= 0`` (form "sub"), ``Sigmoid(x·w_r) > τ`` ("sigmoid") or
    ``x·w_r + b > t`` ("raw")."""
    rng = np.random.default_rng(2)
    d, f = 8, 16
    inits = {"wr": rng.standard_normal((d, 1)), "w1": rng.standard_normal((d, f)),
             "b1": rng.standard_normal(f), "w2": rng.standard_normal((f, d)),
             "b2": rng.standard_normal(d), "tau": np.array(0.6), "zero": np.array(0.0),
             "br": np.array([0.25]), "t": np.array(0.4)}
    nodes = [helper.make_node("MatMul", ["x", "wr"], ["r3"]),
             helper.make_node("Squeeze", ["r3", "axes"], ["r"])]
    if form == "sub":
        nodes += [helper.make_node("Sigmoid", ["r"], ["sg"]),
                  helper.make_node("Sub", ["sg", "tau"], ["sm"]),
                  helper.make_node("GreaterOrEqual", ["sm", "zero"], ["m"])]
    elif form == "sigmoid":
        nodes += [helper.make_node("Sigmoid", ["r"], ["sg"]),
                  helper.make_node("Greater", ["sg", "tau"], ["m"])]
    else:
        nodes[-1] = helper.make_node("Add", ["r3", "br"], ["r3b"])
        nodes += [helper.make_node("Squeeze", ["r3b", "axes"], ["r"]),
                  helper.make_node("Greater", ["r", "t"], ["m"])]
    nodes += [helper.make_node("Cast", ["m"], ["mf"], to=TensorProto.FLOAT),
              helper.make_node("Unsqueeze", ["mf", "axes"], ["m3"]),
              helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
              helper.make_node("Relu", ["hb"], ["a"]), helper.make_node("MatMul", ["a", "w2"], ["o"]),
              helper.make_node("Add", ["o", "b2"], ["delta"]),
              helper.make_node("Mul", ["delta", "m3"], ["u"]),
              helper.make_node("Add", ["x", "u"], ["y"])]
    graph = helper.make_graph(
        nodes, "masked", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", d])],
        [numpy_helper.from_array(np.asarray(v, np.float32), n) for n, v in inits.items()]
        + [numpy_helper.from_array(np.array([-1], np.int64), "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    path = tmp_path / f"masked-{form}.onnx"
    onnx.save(model, str(path))
    return str(path)


@pytest.mark.parametrize("form", ["sub", "sigmoid", "raw"])
def test_masked_form_runs_the_ffn_on_kept_tokens_only(tmp_path, form):
    """y = x + 1[score > t]·FFN(x) computes the FFN for every token; read as a causal
    selection (threshold folded into the selection bias), the FFN runs on the kept ones
    only, and the lowering equals the export."""
    path = _masked(tmp_path, form)
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
