"""Codegen per kernel spec class, looked up by the spec's type (``of(spec)``).

An entry owns everything build.py and cuda_build.py do differently per op: the symbol
prefixes of its kernels, its CPU variants (from the schedule family where they depend on
the target, else the op's own table) and their PrimFunc generator, its CUDA variants with
their PrimFuncs, workspace and launch parameters, and its kernel-table modes. Adding an op
means a spec class (``fffc.contract.kernels``), its generators (``kernels/``), its
variants (``schedules/`` where they depend on the target) and an entry here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import ClassVar

import numpy as np

from fffc.contract.errors import CodegenError
from fffc.contract.kernels import (
    CombineSpec,
    FffSpec,
    KernelSpec,
    RouteSpec,
    SparseSpec,
    StructuredSpec,
)
from fffc.contract.kinds import SparseMode, WeightBits
from fffc.contract.modes import sparse

from . import _tvm
from .kernels import (
    exact_q4_cuda,
    routed_ffn_cuda,
    sparse_ffn_cuda,
    sparse_ffn_cuda_masked,
    structured_ffn_cuda,
)
from .kernels.cats_q4 import cats_q4_primfunc
from .kernels.exact_decode import exact_decode_primfunc
from .kernels.exact_q4 import Q4Plan, exact_q4_primfunc
from .kernels.exact_q8 import q8_from_plan
from .kernels.exact_screened import SCREENED, screen_inputs, screened_arg_names, screened_primfunc
from .kernels.fff import walk_primfunc
from .kernels.fff_cuda import fff_kernel
from .kernels.predictor_q4 import predictor_q4_primfunc
from .kernels.routed_ffn import combine_primfunc, route_primfunc, routed_variants
from .kernels.sparse_ffn import sparse_ffn_primfunc
from .kernels.sparse_ffn_cats import cats_primfunc
from .kernels.sparse_ffn_predictor import predictor_primfunc
from .kernels.sparse_ffn_teal import teal_primfunc
from .kernels.structured_ffn import structured_ffn_primfunc, structured_variants
from .kernels.teal_q4 import teal_q4_primfunc
from .q4_layout import Q4Format
from .schedules import Family, Variant


class OpKernels:
    """The kernels of one spec class. ``symbol``: CPU kernels are named
    ``fffc_<symbol>_<key>_<variant>``; ``cuda_symbol``: CUDA launches
    ``fffc_<cuda_symbol>_<key>_<variant>[_<launch>]``."""

    spec_type: ClassVar[type[KernelSpec]]
    symbol: ClassVar[str]
    cuda_symbol: ClassVar[str]
    counted: ClassVar[bool] = False  # has CUDA variants bounded by a device-side row count

    # -- CPU --
    def cpu_variants(self, spec, fam: Family, target: dict) -> list[Variant]:
        raise NotImplementedError

    def cpu_func(self, spec, v: Variant, symbol: str):
        """The PrimFunc of CPU variant ``v``."""
        raise NotImplementedError

    def cpu_args(self, spec, variant: str) -> list[str]:
        """The arguments of a CPU variant, in order (the shim passes them so)."""
        return spec.arg_names()

    def derived_inputs(self, spec, variant: str, arrays: Mapping[str, np.ndarray]) -> dict:
        """Arguments of a variant that the shim derives from the op's inputs (tests and
        benchmarks derive them here)."""
        return {}

    def table_mode(self, spec, variant: str) -> str:
        """The CPU kernel table's mode: the shim's key for the call's arguments."""
        return spec.row.mode

    # -- CUDA --
    def cuda_variants(self, spec, fam: Family, target: dict, counted: bool) -> list[Variant]:
        raise NotImplementedError

    def cuda_funcs(self, spec, v: Variant, prefix: str, target) -> dict:
        """PrimFuncs of a CUDA variant's launches, by global symbol, in launch order."""
        raise NotImplementedError

    def workspace(self, spec, v: Variant) -> dict[str, int]:
        """Scratch buffers of a CUDA variant: name → float32 elements per token."""
        return {}

    def launch_params(self, spec, v: Variant) -> frozenset[str]:
        """Launch parameters besides the spec's arguments, its workspace and N."""
        return frozenset()

    def cuda_table_mode(self, spec) -> str:
        """The CUDA kernel table's mode."""
        return spec.row.mode


