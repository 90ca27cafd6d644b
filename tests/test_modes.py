"""The mode registry is complete: every decision has an entry, and every entry has the
behaviours its flags require, registered by the layers that own them."""

from __future__ import annotations

import numpy as np
import pytest

import fffc.verify.artifact
import fffc.verify.sites  # noqa: F401  registers REFERENCE
from fffc.contract.kinds import Decision, SiteKind, SparseMode
from fffc.contract.lowering import Masks
from fffc.contract.modes import MODES, Behaviour, kernel_specs, mode, sparse
from fffc.contract.ops import SPARSE_FFN
from fffc.contract.sites import Site


def test_every_decision_has_an_entry():
    assert set(MODES) == set(Decision)


def test_sparse_modes_are_the_op_attribute():
    assert set(SPARSE_FFN.attribute("mode").choices) == {str(m) for m in SparseMode}
    assert {sparse(m).decision for m in SparseMode} == {d for d, e in MODES.items()
                                                        if e.sparse_mode is not None}


@pytest.mark.parametrize("decision", list(Decision))
def test_behaviours_the_flags_require(decision):
    m = mode(decision)
    if m.rewrites:  # a site it replaces is lowered by its registered rule and verified
        m.behaviour(Behaviour.LOWER)
        m.behaviour(Behaviour.REFERENCE)
    else:  # kept as it was: nothing registered that would run
        assert not m.behaviours
    if m.kernels:
        m.behaviour(Behaviour.EMULATE)
        assert m.op is not None
    if m.masked:
        assert m.kernels


def _site(kind: SiteKind, decision: Decision) -> Site:
    site = Site(name="s", rule="test", kind=kind, activation="relu", up_activation="none",
                d_model=8, d_ff=32, d_out=8, has_b1=True, has_b2=True, dtype="float32",
                decision=decision, trees=1, depth=2, tie_break="gt",
                structure={"first": "lowrank", "second": "lowrank", "k1": 1, "r1": 4,
                           "u1": True, "k2": 1, "r2": 4, "u2": True},
                routing={"selection": "topk", "k": 2, "router": "raw", "x_coef": (1.0, 0.0),
                         "delta_coef": (0.0, 1.0)},
                thresholds=(0.1, 0.2), predictor={"rank": 4},
                predictor_arrays=(np.zeros((8, 4)), np.zeros((4, 32)), np.zeros(32)))
    return site


@pytest.mark.parametrize("decision", list(Decision))
def test_kernel_specs_and_masks_of_each_kind(decision):
    m = mode(decision)
    for kind in m.kinds:
        site = _site(kind, decision)
        specs = kernel_specs(site)
        assert bool(specs) == m.kernels
        assert all(s.op == m.op.name for s in specs[:1])
        assert isinstance(m.masks(site), Masks) == m.masked
