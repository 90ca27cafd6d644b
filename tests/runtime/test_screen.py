"""The shim's float16 screen (runtime/src/cpu/screen.cc) against its Python twin
(fffc.codegen.kernels.exact_screened.screen_inputs), and its choice of kernel per call."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from fffc.codegen.kernels.exact_screened import screen_inputs
from fffc.package.native import CXXFLAGS, _runtime_dir

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("screen") / "screen_harness"
    src = _runtime_dir() / "src"
    subprocess.run(["g++", *[f for f in CXXFLAGS if f != "-fvisibility=hidden"], f"-I{src}",
                    str(HERE / "screen_harness.cc"), str(src / "cpu" / "screen.cc"), "-o",
                    str(out)], check=True, capture_output=True, text=True)
    return out


def _derive(harness: Path, tmp: Path, w1: np.ndarray, b1: np.ndarray | None):
    d_in, d_ff = w1.shape
    with open(tmp / "in.bin", "wb") as f:
        f.write(np.array([d_in, d_ff], np.int64).tobytes() + w1.astype(np.float32).tobytes())
        f.write(np.array([b1 is not None], np.int64).tobytes())
        if b1 is not None:
            f.write(b1.astype(np.float32).tobytes())
    subprocess.run([str(harness), "derive", str(tmp / "in.bin"), str(tmp / "out.bin")],
                   check=True)
    raw = (tmp / "out.bin").read_bytes()
    n = d_in * d_ff
    ws = np.frombuffer(raw[:2 * n], np.float16).reshape(d_in, d_ff)
    w1t = np.frombuffer(raw[2 * n:6 * n], np.float32).reshape(d_ff, d_in)
    e = np.frombuffer(raw[6 * n:], np.float32).reshape(2, d_ff)
    return ws, w1t, e


@pytest.mark.parametrize("bias", [True, False])
def test_cpp_screen_equals_python_twin(harness: Path, tmp_path: Path, bias: bool) -> None:
    """Same float16 rounding (to nearest even: ties, subnormals, overflow included), same
    transpose, and the same bound up to its float32 rounding."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((48, 80)) * np.logspace(-9, 5, 80)).astype(np.float32)
    w1[0, :4] = [1 + 2.0**-11, 1 + 3 * 2.0**-11, 2.0**-25, 65520.0]  # ties, tiny, overflow
    b1 = rng.standard_normal(80).astype(np.float32) if bias else None
    ws, w1t, e = _derive(harness, tmp_path, w1, b1)
    want_ws, want_w1t, want_e = screen_inputs(w1, b1)
    np.testing.assert_array_equal(ws.view(np.uint16), want_ws.view(np.uint16))
    np.testing.assert_array_equal(w1t, want_w1t)
    np.testing.assert_allclose(e, want_e, rtol=1e-6)
    assert np.isinf(e[0, 3])  # a weight past float16's range is never screened out


def test_policy_leaves_the_screen_while_many_neurons_are_active(harness: Path) -> None:
    out = subprocess.run([str(harness), "policy"], capture_output=True, text=True,
                         check=True).stdout.strip()
    busy, sparse = out[:100], out[100:]
    assert busy.startswith("S") and busy.count("S") <= 100 // 32 + 2  # probes only
    assert sparse[-50:] == "S" * 50  # back on the screen once few neurons are active
