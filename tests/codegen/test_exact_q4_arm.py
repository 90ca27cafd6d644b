"""The int4 exact kernel (kernels/exact_q4.py) for aarch64: cross-compiled with the arm
family's target, linked into a small harness and run under qemu-aarch64
(tests/fixtures/aarch64_kernels.py), against the float64 FFN on the matrices ONNX Runtime
dequantizes, with the rows of skipped neurons poisoned. NEON float32 dots (any aarch64 CPU)
and int8 dots by ``sdot`` (CPUs with dotprod), symmetric and zero-point weights, blocks 32
and 128."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest

from fffc.codegen.kernels.exact_q4 import Q4Dot, int4_spec
from fffc.codegen.q4_build import (
    assembly,
    has_int8_dots,
    q4_build,
)
from fffc.codegen.schedules import family
from fffc.contract.errors import CodegenError
from tests.fixtures import aarch64_kernels as aarch64
from tests.fixtures.q4_cases import (
    KINDS,
    MARGIN,
    ArmQ4,
    ExactCase,
    exact_case,
    exact_x,
    poisoned_exact,
    quantized_x,
)
from tests.fixtures.sparse_kernels import ATOL, RTOL

MISSING = aarch64.missing_tools()
needs_qemu = pytest.mark.skipif(MISSING is not None, reason=f"aarch64 under qemu: {MISSING}")
DOTPROD = "neoverse-n1"  # ARMv8.2 with dotprod (sdot)


def _arm_case(kind: str, zero_points: bool, block: int) -> ExactCase:
    return exact_case(256, 1024, 256, kind, zero_points, block=block, bias=kind == "relu")


def _clear_x(case: ExactCase, quantized: bool) -> tuple[np.ndarray, np.ndarray]:
    """One token (and as the gate sees it) whose gates, and ups of open gates, are all
    MARGIN away from 0 (the poisoning reads the decisions off the float64 reference):
    the first of a few seeds."""
    for seed in range(4, 12):
        x = exact_x(case.spec.d_in, 1, seed=seed)
        xg = quantized_x(x, case.fmt.block).astype(np.float32) if quantized else x
        h, u = case.gates(xg)
        if np.abs(h).min() > MARGIN and (u is None or np.abs(u[h > 0]).min() > MARGIN):
            return x, xg
    raise AssertionError("no token clear of the decision boundary")


@needs_qemu
@pytest.mark.parametrize("block", [32, 128])
@pytest.mark.parametrize("zero_points", [False, True], ids=["symmetric", "zero_points"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_float32_dots_under_qemu(kind: str, zero_points: bool, block: int, tmp_path) -> None:
    """NEON float32 dots (generic ARMv8.2-A): the dequantized float FFN, and bit-identical
    output with every row a skipped neuron must not read poisoned."""
    case = _arm_case(kind, zero_points, block)
    k = ArmQ4(case.spec, case.fmt, Q4Dot.FLOAT32, None, tmp_path)
    for tokens in (1, 2):
        x = exact_x(case.spec.d_in, tokens)
        want = case.reference(x)
        assert np.abs(want).max() > 0.1
        np.testing.assert_allclose(k(x, case.inputs()), want, rtol=RTOL, atol=ATOL)
    x, _ = _clear_x(case, quantized=False)
    clean = k(x, case.inputs())
    np.testing.assert_allclose(clean, case.reference(x), rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(k(x, poisoned_exact(case, x, np.random.default_rng(5))), clean)


SDOT_CASES = [(kind, zp, block) for kind in KINDS for zp in (False, True) for block in (32, 128)]


@needs_qemu
@pytest.mark.parametrize("kind, zero_points, block",
                         [*SDOT_CASES, ("drelu", True, 16)],  # 16: 2 blocks per sdot
                         ids=lambda v: {False: "symmetric", True: "zero_points"}.get(v, v))
def test_sdot_under_qemu(kind: str, zero_points: bool, block: int, tmp_path) -> None:
    """Int8 dots by sdot (a dotprod CPU): the float64 FFN whose gate and up projections see
    x quantized per block (ONNX Runtime's accuracy_level 4), and skipped rows never read."""
    case = _arm_case(kind, zero_points, block)
    k = ArmQ4(case.spec, case.fmt, Q4Dot.INT8, DOTPROD, tmp_path)
    for tokens in (1, 2):
        x = exact_x(case.spec.d_in, tokens)
        xq = quantized_x(x, block)
        assert np.abs(case.gates(xq)[0]).min() > MARGIN
        want = case.reference(xq)
        np.testing.assert_allclose(k(x, case.inputs()), want, rtol=RTOL, atol=ATOL)
        assert np.abs(want - case.reference(x)).max() > 1e-4  # the rounding of x matters
    x, xq = _clear_x(case, quantized=True)
    clean = k(x, case.inputs())
    np.testing.assert_array_equal(k(x, poisoned_exact(case, xq, np.random.default_rng(5))), clean)


@pytest.mark.parametrize("mcpu, dotprod", [(None, False), ("cortex-a53", False),
                                           ("cortex-a72", False), ("cortex-a76", True),
                                           ("neoverse-n1", True)])
def test_int8_dots_where_the_cpu_has_dotprod(mcpu: str | None, dotprod: bool) -> None:
    """sdot is ARMv8.2's optional dotprod: an artifact's int4 kernel for x rounded to int8
    (accuracy_level 4) takes the int8 dots only on CPUs that have it (or where --mattr adds
    it), float32 dots on the rounded x elsewhere."""
    arm = family("arm")
    case = _arm_case("drelu", False, 32)
    spec = replace(int4_spec(case.spec, case.fmt), int8_x=True)
    assert has_int8_dots(mcpu, "arm") is dotprod
    (variant,) = arm.sparse_variants(spec, arm.target(mcpu))
    assert variant.tiling.dot is (Q4Dot.INT8 if dotprod else Q4Dot.FLOAT32)
    if not dotprod:
        with pytest.raises(CodegenError, match="dotprod"):
            q4_build(case.spec, case.fmt, "arm", mcpu, dot=Q4Dot.INT8)
    (variant,) = arm.sparse_variants(spec, arm.target(None, ("+dotprod",)))
    assert variant.tiling.dot is Q4Dot.INT8


@pytest.mark.parametrize("dot, mcpu", [(Q4Dot.FLOAT32, None), (Q4Dot.INT8, DOTPROD)])
def test_arm_assembly(dot: Q4Dot, mcpu: str | None) -> None:
    """Compiled only: the int8 kernel's dots are sdot on 4 lanes, the float32 kernel's fmla
    on 4 lanes (no sdot)."""
    case = _arm_case("drelu", False, 32)
    asm = assembly(q4_build(case.spec, case.fmt, "arm", mcpu, dot=dot))
    sdots = len(re.findall(r"\bsdot\s+v\d+\.4s", asm))
    assert (sdots > 0) is (dot is Q4Dot.INT8)
    assert len(re.findall(r"\bfmla\s+v\d+\.4s", asm)) >= 8
