"""The ONNX Runtime GenAI model builder's int4 and int8 decoders (``-p int4|int8``: every
projection a MatMulNBits): fffc finds one FFN site per layer with its weight format. The
int4 decoders of a ReLU-gated checkpoint (ReGLU, and made dReLU) and its int8 one get exact
kernels on their int4 / int8 codes: decode steps compute the float FFN on the weights ONNX
Runtime dequantizes, x rounded to int8 per block as the builder's accuracy_level 4 asks,
prefill runs the builder's MatMulNBits, and onnxruntime_genai generates with it."""

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


def _float_ffn_reference(folder, dest, bound: int) -> onnx.ModelProto:
    """The builder's decoder with every FFN projection, for calls of up to ``bound`` tokens,
    a float32 MatMul on the matrix ONNX Runtime dequantizes from its codes (MatMulNBits on
    the identity, no accuracy_level) — of x rounded to int8 per block of 32 and scaled back
    where the node has accuracy_level 4 and reads x (the gate and up projections): the
    function fffc's int4 kernels compute where they serve; its own MatMulNBits beyond, and
    every other node as the builder wrote it."""
    from tests.fixtures.quantized import ort_weight

    model = onnx.load(str(folder / "model.onnx"))  # external data read in
    nodes = list(model.graph.node)
    mk = onnx.helper.make_node
    for i, n in enumerate(nodes):
        if n.op_type != "MatMulNBits" or "/mlp/" not in n.name:
            continue
        w = numpy_helper.from_array(ort_weight(model, n), f"{n.name}__float")
        model.graph.initializer.append(w)
        k = w.dims[0]
        y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
        level = next((a.i for a in n.attribute if a.name == "accuracy_level"), 0)
        x, body = n.input[0], []
        if level == 4 and "down_proj" not in n.name:  # q = round(x·127/max), x' = q·max/127
            body = [mk("Constant", [], ["blk"], value=numpy_helper.from_array(
                        np.array([-1, 32], np.int64))),
                    mk("Reshape", [x, "blk"], ["xb"]), mk("Abs", ["xb"], ["ab"]),
                    mk("Constant", [], ["ax"], value=numpy_helper.from_array(
                        np.array([1], np.int64))),
                    mk("ReduceMax", ["ab", "ax"], ["am"], keepdims=1),  # opset 22's builder
                    mk("Constant", [], ["c127"], value=numpy_helper.from_array(
                        np.array(127, np.float32))),
                    mk("Constant", [], ["c0"], value=numpy_helper.from_array(
                        np.array(0, np.float32))),
                    mk("Div", ["c127", "am"], ["inv0"]), mk("Greater", ["am", "c0"], ["pos"]),
                    mk("Where", ["pos", "inv0", "c0"], ["inv"]), mk("Mul", ["xb", "inv"], ["s"]),
                    mk("Round", ["s"], ["q"]), mk("Div", ["am", "c127"], ["sx"]),
                    mk("Mul", ["q", "sx"], ["xq"]), mk("Shape", [x], ["xs"]),
                    mk("Reshape", ["xq", "xs"], ["x8"])]
            x = "x8"
        kernel = onnx.helper.make_graph([*body, mk("MatMul", [x, w.name], ["y"])],
                                        f"{n.name}_f", [], [y])
        beyond = onnx.helper.make_graph([onnx.helper.make_node(
            n.op_type, list(n.input), ["y"], domain=n.domain, name=n.name)], f"{n.name}_q", [],
            [y])
        beyond.node[0].attribute.extend(n.attribute)
        size, few = f"{n.name}__size", f"{n.name}__few"
        nodes[i:i + 1] = [
            onnx.helper.make_node("Size", [n.input[0]], [size]),
            onnx.helper.make_node("LessOrEqual", [size, f"{n.name}__bound"], [few]),
            onnx.helper.make_node("If", [few], list(n.output), then_branch=kernel,
                                  else_branch=beyond)]
        model.graph.initializer.append(numpy_helper.from_array(
            np.array(bound * k, np.int64), f"{n.name}__bound"))
    flat = [x for x in nodes for x in (x if isinstance(x, list) else [x])]
    del model.graph.node[:]
    model.graph.node.extend(flat)
    onnx.save(model, str(dest), save_as_external_data=True, location=dest.name + ".data")
    return dest


