"""``--target cuda --host aarch64`` (``--target jetson``): an aarch64 shim with the CUDA
launcher, a fatbin for Orin (sm_87) and Thor (sm_110), NEON kernels for the CPU's nodes.

The artifact built here runs inside aarch64 ONNX Runtime under qemu-aarch64 (the private
sysroot of tests/fixtures/aarch64_python.py) twice: its own shim on the CPU EP (the NEON kernels), and
the same kernels' shim built with FFFC_TEST_CUDA_ON_CPU over tests/runtime/fake_cuda.cc
cross-compiled for aarch64 as libcuda.so.1, which runs every launch in fffc's CUDA emulator
(also cross-compiled): the shim's whole CUDA path on aarch64, only the silicon differs.
Both are compared with the original model run by x86 ONNX Runtime.
"""

from __future__ import annotations

import re
import struct
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import fffc
from fffc.cli import main
from fffc.codegen.build import build_kernel_library
from fffc.codegen.schedules import family
from fffc.contract.config import CompileOptions, cxx, sanitizers
from fffc.contract.kernels import SparseSpec
from fffc.package.native import build_shim, glibc_requirement
from fffc.package.toolchain import find_zig, glibc_version
from fffc.verify.cuda_emu import emulation_source
from tests.fixtures.aarch64_python import build_sysroot, run_python
from tests.fixtures.shim import relu_ffn_model
from tests.runtime.test_cuda_fake_driver import _specs

ROOT = Path(__file__).resolve().parents[2]
FAKE = ROOT / "tests" / "runtime" / "fake_cuda.cc"
SPEC = SparseSpec("relu", "none", "exact", 32, 128, 32, True, True, False)
EM_AARCH64, EM_CUDA = 183, 190
AARCH64 = "aarch64-linux-gnu"

RUNNER = '''
import os, sys, numpy as np, onnxruntime as ort
model, data = sys.argv[1], np.load(sys.argv[2])
for shim, out in zip(sys.argv[3::2], sys.argv[4::2]):
    so = ort.SessionOptions()
    so.register_custom_ops_library(shim)
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    np.savez(out, **{k: sess.run(None, {"x": data[k]})[0] for k in data.files})
print("aarch64 onnxruntime", ort.__version__, os.uname().machine)
'''


def _elf_machine(path: Path) -> int:
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF"
    return int.from_bytes(header[18:20], "little")


def _cubin_archs(fatbin: bytes) -> list[int]:
    """The SM number of each cubin in a fatbin, read from its ELF header: EM_CUDA, and the
    arch in e_flags (bits 0-7 in CUDA 12's ELF ABI version 7, bits 8-15 in CUDA 13's 8)."""
    out, i = [], fatbin.find(b"\x7fELF")
    while i >= 0:
        (machine,) = struct.unpack_from("<H", fatbin, i + 18)
        (flags,) = struct.unpack_from("<I", fatbin, i + 48)
        assert machine == EM_CUDA
        out.append(flags & 0xFF if fatbin[i + 8] < 8 else (flags >> 8) & 0xFF)
        i = fatbin.find(b"\x7fELF", i + 4)
    return out


def _cross(source: Path, out: Path, *flags: str) -> Path:
    subprocess.run([cxx(AARCH64), "-std=c++17", "-O1", "-shared", "-fPIC", "-w", *flags,
                    str(source), "-o", str(out)], check=True)
    assert _elf_machine(out) == EM_AARCH64
    return out


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return build_kernel_library([SPEC], family("cuda", "aarch64"),
                                tmp_path_factory.mktemp("k"))


@pytest.mark.parametrize("glibc", [None, pytest.param("2.31", marks=pytest.mark.skipif(
    find_zig() is None or bool(sanitizers()),
    reason="--glibc builds need zig (pip install 'fffc[glibc]'), no FFFC_SANITIZE"))])
def test_jetson_shim_is_aarch64_with_the_cuda_launcher_and_an_orin_cubin(library, tmp_path,
                                                                         glibc):
    """g++'s shim and zig's for JetPack 5's glibc 2.31: aarch64, the CUDA launcher in it
    (libcuda.so.1 opened at first use, never linked), the fatbin embedded, with cubins for
    Orin (sm_87) and, where the toolkit has it, Thor (sm_110); NEON CPU kernels."""
    assert library.target["mtriple"] == AARCH64 and library.cuda is not None
    shim = build_shim(library, tmp_path, glibc=glibc)
    data = shim.read_bytes()
    assert _elf_machine(shim) == EM_AARCH64
    dynamic = subprocess.run(["readelf", "-d", str(shim)], capture_output=True,
                             text=True).stdout
    assert "NEEDED" in dynamic and "libcuda" not in dynamic
    for name in (b"libcuda.so.1\0", b"cuLaunchKernel\0", b"cuModuleLoadData\0"):
        assert name in data, name  # the driver's entry points, resolved with dlsym
    fatbin = library.cuda.fatbin_path.read_bytes()
    assert fatbin in data
    archs = _cubin_archs(fatbin)
    assert 87 in archs and set(archs) <= {87, 110}, archs
    assert (110 in archs) == ("sm_110" in library.cuda.archs)
    if glibc is not None:
        assert glibc_version(glibc_requirement(shim)) <= glibc_version(glibc)
    objdump = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(library.object_path)],
                             capture_output=True, text=True).stdout
    assert re.search(r"\bfmla\s+v\d+\.4s", objdump)  # NEON in the CPU kernels


