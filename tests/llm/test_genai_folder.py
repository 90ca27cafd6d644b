"""``fffc compile GENAI_DIR``: an ONNX Runtime GenAI folder in, a GenAI folder out that
``onnxruntime_genai.Model`` loads as it is, generating the same tokens as the original for
exact modes, with the shim's kernels running in GenAI's sessions; ``fffc bench`` on it.

The folders are tiny LLaMAs built by the real model builder from a local checkpoint: ReLU
(ReGLU sites) and the same with a ReLU on the up projection (dReLU sites).
"""

from __future__ import annotations

import collections
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fffc.cli import main
from tests.fixtures import genai_models

pytest.importorskip("onnxruntime_genai", reason="GenAI folders need onnxruntime-genai")
pytest.importorskip("torch", reason="the test checkpoint is made with torch")
pytest.importorskip("transformers", reason="the test checkpoint is made with transformers")

pytestmark = pytest.mark.slow
TOKENS = 64
LAYERS = 2
SHIM = "libfffc_ops.so"


@pytest.fixture(scope="session")
def folders(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """variant → (the builder's folder, the compiled folder). The dReLU folder is compiled
    with --force over a copy of the ReLU one's output holding a stray file."""
    root = tmp_path_factory.mktemp("genai")
    hf = genai_models.checkpoint(root / "hf", act="relu")
    relu = genai_models.build(hf, root / "relu")
    drelu = genai_models.to_drelu(shutil.copytree(relu, root / "drelu"))
    out = {"relu": (relu, root / "relu.fffc"), "drelu": (drelu, root / "drelu.fffc")}
    assert main(["compile", str(relu), "-o", str(out["relu"][1])]) == 0
    shutil.copytree(out["relu"][1], out["drelu"][1])
    (out["drelu"][1] / "stray.txt").write_text("left by an earlier compile")
    assert main(["compile", str(drelu), "-o", str(out["drelu"][1]), "--force"]) == 0
    return out


def _profiled(folder: Path, prefix: Path, tokens: int) -> tuple[list[int], collections.Counter]:
    """Generated ids, and (op, provider) → node runs in the decoder session's ORT profile."""
    prefix.parent.mkdir(parents=True)
    overlay = {"model": {"decoder": {"session_options": {"enable_profiling": str(prefix)}}}}
    _, ids = genai_models.greedy(folder, tokens, overlay)
    (profile,) = prefix.parent.glob(f"{prefix.name}*.json")
    events = json.loads(profile.read_text())
    return ids, collections.Counter((e["args"]["op_name"], e["args"]["provider"])
                                    for e in events if e.get("cat") == "Node")


@pytest.mark.parametrize(("variant", "family"), [("relu", "ReGLU"), ("drelu", "dReLU")])
def test_greedy_generation_is_token_identical(folders, variant, family):
    src, out = folders[variant]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(s["family"], s["decision"]) for s in manifest["sites"]] == [(family, "exact")] * 2
    prompt, want = genai_models.greedy(src, TOKENS)
    prompt_out, got = genai_models.greedy(out, TOKENS)
    assert prompt_out == prompt and len(prompt) > 1  # the copied tokenizer encodes alike
    assert len(want) == TOKENS and len(set(want)) > 5  # a real sequence, not one token
    assert got == want


