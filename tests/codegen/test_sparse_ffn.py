"""SparseFFN exact kernels vs the NumPy reference: every variant, shape family and edge."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from fffc.codegen import _tvm
from fffc.codegen.build import host_target
from fffc.codegen.kernels.exact_decode import exact_decode_primfunc
from fffc.codegen.kernels.exact_screened import screenable
from fffc.codegen.kernels.sparse_ffn import sparse_ffn_primfunc
from fffc.codegen.schedules import family
from fffc.contract.errors import CodegenError
from fffc.contract.kernels import SparseSpec
from tests.fixtures.sparse_kernels import (
    ATOL,
    RTOL,
    TOKENS,
    args,
    inputs,
    kernels,
    reference,
    spec,
    weights,
)

SPECS = {
    "relu": spec(),
    "relu-nobias": spec(bias=False),
    "relu-parallel": spec(64, 1024, 80),  # above the serial threshold: threads
    "relu-odd": spec(20, 52, 12),  # no dim a multiple of 8: narrow vectors
    "reglu": spec(up="none"),
    "reglu-nobias": spec(bias=False, up="none"),
    "drelu": spec(up="relu"),
    "drelu-nobias-parallel": spec(64, 1024, 64, bias=False, up="relu"),
    "drelu-odd": spec(20, 52, 12, up="relu"),
}


@pytest.mark.parametrize("variant", ["decode", "gemv2", "gemm"])
@pytest.mark.parametrize("name", list(SPECS))
def test_variant_matches_reference(name: str, variant: str) -> None:
    s = SPECS[name]
    w = weights(s)
    fn = kernels(s, variant)
    for t in TOKENS:
        x = inputs(s, t, seed=t)
        y = fn(x, *args(s, w))
        assert y.shape == (t, s.d_out)
        np.testing.assert_allclose(y, reference(s, w, x), rtol=RTOL, atol=ATOL,
                                   err_msg=f"{name} {variant} T={t}")


SCREENABLE = [name for name, s in SPECS.items() if screenable(s)]


@pytest.mark.parametrize("name", SCREENABLE)
def test_screened_matches_reference(name: str) -> None:
    """The float16-screened variant (one token), its inputs derived here as
    the shim derives them."""
    s = SPECS[name]
    w = weights(s)
    fn = kernels(s, "screened")
    for t in TOKENS:
        x = inputs(s, t, seed=t)
        np.testing.assert_allclose(fn(x, *args(s, w)), reference(s, w, x), rtol=RTOL,
                                   atol=ATOL, err_msg=f"{name} T={t}")


@pytest.mark.parametrize("name", ["relu", "drelu"])
def test_dispatch_by_tokens(name: str) -> None:
    """Without a pinned variant the token count picks the kernel (as the shim does)."""
    s = SPECS[name]
    w = weights(s)
    fn = kernels(s)
    expected = [*(["screened"] if screenable(s) else []), "decode", "gemv2",
                *(["gemm_stream"] if s.gated else []), "gemm", "gemm_packed"]
    assert [k.variant for k in fn.kernels] == expected
    for t in TOKENS:
        x = inputs(s, t)
        np.testing.assert_allclose(fn(x, *args(s, w)), reference(s, w, x), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", ["relu", "relu-nobias", "drelu", "reglu-nobias"])
def test_all_neurons_inactive(name: str) -> None:
    """Every activation zero: the lists are empty and Y is B2 (or 0)."""
    s = SPECS[name]
    w = weights(s, shift=-1e4)
    for variant in (*(["screened"] if screenable(s) else []), "decode", "gemv2", "gemm"):
        x = inputs(s, 7)
        y = kernels(s, variant)(x, *args(s, w))
        want = np.broadcast_to(w["B2"] if s.has_b2 else 0.0, y.shape)
        np.testing.assert_allclose(y, want, rtol=RTOL, atol=ATOL)


def test_sparsity_is_real() -> None:
    """The test data does exercise skipping: a good share of neurons is zero, not all."""
    s = SPECS["relu-parallel"]
    w = weights(s)
    x = inputs(s, 64)
    h = x @ w["W1"] + w["B1"]
    assert 0.3 < float(np.mean(h <= 0)) < 0.95


@pytest.mark.parametrize("change, match", [
    ({"activation": "gelu"}, "activation 'relu'"),
    ({"activation": "silu"}, "activation 'relu'"),
    ({"dtype": "float16"}, "float32 only"),
    ({"up_activation": "relu", "gated": False}, "needs a gated FFN"),
])
def test_rejects_what_exact_cannot_compute(change: dict, match: str) -> None:
    fields = {**spec().__dict__, **change}
    with pytest.raises(CodegenError, match=match):
        kernels(SparseSpec(**fields))


def test_rejects_other_modes() -> None:
    """The exact generator refuses a spec of another mode; a mode outside SparseMode is
    refused when the spec is made."""
    teal = SparseSpec(**{**spec().__dict__, "mode": "teal"})
    fam = family("x86")
    tiling = fam.sparse_variants(spec(), fam.target(None))[-1].tiling
    with pytest.raises(CodegenError, match="only 'exact'"):
        sparse_ffn_primfunc(teal, tiling, "k")
    with pytest.raises(ValueError, match="threshold"):
        SparseSpec(**{**spec().__dict__, "mode": "threshold"})


@pytest.mark.parametrize("variant", ["decode", "gemv2", "gemm_stream", "gemm_packed"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_weights_stored_in_16_bits(variant: str, dtype: str) -> None:
    """A generator's weight dtype: W1, W2, WU stored in 16 bits, read widened to float32,
    give the FFN of the rounded weights (float32 arithmetic)."""
    s = SPECS["drelu"]
    fam = family("x86")
    tiling = next(v.tiling for v in fam.sparse_variants(s, fam.target(None)) if v.name == variant)
    make = exact_decode_primfunc if variant == "decode" else sparse_ffn_primfunc
    ex = _tvm.compile_module({"k": make(s, tiling, "k", dtype=dtype)}, host_target())
    w = weights(s)
    stored = {n: _tvm.tensor(w[n].astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype))
              for n in ("W1", "W2", "WU")}
    rounded = {**w, **{n: stored[n].numpy().astype(np.float32) for n in stored}}
    assert not np.array_equal(rounded["W1"], w["W1"])  # the weights did lose bits
    for t in (1, 2, 7, 30, 64):
        x = inputs(s, t, seed=t)
        y = _tvm.empty((t, s.d_out))
        ex["k"](*[stored[n] if n in stored else _tvm.tensor(a)
                  for n, a in zip(s.arg_names()[:-1], [x, *args(s, w)], strict=True)], y)
        np.testing.assert_allclose(y.numpy(), reference(s, rounded, x), rtol=RTOL, atol=ATOL,
                                   err_msg=f"{dtype} {variant} T={t}")