def test_jetson_archs_follow_the_cuda_version(tmp_path):
    """Without --arch: sm_87, plus sm_110 where the compiler has it (CUDA 13); CUDA 12
    compilers call Thor sm_101 and Thor's JetPack 7 runs CUDA 13, so --cuda-version 12
    builds sm_87 only (Thor JIT-compiles its compute_87 PTX). An --arch the compiler cannot
    build is refused before any stage."""
    from fffc.codegen import cuda_toolkit
    from fffc.contract.errors import CodegenError
    from fffc.stages.context import Context

    def archs(**kw) -> tuple[str, ...]:
        ctx = Context.for_compile(CompileOptions(target="jetson", **kw), tmp_path / "o",
                                  lambda *a: None)
        return ctx.options.cuda_archs

    has_110 = 110 in cuda_toolkit.find(None).archs
    assert archs() == (("sm_87", "sm_110") if has_110 else ("sm_87",))
    assert archs(cuda_archs=("sm_87",)) == ("sm_87",)
    try:
        cuda_toolkit.find(12)
    except CodegenError:
        return
    assert archs(cuda_version=12) == ("sm_87",)
    with pytest.raises(CodegenError, match="sm_110"):
        archs(cuda_version=12, cuda_archs=("sm_87", "sm_110"))


@pytest.mark.parametrize("flags, message", [
    (["--target", "x86", "--host", "aarch64"], "--host applies to --target cuda"),
    (["--target", "arm", "--host", "x86"], "--host applies to --target cuda"),
    (["--target", "jetson", "--host", "x86"], "contradicts"),
    (["--target", "cuda", "--host", "cuda"], "expected the GPU machine's CPU"),
    (["--target", "cuda", "--host", "riscv64"], "expected the GPU machine's CPU"),
])
def test_host_refusals(tmp_path, capsys, flags, message):
    """Combinations that cannot work: one line on stderr, exit code 2 (usage)."""
    path = relu_ffn_model(tmp_path / "m.onnx")
    assert main(["compile", str(path), "-o", str(tmp_path / "m.fffc"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "m.fffc").exists()


@pytest.fixture(scope="module")
def sysroot() -> Path:
    return build_sysroot()


def test_jetson_artifact_runs_its_cuda_path_in_aarch64_onnxruntime(sysroot, tmp_path):
    path = relu_ffn_model(tmp_path / "m.onnx")
    result = fffc.compile(path, tmp_path / "m.fffc", CompileOptions(target="cuda",
                                                                    host="aarch64"))
    art, manifest = result.artifact, result.manifest
    assert manifest["target"]["host"] == "arm"
    assert manifest["requires"]["arch"] == "aarch64"
    req = manifest["requires"]["cuda"]
    assert req["cubins"][0] == "sm_87" and "sm_87 (Orin)" in req["jetson"]["gpus"], req
    assert _elf_machine(art / manifest["shim"]) == EM_AARCH64
    assert manifest["verification"]["cuda_kernels"]  # emulated at compile time as well

    # the test shim: the artifact's kernels, its CUDA ones registered for the CPU EP
    library = build_kernel_library(_specs(manifest), family("cuda", "aarch64"),
                                   tmp_path / "lib", archs=tuple(manifest["cuda"]["archs"]))
    test_shim = build_shim(library, tmp_path, name="libcudaoncpu.so",
                           defines=("FFFC_TEST_CUDA_ON_CPU",))
    emu_src = tmp_path / "emu.cc"
    emu_src.write_text(emulation_source(library.cuda.source_path.read_text(),
                                        library.cuda.variants))
    emu = _cross(emu_src, tmp_path / "emu.so", "-pthread")
    (tmp_path / "fake").mkdir()
    _cross(FAKE, tmp_path / "fake" / "libcuda.so.1", "-ldl")

    rng = np.random.default_rng(11)
    # 1 token: decode1; 5: decode8; 2x8: decode16; 2x20 (40 tokens): past the table's
    # crossover (16), the original FFN in ONNX Runtime
    inputs = {f"t{b}x{s}": rng.standard_normal((b, s, 32)).astype(np.float32)
              for b, s in ((1, 1), (1, 5), (2, 8), (2, 20))}
    np.savez(tmp_path / "in.npz", **inputs)
    (tmp_path / "runner.py").write_text(RUNNER)
    log = tmp_path / "launches.txt"
    proc = run_python(sysroot, tmp_path / "runner.py",
                      [art / "model.onnx", tmp_path / "in.npz", art / manifest["shim"],
                       tmp_path / "neon.npz", test_shim, tmp_path / "cuda.npz"],
                      env={"FFFC_FAKE_CUDA_EMU": str(emu), "FFFC_FAKE_CUDA_LOG": str(log)},
                      ld_paths=[tmp_path / "fake"], timeout=900)
    assert "aarch64 onnxruntime" in proc.stdout and "aarch64" in proc.stdout.split()[-1]

    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    neon, cuda = np.load(tmp_path / "neon.npz"), np.load(tmp_path / "cuda.npz")
    for k, x in inputs.items():
        want = ref.run(None, {"x": x})[0]
        for got in (neon[k], cuda[k]):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=k)
    # the CUDA path ran: each decode variant was launched through the stand-in driver
    launches = log.read_text().splitlines()
    variants = {re.search(r"_(decode\d+)_", ln)[1] for ln in launches}
    assert variants == {"decode1", "decode8", "decode16"}, launches
