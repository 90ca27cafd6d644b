"""Target names the user may give, and what each resolves to. Leaf module.

One dispatch for every target: x86 and cuda have backends; arm goes through the same
path and is refused with UnsupportedTargetError until its backend lands.
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
