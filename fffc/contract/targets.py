"""Target names the user may give, and the family each resolves to. Leaf module.

Every target goes through this one dispatch; ``fffc.codegen.schedules.family`` maps the
family to its schedule family object.
"""

from __future__ import annotations

from dataclasses import dataclass

ALIASES = {
    "x86": "x86", "x86_64": "x86", "amd64": "x86", "host": "x86",
    "arm": "arm", "aarch64": "arm", "arm64": "arm",
    "cuda": "cuda", "gpu": "cuda",
}
SUPPORTED = ("x86", "arm", "cuda")


@dataclass(frozen=True)
class TargetRequest:
    """A normalized target: family plus optional CPU name."""

    family: str  # "x86" | "arm" | "cuda"
    mcpu: str | None = None


def normalize(name: str, mcpu: str | None = None) -> TargetRequest:
    """Map a user target name to its family; raises ValueError for unknown names."""
    family = ALIASES.get(name.lower())
    if family is None:
        known = ", ".join(sorted({"x86", "arm", "cuda"}))
        raise ValueError(f"unknown target {name!r}; expected one of {known}")
    return TargetRequest(family, mcpu)
