"""The int8 exact kernel (kernels/exact_q8.py) and the 8-bit MatMulNBits layout it reads
(fffc.contract.int8): weights quantized by ONNX Runtime's own quantizer (bits 8), the
reference computed in float64 on the matrices ONNX Runtime itself dequantizes (a MatMulNBits
node run on the identity), and the rows of skipped neurons poisoned."""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np
import pytest

from fffc.codegen.kernels.exact_q4 import Q4Dot
from fffc.codegen.kernels.exact_q8 import q8_inputs
from fffc.codegen.q4_build import has_int8_dots
from fffc.codegen.q8_build import Q8Kernel
from fffc.contract import int8 as q8
from fffc.contract.errors import CodegenError
from fffc.contract.kernels import SparseSpec
from fffc.contract.kinds import SparseMode, WeightBits
from fffc.verify import matmul_nbits as mn
from fffc.verify.reference import sparse_ffn
from tests.fixtures.sparse_kernels import ATOL, RTOL

KINDS = {"relu": None, "reglu": "none", "drelu": "relu"}  # the up activation (None: dense)
MARGIN = 1e-5  # |gate|, |up| of every neuron: no float32 sum flips a decision
VNNI = has_int8_dots()


def _spec(d_in: int, d_ff: int, d_out: int, kind: str, bias: bool, block: int,
          zero_points: bool, int8_x: bool = False) -> SparseSpec:
    up = KINDS[kind]
    return SparseSpec("relu", up or "none", SparseMode.EXACT, d_in, d_ff, d_out, bias, bias,
                      up is not None, bits=WeightBits.INT8, block=block,
                      zero_points=zero_points, int8_x=int8_x)


@functools.cache
def _kernel(spec: SparseSpec, dot: Q4Dot = Q4Dot.FLOAT32, mcpu: str | None = None) -> Q8Kernel:
    return Q8Kernel(spec, mcpu=mcpu, dot=dot)


