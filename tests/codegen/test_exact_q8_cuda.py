"""The CUDA exact kernels on int8 codes (SparseFFN ``bits`` 8; kernels/exact_q4_cuda.py with
an 8-bit format) without a GPU: nvcc builds them for the project's archs, the CPU emulator
runs the emitted source. The weights are quantized and dequantized here, in NumPy, in the
layout ``fffc.contract.int8`` describes (codes one a byte; the down projection per neuron,
codes [d_ff, d_out], scales and zero points [d_ff/block, d_out]); the reference is the FFN
in float64 on those matrices, with x rounded to int8 per block by this file's own rounding
where ``int8_x`` (accuracy_level 4) says so. The skipped neurons' up rows and down columns,
and the scales of groups without an active neuron, are poisoned: the output must not change
by a bit."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest

from fffc.codegen import q4_layout as ql
from fffc.codegen.cuda_build import (
    DEFAULT_ARCHS,
    CudaVariant,
    compile_fatbin,
    emit_kernels,
    fatbin_entries,
)
from fffc.codegen.kernels import exact_q4_cuda as q4c
from fffc.contract.errors import CodegenError
from fffc.contract.kernels import SparseSpec
from fffc.contract.kinds import SparseMode
from fffc.verify.cuda_emu import Emulator
from tests.fixtures.sparse_kernels import ATOL, RTOL

KINDS = {"relu": None, "reglu": "none", "drelu": "relu"}  # the up activation (None: dense)
MARGIN = 1e-5  # |gate|, |up| of every neuron: no float32 sum flips a decision


@dataclass(frozen=True)
class Setup:
    name: str
    d: tuple[int, int, int]  # d_in, d_ff, d_out
    kind: str
    zero_points: bool
    block: int
    bias: bool
    mr: int = 1
    int8_x: bool = False
    tiling: dict = dataclasses.field(default_factory=dict)  # overrides of q4_cuda_tiling's

    @property
    def spec(self) -> SparseSpec:
        up = KINDS[self.kind]
        return SparseSpec("relu", up or "none", SparseMode.EXACT, *self.d, self.bias,
                          self.bias, up is not None, bits=8, block=self.block,
                          zero_points=self.zero_points, int8_x=self.int8_x)

    @property
    def fmt(self) -> ql.Q4Format:
        return ql.Q4Format(self.block, self.zero_points, self.int8_x, 8)

    def tiles(self) -> q4c.Q4CudaTiling:
        return dataclasses.replace(q4c.q4_cuda_tiling(self.spec, self.fmt, self.mr),
                                   **self.tiling)


SETUPS = [
    Setup("relu_sym32", (256, 512, 64), "relu", False, 32, True),
    Setup("drelu_zp32_mr2", (256, 512, 64), "drelu", True, 32, False, mr=2),
    Setup("reglu_sym128_mr4", (256, 512, 96), "reglu", False, 128, True, mr=4),
    # d_out 100: 25 column words over 4 blocks of 8, the last one partial
    Setup("drelu_zp16_partial", (144, 256, 100), "drelu", True, 16, True,
          tiling={"now": 8}),
    # x staged in chunks of 256 inputs, one word per lane, 6 warps a block
    Setup("relu_zp32_chunks_mr2", (512, 256, 64), "relu", True, 32, True, mr=2,
          tiling={"pw": 1, "x_stage_floats": 512, "wpb": 6}),
    # x rounded to int8 per block (accuracy_level 4): the compile's tiles 1, 2, 4, 8
    Setup("i8_relu_sym32", (256, 512, 64), "relu", False, 32, True, int8_x=True),
    Setup("i8_drelu_zp32_mr2", (256, 512, 96), "drelu", True, 32, False, mr=2, int8_x=True),
    Setup("i8_drelu_zp128_mr4", (256, 512, 64), "drelu", True, 128, True, mr=4, int8_x=True),
    Setup("i8_relu_sym16_mr8", (144, 256, 100), "relu", False, 16, True, mr=8, int8_x=True),
    Setup("i8_drelu_sym32_chunks", (512, 256, 64), "drelu", False, 32, True, mr=2,
          int8_x=True, tiling={"pw": 1, "x_stage_floats": 512, "wpb": 6}),
]


def _quantize(w: np.ndarray, block: int, symmetric: bool):
    """``w [K, N]`` to int8 codes per block of ``block`` along K, one row of blocks per
    output n: symmetric, ``s = max|w| / 127`` and zero point 128; else ``s = (max − min) /
    255`` and ``z = round(−min / s)``. Returns codes [N, K/block, block] uint8, scales and
    zero points [N, K/block] (zero points None where symmetric)."""
    k, n = w.shape
    b = w.T.reshape(n, k // block, block).astype(np.float64)
    if symmetric:
        s = np.abs(b).max(axis=-1) / 127
        z = np.full(s.shape, 128.0)
    else:
        lo, hi = np.minimum(b.min(axis=-1), 0), np.maximum(b.max(axis=-1), 0)
        s = (hi - lo) / 255
        z = np.clip(np.round(-lo / s), 0, 255)
    codes = np.clip(np.round(b / s[..., None]) + z[..., None], 0, 255).astype(np.uint8)
    return codes, s.astype(np.float32), None if symmetric else z.astype(np.uint8)


def _dequantized(codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None) -> np.ndarray:
    """``W [K, N]`` float64 of the records ``_quantize`` gives."""
    z = np.full(scales.shape, 128) if zeros is None else zeros.astype(np.int64)
    d = (codes.astype(np.int64) - z[..., None]) * scales.astype(np.float64)[..., None]
    return d.reshape(codes.shape[0], -1).T


def _round_x(x: np.ndarray, block: int) -> np.ndarray:
    """x rounded to int8 per block and scaled back (accuracy_level 4): per block, with ``m =
    max|x|``, ``q = round-half-even(x · float32(127 / m))`` (0 where m is 0) and ``x' = q ·
    float32(m / 127)``, every step in float32."""
    x = np.asarray(x, np.float32)
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        for b0 in range(0, x.shape[1], block):
            v = x[t, b0:b0 + block]
            m = np.float32(np.max(np.abs(v)))
            if m > 0:
                q = np.round(v * np.float32(np.float32(127) / m))  # half to even
                out[t, b0:b0 + block] = q * np.float32(m / np.float32(127))
    return out


@dataclass
class Case:
    setup: Setup
    inputs: dict[str, np.ndarray]  # the kernel's inputs by argument name
    deq: dict[str, np.ndarray]  # W1, WU [d_in, d_ff], W2 [d_ff, d_out], float64
    b1: np.ndarray | None
    b2: np.ndarray | None

    def x_seen(self, x: np.ndarray) -> np.ndarray:
        return _round_x(x, self.setup.block) if self.setup.int8_x else x

    def gates(self, x: np.ndarray):
        xd = self.x_seen(x).astype(np.float64)
        h = xd @ self.deq["W1"] + (0 if self.b1 is None else self.b1)
        return h, (xd @ self.deq["WU"] if "WU" in self.deq else None)

    def reference(self, x: np.ndarray) -> np.ndarray:
        h, u = self.gates(x)
        a = np.maximum(h, 0)
        if u is not None:
            a = a * (np.maximum(u, 0) if self.setup.kind == "drelu" else u)
        return a @ self.deq["W2"] + (0 if self.b2 is None else self.b2)


def _case(setup: Setup, seed: int = 0) -> Case:
    """Random weights; the gate's pre-activation centred at −0.5 (through x[:, 0] = 1), and
    neurons 2·block .. 4·block − 1 off whatever x (whole groups of the down projection's
    scales without an active neuron)."""
    rng = np.random.default_rng(seed)
    d_in, d_ff, d_out = setup.d
    block, sym = setup.block, not setup.zero_points
    w1 = rng.standard_normal((d_in, d_ff)) / np.sqrt(d_in)
    w1[0] -= 0.5
    w1[0, 2 * block:4 * block] = -40.0
    inputs, deq = {}, {}
    for name, w in (("W1", w1), ("WU", rng.standard_normal((d_in, d_ff)) / np.sqrt(d_in)),
                    ("W2", rng.standard_normal((d_ff, d_out)) / np.sqrt(d_ff))):
        if name == "WU" and not setup.spec.gated:
            continue
        c, s, z = _quantize(w, block, sym)
        deq[name] = _dequantized(c, s, z)
        if name == "W2":  # per neuron: codes [d_ff, d_out], scales [d_ff/block, d_out]
            c = np.ascontiguousarray(c.reshape(d_out, d_ff).T)
            s = np.ascontiguousarray(s.T)
            z = None if z is None else np.ascontiguousarray(z.T)
        inputs.update({name: c, f"{name}S": s})
        if z is not None:
            inputs[f"{name}Z"] = z
    b1 = (rng.standard_normal(d_ff) * 0.1).astype(np.float32) if setup.bias else None
    b2 = rng.standard_normal(d_out).astype(np.float32) if setup.bias else None
    if setup.bias:
        inputs.update(B1=b1, B2=b2)
    return Case(setup, inputs, deq, b1, b2)


def _x(d_in: int, tokens: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((tokens, d_in)).astype(np.float32)
    x[:, 0] = 1.0
    return x


def _clear_x(case: Case, tokens: int) -> np.ndarray:
    """The first x (seeds from ``tokens`` in steps of 1000) whose gates and up projections
    are all farther than MARGIN from 0."""
    for seed in range(tokens, tokens + 10_000, 1000):
        x = _x(case.setup.d[0], tokens, seed)
        h, u = case.gates(x)
        if np.abs(h).min() > MARGIN and (u is None or np.abs(u).min() > MARGIN):
            return x
    raise AssertionError("no x with every gate clear of 0")


@dataclass
class Built:
    source: str
    emulator: Emulator
    variants: dict[str, CudaVariant]
    cases: dict[str, Case]


@pytest.fixture(scope="module")
def built() -> Built:
    funcs, pending = {}, []
    for st in SETUPS:
        vf = q4c.exact_q4_cuda_funcs(st.spec, st.fmt, st.tiles(), f"q8_{st.name}")
        funcs.update(vf)
        pending.append((st, list(vf)))
    source, launches = emit_kernels(funcs)
    variants = {}
    for st, names in pending:
        ws = q4c.workspace(st.spec, st.tiles())
        known = {*st.spec.arg_names(), *ws, "N"}
        for name in names:
            assert set(launches[name].params) <= known, launches[name]
        variants[st.name] = CudaVariant(st.spec, f"int8_{st.mr}", 1, st.mr,
                                        tuple(launches[n] for n in names), tuple(ws.items()))
    emu = Emulator(source, list(variants.values()))
    return Built(source, emu, variants, {st.name: _case(st) for st in SETUPS})


def _run(b: Built, name: str, x: np.ndarray, inputs: dict) -> np.ndarray:
    return b.emulator.run(b.variants[name], {"X": x, **inputs}, any_tokens=True)


def _poisoned(case: Case, x: np.ndarray, rng) -> dict[str, np.ndarray]:
    """The inputs with what a skipped neuron must not read replaced: the up rows (codes, NaN
    scales, zero points) of neurons whose gate is ≤ 0 for every token; the down column
    codes of neurons whose activation is 0 for every token; the down scales (NaN) and zero
    points of groups with no active neuron."""
    h, u = case.gates(x)
    gate_on = (h > 0).any(axis=0)
    active = gate_on.copy()
    if u is not None and case.setup.kind == "drelu":
        assert np.abs(u[:, gate_on]).min() > MARGIN
        active &= ((h > 0) & (u > 0)).any(axis=0)
    inp = {k: v.copy() for k, v in case.inputs.items()}
    off, dead = ~gate_on, ~active

    def garbage(a: np.ndarray) -> np.ndarray:
        return rng.integers(0, 256, a.shape, dtype=np.uint8)

    if case.setup.spec.gated:
        inp["WU"][off] = garbage(inp["WU"][off])
        inp["WUS"][off] = np.nan
        if "WUZ" in inp:
            inp["WUZ"][off] = garbage(inp["WUZ"][off])
    inp["W2"][dead] = garbage(inp["W2"][dead])
    idle = ~active.reshape(-1, case.setup.block).any(axis=1)
    assert idle.any() and off.mean() > 0.1
    inp["W2S"][idle] = np.nan
    if "W2Z" in inp:
        inp["W2Z"][idle] = garbage(inp["W2Z"][idle])
    return inp


@pytest.mark.parametrize("name", [st.name for st in SETUPS])
def test_matches_the_dequantized_reference(built: Built, name: str) -> None:
    """1 token, mr and mr + 1 (a full and a partial tile), against float64 on the
    dequantized matrices; poisoning what the skipped neurons own changes nothing."""
    case = built.cases[name]
    for tokens in sorted({1, case.setup.mr, case.setup.mr + 1}):
        x = _clear_x(case, tokens)
        clean = _run(built, name, x, case.inputs)
        want = case.reference(x)
        assert np.abs(want).max() > 0.1
        np.testing.assert_allclose(clean, want, rtol=RTOL, atol=ATOL, err_msg=f"{tokens}")
        poisoned = _run(built, name, x, _poisoned(case, x, np.random.default_rng(tokens)))
        np.testing.assert_array_equal(poisoned, clean, err_msg=f"{tokens}")


def test_zero_points_are_read_per_block(built: Built) -> None:
    """One block's zero point moved down by 8 raises its weights by 8 scales: Y follows the
    reference so changed (the kernels read each block's own zero point, not a neighbour's
    or the midpoint)."""
    name = "drelu_zp32_mr2"
    case = built.cases[name]
    x = _clear_x(case, 1)
    inp = {k: v.copy() for k, v in case.inputs.items()}
    before = _run(built, name, x, inp)
    h, u = case.gates(x)
    n = int(np.argmax(h[0] * np.maximum(u[0], 0)))  # the largest gate·up: it stays on
    assert h[0, n] > 0.1 and u[0, n] > 0 and inp["W1Z"][n, 3] >= 8
    inp["W1Z"][n, 3] -= 8  # every weight of block 3 of its gate row up by 8 scales
    case2 = dataclasses.replace(case, deq={**case.deq, "W1": case.deq["W1"].copy()})
    blk = case.setup.block
    case2.deq["W1"][3 * blk:4 * blk, n] += 8 * np.float64(inp["W1S"][n, 3])
    after = _run(built, name, x, inp)
    assert np.abs(after - before).max() > 10 * (ATOL + RTOL * np.abs(before).max())
    np.testing.assert_allclose(after, case2.reference(x), rtol=RTOL, atol=ATOL)


def test_x_rounded_half_to_even_per_block(built: Built) -> None:
    """x with ties of the rounding (a block whose scale is 1/8) and an all-zero block: Y as
    the reference whose x is rounded half to even, far from the one rounded away from 0."""
    name = "i8_relu_sym32"
    case = built.cases[name]
    block = case.setup.block
    x = _x(case.setup.d[0], 2, 1)
    ties = np.array([2.5, -3.5, 0.5, -0.5, 1.5, -2.5, 126.5, -126.5], np.float32) / 8
    x[0, block:2 * block] = 0.01
    x[0, block] = 127 / 8  # the block's max: 127 / max = 8 exactly
    x[0, block + 1:block + 1 + len(ties)] = ties
    x[0, 2 * block:3 * block] = 0.0
    got = _run(built, name, x, case.inputs)
    want = case.reference(x)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    away = dataclasses.replace(case, setup=dataclasses.replace(case.setup, int8_x=False))
    xa = _round_x(x, block)
    xa[0, block + 1:block + 1 + len(ties)] = np.sign(ties) * np.floor(np.abs(ties) * 8 + 0.5) / 8
    other = away.reference(xa)
    assert np.abs(other - want).max() > 10 * (ATOL + RTOL * np.abs(want).max())


def test_all_neurons_off_leaves_b2(built: Built) -> None:
    """Every gate negative: Y is B2 exactly, with every down column and scale poisoned."""
    case = built.cases["relu_sym32"]
    inp = {k: v.copy() for k, v in case.inputs.items()}
    inp["B1"] = np.full_like(inp["B1"], -1e4)
    inp["W2"][:] = 0x77
    inp["W2S"][:] = np.nan
    x = _x(case.setup.d[0], 2, 1)
    np.testing.assert_array_equal(_run(built, "relu_sym32", x, inp),
                                  np.broadcast_to(inp["B2"], (2, case.setup.d[2])))


def test_codes_are_bytes(built: Built) -> None:
    """Each launch takes the op's int8 arguments, codes and zero points as bytes."""
    for name, v in built.variants.items():
        names = set(built.cases[name].setup.spec.arg_names())
        types = {p: t for ln in v.launches
                 for p, t in zip(ln.params, built.emulator._types[ln.kernel], strict=True)}
        assert names - {"Y"} <= set(types), name
        for p in ("W1", "W2", "WU", "W1Z", "W2Z", "WUZ"):
            if p in names:
                assert types[p] == "uchar*", (name, p)


