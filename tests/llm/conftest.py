"""Session fixtures of the LLM tests: tiny decoder checkpoints and their exports by the
real tools (``tests.fixtures.llm``), each built once per run, and each export's analysis."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.llm import Exporter, LLMExports, default_root, skip_unless_available


@pytest.fixture(scope="session")
def llm_exports(tmp_path_factory) -> LLMExports:
    pytest.importorskip("torch", reason="the torch extra builds the test checkpoints")
    pytest.importorskip("transformers", reason="transformers builds the test checkpoints")
    return LLMExports(default_root(tmp_path_factory.mktemp("llm")))


@pytest.fixture(scope="session")
def llm_model(llm_exports) -> Callable[[str, Exporter], Path]:
    """``(family, exporter) → the export's model file``, skipping where the tool is absent."""

    def get(family: str, exporter: Exporter) -> Path:
        skip_unless_available(exporter)
        return llm_exports.model(family, exporter)

    return get


@pytest.fixture(scope="session")
def llm_analysis(llm_model):
    """``(family, exporter) → fffc.pipeline.analyze`` of the export (once per session)."""
    from fffc.pipeline import analyze

    done = {}

    def get(family: str, exporter: Exporter):
        if (family, exporter) not in done:
            done[family, exporter] = analyze(llm_model(family, exporter))
        return done[family, exporter]

    return get
