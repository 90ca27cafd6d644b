"""bench/bench_llm_decode.py --quick runs end to end and prints its table (no timing checked):
dReLU exact and predictor, each compile's sites lowered to its mode."""

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
    exact, predictor = (line.split("|")[1:-1] for line in lines[header + 2:header + 4])
    assert exact[0].strip() == "drelu, exact"
    assert predictor[0].strip().startswith("drelu, predictor (rank 16, held-out recall ")
    # the tiny model's 2 layers: both sites run the row's kernel at a decode step
    assert exact[2].strip() == "2/2 exact"
    assert predictor[2].strip() == "2/2 predictor"
    assert predictor[-1].strip() in ("yes", "no")  # same tokens as stock's
    assert "gate pre-activations ≤ 0 on decode steps" in done.stdout
    assert "[drelu, predictor] fffc compile: 2 site(s): 2 predictor" in done.stdout
