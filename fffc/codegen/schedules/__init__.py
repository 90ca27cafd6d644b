"""Schedule families per target; ``family(name)`` is the one dispatch every target goes
through (callers resolve a target once and pass the family down)."""

from __future__ import annotations

from fffc.contract.errors import UnsupportedTargetError
from fffc.contract.kinds import TargetFamily
from fffc.contract.targets import normalize

from .arm import Arm
from .base import MAX_TOKENS, Crossovers, Family, Variant
from .cuda import JETSON, JETSON_STRUCTURED, Cuda
from .x86 import X86

_X86, _ARM = X86(), Arm()
_REGISTRY: dict[tuple[TargetFamily, TargetFamily | None], Family] = {
    (TargetFamily.X86, None): _X86,
    (TargetFamily.ARM, None): _ARM,
    # nodes a GPU server places on its CPU run x86 kernels (any x86-64 with AVX2/FMA)
    (TargetFamily.CUDA, TargetFamily.X86): Cuda(cpu=_X86, cpu_mcpu="x86-64-v3"),
    # an aarch64 machine with an NVIDIA GPU (Jetson): NEON kernels for its CPU's nodes
    (TargetFamily.CUDA, TargetFamily.ARM): Cuda(cpu=_ARM, config=JETSON,
                                                structured=JETSON_STRUCTURED),
}


def family(name: str, host: str | None = None) -> Family:
    """The family for a target name or alias and, for a GPU, its host CPU (``--host``,
    ``fffc.contract.targets``); unknown names are refused."""
    try:
        req = normalize(name, host=host)
        return _REGISTRY[TargetFamily(req.family), req.host and TargetFamily(req.host)]
    except ValueError as e:
        raise UnsupportedTargetError(str(e)) from e


__all__ = ["MAX_TOKENS", "Crossovers", "Family", "Variant", "family"]
