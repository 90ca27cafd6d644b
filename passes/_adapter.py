# ruff: noqa
# TEMPORARY test adapter (not committed): the new passes API over the old one
import importlib

import numpy as np

from fffc.contract.kinds import Decision, SiteKind

_lower_mod = importlib.import_module("fffc.passes.lower")

_old_lower = _lower_mod.lower

def lower(model, plans):
    decisions, max_tokens, thresholds, predictors, gates, merged, centers = {}, {}, {}, {}, {}, {}, {}
    for name, p in plans.items():
        decisions[name] = str(p.decision)
        if p.max_tokens: max_tokens[name] = p.max_tokens
        if p.merged_max_tokens: merged[name] = p.merged_max_tokens
        m = p.masks
        if m is None: continue
        if m.gate is not None:
            gates[name] = (m.input, m.gate)
            if m.hidden is not None: thresholds[name] = (m.input, m.hidden)
        elif m.input is not None or m.hidden is not None:
            thresholds[name] = (m.input, m.hidden)
        if m.predictor is not None:
            predictors[name] = tuple(m.predictor) + ((m.predictor_switch,) if m.predictor_switch is not None else ())
        if m.centers is not None: centers[name] = m.centers
    _old_lower(model, decisions, max_tokens, thresholds=thresholds, predictors=predictors,
               gate_thresholds=gates, merged=merged, centers=centers)

def site_inputs(model, site):
    d = site.decision
    w = _lower_mod.site_weights(model, site.name, str(d) if d in (Decision.TEAL, Decision.PREDICTOR, Decision.CATS, Decision.EXACT) else "exact",
                                site.centers if site.centered else None)
    w = {k: v for k, v in w.items() if v is not None}
    if site.kind is SiteKind.FFF:
        return {"W_in": np.ascontiguousarray(w["W1"].T), "B_in": w["B1"], "W_out": w["W2"]}
    if d in (Decision.TEAL, Decision.CATS):
        w["TH"] = np.array([-1.0 if t is None else t for t in site.thresholds], np.float32)
    if d is Decision.PREDICTOR:
        w.update(zip(("PA", "PB", "PC"), site.predictor_arrays, strict=True))
    return w
