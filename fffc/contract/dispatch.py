"""Which branch serves which token counts at a site with kernels.

A site runs fffc's kernel for calls of up to ``kernel_max_tokens`` tokens and, beyond,
ONNX Runtime running the original subgraph (or, with ``--sparse-prefill``, a masked mode's
function in standard ops): an ``If`` on the token count. The bound is the faster side's:
measured on the build machine, from the target family's table, or given. ``Timing`` rows
are the measurement (medians, milliseconds per call); ``from_timings`` is the rule that
turns them into a bound.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .kinds import Branch, Crossover


@dataclass(frozen=True)
class Timing:
    """One measured token count: the kernel's and the other branch's median ms per call
    (``other_ms`` None: the other branch cannot run that many tokens, e.g. a top-k over
    fewer tokens than k)."""

    tokens: int
    kernel_ms: float
    other_ms: float | None

    @property
    def kernel_wins(self) -> bool:
        return self.other_ms is None or self.kernel_ms < self.other_ms

    def to_json(self, other: Branch) -> dict:
        """As measured (not rounded: read back with ``--timings``, the same bound)."""
        return {"tokens": self.tokens, "kernel_ms": self.kernel_ms, f"{other}_ms": self.other_ms}

    @classmethod
    def from_json(cls, row: dict, other: Branch) -> Timing:
        ms = row[f"{other}_ms"]
        return cls(int(row["tokens"]), float(row["kernel_ms"]), None if ms is None else float(ms))


def from_timings(timings: Iterable[Timing]) -> int | None:
    """The kernel's bound: the largest measured count up to which it was faster at every
    measured count; None where it was faster at every one (it serves every count, as it
    did at the largest measured); 0 where it lost at the smallest."""
    bound = 0
    for t in sorted(timings, key=lambda t: t.tokens):
        if not t.kernel_wins:
            return bound
        bound = t.tokens
    return None


@dataclass(frozen=True)
class TokenDispatch:
    """A site's token dispatch: the kernel serves 1..``kernel_max_tokens`` (None: every
    count, no ``If``; 0: none, the site is left as it was), ``beyond`` the rest."""

    kernel_max_tokens: int | None
    basis: Crossover
    beyond: Branch = Branch.ORIGINAL
    timings: tuple[Timing, ...] = ()
    note: str = ""  # what the bound rests on, where the basis alone does not say

    def __post_init__(self) -> None:
        if self.beyond is Branch.KERNEL:
            raise ValueError("the branch beyond the kernel's bound is another one")
        if self.kernel_max_tokens is not None and self.kernel_max_tokens < 0:
            raise ValueError(f"kernel_max_tokens must be >= 0, got {self.kernel_max_tokens}")

    @classmethod
    def measured(cls, timings: Iterable[Timing], basis: Crossover = Crossover.MEASURED,
                 beyond: Branch = Branch.ORIGINAL) -> TokenDispatch:
        timings = tuple(sorted(timings, key=lambda t: t.tokens))
        return cls(from_timings(timings), basis, beyond, timings)

    @property
    def dispatched(self) -> bool:
        """Both branches serve some counts: an ``If`` on the token count."""
        return bool(self.kernel_max_tokens)

    @property
    def kernel(self) -> bool:
        """The kernel serves some count (else the site is left as it was)."""
        return self.kernel_max_tokens != 0

    def branch(self, tokens: int) -> Branch:
        """What serves a call of ``tokens`` tokens."""
        if self.kernel_max_tokens is None or tokens <= self.kernel_max_tokens:
            return Branch.KERNEL if self.kernel else self.beyond
        return self.beyond

    def ranges(self) -> list[tuple[Branch, int, int | None]]:
        """(branch, first count, last count or None: unbounded), in token order."""
        n = self.kernel_max_tokens
        if n is None:
            return [(Branch.KERNEL, 1, None)]
        if n == 0:
            return [(Branch.ORIGINAL, 1, None)]
        return [(Branch.KERNEL, 1, n), (self.beyond, n + 1, None)]

    def describe(self) -> str:
        """e.g. "kernel 1..2, original 3.."."""
        return ", ".join(f"{b} {lo}..{'' if hi is None else hi}" for b, lo, hi in self.ranges())

    def to_json(self) -> dict:
        out = {"branches": [{"branch": str(b), "min_tokens": lo, "max_tokens": hi}
                            for b, lo, hi in self.ranges()],
               "basis": str(self.basis)}
        if self.timings:
            out["timings"] = [t.to_json(self.beyond) for t in self.timings]
        if self.note:
            out["note"] = self.note
        return out
