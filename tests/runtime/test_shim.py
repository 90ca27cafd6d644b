"""The native shim in ONNX Runtime: real kernels, linked into ``libfffc_ops.so``.

One kernel library and one shim are built per test session (the fixed C++ objects are
cached across sessions); every test then opens small one-node models against it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import fffc.runtime
from fffc.codegen.schedules import family
from tests.fixtures.shim import (
    D_FF,
    D_IN,
    D_OUT,
    VARIANTS,
    Variant,
    make_model,
    reference,
    weights,
)

RTOL, ATOL = 1e-4, 1e-4


@pytest.fixture(scope="session")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fffc.codegen.build import build_kernel_library
    from fffc.package.native import build_shim

    out = tmp_path_factory.mktemp("shim")
    library = build_kernel_library([v.spec() for v in VARIANTS], family("x86"), out / "kernels")
    return build_shim(library, out)


def session(shim: Path, model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.register_custom_ops_library(str(shim))
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


TOKEN_SHAPES = {0: (0, 4), 1: (1, 1), 3: (1, 3), 130: (2, 65)}


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_matches_reference(shim: Path, variant: Variant) -> None:
    w = weights(variant)
    sess = session(shim, make_model(variant, w))
    rng = np.random.default_rng(1)
    for tokens, (batch, seq) in TOKEN_SHAPES.items():
        x = rng.standard_normal((batch, seq, D_IN)).astype(np.float32)
        (y,) = sess.run(None, {"X": x})
        assert y.shape == (batch, seq, D_OUT), tokens
        assert y.dtype == np.float32
        np.testing.assert_allclose(y, reference(variant, w, x), rtol=RTOL, atol=ATOL,
                                   err_msg=f"T={tokens}")



@pytest.mark.parametrize("shape", [(D_IN,), (5, D_IN), (2, 1, 3, D_IN)], ids=len)
def test_any_rank(shim: Path, shape: tuple[int, ...]) -> None:
    """Leading dims of X are tokens, whatever their number; Y keeps them."""
    v = VARIANTS[0]
    w = weights(v)
    sess = session(shim, make_model(v, w, lead=tuple(f"d{i}" for i in range(len(shape) - 1))))
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    (y,) = sess.run(None, {"X": x})
    assert y.shape == (*shape[:-1], D_OUT)
    np.testing.assert_allclose(y, reference(v, w, x), rtol=RTOL, atol=ATOL)

def test_concurrent_runs(shim: Path) -> None:
    """One session, four Python threads: ORT runs Compute concurrently; results stay exact."""
    v = VARIANTS[3]
    w = weights(v)
    sess = session(shim, make_model(v, w))
    errors: list[str] = []

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for i in range(25):
            seq = int(rng.integers(1, 70))
            x = rng.standard_normal((2, seq, D_IN)).astype(np.float32)
            (y,) = sess.run(None, {"X": x})
            if not np.allclose(y, reference(v, w, x), rtol=RTOL, atol=ATOL):
                errors.append(f"thread {seed} run {i} seq {seq}")

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_no_compiled_kernel(shim: Path) -> None:
    v = VARIANTS[0]
    sess = session(shim, make_model(v, weights(v, d_ff=64)))
    with pytest.raises(Exception, match=r"no compiled kernel for SparseFFN\(activation=relu.*"
                                        r"d_in=32, d_ff=64, d_out=48.*in this artifact"):
        sess.run(None, {"X": np.ones((1, 2, D_IN), np.float32)})


@pytest.mark.parametrize(("attribute", "value", "choices"), [
    ("mode", "fast", "exact, teal, cats or predictor"),
    ("activation", "tanh", "relu, gelu, gelu_tanh or silu"),
    ("up_activation", "silu", "none or relu"),
])
def test_attribute_outside_its_choices(shim: Path, attribute: str, value: str,
                                       choices: str) -> None:
    """A SparseFFN node whose string attribute is none of the contract's choices is refused
    when its kernel is created, with the attribute and its choices named."""
    v = VARIANTS[0]
    model = make_model(v, weights(v))
    (node,) = model.graph.node
    for attr in node.attribute:
        if attr.name == attribute:
            attr.s = value.encode()
    with pytest.raises(Exception, match=f"SparseFFN: {attribute} must be {choices}, got {value}"):
        session(shim, model).run(None, {"X": np.ones((1, 2, D_IN), np.float32)})


def test_kernel_error_reaches_ort(shim: Path) -> None:
    """A kernel's own argument check fails (B1 is 2-D): its message comes back as the error."""
    v = VARIANTS[0]
    sess = session(shim, make_model(v, weights(v), b1_shape=(1, D_FF)))
    with pytest.raises(Exception, match=r"fffc_sparse_ffn_\w+.*ndim"):
        sess.run(None, {"X": np.ones((1, 2, D_IN), np.float32)})


