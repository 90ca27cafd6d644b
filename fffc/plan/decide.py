"""Plan: choose, per site, how it is lowered, and say why.

Exact skipping is only exact where the activation produces true zeros: ReLU FFNs and
ReLU-gated FFNs (ReGLU, dReLU). GELU/SiLU sites stay dense unless a calibration gives them
a masked mode (TEAL or CATS thresholds, a trained predictor: ``apply_*``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..contract import act_quant
from ..contract.errors import UsageError
from ..contract.int4 import Int4Weights
from ..contract.kinds import Decision, SiteKind, SparseMode, WeightBits
from ..contract.modes import mode
from ..contract.ops import describe_k
from ..contract.sites import Site

NOT_SELECTED = "not selected with --sites"


def plan(sites: Sequence[Site], only: Sequence[str] = (), int4_target: str = "",
         int8_weights: bool = False, int8_act_quant: bool = False,
         int4_modes: frozenset[SparseMode] = frozenset({SparseMode.EXACT})) -> None:
    """Set ``decision`` and ``reason`` on every site in place; ``int4_target``: the name of
    the target when its kernels take int4 weights (with x in float32 or rounded to int8 per
    block, accuracy_level 4), ``int8_weights``: its kernels take 8-bit codes too,
    ``int8_act_quant``: its int8 kernels apply the activations' fake quantization (AQ),
    ``int4_modes``: the SparseFFN modes of its int4 kernels (8-bit codes: exact only)."""
    for site in sites:
        int4 = site.int4
        if only and site.name not in only and not set(site.matched_nodes) & set(only):
            site.decision, site.reason = Decision.DENSE, NOT_SELECTED
        elif site.act_quant and not (isinstance(int4, Int4Weights)
                                     and int4.bits is WeightBits.INT8):
            why = int4 if isinstance(int4, str) else "float weights"
            site.decision, site.reason = Decision.DENSE, (
                f"{act_quant.describe(site.act_quant)}: fffc applies the activations' fake "
                f"quantization in its int8 exact kernels only ({why}); left as it was")
        elif site.weight_formats and (int4 is None or isinstance(int4, str)):
            why = int4 or "no fffc kernels for this weight format yet"
            site.decision, site.reason = Decision.DENSE, f"{site.quantized}: {why}; left as it was"
        elif site.weight_formats and not int4_target:
            site.decision, site.reason = Decision.DENSE, (
                f"{site.quantized}: no int4 kernels for this target yet; left as it was")
        elif site.weight_formats and int4.bits is WeightBits.INT8 and not int8_weights:
            site.decision, site.reason = Decision.DENSE, (
                f"{site.quantized}: no int8 kernels for this target yet; left as it was")
        elif site.act_quant and not int8_act_quant:
            site.decision, site.reason = Decision.DENSE, (
                f"{act_quant.describe(site.act_quant)}: the {int4_target} int8 kernels do not "
                "apply the activations' fake quantization (the CPU ones do); left as it was")
        elif not site.float32 and site.kind not in mode(Decision.EXACT).kinds:
            site.decision, site.reason = Decision.DENSE, (
                f"{site.dtype} weights and activations (a {site.dtype} model): fffc lowers "
                "the dense and gated FFNs of 16-bit models only; left as it was")
        else:
            site.decision, site.reason = _DEFAULT[site.kind](site)
            if site.decision is Decision.DENSE and isinstance(int4, Int4Weights):
                site.reason = _int4_dense(site, int4, int4_target, int4_modes)


def _routed(site: Site) -> tuple[Decision, str]:
    r = site.routing or {}
    chosen = (f"the top {describe_k(r.get('k', 1), r.get('capacity'))} tokens per sequence"
              if r.get("selection") == "topk"
              else "the tokens whose causal score passes sigmoid > 0.5")
    return Decision.ROUTED, (f"Mixture-of-Depths: the FFN on {chosen} only; combine "
                             f"({_coef(r.get('x_coef'))})·x + ({_coef(r.get('delta_coef'))})·FFN(x)"
                             " read from the graph")


def _structured(site: Site) -> tuple[Decision, str]:
    st = site.structure or {}
    return Decision.STRUCTURED, (f"{site.family}: {st.get('params_fraction', 0):.0%} of the "
                                 "dense parameters; fused structured kernel")


def _fff(site: Site) -> tuple[Decision, str]:
    return Decision.TREE, (f"FastFeedForward: {site.trees * (site.depth + 1)} of {site.d_ff} "
                           "nodes per token (conditional matrix multiplication)")


def _sparse(why_exact: str) -> Callable[[Site], tuple[Decision, str]]:
    def decide(site: Site) -> tuple[Decision, str]:
        q = site.int4
        if site.activation == "relu":  # the only activation with exact zeros
            return Decision.EXACT, why_exact + (f", on its int{q.bits} codes (block {q.block})"
                                                if q else "") + _narrow(site)
        if q:  # why is the plan's to say (``_int4_dense``: it knows the target)
            return Decision.DENSE, f"{site.quantized}: {site.activation} is never exactly zero"
        if not site.float32:
            return Decision.DENSE, (f"{site.activation} is never exactly zero: no exact "
                                    f"skipping (thresholds on a {site.dtype} model: not yet); "
                                    "left as it was")
        return Decision.DENSE, (f"{site.activation} is never exactly zero: no exact skipping "
                                "(calibrate it for TEAL thresholds: fffc calibrate, then "
                                "fffc compile --calibration); left as it was")
    return decide


def _narrow(site: Site) -> str:
    """How a 16-bit model's site computes (nothing for a float32 one)."""
    if site.float32:
        return ""
    return (f", in float32 on its {site.dtype} weights (a {site.dtype} model: x cast to "
            f"float32 before the op, y back to {site.dtype} after)")


