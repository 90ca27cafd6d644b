"""The float16 screen of exact dense ReLU FFNs (kernels/exact_screened.py): its error bound,
and the kernel with and without it on weights whose float16 copy gets every sign wrong."""

from __future__ import annotations

import numpy as np
import pytest

from fffc.codegen import _tvm
from fffc.codegen.kernels.exact_screened import screen_inputs, screened_primfunc
from fffc.codegen.schedules import family
from fffc.contract.errors import CodegenError
from tests.fixtures.sparse_kernels import ATOL, RTOL, reference, spec


def _bound_holds(w1: np.ndarray, b1: np.ndarray | None, x: np.ndarray) -> None:
    """|ĥ − h| ≤ ‖x‖₂·E[0] + E[1] for the float32 sums over the float16 copy."""
    ws, _, e = screen_inputs(w1, b1)
    b = np.zeros(w1.shape[1], np.float32) if b1 is None else b1
    approx = x @ ws.astype(np.float32) + b  # float32 arithmetic, NumPy's summation order
    exact = x.astype(np.float64) @ w1.astype(np.float64) + b
    bound = np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True) * e[0] + e[1]
    assert np.all(np.abs(approx - exact) <= bound)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 30.0])
def test_bound_holds_on_random_weights(scale: float) -> None:
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((96, 200)) * scale).astype(np.float32)
    b1 = (rng.standard_normal(200) * scale * 10).astype(np.float32)
    _bound_holds(w1, b1, rng.standard_normal((64, 96)).astype(np.float32))
    _bound_holds(w1, None, rng.standard_normal((64, 96)).astype(np.float32) * 1e-3)


def test_bound_is_tight_enough_to_screen() -> None:
    """On N(0, 1/d) weights the band the screen cannot decide is thin (a few % of neurons
    with |h| < bound), else the screen would save nothing."""
    rng = np.random.default_rng(1)
    w1 = (rng.standard_normal((768, 3072)) / np.sqrt(768)).astype(np.float32)
    _, _, e = screen_inputs(w1, None)
    x = rng.standard_normal(768)
    h = x @ w1
    assert np.mean(np.abs(h) < np.linalg.norm(x) * e[0] + e[1]) < 0.02


def test_weights_beyond_float16_are_never_screened_out() -> None:
    w1 = np.ones((8, 4), np.float32)
    w1[3, 1] = 1e6  # float16 overflows to inf
    _, _, e = screen_inputs(w1, np.zeros(4, np.float32))
    assert np.isinf(e[0, 1]) and np.isfinite(e[0, [0, 2, 3]]).all()


def _trap(d: int, f: int, seed: int = 5) -> dict[str, np.ndarray]:
    """Weights whose float16 copy has every neuron's sign wrong at X = ones: W1 = 1 + 2⁻¹²
    (float16: 1), B1 = −d·(1 + 2⁻¹³): +d·2⁻¹³ exactly, −d·2⁻¹³ on the copy."""
    rng = np.random.default_rng(seed)
    return {"W1": np.full((d, f), 1 + 2.0**-12, np.float32),
            "B1": np.full(f, -d * (1 + 2.0**-13), np.float32),
            "W2": rng.standard_normal((f, 24)).astype(np.float32),
            "B2": rng.standard_normal(24).astype(np.float32)}


@pytest.mark.parametrize("up", [None, "relu", "none"], ids=["relu", "drelu", "reglu"])
def test_kernel_recomputes_what_float16_gets_wrong(up: str | None) -> None:
    """With its bound the kernel is exact on the trap; with the bound zeroed it drops every
    neuron — so the bound, not luck, is what keeps it exact."""
    s = spec(32, 128, 24, up=up)
    fam = family("x86")
    target = fam.target(None)
    v = next(v for v in fam.sparse_variants(s, target) if v.name == "screened")
    ex = _tvm.compile_module({"k": screened_primfunc(s, v.tiling, "k")}, target)
    w = _trap(32, 128)
    w["WU"] = np.random.default_rng(2).uniform(0.5, 1.0, (128, 32)).astype(np.float32)
    x = np.ones((1, 32), np.float32)
    ws, w1t, e = screen_inputs(w["W1"], w["B1"])
    want = reference(s, {**w, "WU": w["WU"] if s.gated else None}, x)
    assert np.abs(want - w["B2"]).max() > 0.01  # the neurons matter
    rest = [w["B1"], w["W2"], w["B2"], *([w["WU"]] if s.gated else [])]

    def run(bound: np.ndarray) -> tuple[np.ndarray, int]:
        y, stat = _tvm.empty((1, 24)), _tvm.tensor(np.full(1, -1, np.int32))
        ex["k"](*[_tvm.tensor(a) for a in (x, ws, w1t, bound, *rest)], stat, y)
        return y.numpy(), int(stat.numpy()[0])

    y, listed = run(e)
    np.testing.assert_allclose(y, want, rtol=RTOL, atol=ATOL)
    assert listed == 128  # STAT: every neuron is active
    y, listed = run(np.zeros_like(e))
    np.testing.assert_allclose(y, np.broadcast_to(w["B2"], (1, 24)), rtol=RTOL, atol=ATOL)
    assert listed == 0


def test_gelu_and_silu_specs_have_no_screened_kernel() -> None:
    from dataclasses import replace

    from fffc.codegen.kernels.exact_screened import screened_primfunc
    from fffc.codegen.kernels.sparse_ffn import Tiling

    t = Tiling(mr=1, nr1=16, nb=64, nr3=16, vl=16)
    for act in ("gelu", "silu"):
        with pytest.raises(CodegenError, match="exact ReLU-gated"):
            screened_primfunc(replace(spec(32, 128, 48), activation=act), t, "k")


@pytest.mark.parametrize("target, mcpu, screened", [
    ("x86", "x86-64", False),  # no F16C: float16 loads would be library calls
    ("x86", "x86-64-v3", True), ("x86", "skylake-avx512", True), ("arm", None, True)])
def test_screened_variant_where_float16_loads_are_one_instruction(
        target: str, mcpu: str | None, screened: bool) -> None:
    fam = family(target)
    names = [v.name for v in fam.sparse_variants(spec(64, 256, 64), fam.target(mcpu))]
    assert ("screened" in names) == screened and "decode" in names
    gated = [v.name for v in fam.sparse_variants(spec(64, 256, 64, up="relu"), fam.target(mcpu))]
    assert ("screened" in gated) == screened
