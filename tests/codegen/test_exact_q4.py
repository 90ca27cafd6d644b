"""The int4 exact kernel (kernels/exact_q4.py) and the MatMulNBits layout it reads
(q4_layout.py): weights quantized by ONNX Runtime's own quantizer, the reference computed in
float64 on the matrices ONNX Runtime itself dequantizes (a MatMulNBits node run on the
identity), and the rows of skipped neurons poisoned."""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np
import pytest

from fffc.codegen import q4_layout as ql
from fffc.codegen.kernels.exact_q4 import Q4Dot, exact_q4_primfunc, q4_inputs, q4_tiling
from fffc.codegen.q4_build import Q4Kernel, has_int8_dots
from fffc.contract.errors import CodegenError
from fffc.contract.kernels import SparseSpec
from fffc.contract.kinds import SparseMode
from fffc.verify import matmul_nbits as mn
from fffc.verify.reference import sparse_ffn
from tests.fixtures.sparse_kernels import ATOL, RTOL

KINDS = {"relu": None, "reglu": "none", "drelu": "relu"}  # the up activation (None: dense)
MARGIN = 1e-5  # |gate|, |up| of every neuron: no float32 sum flips a decision


def _spec(d_in: int, d_ff: int, d_out: int, kind: str, bias: bool) -> SparseSpec:
    up = KINDS[kind]
    return SparseSpec("relu", up or "none", SparseMode.EXACT, d_in, d_ff, d_out, bias, bias,
                      up is not None)


@functools.cache
def _kernel(spec: SparseSpec, fmt: ql.Q4Format, dot: Q4Dot = Q4Dot.FLOAT32) -> Q4Kernel:
    return Q4Kernel(spec, fmt, dot=dot)


