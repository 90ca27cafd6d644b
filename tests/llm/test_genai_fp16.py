"""``fffc compile`` of the ONNX Runtime GenAI model builder's CPU float16 decoder
(``-p fp16 -e cpu``) of a tiny ReLU LLaMA: its ReGLU FFNs get exact kernels in float32 on
the decoder's own float16 weights. The builder's folder as written fails on its first
decode call in ONNX Runtime itself (a shape it declares wrongly), so the compile refuses
it in one line, and the tests compile it with those declarations removed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from fffc.cli import main
from fffc.verify.in_place import all_nodes
from tests.fixtures import genai_models

pytest.importorskip("onnxruntime_genai", reason="GenAI folders need onnxruntime-genai")
pytest.importorskip("torch", reason="the test checkpoint is made with torch")
pytest.importorskip("transformers", reason="the test checkpoint is made with transformers")

pytestmark = pytest.mark.slow
RTOL16 = 8 * 2.0**-11  # the check's tolerance for a float16 model (8 unit roundoffs)
STEPS = 16


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(the builder's fp16 folder, the same without value_info, its compiled folder)."""
    root = tmp_path_factory.mktemp("genai16")
    hf = genai_models.checkpoint(root / "hf", act="relu")
    built = genai_models.build(hf, root / "fp16", precision="fp16")
    fixed = genai_models.without_value_info(shutil.copytree(built, root / "fixed"))
    out = root / "fixed.fffc"
    assert main(["compile", str(fixed), "-o", str(out), "--target", "x86"]) == 0
    return built, fixed, out


def _logits(folder: Path, steps: int) -> tuple[list[int], list[np.ndarray]]:
    """Greedy generation: the generated ids and the logits of the prefill and each decode
    call, as ONNX Runtime GenAI returns them."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    prompt = list(og.Tokenizer(model).encode(genai_models.PROMPT))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + steps, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(prompt)
    logits = [np.array(gen.get_output("logits"))]
    for _ in range(steps):
        gen.generate_next_token()
        logits.append(np.array(gen.get_output("logits")))
    ids = [int(t) for t in gen.get_sequence(0)]
    del gen, params, model
    return ids, logits


def test_the_builders_fp16_decoder_fails_to_decode_and_is_refused(folders, tmp_path, capsys):
    import onnxruntime_genai as og

    built, _, _ = folders
    model = og.Model(str(built))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=16, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens([1, 5, 9, 20])
    with pytest.raises(RuntimeError, match="Shape mismatch attempting to re-use buffer"):
        for _ in range(4):
            gen.generate_next_token()
    del gen, params, model
    capsys.readouterr()
    assert main(["compile", str(built), "-o", str(tmp_path / "out.fffc")]) == 4
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("fffc: error")]
    assert len(lines) == 1 and "the original model fails on the verification feeds" in lines[0]


def test_fp16_decoder_gets_exact_kernels_on_its_own_weights(folders):
    _, fixed, out = folders
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(s["family"], s["decision"], s["dtype"]) for s in manifest["sites"]] == [
        ("ReGLU", "exact", "float16")] * 2
    assert manifest["verification"]["rtol"] == RTOL16
    assert manifest["verification"]["model_with_shim"]["ok"]
    assert manifest["verification"]["model_without_shim"]["ok"]
    cfg = json.loads((fixed / "genai_config.json").read_text())["model"]["decoder"]["filename"]
    original = onnx.load(str(fixed / cfg))
    artifact = onnx.load(str(out / cfg))
    inits = {i.name: numpy_helper.to_array(i) for i in artifact.graph.initializer}
    weights = {i.name for i in original.graph.initializer if "mlp" in i.name}
    ops = [n for n in all_nodes(artifact.graph) if n.op_type == "SparseFFN"]
    assert len(ops) == 2
    for op in ops:  # the decoder's own float16 gate and down weights
        assert {op.input[1], op.input[3]} <= weights
        assert inits[op.input[1]].dtype == inits[op.input[3]].dtype == np.float16
    # no float32 copy of any weight matrix
    assert not [n for n, a in inits.items() if a.dtype == np.float32 and a.ndim == 2]


def test_decode_logits_within_float16_rounding_prefill_identical(folders):
    _, fixed, out = folders
    want_ids, want = _logits(fixed, STEPS)
    got_ids, got = _logits(out, STEPS)
    assert [w.shape for w in want] == [g.shape for g in got]
    assert want[0].shape[1] > 2  # the prefill: past the kernels' x86 bound (2 tokens)
    decode = 0
    for g, w in zip(got, want, strict=True):
        assert g.dtype == np.float16
        if g.shape[1] > 2:  # the prefill's logits (read again until a decode call ran)
            np.testing.assert_array_equal(g, w)
            continue
        decode += 1  # a decode call: the kernels
        w64 = w.astype(np.float64)
        assert np.abs(g.astype(np.float64) - w64).max() <= RTOL16 * np.abs(w64).max()
    assert decode >= STEPS - 1
    assert got_ids == want_ids


def test_the_shims_kernels_run_in_genais_session(folders, tmp_path):
    """ORT's profile of GenAI's decoder session: SparseFFN nodes ran (without the shim the
    fallback functions are inlined and no SparseFFN node runs), one per layer and call."""
    _, _, out = folders
    prefix = tmp_path / "prof" / "p"
    prefix.parent.mkdir()
    overlay = {"model": {"decoder": {"session_options": {"enable_profiling": str(prefix)}}}}
    genai_models.greedy(out, 8, overlay)
    (profile,) = prefix.parent.glob(f"{prefix.name}*.json")
    runs = [e for e in json.loads(profile.read_text())
            if e.get("cat") == "Node" and e["args"].get("op_name") == "SparseFFN"]
    assert len(runs) >= 2 * 7
