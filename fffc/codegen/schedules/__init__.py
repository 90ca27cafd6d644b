"""Schedule families per target; ``family(name)`` is the one dispatch every target goes through."""

from __future__ import annotations

from .base import Family, NotYetSupported
from .x86 import X86


def family(name: str) -> Family:
    """The family for a normalized target name (``fffc.targets.normalize``)."""
    registry: dict[str, Family] = {
        "x86": X86(),
        "arm": NotYetSupported("arm", "aarch64 kernels and the cross-built shim are planned"),
        "cuda": NotYetSupported("cuda", "CUDA kernels launched on ORT's stream are planned"),
    }
    if name not in registry:
        raise KeyError(name)
    return registry[name]


__all__ = ["Family", "family"]
