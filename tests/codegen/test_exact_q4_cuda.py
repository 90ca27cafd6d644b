"""The int4 exact kernels for CUDA (kernels/exact_q4_cuda.py) without a GPU: nvcc builds
them for the project's archs, the CPU emulator runs the emitted source. Weights quantized by
ONNX Runtime's own quantizer, the reference computed in float64 on the matrices ONNX Runtime
itself dequantizes (a MatMulNBits node run on the identity), and the rows and columns of
skipped neurons poisoned (the output must not change by a bit). With ``int8_x``
(accuracy_level 4) the reference's x is rounded to int8 per block by this file's own NumPy
rounding (``_round_x``)."""

from __future__ import annotations

import ctypes
import dataclasses
import mmap
import os
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
from fffc.codegen.kernels.exact_q4 import q4_arg_names, q4_inputs
from fffc.contract.errors import CodegenError
from fffc.contract.kernels import SparseSpec
from fffc.contract.kinds import SparseMode
from fffc.verify import matmul_nbits as mn
from fffc.verify.cuda_emu import Emulator
from fffc.verify.reference import sparse_ffn
from tests.fixtures.sparse_kernels import ATOL, RTOL

KINDS = {"relu": None, "reglu": "none", "drelu": "relu"}  # the up activation (None: dense)
MARGIN = 1e-5  # |gate|, |up| of every neuron: no float32 sum flips a decision


@dataclass(frozen=True)
class Setup:
    """One kernel build: the FFN, its int4 format and the tiling."""

    name: str
    d: tuple[int, int, int]  # d_in, d_ff, d_out
    kind: str
    zero_points: bool
    block: int
    bias: bool
    mr: int = 1
    tiling: dict = dataclasses.field(default_factory=dict)  # overrides of q4_cuda_tiling's
    int8_x: bool = False  # x rounded to int8 per block (accuracy_level 4)

    @property
    def spec(self) -> SparseSpec:
        up = KINDS[self.kind]
        return SparseSpec("relu", up or "none", SparseMode.EXACT, *self.d, self.bias,
                          self.bias, up is not None)

    @property
    def fmt(self) -> ql.Q4Format:
        return ql.Q4Format(self.block, self.zero_points, self.int8_x)

    def tiles(self) -> q4c.Q4CudaTiling:
        t = q4c.q4_cuda_tiling(self.spec, self.fmt, self.mr)
        return dataclasses.replace(t, **self.tiling)


SETUPS = [
    Setup("relu_sym32", (256, 512, 64), "relu", False, 32, True),
    Setup("reglu_zp32", (256, 512, 96), "reglu", True, 32, False,  # 12 column words over
          tiling={"now": 8, "splits": 6}),  # 2 blocks, the last chunk one group of three
    Setup("drelu_sym128", (256, 512, 64), "drelu", False, 128, False),
    Setup("drelu_zp128_mr4", (256, 512, 64), "drelu", True, 128, True, mr=4),
    Setup("reglu_sym32_chunks_mr2", (512, 256, 64), "reglu", False, 32, True, mr=2,
          # one word per lane, x staged in two chunks of 256 inputs (re-staged for the up
          # rows); 6 warps a block: the last block's warps past d_ff
          tiling={"pw": 1, "x_stage_floats": 512, "wpb": 6}),
    Setup("relu_zp16", (144, 256, 32), "relu", True, 16, False),  # two words per lane;
    # 9 blocks a row: the last zero point byte holds one
    # rows of 256 code bytes: the always-off neurons 64..127 fill whole pages of WU, WUS, W2
    Setup("drelu_zp32_pages", (512, 512, 256), "drelu", True, 32, False, mr=2),
    # x rounded to int8 per block: every token tile of the compile's variants (1, 2, 4, 8),
    # blocks 16, 32, 128, symmetric and zero points, x staged in chunks
    Setup("i8_drelu_sym32", (256, 512, 64), "drelu", False, 32, True, int8_x=True),
    Setup("i8_reglu_zp32_mr2", (256, 512, 96), "reglu", True, 32, False, mr=2,
          tiling={"now": 8, "splits": 6}, int8_x=True),
    Setup("i8_drelu_zp128_mr4", (256, 512, 64), "drelu", True, 128, True, mr=4, int8_x=True),
    Setup("i8_relu_sym128_mr8", (256, 512, 64), "relu", False, 128, True, mr=8, int8_x=True),
    Setup("i8_reglu_zp32_chunks_mr2", (512, 256, 64), "reglu", True, 32, True, mr=2,
          tiling={"pw": 1, "x_stage_floats": 512, "wpb": 6}, int8_x=True),
    Setup("i8_relu_sym16", (144, 256, 32), "relu", False, 16, False, int8_x=True),
]


