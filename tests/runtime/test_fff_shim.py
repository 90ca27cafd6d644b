"""``ai.fffc::FastFeedForward`` through the native shim in ONNX Runtime, at large shapes
beyond BERT-base (H 4096, D 15, K 128) and with either tie-break, against the
float64 NumPy reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fffc.codegen.schedules import family
from fffc.contract.kernels import FffSpec
from fffc.contract.ops import DOMAIN, OPSET_VERSION
from fffc.verify.reference import fast_feed_forward

# (d_in, d_out, trees, depth, tie_break)
SHAPES = [(4096, 4096, 1, 11, "gt"), (64, 48, 1, 15, "gt"), (1024, 1024, 128, 4, "gt"),
          (48, 40, 4, 3, "ge")]


def _weights(d_in: int, d_out: int, trees: int, depth: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(depth)
    rows = trees * (2 ** (depth + 1) - 1)
    w = {"W_in": rng.standard_normal((rows, d_in)) / np.sqrt(d_in),
         "B_in": rng.standard_normal(rows) * 0.1, "W_out": rng.standard_normal((rows, d_out))}
    return {k: v.astype(np.float32) for k, v in w.items()}


def _model(shape: tuple, w: dict[str, np.ndarray], **attrs) -> onnx.ModelProto:
    d_in, d_out, trees, depth, tie_break = shape
    node = helper.make_node("FastFeedForward", ["X", "W_in", "B_in", "W_out"], ["Y"],
                            domain=DOMAIN, trees=trees, depth=depth, activation="gelu",
                            tie_break=attrs.get("tie_break", tie_break))
    graph = helper.make_graph(
        [node], "fff", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["b", "s", d_in])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["b", "s", d_out])],
        [numpy_helper.from_array(v, k) for k, v in w.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(DOMAIN, OPSET_VERSION)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fffc.codegen.build import build_kernel_library
    from fffc.package.native import build_shim

    out = tmp_path_factory.mktemp("fff_shim")
    specs = [FffSpec(*s) for s in SHAPES]
    return build_shim(build_kernel_library(specs, family("x86"), out / "kernels"), out)


def _session(shim: Path, model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.register_custom_ops_library(str(shim))
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"H{s[0]}-{s[2]}x{s[3]}-{s[4]}")
def test_matches_reference(shim: Path, shape: tuple) -> None:
    d_in, d_out, trees, depth, tie_break = shape
    w = _weights(d_in, d_out, trees, depth)
    if tie_break == "ge":
        w["B_in"][0] = 0.0  # tree 0's root: z = 0 exactly for a zero token, the tie decides
    sess = _session(shim, _model(shape, w))
    rng = np.random.default_rng(1)
    # serial walk (≤ 8 tokens), parallel walk, and level-synchronous blocks for K 128
    for lead in ((1, 1), (1, 5), (3, 13), (2, 45)):
        x = rng.standard_normal((*lead, d_in), dtype=np.float32)
        x[0, 0] = 0.0
        want = fast_feed_forward(x, w["W_in"], w["B_in"], w["W_out"], trees=trees, depth=depth,
                                 tie_break=tie_break)
        got = sess.run(None, {"X": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_tie_break_selects_its_kernel(shim: Path) -> None:
    """The same weights with "ge" and with "gt" differ exactly where a logit is 0; a node
    whose tie-break has no compiled kernel is refused by name, not run with the other."""
    shape = SHAPES[3]
    w = _weights(*shape[:4])
    w["B_in"][0] = 0.0  # tree 0's root: z = 0 for the zero token
    x = np.zeros((1, 1, shape[0]), np.float32)
    got = _session(shim, _model(shape, w)).run(None, {"X": x})[0]
    for tb in ("ge", "gt"):
        want = fast_feed_forward(x, w["W_in"], w["B_in"], w["W_out"], trees=4, depth=3,
                                 tie_break=tb)
        assert np.allclose(got, want, rtol=1e-5, atol=1e-6) == (tb == "ge")
    with pytest.raises(Exception, match=r"no compiled kernel for FastFeedForward.*4x3"):
        _session(shim, _model(shape, w, tie_break="gt")).run(None, {"X": x})
    with pytest.raises(Exception, match="tie_break must be gt or ge"):
        _session(shim, _model(shape, w, tie_break="lt")).run(None, {"X": x})


def test_wide_forest_reaches_level_blocks_above() -> None:
    """K 128 at H 1024 walks 5 MB per token: its 90-token run above used the level kernel."""
    v = family("x86").fff_variants(FffSpec(*SHAPES[2]))[-1]
    assert v.name == "level" and v.min_tokens <= 90
