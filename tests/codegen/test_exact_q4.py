"""The int4 exact kernel (kernels/exact_q4.py) and the MatMulNBits layout it reads
(q4_layout.py): weights quantized by ONNX Runtime's own quantizer, the reference computed in
float64 on the matrices ONNX Runtime itself dequantizes (a MatMulNBits node run on the
identity), and the rows of skipped neurons poisoned."""

from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np
import pytest

from fffc.codegen import q4_layout as ql
from fffc.codegen.kernels.exact_q4 import Q4Dot, exact_q4_primfunc, q4_tiling
from fffc.codegen.q4_build import Q4Kernel, has_int8_dots
from fffc.contract.errors import CodegenError
from fffc.contract.kernels import SparseSpec
from fffc.verify import matmul_nbits as mn
from tests.fixtures.q4_cases import (
    KINDS,
    MARGIN,
    exact_case,
    exact_spec,
    exact_x,
    poisoned_exact,
    quantized_x,
)
from tests.fixtures.sparse_kernels import ATOL, RTOL


@functools.cache
def _kernel(spec: SparseSpec, fmt: ql.Q4Format, dot: Q4Dot = Q4Dot.FLOAT32) -> Q4Kernel:
    return Q4Kernel(spec, fmt, dot=dot)


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
    case = exact_case(256, 1024, 256, kind, zero_points, bias=kind == "relu")
    k = _kernel(case.spec, case.fmt)
    for tokens in (1, 3):
        x = exact_x(case.spec.d_in, tokens)
        y = k(x, case.inputs())
        want = case.reference(x)
        assert np.abs(want).max() > 0.1
        np.testing.assert_allclose(y, want, rtol=RTOL, atol=ATOL)


