"""StructuredFFN x86 kernels (kernels/structured_ffn.py) in-process against the float64
NumPy reference: every variant, structure (LowRank, BlockDense, block-diagonal only, merged
dense, BlockShuffle/Monarch, mixed), bias and activation, full and partial token tiles and
blocks."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from fffc.codegen import _tvm
from fffc.codegen.kernels.structured_ffn import (
    VARIANT_TILES,
    Tiles,
    check_spec,
    structured_ffn_primfunc,
    structured_ffn_source,
    structured_variants,
)
from fffc.codegen.schedules import MAX_TOKENS
from fffc.contract.errors import CodegenError
from fffc.contract.kernels import Projection, SparseSpec, StructuredSpec
from fffc.verify.reference import structured_ffn

RTOL = 1e-4  # of max |reference|: float32 accumulation vs float64
TOKENS = (1, 3, 37, 130)  # one token, a partial tile, partial tiles/blocks of every variant
VARIANTS = list(VARIANT_TILES)


def _spec(act: str, d_in: int, d_ff: int, d_out: int, k1: int, r1: int | None, k2: int,
          r2: int | None, b1: bool = True, b2: bool = True) -> StructuredSpec:
    """``r`` None: that projection has no U (r = its output width)."""
    return StructuredSpec(act, d_in, d_ff, d_out, Projection(k1, r1 or d_ff, r1 is not None),
                          Projection(k2, r2 or d_out, r2 is not None), b1, b2)


def _shuffle_spec(act: str, d_in: int, d_ff: int, d_out: int, p1: tuple, p2: tuple,
                  b1: bool = True, b2: bool = True) -> StructuredSpec:
    """Per projection (k, r, u, m, s): m 0 for no BlockShuffle factor."""
    (k1, r1, u1, m1, s1), (k2, r2, u2, m2, s2) = p1, p2
    return StructuredSpec(act, d_in, d_ff, d_out, Projection(k1, r1, u1, m1, s1),
                          Projection(k2, r2, u2, m2, s2), b1, b2)


SPECS = {
    "lowrank-gelu": _spec("gelu", 64, 256, 64, 1, 32, 1, 32),
    "blockdense-silu-nobias": _spec("silu", 96, 256, 80, 4, 40, 4, 48, b1=False, b2=False),
    "blockdiag-relu": _spec("relu", 128, 256, 128, 4, None, 4, None),
    "merged-gelu_tanh-b1": _spec("gelu_tanh", 64, 192, 72, 1, None, 1, None, b2=False),
    "mixed-gelu-b2": _spec("gelu", 128, 320, 96, 4, 64, 1, 24, b1=False),
    "odd-silu": _spec("silu", 72, 100, 36, 2, 18, 1, 20),  # no width a multiple of 16
}
SHUFFLE = {
    # both projections BlockShuffle without U, k = m = 4 (fffc.torch.BlockShuffleLinear's
    # layout): A1 [4, 16, 16], S1 [4, 16, 64]; A2 [4, 64, 16], S2 [4, 16, 16]
    "monarch-gelu": _shuffle_spec("gelu", 64, 256, 64, (4, 64, False, 4, 64),
                                  (4, 64, False, 4, 16)),
    # BlockShuffle + U (A1 [4, 24, 12], S1 [3, 16, 20], U1 [60, 160]), then LowRank
    "monarch-u-lowrank-silu": _shuffle_spec("silu", 96, 160, 80, (4, 48, True, 3, 20),
                                            (1, 24, True, 0, 0), b1=False),
    # LowRank, then BlockShuffle + U (A2 [2, 80, 12], S2 [4, 6, 10], U2 [40, 48])
    "lowrank-monarch-u-relu": _shuffle_spec("relu", 48, 160, 48, (1, 32, True, 0, 0),
                                            (2, 24, True, 4, 10), b2=False),
    # m != k: A1 [4, 16, 16], S1 [2, 32, 64]; A2 [2, 64, 48], S2 [4, 24, 16]
    "monarch-mk-gelu_tanh": _shuffle_spec("gelu_tanh", 64, 128, 64, (4, 64, False, 2, 64),
                                          (2, 96, False, 4, 16)),
}
BIG = {  # the benchmark's shapes at d_in 1024 / d_ff 4096 (reduction blocks, many tasks)
    "lowrank-1024": _spec("gelu", 1024, 4096, 1024, 1, 256, 1, 256),
    "blockdense-1024": _spec("gelu_tanh", 1024, 4096, 1024, 4, 416, 4, 416),
}


class Compiled:
    """Every variant of one spec (optionally one tiling override) in one module."""

    def __init__(self, spec: StructuredSpec, tiles: dict[str, Tiles] | None = None):
        self.spec = spec
        names = list(tiles) if tiles else VARIANTS
        self.symbols = {v: f"test_sffn_{spec.key}_{v}" for v in names}
        funcs = {sym: structured_ffn_primfunc(spec, v, sym, (tiles or {}).get(v))
                 for v, sym in self.symbols.items()}
        self.ex = _tvm.compile_module(funcs, {"kind": "llvm", "mcpu": _tvm.host_cpu()})

    def __call__(self, variant: str, x: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
        args = [_tvm.tensor(np.ascontiguousarray(x, np.float32))]
        args += [_tvm.tensor(w[n]) for n in self.spec.arg_names()[1:-1]]
        args.append(_tvm.empty((x.shape[0], self.spec.d_out)))
        self.ex[self.symbols[variant]](*args)
        return args[-1].numpy()


@pytest.fixture(scope="module")
def compiled() -> Callable[..., Compiled]:
    cache: dict = {}

    def get(spec: StructuredSpec, tiles: dict[str, Tiles] | None = None) -> Compiled:
        key = (spec, tuple(sorted((tiles or {}).items())))
        if key not in cache:
            cache[key] = Compiled(spec, tiles)
        return cache[key]

    return get


def weights(spec: StructuredSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """Random factors scaled so that pre-activations are ~N(0, 1) (the activation's curve
    matters), biases ~N(0, 0.25)."""
    p1, p2 = spec.projections
    k1, r1, k2, r2 = p1.blocks, p1.width, p2.blocks, p2.width
    m1, s1, m2, s2 = p1.shuffle_blocks, p1.shuffle_width, p2.shuffle_blocks, p2.shuffle_width
    w1, w2 = (m1 * s1 if m1 else r1), (m2 * s2 if m2 else r2)  # rows of U
    i1, i2 = spec.d_in // k1, spec.d_ff // k2
    rng = np.random.default_rng(seed)
    w = {"A1": rng.standard_normal((k1, i1, r1 // k1)) / np.sqrt(i1),
         "U1": rng.standard_normal((w1, spec.d_ff)) / np.sqrt(w1),
         "B1": rng.standard_normal(spec.d_ff) * 0.5,
         "A2": rng.standard_normal((k2, i2, r2 // k2)) / np.sqrt(i2),
         "U2": rng.standard_normal((w2, spec.d_out)) / np.sqrt(w2),
         "B2": rng.standard_normal(spec.d_out) * 0.5}
    if m1:
        w["S1"] = rng.standard_normal((m1, r1 // m1, s1)) / np.sqrt(r1 // m1)
    if m2:
        w["S2"] = rng.standard_normal((m2, r2 // m2, s2)) / np.sqrt(r2 // m2)
    return {k: v.astype(np.float32) for k, v in w.items()}


def reference(spec: StructuredSpec, w: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    return structured_ffn(x, w["A1"], w["U1"] if spec.first.dense else None,
                          w["B1"] if spec.has_b1 else None, w["A2"],
                          w["U2"] if spec.second.dense else None,
                          w["B2"] if spec.has_b2 else None,
                          activation_name=spec.activation, s1=w.get("S1"), s2=w.get("S2"))


def inputs(spec: StructuredSpec, tokens: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((tokens, spec.d_in)).astype(np.float32)


def assert_close(y: np.ndarray, ref: np.ndarray, what: str) -> None:
    assert y.shape == ref.shape, what
    err = float(np.max(np.abs(y - ref)))
    assert err <= RTOL * float(np.max(np.abs(ref))), f"{what}: max err {err:.3g}"


@pytest.mark.parametrize("name", list(SPECS))
def test_every_variant_matches_reference(compiled, name: str) -> None:
    """Each variant pinned (a pinned variant runs any token count) at 1 token, a partial
    tile and partial tiles/blocks."""
    spec = SPECS[name]
    w = weights(spec)
    k = compiled(spec)
    for t in TOKENS:
        x = inputs(spec, t, seed=t)
        ref = reference(spec, w, x)
        for v in VARIANTS:
            assert_close(k(v, x, w), ref, f"{name} {v} T={t}")


@pytest.mark.parametrize("name", list(SHUFFLE))
def test_block_shuffle_matches_reference(compiled, name: str) -> None:
    """BlockShuffle (Monarch) projections, with and without U, m = k and m != k, in every
    variant (strided stage inputs/outputs, partial tiles and blocks)."""
    spec = SHUFFLE[name]
    w = weights(spec)
    k = compiled(spec)
    for t in TOKENS:
        x = inputs(spec, t, seed=t)
        ref = reference(spec, w, x)
        for v in VARIANTS:
            assert_close(k(v, x, w), ref, f"{name} {v} T={t}")


def test_block_shuffle_signature() -> None:
    spec = SHUFFLE["monarch-u-lowrank-silu"]
    assert spec.arg_names() == ["X", "A1", "S1", "U1", "A2", "U2", "B2", "Y"]
    src = structured_ffn_source(spec, "gemv", "m")
    assert 'S1: T.Buffer((3, 16, 20), "float32", align=4)' in src
    assert 'U1: T.Buffer((60, 160), "float32", align=4)' in src
    for v in VARIANTS:
        f = structured_ffn_primfunc(SHUFFLE["monarch-gelu"], v, f"sym_{v}")
        assert [p.name.upper() for p in f.params] == ["X", "A1", "S1", "B1", "A2", "S2", "B2", "Y"]


def test_block_shuffle_matches_torch(compiled) -> None:
    """The kernels run fffc.torch's BlockShuffleLinear MLP (A = blkdiag1ᵀ, S = blkdiag2ᵀ)."""
    torch = pytest.importorskip("torch")
    from fffc.torch.structured import BlockShuffleLinear

    spec = SHUFFLE["monarch-gelu"]
    torch.manual_seed(0)
    fc1, fc2 = BlockShuffleLinear(64, 256, 4), BlockShuffleLinear(256, 64, 4)

    def np_(t):
        return t.detach().numpy().astype(np.float32)

    w = {"A1": np_(fc1.blkdiag1.transpose(1, 2)), "S1": np_(fc1.blkdiag2.transpose(1, 2)),
         "B1": np_(fc1.bias), "A2": np_(fc2.blkdiag1.transpose(1, 2)),
         "S2": np_(fc2.blkdiag2.transpose(1, 2)), "B2": np_(fc2.bias)}
    assert [w[n].shape for n in ("A1", "S1", "A2", "S2")] == [
        (4, 16, 16), (4, 16, 64), (4, 64, 16), (4, 16, 16)]
    x = inputs(spec, 37)
    with torch.no_grad():
        xt = torch.from_numpy(x).double()
        ref = fc2.double()(torch.nn.functional.gelu(fc1.double()(xt))).numpy()
    assert_close(reference(spec, w, x), ref, "reference vs torch")
    k = compiled(spec)
    for v in VARIANTS:
        assert_close(k(v, x, w), ref, f"torch {v}")


