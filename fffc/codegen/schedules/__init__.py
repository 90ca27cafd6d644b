"""Schedule families per target; ``family(name)`` is the one dispatch every target goes through."""

from __future__ import annotations

from fffc.contract.errors import UnsupportedTargetError
from fffc.contract.targets import normalize

from .arm import Arm
from .base import MAX_TOKENS, Family, Variant
from .cuda import Cuda
from .x86 import X86

_REGISTRY: dict[str, Family] = {
    "x86": X86(),
    "arm": Arm(),
    "cuda": Cuda(),
}


def family(name: str) -> Family:
    """The family for a target name or alias (``fffc.contract.targets``); unknown names are refused."""
    try:
        return _REGISTRY[normalize(name).family]
    except ValueError as e:
        raise UnsupportedTargetError(str(e)) from e


__all__ = ["MAX_TOKENS", "Family", "Variant", "family"]
