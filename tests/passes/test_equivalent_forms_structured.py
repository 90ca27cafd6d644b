"""Equivalent spellings of FFF (masked and walk), LowRank, BlockDense and BlockShuffle FFNs
(``tests/fixtures/equivalent_forms_structured.py``) are each one site with the shapes the
generator built them with; a subset compiles to an artifact equal to the export; a spelling
fffc does not detect is a near miss that says what it saw."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import fffc
import fffc.runtime
from fffc.contract.kinds import Decision, SiteKind

pytestmark = [pytest.mark.torch]

torch = pytest.importorskip("torch")
forms = pytest.importorskip("tests.fixtures.equivalent_forms_structured")


def _run(path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """form id → (module, truth, path): each spelling exported once for the module."""
    cache = {}

    def get(form):
        if form.id not in cache:
            module, truth = forms.build(form)
            path = forms.export(form, module, tmp_path_factory.mktemp("forms") / "m.onnx")
            cache[form.id] = module, truth, path
        return cache[form.id]

    return get


@pytest.mark.parametrize("form", forms.FORMS, ids=lambda f: f.id)
def test_spelling_is_one_site_with_its_shapes(form, exported):
    module, truth, path = exported(form)
    # the spelling and its export compute the family's function, on a shape the export
    # was not traced with (an export that froze the traced shape is no equivalent form)
    x = torch.randn(3, 4, forms.width(form))
    want = forms.reference(form, module, x).numpy()
    with torch.no_grad():
        np.testing.assert_allclose(module(x).numpy(), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_run(path, x.numpy()), want, rtol=1e-4, atol=1e-5)

    a = fffc.inspect(path)
    if form.id in forms.UNDETECTED:
        assert a.sites == []
        assert any(forms.UNDETECTED[form.id] in m.reason for m in a.near_misses), \
            [m.reason for m in a.near_misses]
        return
    assert len(a.sites) == 1, [m.reason for m in a.near_misses]
    (site,) = a.sites
    assert (site.kind, site.d_model, site.d_ff, site.d_out) == (
        truth.kind, truth.d_model, truth.d_ff, truth.d_out)
    if truth.fff is not None:
        assert (site.trees, site.depth, site.rule, site.tie_break) == (*truth.fff, "gt")
    else:
        assert {k: site.structure.get(k) for k in truth.structure} == truth.structure
        assert site.activation == "gelu" and site.has_b1 and site.has_b2


E2E = [  # one per family and rewrite kind: (family, exporter, options)
    forms.Form(forms.Family.FFF_MASKED, "dynamo", act="after", cmp="after", lead="kept"),
    forms.Form(forms.Family.FFF_WALK, "dynamo", update="where"),
    forms.Form(forms.Family.LOWRANK, "dynamo", product="einsum"),
    forms.Form(forms.Family.BLOCKDENSE, lead="kept", shape="computed"),
    forms.Form(forms.Family.BLOCKSHUFFLE, shape="computed"),
]


@pytest.mark.slow
@pytest.mark.parametrize("form", E2E, ids=lambda f: f.id)
def test_spelling_compiles_to_an_equal_artifact(form, exported, tmp_path, monkeypatch):
    monkeypatch.setenv("FFFC_CROSSOVERS", "table")
    _, truth, path = exported(form)
    result = fffc.compile(path, tmp_path / "m.fffc", fffc.CompileOptions(target="x86"))
    (site,) = result.sites
    want_decision = Decision.TREE if truth.kind is SiteKind.FFF else Decision.STRUCTURED
    assert site.decision == want_decision, site.reason  # lowered to the family's op
    with_shim = fffc.runtime.InferenceSession(result.artifact)
    rng = np.random.default_rng(5)
    for b, s in ((1, 1), (2, 3)):
        x = rng.standard_normal((b, s, forms.width(form))).astype(np.float32)
        want = _run(path, x)
        for got in (with_shim.run(None, {"x": x})[0],  # the kernels
                    _run(result.artifact / "model.onnx", x)):  # no shim: the fallback
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
