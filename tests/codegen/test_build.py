"""build_kernel_library: one object, symbols, variant table, targets, vector ISA."""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fffc.codegen.build import (
    MAX_TOKENS,
    assembly,
    build_kernel_library,
    symbol_of,
)
from fffc.codegen.schedules import family
from fffc.contract.errors import UnsupportedTargetError
from fffc.contract.kernels import FffSpec
from tests.fixtures.sparse_kernels import spec

SPECS = [spec(), spec(bias=False, up="relu"), spec(20, 52, 12)]


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory):
    return build_kernel_library(SPECS, family("x86"), tmp_path_factory.mktemp("kernels"))


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
    """The plain variants cover every token count; the float16-screened one (1 token) is
    an alternative the shim takes when it can derive its inputs."""
    from fffc.codegen.kernels.exact_screened import screenable, screened_arg_names

    for s in SPECS:
        ks = sorted((k for k in library.kernels if k.spec == s and k.variant != "screened"),
                    key=lambda k: k.min_tokens)
        assert ks[0].min_tokens == 1 and ks[-1].max_tokens == MAX_TOKENS
        for a, b in itertools.pairwise(ks):
            assert b.min_tokens == a.max_tokens + 1
        assert ks[0].arg_names == s.arg_names()
        screened = [k for k in library.kernels if k.spec == s and k.variant == "screened"]
        assert len(screened) == int(screenable(s))
        for k in screened:
            assert (k.min_tokens, k.max_tokens, k.table_mode) == (1, 1, "exact/screened")
            assert k.arg_names == screened_arg_names(s)


def test_explicit_mcpu_is_recorded(tmp_path: Path) -> None:
    lib = build_kernel_library([spec()], family("x86"), tmp_path, mcpu="haswell")
    assert lib.target["mcpu"] == "haswell"


@pytest.mark.parametrize("mcpu", ["pentium4", "not-a-cpu"])
def test_arm_refuses_cpus_that_are_not_aarch64(mcpu: str, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedTargetError, match="not an aarch64 CPU"):
        build_kernel_library([spec()], family("arm"), tmp_path, mcpu=mcpu)


def test_unknown_target_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedTargetError, match="unknown target"):
        build_kernel_library([spec()], family("riscv"), tmp_path)


BIG = spec(64, 256, 64)


@pytest.mark.parametrize("mcpu", [None, "cortex-a72", "neoverse-n1"])
@pytest.mark.parametrize("s", [BIG, spec(64, 256, 64, up="relu")], ids=["relu", "drelu"])
def test_arm_kernels_use_neon_fmla(s, mcpu) -> None:
    """Every aarch64 kernel variant's loops (its ``_compute_`` function; these shapes are
    below the threading threshold, so no parallel lambdas) use fmla on 4-lane vectors."""
    arm = family("arm")
    asm = assembly(s, arm, arm.target(mcpu))
    bodies = dict(re.findall(r"^(\w+_compute_):\n(.*?)(?=^\w+:\n|\Z)", asm, re.M | re.S))
    for v in arm.sparse_variants(s, arm.target(mcpu)):
        body = bodies[symbol_of(s, v.name) + "_compute_"]
        assert len(re.findall(r"fmla\s+v\d+\.4s", body)) >= 4, v.name


@pytest.mark.parametrize("mcpu, reg", [("haswell", "ymm"), ("znver3", "ymm"),
                                       ("skylake-avx512", "zmm")])
def test_fma_vector_width(mcpu: str, reg: str) -> None:
    """Compiled only (this CPU may lack AVX-512): the micro-kernels use the wide registers."""
    asm = assembly(BIG, family("x86"), {"kind": "llvm", "mtriple": "x86_64-linux-gnu",
                                         "mcpu": mcpu})
    assert re.search(rf"vfmadd\w+\s+%{reg}", asm), f"no {reg} FMA for {mcpu}"


def test_arm_fff_kernel_uses_neon_fmla() -> None:
    s = FffSpec(64, 64, 2, 4)
    asm = assembly(s, family("arm"), family("arm").target(None))
    assert len(re.findall(r"fmla\s+v\d+\.4s", asm)) >= 8  # the dot and axpy loops


def test_mattr_reaches_the_llvm_target() -> None:
    assert family("arm").target(None, ("+dotprod",))["mattr"] == ["+v8.2a", "+neon", "+dotprod"]
    assert family("arm").target("cortex-a72")["mcpu"] == "cortex-a72"
    assert "mattr" not in family("arm").target("cortex-a72")
    assert family("x86").target("haswell", ("-fma",))["mattr"] == ["-fma"]
