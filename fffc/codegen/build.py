"""Build the kernels of an artifact: KernelSpecs in, one object file + a kernel table out.

Contract with packaging/the shim: every compiled kernel is a TVM packed function with
C symbol ``__tvm_ffi_<symbol>``, arguments ``spec.arg_names()`` as DLTensors (X and Y
2-D [tokens, d], any 4-byte alignment), and is valid for ``min_tokens <= tokens <=
max_tokens``; a spec's kernels cover 1..2**31-1 without gaps or overlaps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fffc.contract.errors import CodegenError
from fffc.contract.kernels import FLOAT32, KernelSpec

from . import _tvm, registry
from .cuda_build import CudaLibrary, build_cuda_library
from .schedules import MAX_TOKENS, Family, Variant, family

OBJECT_NAME = "fffc_kernels.o"


@dataclass(frozen=True)
class CompiledKernel:
    spec: KernelSpec
    variant: str
    symbol: str  # the PrimFunc's global_symbol; the C entry is __tvm_ffi_<symbol>
    min_tokens: int
    max_tokens: int  # inclusive
    alternative: bool = False  # preferred by the shim where it can (outside the cover)

    @property
    def c_symbol(self) -> str:
        return f"__tvm_ffi_{self.symbol}"

    @property
    def arg_names(self) -> list[str]:
        return registry.of(self.spec).cpu_args(self.spec, self.variant)

    @property
    def table_mode(self) -> str:
        """The kernel table's mode: the shim's key for the call's arguments."""
        return registry.of(self.spec).table_mode(self.spec, self.variant)


@dataclass(frozen=True)
class KernelLibrary:
    object_path: Path  # one relocatable object holding every CPU kernel
    kernels: tuple[CompiledKernel, ...]
    target: dict  # the CPU kernels' TVM target as JSON dict, recorded in the manifest
    family: str  # "x86" | "arm" | "cuda"
    cuda: CudaLibrary | None = None  # --target cuda: the GPU kernels (CPU ones stay for CPU EP)


def host_can_run(target: dict) -> bool:
    """Whether kernels built for ``target`` run on this machine (so the artifact check can)."""
    if not target.get("mtriple", "x86_64").startswith("x86_64"):
        return False
    host = _tvm.host_cpu()
    cpu = target.get("mcpu") or host
    if cpu == host:
        return True
    isa = ("avx", "fma", "sse", "bmi", "f16c", "amx", "vpclmul", "gfni")

    def needed(name: str) -> set[str]:
        return {f for f in _tvm.cpu_features(name) if f.startswith(isa)}

    return needed(cpu) <= needed(host)


def symbol_of(spec: KernelSpec, variant: str) -> str:
    return f"fffc_{registry.of(spec).symbol}_{spec.key}_{variant}"


def _check_cover(spec: KernelSpec, table: list[CompiledKernel]) -> None:
    """A schedule bug must not reach the shim as a token count without a kernel (an
    alternative variant is one the shim prefers where it can derive its inputs)."""
    expect = 1
    for k in sorted((k for k in table if not k.alternative), key=lambda k: k.min_tokens):
        if k.min_tokens != expect or k.max_tokens < k.min_tokens:
            raise CodegenError(f"variants of {spec} do not cover tokens from {expect}")
        expect = k.max_tokens + 1
    if expect != MAX_TOKENS + 1:
        raise CodegenError(f"variants of {spec} stop at {expect - 1} tokens")


def _variants(spec: KernelSpec, fam: Family, target: dict) -> list[tuple[Variant, CompiledKernel]]:
    """A spec's CPU variants for ``target``, each with its kernel table entry."""
    op = registry.of(spec)
    out = [(v, CompiledKernel(spec, v.name, symbol_of(spec, v.name), v.min_tokens,
                              v.max_tokens, v.alternative))
           for v in op.cpu_variants(spec, fam, target)]
    _check_cover(spec, [k for _, k in out])
    return out


def _funcs(specs: Sequence[KernelSpec], fam: Family, target: dict,
           only: str | None = None) -> tuple[dict, list[CompiledKernel]]:
    """The PrimFuncs of every variant of every spec (``only``: of that variant) by symbol,
    and the kernel table."""
    funcs, table = {}, []
    for spec in specs:
        variants = _variants(spec, fam, target)
        for v, k in variants:
            if only is None or only == v.name:
                funcs[k.symbol] = registry.of(spec).cpu_func(spec, v, k.symbol)
        if only is not None and not any(v.name == only for v, _ in variants):
            raise CodegenError(f"no variant {only!r}; have {[v.name for v, _ in variants]}")
        table += [k for _, k in variants]
    return funcs, table


def _compile(funcs: dict, target: dict):
    try:
        return _tvm.compile_module(funcs, target)
    except Exception as e:  # TVM raises many error types; surface them as one typed error
        raise CodegenError(f"TVM compile for {target} failed: {e}") from e


