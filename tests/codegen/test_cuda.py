"""CUDA kernels without a GPU: nvcc builds them, the CPU emulator checks their logic.

Every variant of every spec runs through the emulator (the emitted CUDA source compiled as
C++, one host thread per CUDA thread) and is compared with the float64 NumPy reference at
the edges of its token range. A GPU run of the same kernels is bench/bench_cuda.py.
"""

from __future__ import annotations

import itertools
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from fffc.codegen.cuda_build import (
    Dim,
    build_cuda_library,
    compile_fatbin,
    fatbin_entries,
)
from fffc.codegen.schedules import family
from fffc.contract.errors import CodegenError
from fffc.contract.kernels import SparseSpec
from fffc.contract.tolerances import RTOL
from fffc.verify.cuda_emu import Emulator
from fffc.verify.reference import sparse_ffn
from tests.fixtures.sparse_kernels import spec

SPECS = [
    spec(64, 256, 48),  # dense ReLU FFN with biases
    SparseSpec("relu", "none", "exact", 40, 100, 24, False, True, False),  # odd
    # dims no tile divides; no B1
    SparseSpec("relu", "relu", "exact", 64, 256, 64, False, False, True),  # dReLU
    SparseSpec("relu", "none", "exact", 320, 200, 40, True, True, True),  # ReGLU;
    # d_in 320 is split over two blocks (partial sums PP)
]


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return build_cuda_library(SPECS, family("cuda"), tmp_path_factory.mktemp("cuda"))


@pytest.fixture(scope="module")
def emulator(library):
    return Emulator(library.source_path.read_text(), library.variants)


def _weights(s: SparseSpec, rng) -> dict[str, np.ndarray]:
    w = {"W1": rng.standard_normal((s.d_in, s.d_ff)) / np.sqrt(s.d_in),
         "W2": rng.standard_normal((s.d_ff, s.d_out)) / np.sqrt(s.d_ff)}
    if s.has_b1:
        w["B1"] = rng.standard_normal(s.d_ff) * 0.3 - 0.8  # ~75% zeros after ReLU
    if s.has_b2:
        w["B2"] = rng.standard_normal(s.d_out)
    if s.gated:
        w["WU"] = rng.standard_normal((s.d_ff, s.d_in)) / np.sqrt(s.d_in)
    return {k: v.astype(np.float32) for k, v in w.items()}


def _cases(library):
    """Every variant at 1, 5 and 37 tokens (kernels serve any count; the range is dispatch)
    and at the first token count of its range."""
    for v in library.variants:
        for n in sorted({1, 5, 37, v.min_tokens}):
            yield v, n


def test_every_variant_matches_the_reference(library, emulator) -> None:
    rng = np.random.default_rng(0)
    checked = 0
    for s in SPECS:
        w = _weights(s, rng)
        for v, n in ((v, n) for v, n in _cases(library) if v.spec == s):
            x = rng.standard_normal((n, s.d_in)).astype(np.float32)
            got = emulator.run(v, {"X": x, **w}, any_tokens=True)
            want = sparse_ffn(x, w["W1"], w.get("B1"), w["W2"], w.get("B2"), w.get("WU"),
                              up_activation=s.up_activation)
            assert np.isfinite(got).all(), (s, v.variant, n)
            err = np.abs(got - want).max() / np.abs(want).max()
            assert err < RTOL, (s, v.variant, n, err)
            checked += 1
    assert checked == len(SPECS) * 18  # 5 variants × {1, 5, 37} + range starts 2, 9, 257


def test_zero_activations_leave_only_biases(library, emulator) -> None:
    """All neurons off: Y must be B2 exactly — skipped rows contribute nothing."""
    s = SPECS[0]
    w = _weights(s, np.random.default_rng(1))
    w["B1"] = np.full(s.d_ff, -1e4, np.float32)
    x = np.random.default_rng(2).standard_normal((3, s.d_in)).astype(np.float32)
    for v in library.variants:
        if v.spec == s and v.min_tokens <= 3 <= v.max_tokens:
            np.testing.assert_array_equal(emulator.run(v, {"X": x, **w}),
                                          np.broadcast_to(w["B2"], (3, s.d_out)))


