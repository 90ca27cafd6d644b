"""The test decoders are what the tools make of the checkpoints: transformers 4.57 (the
Optimum environment) reads the checkpoints saved by transformers 5 the same, and every fp32
export computes what the torch model computes — with an empty cache (prefill), one token on
a filled cache (decode) and a few tokens on a filled cache."""

from __future__ import annotations

import subprocess
import textwrap

import numpy as np
import onnxruntime as ort
import pytest

from tests.fixtures.llm import (
    CASES,
    FAMILIES,
    LAYERS,
    Exporter,
    causal_lm,
    feeds,
    optimum_venv,
    skip_unless_available,
    with_past,
)

pytestmark = pytest.mark.torch

IDS = [[5, 17, 33, 120, 7, 250, 3, 9]]
_LOGITS = textwrap.dedent("""
    import sys, numpy, torch, transformers
    ids = torch.tensor({ids})
    for src, dst in zip(sys.argv[1::2], sys.argv[2::2]):
        model = transformers.AutoModelForCausalLM.from_pretrained(src).eval()
        with torch.no_grad():
            numpy.save(dst, model(input_ids=ids).logits.numpy())
""")


def test_transformers_4_57_reads_the_checkpoints_the_same(llm_exports, tmp_path):
    import torch
    import transformers

    skip_unless_available(Exporter.OPTIMUM)
    venv = optimum_venv()
    args = []
    for family in FAMILIES:
        args += [str(llm_exports.checkpoint(family)), str(tmp_path / f"{family}.npy")]
    r = subprocess.run([str(venv / "bin" / "python"), "-c", _LOGITS.format(ids=IDS), *args],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    for family in FAMILIES:
        model = transformers.AutoModelForCausalLM.from_pretrained(llm_exports.checkpoint(family))
        with torch.no_grad():
            want = model.eval()(input_ids=torch.tensor(IDS)).logits.numpy()
        np.testing.assert_array_equal(np.load(tmp_path / f"{family}.npy"), want, err_msg=family)


CHECKED = [(f, e) for f, e in CASES if e in (Exporter.OPTIMUM, Exporter.DYNAMO,
                                              Exporter.GENAI_FP32)]


@pytest.mark.parametrize("case", CHECKED, ids=lambda c: f"{c[0]}-{c[1].value}")
def test_export_computes_what_torch_computes(case, llm_model):
    import torch

    family, exporter = case
    path = llm_model(family, exporter)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    # GenAI's GroupQueryAttention takes several new tokens on a filled cache at batch 1 only
    batch = 1 if exporter is Exporter.GENAI_FP32 else 2
    model = with_past(causal_lm(FAMILIES[family]))
    for past, seq in ((0, 5), (4, 1), (4, 3)):
        given = feeds(family, batch, past, seq, seed=past * 10 + seq)
        got = sess.run(None, {k: v for k, v in given.items() if k in names})
        cache = [(torch.from_numpy(given[f"past_key_values.{i}.key"]),
                  torch.from_numpy(given[f"past_key_values.{i}.value"])) for i in range(LAYERS)]
        with torch.no_grad():
            logits, present = model(*(torch.from_numpy(given[k]) for k in
                                      ("input_ids", "attention_mask", "position_ids")), cache)
        want = {"logits": logits, **{f"present.{i}.{kv}": t for i, layer in enumerate(present)
                                     for kv, t in zip(("key", "value"), layer, strict=True)}}
        outputs = [o.name for o in sess.get_outputs()]  # GenAI's: every key, then every value
        assert sorted(outputs) == sorted(want)
        for name, g in zip(outputs, got, strict=True):
            np.testing.assert_allclose(g, want[name].numpy(), rtol=1e-4, atol=1e-5,
                                       err_msg=f"{name}, past {past}, {seq} tokens")
