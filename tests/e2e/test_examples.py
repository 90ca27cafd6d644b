"""The examples run end to end (they are what a newcomer tries first)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.torch
def test_fff_example_compiles_and_matches(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["fff_example.py"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(EXAMPLES / "fff_example.py"), run_name="__main__")
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "FFF 2x7, tree" in out and "compiled vs exported" in out