def test_exports_only_entry_points(shim: Path) -> None:
    out = subprocess.run(["nm", "-D", "--defined-only", str(shim)], capture_output=True,
                         text=True, check=True).stdout
    names = {line.split()[-1] for line in out.splitlines() if line.strip()}
    assert "RegisterCustomOps" in names
    assert not {n for n in names if n != "RegisterCustomOps" and not n.startswith("fffc_")}


def test_no_tvm_or_libstdcxx_dependency(shim: Path) -> None:
    out = subprocess.run(["readelf", "-d", str(shim)], capture_output=True, text=True,
                         check=True).stdout
    needed = [ln for ln in out.splitlines() if "(NEEDED)" in ln]
    assert needed, out
    assert not [ln for ln in needed if "libtvm" in ln or "libstdc++" in ln], needed


def test_loads_on_glibc_2_35(shim: Path) -> None:
    """No symbol newer than glibc 2.35 (Ubuntu 22.04, JetPack 6): static libstdc++'s
    arc4random@2.36 reference is resolved inside the shim (runtime/src/glibc_compat.cc)."""
    from fffc.package.native import glibc_requirement

    out = subprocess.run(["objdump", "-T", str(shim)], capture_output=True, text=True,
                         check=True).stdout
    assert "arc4random" not in out
    assert tuple(map(int, glibc_requirement(shim).split("."))) <= (2, 35)


def _artifact(tmp_path: Path, shim: Path, manifest: bool) -> Path:
    v = VARIANTS[2]
    art = tmp_path / "model.fffc"
    art.mkdir()
    shutil.copy(shim, art / "libfffc_ops.so")
    onnx.save(make_model(v, weights(v)), str(art / ("ffn.onnx" if manifest else "model.onnx")))
    if manifest:
        (art / "manifest.json").write_text(json.dumps({"model": "ffn.onnx",
                                                       "shim": "libfffc_ops.so"}))
    return art


@pytest.mark.parametrize("manifest", [True, False], ids=["manifest", "defaults"])
def test_runtime_inference_session(shim: Path, tmp_path: Path, manifest: bool) -> None:
    v = VARIANTS[2]
    art = _artifact(tmp_path, shim, manifest)
    sess = fffc.runtime.InferenceSession(art)
    assert isinstance(sess, ort.InferenceSession)
    x = np.random.default_rng(3).standard_normal((3, 5, D_IN)).astype(np.float32)
    np.testing.assert_allclose(sess.run(None, {"X": x})[0], reference(v, weights(v), x),
                               rtol=RTOL, atol=ATOL)
    assert fffc.runtime.shim_path(art) == art / "libfffc_ops.so"
    # Caller-owned options: registering is idempotent, so one SessionOptions opens
    # several sessions (ORT refuses a custom-op domain registered twice).
    so = ort.SessionOptions()
    fffc.runtime.register(so, art)
    fffc.runtime.InferenceSession(art, so)
    fffc.runtime.InferenceSession(art, so)
    assert fffc.runtime.model_path(art).name == ("ffn.onnx" if manifest else "model.onnx")