def _int4_dense(site: Site, q: Int4Weights, target: str,
                modes: frozenset[SparseMode]) -> str:
    """Why an int4 site the plan leaves dense (no exact zeros) stays so, or how a calibration
    gives it a masked mode."""
    never = f"{site.quantized}: {site.activation} is never exactly zero: no exact skipping"
    if q.bits is WeightBits.INT8:
        return f"{never} (the int8 kernels are for mode exact only); left as it was"
    if not modes - {SparseMode.EXACT}:
        return f"{never} (the {target} int4 kernels are for mode exact only); left as it was"
    on = ("dequantized weights, x rounded to int8 per block as accuracy_level 4 asks"
          if q.int8_x else "dequantized weights")
    return (f"{never} (calibrate it for TEAL or CATS thresholds or a predictor on its {on}: "
            "fffc calibrate --center none, then fffc compile --calibration); left as it was")


def _rounded(site: Site, decision: Decision) -> str:
    """How a masked mode computes on an int4 site at accuracy_level 4 (nothing otherwise):
    ``fffc.contract.int4.int8_rounding``'s places."""
    q = site.int4
    if not (isinstance(q, Int4Weights) and q.int8_x):
        return ""
    where = {Decision.TEAL: "x' and a' rounded to int8 per block",
             Decision.CATS: "x' rounded to int8 per block",
             Decision.PREDICTOR: "the selected rows on x rounded to int8 per block (the "
                                 "predictor on float x)"}[decision]
    return (f"; on its int4 codes, {where} as accuracy_level 4 asks (int8 dots where the CPU "
            "has them, else float32 dots on the same rounded values)")


_DEFAULT: dict[SiteKind, Callable[[Site], tuple[Decision, str]]] = {
    SiteKind.DENSE: _sparse("ReLU zeros are exact: skip down-projection rows"),
    SiteKind.GATED: _sparse("gate-first: up and down rows only where the ReLU gate is > 0"),
    SiteKind.FFF: _fff,
    SiteKind.STRUCTURED: _structured,
    SiteKind.ROUTED: _routed,
}


def _open_to_calibration(site: Site, decision: Decision,
                         int4_modes: frozenset[SparseMode] = frozenset(),
                         centered: bool = False) -> bool:
    """A float32 dense or gated site the user did not leave out with --sites, with float
    weights, or with int4 weights where the target's int4 kernels take ``decision``'s mode
    (``int4_modes``; x in float32 at accuracy_level 0, rounded to int8 per block at level
    4; 4-bit codes: the int8 kernels are exact only) — uncentered (``centered``: the
    calibrated thresholds are of |v − center|, which those kernels do not take)."""
    if (site.kind not in mode(Decision.TEAL).kinds or not site.float32
            or (site.decision is Decision.DENSE and site.reason == NOT_SELECTED)):
        return False
    if not site.weight_formats:
        return True
    q = site.int4
    return (isinstance(q, Int4Weights) and q.bits is WeightBits.INT4
            and not centered and mode(decision).sparse_mode in int4_modes)