def test_variants_cover_every_token_count(library) -> None:
    for s in SPECS:
        vs = sorted((v for v in library.variants if v.spec == s), key=lambda v: v.min_tokens)
        assert vs[0].min_tokens == 1 and vs[-1].max_tokens == 2**31 - 1
        for a, b in itertools.pairwise(vs):
            assert b.min_tokens == a.max_tokens + 1


def test_fatbin_has_cubins_for_each_arch_and_ptx(library) -> None:
    assert fatbin_entries(library.fatbin_path) == [("elf", "sm_80"), ("ptx", "sm_90"),
                                                   ("elf", "sm_90")]
    # independently of the fatbin headers: the ELF images' e_flags name their SM
    data = library.fatbin_path.read_bytes()
    sms = sorted((struct.unpack_from("<I", data, m.start() + 48)[0] >> 8) & 0xFF
                 for m in re.finditer(b"\x7fELF", data))
    assert sms == [80, 90]


def test_launch_table_matches_the_kernels(library) -> None:
    """Parameter order, block size and kernel names as the emitted source declares them."""
    source = library.source_path.read_text()
    data = library.fatbin_path.read_bytes()
    decl = re.compile(r'extern "C" __global__ void __launch_bounds__\((\d+)\) (\w+)\(([^)]*)\)')
    kernels = {name: (int(bound), [p.split()[-1].removesuffix("_ptr") for p in params.split(",")])
               for bound, name, params in decl.findall(source)}
    for v in library.variants:
        expected_bufs = set(v.spec.arg_names()) | {b for b, _ in v.workspace} | {"N"}
        for ln in v.launches:
            bound, params = kernels[ln.kernel]
            assert list(ln.params) == params
            assert set(params) <= expected_bufs
            assert ln.block[0] * ln.block[1] * ln.block[2] == bound
            assert ln.kernel.encode() in data  # in the cubins' symbol tables


def test_grid_dims_are_exact(library) -> None:
    for v in library.variants:
        for ln in v.launches:
            for d in ln.grid:
                assert d(1) >= 1 and d(v.max_tokens if v.max_tokens < 2**20 else 4096) >= 1
    assert Dim(1, 31, 32)(33) == 2 and Dim(0, 7)(1000) == 7


def test_kernels_read_and_write_only_their_buffers(library, emulator) -> None:
    """Guard bands around every buffer stay untouched (out-of-bounds writes would show)."""
    s = SPECS[1]  # dims no tile divides: every edge guard is exercised
    w = _weights(s, np.random.default_rng(3))
    for v in library.variants:
        if v.spec != s:
            continue
        n = 11
        x = np.random.default_rng(4).standard_normal((n, s.d_in)).astype(np.float32)
        padded = {k: np.concatenate([a.ravel(), np.full(64, 7.0, np.float32)])
                  for k, a in {"X": x, **w}.items()}
        views = {k: padded[k][: a.size].reshape(a.shape) for k, a in {"X": x, **w}.items()}
        emulator.run(v, views, any_tokens=True)
        for k, p in padded.items():
            assert (p[-64:] == 7.0).all(), (v.variant, k)


def test_cuda_family_target_and_archs(tmp_path: Path) -> None:
    assert family("cuda").target(None) == {"kind": "cuda", "arch": "sm_90"}
    assert family("gpu").target("sm_80")["arch"] == "sm_80"
    with pytest.raises(CodegenError, match="sm_XX"):
        build_cuda_library(SPECS[:1], family("cuda"), tmp_path, archs=("compute_90",))


def test_nvcc_errors_are_typed(tmp_path: Path) -> None:
    bad = tmp_path / "bad.cu"
    bad.write_text("this is not CUDA")
    with pytest.raises(CodegenError, match="nvcc failed"):
        compile_fatbin(bad, tmp_path / "x.fatbin", ["sm_90"])


def test_missing_nvcc_says_how_to_fix(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(CodegenError, match="nvcc not found"):
        build_cuda_library(SPECS[:1], family("cuda"), tmp_path)
