"""The int8 exact kernel (``kernels/exact_q8.py``) built for one x86 CPU in-process and called
through TVM's runtime, for tests. Artifacts build it through the registry like every
kernel."""

from __future__ import annotations

import numpy as np

from fffc.contract.errors import CodegenError
from fffc.contract.kernels import SparseSpec

from . import _tvm
from .kernels.exact_q4 import X86_ISA, Q4Dot, Q4Tiling, q4_tiling
from .kernels.exact_q8 import exact_q8_primfunc, q8_arg_names
from .q4_build import target_has_int8_dots, vector_lanes
from .schedules import family

SYMBOL = "fffc_sparse_ffn_exact_q8"


class Q8Kernel:
    """``spec``'s int8 exact kernel (``spec.bits`` 8), built for the x86 CPU ``mcpu``
    (default: this machine's) and run here; ``dot`` INT8 needs AVX-512 VNNI."""

    def __init__(self, spec: SparseSpec, mcpu: str | None = None,
                 tiling: Q4Tiling | None = None, dot: Q4Dot = Q4Dot.FLOAT32):
        f = family("x86")
        self.target = f.target(mcpu)
        self.dot = Q4Dot(dot)
        if self.dot is Q4Dot.INT8 and not target_has_int8_dots(f, self.target):
            raise CodegenError(f"int8 dots need {X86_ISA.dot_name}, not on {self.target['mcpu']}")
        self.spec, self.names = spec, q8_arg_names(spec)
        self.tiling = tiling or q4_tiling(spec, vector_lanes(f, self.target))
        func = exact_q8_primfunc(spec, self.tiling, SYMBOL, self.dot, X86_ISA)
        self._ex = _tvm.compile_module({SYMBOL: func}, self.target)

    def __call__(self, x: np.ndarray, inputs: dict[str, np.ndarray]) -> np.ndarray:
        arrays = [np.ascontiguousarray(x, np.float32),
                  *(np.ascontiguousarray(inputs[n]) for n in self.names[1:-1])]
        args = [*map(_tvm.tensor, arrays), _tvm.empty((x.shape[0], self.spec.d_out))]
        self._ex[SYMBOL](*args)
        return args[-1].numpy()
