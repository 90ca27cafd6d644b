"""Shared fixtures: exported HF-style models (need the optional torch extra); compiles take
their crossovers from the target's table (``FFFC_CROSSOVERS=table``) unless a test asks
for them to be measured, so that what the tests build does not depend on the machine's
timings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import tests.fixtures.sanitizers  # noqa: F401  (make test-asan: the preload for Python only)


@pytest.fixture(scope="session", autouse=True)
def crossovers_from_the_table():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FFFC_CROSSOVERS", "table")
        yield


@pytest.fixture(scope="session")
def export_model() -> Callable[..., Path]:
    """``tests.fixtures.models.export_model``; skips the test when torch/transformers are absent."""
    pytest.importorskip("torch", reason="the torch extra is needed to export test models")
    pytest.importorskip("transformers", reason="transformers is needed to build test models")
    from tests.fixtures.models import export_model as _export

    return _export
