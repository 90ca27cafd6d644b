"""Target families: each maps a KernelSpec to tilings and a TVM target; one registry."""

from __future__ import annotations

from fffc.errors import UnsupportedTargetError
from fffc.ops import KernelSpec

from ..kernels.sparse_ffn import Tiling


class Family:
    """One target family (x86, arm, cuda): its TVM target and its kernel tilings."""

    name = ""

    def target(self, mcpu: str | None) -> dict:
        raise NotImplementedError

    def tiling(self, spec: KernelSpec, target: dict | None = None) -> Tiling:
        raise NotImplementedError


class NotYetSupported(Family):
    """A family the dispatch knows about but that has no backend yet."""

    def __init__(self, name: str, plan: str):
        self.name = name
        self._plan = plan

    def _refuse(self) -> UnsupportedTargetError:
        return UnsupportedTargetError(f"target {self.name!r} is not yet supported ({self._plan}); "
                                      "use --target x86")

    def target(self, mcpu: str | None) -> dict:
        raise self._refuse()

    def tiling(self, spec: KernelSpec, target: dict | None = None) -> Tiling:
        raise self._refuse()


def largest_divisor(n: int, cap: int) -> int:
    """The largest power of two ≤ cap dividing n (1 at worst): tiles without remainders."""
    d = 1
    while d * 2 <= cap and n % (d * 2) == 0:
        d *= 2
    return d