def _with_shim(folder) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.register_custom_ops_library(str(folder / "libfffc_ops.so"))
    return ort.InferenceSession(str(folder / "model.onnx"), so,
                                providers=["CPUExecutionProvider"])


def _greedy(folder, ids: list[int], n: int) -> list[int]:
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + n, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(ids)
    while not gen.is_done():
        gen.generate_next_token()
    return [int(t) for t in gen.get_sequence(0)]


@pytest.mark.parametrize("precision,bits", [("int4", 4), ("int4-drelu", 4), ("int8", 8)])
def test_quantized_decoder_gets_kernels_on_its_codes(precision, bits, genai, tmp_path):
    """The builder's int4 decoder of a ReLU-gated checkpoint (ReGLU), made dReLU, and its int8
    decoder (MatMulNBits bits 8)."""
    folder = genai[precision]
    out = tmp_path / "out"
    # int8: the table's crossover (at this toy size ONNX Runtime's int8 MatMulNBits may time
    # faster than the kernel at 1 token on a busy machine, which would leave the site dense)
    table = ["--crossovers", "table"] if bits == 8 else []
    assert main(["compile", str(folder), "-o", str(out), "--target", "x86", *table]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["decision"] for s in manifest["sites"]] == ["exact"] * LAYERS
    assert manifest["verification"]["model_with_shim"]["ok"]
    for s in manifest["sites"]:  # gate decisions vs the builder's MatMulNBits on the probes
        flips = s["gate_flips"]
        assert flips["of"] > 0 and flips["of"] % FF == 0
        assert flips["rate"] < 1e-2
    artifact = onnx.load(str(out / "model.onnx"), load_external_data=False)
    nbits = [n for n in artifact.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 2 * LAYERS + 1  # qkv and o per layer, lm_head: as the builder's
    ops = [i for n in artifact.graph.node if n.op_type == "If" for a in n.attribute
           for i in a.g.node if i.op_type == "SparseFFN"]
    assert len(ops) == LAYERS
    for op in ops:  # the codes, x rounded to int8 as the builder's accuracy_level 4 says
        attrs = {a.name: a.i for a in op.attribute if a.type == onnx.AttributeProto.INT}
        assert (attrs["bits"], attrs["accuracy_level"]) == (bits, 4)
    builders = {i.name for i in onnx.load(str(folder / "model.onnx"),
                                          load_external_data=False).graph.initializer}
    added = [int(np.prod(i.dims)) for i in artifact.graph.initializer
             if i.data_type == onnx.TensorProto.FLOAT and i.name not in builders]
    assert max(added) < HIDDEN * FF // 8  # scales: no float32 copy of a projection

    (bound,) = {b["max_tokens"] for s in manifest["sites"] for b in s["dispatch"]["branches"]
                if b["branch"] == "kernel"}
    ref_folder = tmp_path / "reference"
    shutil.copytree(folder, ref_folder)
    (ref_folder / "model.onnx.data").unlink(missing_ok=True)
    _float_ffn_reference(folder, ref_folder / "model.onnx", bound)
    reference = ort.InferenceSession(str(ref_folder / "model.onnx"),
                                     providers=["CPUExecutionProvider"])
    base = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    compiled = _with_shim(out)
    decode, prefill = _feeds(7, 1), _feeds(0, bound + 3)
    for g, w in zip(compiled.run(None, decode), reference.run(None, decode), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
    for g, w, r in zip(compiled.run(None, prefill), base.run(None, prefill),
                       reference.run(None, prefill), strict=True):
        np.testing.assert_array_equal(g, w)
        np.testing.assert_array_equal(r, w)

    # onnxruntime_genai loads the folder (the shim as its custom_ops_library) and generates
    # the reference's greedy tokens (the builder's own model, whose MatMulNBits quantize x
    # to int8 at accuracy_level 4, may part from them after a few tokens)
    ids = [5, 17, 42, 99, 7, 3, 250, 11]
    assert _greedy(out, ids, 24) == _greedy(ref_folder, ids, 24)
