"""Stage: prove each planned rewrite equal to what it replaces, on probe inputs, before
anything is built; a site that is not within tolerance is left as it was, with the reason.

Check 1: the canonical model with every site in standard ops equals the original model.
Check 2: per site, the planned op's NumPy reference on the site's captured input equals the
original subgraph's output (``fffc.verify.sites``). Masked modes (thresholds, predicted
neurons) and ``--weight-dtype`` compute another function than the original: the reference
the artifact must equal is then that function in standard ops, captured the same way, and
each site's distance from the original is reported (``Site.deviation``). Where a token
dispatch runs the original past a site's bound, the artifact must equal the masked function
on the probes its kernel serves and the original on the others (``expected``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from .. import frontend, passes
from ..contract.analysis import Analysis
from ..contract.config import CompileOptions
from ..contract.dispatch import TokenDispatch
from ..contract.errors import RewriteError, UnsupportedModelError
from ..contract.int4 import CHUNK, INT4_BLOCK, Int4Weights
from ..contract.kinds import Branch, Decision, SiteKind, WeightBits, WeightDtype
from ..contract.lowering import SiteLowering
from ..contract.modes import mode
from ..contract.sites import Site
from ..contract.tolerances import for_dtype
from ..frontend.interface import need_data
from ..plan.calibration import load_feeds
from ..plan.decide import leave
from ..verify import matmul_nbits
from ..verify.capture import Captured, capture
from ..verify.compare import compare_runs
from ..verify.compare import original_session as original_session_of
from ..verify.compare import run as run_model
from ..verify.decisions import gate_flips
from ..verify.feeds import Feed, Feeds, probe_inputs, run_by_name
from ..verify.sites import verify_site
from .context import Context
from .plan import Planned

NAME = "verify sites"


@dataclass
class Verified:
    planned: Planned
    feeds: list[dict[str, np.ndarray]]  # probes: many tokens, and one token
    original: Captured  # what the original model computes on them
    working: ir.Model  # the markers, weights rounded to --weight-dtype where kernels run
    reference: Captured  # what the artifact must compute (the original, or masked/rounded)
    masked: frozenset[str] = frozenset()  # the sites ``reference`` computes otherwise than
    # the original where their kernels serve (masked; int4: on dequantized weights)
    rounded: tuple[str, ...] = ()  # the sites whose weights ``working`` holds rounded

    @property
    def analysis(self):
        return self.planned.analysis

    @property
    def sites(self) -> list[Site]:
        return self.planned.analysis.sites

    def inputs(self, site: Site) -> dict[str, np.ndarray]:
        """A site's op inputs as the artifact stores them."""
        return passes.site_inputs(self.working, site)


def _with_kernels(sites: list[Site]) -> tuple[str, ...]:
    return tuple(sorted(s.name for s in sites if mode(s.decision).kernels))


def _int4(site: Site) -> bool:
    """A site whose kernels compute on its int4 codes."""
    return mode(site.decision).kernels and isinstance(site.int4, Int4Weights)


def masks(sites: list[Site]) -> dict[str, SiteLowering]:
    """The functions the sites' kernels compute where they differ from the original, in
    standard ops: a masked site's masked function, an int4 site's FFN on its dequantized
    weights (the original runs ONNX Runtime's MatMulNBits): the reference they must equal."""
    return {s.name: SiteLowering(masks=mode(s.decision).masks(s),
                                 dequantized=mode(s.decision).sparse_mode if _int4(s) else None)
            for s in sites if mode(s.decision).masked or _int4(s)}


def _tokens(x: np.ndarray) -> int:
    return x.size // x.shape[-1]


def beyond_probes(v: Verified, tokens: Mapping[str, TokenDispatch],
                  ctx: Context) -> list[dict[str, np.ndarray]]:
    """A probe longer than the largest bound of a dispatched site where no probe is longer
    (none otherwise): so that the check runs the branch beyond each bound too."""
    bounds = {n: t.kernel_max_tokens for n, t in tokens.items() if t.dispatched}
    if not bounds or any(_tokens(x) > max(bounds.values())
                         for n in bounds for x in v.original.sites[n][0]):
        return []
    o = ctx.options
    return probe_inputs(v.analysis.proto, 1, max(bounds.values()) + 1, o.seed + 2, count=1,
                        path=v.analysis.path)