def test_runtime_bad_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing"):
        fffc.runtime.InferenceSession(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        fffc.runtime.InferenceSession(tmp_path / "empty")


def test_float32_only(shim: Path) -> None:
    """The op declares float32 inputs, so ORT refuses other types when the session is made."""
    v = VARIANTS[1]
    model = make_model(v, weights(v))
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    with pytest.raises(Exception, match=r"(?i)type"):
        session(shim, model)


def _screen_trap(v: Variant, d_ff: int = D_FF) -> dict[str, np.ndarray | None]:
    """Dense ReLU weights whose float16 copy has every neuron's sign wrong: W1's entries
    are 1 + 2⁻¹² (float16 rounds them to 1) and B1 = −D_IN·(1 + 2⁻¹³), so with X = ones each
    pre-activation is +D_IN·2⁻¹³ in float32 and −D_IN·2⁻¹³ on the float16 copy. Half the
    neurons get 0.25 more bias (clearly positive), so the output mixes both kinds."""
    rng = np.random.default_rng(5)
    f32 = np.float32
    b1 = np.full(d_ff, -D_IN * (1 + 2.0**-13))
    b1[::2] += 0.25
    return {"W1": np.full((D_IN, d_ff), 1 + 2.0**-12, f32), "B1": b1.astype(f32),
            "W2": rng.standard_normal((d_ff, D_OUT)).astype(f32),
            "B2": rng.standard_normal(D_OUT).astype(f32),
            "WU": rng.uniform(0.5, 1.0, (d_ff, D_IN)).astype(f32) if v.gated else None}


@pytest.mark.parametrize("variant", [VARIANTS[0], VARIANTS[3]], ids=lambda v: v.name)
def test_screen_keeps_neurons_float16_would_drop(shim: Path, variant: Variant) -> None:
    """One token runs the float16-screened kernel: its error bound must send the neurons the
    float16 copy gets wrong to the float32 recompute (a screen without it drops them)."""
    v = variant
    w = _screen_trap(v)
    x = np.ones((1, 1, D_IN), np.float32)
    naive = (x[0] @ w["W1"].astype(np.float16).astype(np.float32) + w["B1"]) > 0
    exact = (x[0] @ w["W1"] + w["B1"]) > 0
    assert exact.sum() == D_FF and naive.sum() == D_FF // 2  # the trap is set
    want = reference(v, w, x)
    up = np.maximum(x[0] @ w["WU"].T, 0) if v.gated else 1.0
    dropped = np.maximum(x[0] @ w["W1"] + w["B1"], 0) * up * ~naive @ w["W2"]
    assert np.abs(dropped).max() > 100 * ATOL  # what a screen without its bound would lose
    (y,) = session(shim, make_model(v, w)).run(None, {"X": x})
    np.testing.assert_allclose(y, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("variant", [VARIANTS[0], VARIANTS[3]], ids=lambda v: v.name)
@pytest.mark.parametrize("w1_input", [False, True], ids=["initializer", "graph-input"])
def test_one_token_kernel_choice(shim: Path, w1_input: bool, variant: Variant) -> None:
    """Which kernel a token runs, seen through a kernel's own argument error (B1 2-D): the
    screened one for initializer weights, the plain decode one for weights fed at run time."""
    v = variant
    w = weights(v)
    model = make_model(v, w, b1_shape=(1, D_FF))
    feeds = {"X": np.ones((1, 1, D_IN), np.float32)}
    if w1_input:
        model.graph.initializer.remove(next(i for i in model.graph.initializer if i.name == "W1"))
        model.graph.input.append(helper.make_tensor_value_info("W1", TensorProto.FLOAT, [D_IN, D_FF]))
        feeds["W1"] = w["W1"]
    with pytest.raises(Exception, match=r"fffc_sparse_ffn_\w+_" + ("decode" if w1_input else "screened")):
        session(shim, model).run(None, feeds)


def test_screen_not_used_for_weights_fed_at_run_time(shim: Path) -> None:
    """W1 as a graph input (not an initializer) may change between runs at the same address:
    the per-weight screen must not be cached for it (the plain kernel runs instead)."""
    v = VARIANTS[0]
    w = weights(v)
    model = make_model(v, w)
    model.graph.initializer.remove(next(i for i in model.graph.initializer if i.name == "W1"))
    model.graph.input.append(helper.make_tensor_value_info("W1", TensorProto.FLOAT, [D_IN, D_FF]))
    sess = session(shim, model)
    x = np.random.default_rng(3).standard_normal((1, 1, D_IN)).astype(np.float32)
    w1 = w["W1"].copy()
    for scale in (1.0, -2.0):  # the same buffer, rewritten in place
        w1[...] = w["W1"] * scale
        (y,) = sess.run(None, {"X": x, "W1": w1})
        np.testing.assert_allclose(y, reference(v, {**w, "W1": w1}, x), rtol=RTOL, atol=ATOL)