def test_fatbin_for_the_usual_archs(built: Built, tmp_path) -> None:
    """nvcc builds the int8 kernels (``__dp4a`` included) for the default archs."""
    assert "__dp4a" in built.source
    src = tmp_path / "q8.cu"
    src.write_text(built.source)
    fatbin = tmp_path / "q8.fatbin"
    compile_fatbin(src, fatbin, DEFAULT_ARCHS)
    entries = fatbin_entries(fatbin)
    assert {("elf", a) for a in DEFAULT_ARCHS} <= set(entries)
    assert ("ptx", max(DEFAULT_ARCHS)) in entries


@pytest.mark.parametrize("change, match", [
    ({"d": (256, 512, 66)}, "of 4"),  # d_out not whole column words
    ({"d": (200, 512, 64)}, "multiples of the block"),
    ({"tiling": {"pw": 4}, "block": 16, "d": (144, 256, 64)}, None),  # 16 bytes: fits
    ({"tiling": {"splits": 7}}, "empty chunks"),
    ({"mr": 32}, "spill"),
])
def test_shapes(change: dict, match: str | None) -> None:
    st = dataclasses.replace(SETUPS[0], **change)
    if match is None:
        q4c.exact_q4_cuda_funcs(st.spec, st.fmt, st.tiles(), "ok")
        return
    with pytest.raises(CodegenError, match=match):
        q4c.exact_q4_cuda_funcs(st.spec, st.fmt, st.tiles(), "bad")


def test_fake_quantized_activations_are_refused() -> None:
    """The AQ input (static QDQ sites) is not applied by the CUDA kernels: refused."""
    st = SETUPS[0]
    spec = dataclasses.replace(st.spec, act_quant=True)
    with pytest.raises(CodegenError, match="AQ"):
        q4c.exact_q4_cuda_funcs(spec, st.fmt, st.tiles(), "bad")
