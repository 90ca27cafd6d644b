"""The int8 exact kernel (kernels/exact_q8.py) for aarch64: cross-compiled with the arm
family's target, linked into a small harness and run under qemu-aarch64
(tests/fixtures/aarch64_kernels.py), against the float64 FFN on the matrices ONNX Runtime
dequantizes, with the rows of skipped neurons poisoned. NEON float32 dots (any aarch64 CPU)
and int8 dots by ``sdot`` (signed by signed: the codes shifted to code − 128), symmetric and
zero-point weights, blocks 32 and 128."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from fffc.codegen.kernels.exact_q4 import Q4Dot
from fffc.codegen.q8_build import SYMBOL, assembly, q8_build, write_object
from fffc.contract.errors import CodegenError
from tests.codegen.test_exact_q8 import KINDS, MARGIN, Case, _case, _poisoned, _quantized_x, _x
from tests.fixtures import aarch64_kernels as aarch64
from tests.fixtures.sparse_kernels import ATOL, RTOL

MISSING = aarch64.missing_tools()
needs_qemu = pytest.mark.skipif(MISSING is not None, reason=f"aarch64 under qemu: {MISSING}")
DOTPROD = "neoverse-n1"  # ARMv8.2 with dotprod (sdot)


class Arm:
    """The case's kernel built for aarch64 and run under qemu."""

    def __init__(self, case: Case, dot: Q4Dot, mcpu: str | None, tmp: Path):
        self.case, self.tmp = case, tmp
        self.build = q8_build(case.spec, "arm", mcpu, dot=dot)
        self.exe = aarch64.link(write_object(self.build, tmp / "kernel.o"), SYMBOL, tmp / "kernel")

    def __call__(self, x: np.ndarray, inputs: dict[str, np.ndarray]) -> np.ndarray:
        args = [x, *(inputs[n] for n in self.build.names[1:-1])]
        out = np.full((x.shape[0], self.case.spec.d_out), np.nan, np.float32)
        return aarch64.run(self.exe, args, out, self.tmp)


def _clear_x(case: Case, quantized: bool) -> tuple[np.ndarray, np.ndarray]:
    """One token (and as the gate sees it) whose gates, and ups of open gates, are all
    MARGIN away from 0: the first of a few seeds."""
    for seed in range(4, 12):
        x = _x(case, 1, seed=seed)
        xg = _quantized_x(x, case.spec.block).astype(np.float32) if quantized else x
        h, u = case.gates(xg)
        if np.abs(h).min() > MARGIN and (u is None or np.abs(u[h > 0]).min() > MARGIN):
            return x, xg
    raise AssertionError("no token clear of the decision boundary")


@needs_qemu
@pytest.mark.parametrize("block", [32, 128])
@pytest.mark.parametrize("zero_points", [False, True], ids=["symmetric", "zero_points"])
@pytest.mark.parametrize("kind", ["relu", "drelu"])
def test_float32_dots_under_qemu(kind: str, zero_points: bool, block: int, tmp_path) -> None:
    """NEON float32 dots (generic ARMv8.2-A): the dequantized float FFN, and bit-identical
    output with every row a skipped neuron must not read poisoned."""
    case = _case(256, 1024, 256, kind, zero_points, block=block, bias=kind == "relu")
    k = Arm(case, Q4Dot.FLOAT32, None, tmp_path)
    x = _x(case, 2)
    want = case.reference(x)
    assert np.abs(want).max() > 0.1
    np.testing.assert_allclose(k(x, case.inputs()), want, rtol=RTOL, atol=ATOL)
    x, _ = _clear_x(case, quantized=False)
    clean = k(x, case.inputs())
    np.testing.assert_allclose(clean, case.reference(x), rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(k(x, _poisoned(case, x, np.random.default_rng(5))), clean)


@needs_qemu
@pytest.mark.parametrize("kind, zero_points, block",
                         [("drelu", False, 32), ("drelu", True, 32), ("relu", True, 128),
                          ("reglu", False, 128), ("drelu", True, 16)],
                         ids=lambda v: {False: "symmetric", True: "zero_points"}.get(v, v))
def test_sdot_under_qemu(kind: str, zero_points: bool, block: int, tmp_path) -> None:
    """Int8 dots by sdot (a dotprod CPU): the float64 FFN whose gate and up projections see
    x quantized per block (ONNX Runtime's accuracy_level 4), and skipped rows never read."""
    assert kind in KINDS
    case = _case(256, 1024, 256, kind, zero_points, block=block, bias=kind == "relu",
                 int8_x=True)
    k = Arm(case, Q4Dot.INT8, DOTPROD, tmp_path)
    x = _x(case, 2)
    xq = _quantized_x(x, block)
    assert np.abs(case.gates(xq)[0]).min() > MARGIN
    want = case.reference(xq)
    np.testing.assert_allclose(k(x, case.inputs()), want, rtol=RTOL, atol=ATOL)
    assert np.abs(want - case.reference(x)).max() > 1e-4  # the rounding of x matters
    x, xq = _clear_x(case, quantized=True)
    clean = k(x, case.inputs())
    np.testing.assert_array_equal(k(x, _poisoned(case, xq, np.random.default_rng(5))), clean)


def test_sdot_needs_dotprod_and_is_emitted() -> None:
    """Compiled only: sdot on 4 lanes where the CPU has dotprod; refused where it has not."""
    case = _case(256, 1024, 256, "drelu", False, block=32, bias=False, int8_x=True)
    with pytest.raises(CodegenError, match="dotprod"):
        q8_build(case.spec, "arm", "cortex-a72", dot=Q4Dot.INT8)
    asm = assembly(q8_build(case.spec, "arm", DOTPROD, dot=Q4Dot.INT8))
    assert re.findall(r"\bsdot\s+v\d+\.4s", asm)
