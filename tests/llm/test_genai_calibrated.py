"""A calibrated mode through ONNX Runtime GenAI: a SwiGLU decoder built by the real model
builder, calibrated on its own greedy generation (``fffc calibrate --prompts``), compiled with
TEAL thresholds, loaded by ``onnxruntime_genai``. Its logits, step by step on the original's
greedy tokens, stay as close to the original's as the compile's own check measured."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import numpy as np
import pytest

from fffc.cli import main
from tests.fixtures import genai_models

pytest.importorskip("onnxruntime_genai", reason="GenAI folders need onnxruntime-genai")
pytest.importorskip("torch", reason="the test checkpoint is made with torch")

pytestmark = pytest.mark.slow
TOKENS = 32
# The compile reports how far the thresholded model is from the original on its probes
# (verification.deviation_from_original, max |Δ| / max |original| over the outputs). Over
# other token sequences in GenAI the logits may move somewhat further, not by much more:
# a broken model (fallback mixed up, cache misused) moves them by their whole range.
SLACK = 2.0


def _logits_along(folder: Path, prompt: list[int], tokens: list[int]) -> list[np.ndarray]:
    """The last position's logits after the prompt and after each of ``tokens`` is appended
    (teacher forcing: both models see the same sequence)."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + len(tokens) + 1, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(prompt)
    out = [np.array(gen.get_output("logits"))[0, -1].copy()]
    for t in tokens:
        gen.append_tokens([t])
        out.append(np.array(gen.get_output("logits"))[0, -1].copy())
    del gen, params, model
    gc.collect()
    return out


def test_teal_decoder_stays_close_in_genai(tmp_path):
    hf = genai_models.checkpoint(tmp_path / "hf", act="silu")
    src = genai_models.build(hf, tmp_path / "swiglu")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(genai_models.TEXT[:4]) + "\n")
    calib = tmp_path / "calib.json"
    assert main(["calibrate", str(src), "--prompts", str(prompts), "--generate", "16",
                 "--budget", "uniform=0.2", "-o", str(calib)]) == 0
    out = tmp_path / "swiglu.fffc"
    assert main(["compile", str(src), "--calibration", str(calib), "-o", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert {s["decision"] for s in manifest["sites"]} == {"teal"}

    prompt, greedy = genai_models.greedy(src, TOKENS)
    want = _logits_along(src, prompt, greedy)
    got = _logits_along(out, prompt, greedy)
    dev = max(float(np.abs(g - w).max() / np.abs(w).max()) for g, w in zip(got, want,
                                                                          strict=True))
    measured = manifest["verification"]["deviation_from_original"]["max_rel"]
    assert 0 < measured < 0.5
    assert 0 < dev <= SLACK * measured  # thresholds change something, as much as checked
