"""build_kernel_library: one object, symbols, variant table, targets, vector ISA."""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fffc.codegen.build import MAX_TOKENS, assembly, build_kernel_library, check_target
from fffc.errors import UnsupportedTargetError

from .conftest import spec

SPECS = [spec(), spec(bias=False, up="relu"), spec(20, 52, 12)]


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory):
    return build_kernel_library(SPECS, "x86", tmp_path_factory.mktemp("kernels"))


def test_one_object_with_every_symbol(library) -> None:
    assert library.object_path.name == "fffc_kernels.o" and library.object_path.stat().st_size
    assert library.family == "x86" and library.target["kind"] == "llvm"
    assert library.target["mcpu"]
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm not installed")
    out = subprocess.run([nm, str(library.object_path)], capture_output=True, text=True,
                         check=True).stdout
    defined = {ln.split()[-1] for ln in out.splitlines() if re.match(r"^\S+ T ", ln)}
    for k in library.kernels:
        assert k.c_symbol in defined
        assert k.symbol.startswith(f"fffc_sparse_ffn_{k.spec.key}_")
    assert len({k.symbol for k in library.kernels}) == len(library.kernels)


def test_token_ranges_cover_without_gaps(library) -> None:
    for s in SPECS:
        ks = sorted((k for k in library.kernels if k.spec == s), key=lambda k: k.min_tokens)
        assert ks[0].min_tokens == 1 and ks[-1].max_tokens == MAX_TOKENS
        for a, b in itertools.pairwise(ks):
            assert b.min_tokens == a.max_tokens + 1
        assert ks[0].arg_names == s.arg_names()


def test_explicit_mcpu_is_recorded(tmp_path: Path) -> None:
    lib = build_kernel_library([spec()], "x86", tmp_path, mcpu="haswell")
    assert lib.target["mcpu"] == "haswell"


@pytest.mark.parametrize("target", ["arm", "aarch64"])
def test_unsupported_targets_are_refused(target: str, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedTargetError, match="not yet supported"):
        check_target(target)
    with pytest.raises(UnsupportedTargetError, match="not yet supported"):
        build_kernel_library([spec()], target, tmp_path)


def test_unknown_target_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedTargetError, match="unknown target"):
        build_kernel_library([spec()], "riscv", tmp_path)


BIG = spec(64, 256, 64)


@pytest.mark.parametrize("mcpu, reg", [("haswell", "ymm"), ("znver3", "ymm"),
                                       ("skylake-avx512", "zmm")])
def test_fma_vector_width(mcpu: str, reg: str) -> None:
    """Compiled only (this CPU may lack AVX-512): the micro-kernels use the wide registers."""
    asm = assembly(BIG, {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": mcpu})
    assert re.search(rf"vfmadd\w+\s+%{reg}", asm), f"no {reg} FMA for {mcpu}"
