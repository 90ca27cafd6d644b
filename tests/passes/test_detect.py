"""detect: the rule families run in order, each module ending in one ``rules``; each kind's
marker becomes a Site through its family."""

from __future__ import annotations

import importlib
import pkgutil

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import fffc.passes
from fffc.contract.kinds import SiteKind
from fffc.passes._common import CANON
from fffc.passes.detect import SITE_OF
from tests.fixtures.graphs import D, F, rand, to_ir

FAMILY_PREFIXES = ("canonical_", "ffn_", "mod_")


def test_every_family_module_exports_rules():
    families = [m.name for m in pkgutil.iter_modules(fffc.passes.__path__)
                if m.name.startswith(FAMILY_PREFIXES)]
    assert len(families) >= 10
    for name in families:
        module = importlib.import_module(f"fffc.passes.{name}")
        rules = module.rules
        assert hasattr(rules, "apply_to_model") and list(rules.rules), name


def test_every_kind_has_its_familys_site():
    assert set(SITE_OF) == set(SiteKind)


def _ffn_in_if_branches() -> onnx.ModelProto:
    """``If(cond)`` whose two branches each hold a SwiGLU FFN of the outer x (the shape of
    Optimum's merged decoder), with different weights."""
    inits = []

    def branch(tag: str) -> onnx.GraphProto:
        names = {w: f"{w}_{tag}" for w in ("Wg", "Wu", "Wd")}
        for w, shape in (("Wg", (D, F)), ("Wu", (D, F)), ("Wd", (F, D))):
            inits.append(numpy_helper.from_array(rand(*shape, scale=0.3), names[w]))
        nodes = [
            helper.make_node("MatMul", ["x", names["Wg"]], [f"g_{tag}"], name=f"{tag}/gate"),
            helper.make_node("Sigmoid", [f"g_{tag}"], [f"sg_{tag}"], name=f"{tag}/sigmoid"),
            helper.make_node("Mul", [f"g_{tag}", f"sg_{tag}"], [f"a_{tag}"], name=f"{tag}/silu"),
            helper.make_node("MatMul", ["x", names["Wu"]], [f"u_{tag}"], name=f"{tag}/up"),
            helper.make_node("Mul", [f"a_{tag}", f"u_{tag}"], [f"h_{tag}"], name=f"{tag}/mul"),
            helper.make_node("MatMul", [f"h_{tag}", names["Wd"]], [f"y_{tag}"], name=f"{tag}/down"),
        ]
        out = helper.make_tensor_value_info(f"y_{tag}", TensorProto.FLOAT, None)
        return helper.make_graph(nodes, tag, [], [out])

    node = helper.make_node("If", ["cond"], ["y"], name="branches",
                            then_branch=branch("then"), else_branch=branch("else"))
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", D]),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", D])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _run(m: onnx.ModelProto, cond: bool) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": X, "cond": np.array([cond])})[0]


X = rand(2, 5, D)


def test_ffns_in_if_branches_are_near_misses_with_the_reason():
    """An If branch is no place for a site (the later stages work on the main graph): no
    marker there, and each branch's FFN reported with where it is."""
    model = to_ir(_ffn_in_if_branches())
    fffc.passes.canonicalize(model)
    assert fffc.passes.detect(model) == []
    assert not [n for g in model.graphs() for n in g if n.domain == CANON and n.op_type == "FFN"]
    misses = fffc.passes.near_misses(model)
    assert sorted(m.nodes[-1] for m in misses) == ["else/down", "then/down"]
    for m in misses:
        branch = m.nodes[-1].split("/")[0]
        assert m.reason == (f"in the {branch}_branch of If 'branches': fffc finds FFNs in the "
                            "model's main graph only")


def test_canonical_ops_in_if_branches_are_legalized():
    """Canonicalization rewrites inside If branches (SiLU there becomes the canonical op):
    legalize turns them back, and the model computes what it did."""
    original = _ffn_in_if_branches()
    model = to_ir(original)
    fffc.passes.canonicalize(model)
    assert [n for g in model.graphs() for n in g if n.domain == CANON]
    fffc.passes.legalize(model)
    assert not [n for g in model.graphs() for n in g if n.domain == CANON]
    out = ir.serde.serialize_model(model)
    onnx.checker.check_model(out)
    for cond in (True, False):
        np.testing.assert_allclose(_run(out, cond), _run(original, cond), rtol=1e-5, atol=1e-6)


def test_shape_inference_failure_is_one_note(capfd, caplog):
    """A constant whose declared shape ONNX disputes (as in ONNX Runtime GenAI's graphs):
    strict inference fails; canonicalize keeps going and says so in one line, and nothing
    reaches the log or the terminal."""
    c = helper.make_node("Constant", [], ["c"], name="c",
                         value=numpy_helper.from_array(np.array([2.0], np.float32)))
    add = helper.make_node("Add", ["x", "c"], ["y"], name="add")
    graph = helper.make_graph(
        [c, add], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", D])],
        value_info=[helper.make_tensor_value_info("c", TensorProto.FLOAT, [])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    notes: list[str] = []
    fffc.passes.canonicalize(to_ir(m), notes)
    assert len(notes) == 1
    assert notes[0].startswith("ONNX shape inference failed on this graph ([ShapeInferenceError]")
    assert notes[0].endswith("; continuing with the shapes it infers past the errors")
    assert "\n" not in notes[0]
    out, err = capfd.readouterr()
    assert out + err == "" and caplog.records == []


def test_canonicalization_stopped_before_its_fixpoint_is_a_note(monkeypatch, tmp_path):
    """A packed gated FFN flattened between its projections needs two rounds of the
    canonical families: held to one, canonicalization stops while still rewriting, the FFN
    is not found, and ``inspect`` says why in a note; with its rounds it is found, no note."""
    from tests.fixtures.equivalent_forms import Form, build

    form = Form(SiteKind.GATED, "gelu", proj="einsum", layout="mid", side="after",
                shape="unsqueeze", packed=True)
    path = tmp_path / "m.onnx"
    onnx.save(build(form), str(path))
    a = fffc.inspect(path)
    assert [s.kind for s in a.sites] == [SiteKind.GATED] and a.notes == []

    monkeypatch.setattr(importlib.import_module("fffc.passes.detect"), "CANONICAL_ROUNDS", 1)
    a = fffc.inspect(path)
    assert a.sites == []
    assert len(a.notes) == 1, a.notes
    note = a.notes[0]
    assert note.startswith("canonicalization stopped after 1 round while still rewriting "
                           "(last round: "), note
    assert note.endswith("); an FFN in a form it had not finished may be missed or be a "
                         "near miss"), note
    assert "\n" not in note