def _as_variants(table: list[tuple[str, int, int]]) -> list[Variant]:
    return [Variant(name, lo, hi) for name, lo, hi in table]


# The int4 CPU generators ``(spec, fmt, tiling, symbol, dot, isa)`` per SparseFFN mode
INT4_BY_MODE: dict[SparseMode, Callable] = {
    SparseMode.EXACT: exact_q4_primfunc, SparseMode.TEAL: teal_q4_primfunc,
    SparseMode.CATS: cats_q4_primfunc, SparseMode.PREDICTOR: predictor_q4_primfunc}


def _int4(spec: SparseSpec, plan: Q4Plan, symbol: str):
    """SparseFFN on int4 or int8 codes (SPARSE_FFN's bits 4, 8): the kernel of the spec's
    mode as the family's ``Q4Plan`` says (float32 dots on the dequantized weights, or int8
    dots on x rounded to int8 where the spec says so); 8-bit codes: mode exact only."""
    if spec.bits is WeightBits.INT8:
        if spec.mode is not SparseMode.EXACT:
            raise ValueError(f"int8 SparseFFN kernels are for mode exact, not {spec.mode}")
        return q8_from_plan(spec, plan, symbol)
    return INT4_BY_MODE[spec.mode](spec, Q4Format(spec.block, spec.zero_points, spec.int8_x),
                                   plan.tiling, symbol, plan.dot, plan.isa)


class SparseKernels(OpKernels):
    spec_type = SparseSpec
    symbol = cuda_symbol = "sparse_ffn"

    # CPU generators ``(spec, tiling, symbol)``: one per masked mode; exact skipping's per
    # variant (every other exact variant: the tiled kernel)
    BY_MODE: ClassVar[dict[SparseMode, Callable]] = {
        SparseMode.TEAL: teal_primfunc, SparseMode.CATS: cats_primfunc,
        SparseMode.PREDICTOR: predictor_primfunc}
    EXACT_BY_VARIANT: ClassVar[dict[str, Callable]] = {
        "decode": exact_decode_primfunc, SCREENED: screened_primfunc}

    def generator(self, spec: SparseSpec, variant: str) -> Callable:
        if spec.bits:
            return _int4
        return self.BY_MODE.get(spec.mode) or self.EXACT_BY_VARIANT.get(variant,
                                                                        sparse_ffn_primfunc)

    def cpu_variants(self, spec, fam, target):
        return fam.sparse_variants(spec, target)

    def cpu_func(self, spec, v, symbol):
        return self.generator(spec, v.name)(spec, v.tiling, symbol)

    def cpu_args(self, spec, variant):
        if variant == SCREENED:  # W1 as the screen's derived inputs
            return screened_arg_names(spec)
        return spec.arg_names()

    def derived_inputs(self, spec, variant, arrays):
        if variant != SCREENED:  # what the shim derives from W1 and B1 once per weight
            return {}
        ws, w1t, e = screen_inputs(arrays["W1"], arrays.get("B1"))
        return {"WS": ws, "W1T": w1t, "E": e, "STAT": np.zeros(1, np.int32)}

    def table_mode(self, spec, variant):
        if spec.bits:  # the shim's TableMode of a quantized call (a predictor's rank first)
            mode = f"{spec.mode}/{spec.rank}" if spec.mode is SparseMode.PREDICTOR else spec.mode
            return (f"{mode}/q{int(spec.bits)}b{spec.block}" + ("z" if spec.zero_points else "")
                    + ("i8" if spec.int8_x else "") + ("aq" if spec.act_quant else ""))
        if spec.mode is SparseMode.PREDICTOR:
            return f"{spec.mode}/{spec.rank}"  # rank: PA's width
        if spec.centers:
            return f"{spec.mode}/{spec.centers}"  # centered teal: XC and/or HC
        return f"{spec.mode}/{SCREENED}" if variant == SCREENED else str(spec.mode)

    def cuda_variants(self, spec, fam, target, counted):
        return fam.sparse_variants(spec, target)

    def cuda_funcs(self, spec, v, prefix, target):
        t = v.tiling
        if spec.bits:
            return exact_q4_cuda.exact_q4_cuda_funcs(
                spec, Q4Format(spec.block, spec.zero_points, spec.int8_x, spec.bits), t, prefix)
        if t.gemm:
            return {name: _tvm.dlight_matmul(f, target, dict(t.gemm_config))
                    for name, f in sparse_ffn_cuda.gemm_funcs(spec, prefix, spec.dtype).items()}
        module = sparse_ffn_cuda_masked if sparse(spec.mode).masked else sparse_ffn_cuda
        return module.decode_funcs(spec, t, prefix, spec.dtype)

    def workspace(self, spec, v):
        if spec.bits:
            return exact_q4_cuda.workspace(spec, v.tiling)
        module = sparse_ffn_cuda_masked if sparse(spec.mode).masked else sparse_ffn_cuda
        return module.workspace(spec, v.tiling)

    def cuda_table_mode(self, spec):
        if spec.bits:
            return self.table_mode(spec, "")
        return f"{spec.mode}/{spec.centers}" if spec.centers else str(spec.mode)


