"""Every FFN in real torch 2.13 exports of HF-style BERT, GPT-2 and LLaMA is found.

Cases: dynamo opset 18/20, dynamo optimize=False, TorchScript opset 17/20, each also after
ONNX Runtime's ORT_ENABLE_EXTENDED optimization; default, ReLU and dReLU activations.
Besides the count and kind of every site, the canonicalized model with every site left
dense must equal the original in ONNX Runtime (verification check 1).
"""

from __future__ import annotations

import pytest

from tests.fixtures.models import ALL_CASES, expected_ffn_kind, expected_ffn_sites

pytestmark = pytest.mark.torch


def _id(case) -> str:
    family, activation, exporter, ort_ext = case
    return f"{family}-{activation}-{exporter}{'-ortext' if ort_ext else ''}"


@pytest.mark.parametrize("case", ALL_CASES, ids=_id)
def test_every_ffn_is_found(case, export_model):
    from fffc.pipeline import analyze
    from fffc.verify.capture import capture
    from fffc.verify.compare import compare_runs
    from fffc.verify.feeds import probe_inputs

    family, activation, exporter, ort_ext = case
    path = export_model(family, activation, exporter, ort_ext)
    a = analyze(path)
    want = expected_ffn_kind(family, activation)
    assert len(a.sites) == expected_ffn_sites(family, activation), [s.rule for s in a.sites]
    for s in a.sites:
        assert (s.kind, s.activation, s.up_activation, s.d_model, s.d_ff) == (
            want["kind"], want["activation"], want["up_activation"], want["d_model"], want["d_ff"])
        assert s.has_b1 == want["bias"]
    assert a.near_misses == []
    from fffc.verify.compare import run, session

    feeds = probe_inputs(a.proto, 2, 7, seed=0)
    want = run(session(a.proto), feeds)
    captured = capture(a.working, len(a.proto.graph.output), feeds)
    assert compare_runs(captured.outputs, want, 1e-4).ok  # canonicalization changed nothing
    assert set(captured.sites) == {s.name for s in a.sites}
