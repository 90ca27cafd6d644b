"""ffn_structured: LowRank, BlockDense and BlockShuffle (Monarch) MLPs from both exporters
(bmm and einsum spellings) become one structured site whose factors are the module's; the
lowered model equals the export in ONNX Runtime, as standard ops and as the StructuredFFN
fallback function."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from fffc import pipeline
from fffc.contract.kinds import Decision
from fffc.contract.lowering import SiteLowering
from fffc.passes import lower, site_inputs

pytestmark = pytest.mark.torch

EXPORTERS = ("dynamo18", "dynamo_noopt", "torchscript17")
CASES = [  # (kind, form, activation, bias)
    ("lowrank", "bmm", "gelu", True),
    ("lowrank", "bmm", "relu", False),
    ("blockdense", "bmm", "silu", True),
    ("blockdense", "bmm", "gelu", False),
    ("blockdense", "einsum", "relu", True),
    ("blockdense", "einsum", "gelu_tanh", False),
]


def _export(tmp_path, kind, form, activation, bias, exporter, **kw):
    from tests.fixtures.structured_exports import export_structured

    return export_structured(kind, exporter, tmp_path / f"{kind}-{form}-{exporter}.onnx",
                             form=form, activation=activation, bias=bias, **kw)


def _run(model: onnx.ModelProto | str, x: np.ndarray) -> np.ndarray:
    data = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_structured_mlp_is_one_site_with_the_modules_factors(case, exporter, tmp_path):
    import torch

    from fffc.torch import StructuredMLP

    kind, form, activation, bias = case
    path = _export(tmp_path, kind, form, activation, bias, exporter)
    a = pipeline.analyze(path)
    assert [s.kind for s in a.sites] == ["structured"], [m.reason for m in a.near_misses]
    site = a.sites[0]
    st = site.structure
    name = {"lowrank": "LowRank", "blockdense": "BlockDense"}[kind]
    assert (st["first"], st["second"]) == (name, name)
    assert (site.d_model, site.d_ff, site.d_out) == (64, 256, 64)
    assert (site.activation, site.has_b1, site.has_b2) == (activation, bias, bias)
    assert st["k1"] == st["k2"] == (1 if kind == "lowrank" else 4)
    assert st["u1"] and st["u2"]

    # the marker's factors are the module's weights, as the op's layout has them
    torch.manual_seed(0)
    m = StructuredMLP(64, 256, kind, rank=32, blocks=4, activation=activation, bias=bias,
                      form=form).eval()
    w = site_inputs(a.working, site)
    from fffc.contract.structure import merged_weight

    for i, fc in ((1, m.fc1), (2, m.fc2)):
        dense = fc.to_dense().detach().numpy().T  # [in, out]
        np.testing.assert_allclose(merged_weight(w[f"A{i}"], w[f"U{i}"]), dense, rtol=1e-5,
                                   atol=1e-6)
        if bias:
            np.testing.assert_array_equal(w[f"B{i}"], fc.bias.detach().numpy())
        else:
            assert f"B{i}" not in w


@pytest.mark.parametrize("decision", ["dense", "structured"])
@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[4]],
                         ids=lambda c: "-".join(map(str, c)))
def test_lowered_model_equals_the_export(case, decision, tmp_path):
    """Standard ops (decision dense) and the StructuredFFN fallback function (no shim) both
    compute the export's function, at token counts other than the export's."""
    path = _export(tmp_path, *case, "torchscript17")
    a = pipeline.analyze(path)
    lower(a.working, {a.sites[0].name: SiteLowering(decision, merged_max_tokens=3)})
    lowered = ir.serde.serialize_model(a.working)
    onnx.checker.check_model(lowered, full_check=True)
    ops = {(n.domain, n.op_type) for n in lowered.graph.node}
    assert (("ai.fffc", "StructuredFFN") in ops) == (decision == "structured")
    assert not any(d == "ai.fffc.canon" for d, _ in ops)
    rng = np.random.default_rng(1)
    for shape in ((3, 11, 64), (1, 1, 64)):
        x = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(_run(lowered, x), _run(str(path), x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("activation, bias, form", [("gelu", True, "bmm"),
                                                     ("relu", False, "bmm"),
                                                     ("gelu", True, "einsum")])
def test_blockshuffle_mlp_is_one_site_equal_to_the_export(tmp_path, exporter, activation, bias,
                                                         form):
    """Monarch layers (block diagonal, (r, m) → (m, r) shuffle, block diagonal, (m, s) →
    (s, m)) become one structured site whose factors give the module's dense weights; lowered
    as standard ops and as the fallback function, it equals the export."""
    import torch

    from fffc.contract.structure import merged_weight
    from fffc.torch import StructuredMLP

    path = _export(tmp_path, "blockshuffle", form, activation, bias, exporter)
    a = pipeline.analyze(path)
    assert [s.kind for s in a.sites] == ["structured"], [m.reason for m in a.near_misses]
    st = a.sites[0].structure
    assert (st["first"], st["second"], st["m1"], st["m2"]) == ("BlockShuffle", "BlockShuffle",
                                                               4, 4)
    torch.manual_seed(0)
    m = StructuredMLP(64, 256, "blockshuffle", blocks=4, activation=activation,
                      bias=bias, form=form).eval()
    w = site_inputs(a.working, a.sites[0])
    for i, fc in ((1, m.fc1), (2, m.fc2)):
        np.testing.assert_allclose(merged_weight(w[f"A{i}"], None, w[f"S{i}"]),
                                   fc.to_dense().detach().numpy().T, rtol=1e-5, atol=1e-6)
    x = np.random.default_rng(0).standard_normal((2, 5, 64)).astype(np.float32)
    for decision in ("dense", "structured"):
        b = pipeline.analyze(path)
        lower(b.working, {b.sites[0].name: SiteLowering(Decision(decision))})
        model = ir.serde.serialize_model(b.working)
        onnx.checker.check_model(model, full_check=True)
        np.testing.assert_allclose(_run(model, x), _run(str(path), x), rtol=1e-5, atol=1e-5)


def test_dense_mlp_stays_a_dense_site(tmp_path):
    """Two projections with an activation between are a dense FFN, not a structured one."""
    path = _export(tmp_path, "dense", "bmm", "gelu", True, "dynamo18")
    a = pipeline.analyze(path)
    assert [s.kind for s in a.sites] == ["dense"]
