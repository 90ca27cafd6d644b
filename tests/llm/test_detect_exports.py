"""fffc finds every FFN of the decoders exported by Optimum, ONNX Runtime GenAI's model
builder and torch dynamo (with a KV cache): one site per layer, of the family's kind and
widths (fp16 ones too, of dtype float16); what it cannot lower (FFNs inside the merged
decoder's If) is a near miss that says why."""

from __future__ import annotations

import numpy as np
import pytest

from fffc.cli import main
from tests.fixtures.llm import CASES, FAMILIES, FF, HIDDEN, LAYERS, Exporter, feeds

pytestmark = pytest.mark.torch

FP32 = [(f, e) for f, e in CASES if e not in (Exporter.GENAI_FP16, Exporter.OPTIMUM_MERGED)]


def _id(case) -> str:
    return f"{case[0]}-{case[1].value}"


@pytest.mark.parametrize("case", FP32, ids=_id)
def test_every_ffn_is_a_site(case, llm_analysis):
    family, exporter = case
    a = llm_analysis(family, exporter)
    want = FAMILIES[family].expected_site
    got = [{"kind": s.kind, "activation": s.activation, "up_activation": s.up_activation,
            "d_model": s.d_model, "d_ff": s.d_ff, "bias": s.bias} for s in a.sites]
    assert got == [want] * LAYERS
    assert all(s.dtype == "float32" for s in a.sites)
    assert a.near_misses == []


@pytest.mark.parametrize("case", FP32, ids=_id)
def test_canonical_form_computes_what_the_export_computes(case, llm_analysis):
    """Canonicalization (packed halves split, activations in one form) and the sites put
    back as they were change nothing: prefill on an empty cache, decode on a filled one."""
    from fffc.verify.capture import capture
    from fffc.verify.compare import run, session

    family, exporter = case
    a = llm_analysis(family, exporter)
    names = [i.name for i in a.proto.graph.input]
    given = [{k: v for k, v in feeds(family, 1, past, seq).items() if k in names}
             for past, seq in ((0, 6), (5, 1))]
    want = run(session(a.proto), given)
    got = capture(a.working, len(a.proto.graph.output), given)
    assert set(got.sites) == {s.name for s in a.sites}
    for g, w in zip(got.outputs, want, strict=True):
        for x, y in zip(g, w, strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", [f for f, e in CASES if e is Exporter.GENAI_FP16])
def test_fp16_ffns_are_float16_sites(family, llm_analysis):
    """An fp16 model's FFNs are found, of their family and widths, with their dtype."""
    a = llm_analysis(family, Exporter.GENAI_FP16)
    want = FAMILIES[family].expected_site
    got = [{"kind": s.kind, "activation": s.activation, "up_activation": s.up_activation,
            "d_model": s.d_model, "d_ff": s.d_ff, "bias": s.bias} for s in a.sites]
    assert got == [want] * LAYERS
    assert all(s.dtype == "float16" for s in a.sites)
    assert all(any("mlp/down_proj" in n for n in s.matched_nodes) for s in a.sites)
    assert a.near_misses == []


def test_merged_decoder_ffns_are_near_misses_that_say_why(llm_analysis):
    """Optimum's merged decoder holds the whole decoder twice, in the two branches of an If:
    fffc lowers main-graph FFNs only, and says so for each of them."""
    a = llm_analysis("llama-relu", Exporter.OPTIMUM_MERGED)
    assert a.sites == []
    assert len(a.near_misses) == 2 * LAYERS
    for m in a.near_misses:
        assert m.reason.endswith("fffc finds FFNs in the model's main graph only")
        assert "'optimum::if'" in m.reason


def test_genai_shape_inference_failure_is_one_note(llm_analysis):
    """ONNX's shape inference fails on the GenAI builder's graph: one note, inference past
    the errors, and the sites still found."""
    a = llm_analysis("llama-silu", Exporter.GENAI_FP32)
    assert len(a.notes) == 1
    assert a.notes[0].startswith("ONNX shape inference failed on this graph ([ShapeInferenceError]")
    assert "\n" not in a.notes[0]
    assert len(a.sites) == LAYERS


def test_inspect_prints_the_note_not_a_traceback(llm_model, capfd):
    path = llm_model("llama-relu", Exporter.GENAI_FP32)
    assert main(["inspect", str(path)]) == 0
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    notes = [line for line in err.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "ONNX shape inference failed" in notes[0]
    assert f"{LAYERS} FFN site(s)" in out
    assert f"{HIDDEN}" in out and f"{FF}" in out
