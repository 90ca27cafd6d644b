"""The int4 exact kernels for CUDA (kernels/exact_q4_cuda.py) without a GPU: nvcc builds
them for the project's archs, the CPU emulator runs the emitted source. Weights quantized by
ONNX Runtime's own quantizer, the reference computed in float64 on the matrices ONNX Runtime
itself dequantizes (a MatMulNBits node run on the identity), and the rows and columns of
skipped neurons poisoned (the output must not change by a bit)."""

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
from fffc.codegen.kernels.exact_q4 import q4_arg_names
from fffc.contract.errors import CodegenError
from fffc.contract.kernels import SparseSpec
from fffc.verify.cuda_emu import Emulator
from tests.fixtures.q4_cases import ExactCase, exact_case, exact_spec, exact_x, poisoned_exact
from tests.fixtures.sparse_kernels import ATOL, RTOL


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

    @property
    def spec(self) -> SparseSpec:
        return exact_spec(*self.d, self.kind, self.bias)

    @property
    def fmt(self) -> ql.Q4Format:
        return ql.Q4Format(self.block, self.zero_points)

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
]


@dataclass
class Built:
    source: str
    emulator: Emulator
    variants: dict[str, CudaVariant]
    cases: dict[str, ExactCase]
    setups: dict[str, Setup]


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
    cases = {st.name: exact_case(*st.d, st.kind, st.zero_points, st.block, st.bias)
             for st in SETUPS}
    return Built(source, emu, variants, cases, {st.name: st for st in SETUPS})


def _run(b: Built, name: str, x: np.ndarray, inputs: dict) -> np.ndarray:
    return b.emulator.run(b.variants[name], {"X": x, **inputs}, any_tokens=True)


@pytest.mark.parametrize("name", [st.name for st in SETUPS])
def test_matches_the_dequantized_reference(built: Built, name: str) -> None:
    """1 token and mr + 1 (a full and a partial tile of mr tokens), against float64 on
    ONNX Runtime's dequantized matrices; the skipped neurons' rows and columns poisoned
    change nothing."""
    case = built.cases[name]
    for tokens in sorted({1, built.setups[name].mr + 1}):
        x = exact_x(case.spec.d_in, tokens, seed=tokens)
        clean = _run(built, name, x, case.inputs())
        want = case.reference(x)
        assert np.abs(want).max() > 0.1
        np.testing.assert_allclose(clean, want, rtol=RTOL, atol=ATOL, err_msg=f"{tokens}")
        poisoned = _run(built, name, x, poisoned_exact(case, x, np.random.default_rng(tokens)))
        np.testing.assert_array_equal(poisoned, clean, err_msg=f"{tokens}")


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
    block = case.fmt.block
    off = slice(2 * block, 4 * block)
    x = exact_x(case.spec.d_in, 3)
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
    x = exact_x(case.spec.d_in, 2)
    np.testing.assert_array_equal(_run(built, "relu_sym32", x, inp),
                                  np.broadcast_to(inp["B2"], (2, case.spec.d_out)))


def test_parameters_are_the_ops_arguments(built: Built) -> None:
    """Each launch takes only the op's arguments (codes as bytes) and its workspace."""
    for name, v in built.variants.items():
        st = built.setups[name]
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
