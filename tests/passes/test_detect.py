"""detect: the rule families run in order, each module ending in one ``rules``; each kind's
marker becomes a Site through its family."""

from __future__ import annotations

import importlib
import pkgutil

import fffc.passes
from fffc.contract.kinds import SiteKind
from fffc.passes.detect import SITE_OF

FAMILY_PREFIXES = ("canonical_", "ffn_", "mod_")


def test_every_family_module_exports_rules():
    families = [m.name for m in pkgutil.iter_modules(fffc.passes.__path__)
                if m.name.startswith(FAMILY_PREFIXES)]
    assert len(families) >= 10
    for name in families:
        module = importlib.import_module(f"fffc.passes.{name}")
        rules = module.rules
        assert hasattr(rules, "apply_to_model") and list(rules.rules), name


def test_every_kind_has_its_familys_site():
    assert set(SITE_OF) == set(SiteKind)
