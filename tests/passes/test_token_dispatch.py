"""Token dispatch of the ops without a masked mode: StructuredFFN, FastFeedForward and
RoutedFFN behind ``If(tokens <= N)`` run the op up to N tokens and the original subgraph
beyond (an FFF's or a MoD's exported region as it was, its inner FFN in standard ops); in
stock ONNX Runtime (the op's fallback function, the region) the model equals the export on
both sides of the bound."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from fffc import pipeline
from fffc.contract.kinds import Decision
from fffc.contract.lowering import SiteLowering
from fffc.contract.ops import DOMAIN
from fffc.passes import lower

pytestmark = pytest.mark.torch


def _structured(tmp_path):
    from tests.fixtures.structured_exports import export_structured

    return export_structured("lowrank", "torchscript17", tmp_path / "lowrank.onnx"), 64


def _fff(tmp_path):
    from fffc.torch import FastFeedForward
    from tests.fixtures.fff_exports import export_fff

    return export_fff(FastFeedForward(16, 16, 3, 2), tmp_path / "fff.onnx", False, 17), 16


def _routed(tmp_path):
    from tests.fixtures.structured_exports import export_mod

    return export_mod("dynamo18", tmp_path / "mod.onnx", seq=16, capacity=0.25), 64


CASES = {  # op: (export, decision, bound, [(batch, seq)] on both sides of it)
    "StructuredFFN": (_structured, Decision.STRUCTURED, 4, [(1, 1), (1, 4), (1, 5), (3, 11)]),
    "FastFeedForward": (_fff, Decision.TREE, 4, [(1, 1), (2, 2), (1, 5), (3, 11)]),
    "RoutedFFN": (_routed, Decision.ROUTED, 20, [(1, 16), (2, 16), (3, 16)]),
}


def _run(model: onnx.ModelProto | str, x: np.ndarray) -> np.ndarray:
    data = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("op", list(CASES))
def test_op_runs_up_to_the_bound_and_the_original_beyond(tmp_path, op):
    export, decision, bound, shapes = CASES[op]
    path, d = export(tmp_path)
    a = pipeline.analyze(path)
    (site,) = a.sites
    lower(a.working, {site.name: SiteLowering(decision, max_tokens=bound)})
    model = ir.serde.serialize_model(a.working)
    onnx.checker.check_model(model, full_check=True)
    (dispatch,) = [n for n in model.graph.node if n.op_type == "If"]
    branches = {a.name: a.g for a in dispatch.attribute}
    kernel, beyond = branches["then_branch"], branches["else_branch"]
    assert [(n.domain, n.op_type) for n in kernel.node] == [(DOMAIN, op)]
    assert beyond.node and all(n.domain == "" for n in beyond.node)  # the original, standard
    assert not any(n.domain == DOMAIN for n in model.graph.node)  # the op only in the If
    limit = next(n for n in model.graph.node if n.output[0] == dispatch.input[0].replace(
        "__few", "__limit"))
    assert onnx.numpy_helper.to_array(limit.attribute[0].t) == bound * d
    rng = np.random.default_rng(0)
    for b, s in shapes:
        x = rng.standard_normal((b, s, d)).astype(np.float32)
        np.testing.assert_allclose(_run(model, x), _run(str(path), x), rtol=1e-5, atol=1e-5,
                                   err_msg=f"{b}x{s} tokens")
