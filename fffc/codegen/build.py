"""Build the kernels of an artifact: KernelSpecs in, one object file + a kernel table out.

Contract with packaging/the shim: every compiled kernel is a TVM packed function with
C symbol ``__tvm_ffi_<symbol>``, arguments ``spec.arg_names()`` as DLTensors (X and Y
2-D [tokens, d]), and is valid for ``min_tokens <= tokens <= max_tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fffc.ops import KernelSpec


@dataclass(frozen=True)
class CompiledKernel:
    spec: KernelSpec
    variant: str
    symbol: str  # the PrimFunc's global_symbol; the C entry is __tvm_ffi_<symbol>
    min_tokens: int
    max_tokens: int  # inclusive; 2**31-1 for "no upper bound"

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
