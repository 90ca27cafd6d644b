"""The int8 exact kernel (``kernels/exact_q8.py``) built for one CPU, for tests: in-process for
x86 (called through TVM's runtime), or as a relocatable object for any CPU family (aarch64:
cross-compiled with the arm family's target; a test links and runs it under qemu-aarch64).
Artifacts build it through the registry like every kernel."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fffc.contract.errors import CodegenError
from fffc.contract.kernels import SparseSpec
from fffc.contract.kinds import TargetFamily

from . import _tvm
from .kernels.exact_q4 import ISAS, Q4Dot, Q4Tiling, q4_tiling
from .kernels.exact_q8 import exact_q8_primfunc, q8_arg_names
from .q4_build import target_has_int8_dots, vector_lanes
from .schedules import family

SYMBOL = "fffc_sparse_ffn_exact_q8"


@dataclass(frozen=True)
class Q8Build:
    """The kernel's PrimFunc for one CPU (``spec.bits`` 8)."""

    spec: SparseSpec
    target: dict
    tiling: Q4Tiling
    dot: Q4Dot
    func: object  # the PrimFunc

    @property
    def names(self) -> list[str]:
        return q8_arg_names(self.spec)


def q8_build(spec: SparseSpec, fam: str = "x86", mcpu: str | None = None,
             tiling: Q4Tiling | None = None, dot: Q4Dot = Q4Dot.FLOAT32,
             mattr: tuple[str, ...] = ()) -> Q8Build:
    """The kernel for the CPU ``mcpu`` (default: x86 this machine's, arm generic ARMv8.2-A)
    of the family ``fam``; ``dot`` INT8 is refused where the CPU lacks the int8 dot."""
    f = family(fam)
    isa = ISAS.get(TargetFamily(f.name))
    if isa is None:
        raise CodegenError(f"int8 kernel: CPU families {', '.join(ISAS)} only, not {f.name}")
    target = f.target(mcpu, tuple(mattr))
    dot = Q4Dot(dot)
    if dot is Q4Dot.INT8 and not target_has_int8_dots(f, target):
        raise CodegenError(f"int8 dots need {isa.dot_name}, not on "
                           f"{target['mcpu']} {target.get('mattr', '')}".rstrip())
    tiling = tiling or q4_tiling(spec, vector_lanes(f, target))
    return Q8Build(spec, target, tiling, dot,
                   exact_q8_primfunc(spec, tiling, SYMBOL, dot, isa))


def write_object(build: Q8Build, path: Path) -> Path:
    """Compile ``build`` for its target into the relocatable object ``path`` (the packed
    function ``__tvm_ffi_<SYMBOL>``, arguments ``build.names`` as DLTensors)."""
    _tvm.compile_module({SYMBOL: build.func}, build.target).mod.write_to_file(str(path))
    return path


def assembly(build: Q8Build) -> str:
    """The kernel's assembly for its target (codegen inspection; nothing is run)."""
    return _tvm.compile_module({SYMBOL: build.func}, build.target).mod.inspect_source("asm")


class Q8Kernel:
    """``spec``'s int8 exact kernel, built for the x86 CPU ``mcpu`` (default: this machine's)
    and run here; ``dot`` INT8 needs AVX-512 VNNI."""

    def __init__(self, spec: SparseSpec, mcpu: str | None = None,
                 tiling: Q4Tiling | None = None, dot: Q4Dot = Q4Dot.FLOAT32):
        b = q8_build(spec, "x86", mcpu, tiling, dot)
        self.spec, self.dot, self.target, self.tiling = spec, b.dot, b.target, b.tiling
        self.names = b.names
        self._ex = _tvm.compile_module({SYMBOL: b.func}, self.target)

    def args(self, x: np.ndarray, inputs: dict[str, np.ndarray]) -> list:
        """The call's TVM tensors: X, the inputs by name (``exact_q8.q8_inputs``), Y."""
        arrays = [np.ascontiguousarray(x, np.float32),
                  *(np.ascontiguousarray(inputs[n]) for n in self.names[1:-1])]
        return [*map(_tvm.tensor, arrays), _tvm.empty((x.shape[0], self.spec.d_out))]

    def run(self, args: list) -> None:
        self._ex[SYMBOL](*args)

    def __call__(self, x: np.ndarray, inputs: dict[str, np.ndarray]) -> np.ndarray:
        args = self.args(x, inputs)
        self.run(args)
        return args[-1].numpy()
