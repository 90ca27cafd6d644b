"""Target names the user may give, and the family each resolves to. Imports only ``kinds``.

Every target goes through this one dispatch; ``fffc.codegen.schedules.family`` maps the
family (and, for a GPU, the CPU family of its host) to its schedule family object.
"""

from __future__ import annotations

from dataclasses import dataclass

from .kinds import TargetFamily

ALIASES = {
    "x86": "x86", "x86_64": "x86", "amd64": "x86", "host": "x86",
    "arm": "arm", "aarch64": "arm", "arm64": "arm",
    "cuda": "cuda", "gpu": "cuda",
    "jetson": "cuda",
}
SUPPORTED = ("x86", "arm", "cuda")
CPUS = (TargetFamily.X86, TargetFamily.ARM)  # what --host may name
DEVICES = (TargetFamily.CUDA,)  # families whose kernels run beside a host CPU's
DEFAULT_HOST = TargetFamily.X86  # a GPU server's CPU unless --host says otherwise
IMPLIED_HOST = {"jetson": TargetFamily.ARM}  # target names that also name their host CPU


@dataclass(frozen=True)
class TargetRequest:
    """A normalized target: family plus optional CPU name; for a device family, the CPU
    family of the machine it sits in (``host``: which CPU the shim and the CPU-placed
    nodes' kernels are built for)."""

    family: str  # "x86" | "arm" | "cuda"
    mcpu: str | None = None
    host: str | None = None  # a device family's host CPU family ("x86" | "arm"); else None


def normalize(name: str, mcpu: str | None = None, host: str | None = None) -> TargetRequest:
    """Map a user target name (and ``--host``) to its family; raises ValueError for unknown
    names and for a host that a CPU target cannot have or the target name contradicts."""
    family = ALIASES.get(name.lower())
    if family is None:
        known = ", ".join(sorted({"x86", "arm", "cuda", "jetson"}))
        raise ValueError(f"unknown target {name!r}; expected one of {known}")
    implied = IMPLIED_HOST.get(name.lower())
    if TargetFamily(family) not in DEVICES:
        if host is not None:
            raise ValueError(f"--host applies to --target cuda (the CPU beside the GPU), not "
                             f"to the CPU target {name!r}: use --target arm or x86")
        return TargetRequest(family, mcpu)
    if host is None:
        return TargetRequest(family, mcpu, str(implied or DEFAULT_HOST))
    given = ALIASES.get(host.lower())
    if given is None or TargetFamily(given) not in CPUS:
        raise ValueError(f"--host {host!r}: expected the GPU machine's CPU, x86 or aarch64")
    if implied is not None and TargetFamily(given) is not implied:
        raise ValueError(f"--target {name} is an aarch64 machine: --host {host} contradicts "
                         "it (--target cuda --host x86 for a GPU server)")
    return TargetRequest(family, mcpu, given)
