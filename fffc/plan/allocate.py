"""Per-site threshold modes and levels under one global budget (TEAL's greedy allocation).

Sites and parts do not tolerate sparsity alike (all-MiniLM-L6-v2, densest-window centers:
40% on every FFN's x and a keeps a 0.988 mean cosine, on a alone 0.998, on x alone 0.989;
this search's levels at 40% of the FFN weight bytes 0.994), so one uniform level wastes
either accuracy or speed.
Starting from no thresholds, each step raises one (site, part) by one calibrated level —
part "input" (x: rows of W1 and WU skipped), "hidden" (a: rows of W2) or, for gated
sites, "gate" (CATS: |act(gate)|, rows of WU and W2 skipped) — choosing the step
with the smallest increase of output error per weight byte it saves, measured on the
calibration feeds with the thresholded reference model (thresholds as graph inputs, one
ONNX Runtime session for the whole search). It stops at the target sparsity (bytes of FFN
weights skipped / all FFN weight bytes) or before the error budget is exceeded; with an
error budget, the path is then walked back until the *held-out* feeds are within it too.
A gated site takes "hidden" or "gate", never both (one kernel each: mode teal or cats), and
a site with a trained predictor may instead switch it on (mode predictor, nothing else)
and then tighten its cut level by level (the fraction of neurons it skips, on held-out
rows), so the search also picks each site's mode and its predictor's cut.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ..contract.analysis import Analysis
from ..contract.errors import UsageError
from ..contract.kinds import Decision, SiteKind, SparseMode
from ..frontend import sha256_file
from ..verify.compare import session
from ..verify.feeds import probe_inputs
from . import decide
from .calibration import (
    GATE,
    PARTS,
    PREDICTOR,
    load_feeds,
    load_predictors,
    threshold_input_name,
    thresholded_model,
)

PREDICTOR_OFF = 1e30  # added to a predictor's scores: every neuron selected


@dataclass
class Allocation:
    levels: dict[str, dict[str, float]]  # site → part → sparsity level (0: no threshold)
    thresholds: dict[str, dict[str, float]]  # site → part → |v| threshold (-1: none)
    sparsity: float  # FFN weight bytes skipped / all FFN weight bytes (at these levels)
    error_calibration: float  # relative L2 error of the outputs on the calibration feeds
    # (real tokens' rows where the calibration has a token mask: ``real_rows``)
    error_held_out: float
    steps: list[dict] = field(default_factory=list)
    shifts: dict[str, float] = field(default_factory=dict)  # site → its predictor's cut
    # shift (added to the folded scores) at the chosen level, for sites in predictor mode

    def to_json(self) -> dict:
        return {"levels": self.levels, "thresholds": self.thresholds,
                "sparsity": self.sparsity, "error_calibration": self.error_calibration,
                "error_held_out": self.error_held_out, "steps": self.steps,
                "predictor_shifts": self.shifts}


def _bytes(site: dict) -> dict[str, float]:
    """Weight elements each part's skipping saves at sparsity 1 (under mode teal; under
    cats, "input" saves W1's rows only: ``_cats_input``)."""
    d, f, d_out = site["d_model"], site["d_ff"], site.get("d_out", site["d_model"])
    gated = SiteKind(site["kind"]) is SiteKind.GATED
    out = {"input": (2 if gated else 1) * d * f, "hidden": f * d_out}
    if gated:
        out[GATE] = d * f + f * d_out
    return out


class Budget(str, Enum):
    """What ``--budget`` asks for."""

    SPARSITY = "sparsity"  # greedy: this fraction of the FFN weight bytes skipped
    ERROR = "error"  # greedy: the most skipping within this relative output error
    UNIFORM = "uniform"  # one calibrated level everywhere, no search
    CATS = "cats"  # CATS: this fraction of each gated site's gates closed, no search
    PREDICTOR = "predictor"  # every trained predictor at its calibrated cut, no search

    def __str__(self) -> str:
        return self.value

    @property
    def searched(self) -> bool:
        """Levels found by the greedy allocation (else a rule applied as it is)."""
        return self in (Budget.SPARSITY, Budget.ERROR, Budget.UNIFORM)