def test_without_the_permute_table() -> None:
    """The widen-subtract-convert dots (AVX2 CPUs) on symmetric codes too."""
    case = exact_case(256, 1024, 256, "drelu", bias=False)
    tiling = replace(q4_tiling(case.spec, 16), lut=False)
    x = exact_x(case.spec.d_in, 1)
    np.testing.assert_allclose(Q4Kernel(case.spec, case.fmt, tiling=tiling)(x, case.inputs()),
                               case.reference(x), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("zero_points", [False, True], ids=["symmetric", "zero_points"])
def test_avx2_target(zero_points: bool) -> None:
    """Built for an AVX2 CPU (8 lanes: no permute table, narrower output tiles); int8 dots
    refused there."""
    case = exact_case(256, 1024, 256, "drelu", zero_points, bias=False)
    k = Q4Kernel(case.spec, case.fmt, mcpu="x86-64-v3")
    assert not k.tiling.lut and k.tiling.cw == 128
    x = exact_x(case.spec.d_in, 1)
    np.testing.assert_allclose(k(x, case.inputs()), case.reference(x), rtol=RTOL, atol=ATOL)
    with pytest.raises(CodegenError, match="VNNI"):
        Q4Kernel(case.spec, ql.Q4Format(), mcpu="x86-64-v3", dot=Q4Dot.INT8)


@pytest.mark.parametrize("block", [16, 64])
def test_other_block_sizes(block: int) -> None:
    case = exact_case(128, 512, 64, "drelu", block=block, bias=False)
    x = exact_x(case.spec.d_in, 1)
    np.testing.assert_allclose(_kernel(case.spec, case.fmt)(x, case.inputs()),
                               case.reference(x), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("zero_points", [False, True], ids=["symmetric", "zero_points"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_skipped_neurons_rows_are_never_read(kind: str, zero_points: bool) -> None:
    case = exact_case(256, 1024, 256, kind, zero_points, bias=kind == "relu")
    k = _kernel(case.spec, case.fmt)
    x = exact_x(case.spec.d_in, 1, seed=4)
    clean = k(x, case.inputs())
    poisoned = k(x, poisoned_exact(case, x, np.random.default_rng(5)))
    np.testing.assert_array_equal(poisoned, clean)
    np.testing.assert_allclose(clean, case.reference(x), rtol=RTOL, atol=ATOL)


def test_llm_shape_drelu_2048_8192() -> None:
    """The benchmark's shape (the reference on q4_layout's dequantization, equal to ONNX
    Runtime's as the layout test shows: its identity run would be 8192² floats)."""
    case = exact_case(2048, 8192, 2048, "drelu", bias=False, ort_dequantize=False)
    x = exact_x(case.spec.d_in, 1)
    y = _kernel(case.spec, case.fmt)(x, case.inputs())
    np.testing.assert_allclose(y, case.reference(x), rtol=RTOL, atol=ATOL)


VNNI = has_int8_dots()


@pytest.mark.skipif(not VNNI, reason="int8 dots need AVX-512 VNNI")
@pytest.mark.parametrize("block", [32, 64])
@pytest.mark.parametrize("kind", list(KINDS))
def test_int8_dots_match_quantized_activations(kind: str, block: int) -> None:
    """Int8 dots: the float64 FFN whose gate and up projections see x quantized per block
    (the down projection the float activations)."""
    case = exact_case(256, 1024, 256, kind, block=block, bias=kind == "relu")
    k = _kernel(case.spec, case.fmt, Q4Dot.INT8)
    for tokens in (1, 2):
        x = exact_x(case.spec.d_in, tokens)
        xq = quantized_x(x, block)
        assert np.abs(case.gates(xq)[0]).min() > MARGIN
        want = case.reference(xq)
        np.testing.assert_allclose(k(x, case.inputs()), want, rtol=RTOL, atol=ATOL)
        assert np.abs(want - case.reference(x)).max() > 1e-4  # the rounding of x matters


@pytest.mark.skipif(not VNNI, reason="int8 dots need AVX-512 VNNI")
def test_int8_dots_never_read_skipped_rows() -> None:
    case = exact_case(256, 1024, 256, "drelu", bias=False)
    k = _kernel(case.spec, case.fmt, Q4Dot.INT8)
    x = exact_x(case.spec.d_in, 1, seed=4)
    clean = k(x, case.inputs())
    xq = quantized_x(x, case.fmt.block).astype(np.float32)
    poisoned = k(x, poisoned_exact(case, xq, np.random.default_rng(5)))
    np.testing.assert_array_equal(poisoned, clean)


@pytest.mark.skipif(not VNNI, reason="int8 dots need AVX-512 VNNI")
@pytest.mark.parametrize("block", [16, 32, 64, 128])  # 8, 4, 2, 1 blocks per 64 code bytes
def test_int8_dots_with_zero_points(block: int) -> None:
    """Zero points in the int8 dots (each lane's block's own, subtracted times Σ xq): the
    quantized-x reference, and skipped rows (zero points among them) never read."""
    case = exact_case(256, 1024, 256, "drelu", zero_points=True, block=block, bias=False)
    k = _kernel(case.spec, case.fmt, Q4Dot.INT8)
    x = exact_x(case.spec.d_in, 2)
    xq = quantized_x(x, block)
    assert np.abs(case.gates(xq)[0]).min() > MARGIN
    np.testing.assert_allclose(k(x, case.inputs()), case.reference(xq), rtol=RTOL, atol=ATOL)
    x = exact_x(case.spec.d_in, 1, seed=4)
    clean = k(x, case.inputs())
    xq = quantized_x(x, block).astype(np.float32)
    np.testing.assert_array_equal(k(x, poisoned_exact(case, xq, np.random.default_rng(5))), clean)


@pytest.mark.parametrize("mcpu", [None, "x86-64-v3"], ids=["native", "avx2"])
@pytest.mark.parametrize("zero_points", [False, True], ids=["symmetric", "zero_points"])
def test_float_dots_on_x_rounded_to_int8(zero_points: bool, mcpu) -> None:
    """A format with ``int8_x`` (SparseFFN's accuracy_level 4) built with float32 dots (a
    CPU without the int8 dot): the same quantized-x function as the int8 dots compute."""
    case = exact_case(256, 1024, 256, "drelu", zero_points, bias=False)
    fmt = replace(case.fmt, int8_x=True)
    k = Q4Kernel(case.spec, fmt, mcpu=mcpu)
    x = exact_x(case.spec.d_in, 2, seed=3)
    xq = quantized_x(x, case.fmt.block)
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
    np.testing.assert_allclose(quantize_x(x, 32), quantized_x(x, 32), rtol=1e-6, atol=1e-7)


def test_int8_dots_refuse_rows_shorter_than_two_steps() -> None:
    s = exact_spec(64, 1024, 256, "drelu", False)
    with pytest.raises(CodegenError, match="multiple of 128"):
        exact_q4_primfunc(s, ql.Q4Format(32), q4_tiling(s, 16), "k", Q4Dot.INT8)
