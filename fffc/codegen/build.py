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
from fffc.contract.ops import KernelSpec

from . import _tvm
from .cuda_build import DEFAULT_ARCHS, CudaLibrary, build_cuda_library
from .kernels.exact_decode import exact_decode_primfunc
from .kernels.exact_screened import screen_inputs, screened_arg_names, screened_primfunc
from .kernels.fff import fff_cpu_primfunc, fff_level_primfunc
from .kernels.fff_cuda import fff_params
from .kernels.routed_ffn import combine_primfunc, route_primfunc, routed_variants
from .kernels.sparse_ffn import sparse_ffn_primfunc
from .kernels.sparse_ffn_cats import cats_primfunc
from .kernels.sparse_ffn_predictor import predictor_primfunc
from .kernels.sparse_ffn_teal import teal_primfunc
from .kernels.structured_ffn import structured_ffn_primfunc, structured_variants
from .schedules import MAX_TOKENS, family

OBJECT_NAME = "fffc_kernels.o"
# CPU kernels of a CUDA artifact run wherever its GPU server is: any x86-64 with AVX2/FMA
PORTABLE_X86 = "x86-64-v3"
FFF_SERIAL_MAX_TOKENS = 8  # FastFeedForward: one thread up to here (bench/bench_fff.py)
# FastFeedForward, level-synchronous blocks of FFF_LEVEL_BLOCK tokens from FFF_LEVEL_MIN_TOKENS
# (two blocks: both cores busy) when the rows one token walks exceed a core's L2, so that
# token-by-token walks would refetch every tree's upper rows (bench/bench_fff_variants.py:
# 128x4 at H 768, 3.9 MB walked per token, 15-30% faster from 64 tokens; 1x11 and 4x9 equal)
FFF_LEVEL_BLOCK = 32
FFF_LEVEL_MIN_TOKENS = 2 * FFF_LEVEL_BLOCK
FFF_LEVEL_MIN_WALK_BYTES = 1 << 20


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
        if self.variant == "screened":  # W1 as the screen's derived inputs
            return screened_arg_names(self.spec)
        return self.spec.arg_names()

    @property
    def table_mode(self) -> str:
        """The kernel table's mode: the shim's key for the call's arguments."""
        s = self.spec
        if s.mode == "predictor":
            return f"predictor/{s.rank}"  # rank: PA's width
        if s.centers:
            return f"{s.mode}/{s.centers}"  # centered teal: XC and/or HC
        return f"{s.mode}/screened" if self.variant == "screened" else s.mode


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


def check_target(name: str) -> None:
    """Raise UnsupportedTargetError for families without a backend, before slow stages."""
    family(name).target(None)


def symbol_of(spec: KernelSpec, variant: str) -> str:
    op = {"FastFeedForward": "fff", "StructuredFFN": "structured",
          "RoutedFFN": "routed"}.get(spec.op, "sparse_ffn")
    return f"fffc_{op}_{spec.key}_{variant}"


def _check_cover(spec: KernelSpec, table: list[CompiledKernel]) -> None:
    """A schedule bug must not reach the shim as a token count without a kernel (the
    "screened" variant is an alternative the shim prefers where it can derive its inputs)."""
    expect = 1
    for k in sorted((k for k in table if k.variant != "screened"), key=lambda k: k.min_tokens):
        if k.min_tokens != expect or k.max_tokens < k.min_tokens:
            raise CodegenError(f"variants of {spec} do not cover tokens from {expect}")
        expect = k.max_tokens + 1
    if expect != MAX_TOKENS + 1:
        raise CodegenError(f"variants of {spec} stop at {expect - 1} tokens")


def fff_variants(spec: KernelSpec) -> list[tuple[str, int, int]]:
    """(variant, min_tokens, max_tokens) of a FastFeedForward spec on CPUs: one thread for a
    few tokens (a walk is ~2 µs at H 768: waking threads costs more), parallel walks
    beyond, and level-synchronous blocks for many tokens of forests too big to stay cached."""
    trees, depth = fff_params(spec)
    walked = trees * (depth + 1) * (spec.d_in + spec.d_out) * 4
    serial = ("walk_serial", 1, FFF_SERIAL_MAX_TOKENS)
    if walked <= FFF_LEVEL_MIN_WALK_BYTES:
        return [serial, ("walk", FFF_SERIAL_MAX_TOKENS + 1, MAX_TOKENS)]
    return [serial, ("walk", FFF_SERIAL_MAX_TOKENS + 1, FFF_LEVEL_MIN_TOKENS - 1),
            ("level", FFF_LEVEL_MIN_TOKENS, MAX_TOKENS)]


