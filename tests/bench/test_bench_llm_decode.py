"""bench/bench_llm_decode.py --quick runs end to end and prints its table (no timing checked)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "bench_llm_decode.py"


@pytest.mark.slow
@pytest.mark.torch
def test_quick_run_prints_the_table(tmp_path):
    for module in ("torch", "transformers", "tokenizers", "onnxruntime_genai"):
        pytest.importorskip(module)
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--cache", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| model |"))
    assert lines[header + 1].startswith("|---|")
    assert lines[header + 2].startswith("| drelu, exact |")
    assert "gate pre-activations ≤ 0 on decode steps" in done.stdout
