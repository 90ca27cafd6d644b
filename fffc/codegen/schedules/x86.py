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

    mr: int = 4  # tokens per micro-tile: 4 × (nr / lanes) accumulators stay in registers
    nr: int = 16  # neurons per micro-tile
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

    def tiling(self, spec: KernelSpec) -> Tiling:
        c = self.config
        nb = largest_divisor(spec.d_ff, c.nb)
        nr = largest_divisor(nb, c.nr)
        return Tiling(mr=c.mr, nr=nr, nb=nb, dc=largest_divisor(spec.d_out, c.dc),
                      vl=largest_divisor(spec.d_in, c.vl))
