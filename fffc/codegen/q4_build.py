"""The int4 SparseFFN kernels (``kernels/exact_q4.py``, ``teal_q4.py``, ``cats_q4.py``,
``predictor_q4.py``: the generator of the spec's mode) built for one CPU, for tests and
benchmarks: in-process for x86 (called through TVM's runtime), or as a relocatable object for any CPU
family (aarch64: cross-compiled with the arm family's target, as the artifact build
compiles its kernels; a test links and runs it under qemu-aarch64). Artifacts build it
through the registry like every kernel."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fffc.contract.errors import CodegenError
from fffc.contract.kernels import SparseSpec
from fffc.contract.kinds import SparseMode, TargetFamily

from . import _tvm
from .kernels.exact_q4 import ISAS, Q4Dot, Q4Tiling, int4_tiling, q4_arg_names
from .q4_layout import Q4Format
from .registry import INT4_BY_MODE
from .schedules import Family, family


def symbol(mode: SparseMode) -> str:
    """The kernel's symbol for the int4 kernel of ``mode``."""
    return f"fffc_sparse_ffn_{mode}_q4"


def vector_lanes(fam: Family, target: dict) -> int:
    """float32 lanes of the target's widest vector registers (x86: AVX-512 16, else 8; the
    arm family's NEON: its config's)."""
    if TargetFamily(fam.name) is TargetFamily.X86:
        return 16 if _tvm.cpu_has_features(target["mcpu"], ["avx512f"], target["mtriple"]) else 8
    return fam.config.lanes


def target_has_int8_dots(fam: Family, target: dict) -> bool:
    """Whether ``target`` (a target dict of ``fam``, its ``mattr`` counted) runs the int8 dots
    (``Q4Dot.INT8``: ``Q4Isa.dot_features``, e.g. AVX-512 VNNI, aarch64 dotprod)."""
    return _tvm.target_has_features(target, list(ISAS[TargetFamily(fam.name)].dot_features))


def has_int8_dots(mcpu: str | None = None, fam: str = "x86") -> bool:
    """Whether the CPU ``mcpu`` of the family ``fam`` (default: x86 this machine, arm
    generic ARMv8.2-A) runs the int8 dots."""
    f = family(fam)
    return target_has_int8_dots(f, f.target(mcpu))


@dataclass(frozen=True)
class Q4Build:
    """The kernel's PrimFunc for one CPU: ``spec``'s int4 kernel (its mode's generator) for
    ``fmt`` with the family's instructions (``q4_pieces.ISAS``) and its tiling for the
    target's width."""

    spec: SparseSpec
    fmt: Q4Format
    target: dict
    tiling: Q4Tiling
    dot: Q4Dot
    func: object  # the PrimFunc

    @property
    def names(self) -> list[str]:
        return q4_arg_names(self.spec, self.fmt)

    @property
    def symbol(self) -> str:
        return symbol(self.spec.mode)


def q4_build(spec: SparseSpec, fmt: Q4Format, fam: str = "x86", mcpu: str | None = None,
             tiling: Q4Tiling | None = None, dot: Q4Dot = Q4Dot.FLOAT32,
             mattr: tuple[str, ...] = ()) -> Q4Build:
    """The int4 kernel of ``spec.mode`` for the CPU ``mcpu`` (default: x86 this machine's,
    arm generic ARMv8.2-A) of the family ``fam``; ``dot`` INT8 is refused where the CPU lacks
    the int8 dot."""
    f = family(fam)
    isa = ISAS.get(TargetFamily(f.name))
    if isa is None:
        raise CodegenError(f"int4 kernel: CPU families {', '.join(ISAS)} only, not {f.name}")
    target = f.target(mcpu, tuple(mattr))
    dot = Q4Dot(dot)
    if dot is Q4Dot.INT8 and not target_has_int8_dots(f, target):
        raise CodegenError(f"int8 dots need {isa.dot_name}, not on "
                           f"{target['mcpu']} {target.get('mattr', '')}".rstrip())
    if spec.mode not in INT4_BY_MODE:
        raise CodegenError(f"SparseFFN mode {spec.mode}: no int4 kernel")
    tiling = tiling or int4_tiling(spec, vector_lanes(f, target))
    return Q4Build(spec, fmt, target, tiling, dot,
                   INT4_BY_MODE[spec.mode](spec, fmt, tiling, symbol(spec.mode), dot, isa))


def write_object(build: Q4Build, path: Path) -> Path:
    """Compile ``build`` for its target into the relocatable object ``path``: the packed
    function ``__tvm_ffi_<build.symbol>`` (arguments ``build.names`` as DLTensors), needing
    the TVM backend hooks a host provides (the shim's, or a test harness's)."""
    _tvm.compile_module({build.symbol: build.func}, build.target).mod.write_to_file(str(path))
    return path


def assembly(build: Q4Build) -> str:
    """The kernel's assembly for its target (codegen inspection; nothing is run)."""
    return _tvm.compile_module({build.symbol: build.func}, build.target).mod.inspect_source("asm")


class Q4Kernel:
    """``spec``'s int4 kernel (the generator of ``spec.mode``) for ``fmt``, built for the x86
    CPU ``mcpu`` (default: this machine's) and run here; ``dot`` INT8 needs AVX-512 VNNI."""

    def __init__(self, spec: SparseSpec, fmt: Q4Format, mcpu: str | None = None,
                 tiling: Q4Tiling | None = None, dot: Q4Dot = Q4Dot.FLOAT32):
        b = q4_build(spec, fmt, "x86", mcpu, tiling, dot)
        self.spec, self.fmt, self.dot, self.target, self.tiling = spec, fmt, b.dot, b.target, b.tiling
        self.names, self.symbol = b.names, b.symbol
        self._ex = _tvm.compile_module({self.symbol: b.func}, self.target)

    def args(self, x: np.ndarray, inputs: dict[str, np.ndarray]) -> list:
        """The call's TVM tensors: X, the inputs by name (``q4_pieces.q4_inputs``), Y."""
        arrays = [np.ascontiguousarray(x, np.float32),
                  *(np.ascontiguousarray(inputs[n]) for n in self.names[1:-1])]
        return [*map(_tvm.tensor, arrays), _tvm.empty((x.shape[0], self.spec.d_out))]

    def run(self, args: list) -> None:
        self._ex[self.symbol](*args)

    def __call__(self, x: np.ndarray, inputs: dict[str, np.ndarray]) -> np.ndarray:
        args = self.args(x, inputs)
        self.run(args)
        return args[-1].numpy()

    def time(self, args: list, number: int, repeat: int) -> list[float]:
        """Seconds per call, timed in C++ by TVM's time_evaluator."""
        return _tvm.time_function(self._ex, self.symbol, args, number, repeat)
