"""The int4 SparseFFN kernels (``kernels/exact_q4.py``, ``teal_q4.py``, ``cats_q4.py``,
``predictor_q4.py``) compiled in-process for an x86 CPU and called through TVM's runtime:
for tests and benchmarks. The artifact build does not include them yet (its kernel table
and the shim take the float kernels' arguments only)."""

from __future__ import annotations

import numpy as np

from fffc.contract.errors import CodegenError
from fffc.contract.kernels import SparseSpec
from fffc.contract.kinds import SparseMode

from . import _tvm
from .kernels.cats_q4 import cats_q4_primfunc
from .kernels.exact_q4 import (
    Q4Dot,
    Q4Tiling,
    exact_q4_primfunc,
    q4_arg_names,
    q4_tiling,
    register_tiling,
)
from .kernels.predictor_q4 import predictor_q4_primfunc
from .kernels.teal_q4 import teal_q4_primfunc
from .q4_layout import Q4Format
from .schedules import family

# The int4 kernel generator of each SparseFFN mode, (spec, fmt, tiling, symbol, dot), and
# its default tiling, (spec, float32 lanes of the CPU).
GENERATORS = {SparseMode.EXACT: (exact_q4_primfunc, q4_tiling),
              SparseMode.TEAL: (teal_q4_primfunc, register_tiling),
              SparseMode.CATS: (cats_q4_primfunc, register_tiling),
              SparseMode.PREDICTOR: (predictor_q4_primfunc, register_tiling)}


def symbol(mode: SparseMode) -> str:
    return f"fffc_sparse_ffn_{mode}_q4"


def vector_lanes(target: dict) -> int:
    """float32 lanes of the target's widest vector registers (AVX-512: 16, else 8)."""
    return 16 if _tvm.cpu_has_features(target["mcpu"], ["avx512f"], target["mtriple"]) else 8


def has_int8_dots(mcpu: str | None = None) -> bool:
    """Whether the x86 CPU ``mcpu`` (default: this machine's) runs the int8 dots
    (``Q4Dot.INT8``: AVX-512 VNNI)."""
    target = family("x86").target(mcpu)
    return _tvm.cpu_has_features(target["mcpu"], ["avx512f", "avx512vnni"], target["mtriple"])


class Q4Kernel:
    """``spec``'s int4 kernel (the generator of ``spec.mode``) for ``fmt``, built for the x86
    CPU ``mcpu`` (default: this machine's); ``dot`` INT8 needs AVX-512 VNNI."""

    def __init__(self, spec: SparseSpec, fmt: Q4Format, mcpu: str | None = None,
                 tiling: Q4Tiling | None = None, dot: Q4Dot = Q4Dot.FLOAT32):
        self.spec, self.fmt, self.dot = spec, fmt, Q4Dot(dot)
        self.target = family("x86").target(mcpu)
        if self.dot is Q4Dot.INT8 and not has_int8_dots(mcpu):
            raise CodegenError(f"int8 dots need AVX-512 VNNI, not on {self.target['mcpu']}")
        if spec.mode not in GENERATORS:
            raise CodegenError(f"SparseFFN mode {spec.mode}: no int4 kernel")
        generator, default_tiling = GENERATORS[spec.mode]
        self.tiling = tiling or default_tiling(spec, vector_lanes(self.target))
        self.names = q4_arg_names(spec, fmt)
        self.symbol = symbol(spec.mode)
        func = generator(spec, fmt, self.tiling, self.symbol, self.dot)
        self._ex = _tvm.compile_module({self.symbol: func}, self.target)

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
