"""Stage: which token counts each site's kernel serves. At every count an artifact runs the
faster of fffc's kernel and the original subgraph: past a site's crossover an ``If`` on the
token count runs the original (a masked mode's function with ``--sparse-prefill``), and a
site whose original was faster even at 1 token is left as it was. The crossover is given
(``--max-sparse-tokens``, ``--timings``), read from the target family's table, or — where
the kernels run on this machine — timed after the shim is built (``measure``, whose sites
are ``pending`` here and lowered with their kernel at every count until then). A
structured site's pre-merged dense weights serve calls of up to its measured merged
crossover."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .. import passes
from ..codegen.build import host_can_run
from ..codegen.crossover import measure_crossover
from ..contract.dispatch import Timing, TokenDispatch
from ..contract.errors import UsageError
from ..contract.kernels import merged_spec
from ..contract.kinds import Branch, Crossover
from ..contract.lowering import SiteLowering
from ..contract.modes import kernel_spec, mode
from ..contract.ops import SPARSE_FFN
from ..contract.sites import Site
from ..plan.decide import leave
from .context import Context
from .verify_sites import Verified, refresh

NAME = "dispatch"


@dataclass
class Dispatch:
    verified: Verified
    tokens: dict[str, TokenDispatch] = field(default_factory=dict)  # sites with kernels
    merged: dict[str, int] = field(default_factory=dict)  # merged path up to N tokens
    pending: frozenset[str] = frozenset()  # sites the measure stage times

    def lowerings(self) -> dict[str, SiteLowering]:
        """Every site's lowering, from its decision, masks and token bounds."""
        out = {}
        for s in self.verified.sites:
            m = mode(s.decision)
            t = self.tokens.get(s.name) if m.kernels else None
            out[s.name] = SiteLowering(
                s.decision, masks=m.masks(s),
                max_tokens=t.kernel_max_tokens if t is not None and t.dispatched else 0,
                beyond=t.beyond if t is not None else Branch.ORIGINAL,
                merged_max_tokens=self.merged.get(s.name, 0) if m.merged_path else 0)
        return out


def beyond(site: Site, ctx: Context) -> Branch:
    """What serves a site past its kernel's bound."""
    return (Branch.MASKED if ctx.options.sparse_prefill and mode(site.decision).masked
            else Branch.ORIGINAL)


def measured_here(ctx: Context) -> str | None:
    """Why the crossovers are not timed on this machine (None: they are)."""
    fam, o = ctx.family, ctx.options
    if Crossover(o.crossovers) is Crossover.TABLE:
        return "--crossovers table"
    if not fam.timed_here:
        return f"{fam.name} kernels do not run on this machine"
    if not host_can_run(fam.target(ctx.target.mcpu, o.mattr)):
        return "the kernels are built for another CPU"
    return None


def read_timings(path: Path) -> dict[str, list[dict]]:
    """``--timings``: per site, its timing rows — from a manifest.json (each site's
    ``dispatch.timings``) or a JSON object {site: [{tokens, kernel_ms, original_ms}, ...]}."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"--timings: cannot read {path}: {e}") from e
    if isinstance(data, dict) and "sites" in data and "format" in data:
        return {s["name"]: s["dispatch"]["timings"] for s in data["sites"]
                if (s.get("dispatch") or {}).get("timings")}
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise UsageError(f"--timings: {path} is neither a manifest nor {{site: [rows]}}")
    return data


def pinned(site: Site, rows: list[dict], branch: Branch) -> TokenDispatch:
    try:
        timings = [Timing.from_json(r, branch) for r in rows]
    except (KeyError, TypeError, ValueError) as e:
        raise UsageError(f"--timings: site {site.name!r}: each row needs tokens, kernel_ms "
                         f"and {branch}_ms ({e})") from e
    return TokenDispatch.measured(timings, Crossover.PINNED, branch)


def slower(site: Site, t: TokenDispatch) -> str:
    """The reason a site is left as it was: its original was faster at every count."""
    first = t.timings[0]
    other = "failed" if first.other_ms is None else f"{first.other_ms:.3f} ms"
    return (f"ONNX Runtime's {t.beyond} subgraph was faster than the kernel at "
            f"{first.tokens} token(s) ({t.basis}: kernel {first.kernel_ms:.3f} ms, "
            f"{t.beyond} {other}); left as it was")


def bounds(verified: Verified, ctx: Context) -> tuple[dict[str, TokenDispatch], frozenset[str]]:
    """Every site with kernels: its token dispatch, and the sites left to measure."""
    o, fam = ctx.options, ctx.family
    rows = read_timings(o.timings) if o.timings is not None else {}
    not_here = measured_here(ctx)
    tokens, pending = {}, set()
    for s in verified.sites:
        m = mode(s.decision)
        if not m.kernels:
            continue
        b = beyond(s, ctx)
        if m.op is SPARSE_FFN and o.max_sparse_tokens is not None:
            t = TokenDispatch(o.max_sparse_tokens or None, Crossover.OPTION, b,
                              note="--max-sparse-tokens")
        elif s.name in rows:
            t = pinned(s, rows[s.name], b)
        elif not_here is None:
            t = TokenDispatch(None, Crossover.MEASURED, b, note="not measured yet")
            pending.add(s.name)
        else:
            t = TokenDispatch(fam.max_tokens(kernel_spec(s)) or None, Crossover.TABLE, b,
                              note=f"{fam.name} table: {not_here}")
        tokens[s.name] = t
    return tokens, frozenset(pending)


def run(verified: Verified, ctx: Context) -> Dispatch:
    tokens, pending = bounds(verified, ctx)
    for s in verified.sites:
        s.dispatch = tokens.get(s.name)
        if s.dispatch is not None and not s.dispatch.kernel:
            leave(s, slower(s, s.dispatch))
    verified = refresh(verified, ctx)
    return Dispatch(verified, tokens, merged(verified, ctx), pending)


def merged(verified: Verified, ctx: Context) -> dict[str, int]:
    """Structured sites: the token count up to which the pre-merged dense path serves."""
    o, fam = ctx.options, ctx.family
    out = {}
    for s in verified.sites:
        if not mode(s.decision).merged_path:
            continue
        st = s.structure
        if o.merged_max_tokens is not None:
            out[s.name] = o.merged_max_tokens
            st["crossover"] = "set by --merged-max-tokens"
        elif not fam.merged_path:
            out[s.name] = 0
            st["crossover"] = f"{fam.name}: the structured kernels serve every token count"
        elif (why := measured_here(ctx)) is not None:
            out[s.name] = 0
            st["crossover"] = f"not measured: {why}"
        else:
            with ctx.report(f"time structured vs merged ({s.name})"):
                out[s.name], st["crossover"] = measure_crossover(
                    fam, kernel_spec(s), merged_spec(s), passes.site_inputs(verified.working, s))
        st["merged_max_tokens"] = out[s.name]
    return out
