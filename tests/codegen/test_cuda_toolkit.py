"""The CUDA compiler per ``--cuda-version`` (fffc/codegen/cuda_toolkit.py) and the driver
table (fffc/contract/cuda.py): which compiler is found, what it writes into the fatbin, and
the refusals when none of the asked version is there."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

import fffc
from fffc.codegen import cuda_toolkit
from fffc.codegen.cuda_build import _fatbin_headers, fatbin_entries, fatbin_ptx_isa
from fffc.contract.cuda import RELEASES, CudaVersion, driver_requirement, release, release_of_ptx
from fffc.contract.errors import CodegenError, UsageError
from tests.fixtures.cuda_toolkit import no_cuda12
from tests.fixtures.shim import relu_ffn_model

KERNEL = """extern "C" __global__ void __launch_bounds__(64) twice(float* __restrict__ a, int N) {
  int i = blockIdx.x * 64 + threadIdx.x;
  if (i < N) a[i] *= 2.0f;
}
"""


def _cuda12() -> cuda_toolkit.Toolkit:
    try:
        return cuda_toolkit.find(CudaVersion.CUDA12)
    except CodegenError as e:
        pytest.skip(str(e))


@pytest.fixture
def kernel(tmp_path) -> Path:
    src = tmp_path / "k.cu"
    src.write_text(KERNEL)
    return src


def test_cuda_12_fatbin(kernel, tmp_path) -> None:
    """A CUDA 12 compiler's fatbin: a cubin per arch of CUDA 12's ELF ABI (OSABI 0x33, ABI
    version 7), PTX of the newest arch whose ISA is the one the table gives its release."""
    tk = _cuda12()
    assert tk.version[0] == 12
    out = tmp_path / "k.fatbin"
    cuda_toolkit.find(12).compile(kernel, out, ["sm_80", "sm_87", "sm_90"])
    assert sorted(fatbin_entries(out)) == [("elf", "sm_80"), ("elf", "sm_87"), ("elf", "sm_90"),
                                           ("ptx", "sm_90")]
    data = out.read_bytes()
    elves = [data[i:i + 9] for i in range(len(data)) if data.startswith(b"\x7fELF", i)]
    assert len(elves) == 3 and {e[7:9] for e in elves} == {b"\x33\x07"}, elves
    if isinstance(tk, cuda_toolkit.Nvrtc):  # uncompressed: the PTX reads as text
        (major, minor), = re.findall(rb"\.version (\d+)\.(\d+)\s+\.target sm_90\b", data)
        assert fatbin_ptx_isa(out) == (int(major), int(minor))
    assert fatbin_ptx_isa(out) == release(tk.version).ptx_isa


def test_nvcc_on_path_matches_the_table(kernel, tmp_path) -> None:
    """The default compiler (nvcc on PATH) writes the PTX ISA its release has in the table."""
    tk = cuda_toolkit.find()
    out = tmp_path / "k.fatbin"
    tk.compile(kernel, out, ["sm_80", "sm_90"])
    assert fatbin_ptx_isa(out) == release(tk.version).ptx_isa
    assert {kind for kind, _, _ in _fatbin_headers(out)} == {"elf", "ptx"}


def test_arch_the_compiler_lacks(kernel, tmp_path) -> None:
    """An arch the chosen compiler cannot build is refused by name, with what it has."""
    tk = _cuda12()
    missing = next(f"sm_{n}" for n in (110, 100, 120) if n not in tk.archs)
    with pytest.raises(CodegenError, match=rf"cannot compile for {missing} \(it has .*sm_90"):
        tk.compile(kernel, tmp_path / "k.fatbin", ["sm_80", missing])


def test_compile_refuses_an_arch_before_any_stage(tmp_path) -> None:
    """--arch naming one the CUDA 12 compiler lacks: refused when the options are read."""
    tk = _cuda12()
    missing = next(f"sm_{n}" for n in (110, 100, 120) if n not in tk.archs)
    path = relu_ffn_model(tmp_path / "m.onnx")
    with pytest.raises(CodegenError, match=f"cannot compile for {missing}"):
        fffc.compile(path, tmp_path / "m.fffc", fffc.CompileOptions(
            target="cuda", cuda_version=12, cuda_archs=("sm_80", missing)))
    assert not (tmp_path / "m.fffc").exists()


def test_no_cuda_12_compiler(monkeypatch) -> None:
    no_cuda12(monkeypatch)
    with pytest.raises(CodegenError, match=r"--cuda-version 12: no CUDA 12 compiler found; "
                       r"tried FFFC_NVCC_12 \(unset\); nvcc 13\.0 .* on PATH; the PyPI wheels "
                       r"\(nvidia-cuda-nvrtc-cu12 .*pip install 'fffc\[cuda12\]'"):
        cuda_toolkit.find(12)


def test_compile_refuses_before_any_stage(monkeypatch, tmp_path) -> None:
    """fffc compile --cuda-version 12 without a CUDA 12 compiler fails at once, typed."""
    no_cuda12(monkeypatch)
    path = relu_ffn_model(tmp_path / "m.onnx")
    with pytest.raises(CodegenError, match="no CUDA 12 compiler"):
        fffc.compile(path, tmp_path / "m.fffc", fffc.CompileOptions(target="cuda",
                                                                   cuda_version=12))
    assert not (tmp_path / "m.fffc").exists()


def test_cuda_version_options_refused(tmp_path) -> None:
    path = relu_ffn_model(tmp_path / "m.onnx")
    with pytest.raises(UsageError, match="--cuda-version applies to --target cuda"):
        fffc.compile(path, tmp_path / "a", fffc.CompileOptions(target="x86", cuda_version=12))
    with pytest.raises(UsageError, match="unknown CUDA version 11"):
        fffc.compile(path, tmp_path / "b", fffc.CompileOptions(target="cuda", cuda_version=11))


def test_nvcc_override_of_another_version(monkeypatch) -> None:
    """FFFC_NVCC_12 naming a CUDA 13 nvcc is refused, not used."""
    nvcc13 = cuda_toolkit.find()
    if nvcc13.version[0] == 12:
        pytest.skip("the nvcc on PATH is CUDA 12")
    monkeypatch.setenv("FFFC_NVCC_12", nvcc13.path)
    with pytest.raises(CodegenError, match=r"FFFC_NVCC_12=.*not the nvcc of a CUDA 12"):
        cuda_toolkit.find(12)


def test_driver_table() -> None:
    """Releases in order, each PTX ISA no older than the last, drivers rising; a cubin's
    driver is its major version's x.0 one, PTX's the release that introduced its ISA."""
    for a, b in itertools.pairwise(RELEASES):
        assert a.cuda < b.cuda and a.ptx_isa <= b.ptx_isa
        assert tuple(map(int, a.driver.split("."))) < tuple(map(int, b.driver.split(".")))
    assert release_of_ptx((8, 5)).name == "12.5"
    assert release_of_ptx((8, 6)).name == "12.8"  # 12.7 was never released
    req = driver_requirement((12, 9), ("sm_80", "sm_90"), "sm_90", (8, 8))
    assert req["driver"] == ">= 525.60.13" and req["ptx_isa"] == "8.8"
    assert req["ptx_driver"].startswith(">= 575.51.03 (CUDA 12.9+")
    assert driver_requirement((13, 0), ("sm_90",), "sm_90", (9, 0))["driver"] == ">= 580.65.06"