@dataclass
class Case:
    spec: SparseSpec
    w1: q8.Q8Matrix  # MatMulNBits records as ONNX Runtime's quantizer wrote them
    w2: q8.Q8Matrix
    wu: q8.Q8Matrix | None
    b1: np.ndarray | None
    b2: np.ndarray | None
    deq: dict[str, np.ndarray]  # [K, N] as ONNX Runtime dequantizes them

    def inputs(self) -> dict[str, np.ndarray]:
        return q8_inputs(self.spec, self.w1, q8.columns(self.w2), self.wu, self.b1, self.b2)

    def reference(self, x: np.ndarray) -> np.ndarray:
        wu = None if self.wu is None else self.deq["WU"].T
        return sparse_ffn(x.astype(np.float64), self.deq["W1"].astype(np.float64), self.b1,
                          self.deq["W2"].astype(np.float64), self.b2,
                          None if wu is None else wu.astype(np.float64),
                          up_activation=self.spec.up_activation)

    def gates(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        xd = x.astype(np.float64)
        h = xd @ self.deq["W1"] + (0 if self.b1 is None else self.b1)
        return h, None if self.wu is None else xd @ self.deq["WU"]


def _case(d_in: int, d_ff: int, d_out: int, kind: str, zero_points: bool = False,
          block: int = 32, bias: bool = True, seed: int = 0, int8_x: bool = False) -> Case:
    """Random weights; the gate's pre-activation centred at −0.5 (a third positive), and
    neurons 2·block .. 4·block − 1 off whatever x (whole groups of the down projection's
    scales without an active neuron)."""
    rng = np.random.default_rng(seed)
    spec = _spec(d_in, d_ff, d_out, kind, bias, block, zero_points, int8_x)
    w1 = rng.standard_normal((d_in, d_ff)) / np.sqrt(d_in)
    w1[0] -= 0.5  # x[:, 0] is 1: a shift through a constant input
    w1[0, 2 * block:4 * block] = -40.0
    w = {"W1": w1, "W2": rng.standard_normal((d_ff, d_out)) / np.sqrt(d_ff),
         "WU": rng.standard_normal((d_in, d_ff)) / np.sqrt(d_in)}
    q = {k: mn.quantize8(np.asarray(v, np.float32), block, symmetric=not zero_points)
         for k, v in w.items() if k != "WU" or spec.gated}
    deq = {k: mn.dequantize(m) for k, m in q.items()}
    b1 = (rng.standard_normal(d_ff) * 0.1).astype(np.float32) if bias else None
    b2 = rng.standard_normal(d_out).astype(np.float32) if bias else None
    return Case(spec, q["W1"], q["W2"], q.get("WU"), b1, b2, deq)


def _x(case: Case, tokens: int, seed: int = 1) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((tokens, case.spec.d_in)).astype(np.float32)
    x[:, 0] = 1.0
    return x


@pytest.mark.parametrize("zero_points", [False, True], ids=["symmetric", "zero_points"])
@pytest.mark.parametrize("block", [16, 32, 128])
def test_layout_dequantizes_as_onnxruntime(block: int, zero_points: bool) -> None:
    """ONNX Runtime's quantizer with bits 8 writes one code a byte [N, K/block, block] and
    zero points one a byte (none: 128); the module reads them as ONNX Runtime's MatMulNBits
    computes, and the re-laid-out down projection gives the same values."""
    w = np.random.default_rng(3).standard_normal((3 * block, 64)).astype(np.float32)
    m = mn.quantize8(w, block, symmetric=not zero_points)
    assert m.codes.shape == (64, 3, block) and m.codes.dtype == np.uint8
    assert (m.zero_points is not None) == zero_points
    if zero_points:
        assert m.zero_points.shape == (64, 3)
    want = mn.dequantize(m)
    assert np.abs(want - w).max() < 0.05  # really the matrix, quantized to 8 bits
    np.testing.assert_array_equal(q8.dequantize(m), want)
    cols = q8.columns(m)
    assert cols.codes.shape == (3 * block, 64)  # neuron-major: one contiguous row each
    np.testing.assert_array_equal(q8.dequantize_columns(cols), want)


@pytest.mark.parametrize("zero_points", [False, True], ids=["symmetric", "zero_points"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_kernel_matches_dequantized_reference(kind: str, zero_points: bool) -> None:
    case = _case(256, 1024, 256, kind, zero_points, bias=kind == "relu")
    k = _kernel(case.spec)
    for tokens in (1, 3):
        x = _x(case, tokens)
        want = case.reference(x)
        assert np.abs(want).max() > 0.1
        np.testing.assert_allclose(k(x, case.inputs()), want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("block", [16, 64, 128])
def test_other_block_sizes(block: int) -> None:
    case = _case(256, 512, 64, "drelu", zero_points=block == 64, block=block, bias=False)
    x = _x(case, 1)
    np.testing.assert_allclose(_kernel(case.spec)(x, case.inputs()), case.reference(x),
                               rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("zero_points", [False, True], ids=["symmetric", "zero_points"])
def test_avx2_target(zero_points: bool) -> None:
    """Built for an AVX2 CPU (8 lanes, narrower output tiles); int8 dots refused there."""
    case = _case(256, 1024, 256, "drelu", zero_points, bias=False)
    k = _kernel(case.spec, mcpu="x86-64-v3")
    x = _x(case, 1)
    np.testing.assert_allclose(k(x, case.inputs()), case.reference(x), rtol=RTOL, atol=ATOL)
    with pytest.raises(CodegenError, match="VNNI"):
        Q8Kernel(case.spec, mcpu="x86-64-v3", dot=Q4Dot.INT8)


def _poisoned(case: Case, x: np.ndarray, rng) -> dict[str, np.ndarray]:
    """The kernel inputs with every row a skipped neuron must not read replaced: up rows
    (codes, NaN scales, zero points) of neurons whose gate is ≤ 0; the down column codes of
    neurons whose activation is 0; the down scales (and zero points) of groups with no
    active neuron."""
    h, u = case.gates(x)
    assert np.abs(h).min() > MARGIN
    gate_on = (h > 0).any(axis=0)
    active = gate_on.copy()
    if u is not None and case.spec.up_activation == "relu":
        assert np.abs(u[:, gate_on]).min() > MARGIN
        active &= ((h > 0) & (u > 0)).any(axis=0)
    inp = {k: None if v is None else v.copy() for k, v in case.inputs().items()}
    off, dead = ~gate_on, ~active
    if case.spec.gated:
        inp["WU"][off] = rng.integers(0, 256, inp["WU"][off].shape, dtype=np.uint8)
        inp["WUS"][off] = np.nan
        if inp["WUZ"] is not None:
            inp["WUZ"][off] = rng.integers(0, 256, inp["WUZ"][off].shape, dtype=np.uint8)
    inp["W2"][dead] = rng.integers(0, 256, inp["W2"][dead].shape, dtype=np.uint8)
    idle = ~active.reshape(-1, case.spec.block).any(axis=1)
    assert idle.any() and off.mean() > 0.3  # much to poison, whole groups among it
    inp["W2S"][idle] = np.nan
    if inp["W2Z"] is not None:
        inp["W2Z"][idle] = rng.integers(0, 256, inp["W2Z"][idle].shape, dtype=np.uint8)
    return inp


@pytest.mark.parametrize("zero_points", [False, True], ids=["symmetric", "zero_points"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_skipped_neurons_rows_are_never_read(kind: str, zero_points: bool) -> None:
    case = _case(256, 1024, 256, kind, zero_points, bias=kind == "relu")
    k = _kernel(case.spec)
    x = _x(case, 1, seed=4)
    clean = k(x, case.inputs())
    poisoned = k(x, _poisoned(case, x, np.random.default_rng(5)))
    np.testing.assert_array_equal(poisoned, clean)
    np.testing.assert_allclose(clean, case.reference(x), rtol=RTOL, atol=ATOL)


def _quantized_x(x: np.ndarray, block: int) -> np.ndarray:
    """x as accuracy_level 4 sees it: per block of ``block`` inputs, round(x · 127 / max|x|)
    times max|x| / 127 (float64)."""
    xb = x.astype(np.float64).reshape(x.shape[0], -1, block)
    am = np.abs(xb).max(axis=-1, keepdims=True)
    inv = np.divide(127.0, am, out=np.zeros_like(am), where=am > 0)
    return (np.rint(xb * inv) * (am / 127)).reshape(x.shape)


@pytest.mark.skipif(not VNNI, reason="int8 dots need AVX-512 VNNI")
@pytest.mark.parametrize("zero_points", [False, True], ids=["symmetric", "zero_points"])
@pytest.mark.parametrize("block", [16, 32, 64, 128])  # 4, 2, 1, 1/2 blocks per 64 code bytes
def test_int8_dots_match_quantized_activations(block: int, zero_points: bool) -> None:
    """Int8 dots (VNNI, the unsigned codes times int8 x): the float64 FFN whose gate and up
    projections see x quantized per block (the down projection the float activations); the
    skipped rows (zero points among them) never read."""
    case = _case(256, 1024, 256, "drelu", zero_points, block=block, bias=False, int8_x=True)
    k = _kernel(case.spec, Q4Dot.INT8)
    x = _x(case, 2)
    xq = _quantized_x(x, block)
    assert np.abs(case.gates(xq)[0]).min() > MARGIN
    want = case.reference(xq)
    np.testing.assert_allclose(k(x, case.inputs()), want, rtol=RTOL, atol=ATOL)
    assert np.abs(want - case.reference(x)).max() > 1e-4  # the rounding of x matters
    x = _x(case, 1, seed=4)
    clean = k(x, case.inputs())
    xq = _quantized_x(x, block).astype(np.float32)
    np.testing.assert_array_equal(k(x, _poisoned(case, xq, np.random.default_rng(5))), clean)


@pytest.mark.parametrize("mcpu", [None, "x86-64-v3"], ids=["native", "avx2"])
def test_float_dots_on_x_rounded_to_int8(mcpu) -> None:
    """``int8_x`` (SparseFFN's accuracy_level 4) with float32 dots (CPUs without the int8
    dot): x rounded per block, scaled back, then the float FFN."""
    case = _case(256, 1024, 256, "relu", True, bias=True, int8_x=True)
    k = _kernel(case.spec, Q4Dot.FLOAT32, mcpu)
    x = _x(case, 2)
    xq = _quantized_x(x, 32)
    assert np.abs(case.gates(xq)[0]).min() > MARGIN
    np.testing.assert_allclose(k(x, case.inputs()), case.reference(xq), rtol=RTOL, atol=ATOL)


def test_refuses_int4_specs_and_odd_shapes() -> None:
    spec = _spec(256, 1024, 256, "drelu", False, 32, False)
    with pytest.raises(CodegenError, match="bits 4, not 8"):
        Q8Kernel(replace(spec, bits=WeightBits.INT4))
    with pytest.raises(CodegenError, match="multiple of 32"):
        Q8Kernel(replace(spec, d_out=48))


def test_larger_shape_drelu_1024_4096() -> None:
    """More phase-1 tasks and wider output tiles (the reference on fffc.contract.int8's
    dequantization, equal to ONNX Runtime's as the layout test shows: its identity run would
    be 4096² floats)."""
    rng = np.random.default_rng(11)
    spec = _spec(1024, 4096, 1024, "drelu", False, 32, True)
    w1 = rng.standard_normal((1024, 4096)) / 32
    w1[0] -= 0.5
    w = {"W1": w1, "W2": rng.standard_normal((4096, 1024)) / 64,
         "WU": rng.standard_normal((1024, 4096)) / 32}
    q = {k: mn.quantize8(np.asarray(v, np.float32), 32, symmetric=False) for k, v in w.items()}
    deq = {k: q8.dequantize(m) for k, m in q.items()}
    case = Case(spec, q["W1"], q["W2"], q["WU"], None, None, deq)
    x = _x(case, 1)
    np.testing.assert_allclose(_kernel(spec)(x, case.inputs()), case.reference(x),
                               rtol=RTOL, atol=ATOL)


def test_x86_variant_and_assembly() -> None:
    """The x86 family's int8 variant takes the int8 dots exactly where x is rounded to int8
    (accuracy_level 4) and the CPU has AVX-512 VNNI; those dots are vpdpbusd."""
    from fffc.codegen.q8_build import assembly, q8_build
    from fffc.codegen.schedules import family

    x86 = family("x86")
    spec = _spec(256, 1024, 256, "drelu", False, 32, False)
    for int8_x in (False, True):
        (v,) = x86.sparse_variants(replace(spec, int8_x=int8_x), x86.target(None))
        assert v.tiling.dot is (Q4Dot.INT8 if int8_x and VNNI else Q4Dot.FLOAT32)
    (v,) = x86.sparse_variants(replace(spec, int8_x=True), x86.target("x86-64-v3"))
    assert v.tiling.dot is Q4Dot.FLOAT32  # AVX2: float dots on the rounded x
    asm = assembly(q8_build(replace(spec, int8_x=True), "x86", "sapphirerapids",
                            dot=Q4Dot.INT8))
    assert "vpdpbusd" in asm


@pytest.mark.parametrize("zero_points", [False, True], ids=["symmetric", "zero_points"])
def test_reference_reads_the_op_inputs_as_onnxruntime(zero_points: bool) -> None:
    """The NumPy reference's reading of SparseFFN's bits-8 inputs (``int4.float_weights``,
    which tells 8-bit codes from 4-bit ones by W2's shape) gives ONNX Runtime's matrices."""
    from fffc.contract.int4 import float_weights, weight_bits

    case = _case(128, 256, 64, "drelu", zero_points, bias=False)
    w = {k: v for k, v in case.inputs().items() if v is not None}
    assert weight_bits(w) is WeightBits.INT8
    got = float_weights(w)
    np.testing.assert_array_equal(got["W1"], case.deq["W1"])
    np.testing.assert_array_equal(got["W2"], case.deq["W2"])
    np.testing.assert_array_equal(got["WU"], case.deq["WU"].T)