@pytest.mark.parametrize("name", list(BIG))
def test_model_size(compiled, name: str) -> None:
    """d_in 1024 / d_ff 4096: several reduction blocks per panel, wide tasks, tail tiles."""
    spec = BIG[name]
    w = weights(spec)
    k = compiled(spec)
    x = inputs(spec, 5)
    ref = reference(spec, w, x)
    for v in VARIANTS:
        assert_close(k(v, x, w), ref, f"{name} {v}")


def test_tiling_edges(compiled) -> None:
    """Tilings that hit the remainder paths at small sizes: partial reduction blocks
    (p % kc), partial column groups, token blocks (batch), and split-K parts whose rows are
    not a multiple of the pass and whose inputs straddle the previous stage's blocks."""
    spec = SPECS["mixed-gelu-b2"]
    tiles = {"small": Tiles(mr=4, kc=24, group=3, tasks=5),
             "batch": Tiles(mr=6, kc=40, group=2, block=12),
             "gemv": Tiles(mr=3, rows=3, tasks=3)}
    w = weights(spec, seed=3)
    k = compiled(spec, tiles)
    for t in (1, 13, 37):
        x = inputs(spec, t, seed=t)
        ref = reference(spec, w, x)
        for v in tiles:
            assert_close(k(v, x, w), ref, f"{v} {tiles[v]} T={t}")