@dataclass
class Case:
    spec: SparseSpec
    fmt: ql.Q4Format
    w1: ql.Q4Matrix  # MatMulNBits records as ONNX Runtime's quantizer wrote them
    w2: ql.Q4Matrix
    wu: ql.Q4Matrix | None
    b1: np.ndarray | None
    b2: np.ndarray | None
    deq: dict[str, np.ndarray]  # [K, N] as ONNX Runtime dequantizes them

    def inputs(self) -> dict[str, np.ndarray]:
        return q4_inputs(self.spec, self.w1, ql.columns(self.w2), self.wu, self.b1, self.b2)

    def reference(self, x: np.ndarray) -> np.ndarray:
        wu = None if self.wu is None else self.deq["WU"].T
        return sparse_ffn(x, self.deq["W1"], self.b1, self.deq["W2"], self.b2, wu,
                          up_activation=self.spec.up_activation)

    def gates(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """float64 gate pre-activations and up projections [tokens, d_ff]."""
        xd = x.astype(np.float64)
        h = xd @ self.deq["W1"] + (0 if self.b1 is None else self.b1)
        return h, None if self.wu is None else xd @ self.deq["WU"]


def _case(d_in: int, d_ff: int, d_out: int, kind: str, zero_points: bool = False,
          block: int = 32, bias: bool = True, seed: int = 0, ort_dequantize: bool = True) -> Case:
    """Random weights; the gate's pre-activation centred at −0.5 (a third positive), and
    neurons 2·block .. 4·block − 1 off whatever x (whole groups of the down projection's
    scales without an active neuron)."""
    rng = np.random.default_rng(seed)
    spec = _spec(d_in, d_ff, d_out, kind, bias)
    fmt = ql.Q4Format(block, zero_points)
    w1 = rng.standard_normal((d_in, d_ff)) / np.sqrt(d_in)
    w1[0] -= 0.5  # x[:, 0] is 1: a shift through a constant input
    w1[0, 2 * block:4 * block] = -40.0
    w = {"W1": w1, "W2": rng.standard_normal((d_ff, d_out)) / np.sqrt(d_ff),
         "WU": rng.standard_normal((d_in, d_ff)) / np.sqrt(d_in)}
    q = {k: mn.quantize(np.asarray(v, np.float32), block, symmetric=not zero_points)
         for k, v in w.items() if k != "WU" or spec.gated}
    deq = {k: (mn.dequantize(m) if ort_dequantize else ql.dequantize(m)) for k, m in q.items()}
    b1 = (rng.standard_normal(d_ff) * 0.1).astype(np.float32) if bias else None
    b2 = rng.standard_normal(d_out).astype(np.float32) if bias else None
    return Case(spec, fmt, q["W1"], q["W2"], q.get("WU"), b1, b2, deq)


def _x(case: Case, tokens: int, seed: int = 1) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((tokens, case.spec.d_in)).astype(np.float32)
    x[:, 0] = 1.0
    return x


@pytest.mark.parametrize("zero_points", [False, True], ids=["symmetric", "zero_points"])
@pytest.mark.parametrize("block", [16, 32, 64])
def test_layout_dequantizes_as_onnxruntime(block: int, zero_points: bool) -> None:
    """The module's reading of MatMulNBits (low nibble first, zero point 8 or packed zero
    points) gives ONNX Runtime's values, and the re-laid-out down projection the same ones."""
    w = np.random.default_rng(3).standard_normal((3 * block, 64)).astype(np.float32)
    m = mn.quantize(w, block, symmetric=not zero_points)
    assert (m.zero_points is not None) == zero_points
    want = mn.dequantize(m)
    assert np.abs(want - w).max() < 0.5  # really the matrix, quantized
    np.testing.assert_array_equal(ql.dequantize(m), want)
    cols = ql.columns(m)
    assert cols.codes.shape == (3 * block, 32)  # neuron-major: one contiguous row each
    np.testing.assert_array_equal(ql.dequantize_columns(cols), want)


@pytest.mark.parametrize("zero_points", [False, True], ids=["symmetric", "zero_points"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_kernel_matches_dequantized_reference(kind: str, zero_points: bool) -> None:
    case = _case(256, 1024, 256, kind, zero_points, bias=kind == "relu")
    k = _kernel(case.spec, case.fmt)
    for tokens in (1, 3):
        x = _x(case, tokens)
        y = k(x, case.inputs())
        want = case.reference(x)
        assert np.abs(want).max() > 0.1
        np.testing.assert_allclose(y, want, rtol=RTOL, atol=ATOL)


def test_without_the_permute_table() -> None:
    """The widen-subtract-convert dots (AVX2 CPUs) on symmetric codes too."""
    case = _case(256, 1024, 256, "drelu", bias=False)
    tiling = replace(q4_tiling(case.spec, 16), lut=False)
    x = _x(case, 1)
    np.testing.assert_allclose(Q4Kernel(case.spec, case.fmt, tiling=tiling)(x, case.inputs()),
                               case.reference(x), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("zero_points", [False, True], ids=["symmetric", "zero_points"])
def test_avx2_target(zero_points: bool) -> None:
    """Built for an AVX2 CPU (8 lanes: no permute table, narrower output tiles); int8 dots
    refused there."""
    case = _case(256, 1024, 256, "drelu", zero_points, bias=False)
    k = Q4Kernel(case.spec, case.fmt, mcpu="x86-64-v3")
    assert not k.tiling.lut and k.tiling.cw == 128
    x = _x(case, 1)
    np.testing.assert_allclose(k(x, case.inputs()), case.reference(x), rtol=RTOL, atol=ATOL)
    with pytest.raises(CodegenError, match="VNNI"):
        Q4Kernel(case.spec, ql.Q4Format(), mcpu="x86-64-v3", dot=Q4Dot.INT8)


@pytest.mark.parametrize("block", [16, 64])
def test_other_block_sizes(block: int) -> None:
    case = _case(128, 512, 64, "drelu", block=block, bias=False)
    x = _x(case, 1)
    np.testing.assert_allclose(_kernel(case.spec, case.fmt)(x, case.inputs()),
                               case.reference(x), rtol=RTOL, atol=ATOL)


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
    idle = ~active.reshape(-1, case.fmt.block).any(axis=1)
    assert idle.any() and off.mean() > 0.3  # much to poison, whole groups among it
    inp["W2S"][idle] = np.nan
    if inp["W2Z"] is not None:
        inp["W2Z"][idle] = rng.integers(0, 256, inp["W2Z"][idle].shape, dtype=np.uint8)
    return inp


@pytest.mark.parametrize("zero_points", [False, True], ids=["symmetric", "zero_points"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_skipped_neurons_rows_are_never_read(kind: str, zero_points: bool) -> None:
    case = _case(256, 1024, 256, kind, zero_points, bias=kind == "relu")
    k = _kernel(case.spec, case.fmt)
    x = _x(case, 1, seed=4)
    clean = k(x, case.inputs())
    poisoned = k(x, _poisoned(case, x, np.random.default_rng(5)))
    np.testing.assert_array_equal(poisoned, clean)
    np.testing.assert_allclose(clean, case.reference(x), rtol=RTOL, atol=ATOL)


def test_llm_shape_drelu_2048_8192() -> None:
    """The benchmark's shape (the reference on q4_layout's dequantization, equal to ONNX
    Runtime's as the layout test shows: its identity run would be 8192² floats)."""
    case = _case(2048, 8192, 2048, "drelu", bias=False, ort_dequantize=False)
    x = _x(case, 1)
    y = _kernel(case.spec, case.fmt)(x, case.inputs())
    np.testing.assert_allclose(y, case.reference(x), rtol=RTOL, atol=ATOL)


def _quantized_x(x: np.ndarray, block: int) -> np.ndarray:
    """x as the int8 dots see it: per block of ``block`` inputs, round(x · 127 / max|x|)
    times max|x| / 127 (float64)."""
    xb = x.astype(np.float64).reshape(x.shape[0], -1, block)
    am = np.abs(xb).max(axis=-1, keepdims=True)
    inv = np.divide(127.0, am, out=np.zeros_like(am), where=am > 0)
    return (np.rint(xb * inv) * (am / 127)).reshape(x.shape)


VNNI = has_int8_dots()


@pytest.mark.skipif(not VNNI, reason="int8 dots need AVX-512 VNNI")
@pytest.mark.parametrize("block", [32, 64])
@pytest.mark.parametrize("kind", list(KINDS))
def test_int8_dots_match_quantized_activations(kind: str, block: int) -> None:
    """Int8 dots: the float64 FFN whose gate and up projections see x quantized per block
    (the down projection the float activations)."""
    case = _case(256, 1024, 256, kind, block=block, bias=kind == "relu")
    k = _kernel(case.spec, case.fmt, Q4Dot.INT8)
    for tokens in (1, 2):
        x = _x(case, tokens)
        xq = _quantized_x(x, block)
        assert np.abs(case.gates(xq)[0]).min() > MARGIN
        want = case.reference(xq)
        np.testing.assert_allclose(k(x, case.inputs()), want, rtol=RTOL, atol=ATOL)
        assert np.abs(want - case.reference(x)).max() > 1e-4  # the rounding of x matters


@pytest.mark.skipif(not VNNI, reason="int8 dots need AVX-512 VNNI")
def test_int8_dots_never_read_skipped_rows() -> None:
    case = _case(256, 1024, 256, "drelu", bias=False)
    k = _kernel(case.spec, case.fmt, Q4Dot.INT8)
    x = _x(case, 1, seed=4)
    clean = k(x, case.inputs())
    xq = _quantized_x(x, case.fmt.block).astype(np.float32)
    poisoned = k(x, _poisoned(case, xq, np.random.default_rng(5)))
    np.testing.assert_array_equal(poisoned, clean)


@pytest.mark.skipif(not VNNI, reason="int8 dots need AVX-512 VNNI")
@pytest.mark.parametrize("block", [16, 32, 64, 128])  # 8, 4, 2, 1 blocks per 64 code bytes
def test_int8_dots_with_zero_points(block: int) -> None:
    """Zero points in the int8 dots (each lane's block's own, subtracted times Σ xq): the
    quantized-x reference, and skipped rows (zero points among them) never read."""
    case = _case(256, 1024, 256, "drelu", zero_points=True, block=block, bias=False)
    k = _kernel(case.spec, case.fmt, Q4Dot.INT8)
    x = _x(case, 2)
    xq = _quantized_x(x, block)
    assert np.abs(case.gates(xq)[0]).min() > MARGIN
    np.testing.assert_allclose(k(x, case.inputs()), case.reference(xq), rtol=RTOL, atol=ATOL)
    x = _x(case, 1, seed=4)
    clean = k(x, case.inputs())
    xq = _quantized_x(x, block).astype(np.float32)
    np.testing.assert_array_equal(k(x, _poisoned(case, xq, np.random.default_rng(5))), clean)


@pytest.mark.parametrize("mcpu", [None, "x86-64-v3"], ids=["native", "avx2"])
@pytest.mark.parametrize("zero_points", [False, True], ids=["symmetric", "zero_points"])
def test_float_dots_on_x_rounded_to_int8(zero_points: bool, mcpu) -> None:
    """A format with ``int8_x`` (SparseFFN's accuracy_level 4) built with float32 dots (a
    CPU without the int8 dot): the same quantized-x function as the int8 dots compute."""
    case = _case(256, 1024, 256, "drelu", zero_points, bias=False)
    fmt = replace(case.fmt, int8_x=True)
    k = Q4Kernel(case.spec, fmt, mcpu=mcpu)
    x = _x(case, 2, seed=3)
    xq = _quantized_x(x, case.fmt.block)
    assert np.abs(case.gates(xq)[0]).min() > MARGIN
    want = case.reference(xq)
    np.testing.assert_allclose(k(x, case.inputs()), want, rtol=RTOL, atol=ATOL)
    assert np.abs(want - case.reference(x)).max() > 1e-4  # the rounding of x matters


def test_contract_rounds_x_as_the_kernels() -> None:
    """``fffc.contract.int4.quantize_x`` (the op's NumPy reference and fallback rule) is the
    rounding the tests above hold the kernels to, ties included."""
    from fffc.contract.int4 import quantize_x

    x = np.random.default_rng(8).standard_normal((3, 128)).astype(np.float32)
    x[0, :32] = 0.0  # an all-zero block
    x[1, 32:64] = np.linspace(-1, 1, 32, dtype=np.float32) * (127 / 127.0)
    x[1, 40] = 0.5 * (1 / 127)  # exactly half a step: ties go to even
    np.testing.assert_allclose(quantize_x(x, 32), _quantized_x(x, 32), rtol=1e-6, atol=1e-7)


def test_int8_dots_refuse_rows_shorter_than_two_steps() -> None:
    s = _spec(64, 1024, 256, "drelu", False)
    with pytest.raises(CodegenError, match="multiple of 128"):
        exact_q4_primfunc(s, ql.Q4Format(32), q4_tiling(s, 16), "k", Q4Dot.INT8)