def test_output_folder_layout(folders):
    src, out = folders["relu"]
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    original = {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()}
    assert original <= files  # tokenizer, configs, the decoder and its data under their names
    assert {f.split("/")[0] for f in files - original} == {SHIM, "manifest.json", "kernels"}
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (src / name).read_bytes()

    config = json.loads((src / "genai_config.json").read_text())
    config["model"]["decoder"]["session_options"]["custom_ops_library"] = SHIM
    assert json.loads((out / "genai_config.json").read_text()) == config  # the rest kept

    bare = onnx.load(str(out / "model.onnx"), load_external_data=False)
    external = [t for t in bare.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert {e.value for t in external for e in t.external_data if e.key == "location"} == {
        "model.onnx.data"}
    assert sum(np.prod(t.dims) for t in external) > 0.9 * sum(
        np.prod(t.dims) for t in bare.graph.initializer)  # the weights, not a few
    assert (out / "model.onnx").stat().st_size < 100_000

    m = json.loads((out / "manifest.json").read_text())
    assert (m["model"], m["external_data"], m["shim"]) == ("model.onnx", "model.onnx.data", SHIM)
    assert m["genai"]["source"] == str(src.resolve())


def test_fffc_runtime_opens_the_folder(folders):
    import fffc.runtime
    from fffc.verify.feeds import Feeds

    src, out = folders["relu"]
    proto = onnx.load(str(src / "model.onnx"), load_external_data=False)
    feed = Feeds(proto, src / "model.onnx").call(batch=1, tokens=1, seed=0, past=5)
    want = ort.InferenceSession(str(src / "model.onnx"),
                                providers=["CPUExecutionProvider"]).run(["logits"], feed)[0]
    got = fffc.runtime.InferenceSession(out).run(["logits"], feed)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_force_replaced_the_earlier_output(folders):
    src, out = folders["drelu"]
    assert not (out / "stray.txt").exists()
    assert json.loads((out / "manifest.json").read_text())["genai"]["source"] == str(
        src.resolve())


def test_the_shims_kernels_run_in_genai(folders, tmp_path):
    """ORT's profile of GenAI's decoder session: with the config naming the shim, SparseFFN
    nodes run on the CPU EP at every decode step; the same folder without custom_ops_library
    loads too (the fallback functions, inlined) and runs none — so the profile tells them
    apart, and the tokens are the same."""
    _, out = folders["relu"]
    tokens = 16
    ids, ops = _profiled(out, tmp_path / "shim" / "prof", tokens)
    assert {p for (op, p) in ops if op == "SparseFFN"} == {"CPUExecutionProvider"}
    assert ops["SparseFFN", "CPUExecutionProvider"] >= LAYERS * (tokens - 1)

    bare = shutil.copytree(out, tmp_path / "no-shim")
    config = json.loads((bare / "genai_config.json").read_text())
    del config["model"]["decoder"]["session_options"]["custom_ops_library"]
    (bare / "genai_config.json").write_text(json.dumps(config))
    bare_ids, bare_ops = _profiled(bare, tmp_path / "bare" / "prof", tokens)
    assert not [k for k in bare_ops if k[0] == "SparseFFN"]
    assert bare_ops["Relu", "CPUExecutionProvider"] >= LAYERS * tokens
    assert bare_ids == ids


def _refused(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return rc, err


def test_refusals(folders, tmp_path, capsys):
    src, out = folders["relu"]
    rc, err = _refused(["compile", str(src), "-o", str(out)], capsys)
    assert rc == 2 and "output exists" in err
    for target in (src, src / "inside"):
        rc, err = _refused(["compile", str(src), "-o", str(target), "--force"], capsys)
        assert rc == 2 and "outside the model folder" in err
    assert not (src / "inside").exists()
    rc, err = _refused(["compile", str(out), "-o", str(tmp_path / "again")], capsys)
    assert rc == 4 and "an fffc output" in err

    mine = shutil.copytree(src, tmp_path / "mine")
    config = json.loads((mine / "genai_config.json").read_text())
    config["model"]["decoder"]["session_options"]["custom_ops_library"] = "libmine.so"
    (mine / "genai_config.json").write_text(json.dumps(config))
    rc, err = _refused(["compile", str(mine), "-o", str(tmp_path / "mine.fffc")], capsys)
    assert rc == 4 and "custom_ops_library ('libmine.so')" in err

    config["model"]["decoder"] = {"pipeline": [{"a": {"filename": "a.onnx"}}]}
    (mine / "genai_config.json").write_text(json.dumps(config))
    rc, err = _refused(["compile", str(mine), "-o", str(tmp_path / "mine.fffc")], capsys)
    assert rc == 4 and "a pipeline of 1 models" in err

    config["model"]["decoder"] = {"filename": "missing.onnx"}
    (mine / "genai_config.json").write_text(json.dumps(config))
    rc, err = _refused(["compile", str(mine), "-o", str(tmp_path / "mine.fffc")], capsys)
    assert rc == 3 and "'missing.onnx'" in err and "does not exist" in err

    (mine / "genai_config.json").unlink()
    rc, err = _refused(["compile", str(mine), "-o", str(tmp_path / "mine.fffc")], capsys)
    assert rc == 3 and "without genai_config.json" in err
    assert not (tmp_path / "mine.fffc").exists()


def test_bench_prints_decode_tokens_per_second(folders, capsys):
    _, out = folders["relu"]
    capsys.readouterr()
    assert main(["bench", str(out), "--prompt", "8", "--generate", "12", "--repeat", "2",
                 "--threads", "1", "--json"]) == 0
    b = json.loads(capsys.readouterr().out)
    assert (b["prompt"], b["generate"], b["threads"], b["identical_tokens"]) == (8, 12, 1, True)
    for which in ("original", "fffc"):
        d = b[which]["decode_tokens_per_s"]
        assert 0 < d["min"] <= d["median"] <= d["max"]
    assert b["speedup"] == pytest.approx(b["fffc"]["decode_tokens_per_s"]["median"]
                                         / b["original"]["decode_tokens_per_s"]["median"])
    rc, err = _refused(["bench", str(out), "--tokens", "1,8"], capsys)
    assert rc == 2 and "--prompt" in err
