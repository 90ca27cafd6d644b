"""Target families: each maps a KernelSpec to its kernel variants and a TVM target."""

from __future__ import annotations

from dataclasses import dataclass

from fffc.contract.ops import KernelSpec

from ..kernels.sparse_ffn import Tiling
from ..limits import MAX_TOKENS as MAX_TOKENS  # re-exported: the schedules use it


@dataclass(frozen=True)
class Variant:
    """One kernel of a spec: its name, the token range it serves (inclusive), its tiling."""

    name: str
    min_tokens: int
    max_tokens: int
    tiling: Tiling


class Family:
    """One target family (x86, arm, cuda): its TVM target, its kernel variants and what its
    kernels can do."""

    name = ""
    narrow_weights = False  # kernels that read 16-bit weight matrices (--weight-dtype)
    merged_path = True  # StructuredFFN kernels with a pre-merged dense path for few tokens
    timed_here = False  # its kernels run on this build machine, so crossovers are measured

    @property
    def cpu_family(self) -> str:
        """The family of the CPU kernels an artifact for this target carries."""
        return self.name

    def target(self, mcpu: str | None, mattr: tuple[str, ...] = ()) -> dict:
        raise NotImplementedError

    def variants(self, spec: KernelSpec, target: dict) -> list[Variant]:
        """Variants covering tokens 1..MAX_TOKENS without gaps or overlaps."""
        raise NotImplementedError

    def sparse_max_tokens(self, spec: KernelSpec) -> int:
        """Token count up to which the kernels beat the runtime's dense GEMMs (0: always);
        past it the artifact runs the dense FFN (an If on the token count)."""
        return 0


def largest_divisor(n: int, cap: int) -> int:
    """The largest power of two ≤ cap dividing n (1 at worst): tiles without remainders."""
    d = 1
    while d * 2 <= cap and n % (d * 2) == 0:
        d *= 2
    return d
