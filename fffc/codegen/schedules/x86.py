"""x86 schedule family: tunables and the LLVM target for x86-64 CPUs."""

from __future__ import annotations

from dataclasses import dataclass

from fffc.ops import KernelSpec

from .. import _tvm
from ..kernels.sparse_ffn import Tiling
from .base import Family, largest_divisor


@dataclass(frozen=True)
class Config:
    """Tunables of the x86 SparseFFN kernel (see kernels/sparse_ffn.py for the loops)."""

    mr: int = 6  # tokens per micro-tile: mr × 2 vector accumulators stay in registers
    nr_vectors: int = 2  # vectors per micro-tile row (nr = nr_vectors × lanes): 12 of 16 ymm
    nr_vectors_avx512: int = 4  # with 32 zmm registers: 24 accumulators
    nb: int = 64  # neurons per parallel task
    dc: int = 32  # output columns per task in the down projection
    vl: int = 16  # lanes of the up-projection dot product


class X86(Family):
    name = "x86"
    triple = "x86_64-linux-gnu"

    def __init__(self, config: Config | None = None):
        self.config = config or Config()

    def target(self, mcpu: str | None) -> dict:
        cpu = mcpu or _tvm.host_cpu()
        return {"kind": "llvm", "mtriple": self.triple, "mcpu": cpu}

    def tiling(self, spec: KernelSpec, target: dict | None = None) -> Tiling:
        c = self.config
        wide = target is not None and _tvm.cpu_has_features(target["mcpu"], ["avx512f"])
        lanes = 16 if wide else 8
        vectors = c.nr_vectors_avx512 if wide else c.nr_vectors
        nb = largest_divisor(spec.d_ff, max(c.nb, 2 * lanes * vectors))
        nr = largest_divisor(nb, vectors * lanes)
        return Tiling(mr=c.mr, nr=nr, nb=nb, dc=largest_divisor(spec.d_out, c.dc),
                      vl=largest_divisor(spec.d_in, c.vl))