class FffKernels(OpKernels):
    spec_type = FffSpec
    symbol = cuda_symbol = "fff"

    def cpu_variants(self, spec, fam, target):
        return fam.fff_variants(spec)

    def cpu_func(self, spec, v, symbol):
        return walk_primfunc(spec, v.tiling, symbol)

    def cuda_variants(self, spec, fam, target, counted):
        return fam.fff_variants(spec)

    def cuda_funcs(self, spec, v, prefix, target):
        return {prefix: fff_kernel(spec, v.tiling, prefix, spec.dtype)}


class StructuredKernels(OpKernels):
    spec_type = StructuredSpec
    symbol, cuda_symbol = "structured", "structured_ffn"
    counted = True

    def cpu_variants(self, spec, fam, target):  # target-neutral kernels for every CPU
        return _as_variants(structured_variants(spec))

    def cpu_func(self, spec, v, symbol):
        return structured_ffn_primfunc(spec, v.name, symbol)

    def cuda_variants(self, spec, fam, target, counted):
        return fam.structured_variants(spec, counted)

    def cuda_funcs(self, spec, v, prefix, target):
        return structured_ffn_cuda.variant_funcs(spec, v.tiling, prefix, spec.dtype)

    def workspace(self, spec, v):
        return structured_ffn_cuda.workspace(spec, v.tiling)

    def launch_params(self, spec, v):
        return frozenset({"CNT"}) if v.tiling.counted else frozenset()  # the row count


class RouteKernels(OpKernels):
    spec_type = RouteSpec
    symbol, cuda_symbol = "routed", "routed_ffn"

    def cpu_variants(self, spec, fam, target):  # target-neutral kernels for every CPU
        return _as_variants(routed_variants(spec))

    def cpu_func(self, spec, v, symbol):
        return route_primfunc(spec, symbol)

    def cuda_variants(self, spec, fam, target, counted):
        return _as_variants(routed_variants(spec))

    def cuda_funcs(self, spec, v, prefix, target):
        return routed_ffn_cuda.route_primfuncs(spec, prefix)

    def workspace(self, spec, v):
        return routed_ffn_cuda.workspace(spec)

    def launch_params(self, spec, v):  # the route → FFN → combine buffers and scalars
        return frozenset(routed_ffn_cuda.LAUNCH_PARAMS)


class CombineKernels(RouteKernels):
    spec_type = CombineSpec

    def cpu_func(self, spec, v, symbol):
        return combine_primfunc(spec, symbol)

    def cuda_funcs(self, spec, v, prefix, target):
        return routed_ffn_cuda.combine_primfuncs(spec, prefix)

    def workspace(self, spec, v):
        return {}


REGISTRY: dict[type[KernelSpec], OpKernels] = {
    k.spec_type: k() for k in (SparseKernels, FffKernels, StructuredKernels, RouteKernels,
                               CombineKernels)}


def of(spec: KernelSpec) -> OpKernels:
    """The entry of a spec's class."""
    try:
        return REGISTRY[type(spec)]
    except KeyError:
        raise CodegenError(f"no kernels for {spec!r}") from None