def parse_budget(text: str) -> tuple[Budget, float]:
    """``sparsity=S`` (greedy, S of the FFN weight bytes skipped), ``error=E`` (greedy, the
    most skipping whose relative output error stays ≤ E on held-out feeds) or ``uniform=S``
    (every site and part at the calibrated level S, no search), ``cats=S`` (CATS: in every
    gated site the S least active gates closed, no search) or ``predictor`` (every site
    with a trained predictor runs it, at the cut set in calibration)."""
    if text == Budget.PREDICTOR.value:  # no level: the trained predictors' own cuts
        return Budget.PREDICTOR, 0.0
    name, _, value = text.partition("=")
    try:
        v = float(value)
    except ValueError:
        v = -1.0
    kind = next((b for b in Budget if b.value == name and b is not Budget.PREDICTOR), None)
    if kind is None or not 0 < v < 1:
        raise UsageError(f"--budget {text!r}: expected sparsity=S, error=E, uniform=S or cats=S "
                         "with 0 < S, E < 1 (e.g. sparsity=0.4), or predictor")
    return kind, v


def choose(model: Analysis, calibration: dict, budget: tuple[Budget, float],
           feeds: Sequence[dict], predictors: dict[str, tuple] | None = None) -> Allocation:
    """The allocation of a parsed budget; the last quarter of ``feeds`` is held out;
    ``predictors`` (site → A, B, C-cut) join the search as a mode, their cut as its level."""
    kind, v = budget
    held = max(1, len(feeds) // 4)
    calib, held_out = (feeds[:-held], feeds[-held:]) if len(feeds) > 1 else (feeds, feeds)
    arg = {Budget.SPARSITY: "target_sparsity", Budget.ERROR: "max_error",
           Budget.UNIFORM: "uniform"}[kind]
    return allocate(model, calibration, calib, held_out, **{arg: v}, predictors=predictors)


def allocate(model: Analysis, calibration: dict, calib_feeds: Sequence[dict],
             held_out_feeds: Sequence[dict], *, target_sparsity: float | None = None,
             max_error: float | None = None, uniform: float | None = None,
             parts: tuple[str, ...] = (*PARTS, GATE),
             predictors: dict[str, tuple] | None = None) -> Allocation:
    """Greedy levels per site and part; exactly one of ``target_sparsity`` and
    ``max_error`` (relative L2 error of the model's outputs) is the budget — or ``uniform``,
    one calibrated level everywhere (no search; errors measured all the same)."""
    if sum(b is not None for b in (target_sparsity, max_error, uniform)) != 1:
        raise UsageError("give one budget: a target sparsity or a maximum output error")
    if uniform is not None:
        parts = tuple(p for p in parts if p != GATE)  # uniform TEAL: input and hidden
        predictors = None
    if not any(w["input"] + w["hidden"] > 0
               for w in map(_bytes, calibration["sites"].values())):
        raise UsageError("the calibration holds no site with weights to skip (no sites, or "
                         "none of any size): nothing to allocate the budget over")
    so = ort.SessionOptions()
    so.log_severity_level = 4
    original = ort.InferenceSession(str(model.path), so, providers=["CPUExecutionProvider"])
    searched = thresholded_model(model, calibration, None, parts=parts, predictors=predictors)
    sess = session(searched, options=so)
    sites = calibration["sites"]
    grid = [0.0, *sorted(calibration["sparsities"])]
    weight = {name: _bytes(st) for name, st in sites.items()}
    total = sum(w["input"] + w["hidden"] for w in weight.values())
    keys = [(name, p) for name in sites for p in parts if p in weight[name]]
    keys += [(name, PREDICTOR) for name in (predictors or {})]
    cuts = {name: predictor_levels(sites[name]["predictor"]) for name in predictors or {}}
    token_mask = calibration.get("token_mask")
    # the original's outputs (real tokens' rows, float64): compared at every search step
    want = {id(f): [real_rows(f.get(token_mask), w).astype(np.float64)
                    for w in original.run(None, f)]
            for f in (*calib_feeds, *held_out_feeds)}

    def threshold(name: str, p: str, level: int) -> float:
        if p == PREDICTOR:  # the switch: 1 on, -1 off
            return 1.0 if level else -1.0
        return -1.0 if level == 0 else float(sites[name]["thresholds"][p][f"{grid[level]:g}"])

    def feed_value(name: str, p: str, level: int) -> float:
        if p == PREDICTOR:  # added to the scores: the level's cut, or every neuron
            return cuts[name][level - 1][1] if level else PREDICTOR_OFF
        return threshold(name, p, level)

    def error(state: dict, feeds: Sequence[dict]) -> float:
        extra = {threshold_input_name(n, p): np.array(feed_value(n, p, state.get((n, p), 0)),
                                                       np.float32) for n, p in keys}
        num = den = 0.0
        for f in feeds:
            for g, w in zip(sess.run(None, {**f, **extra}), want[id(f)], strict=True):
                g = real_rows(f.get(token_mask), g)
                num += float(np.sum((g.astype(np.float64) - w) ** 2))
                den += float(np.sum(w**2))
        return float(np.sqrt(num / max(den, 1e-30)))

    def sparsity(state: dict) -> float:
        saved = 0.0
        for n, p in keys:
            if p == PREDICTOR:
                if state.get((n, p), 0):  # all of the site's rows, but the selected ones
                    saved += ((weight[n]["input"] + weight[n]["hidden"])
                              * (1.0 - cuts[n][state[(n, p)] - 1][2]))
                continue
            w = weight[n][p]
            if p == "input" and state.get((n, GATE), 0):  # cats: x skips W1's rows only
                w = w / 2
            saved += w * grid[state.get((n, p), 0)]
        return saved / total

    def allowed(k: tuple[str, str], state: dict) -> bool:
        """A site's "hidden" and "gate" exclude each other (mode teal or cats), and its
        predictor excludes every threshold (mode predictor)."""
        if k[1] == PREDICTOR:
            return not any(state.get((k[0], p), 0) for p in parts)
        if state.get((k[0], PREDICTOR), 0):
            return False
        other = {"hidden": GATE, GATE: "hidden"}.get(k[1])
        return other is None or not state.get((k[0], other), 0)

    def top(k: tuple[str, str]) -> int:
        return len(cuts[k[0]]) if k[1] == PREDICTOR else len(grid) - 1

    state: dict[tuple[str, str], int] = {}
    err = 0.0
    if uniform is not None:
        level = next((i for i, g in enumerate(grid) if abs(g - uniform) < 1e-9), None)
        if level is None:
            raise UsageError(f"uniform={uniform:g} is not a calibrated level; calibrated: "
                             f"{calibration['sparsities']}")
        state = {k: level for k in keys}
        err = error(state, calib_feeds)
    path = [(dict(state), err)]
    while uniform is None and (target_sparsity is None
                               or sparsity(state) < target_sparsity - 1e-12):
        best = None
        for k in keys:
            if state.get(k, 0) >= top(k) or not allowed(k, state):
                continue
            trial = {**state, k: state.get(k, 0) + 1}
            e = error(trial, calib_feeds)
            gain = sparsity(trial) - sparsity(state)
            score = (e - err) / gain
            if best is None or score < best[0]:
                best = (score, trial, e)
        if best is None or (max_error is not None and best[2] > max_error):
            break
        _, state, err = best
        path.append((dict(state), err))
    held_out = error(path[-1][0], held_out_feeds)
    while max_error is not None and len(path) > 1 and held_out > max_error:
        path.pop()  # walk back until the held-out feeds are within the budget
        held_out = error(path[-1][0], held_out_feeds)
    state, err = path[-1]
    own = {n: [p for n2, p in keys if n2 == n] for n in sites}

    def level(n: str, p: str) -> float:
        on = state.get((n, p), 0)
        if p == PREDICTOR:
            return 1.0 - cuts[n][on - 1][2] if on else 0.0
        return grid[on]

    return Allocation(
        levels={n: {p: level(n, p) for p in own[n]} for n in sites},
        thresholds={n: {p: threshold(n, p, state.get((n, p), 0)) for p in own[n]} for n in sites},
        sparsity=sparsity(state), error_calibration=err,
        error_held_out=held_out,
        steps=[{"sparsity": sparsity(s), "error_calibration": e} for s, e in path],
        shifts={n: feed_value(n, p, state[(n, p)]) for n, p in keys
                if p == PREDICTOR and state.get((n, p), 0)})


def stored(model: Analysis, calibration: dict, budget: str,
           feeds: Sequence[dict]) -> dict:
    """``fffc calibrate --budget``: CALIB.json's "allocation", which ``fffc compile
    --calibration`` applies as it is when given no budget: the searched levels and
    thresholds of ``sparsity``/``error``/``uniform`` (on ``feeds``, the last quarter held
    out), or just the budget for the rules ``cats=S`` and ``predictor``."""
    kind, value = parse_budget(budget)
    predictors = load_predictors("", calibration)
    if kind is Budget.PREDICTOR and not predictors:
        raise UsageError("--budget predictor needs predictors: add --predictor-rank R")
    if not kind.searched:
        return {"budget": budget}
    return {"budget": budget,
            **choose(model, calibration, (kind, value), feeds, predictors or None).to_json()}


def real_rows(mask: np.ndarray | None, out: np.ndarray) -> np.ndarray:
    """An output's rows of real tokens: where the calibration's token mask (padding 0) has
    the output's leading dims, padding rows are what the model computes for nothing, and an
    error counted on them would steer the search toward levels that spare padding."""
    if mask is None or np.shape(mask) != out.shape[:-1]:
        return out
    return out[np.asarray(mask) != 0]


def predictor_levels(info: dict) -> list[tuple[str, float, float]]:
    """A trained predictor's levels for the search, tightest last: (level, shift added to
    its folded scores, fraction of neurons selected on held-out rows). Calibrations made
    before the levels existed have one: the trained cut."""
    if "levels" not in info:
        return [("trained", 0.0, info["held_out"]["selected"])]
    return sorted(((k, v["shift"], v["selected"]) for k, v in info["levels"].items()),
                  key=lambda t: -t[2])


def shifted(predictors: dict[str, tuple], shifts: dict[str, float]) -> dict[str, tuple]:
    """The predictor arrays (A, B, C − cut) with each site's chosen shift folded into C."""
    return {n: (a, b, (c + np.float32(shifts.get(n, 0.0))).astype(np.float32))
            for n, (a, b, c) in predictors.items()}


def apply(model: Analysis, calibration: dict, allocation: Allocation,
          predictors: dict[str, tuple] | None = None) -> onnx.ModelProto:
    """The thresholded reference model with the allocation's thresholds as constants (and
    its predictor sites masked by their predictors)."""
    fixed = {"sparsities": [1.0], "model": calibration["model"], "sites": {
        name: {**st, "thresholds": {p: {"1": allocation.thresholds[name].get(p, -1.0)}
                                    for p in (*PARTS, GATE) if p in st["thresholds"]}}
        for name, st in calibration["sites"].items()}}
    on = [n for n, t in allocation.thresholds.items() if t.get(PREDICTOR, -1.0) > 0]
    return thresholded_model(model, fixed, 1.0, parts=(*PARTS, GATE),
                             predictors=shifted(predictors or {}, allocation.shifts) or None,
                             predictors_on=on)


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and bool(np.isfinite(v))


def _size(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 < v < 2**31


def _site_problem(name: str, st, levels: set[str]) -> str | None:
    if not isinstance(st, dict):
        return f"site {name!r} is {st!r}, not an object"
    if not isinstance(st.get("kind"), str) or st["kind"] not in {k.value for k in SiteKind}:
        return f"site {name!r}: kind {st.get('kind')!r}"
    for key in ("d_model", "d_ff", *(("d_out",) if "d_out" in st else ())):
        if not _size(st.get(key)):
            return f"site {name!r}: {key} {st.get(key)!r}, expected a positive integer"
    th = st.get("thresholds")
    if not isinstance(th, dict):
        return f"site {name!r}: thresholds {th!r}, expected an object"
    for part, by_level in th.items():
        if not isinstance(by_level, dict) or not levels <= set(by_level) or not all(
                _number(v) and v >= 0 for v in by_level.values()):
            return (f"site {name!r}: thresholds.{part} {by_level!r:.80}, expected a "
                    "threshold >= 0 per calibrated level")
    centers = st.get("centers", {})
    if not isinstance(centers, dict) or not all(
            isinstance(c, list) and len(c) == st[{"input": "d_model"}.get(p, "d_ff")]
            and all(_number(v) for v in c) for p, c in centers.items()):
        return f"site {name!r}: centers, expected a list of numbers per part"
    pred = st.get("predictor")
    if pred is not None and not (isinstance(pred, dict) and (
            (isinstance(pred.get("levels"), dict) and pred["levels"] and all(
                isinstance(v, dict) and _number(v.get("shift")) and _number(v.get("selected"))
                for v in pred["levels"].values()))
            or ("levels" not in pred and isinstance(pred.get("held_out"), dict)
            and _number(pred["held_out"].get("selected"))))):
        return f"site {name!r}: predictor {pred!r:.80}"
    return None


def document_problem(calib) -> str | None:
    """What in a CALIB.json ``plan_sites`` cannot use (None: nothing): the keys and types
    it reads, checked before any is used."""
    if not isinstance(calib, dict):
        return f"{type(calib).__name__}, not an object"
    if not isinstance(calib.get("model"), dict):
        return "no model section"
    levels = calib.get("sparsities")
    if not isinstance(levels, list) or not levels or not all(
            _number(v) and 0 < v < 1 for v in levels):
        return f"sparsities {levels!r:.80}, expected levels in (0, 1)"
    sites = calib.get("sites")
    if not isinstance(sites, dict):
        return f"sites {sites!r:.80}, expected an object"
    for name, st in sites.items():
        if (problem := _site_problem(name, st, {f"{v:g}" for v in levels})) is not None:
            return problem
    alloc = calib.get("allocation")
    if alloc is not None and not (
            isinstance(alloc, dict) and isinstance(alloc.get("budget"), str)
            and all(isinstance(alloc[k], dict) and all(
                isinstance(v, dict) and all(_number(x) for x in v.values())
                for v in alloc[k].values()) for k in ("thresholds", "levels") if k in alloc)
            and isinstance(alloc.get("predictor_shifts", {}), dict)
            and all(_number(v) for v in alloc.get("predictor_shifts", {}).values())):
        return f"allocation {alloc!r:.80}"
    preds = calib.get("predictors")
    if preds is not None and not (isinstance(preds, str) and preds
                                  and Path(preds).name == preds and preds not in (".", "..")):
        return f"predictors {preds!r}, expected a file name beside the calibration"
    return None


def plan_sites(model: Analysis, calibration_path: Path, budget_text: str | None,
               data: Path | None, seed: int,
               int4_modes: frozenset[SparseMode] = frozenset()) -> dict:
    """``fffc compile --calibration``: a masked mode (teal, cats, predictor) and its levels per
    site, set on the sites as their decisions — the budget's rule (``cats=S``,
    ``predictor``), the allocation searched on ``data`` (or synthetic feeds), or with no
    ``budget_text`` the allocation ``fffc calibrate --budget`` stored. Returns the manifest's
    ``calibration`` section. ``int4_modes``: the masked modes the target's int4 kernels
    take (an int4 site gets no other)."""
    if budget_text is not None:
        parse_budget(budget_text)  # a bad budget fails before the file is read
    try:
        calib = json.loads(Path(calibration_path).read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read the calibration ({e})", path=calibration_path) from e
    if (problem := document_problem(calib)) is not None:
        raise UsageError(f"not a calibration fffc calibrate writes: {problem}",
                         path=calibration_path)
    if calib["model"].get("sha256") != sha256_file(model.path):
        raise UsageError("the calibration was made for another model (sha256 differs); run "
                         "fffc calibrate on this one", path=calibration_path)
    kept = calib.get("allocation") if budget_text is None else None
    if budget_text is None and kept is None:
        raise UsageError("--calibration needs a --budget (sparsity=S, error=E, uniform=S, "
                         "cats=S or predictor), or a calibration made with fffc calibrate "
                         "--budget", path=calibration_path)
    budget_text = budget_text or kept["budget"]
    kind, level = parse_budget(budget_text)
    record = {"path": str(Path(calibration_path).resolve()), "budget": budget_text}
    if kind is Budget.CATS:
        decide.apply_gate_thresholds(model.sites, calib, level, int4_modes)
        return record | {"gate_thresholds": {s.name: s.thresholds[1] for s in model.sites
                                             if s.decision is Decision.CATS}}
    predictors = load_predictors(calibration_path, calib)
    if kind is Budget.PREDICTOR:
        if not predictors:
            raise UsageError("--budget predictor: this calibration has no predictors (run fffc "
                             "calibrate with --predictor-rank R)", path=calibration_path)
        decide.apply_predictors(model.sites, calib, predictors, int4_modes)
        return record | {"predictors": {s.name: s.predictor for s in model.sites
                                        if s.predictor}}
    if kept is not None:
        if not {"thresholds", "levels", "predictor_shifts"} <= set(kept):
            raise UsageError(f"not a calibration fffc calibrate writes: its allocation for "
                             f"{budget_text} lacks thresholds, levels or predictor_shifts",
                             path=calibration_path)
        chosen = {k: v for k, v in kept.items() if k != "budget"}
        feeds_used = "the calibration's (fffc calibrate --budget)"
    else:
        inputs = [i.name for i in model.proto.graph.input
                  if i.name not in {t.name for t in model.proto.graph.initializer}]
        feeds = (list(load_feeds(Path(data), inputs)) if data is not None
                 else probe_inputs(model.proto, 1, 32, seed + 7, count=8, path=model.path))
        chosen = choose(model, calib, (kind, level), feeds, predictors or None).to_json()
        feeds_used = str(data) if data else "synthetic x8"
    decide.apply_thresholds(model.sites, chosen["thresholds"], chosen["levels"], calib,
                            predictors, chosen["predictor_shifts"], int4_modes)
    return record | {"feeds": feeds_used, "allocation": chosen}
