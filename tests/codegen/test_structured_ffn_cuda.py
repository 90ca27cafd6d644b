"""StructuredFFN's CUDA kernels: nvcc builds them, the CPU emulator runs them vs the reference.

Every variant of every parametrization (LowRank, BlockDense, block-diagonal only, dense with
and without biases, BlockShuffle) runs at the edges of its token range and at ragged counts,
against the float64 NumPy reference. Dims are small and odd (no tile divides them) and some
reductions are long enough (≥ 2·min_k_slice) that the gemv stages split K over the grid.
Counted variants must leave the rows at and past CNT[0] untouched (the emulator fills Y
with NaN).
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from fffc.codegen.cuda_build import (
    CudaVariant,
    Dim,
    build_cuda_library,
    emit,
    emit_kernels,
    fatbin_entries,
)
from fffc.codegen.kernels import structured_ffn_cuda as sfc
from fffc.codegen.schedules import MAX_TOKENS, family
from fffc.contract.errors import CodegenError
from fffc.contract.kernels import KernelSpec, StructuredSpec
from fffc.contract.kernels import Projection as P
from fffc.contract.tolerances import RTOL
from fffc.verify.cuda_emu import Emulator
from fffc.verify.reference import structured_ffn
from tests.fixtures.sparse_kernels import spec as sparse_spec
from tests.fixtures.structured_kernels import structured_weights

SPECS = {
    # LowRank both ways; d_in 160 and r2 136 split K over two blocks (the last stage's
    # partial sums then go through the reduce launch)
    "lowrank": StructuredSpec("gelu", 160, 40, 40, P(1, 24, True), P(1, 136, True), True, True),
    "blockdense": StructuredSpec("relu", 40, 48, 40, P(2, 24, True), P(4, 16, True), False,
                                 True),
    "blockdiag": StructuredSpec("gelu", 40, 48, 24, P(4, 48, False), P(2, 24, False), True,
                                True),
    # the merged / RoutedFFN case: A1 [1, 136, 40] splits, A2 sums its partials + B1, act
    "dense": StructuredSpec("gelu", 136, 40, 24, P(1, 40, False), P(1, 24, False), True, True),
    "dense_nobias": StructuredSpec("relu", 40, 72, 33, P(1, 72, False), P(1, 33, False), False,
                                   False),
    "shuffle": StructuredSpec("silu", 40, 48, 24, P(4, 24, True, 4, 5), P(2, 16, False, 2, 12),
                              True, False),
    "shuffle_tanh": StructuredSpec("gelu_tanh", 24, 20, 30, P(2, 12, False, 4, 5),
                                   P(4, 20, True, 5, 3), False, True),
}
COUNTED = [SPECS["dense"], SPECS["lowrank"]]
TOKENS_CAP = 130  # the open-ended variant is run up to here


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return build_cuda_library(list(SPECS.values()), family("cuda"),
                              tmp_path_factory.mktemp("structured"), counted_specs=COUNTED)


@pytest.fixture(scope="module")
def emulator(library):
    return Emulator(library.source_path.read_text(), library.variants)


def _reference(s: KernelSpec, x: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    return structured_ffn(x, w["A1"], w.get("U1"), w.get("B1"), w["A2"], w.get("U2"),
                          w.get("B2"), activation_name=s.activation, s1=w.get("S1"),
                          s2=w.get("S2"))


def _error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def _counts(v: CudaVariant) -> list[int]:
    """The edges of the variant's range and ragged counts around the tiles (kernels serve
    any count; the range is the dispatch)."""
    top = min(v.max_tokens, TOKENS_CAP)
    extra = {v.min_tokens + 1, top - 1} if top > v.min_tokens + 1 else set()
    return sorted({1, v.min_tokens, top, 17, *extra} - {0})


def _name(library, s: KernelSpec) -> str:
    return next(k for k, v in SPECS.items() if v == s)


def test_every_variant_matches_the_reference(library, emulator) -> None:
    checked = set()
    for v in library.variants:
        if v.variant.startswith("counted_"):
            continue
        s = v.spec
        w = structured_weights(s, 1)
        for n in _counts(v):
            x = np.random.default_rng(n).standard_normal((n, s.d_in)).astype(np.float32)
            got = emulator.run(v, {"X": x, **w}, any_tokens=True)
            assert np.isfinite(got).all(), (_name(library, s), v.variant, n)
            err = _error(got, _reference(s, x, w))
            assert err < RTOL, (_name(library, s), v.variant, n, err)
        checked.add((_name(library, s), v.variant))
    assert len(checked) == len(SPECS) * 5  # gemv1, gemv4, gemv16, tile32, tile64


def test_counted_variants_leave_rows_past_the_count(library, emulator) -> None:
    """Rows < CNT[0] match the reference; rows ≥ CNT[0] of Y stay unwritten (NaN)."""
    counted = [v for v in library.variants if v.variant.startswith("counted_")]
    assert {v.spec for v in counted} == set(COUNTED)
    for v in counted:
        s = v.spec
        w = structured_weights(s, 2)
        n = 70 if v.variant.startswith("counted_tile") else 21  # gemv: tiles past the count
        x = np.random.default_rng(3).standard_normal((n, s.d_in)).astype(np.float32)
        want = _reference(s, x, w)
        for cnt in sorted({0, 1, n // 2 + 1, n - 1, n}):
            got = emulator.run(v, {"X": x, "CNT": np.array([cnt], np.int32), **w},
                               any_tokens=True)
            assert np.isnan(got[cnt:]).all(), (v.variant, n, cnt)
            if cnt:
                assert np.isfinite(got[:cnt]).all(), (v.variant, n, cnt)
                err = _error(got[:cnt], want[:cnt])
                assert err < RTOL, (v.variant, n, cnt, err)


def test_forced_splits_sum_partials_with_bias_and_activation() -> None:
    """Every gemv stage split K over the grid (tiny slices): each consumer sums its
    producer's partial sums plus bias through the activation, and the last one's reduce."""
    tiling = sfc.StructuredTiling(mr=4, min_k_slice=2, max_splits=3, target_blocks=10**6)
    specs = [SPECS["shuffle"], SPECS["blockdense"], SPECS["dense"]]
    funcs, variants = {}, []
    for i, s in enumerate(specs):
        plan = sfc._plan(s, tiling)
        assert all(ln.kb > 1 for ln in plan) and plan[-1].dst.startswith("P")
        vf = sfc.variant_funcs(s, tiling, f"fffc_structured_ffn_split{i}")
        funcs.update(vf)
        variants.append((s, list(vf)))
    source, launches = emit_kernels(funcs)
    built = [CudaVariant(s, "split", 1, MAX_TOKENS, tuple(launches[n] for n in names),
                         tuple(sfc.workspace(s, tiling).items())) for s, names in variants]
    assert all(v.launches[-1].kernel.endswith("_reduce_kernel") for v in built)
    emu = Emulator(source, built)
    for v in built:
        w = structured_weights(v.spec, 4)
        for n in (1, 6):
            x = np.random.default_rng(n).standard_normal((n, v.spec.d_in)).astype(np.float32)
            err = _error(emu.run(v, {"X": x, **w}, any_tokens=True), _reference(v.spec, x, w))
            assert err < RTOL, (v.spec.mode, n, err)


def test_variant_table_covers_every_token_count() -> None:
    fam = family("cuda")
    for s in SPECS.values():
        for counted in (False, True):
            vs = fam.structured_variants(s, counted)
            assert vs[0].min_tokens == 1 and vs[-1].max_tokens == MAX_TOKENS
            for a, b in itertools.pairwise(vs):
                assert b.min_tokens == a.max_tokens + 1 and a.min_tokens <= a.max_tokens
            assert all(v.name.startswith("counted_") == counted for v in vs)
            assert all(v.tiling.counted == counted for v in vs)
    names = [v.name for v in fam.structured_variants(SPECS["dense"])]
    assert names == ["gemv1", "gemv4", "gemv16", "tile32", "tile64"]


def test_launches_and_geometry(library) -> None:
    """Parameters as the emitted kernels declare them (only launchable names), grids of the
    form (a·N + b) // c over token tiles on x, constant y/z, and a workspace per buffer."""
    source = library.source_path.read_text()
    decl = re.compile(r'extern "C" __global__ void __launch_bounds__\((\d+)\) (\w+)\(([^)]*)\)')
    kernels = {name: (int(bound), [p.split()[-1].removesuffix("_ptr") for p in params.split(",")])
               for bound, name, params in decl.findall(source)}
    data = library.fatbin_path.read_bytes()
    for v in library.variants:
        assert v.symbol == f"fffc_structured_ffn_{v.spec.key}_{v.variant}"
        counted = v.variant.startswith("counted_")
        ws = dict(v.workspace)
        assert not set(ws) & {"X", "A1", "U1", "B1", "A2", "U2", "B2", "M1", "M2", "S1", "S2",
                              "Y", "CNT", "N"}
        allowed = set(v.spec.arg_names()) | set(ws) | {"N"} | ({"CNT"} if counted else set())
        used = set()
        for ln in v.launches:
            bound, params = kernels[ln.kernel]
            assert list(ln.params) == params and set(params) <= allowed, (v.variant, params)
            assert ("CNT" in params) == counted
            assert ln.block[0] * ln.block[1] * ln.block[2] == bound <= 1024
            assert ln.kernel.encode() in data
            gx, gy, gz = ln.grid
            assert gx.a == 1 and gy.a == 0 and gz.a == 0, ln
            rows = gx.c  # tokens per block (the reduce: 1)
            assert gx.b == rows - 1
            for n in (1, 2, 17, 64, 65, 1000):
                assert gx(n) == -(-n // rows)
            used |= set(params)
        assert set(ws) <= used
        assert "Y" in v.launches[-1].params
    # split K (partial sums P<i>, a reduce after the last stage) is exercised in both kinds
    for kind in ("gemv", "tile32", "counted_gemv", "counted_tile32"):
        split = [v for v in library.variants if v.variant.startswith(kind)
                 and v.launches[-1].kernel.endswith("_reduce_kernel")]
        assert split and all(any(b.startswith("P") for b, _ in v.workspace) for v in split)
    assert Dim(1, 63, 64)(65) == 2


def test_fatbin_has_cubins_for_each_arch_and_ptx(library) -> None:
    assert fatbin_entries(library.fatbin_path) == [("elf", "sm_80"), ("ptx", "sm_90"),
                                                   ("elf", "sm_90")]


def test_counted_only_and_errors() -> None:
    """A spec only in counted_specs gets only counted variants; other ops cannot be counted."""
    _, variants = emit([], family("cuda"), "sm_90", counted_specs=[SPECS["dense_nobias"]])
    assert variants and all(v.variant.startswith("counted_") for v in variants)
    with pytest.raises(CodegenError, match="counted"):
        emit([], family("cuda"), "sm_90", counted_specs=[sparse_spec(32, 64, 32)])
    with pytest.raises(CodegenError, match="tiling"):
        sfc.variant_funcs(SPECS["dense"], sfc.StructuredTiling(nt=20), "x")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_weight_dtype_is_a_generator_parameter(dtype: str) -> None:
    """16-bit weights: the weight parameters are declared at that dtype (biases, X, the
    workspace and Y stay float32) and every load of them is widened to float32."""
    s = SPECS["shuffle"]
    fam = family("cuda")
    tilings = [v.tiling for c in (False, True) for v in fam.structured_variants(s, c)]
    seen = set()
    for tiling in tilings:
        for name, f in sfc.variant_funcs(s, tiling, "w16", dtype).items():
            script = f.script()
            signature = script[script.index("def "):script.index(":\n")]
            for buf, got in re.findall(r'(\w+): T\.Buffer\(\(.*?\), "(\w+)"', signature):
                weight = buf in s.weight_args()
                assert got == (dtype if weight else "int32" if buf == "CNT" else "float32")
                if weight:
                    seen.add(buf)
                    loads = re.findall(rf"(.{{18}}){buf}\[", script)
                    assert loads and all(p.endswith('T.Cast("float32", ') for p in loads), name
    assert seen == set(s.weight_args())
    with pytest.raises(CodegenError, match="float32 or float16 or bfloat16 only"):
        sfc.variant_funcs(s, tilings[0], "w8", "int8")
