"""detect: the rule families run in order, each module ending in one ``rules``; each kind's
marker becomes a Site through its family."""

from __future__ import annotations

import importlib
import pkgutil

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import fffc.passes
from fffc.contract.kinds import SiteKind
from fffc.passes.detect import SITE_OF
from tests.fixtures.graphs import D, to_ir

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
