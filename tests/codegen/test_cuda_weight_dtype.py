"""``--weight-dtype fp16|bf16``: every CUDA kernel family with its weight matrices stored in
16 bits (loads widened to float32, float32 arithmetic), built by nvcc for sm_80 and sm_90 and
run by the CPU emulator against the float64 reference *on the rounded weights* — the kernel
must equal the model whose weights were rounded, which is what fffc verifies an artifact
against (its distance from the float32 original is reported separately).
"""

from __future__ import annotations

import dataclasses

import ml_dtypes
import numpy as np
import pytest

from fffc.codegen.cuda_build import build_cuda_library, fatbin_entries
from fffc.codegen.kernels import sparse_ffn_cuda, sparse_ffn_cuda_masked
from fffc.codegen.kernels.fff_cuda import FffTiling, fff_kernel
from fffc.codegen.schedules import family
from fffc.contract.errors import CodegenError
from fffc.contract.kernels import FffSpec, KernelSpec, Projection, SparseSpec, StructuredSpec
from fffc.contract.modes import sparse
from fffc.contract.tolerances import RTOL
from fffc.verify.cuda_emu import Emulator
from fffc.verify.reference import fast_feed_forward, sparse_ffn, structured_ffn, teal_ffn
from tests.fixtures.sparse_kernels import inputs
from tests.fixtures.sparse_kernels import spec as sparse_spec
from tests.fixtures.sparse_kernels import weights as sparse_weights
from tests.fixtures.structured_kernels import structured_weights

pytestmark = pytest.mark.slow

NUMPY = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
C_TYPE = {"float16": "half*", "bfloat16": "nv_bfloat16*"}

RELU = sparse_spec(32, 96, 40)
DRELU = sparse_spec(32, 64, 24, up="relu")
TEAL = SparseSpec("gelu", "none", "teal", 40, 72, 24, True, True, False)
CATS = SparseSpec("silu", "none", "cats", 40, 72, 24, False, False, True)
PRED = SparseSpec("gelu", "none", "predictor", 40, 72, 24, True, True, False, rank=8)
FFF = FffSpec(48, 40, 2, 4)
LOWRANK = StructuredSpec("gelu", 160, 40, 40, Projection(1, 24, True), Projection(1, 136, True),
                         True, True)
SHUFFLE = StructuredSpec("silu", 40, 48, 24, Projection(4, 24, True, 4, 5),
                         Projection(2, 16, False, 2, 12), True, False)
DENSE = StructuredSpec("gelu", 136, 40, 24, Projection(1, 40, False), Projection(1, 24, False),
                       True, True)  # a RoutedFFN's FFN
SPECS = (RELU, DRELU, TEAL, CATS, PRED, FFF, LOWRANK, SHUFFLE)


def _at(s: KernelSpec, dtype: str) -> KernelSpec:
    return dataclasses.replace(s, dtype=dtype)


@pytest.fixture(scope="module", params=["float16", "bfloat16"])
def built(request, tmp_path_factory):
    dtype = request.param
    lib = build_cuda_library([_at(s, dtype) for s in SPECS], family("cuda"),
                             tmp_path_factory.mktemp(dtype), counted_specs=[_at(DENSE, dtype)])
    return dtype, lib, Emulator(lib.source_path.read_text(), lib.variants)


def _rounded(w: dict[str, np.ndarray], s: KernelSpec, dtype: str) -> dict[str, np.ndarray]:
    """The weights as the kernel stores them (float32 values of the 16-bit numbers)."""
    return {k: (v.astype(NUMPY[dtype]).astype(np.float32) if k in s.weight_args() else v)
            for k, v in w.items()}


def _variants(lib, s: KernelSpec):
    return [v for v in lib.variants if v.spec == s]


def _close(got: np.ndarray, want: np.ndarray, what) -> None:
    err = np.abs(got - want).max() / np.abs(want).max()
    assert np.isfinite(got).all() and err < RTOL, (what, err)