def apply_thresholds(sites: Sequence[Site], thresholds: dict[str, dict[str, float]],
                     levels: dict[str, dict[str, float]], calibration: dict | None = None,
                     predictors: dict[str, tuple] | None = None,
                     shifts: dict[str, float] | None = None,
                     int4_modes: frozenset[SparseMode] = frozenset()) -> None:
    """A float32 dense/gated site with an allocated threshold becomes ``teal`` (input and
    hidden thresholds, -1 = off), with a gate threshold ``cats`` (input and gate), with its
    predictor switched on ``predictor`` (its cut moved by ``shifts[site]``, the level the
    search chose); sites the allocation left at 0 keep their plan. An int4 site only where
    the target's int4 kernels take the mode (``int4_modes``)."""
    for site in sites:
        t = thresholds.get(site.name)
        if t is None:
            continue
        decision = (Decision.PREDICTOR if t.get("predictor", -1.0) > 0
                    else Decision.CATS if float(t.get("gate", -1.0)) >= 0
                    and site.kind in mode(Decision.CATS).kinds else Decision.TEAL)
        centered = decision is Decision.TEAL and bool(site_centers(
            calibration, site.name, (float(t.get("input", -1.0)) >= 0,
                                     float(t.get("hidden", -1.0)) >= 0)))
        if not _open_to_calibration(site, decision, int4_modes, centered):
            continue
        if t.get("predictor", -1.0) > 0 and calibration and predictors:
            info = calibration["sites"][site.name]["predictor"]
            shift = (shifts or {}).get(site.name, 0.0)
            a, b, c = predictors[site.name]
            level = next((v for v in info.get("levels", {}).values()
                          if abs(v["shift"] - shift) <= 1e-12 * max(1.0, abs(shift))), None)
            _use_predictor(site, {**info, "held_out": level} if level else info,
                           (a, b, (c + np.float32(shift)).astype(np.float32)))
            continue
        lv = levels.get(site.name, {})
        if float(t.get("gate", -1.0)) >= 0 and site.kind in mode(Decision.CATS).kinds:
            site.decision = Decision.CATS
            site.thresholds = (float(t.get("input", -1.0)), float(t["gate"]))
            site.reason = (f"CATS: {lv.get('gate', 0):.0%} of the gates closed, "
                           f"{lv.get('input', 0):.0%} of x skipped (calibrated levels)"
                           + _rounded(site, Decision.CATS))
            continue
        pair = (float(t.get("input", -1.0)), float(t.get("hidden", -1.0)))
        if max(pair) < 0:
            continue
        site.decision, site.thresholds = Decision.TEAL, pair
        site.centers = site_centers(calibration, site.name, (pair[0] >= 0, pair[1] >= 0))
        site.reason = (f"TEAL thresholds: {lv.get('input', 0):.0%} of x and "
                       f"{lv.get('hidden', 0):.0%} of the down projection's input skipped "
                       "(calibrated levels)" + _rounded(site, Decision.TEAL))


def site_centers(calibration: dict | None, name: str,
                 used: tuple[bool, bool]) -> tuple | None:
    """A site's calibrated centers (c_in, c_hidden) of the thresholds ``used`` (x, a): None
    for one not used or without a center (TEAL's zero), or None for neither."""
    got = ((calibration or {}).get("sites", {}).get(name) or {}).get("centers") or {}
    centers = tuple(np.asarray(got[p], np.float32) if p in got and u else None
                    for p, u in zip(("input", "hidden"), used, strict=True))
    return centers if any(c is not None for c in centers) else None


def apply_gate_thresholds(sites: Sequence[Site], calibration: dict, level: float,
                          int4_modes: frozenset[SparseMode] = frozenset()) -> None:
    """CATS: every float32 gated site gets the calibrated threshold of |act(gate)| at
    ``level`` (that fraction of gates closed; their up and down rows skipped)."""
    key = f"{level:g}"
    if not any(abs(s - level) < 1e-9 for s in calibration["sparsities"]):
        raise UsageError(f"cats={level:g} is not a calibrated level; calibrated: "
                         f"{calibration['sparsities']}")
    for site in sites:
        st = calibration["sites"].get(site.name)
        if (st is None or site.kind not in mode(Decision.CATS).kinds
                or "gate" not in st["thresholds"]
                or not _open_to_calibration(site, Decision.CATS, int4_modes)):
            continue
        site.decision = Decision.CATS
        site.thresholds = (-1.0, float(st["thresholds"]["gate"][key]))
        site.reason = (f"CATS: gates with |{site.activation}(x·Wg)| in the lowest {level:.0%} "
                       "closed (calibrated); their up and down rows skipped"
                       + _rounded(site, Decision.CATS))


def apply_predictors(sites: Sequence[Site], calibration: dict,
                     arrays: dict[str, tuple],
                     int4_modes: frozenset[SparseMode] = frozenset()) -> None:
    """Predictor mode: every float32 dense/gated site with a trained predictor
    (``fffc calibrate --predictor-rank``; ``arrays``: site → A, B, C with the cut folded
    in, ``calibration.load_predictors``) becomes ``predictor``."""
    for site in sites:
        info = calibration["sites"].get(site.name, {}).get("predictor")
        if info is None or not _open_to_calibration(site, Decision.PREDICTOR, int4_modes):
            continue
        _use_predictor(site, info, arrays[site.name])


def _use_predictor(site: Site, info: dict, arrays: tuple) -> None:
    a, b, c = arrays
    site.decision, site.thresholds = Decision.PREDICTOR, None
    site.predictor_arrays = (a, b, c)
    q = info["held_out"]
    site.predictor = {"rank": int(a.shape[1]), **q}
    site.reason = (f"rank-{a.shape[1]} predictor: {q['selected']:.0%} of neurons computed "
                   f"(held-out recall {q['recall']:.3f} of the {q['active']:.0%} active)"
                   + _rounded(site, Decision.PREDICTOR))


def _coef(c) -> str:
    a, b = c or (0, 0)
    return " + ".join(p for p in ((f"{a:g}" if a else ""), (f"{b:g}·w" if b else "")) if p) or "0"


def leave(site: Site, reason: str) -> None:
    """Leave a site as it was (a check failed), forgetting its masked-mode parameters."""
    site.decision, site.thresholds, site.predictor_arrays, site.centers = (
        Decision.DENSE, None, None, None)
    site.reason = reason
