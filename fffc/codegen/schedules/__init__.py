"""Schedule families per target; ``family(name)`` is the one dispatch every target goes
through (callers resolve a target once and pass the family down)."""

from __future__ import annotations

from fffc.contract.errors import UnsupportedTargetError
from fffc.contract.kinds import TargetFamily
from fffc.contract.targets import normalize

from .arm import Arm
from .base import MAX_TOKENS, Crossovers, Family, Variant
from .cuda import Cuda
from .x86 import X86

_X86 = X86()
_REGISTRY: dict[TargetFamily, Family] = {
    TargetFamily.X86: _X86,
    TargetFamily.ARM: Arm(),
    TargetFamily.CUDA: Cuda(cpu=_X86),  # nodes a GPU server places on its CPU run x86 kernels
}


def family(name: str) -> Family:
    """The family for a target name or alias (``fffc.contract.targets``); unknown names are
    refused."""
    try:
        return _REGISTRY[TargetFamily(normalize(name).family)]
    except ValueError as e:
        raise UnsupportedTargetError(str(e)) from e


__all__ = ["MAX_TOKENS", "Crossovers", "Family", "Variant", "family"]