def host_target() -> dict:
    return {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": _tvm.host_cpu()}


def build_kernel_library(specs: Sequence[KernelSpec], fam: Family, out_dir: Path,
                         mcpu: str | None = None, archs: Sequence[str] | None = None,
                         host_twin: bool = False, mattr: Sequence[str] = (),
                         counted_specs: Sequence[KernelSpec] = (),
                         weight_dtype: str = "float32",
                         cuda_version: int | None = None) -> KernelLibrary:
    """Compile every variant of every spec for the family ``fam`` into ``out_dir`` (CPU
    object; a device family: the CPU kernels of ``fam.cpu`` + the device's).

    ``counted_specs`` (cuda): StructuredFFN specs that also get "counted_" variants (rows
    bounded by a device-side count: a RoutedFFN's FFN on its gathered rows).
    ``weight_dtype`` (cuda): the weight matrices the CUDA kernels read (float16, bfloat16).
    ``cuda_version`` (cuda): the CUDA major version whose compiler builds the fatbin (None:
    the nvcc on PATH); ``archs`` (cuda): its cubins (None: the family's default).

    ``host_twin``: the same kernels (same variants and tilings, hence the same TIR) compiled
    for this machine instead, so an artifact for another CPU can be checked here.
    """
    out_dir = Path(out_dir)
    if fam.device:
        cpu = build_kernel_library(specs, fam.cpu, out_dir, mcpu or fam.cpu_mcpu,
                                   host_twin=host_twin, mattr=mattr)
        # --weight-dtype: the CUDA kernels read the 16-bit weights (the CPU kernels stay
        # float32: on the CPU EP a node with 16-bit weights runs its fallback function)
        return replace(cpu, family=fam.name, cuda=build_cuda_library(
            [stored(s, weight_dtype) for s in specs], fam, out_dir, archs,
            counted_specs=tuple(stored(s, weight_dtype) for s in counted_specs),
            cuda_version=cuda_version))
    tgt = fam.target(mcpu, tuple(mattr))
    # the CPU kernels read float32 weights (the shim widens 16-bit ones once per weight)
    unique = list(dict.fromkeys(s.stored_as(FLOAT32) for s in specs))  # equal specs share
    funcs, table = _funcs(unique, fam, tgt)
    if host_twin:
        tgt = host_target()
    ex = _compile(funcs, tgt)
    out_dir.mkdir(parents=True, exist_ok=True)
    obj = out_dir / OBJECT_NAME
    ex.mod.write_to_file(str(obj))
    return KernelLibrary(obj, tuple(table), tgt, fam.name)


def stored(spec: KernelSpec, weight_dtype: str) -> KernelSpec:
    """``spec`` with the weights the CUDA kernels read: a float32 site's at
    ``--weight-dtype``, a 16-bit model's site's as the model stores them."""
    return spec.stored_as(weight_dtype) if spec.dtype == FLOAT32 else spec


class KernelRunner:
    """A spec's kernels compiled in-process (TVM runtime): for tests and benchmarks.
    ``fam``: a CPU family whose kernels run here (default: x86)."""

    def __init__(self, spec: KernelSpec, variant: str | None = None, fam: Family | None = None,
                 mcpu: str | None = None):
        self.spec = spec
        fam = fam or family("x86")
        tgt = fam.target(mcpu)
        funcs, self.kernels = _funcs([spec], fam, tgt, only=variant)
        if variant is not None:
            self.kernels = [k for k in self.kernels if k.variant == variant]
        self._ex = _compile(funcs, tgt)

    def kernel_for(self, tokens: int) -> CompiledKernel:
        for k in self.kernels:
            if k.min_tokens <= tokens <= k.max_tokens:
                return k
        return self.kernels[0]  # a pinned variant runs any token count

    def _args(self, k: CompiledKernel, arrays: Sequence[np.ndarray]) -> list:
        names = self.spec.arg_names()[:-1]
        if len(arrays) != len(names):
            raise ValueError(f"expected inputs {names}, got {len(arrays)}")
        by_name = {n: np.ascontiguousarray(a, dtype=np.float32)
                   for n, a in zip(names, arrays, strict=True)}
        by_name |= registry.of(self.spec).derived_inputs(self.spec, k.variant, by_name)
        args = [_tvm.tensor(by_name[n]) for n in k.arg_names[:-1]]
        return [*args, _tvm.empty((arrays[0].shape[0], self.spec.d_out))]

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        """``fn(X, W1, [B1], W2, [B2], [WU]) -> Y`` through the variant for X's tokens."""
        k = self.kernel_for(arrays[0].shape[0])
        args = self._args(k, arrays)
        self._ex[k.symbol](*args)
        return args[-1].numpy()

    def time(self, *arrays: np.ndarray, number: int = 20, repeat: int = 5) -> list[float]:
        """Seconds per call (one entry per repeat), timed in C++ by TVM's time_evaluator."""
        k = self.kernel_for(arrays[0].shape[0])
        return _tvm.time_function(self._ex, k.symbol, self._args(k, arrays), number, repeat)


def compile_for_test(spec: KernelSpec, variant: str | None = None, fam: Family | None = None,
                     mcpu: str | None = None) -> Callable[..., np.ndarray]:
    """In-process kernel: ``fn(X, W1, [B1], W2, [B2], [WU]) -> Y`` (variant by token count)."""
    return KernelRunner(spec, variant, fam, mcpu)


def assembly(spec: KernelSpec, fam: Family, target: dict, variant: str | None = None) -> str:
    """The kernels' assembly for a target dict of the family ``fam`` (codegen inspection;
    nothing is run)."""
    funcs, _ = _funcs([spec], fam, target, only=variant)
    return _compile(funcs, target).mod.inspect_source("asm")


def source(spec: KernelSpec, variant: str, fam: Family, mcpu: str | None = None) -> str:
    """The TVMScript of one CPU variant (for --dump and debugging)."""
    for v, k in _variants(spec, fam, fam.target(mcpu)):
        if v.name == variant:
            return registry.of(spec).cpu_func(spec, v, k.symbol).script()
    raise CodegenError(f"no variant {variant!r}")