def _funcs(specs: Sequence[KernelSpec], target_name: str, target: dict,
           only: str | None = None) -> tuple[dict, list[CompiledKernel]]:
    fam = family(target_name)
    funcs, table = {}, []
    for spec in specs:
        if spec.op == "FastFeedForward":
            lanes = 4 if target.get("mtriple", "").startswith("aarch64") else 16
            for name, lo, hi in fff_variants(spec):
                k = CompiledKernel(spec, name, symbol_of(spec, name), lo, hi)
                if only is None or only == name:
                    funcs[k.symbol] = (
                        fff_level_primfunc(spec, k.symbol, FFF_LEVEL_BLOCK, lanes)
                        if name == "level" else
                        fff_cpu_primfunc(spec, k.symbol, lanes, parallel=name == "walk"))
                table.append(k)
            _check_cover(spec, table[-len(fff_variants(spec)):])
            continue
        if spec.op in ("StructuredFFN", "RoutedFFN"):  # target-neutral kernels for every CPU
            variants = (structured_variants if spec.op == "StructuredFFN" else routed_variants)
            kernels = [CompiledKernel(spec, name, symbol_of(spec, name), lo, hi)
                       for name, lo, hi in variants(spec)]
            for k in kernels:
                if only is None or only == k.variant:
                    funcs[k.symbol] = _cpu_primfunc(spec, k)
            _check_cover(spec, kernels)
            table += kernels
            continue
        kernels = []
        for v in fam.variants(spec, target):
            kernels.append(CompiledKernel(spec, v.name, symbol_of(spec, v.name),
                                          v.min_tokens, v.max_tokens))
            if only is None or v.name == only:
                sym = kernels[-1].symbol
                funcs[sym] = _sparse_generator(spec, v.name)(spec, v.tiling, sym)
        _check_cover(spec, kernels)
        if only is not None and not any(k.variant == only for k in kernels):
            raise CodegenError(f"no variant {only!r}; have {[k.variant for k in kernels]}")
        table += kernels
    return funcs, table


def _sparse_generator(spec: KernelSpec, variant: str) -> Callable[..., object]:
    """The PrimFunc generator ``(spec, tiling, symbol)`` of a SparseFFN CPU variant."""
    by_mode = {"teal": teal_primfunc, "cats": cats_primfunc, "predictor": predictor_primfunc}
    by_variant = {"decode": exact_decode_primfunc, "screened": screened_primfunc}
    return by_mode.get(spec.mode, by_variant.get(variant, sparse_ffn_primfunc))


def _cpu_primfunc(spec: KernelSpec, k: CompiledKernel):
    """The PrimFunc of a StructuredFFN or RoutedFFN (routing / combine) kernel."""
    if spec.op == "StructuredFFN":
        return structured_ffn_primfunc(spec, k.variant, k.symbol)
    if spec.mode == "combine":
        return combine_primfunc(spec, k.symbol)
    return route_primfunc(spec, k.symbol)


def _compile(funcs: dict, target: dict):
    try:
        return _tvm.compile_module(funcs, target)
    except Exception as e:  # TVM raises many error types; surface them as one typed error
        raise CodegenError(f"TVM compile for {target} failed: {e}") from e