def test_all_outputs_written(compiled) -> None:
    """Every Y element is stored (no row or column left at the buffer's initial value):
    a NaN-filled output must come back finite for every variant."""
    spec = SPECS["odd-silu"]
    w = weights(spec)
    k = compiled(spec)
    for t in (1, 7, 37):
        x = inputs(spec, t)
        for v in VARIANTS:
            args = [_tvm.tensor(x), *[_tvm.tensor(w[n]) for n in spec.arg_names()[1:-1]],
                    _tvm.tensor(np.full((t, spec.d_out), np.nan, np.float32))]
            k.ex[k.symbols[v]](*args)
            assert np.isfinite(args[-1].numpy()).all(), f"{v} T={t}"


@pytest.mark.parametrize("name", ["lowrank-gelu", "mixed-gelu-b2"])
def test_variants_cover_all_token_counts(name: str) -> None:
    table = structured_variants(SPECS[name])
    assert [v for v, _, _ in table] == VARIANTS
    expect = 1
    for _, lo, hi in table:
        assert lo == expect and hi >= lo
        expect = hi + 1
    assert expect == MAX_TOKENS + 1


def test_signature_and_symbol() -> None:
    spec = SPECS["mixed-gelu-b2"]
    assert spec.arg_names() == ["X", "A1", "U1", "A2", "U2", "B2", "Y"]
    for v in VARIANTS:
        f = structured_ffn_primfunc(spec, v, f"sym_{v}")
        assert [p.name.upper() for p in f.params] == spec.arg_names()
        assert str(f.attrs["global_symbol"]) == f"sym_{v}"
    merged = SPECS["merged-gelu_tanh-b1"]
    assert merged.arg_names() == ["X", "A1", "B1", "A2", "Y"]
    src = structured_ffn_source(merged, "small", "m")
    assert 'A1: T.Buffer((1, 64, 192), "float32", align=4)' in src
    assert 'A2: T.Buffer((1, 192, 72), "float32", align=4)' in src