def test_fatbin_and_parameter_types(built) -> None:
    """cubins for both archs plus PTX; exactly the weight matrices are 16-bit parameters."""
    dtype, lib, emu = built
    assert {("elf", "sm_80"), ("elf", "sm_90"), ("ptx", "sm_90")} <= set(
        fatbin_entries(lib.fatbin_path))
    for v in lib.variants:
        for launch in v.launches:
            types = dict(zip(launch.params, emu._types[launch.kernel], strict=True))
            sixteen = {p for p, t in types.items() if t == C_TYPE[dtype]}
            # a RoutedFFN's FFN reads its W1/W2 as the counted StructuredFFN's A1/A2
            assert sixteen == set(v.spec.weight_args()) & set(types), launch.kernel
            assert v.spec.dtype == dtype


@pytest.mark.parametrize("s", [RELU, DRELU], ids=["relu", "drelu"])
def test_exact_sparse_ffn_every_variant(built, s) -> None:
    dtype, lib, emu = built
    w = sparse_weights(s, seed=3)
    wr = _rounded(w, _at(s, dtype), dtype)
    for v in _variants(lib, _at(s, dtype)):
        n = min(v.max_tokens, v.min_tokens + 2)
        x = inputs(s, n, seed=n)
        want = sparse_ffn(x, wr["W1"], wr["B1"], wr["W2"], wr["B2"],
                          wr["WU"] if s.gated else None, up_activation=s.up_activation)
        args = {k: w[k] for k in s.arg_names()[1:-1]}
        _close(emu.run(v, {"X": x, **args}), want, (dtype, v.variant))  # rounded by the emulator
        _close(emu.run(v, {"X": x, **{k: wr[k] for k in args}}), want, (dtype, v.variant))


def _masked_weights(s: KernelSpec) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    d, f, do = s.d_in, s.d_ff, s.d_out
    w = {"W1": rng.standard_normal((d, f)) / np.sqrt(d), "B1": rng.standard_normal(f) * 0.1,
         "W2": rng.standard_normal((f, do)) / np.sqrt(f), "B2": rng.standard_normal(do)}
    if s.mode == "predictor":  # rows per neuron; every neuron predicted active (PC ≫ 0)
        w |= {"W1": w["W1"].T, "PA": rng.standard_normal((d, s.rank)),
              "PB": rng.standard_normal((s.rank, f)) * 1e-3, "PC": np.full(f, 50.0)}
    if s.gated:
        w["WU"] = rng.standard_normal((f, d)) / np.sqrt(d)  # cats: a row per neuron
    return {k: np.ascontiguousarray(v, np.float32) for k, v in w.items() if k in s.arg_names()}


@pytest.mark.parametrize("s", [TEAL, CATS, PRED], ids=["teal", "cats", "predictor"])
def test_masked_modes(built, s) -> None:
    """teal cuts x at a threshold no entry is near (the inputs are compared exactly), cats
    and predictor keep every neuron: each kernel reads all its 16-bit rows."""
    dtype, lib, emu = built
    (v,) = _variants(lib, _at(s, dtype))
    w = _rounded(_masked_weights(s), _at(s, dtype), dtype)
    x = np.random.default_rng(4).standard_normal((1, s.d_in)).astype(np.float32)
    feeds = {"X": x, **w}
    if s.mode == "teal":
        mag = np.sort(np.abs(x).ravel())
        t_in = np.float32((mag[15] + mag[16]) / 2)
        feeds["TH"] = np.array([t_in, -1.0], np.float32)
        want = teal_ffn(x, w["W1"], w["B1"], w["W2"], w["B2"], None, thresholds=feeds["TH"],
                        activation_name="gelu")
    elif s.mode == "cats":
        feeds["TH"] = np.array([-1.0, -1.0], np.float32)
        xd = x.astype(np.float64)
        a = xd @ w["W1"]
        want = (a / (1 + np.exp(-a)) * (xd @ w["WU"].T)) @ w["W2"]
    else:
        want = sparse_ffn(x, w["W1"].T, w["B1"], w["W2"], w["B2"], None, activation_name="gelu")
    _close(emu.run(v, feeds), want, (dtype, s.mode))