def host_target() -> dict:
    return {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": _tvm.host_cpu()}


def build_kernel_library(specs: Sequence[KernelSpec], target: str = "x86",
                         out_dir: Path | None = None, mcpu: str | None = None,
                         archs: Sequence[str] = DEFAULT_ARCHS,
                         host_twin: bool = False, mattr: Sequence[str] = (),
                         counted_specs: Sequence[KernelSpec] = (),
                         weight_dtype: str = "float32") -> KernelLibrary:
    """Compile every variant of every spec into ``out_dir`` (CPU object; cuda: + fatbin).

    ``counted_specs`` (cuda): StructuredFFN specs that also get "counted_" variants (rows
    bounded by a device-side count: a RoutedFFN's FFN on its gathered rows).
    ``weight_dtype`` (cuda): the weight matrices the CUDA kernels read (float16, bfloat16).

    ``host_twin``: the same kernels (same variants and tilings, hence the same TIR) compiled
    for this machine instead, so an artifact for another CPU can be checked here.
    """
    if out_dir is None:
        raise CodegenError("build_kernel_library needs an output directory")
    fam = family(target)
    if fam.name == "cuda":
        cpu = build_kernel_library(specs, "x86", Path(out_dir), mcpu or PORTABLE_X86,
                                   host_twin=host_twin, mattr=mattr)
        # --weight-dtype: the CUDA kernels read the 16-bit weights (the CPU kernels stay
        # float32: on the CPU EP a node with 16-bit weights runs its fallback function)
        return replace(cpu, family="cuda", cuda=build_cuda_library(
            [s.stored_as(weight_dtype) for s in specs], Path(out_dir), archs,
            counted_specs=tuple(s.stored_as(weight_dtype) for s in counted_specs)))
    tgt = fam.target(mcpu, tuple(mattr))
    unique = list(dict.fromkeys(specs))  # equal specs share kernels
    funcs, table = _funcs(unique, target, tgt)
    if host_twin:
        tgt = host_target()
    ex = _compile(funcs, tgt)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    obj = out_dir / OBJECT_NAME
    ex.mod.write_to_file(str(obj))
    return KernelLibrary(obj, tuple(table), tgt, fam.name)


class KernelRunner:
    """A spec's kernels compiled in-process (TVM runtime): for tests and benchmarks."""

    def __init__(self, spec: KernelSpec, variant: str | None = None, target: str = "x86",
                 mcpu: str | None = None):
        self.spec = spec
        tgt = family(target).target(mcpu)
        funcs, self.kernels = _funcs([spec], target, tgt, only=variant)
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
        if k.variant == "screened":  # what the shim derives from W1 and B1 once per weight
            by_name["WS"], by_name["W1T"], by_name["E"] = screen_inputs(by_name["W1"],
                                                                        by_name.get("B1"))
            by_name["STAT"] = np.zeros(1, np.int32)
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


def compile_for_test(spec: KernelSpec, variant: str | None = None, target: str = "x86",
                     mcpu: str | None = None) -> Callable[..., np.ndarray]:
    """In-process kernel: ``fn(X, W1, [B1], W2, [B2], [WU]) -> Y`` (variant by token count)."""
    return KernelRunner(spec, variant, target, mcpu)


def assembly(spec: KernelSpec, target: dict, variant: str | None = None,
             family_name: str = "x86") -> str:
    """The kernels' assembly for a target dict (codegen inspection; nothing is run)."""
    funcs, _ = _funcs([spec], family_name, target, only=variant)
    return _compile(funcs, target).mod.inspect_source("asm")


def source(spec: KernelSpec, variant: str, target: str = "x86", mcpu: str | None = None) -> str:
    """The TVMScript of one variant (for --dump and debugging)."""
    if spec.op == "StructuredFFN":
        from .kernels.structured_ffn import structured_ffn_source

        return structured_ffn_source(spec, variant, symbol_of(spec, variant))
    if spec.op == "RoutedFFN":
        make = combine_primfunc if spec.mode == "combine" else route_primfunc
        return make(spec, symbol_of(spec, variant)).script()
    if spec.op == "FastFeedForward":
        if variant not in [v for v, _, _ in fff_variants(spec)]:
            raise CodegenError(f"no variant {variant!r}")
        if variant == "level":
            return fff_level_primfunc(spec, symbol_of(spec, variant), FFF_LEVEL_BLOCK).script()
        return fff_cpu_primfunc(spec, symbol_of(spec, variant), parallel=variant == "walk").script()
    fam = family(target)
    for v in fam.variants(spec, fam.target(mcpu)):
        if v.name == variant:
            return _sparse_generator(spec, variant)(spec, v.tiling, symbol_of(spec, variant)).script()
    raise CodegenError(f"no variant {variant!r}")
