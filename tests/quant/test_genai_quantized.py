"""The ONNX Runtime GenAI model builder's int4 and int8 decoders (``-p int4|int8``: every
projection a MatMulNBits): fffc finds one FFN site per layer with its weight format, and
``fffc compile`` leaves them as they were: the folder's decoder is the builder's, its
quantized weights byte for byte, computing the same logits and cache."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import fffc
from fffc.cli import main
from fffc.contract.kinds import Granularity, QuantSource, SiteKind
from tests.fixtures.genai_models import build, checkpoint, to_drelu

pytestmark = [pytest.mark.torch, pytest.mark.slow]

LAYERS, HIDDEN, FF, KV_HEADS, HEAD, VOCAB = 2, 128, 512, 2, 32, 300  # genai_models.checkpoint


@pytest.fixture(scope="module")
def genai(tmp_path_factory):
    pytest.importorskip("torch", reason="the torch extra builds the checkpoint")
    pytest.importorskip("onnxruntime_genai", reason="the GenAI model builder is needed")
    root = tmp_path_factory.mktemp("genai-quantized")
    ckpt = checkpoint(root / "ckpt", act="relu")
    folders = {p: build(ckpt, root / p, p) for p in ("int4", "int8")}
    shutil.copytree(folders["int4"], root / "int4-drelu")
    return {**folders, "int4-drelu": to_drelu(root / "int4-drelu")}


def _feeds(past: int, seq: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    out = {"input_ids": rng.integers(0, VOCAB, (1, seq), dtype=np.int64),
           "attention_mask": np.ones((1, past + seq), np.int64)}
    for i in range(LAYERS):
        for kv in ("key", "value"):
            out[f"past_key_values.{i}.{kv}"] = rng.standard_normal(
                (1, KV_HEADS, past, HEAD)).astype(np.float32)
    return out


@pytest.mark.parametrize("precision,bits,up", [("int4", 4, "none"), ("int8", 8, "none"),
                                               ("int4-drelu", 4, "relu")])
def test_builder_ffns_are_sites_with_their_format(precision, bits, up, genai):
    """ReGLU (the checkpoint's relu MLP), and dReLU (a Relu added on each up projection)."""
    a = fffc.inspect(genai[precision])
    assert a.near_misses == []
    assert len(a.sites) == LAYERS
    for s in a.sites:
        assert (s.kind, s.activation, s.up_activation) == (SiteKind.GATED, "relu", up)
        assert (s.d_model, s.d_ff) == (HIDDEN, FF)
        assert set(s.weight_formats) == {"W1", "WU", "W2"}
        for fmt in s.weight_formats.values():
            assert (fmt.source, fmt.bits, fmt.granularity, fmt.block_size) == (
                QuantSource.MATMUL_NBITS, bits, Granularity.BLOCK, 32)


@pytest.mark.parametrize("precision", ["int4", "int8", "int4-drelu"])
def test_compile_leaves_the_builders_decoder_as_it_was(precision, genai, tmp_path, capsys):
    folder = genai[precision]
    out = tmp_path / "out"
    assert main(["compile", str(folder), "-o", str(out)]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["decision"] for s in manifest["sites"]] == ["dense"] * LAYERS
    for s in manifest["sites"]:
        assert s["reason"].endswith("no fffc kernels for this weight format yet; left as it was")
        assert f"{s['name']}: {s['reason']}" in printed

    original, artifact = onnx.load(folder / "model.onnx"), onnx.load(out / "model.onnx")
    nbits = [(n.name, list(n.input), [a.SerializeToString() for a in n.attribute])
             for n in original.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 5 * LAYERS + 1  # qkv, o, gate, up, down per layer; lm_head
    got_nbits = [n for n in artifact.graph.node if n.op_type == "MatMulNBits"]
    assert sorted((n.name, [a.SerializeToString() for a in n.attribute]) for n in got_nbits) \
        == sorted((name, attrs) for name, _, attrs in nbits)
    got = {i.name: numpy_helper.to_array(i, base_dir=str(out)) for i in artifact.graph.initializer}
    for init in original.graph.initializer:
        want = numpy_helper.to_array(init, base_dir=str(folder))
        assert init.name in got, init.name
        assert (got[init.name].dtype, got[init.name].tobytes()) == (want.dtype, want.tobytes())

    base = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    compiled = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    for past, seq in ((0, 5), (7, 1)):
        feed = _feeds(past, seq)
        for g, w in zip(compiled.run(None, feed), base.run(None, feed), strict=True):
            np.testing.assert_array_equal(g, w)