LOWRANK_64 = dict(activation="gelu", d_in=64, d_ff=128, d_out=64,
                  first=Projection(2, 16, True), second=Projection(2, 16, True), has_b1=True,
                  has_b2=True)


@pytest.mark.parametrize("spec, match", [
    (StructuredSpec(**{**LOWRANK_64, "dtype": "float16"}), "float32 only"),
    (StructuredSpec(**{**LOWRANK_64, "activation": "tanh"}), "activation 'tanh'"),
    (SparseSpec("relu", "none", "exact", 64, 128, 64, True, True, False), "not a StructuredFFN"),
])
def test_unsupported_specs_are_refused(spec, match: str) -> None:
    with pytest.raises(CodegenError, match=match):
        check_spec(spec)
    with pytest.raises(CodegenError, match=match):
        structured_ffn_primfunc(spec, "small", "s")


@pytest.mark.parametrize("change, match", [
    ({"d_in": 66, "first": Projection(4, 16, True)}, "d_in=66 is not a multiple of 4"),
    ({"first": Projection(2, 15, True)}, "r1=15"),
    ({"first": Projection(1, 16, False), "second": Projection(1, 64, False)}, "without U"),
    ({"first": Projection(2, 16, True, 3, 4)}, "r1=16 is not a multiple of 3"),
    ({"second": Projection(2, 64, False, 4, 8)}, "without U"),
])
def test_inconsistent_structures_cannot_be_made(change: dict, match: str) -> None:
    """Blocks and widths that do not fit are refused when the spec is made."""
    with pytest.raises(ValueError, match=match):
        StructuredSpec(**{**LOWRANK_64, **change})
    with pytest.raises(ValueError, match="BlockShuffle"):
        Projection(2, 16, True, 2, 0)
    with pytest.raises(TypeError):  # a projection has blocks, a width and its U
        Projection(2)  # type: ignore[call-arg]


def test_bad_variant_or_tiling_is_refused() -> None:
    spec = SPECS["lowrank-gelu"]
    with pytest.raises(CodegenError, match="no StructuredFFN variant"):
        structured_ffn_source(spec, "huge", "s")
    with pytest.raises(CodegenError, match="tiling"):
        structured_ffn_source(spec, "batch", "s", Tiles(mr=6, block=100))