def test_fast_feed_forward(built) -> None:
    dtype, lib, emu = built
    (v,) = _variants(lib, _at(FFF, dtype))
    rng = np.random.default_rng(2)
    w = {"W_in": rng.standard_normal((FFF.d_ff, 48)) / np.sqrt(48),
         "B_in": rng.standard_normal(FFF.d_ff) * 0.3, "W_out": rng.standard_normal((FFF.d_ff, 40))}
    w = _rounded({k: a.astype(np.float32) for k, a in w.items()}, _at(FFF, dtype), dtype)
    x = rng.standard_normal((9, 48)).astype(np.float32)
    want = fast_feed_forward(x, w["W_in"], w["B_in"], w["W_out"], trees=2, depth=4)
    _close(emu.run(v, {"X": x, **w}), want, dtype)


@pytest.mark.parametrize("s", [LOWRANK, SHUFFLE], ids=["lowrank", "shuffle"])
def test_structured_every_variant(built, s) -> None:
    dtype, lib, emu = built
    w = _rounded(structured_weights(s, 5), _at(s, dtype), dtype)
    for v in _variants(lib, _at(s, dtype)):
        n = min(v.max_tokens, v.min_tokens + 1)
        x = np.random.default_rng(n).standard_normal((n, s.d_in)).astype(np.float32)
        want = structured_ffn(x, w["A1"], w.get("U1"), w.get("B1"), w["A2"], w.get("U2"),
                              w.get("B2"), activation_name=s.activation, s1=w.get("S1"),
                              s2=w.get("S2"))
        _close(emu.run(v, {"X": x, **w}), want, (dtype, v.variant))


def test_counted_structured(built) -> None:
    """RoutedFFN's FFN: the counted variants on 16-bit A1/A2, rows past CNT untouched."""
    dtype, lib, emu = built
    s = _at(DENSE, dtype)
    w = _rounded(structured_weights(DENSE, 6), s, dtype)
    for v in [v for v in lib.variants if v.spec == s and v.variant.startswith("counted_")]:
        x = np.random.default_rng(1).standard_normal((20, DENSE.d_in)).astype(np.float32)
        got = emu.run(v, {"X": x, "CNT": np.array([13], np.int32), **w}, any_tokens=True)
        want = structured_ffn(x[:13], w["A1"], None, w["B1"], w["A2"], None, w["B2"],
                              activation_name="gelu")
        _close(got[:13], want, (dtype, v.variant))
        assert np.isnan(got[13:]).all()


def _generated(s: KernelSpec, dtype: str) -> dict:
    """The PrimFuncs of a SparseFFN decode or FFF generator for weights stored as dtype."""
    if isinstance(s, FffSpec):
        return {"fff": fff_kernel(s, FffTiling(), "fff", dtype)}
    cuda = family("cuda")
    tiling = cuda.sparse_variants(s, cuda.target(None))[0].tiling  # decode1, or the masked mode's
    module = sparse_ffn_cuda_masked if sparse(s.mode).masked else sparse_ffn_cuda
    return module.decode_funcs(s, tiling, "k", dtype)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("s", [RELU, DRELU, TEAL, CATS, PRED, FFF],
                         ids=["relu", "drelu", "teal", "cats", "predictor", "fff"])
def test_generators_store_the_weights_at_the_dtype(s: KernelSpec, dtype: str) -> None:
    """The weight dtype is a generator parameter: each weight input is declared at it,
    every other input stays float32, and a weight is only ever read widened to float32."""
    weights = set(s.weight_args())
    seen = set()
    for name, func in _generated(_at(s, dtype), dtype).items():
        script = func.script()
        for p in func.params:
            if p.name in weights:
                seen.add(p.name)
                assert str(p.dtype) == dtype, (name, p.name)
                reads = script.count(f" {p.name}[") + script.count(f"({p.name}[")
                widened = script.count(f'T.Cast("float32", {p.name}[')
                assert reads == widened > 0, (name, p.name, reads, widened)
            else:
                assert str(p.dtype) == "float32", (name, p.name)
    assert seen == weights


def test_generators_reject_other_dtypes() -> None:
    for s in (RELU, TEAL, FFF):
        with pytest.raises(CodegenError, match="float64"):
            _generated(s, "float64")
