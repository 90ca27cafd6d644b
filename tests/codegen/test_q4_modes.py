"""The int4 kernels of SparseFFN modes teal, cats and predictor (kernels/teal_q4.py,
cats_q4.py, predictor_q4.py) on weights quantized by ONNX Runtime's own quantizer: against
the float64 references (``fffc.verify.reference``) on the matrices ONNX Runtime itself
dequantizes, with thresholds placed in gaps of the float64 values (no decision within
rounding), and the rows, columns and scales of skipped channels and neurons poisoned."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pytest

from fffc.codegen import q4_layout as ql
from fffc.codegen.kernels.exact_q4 import register_tiling
from fffc.codegen.kernels.q4_pieces import Q4Dot, q4_inputs
from fffc.codegen.kernels.teal_q4 import teal_q4_primfunc
from fffc.codegen.q4_build import Q4Kernel, has_int8_dots
from fffc.contract.errors import CodegenError
from fffc.contract.kernels import SparseSpec
from fffc.contract.kinds import SparseMode
from fffc.verify.reference import activation, cats_ffn, predictor_ffn, teal_ffn
from tests.fixtures import aarch64_kernels as aarch64
from tests.fixtures.q4_cases import ArmQ4, poison, poison_down, quantized, quantized_x
from tests.fixtures.sparse_kernels import ATOL, RTOL

D_IN, D_FF, D_OUT, RANK = 256, 512, 128, 16
GAP = 1e-3  # the smallest relative gap around a threshold (float32 error ~1e-6)
OFF = -20.0  # B1 / PC of neurons off whatever x (a whole group of the down projection)


@functools.cache
def _kernel(spec: SparseSpec, fmt: ql.Q4Format, dot: Q4Dot = Q4Dot.FLOAT32,
            mcpu: str | None = None) -> Q4Kernel:
    return Q4Kernel(spec, fmt, mcpu=mcpu, dot=dot)


def _spec(mode: SparseMode, gated: bool) -> SparseSpec:
    act, up = {SparseMode.TEAL: ("silu", "none") if gated else ("gelu", "none"),
               SparseMode.CATS: ("silu", "none"),
               SparseMode.PREDICTOR: ("relu", "relu") if gated else ("relu", "none")}[mode]
    return SparseSpec(act, up, mode, D_IN, D_FF, D_OUT, True, True, gated,
                      rank=RANK if mode is SparseMode.PREDICTOR else 0)


def _gap_threshold(v: np.ndarray, q: float) -> float:
    """A float32 threshold near the q-quantile of ``v`` (≥ 0) in a gap of its values wider
    than GAP · max(v), so no value lies within rounding of it."""
    s = np.sort(v.ravel())
    lo = int(q * (len(s) - 1))
    gaps = np.diff(s)
    for off in range(len(s)):
        for i in (lo + off, lo - off):
            if 0 <= i < len(gaps) and gaps[i] > GAP * s[-1]:
                return float(np.float32((s[i] + s[i + 1]) / 2))
    raise AssertionError("no gap for a threshold")


@dataclass
class Case:
    spec: SparseSpec
    fmt: ql.Q4Format
    q: dict[str, ql.Q4Matrix]  # as ONNX Runtime's quantizer wrote them
    deq: dict[str, np.ndarray]  # [K, N] as ONNX Runtime dequantizes them
    b1: np.ndarray
    b2: np.ndarray
    pred: dict[str, np.ndarray]  # PA, PB, PC (predictor)
    th: np.ndarray | None = None  # TH (teal, cats), set per input

    @property
    def mode(self) -> SparseMode:
        return self.spec.mode

    def inputs(self) -> dict[str, np.ndarray]:
        """W1 and WU per input channel (teal) or as MatMulNBits holds them, W2 per neuron."""
        per_channel = self.mode is SparseMode.TEAL
        w1, wu = self.q["W1"], self.q.get("WU")
        if per_channel:
            w1, wu = ql.columns(w1), None if wu is None else ql.columns(wu)
        extra = {"TH": self.th} if self.th is not None else dict(self.pred)
        return q4_inputs(self.spec, w1, ql.columns(self.q["W2"]), wu, self.b1, self.b2, **extra)

    def x_kept(self, x: np.ndarray) -> np.ndarray:
        """x' in float64: entries with |x| <= TH[0] zeroed (teal, cats)."""
        xd = x.astype(np.float64)
        return xd if self.th is None else np.where(np.abs(xd) <= self.th[0], 0.0, xd)

    def hidden(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """float64 gate pre-activations (+ B1) and up projections of x' [tokens, d_ff]."""
        xd = self.x_kept(x)
        u = None if "WU" not in self.deq else xd @ self.deq["WU"]
        return xd @ self.deq["W1"] + self.b1, u

    def scores(self, x: np.ndarray) -> np.ndarray:
        xd = x.astype(np.float64)
        return (xd @ self.pred["PA"]) @ self.pred["PB"] + self.pred["PC"]

    def reference(self, x: np.ndarray) -> np.ndarray:
        s, d = self.spec, self.deq
        wu = d.get("WU")
        if self.mode is SparseMode.TEAL:
            return teal_ffn(x, d["W1"], self.b1, d["W2"], self.b2, wu, thresholds=self.th,
                            activation_name=s.activation, up_activation=s.up_activation)
        if self.mode is SparseMode.CATS:
            return cats_ffn(x, d["W1"], self.b1, d["W2"], self.b2, wu.T, thresholds=self.th,
                            activation_name=s.activation, up_activation=s.up_activation)
        return predictor_ffn(x, d["W1"].T, self.b1, d["W2"], self.b2,
                             None if wu is None else wu.T, self.pred["PA"], self.pred["PB"],
                             self.pred["PC"], activation_name=s.activation,
                             up_activation=s.up_activation)


def _case(mode: SparseMode, gated: bool, zero_points: bool, block: int, seed: int = 0) -> Case:
    """Random weights; neurons 2·block .. 3·block − 1 off whatever x (B1 = OFF for teal
    and cats, PC = OFF for the predictor): a whole group of the down projection's scales
    without an active neuron."""
    rng = np.random.default_rng(seed)
    spec = _spec(mode, gated)
    fmt = ql.Q4Format(block, zero_points)
    w = {"W1": rng.standard_normal((D_IN, D_FF)) / np.sqrt(D_IN),
         "W2": rng.standard_normal((D_FF, D_OUT)) / np.sqrt(D_FF)}
    if gated:
        w["WU"] = rng.standard_normal((D_IN, D_FF)) / np.sqrt(D_IN)
    q, deq = quantized(w, block, zero_points)
    off = slice(2 * block, 3 * block)
    b1 = (rng.standard_normal(D_FF) * 0.1).astype(np.float32)
    b2 = rng.standard_normal(D_OUT).astype(np.float32)
    pred = {}
    if mode is SparseMode.PREDICTOR:
        pred = {"PA": rng.standard_normal((D_IN, RANK)) / np.sqrt(D_IN),
                "PB": rng.standard_normal((RANK, D_FF)) / np.sqrt(RANK),
                "PC": np.full(D_FF, -0.3)}  # about 38% selected
        pred["PC"][off] = OFF
        pred = {k: v.astype(np.float32) for k, v in pred.items()}
    else:
        b1[off] = OFF
    return Case(spec, fmt, q, deq, b1, b2, pred)


def _x(tokens: int, block: int, seed: int = 1) -> np.ndarray:
    """x ~ N(0, 1), the channels block .. 2·block − 1 small (below TEAL's input threshold:
    a whole group of the gate pass's scales without a surviving channel)."""
    x = np.random.default_rng(seed).standard_normal((tokens, D_IN)).astype(np.float32)
    x[:, block:2 * block] *= np.float32(0.01)
    return x


def _prepare(case: Case, x: np.ndarray) -> np.ndarray:
    """Set the case's thresholds for x (teal: 60% of x's entries and half of the activations
    zero; cats: half of the gates) or move the predictor's offsets off 0 (no score within
    rounding of 0); return the float64 activations, zero where skipped."""
    h, u = case.hidden(x)
    if case.mode is SparseMode.PREDICTOR:
        s = case.scores(x)
        near = np.abs(s) < GAP * np.abs(s).max()
        case.pred["PC"] -= np.where(near.any(axis=0), np.float32(2 * GAP * np.abs(s).max()),
                                    np.float32(0))
        s = case.scores(x)
        assert np.abs(s).min() > GAP * np.abs(s).max() / 2 and 0.05 < (s > 0).mean() < 0.5
        a = activation(case.spec.activation, h)
        if u is not None:
            a = a * activation(case.spec.up_activation, u)
        # an activation exactly 0 in float64 must be 0 in float32 too: no gate (up) near 0
        assert np.abs(h[s > 0]).min() > 1e-5
        if u is not None:
            assert np.abs(u[s > 0]).min() > 1e-5
        return np.where(s > 0, a, 0.0)
    t_in = float(np.float32(np.quantile(np.abs(x), 0.6)))
    case.th = np.array([t_in, 0.0], np.float32)
    h, u = case.hidden(x)
    g = activation(case.spec.activation, h)
    a = g if u is None else g * activation(case.spec.up_activation, u)
    gate = np.abs(g if case.mode is SparseMode.CATS else a)
    case.th[1] = _gap_threshold(gate, 0.5)
    return np.where(gate > case.th[1], a, 0.0)


def _poisoned(case: Case, x: np.ndarray, active: np.ndarray, rng) -> dict[str, np.ndarray]:
    """The kernel inputs with everything a skipped channel or neuron must not cost replaced
    (random codes and zero points, NaN scales): teal: the rows of W1, WU of channels below
    t_in and the scales of their groups where no channel of the group survives; cats,
    predictor: the up rows (and the predictor's gate rows) of the neurons off; all: the
    down columns of the inactive neurons and the down scales of groups without one."""
    inp = {k: None if v is None else v.copy() for k, v in case.inputs().items()}
    names = ["W1", "WU"] if case.mode is SparseMode.PREDICTOR else ["WU"]
    if case.mode is SparseMode.TEAL:
        dead = (np.abs(x) <= case.th[0]).all(axis=0)
        idle = dead.reshape(-1, case.fmt.block).all(axis=1)
        assert idle.any() and dead.mean() > 0.3
        for w in ["W1", "WU"] if case.spec.gated else ["W1"]:
            poison(inp, w, dead, idle, rng)
    else:
        if case.mode is SparseMode.CATS:
            g = activation(case.spec.activation, case.hidden(x)[0])
            off = (np.abs(g) <= case.th[1]).all(axis=0)
        else:
            off = (case.scores(x) <= 0).all(axis=0)
        assert off.mean() > 0.3
        for w in names:
            if w in inp:
                poison(inp, w, off, off, rng)
    poison_down(inp, active, case.fmt.block, rng)
    return inp


MODES = [(SparseMode.TEAL, False), (SparseMode.TEAL, True), (SparseMode.CATS, True),
         (SparseMode.PREDICTOR, False), (SparseMode.PREDICTOR, True)]
FORMATS = [(False, 32), (True, 128), (True, 32), (False, 128)]


@pytest.mark.parametrize(("mode", "gated", "zero_points", "block"),
                         [(m, g, *FORMATS[i % 4]) for i, (m, g) in enumerate(MODES)]
                         + [(SparseMode.CATS, True, *FORMATS[1])],
                         ids=lambda v: str(v))
def test_matches_reference_and_never_reads_skipped(mode: SparseMode, gated: bool,
                                                   zero_points: bool, block: int) -> None:
    case = _case(mode, gated, zero_points, block)
    k = _kernel(case.spec, case.fmt)
    x = _x(1, block)
    active = _prepare(case, x)
    assert 0.05 < (active != 0).mean() < 0.7
    y = k(x, case.inputs())
    want = case.reference(x)
    assert np.abs(want - case.b2).max() > 0.1
    np.testing.assert_allclose(y, want, rtol=RTOL, atol=ATOL)
    poisoned = k(x, _poisoned(case, x, active, np.random.default_rng(5)))
    np.testing.assert_array_equal(poisoned, y)


@pytest.mark.parametrize("mode", [SparseMode.TEAL, SparseMode.PREDICTOR])
def test_tokens_one_by_one(mode: SparseMode) -> None:
    """Several tokens in one call: each skips its own channels and neurons."""
    case = _case(mode, True, False, 32, seed=2)
    x = _x(3, 32, seed=3)
    _prepare(case, x)
    np.testing.assert_allclose(_kernel(case.spec, case.fmt)(x, case.inputs()),
                               case.reference(x), rtol=RTOL, atol=ATOL)


def test_thresholds_off() -> None:
    """Negative thresholds keep every channel and neuron: the dense FFN."""
    case = _case(SparseMode.TEAL, True, False, 32)
    x = _x(1, 32)
    case.th = np.array([-1.0, -1.0], np.float32)
    np.testing.assert_allclose(_kernel(case.spec, case.fmt)(x, case.inputs()),
                               case.reference(x), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("mode", [SparseMode.TEAL, SparseMode.CATS, SparseMode.PREDICTOR])
def test_avx2_target(mode: SparseMode) -> None:
    """Built for an AVX2 CPU (8 lanes: no permute table, narrower output tiles)."""
    case = _case(mode, True, False, 32, seed=6)
    k = _kernel(case.spec, case.fmt, mcpu="haswell")
    assert not k.tiling.lut
    x = _x(1, 32, seed=7)
    _prepare(case, x)
    np.testing.assert_allclose(k(x, case.inputs()), case.reference(x), rtol=RTOL, atol=ATOL)


VNNI = has_int8_dots()
MISSING = aarch64.missing_tools()
DOTPROD = "neoverse-n1"  # ARMv8.2 with dotprod (sdot)
# where the int8 dots run: x86 with AVX-512 VNNI here, aarch64 with sdot under qemu
INT8_TARGETS = [pytest.param("x86", marks=pytest.mark.skipif(not VNNI, reason="no AVX-512 VNNI")),
                pytest.param("arm", marks=pytest.mark.skipif(MISSING is not None,
                                                             reason=f"aarch64: {MISSING}"))]


def _built(case: Case, dot: Q4Dot, target: str, tmp):
    """The case's kernel with ``dot`` for x86 (this CPU) or aarch64 (a dotprod CPU for int8
    dots, generic ARMv8.2-A for float32 ones; under qemu)."""
    if target == "x86":
        return _kernel(case.spec, case.fmt, dot)
    return ArmQ4(case.spec, case.fmt, dot, DOTPROD if dot is Q4Dot.INT8 else None, tmp)


@pytest.mark.skipif(MISSING is not None, reason=f"aarch64 under qemu: {MISSING}")
@pytest.mark.parametrize(("mode", "gated", "zero_points", "block"),
                         [(SparseMode.TEAL, True, True, 32), (SparseMode.CATS, True, False, 128),
                          (SparseMode.PREDICTOR, False, True, 32)], ids=lambda v: str(v))
def test_float32_dots_under_qemu(mode: SparseMode, gated: bool, zero_points: bool, block: int,
                                 tmp_path) -> None:
    """The modes' kernels for aarch64 (NEON, generic ARMv8.2-A): the reference, and skipped
    channels and neurons never read."""
    case = _case(mode, gated, zero_points, block)
    k = _built(case, Q4Dot.FLOAT32, "arm", tmp_path)
    x = _x(1, block)
    active = _prepare(case, x)
    y = k(x, case.inputs())
    np.testing.assert_allclose(y, case.reference(x), rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(k(x, _poisoned(case, x, active, np.random.default_rng(5))), y)


@pytest.mark.parametrize("target", INT8_TARGETS)
@pytest.mark.parametrize("zero_points", [False, True], ids=["symmetric", "zero_points"])
def test_int8_dots_predictor(zero_points: bool, target: str, tmp_path) -> None:
    """Int8 row dots: the gate and up rows see x quantized per block (zero points: each
    block's own), the predictor float x."""
    case = _case(SparseMode.PREDICTOR, True, zero_points, 32)
    k = _built(case, Q4Dot.INT8, target, tmp_path)
    x = _x(1, 32)
    _prepare(case, x)
    xq = quantized_x(x, 32)
    s = case.scores(x)
    h = xq @ case.deq["W1"] + case.b1
    u = xq @ case.deq["WU"]
    assert np.abs(h[s > 0]).min() > 1e-5 and np.abs(u[s > 0]).min() > 1e-5
    a = np.where(s > 0, np.maximum(h, 0) * np.maximum(u, 0), 0.0)
    want = a @ case.deq["W2"] + case.b2
    y = k(x, case.inputs())
    np.testing.assert_allclose(y, want, rtol=RTOL, atol=ATOL)
    assert np.abs(want - case.reference(x)).max() > 1e-4  # the rounding of x matters
    np.testing.assert_array_equal(k(x, _poisoned(case, x, a, np.random.default_rng(5))), y)


@pytest.mark.parametrize("target", INT8_TARGETS)
@pytest.mark.parametrize("zero_points", [False, True], ids=["symmetric", "zero_points"])
def test_int8_dots_cats(zero_points: bool, target: str, tmp_path) -> None:
    """Int8 row dots on x' (x thresholded, then quantized per block)."""
    case = _case(SparseMode.CATS, True, zero_points, 32)
    k = _built(case, Q4Dot.INT8, target, tmp_path)
    x = _x(1, 32)
    _prepare(case, x)
    xq = quantized_x(case.x_kept(x), 32)
    g = activation("silu", xq @ case.deq["W1"] + case.b1)
    case.th[1] = _gap_threshold(np.abs(g), 0.5)
    a = np.where(np.abs(g) > case.th[1], g * (xq @ case.deq["WU"]), 0.0)
    want = a @ case.deq["W2"] + case.b2
    y = k(x, case.inputs())
    np.testing.assert_allclose(y, want, rtol=RTOL, atol=ATOL)
    assert np.abs(want - case.reference(x)).max() > 1e-4


@pytest.mark.parametrize("target", INT8_TARGETS)
@pytest.mark.parametrize("block", [32, 128])
def test_int8_dots_teal(block: int, target: str, tmp_path) -> None:
    """Int8 column passes: x' quantized per block of channels, then a' per block of
    neurons (as ONNX Runtime's accuracy_level 4 quantizes each MatMulNBits input); a code
    of a' may round the other way than in float64 (a in float32): up to 2 steps."""
    case = _case(SparseMode.TEAL, True, False, block)
    k = _built(case, Q4Dot.INT8, target, tmp_path)
    x = _x(1, block)
    _prepare(case, x)
    xq = quantized_x(case.x_kept(x), block)
    a = activation("silu", xq @ case.deq["W1"] + case.b1) * (xq @ case.deq["WU"])
    case.th[1] = _gap_threshold(np.abs(a), 0.5)
    a = np.where(np.abs(a) > case.th[1], a, 0.0)
    want = quantized_x(a, block) @ case.deq["W2"] + case.b2
    step = np.abs(a).max() / 127
    y = k(x, case.inputs())
    np.testing.assert_allclose(y, want, rtol=RTOL,
                               atol=ATOL + 2 * step * np.abs(case.deq["W2"]).max())
    ref = case.reference(x)
    dev = np.abs(y - ref).max() / np.abs(ref).max()
    assert 1e-4 < dev < 3e-2  # the rounding of x and a matters, as much as in ONNX Runtime L4
    np.testing.assert_array_equal(k(x, _poisoned(case, x, a, np.random.default_rng(5))), y)


def test_refusals() -> None:
    fmt = ql.Q4Format(32, True)
    with pytest.raises(CodegenError, match="symmetric"):
        teal_q4_primfunc(_spec(SparseMode.TEAL, True), fmt,
                         register_tiling(_spec(SparseMode.TEAL, True), 16), "k", Q4Dot.INT8)
    with pytest.raises(CodegenError, match="gated FFNs only"):
        Q4Kernel(_spec(SparseMode.CATS, False), fmt)
    centered = SparseSpec("silu", "none", SparseMode.TEAL, D_IN, D_FF, D_OUT, True, True,
                          True, centers="h")
    with pytest.raises(CodegenError, match="centered"):
        Q4Kernel(centered, fmt)


# --------------------------------------------------------------- accuracy_level 4 (int8_x)
# Sites whose MatMulNBits round x to int8 per block (``Q4Format.int8_x``): every mode
# computes on the rounded values (``fffc.contract.int4``'s module text) whatever its dots —
# int8 dots (VNNI here), or float32 dots on the same rounded values (a CPU without them:
# haswell; or teal with zero points, whose int8 column passes take symmetric codes).
L4_DOTS = [pytest.param(Q4Dot.INT8, None, id="int8-dots",
                        marks=pytest.mark.skipif(not VNNI, reason="no AVX-512 VNNI")),
           pytest.param(Q4Dot.FLOAT32, None, id="float-dots"),
           pytest.param(Q4Dot.FLOAT32, "haswell", id="float-dots-avx2")]
L4_MODES = [(SparseMode.TEAL, True, False), (SparseMode.TEAL, False, False),
            (SparseMode.TEAL, True, True), (SparseMode.CATS, True, True),
            (SparseMode.PREDICTOR, True, False), (SparseMode.PREDICTOR, False, True)]


def _level4(case: Case, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The mode at accuracy_level 4 in float64 NumPy (rounding by ``quantized_x``, not the
    code under test), its thresholds moved into gaps of the rounded values: (y, the
    activations the down projection reads, zero where skipped, the slack of a' codes that
    may round either way: teal, 2 steps of the largest block)."""
    s, d, blk = case.spec, case.deq, case.fmt.block
    if case.mode is SparseMode.PREDICTOR:  # scores on float x, rows on rounded x
        xq = quantized_x(x, blk)
        sc = case.scores(x)
        h = xq @ d["W1"] + case.b1
        a = activation(s.activation, h)
        if s.gated:
            u = xq @ d["WU"]
            assert np.abs(u[sc > 0]).min() > 1e-5
            a = a * activation(s.up_activation, u)
        assert np.abs(h[sc > 0]).min() > 1e-5
        a = np.where(sc > 0, a, 0.0)
        return a @ d["W2"] + case.b2, a, 0.0
    xq = quantized_x(case.x_kept(x), blk)  # thresholded first, then rounded
    g = activation(s.activation, xq @ d["W1"] + case.b1)
    a = g if not s.gated else g * activation(s.up_activation, xq @ d["WU"])
    if case.mode is SparseMode.CATS:
        case.th[1] = _gap_threshold(np.abs(g), 0.5)
        a = np.where(np.abs(g) > case.th[1], a, 0.0)
        return a @ d["W2"] + case.b2, a, 0.0
    case.th[1] = _gap_threshold(np.abs(a), 0.5)
    a = np.where(np.abs(a) > case.th[1], a, 0.0)
    slack = 2 * np.abs(a).max() / 127 * np.abs(d["W2"]).max()
    return quantized_x(a, blk) @ d["W2"] + case.b2, a, slack


@pytest.mark.parametrize(("dot", "mcpu"), L4_DOTS)
@pytest.mark.parametrize(("mode", "gated", "zero_points"), L4_MODES, ids=lambda v: str(v))
def test_level4_rounds_x(mode: SparseMode, gated: bool, zero_points: bool, dot: Q4Dot,
                         mcpu: str | None) -> None:
    """``int8_x``: teal rounds x' and a', cats x' (its gate on the rounded x'), the
    predictor the selected rows' x (its scores on float x) — with int8 or float32 dots;
    skipped rows, columns and scales are never read."""
    if dot is Q4Dot.INT8 and mode is SparseMode.TEAL and zero_points:
        pytest.skip("teal's int8 column passes take symmetric codes (plan_dot: float32)")
    case = _case(mode, gated, zero_points, 32, seed=11)
    case.fmt = ql.Q4Format(32, zero_points, True)
    k = _kernel(case.spec, case.fmt, dot, mcpu)
    assert k.dot is dot
    x = _x(1, 32, seed=12)
    _prepare(case, x)
    want, a, slack = _level4(case, x)
    y = k(x, case.inputs())
    np.testing.assert_allclose(y, want, rtol=RTOL, atol=ATOL + slack)
    float_ref = case.reference(x)  # the same thresholds on x in float32: level 0
    assert np.abs(float_ref - want).max() > 1e-4 * np.abs(want).max()  # the rounding matters
    poisoned = k(x, _poisoned(case, x, a, np.random.default_rng(5)))
    np.testing.assert_array_equal(poisoned, y)


@pytest.mark.parametrize("mode", [SparseMode.TEAL, SparseMode.CATS])
def test_level4_int8_and_float_dots_agree(mode: SparseMode) -> None:
    """The same rounded values through both dots: equal up to float summation order."""
    if not VNNI:
        pytest.skip("no AVX-512 VNNI")
    case = _case(mode, True, False, 32, seed=13)
    case.fmt = ql.Q4Format(32, False, True)
    x = _x(2, 32, seed=14)
    _prepare(case, x)
    _level4(case, x)
    y8 = _kernel(case.spec, case.fmt, Q4Dot.INT8)(x, case.inputs())
    yf = _kernel(case.spec, case.fmt, Q4Dot.FLOAT32)(x, case.inputs())
    np.testing.assert_allclose(y8, yf, rtol=1e-5, atol=1e-5 * np.abs(yf).max())


@pytest.mark.skipif(MISSING is not None, reason=f"aarch64 under qemu: {MISSING}")
@pytest.mark.parametrize(("mode", "dot"), [(SparseMode.TEAL, Q4Dot.FLOAT32),
                                           (SparseMode.CATS, Q4Dot.INT8)], ids=str)
def test_level4_under_qemu(mode: SparseMode, dot: Q4Dot, tmp_path) -> None:
    """aarch64: teal with float32 dots (generic ARMv8.2-A) and cats with sdot, on x rounded."""
    case = _case(mode, True, False, 32, seed=15)
    case.fmt = ql.Q4Format(32, False, True)
    k = _built(case, dot, "arm", tmp_path)
    x = _x(1, 32, seed=16)
    _prepare(case, x)
    want, a, slack = _level4(case, x)
    y = k(x, case.inputs())
    np.testing.assert_allclose(y, want, rtol=RTOL, atol=ATOL + slack)
    np.testing.assert_array_equal(k(x, _poisoned(case, x, a, np.random.default_rng(5))), y)


@pytest.mark.parametrize(("mode", "gated", "zero_points"), L4_MODES, ids=lambda v: str(v))
def test_reference_int8_block(mode: SparseMode, gated: bool, zero_points: bool) -> None:
    """``fffc.verify.reference``'s ``int8_block`` (what compile checks level-4 sites
    against) equals the level-4 function above."""
    case = _case(mode, gated, zero_points, 32, seed=17)
    x = _x(2, 32, seed=18)
    _prepare(case, x)
    want, _, _ = _level4(case, x)
    d, s = case.deq, case.spec
    act = {"activation_name": s.activation, "up_activation": s.up_activation}
    wu = d.get("WU")
    if mode is SparseMode.TEAL:
        got = teal_ffn(x, d["W1"], case.b1, d["W2"], case.b2, wu, thresholds=case.th,
                       int8_block=32, **act)
    elif mode is SparseMode.CATS:
        got = cats_ffn(x, d["W1"], case.b1, d["W2"], case.b2, wu.T, thresholds=case.th,
                       int8_block=32, **act)
    else:
        got = predictor_ffn(x, d["W1"].T, case.b1, d["W2"], case.b2,
                            None if wu is None else wu.T, case.pred["PA"], case.pred["PB"],
                            case.pred["PC"], int8_block=32, **act)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
