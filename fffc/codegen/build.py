"""Build the kernels of an artifact: KernelSpecs in, one object file + a kernel table out.

Contract with packaging/the shim: every compiled kernel is a TVM packed function with
C symbol ``__tvm_ffi_<symbol>``, arguments ``spec.arg_names()`` as DLTensors (X and Y
2-D [tokens, d]), and is valid for ``min_tokens <= tokens <= max_tokens``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fffc.errors import CodegenError
from fffc.ops import KernelSpec

from . import _tvm
from .kernels.sparse_ffn import sparse_ffn_primfunc
from .schedules import family

MAX_TOKENS = 2**31 - 1


@dataclass(frozen=True)
class CompiledKernel:
    spec: KernelSpec
    variant: str
    symbol: str  # the PrimFunc's global_symbol; the C entry is __tvm_ffi_<symbol>
    min_tokens: int
    max_tokens: int  # inclusive

    @property
    def c_symbol(self) -> str:
        return f"__tvm_ffi_{self.symbol}"

    @property
    def arg_names(self) -> list[str]:
        return self.spec.arg_names()


@dataclass(frozen=True)
class KernelLibrary:
    object_path: Path  # one relocatable object holding every kernel
    kernels: tuple[CompiledKernel, ...]
    target: dict  # the TVM target as JSON dict, recorded in the manifest
    family: str  # "x86" | "arm" | "cuda"


def check_target(name: str) -> None:
    """Raise UnsupportedTargetError for families without a backend, before slow stages."""
    family(name).target(None)


def _symbol(spec: KernelSpec, variant: str) -> str:
    return f"fffc_sparse_ffn_{spec.key}_{variant}"


def _funcs(specs: Sequence[KernelSpec], fam, target: dict) -> tuple[dict, list[CompiledKernel]]:
    funcs, table = {}, []
    for spec in specs:
        variant = "exact"
        symbol = _symbol(spec, variant)
        funcs[symbol] = sparse_ffn_primfunc(spec, fam.tiling(spec, target), symbol)
        table.append(CompiledKernel(spec, variant, symbol, 0, MAX_TOKENS))
    return funcs, table


def build_kernel_library(specs: Sequence[KernelSpec], target: str, out_dir: Path,
                         mcpu: str | None = None) -> KernelLibrary:
    """Compile every spec's kernels into ``out_dir/fffc_kernels.o``."""
    fam = family(target)
    tgt = fam.target(mcpu)
    funcs, table = _funcs(specs, fam, tgt)
    try:
        ex = _tvm.compile_module(funcs, tgt)
    except Exception as e:
        raise CodegenError(f"TVM compile for {tgt} failed: {e}") from e
    out_dir.mkdir(parents=True, exist_ok=True)
    obj = out_dir / "fffc_kernels.o"
    ex.mod.write_to_file(str(obj))
    return KernelLibrary(obj, tuple(table), tgt, target)


def compile_for_test(spec: KernelSpec, target: str = "x86",
                     mcpu: str | None = None) -> Callable[..., np.ndarray]:
    """In-process kernel through the TVM runtime: ``fn(X, W1, [B1], W2, [B2], [WU]) -> Y``."""
    fam = family(target)
    tgt = fam.target(mcpu)
    funcs, table = _funcs([spec], fam, tgt)
    ex = _tvm.compile_module(funcs, tgt)
    fn = ex[table[0].symbol]

    def run(*arrays: np.ndarray) -> np.ndarray:
        x = arrays[0]
        y = _tvm.empty((x.shape[0], spec.d_out))
        fn(*[_tvm.tensor(np.ascontiguousarray(a, dtype=np.float32)) for a in arrays], y)
        return y.numpy()

    return run


def assembly(spec: KernelSpec, target: dict) -> str:
    """The kernel's assembly for a target (codegen inspection; nothing is run)."""
    fam = family("x86")
    funcs, _ = _funcs([spec], fam, target)
    return _tvm.compile_module(funcs, target).mod.inspect_source("asm")
