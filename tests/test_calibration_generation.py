"""``fffc calibrate --prompts``: a decoder's statistics from the decode steps of its own greedy
generation. A tiny LLaMA is built by ONNX Runtime GenAI's model builder (and exported by
Optimum where its CLI is installed); the tokens generated are checked against
``onnxruntime_genai``'s greedy search and Hugging Face ``generate``, and the rows collected
against the FFN inputs of the original model run step by step here, independently."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import fffc
from fffc.cli import main
from fffc.contract.errors import EXIT_CODES
from fffc.contract.kinds import Decision
from tests.fixtures import tiny_decoder as tiny
from tests.fixtures.calibration import two_ffn_model

pytestmark = pytest.mark.slow

PROMPTS = ["the quick brown fox", "jumps over the lazy dog 3 times", "the lazy dog 7"]
NEW = 12  # tokens generated per prompt


@pytest.fixture(scope="session")
def hf(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return tiny.checkpoint(tmp_path_factory.mktemp("hf"))


@pytest.fixture(scope="session")
def genai(hf, tmp_path_factory):
    pytest.importorskip("onnxruntime_genai")
    return tiny.genai_folder(hf, tmp_path_factory.mktemp("genai") / "model")


@pytest.fixture(scope="session")
def optimum(hf, tmp_path_factory):
    if tiny.optimum_cli() is None:
        pytest.skip("no optimum environment: `make optimum` creates it (or set OPTIMUM_CLI)")
    out = tiny.optimum_export(hf, tmp_path_factory.mktemp("optimum") / "model")
    # Optimum copies the tokenizer when its transformers can load it; a tokenizer_config
    # written by transformers 5 it cannot, so the tokenizer is put beside the model here
    shutil.copy(hf / "tokenizer.json", out.parent)
    return out


@pytest.fixture(scope="session")
def models(request):
    return {"genai": lambda: request.getfixturevalue("genai"),
            "optimum": lambda: request.getfixturevalue("optimum")}


def _prompt_ids(hf) -> list[list[int]]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(hf / "tokenizer.json"))
    return [tok.encode(p).ids for p in PROMPTS]


def _onnx_file(model):
    return model / "model.onnx" if model.is_dir() else model


def reference(model, prompt: list[int], new_tokens: int):
    """Greedy generation with the original model in ONNX Runtime, its FFN inputs (each gate
    projection's input) exposed: (tokens fed back, prefill rows, decode rows), rows as
    [layer] → [tokens, hidden]."""
    import onnxruntime as ort

    m = onnx.load(str(_onnx_file(model)))
    gates = [n.input[0] for n in m.graph.node
             if n.op_type == "MatMul" and "gate_proj" in n.name]
    assert len(gates) == tiny.LAYERS
    m.graph.output.extend(helper.make_tensor_value_info(g, TensorProto.FLOAT, None)
                          for g in gates)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    inputs = {i.name for i in sess.get_inputs()}
    past = {f"past_key_values.{layer}.{kv}": np.zeros((1, tiny.KV_HEADS, 0, tiny.HEAD),
                                                      np.float32)
            for layer in range(tiny.LAYERS) for kv in ("key", "value")}
    tokens, done, fed = list(prompt), 0, []
    prefill, decode = None, [[] for _ in gates]
    while True:
        feed = {"input_ids": np.array([tokens], np.int64),
                "attention_mask": np.ones((1, done + len(tokens)), np.int64), **past}
        if "position_ids" in inputs:
            feed["position_ids"] = np.arange(done, done + len(tokens), dtype=np.int64)[None]
        out = dict(zip(names, sess.run(None, feed), strict=True))
        rows = [out[g].reshape(-1, tiny.HIDDEN) for g in gates]
        if prefill is None:
            prefill = rows
        else:
            for layer, r in enumerate(rows):
                decode[layer].append(r)
        past = {k: out[k.replace("past_key_values", "present")] for k in past}
        done += len(tokens)
        if len(fed) == new_tokens:
            break
        nxt = int(np.argmax(out["logits"][0, -1]))
        if nxt == tiny.EOS:
            break
        fed.append(nxt)
        tokens = [nxt]
    return fed, prefill, [np.concatenate(d) if d else np.zeros((0, tiny.HIDDEN)) for d in decode]


@pytest.fixture(scope="session")
def calibrated(models):
    """(model, rows) → fffc.calibrate's result on ``PROMPTS``, computed once."""
    cache = {}

    def get(name: str, rows: str = "decode"):
        if (name, rows) not in cache:
            cache[name, rows] = fffc.calibrate(models[name](), prompts=PROMPTS, generate=NEW,
                                               rows=rows)
        return cache[name, rows]

    return get


def _site_layers(model) -> dict[str, int]:
    """Site name → its layer, from the nodes detection matched."""
    found = fffc.inspect(_onnx_file(model))
    return {s.name: next(i for i in range(tiny.LAYERS)
                         if any(f"layers.{i}/" in n for n in s.matched_nodes))
            for s in found.sites}


def test_generated_tokens_are_genai_greedy(genai, hf, calibrated):
    import onnxruntime_genai as og

    got = calibrated("genai")["generation"]["generated"]
    m = og.Model(str(genai))
    og_tok = og.Tokenizer(m)
    for prompt, ids, mine in zip(PROMPTS, _prompt_ids(hf), got, strict=True):
        assert list(og_tok.encode(prompt)) == ids  # the model's own tokenizer
        params = og.GeneratorParams(m)
        params.set_search_options(max_length=len(ids) + NEW, do_sample=False)
        gen = og.Generator(m, params)
        gen.append_tokens(ids)
        want = []
        while not gen.is_done() and len(want) < NEW:
            gen.generate_next_token()
            want.append(int(gen.get_next_tokens()[0]))
        assert mine == want


@pytest.mark.parametrize("name", ["genai", "optimum"])
def test_rows_are_the_ffn_inputs_of_each_step(name, models, hf, calibrated):
    """The decode rows (default) and prefill rows (``rows="prefill"``) each site's statistics
    are made of are the FFN inputs of the original model generating step by step; the
    counts of both kinds are recorded, and the thresholds differ."""
    model = models[name]()
    decode, prefill = calibrated(name), calibrated(name, "prefill")
    refs = [reference(model, ids, NEW) for ids in _prompt_ids(hf)]
    assert decode["generation"]["generated"] == [r[0] for r in refs]
    n_prefill = sum(len(ids) for ids in _prompt_ids(hf))
    n_decode = sum(len(r[0]) for r in refs)
    assert n_decode == len(PROMPTS) * NEW  # no stop token came (else fewer)
    assert decode["rows"] == {"prefill": n_prefill, "decode": n_decode, "used": "decode"}
    assert prefill["rows"] == {"prefill": n_prefill, "decode": n_decode, "used": "prefill"}
    assert decode["feeds"] == len(PROMPTS) * (1 + NEW)
    for site, layer in _site_layers(model).items():
        want_decode = np.concatenate([r[2][layer] for r in refs])
        want_prefill = np.concatenate([r[1][layer] for r in refs])
        np.testing.assert_allclose(decode["_samples"][site], want_decode, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(prefill["_samples"][site], want_prefill, rtol=1e-5,
                                   atol=1e-6)
        assert decode["sites"][site]["tokens"] == n_decode
        assert prefill["sites"][site]["tokens"] == n_prefill
        assert decode["sites"][site]["thresholds"] != prefill["sites"][site]["thresholds"]


def test_optimum_generates_as_transformers_and_genai(hf, calibrated):
    import torch
    from transformers import LlamaForCausalLM

    lm = LlamaForCausalLM.from_pretrained(hf).eval()
    got = calibrated("optimum")["generation"]["generated"]
    for ids, mine in zip(_prompt_ids(hf), got, strict=True):
        with torch.no_grad():
            out = lm.generate(torch.tensor([ids]), max_new_tokens=NEW, do_sample=False,
                              eos_token_id=tiny.EOS, pad_token_id=tiny.EOS)
        assert mine == out[0, len(ids):].tolist()
    assert got == calibrated("genai")["generation"]["generated"]


def test_cli_on_a_genai_folder(genai, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS[:2]) + "\n\n")  # a blank line is no prompt
    out = tmp_path / "c.json"
    rc = main(["calibrate", str(genai), "--prompts", str(prompts), "--generate", "3",
               "--rows", "all", "-o", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0
    calib = json.loads(out.read_text())
    n_prefill = sum(len(ids) for ids in _prompt_ids(genai)[:2])
    assert calib["rows"] == {"prefill": n_prefill, "decode": 6, "used": "all"}
    assert calib["generation"]["prompts"] == 2 and calib["generation"]["stop"] == [tiny.EOS]
    assert calib["model"]["path"] == str((genai / "model.onnx").resolve())
    assert all(s["tokens"] == n_prefill + 6 for s in calib["sites"].values())
    assert f"{n_prefill} prefill and 6 decode rows" in printed


def _error(capsys, *argv) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("fffc: error")]
    assert len(lines) == 1, err
    return rc, lines[0]


def test_cli_errors(genai, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS[0] + "\n")
    bare = tmp_path / "bare"
    shutil.copytree(genai, bare, ignore=shutil.ignore_patterns("tokenizer*"))
    rc, line = _error(capsys, "calibrate", bare, "--prompts", prompts, "-o", tmp_path / "a.json")
    assert rc == EXIT_CODES["UsageError"]
    assert "no tokenizer found" in line and str(bare / "tokenizer.json") in line

    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    rc, line = _error(capsys, "calibrate", genai, "--prompts", empty, "-o", tmp_path / "b.json")
    assert rc == EXIT_CODES["UsageError"] and "no prompts" in line and str(empty) in line

    rc, line = _error(capsys, "calibrate", genai, "--prompts", prompts, "--generate", "0",
                      "-o", tmp_path / "c.json")
    assert rc == EXIT_CODES["UsageError"] and "no decode rows" in line

    rc, line = _error(capsys, "calibrate", genai, "--prompts", prompts, "--synthetic", "2",
                      "-o", tmp_path / "d.json")
    assert rc == EXIT_CODES["UsageError"] and "one source" in line

    not_genai = tmp_path / "folder"
    not_genai.mkdir()
    rc, line = _error(capsys, "calibrate", not_genai, "--prompts", prompts)
    assert rc == EXIT_CODES["ModelLoadError"] and "genai_config.json" in line
    assert not list(tmp_path.glob("*.json"))


def test_cli_refuses_prompts_for_an_encoder(tmp_path, capsys):
    path, _ = two_ffn_model(tmp_path)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hello\n")
    rc, line = _error(capsys, "calibrate", path, "--prompts", prompts)
    assert rc == EXIT_CODES["UsageError"]
    assert "decoder with a KV cache" in line and "--data" in line


def test_compile_applies_a_decode_calibration(genai, tmp_path, capsys):
    """``fffc compile --calibration`` on the decoder, with the allocation ``fffc calibrate
    --budget`` searched on the decode calls: TEAL on every site, thresholds of decode rows."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    calib = tmp_path / "c.json"
    assert main(["calibrate", str(genai), "--prompts", str(prompts), "--generate", "6",
                 "--budget", "uniform=0.5", "-o", str(calib)]) == 0
    out = tmp_path / "model.fffc"
    assert main(["compile", str(genai / "model.onnx"), "--calibration", str(calib),
                 "-o", str(out)]) == 0
    capsys.readouterr()
    stored = json.loads(calib.read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert {s["decision"] for s in manifest["sites"]} == {str(Decision.TEAL)}
    for s in manifest["sites"]:
        want = stored["sites"][s["name"]]["thresholds"]
        assert s["thresholds"] == [want["input"]["0.5"], want["hidden"]["0.5"]]