def _round_x(x: np.ndarray, block: int) -> np.ndarray:
    """x rounded to int8 per block and scaled back, as ONNX Runtime's accuracy_level 4
    defines it: per block, with ``m = max|x|``, ``q = round-half-even(x · float32(127 / m))``
    (0 where m is 0) and ``x' = q · float32(m / 127)``, every step in float32."""
    x = np.asarray(x, np.float32)
    out = np.empty_like(x)
    for t in range(x.shape[0]):
        for b0 in range(0, x.shape[1], block):
            v = x[t, b0:b0 + block]
            m = np.float32(np.max(np.abs(v)))
            if m == 0:
                out[t, b0:b0 + block] = 0
                continue
            q = np.round(v * np.float32(np.float32(127) / m))  # numpy rounds half to even
            out[t, b0:b0 + block] = q * np.float32(m / np.float32(127))
    return out


@dataclass
class Case:
    setup: Setup
    w1: ql.Q4Matrix  # MatMulNBits records as ONNX Runtime's quantizer wrote them
    w2: ql.Q4Matrix
    wu: ql.Q4Matrix | None
    b1: np.ndarray | None
    b2: np.ndarray | None
    deq: dict[str, np.ndarray]  # [K, N] as ONNX Runtime dequantizes them

    def inputs(self) -> dict[str, np.ndarray]:
        s = self.setup.spec
        return {k: v for k, v in q4_inputs(s, self.w1, ql.columns(self.w2), self.wu,
                                           self.b1, self.b2).items() if v is not None}

    def x_seen(self, x: np.ndarray) -> np.ndarray:
        """The x the gate and up products take: rounded per block with ``int8_x``."""
        return _round_x(x, self.setup.block) if self.setup.int8_x else x

    def reference(self, x: np.ndarray) -> np.ndarray:
        wu = None if self.wu is None else self.deq["WU"].T
        return sparse_ffn(self.x_seen(x), self.deq["W1"], self.b1, self.deq["W2"], self.b2,
                          wu, up_activation=self.setup.spec.up_activation)

    def gates(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """float64 gate pre-activations and up projections [tokens, d_ff]."""
        xd = self.x_seen(x).astype(np.float64)
        h = xd @ self.deq["W1"] + (0 if self.b1 is None else self.b1)
        return h, None if self.wu is None else xd @ self.deq["WU"]


def _case(setup: Setup, seed: int = 0) -> Case:
    """Random weights; the gate's pre-activation centred at −0.5 (a third positive), and
    neurons 2·block .. 4·block − 1 off whatever x (whole groups of the down projection's
    scales without an active neuron)."""
    rng = np.random.default_rng(seed)
    s, block = setup.spec, setup.block
    d_in, d_ff, d_out = setup.d
    w1 = rng.standard_normal((d_in, d_ff)) / np.sqrt(d_in)
    w1[0] -= 0.5  # x[:, 0] is 1: a shift through a constant input
    w1[0, 2 * block:4 * block] = -40.0
    w = {"W1": w1, "W2": rng.standard_normal((d_ff, d_out)) / np.sqrt(d_ff),
         "WU": rng.standard_normal((d_in, d_ff)) / np.sqrt(d_in)}
    q = {k: mn.quantize(np.asarray(v, np.float32), block, symmetric=not setup.zero_points)
         for k, v in w.items() if k != "WU" or s.gated}
    deq = {k: mn.dequantize(m) for k, m in q.items()}
    b1 = (rng.standard_normal(d_ff) * 0.1).astype(np.float32) if setup.bias else None
    b2 = rng.standard_normal(d_out).astype(np.float32) if setup.bias else None
    return Case(setup, q["W1"], q["W2"], q.get("WU"), b1, b2, deq)


def _x(d_in: int, tokens: int, seed: int = 1) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((tokens, d_in)).astype(np.float32)
    x[:, 0] = 1.0
    return x


def _clear_x(case: Case, tokens: int) -> np.ndarray:
    """``_x`` with the first seed from ``tokens`` on (steps of 1000) whose gates and up
    projections are all farther than MARGIN from 0: the poisoned rows are then the same
    whatever the float32 summation order."""
    for seed in range(tokens, tokens + 10_000, 1000):
        x = _x(case.setup.d[0], tokens, seed=seed)
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
        vf = q4c.exact_q4_cuda_funcs(st.spec, st.fmt, st.tiles(), f"q4_{st.name}")
        funcs.update(vf)
        pending.append((st, list(vf)))
    source, launches = emit_kernels(funcs)
    variants = {}
    for st, names in pending:
        ws = q4c.workspace(st.spec, st.tiles())
        known = {*q4_arg_names(st.spec, st.fmt), *ws, "N"}
        for name in names:
            assert set(launches[name].params) <= known, launches[name]
        variants[st.name] = CudaVariant(st.spec, f"q4decode{st.mr}", 1, st.mr,
                                        tuple(launches[n] for n in names), tuple(ws.items()))
    emu = Emulator(source, list(variants.values()))
    return Built(source, emu, variants, {st.name: _case(st) for st in SETUPS})


def _run(b: Built, name: str, x: np.ndarray, inputs: dict) -> np.ndarray:
    return b.emulator.run(b.variants[name], {"X": x, **inputs}, any_tokens=True)


def _poisoned(case: Case, x: np.ndarray, rng) -> dict[str, np.ndarray]:
    """The kernel inputs with everything a skipped neuron must not read replaced: up rows
    (codes, NaN scales, zero points) of neurons whose gate is ≤ 0 for every token; the down
    column codes of neurons whose activation is 0 for every token; the down scales (and
    zero points) of groups with no active neuron."""
    h, u = case.gates(x)
    assert np.abs(h).min() > MARGIN
    gate_on = (h > 0).any(axis=0)
    active = gate_on.copy()
    if u is not None and case.setup.spec.up_activation == "relu":
        assert np.abs(u[:, gate_on]).min() > MARGIN
        active &= ((h > 0) & (u > 0)).any(axis=0)
    inp = {k: v.copy() for k, v in case.inputs().items()}
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
    assert idle.any() and off.mean() > 0.1  # much to poison (the always-off neurons at
    # least: 8 tokens turn most others on), whole groups among it
    inp["W2S"][idle] = np.nan
    if "W2Z" in inp:
        inp["W2Z"][idle] = garbage(inp["W2Z"][idle])
    return inp


@pytest.mark.parametrize("name", [st.name for st in SETUPS])
def test_matches_the_dequantized_reference(built: Built, name: str) -> None:
    """1 token and mr + 1 (a full and a partial tile of mr tokens; with int8_x mr too: the
    setups' mr are the compile's 1, 2, 4, 8), against float64 on ONNX Runtime's dequantized
    matrices; the skipped neurons' rows and columns poisoned change nothing."""
    case = built.cases[name]
    for tokens in sorted({1, case.setup.mr + 1, *((case.setup.mr,) if case.setup.int8_x else ())}):
        x = _clear_x(case, tokens)
        clean = _run(built, name, x, case.inputs())
        want = case.reference(x)
        assert np.abs(want).max() > 0.1
        np.testing.assert_allclose(clean, want, rtol=RTOL, atol=ATOL, err_msg=f"{tokens}")
        poisoned = _run(built, name, x, _poisoned(case, x, np.random.default_rng(tokens)))
        np.testing.assert_array_equal(poisoned, clean, err_msg=f"{tokens}")


def test_x_rounded_half_to_even_per_block(built: Built) -> None:
    """x with ties of the rounding (a block whose scale is 1/8: ±k.5 after scaling) and an
    all-zero block: Y as the reference whose x this file rounds half to even; rounding the
    ties away from zero would give another Y (the test tells them apart)."""
    name = "i8_drelu_sym32"
    case = built.cases[name]
    d, block = case.setup.d[0], case.setup.block
    x = _x(d, 2)
    ties = np.array([2.5, -3.5, 0.5, -0.5, 1.5, -2.5, 126.5, -126.5], np.float32) / 8
    x[0, block:2 * block] = 0.01
    x[0, block] = 127 / 8  # the block's max: 127 / max = 8 exactly
    x[0, block + 1:block + 1 + len(ties)] = ties
    x[0, 2 * block:3 * block] = 0.0  # codes and scale 0
    got = _run(built, name, x, case.inputs())
    want = case.reference(x)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    away = _round_x(x, block)  # the ties rounded away from zero instead (the scale is 1/8)
    away[0, block + 1:block + 1 + len(ties)] = np.sign(ties) * np.floor(np.abs(ties) * 8 + 0.5) / 8
    assert (away != _round_x(x, block)).sum() == 6  # 1.5 and −3.5 round alike both ways
    other = sparse_ffn(away, case.deq["W1"], case.b1, case.deq["W2"], case.b2,
                       case.deq["WU"].T, up_activation="relu")
    assert np.abs(other - want).max() > 100 * (ATOL + RTOL * np.abs(want).max())


def _fenced(a: np.ndarray, rows: slice, keep: list) -> int:
    """``a`` copied into fresh pages, the pages wholly inside its rows ``rows`` made
    unreadable (a read there is a segmentation fault); the copy is appended to ``keep`` and
    the number of protected bytes returned."""
    m = mmap.mmap(-1, -(-a.nbytes // mmap.PAGESIZE) * mmap.PAGESIZE)
    buf = np.frombuffer(m, dtype=a.dtype, count=a.size).reshape(a.shape)
    buf[...] = a
    keep.append(buf)
    row = a.nbytes // a.shape[0]
    lo = -(-rows.start * row // mmap.PAGESIZE) * mmap.PAGESIZE
    hi = rows.stop * row // mmap.PAGESIZE * mmap.PAGESIZE
    if hi <= lo:
        return 0
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mprotect(ctypes.c_void_p(addr + lo), ctypes.c_size_t(hi - lo), 0) != 0:  # PROT_NONE
        raise OSError(ctypes.get_errno(), "mprotect")
    return hi - lo


def test_skipped_rows_are_never_read(built: Built) -> None:
    """Neurons 2·block .. 4·block − 1 are off for every x: the pages of their up rows
    (codes, scales) and down columns are unmapped for reading, in a forked process (a read
    kills it), and Y must still equal the run on the plain inputs."""
    name = "drelu_zp32_pages"
    case = built.cases[name]
    block = case.setup.block
    off = slice(2 * block, 4 * block)
    x = _x(case.setup.d[0], 3)
    h, _ = case.gates(x)
    assert (h[:, off] < -1).all()
    inputs = case.inputs()
    want = _run(built, name, x, inputs)
    pid = os.fork()
    if pid == 0:  # the child: nothing but the emulator run, then _exit
        code = 2
        try:
            keep: list = []
            fenced = {k: _fenced(inputs[k], off, keep) for k in ("WU", "WUS", "W2")}
            ok = fenced["WU"] and fenced["WUS"] and fenced["W2"]
            got = _run(built, name, x, {**inputs, **dict(zip(("WU", "WUS", "W2"), keep, strict=True))})
            code = 0 if ok and np.array_equal(got, want) else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status), f"killed by signal {os.WTERMSIG(status)}: a skipped row read"
    assert os.WEXITSTATUS(status) == 0


def test_all_neurons_off_leaves_b2(built: Built) -> None:
    """Every gate negative: Y is B2 exactly, with every up row and down column poisoned."""
    case = built.cases["relu_sym32"]
    inp = case.inputs()
    inp["B1"] = np.full_like(inp["B1"], -1e4)
    inp["W2"][:] = 0x77
    inp["W2S"][:] = np.nan
    x = _x(case.setup.d[0], 2)
    np.testing.assert_array_equal(_run(built, "relu_sym32", x, inp),
                                  np.broadcast_to(inp["B2"], (2, case.setup.d[2])))


def test_parameters_are_the_ops_arguments(built: Built) -> None:
    """Each launch takes only the op's arguments (codes as bytes) and its workspace."""
    for name, v in built.variants.items():
        st = built.cases[name].setup
        names = set(q4_arg_names(st.spec, st.fmt))
        params = {p for ln in v.launches for p in ln.params}
        assert names - {"Y"} <= params | {"Y"}, name
        types = {p: t for ln in v.launches
                 for p, t in zip(ln.params, built.emulator._types[ln.kernel], strict=True)}
        for p in ("W1", "W2", "WU", "W1Z", "W2Z", "WUZ"):
            if p in names:
                assert types[p] == "uchar*", (name, p)


def test_fatbin_for_the_usual_archs(built: Built, tmp_path) -> None:
    """nvcc builds the source for the default archs (one source for all: the kernels do
    not depend on the arch)."""
    funcs = {}
    for st in SETUPS[:2]:
        funcs.update(q4c.exact_q4_cuda_funcs(st.spec, st.fmt, st.tiles(), f"q4_{st.name}"))
    assert {emit_kernels(funcs, arch)[0] for arch in DEFAULT_ARCHS} == {emit_kernels(funcs)[0]}
    src = tmp_path / "q4.cu"
    src.write_text(built.source)
    fatbin = tmp_path / "q4.fatbin"
    compile_fatbin(src, fatbin, DEFAULT_ARCHS)
    entries = fatbin_entries(fatbin)
    assert {("elf", a) for a in DEFAULT_ARCHS} <= set(entries)
    assert ("ptx", max(DEFAULT_ARCHS)) in entries


@pytest.mark.parametrize("change, match", [
    ({"d": (256, 512, 48)}, "multiple of 32"),  # d_out not whole column chunks
    ({"d": (200, 512, 64)}, "multiples of the block"),
    ({"tiling": {"pw": 4}, "block": 16}, "words per piece"),
    ({"tiling": {"splits": 7}}, "empty chunks"),
    ({"mr": 16}, "spill"),
])
def test_rejected_shapes(change: dict, match: str) -> None:
    st = dataclasses.replace(SETUPS[0], **change)
    with pytest.raises(CodegenError, match=match):
        q4c.exact_q4_cuda_funcs(st.spec, st.fmt, st.tiles(), "bad")