def expected(v: Verified, tokens: Mapping[str, TokenDispatch],
             extra: list[dict[str, np.ndarray]] = ()) -> list[list[np.ndarray]]:
    """Per probe (``v.feeds``, then ``extra``), the outputs the artifact must compute: each
    masked site's masked function where its kernel (or, ``Branch.MASKED``, the masked
    branch) serves the probe's token count at that site, the original where the original
    serves — captured from the markers in standard ops, so no part of the token dispatch
    under test computes its own reference."""
    n_out = len(v.analysis.proto.graph.output)
    feeds = [*v.feeds, *extra]
    more = capture(v.working, n_out, extra) if extra else None
    xs = {n: [*v.original.sites[n][0], *(more.sites[n][0] if more else [])] for n in v.masked}

    def masked_at(name: str, i: int) -> bool:
        t = tokens.get(name)
        return t is None or t.branch(_tokens(xs[name][i])) is not Branch.ORIGINAL

    groups = [frozenset(n for n in v.masked if masked_at(n, i)) for i in range(len(feeds))]
    out: list = [None] * len(feeds)
    plans = masks(v.sites)
    for group in set(groups):
        idx = [i for i, g in enumerate(groups) if g == group]
        given = v.reference if group == v.masked else None if group or v.rounded else v.original
        if given is not None and all(i < len(v.feeds) for i in idx):
            got = [given.outputs[i] for i in idx]
        elif not group and all(i >= len(v.feeds) for i in idx):
            got = [more.outputs[i - len(v.feeds)] for i in idx]
        else:
            got = capture(v.working, n_out, [feeds[i] for i in idx],
                          {n: plans[n] for n in group}).outputs
        for i, g in zip(idx, got, strict=True):
            out[i] = g
    return out


def _int4_roundable(site: Site, detected: dict) -> bool:
    """A float dense or gated site planned exact whose shapes take int4 blocks of
    ``INT4_BLOCK`` (``--weight-dtype int4``)."""
    return (mode(site.decision).kernels and site.decision is Decision.EXACT and not detected
            and site.float32
            and site.kind in (SiteKind.DENSE, SiteKind.GATED)
            and not (site.d_model % INT4_BLOCK or site.d_ff % INT4_BLOCK or site.d_out % CHUNK))


def _quantize_int4(working, analysis: Analysis, sites: list[Site],
                   bits: WeightBits = WeightBits.INT4) -> None:
    """The sites' float weights quantized by ONNX Runtime's quantizer (``bits`` 4 or 8,
    symmetric, blocks of ``INT4_BLOCK``) and installed as MatMulNBits weights in
    ``working``."""
    quantize = matmul_nbits.quantize8 if bits is WeightBits.INT8 else matmul_nbits.quantize
    for s in sites:
        floats = passes.site_inputs(analysis.working, s, Decision.DENSE)
        passes.install_int4(working, s.name, {n: quantize(floats[n], INT4_BLOCK)
                                              for n in ("W1", "W2", "WU") if n in floats})


def refresh(v: Verified, ctx: Context) -> Verified:
    """``v`` with its rounded weights and reference brought in line with the sites' current
    decisions (after sites were left as they were): rounding from the unrounded analysis, so a
    site left dense is exactly as it was. ``--weight-dtype int4|int8`` quantizes the float
    sites planned exact (their ``weight_formats`` follow)."""
    dtype = ctx.weight_dtype
    detected = {s.name: passes.site_formats(v.analysis.working, s.name) for s in v.sites}
    if dtype.bits:
        rounded = tuple(sorted(s.name for s in v.sites if _int4_roundable(s, detected[s.name])))
    else:
        # a 16-bit model's weights stay as they are (its kernels read them so)
        rounded = (_with_kernels([s for s in v.sites if s.float32])
                   if dtype is not WeightDtype.FLOAT32 else ())
    working = v.working
    if rounded != v.rounded:
        working = frontend.copy(v.analysis.working)
        if dtype.bits:
            _quantize_int4(working, v.analysis, [s for s in v.sites if s.name in rounded],
                           dtype.bits)
            for s in v.sites:
                s.weight_formats = passes.site_formats(working, s.name)
        else:
            passes.round_weights(working, rounded, str(dtype))
    masked = frozenset(masks(v.sites))
    if rounded == v.rounded and masked == v.masked:
        return v
    reference = v.original
    if masked or rounded:
        reference = capture(working, len(v.analysis.proto.graph.output), v.feeds,
                            masks(v.sites))
    return Verified(v.planned, v.feeds, v.original, working, reference, masked, rounded)


DECODER_PREFILL = 16  # a decoder's probes: a prefill of this many tokens on an empty cache,
DECODE_STEPS = 2  # then one-token calls on the cache it filled


def probes(a: Analysis, o: CompileOptions, original: ort.InferenceSession) -> list[Feed]:
    """Many-token probes plus one-token ones, so that both sides of a token dispatch run: the
    user's feeds (``--data``) and made-up ones; a decoder's as generation makes them, a
    prefill and decode calls on the cache it filled."""
    user = (list(load_feeds(o.data, [i.name for i in original.get_inputs()]))
            if o.data is not None else [])
    try:
        f = Feeds(a.proto, a.path)
    except UnsupportedModelError:
        if user:
            return user
        raise
    if f.decoder:
        # one sequence (decode calls of one token: where the kernels run) and a batch
        firsts = user[-1:] or [f.call(1, max(o.probe_seq, DECODER_PREFILL), o.seed),
                               f.call(o.probe_batch, o.probe_seq, o.seed + 1)]
        return user[:-1] + _run_checked(a, lambda: [
            feed for k, first in enumerate(firsts)
            for feed in f.generation(run_by_name(original), first,
                                     DECODE_STEPS if k == 0 else 1, o.seed + 2 * k)])
    rng = np.random.default_rng(o.seed)
    made = [f.encoder(o.probe_batch, o.probe_seq + k, rng) for k in range(2)]
    return (user or made) + [f.encoder(1, 1, np.random.default_rng(o.seed + 1))]


def _run_checked(a: Analysis, fn):
    """``fn()``, running the original model: its failure on feeds fffc made up or the user
    gave is the feeds' fault, said in one line."""
    try:
        return fn()
    except (ort_errors.Fail, ort_errors.InvalidArgument, ort_errors.RuntimeException) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise need_data(f"the original model fails on the verification feeds ({first[:300]})",
                        a.path) from e


def run(planned: Planned, ctx: Context) -> Verified:
    with ctx.report(NAME):
        return _verify(planned, ctx)


def _original_outputs(a: Analysis, o: CompileOptions) -> tuple[list[Feed],
                                                                list[list[np.ndarray]]]:
    """The probes and the original model's outputs on them, from a session of the original
    (on ONNX Runtime's CPU EP) that is gone when this returns: a model-sized copy that is
    not kept beside the captures' sessions."""
    session = original_session_of(a.proto, a.path)
    feeds = probes(a, o, session)
    return feeds, _run_checked(a, lambda: run_model(session, feeds))


def _verify(planned: Planned, ctx: Context) -> Verified:
    a, o = planned.analysis, ctx.options
    feeds, want = _original_outputs(a, o)
    original = capture(a.working, len(a.proto.graph.output), feeds)
    c = compare_runs(original.outputs, want, o.rtol)
    if not c.ok:
        raise RewriteError(f"canonicalization changed the model's outputs (rel err "
                           f"{c.max_rel:.2e}); please report this model", path=a.path)
    original = Captured(original.sites, want)
    v = refresh(Verified(planned, feeds, original, a.working, original), ctx)
    for site in a.sites:
        if not mode(site.decision).rewrites:
            continue
        inputs = v.inputs(site)
        rtol = for_dtype(site.dtype, o.rtol)  # a 16-bit model's: its rounding's
        c = verify_site(site, *v.reference.sites[site.name], inputs, rtol)
        site.max_abs_err, site.max_rel_err = c.max_abs, c.max_rel
        if site.name in v.masked or v.rounded or not site.float32:
            site.deviation = verify_site(site, *v.original.sites[site.name], inputs,
                                         rtol).max_rel
        if _int4(site) and site.decision is Decision.EXACT:
            site.gate_flips = gate_flips(site.int4, site.weight_formats["W1"],
                                         v.original.sites[site.name][0], inputs)
        if not c.ok:
            leave(site, f"verification failed: rel err {c.max_rel:.2e} > {rtol:g}")
    v = refresh(v, ctx)  # sites left as they were: as they were
    ctx.dump.json("04-verify.json", {"sites": [s.to_json() for s in a.sites]})
    return v
