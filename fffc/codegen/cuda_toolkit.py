"""The CUDA compilers that turn TVM's CUDA source into a fatbin, one per CUDA version.

A fatbin holds a cubin per requested arch and the PTX of the newest one (GPUs without a
matching cubin JIT-compile it). Two kinds of toolkit build it:

* ``Nvcc``: a CUDA toolkit's nvcc (``FFFC_NVCC_<major>``, or the nvcc on PATH);
* ``Nvrtc``: NVIDIA's PyPI wheels of one CUDA major version — NVRTC compiles the source
  (headers from the CCCL and runtime wheels), nvFatbin packs the cubins and the PTX. This
  is how ``--cuda-version 12`` builds on a machine whose toolkit is CUDA 13 (the
  ``nvidia-cuda-nvcc-cu12`` wheel ships ptxas and libnvvm, not nvcc).

``find(version)`` picks one; everything else asks the ``Toolkit`` it returns.
"""

from __future__ import annotations

import ctypes
import importlib.metadata as md
import re
import shutil
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

from fffc.contract.config import nvcc_from_env
from fffc.contract.cuda import CudaVersion
from fffc.contract.errors import CodegenError

# TVM's CSE leaves unused temporaries: silence that one warning (#177), keep the rest
_SUPPRESSED_DIAGNOSTICS = ("177",)


def arch_number(arch: str) -> int:
    """``90`` for ``sm_90`` and ``sm_90a``."""
    return int(arch.removeprefix("sm_").rstrip("a"))


def newest(archs: Sequence[str]) -> str:
    return max(archs, key=arch_number)


# Per CUDA major version, the PyPI distributions ``Nvrtc`` needs and the file each provides,
# in this order: the NVRTC library, the nvFatbin library, then include folders.
PYPI_WHEELS: dict[CudaVersion, dict[str, str]] = {
    CudaVersion.CUDA12: {
        "nvidia-cuda-nvrtc-cu12": "nvidia/cuda_nvrtc/lib/libnvrtc.so.12",
        "nvidia-nvfatbin-cu12": "nvidia/nvfatbin/lib/libnvfatbin.so.12",
        "nvidia-cuda-cccl-cu12": "nvidia/cuda_cccl/include",  # <cuda/std/...>
        "nvidia-cuda-runtime-cu12": "nvidia/cuda_runtime/include",  # <cuda_fp16.h>, ...
    },
}


class Toolkit(ABC):
    """A compiler of one CUDA version that builds fatbins."""

    @property
    @abstractmethod
    def version(self) -> tuple[int, int]:
        """The CUDA release (major, minor) of its compiler."""

    @property
    @abstractmethod
    def archs(self) -> frozenset[int]:
        """The arch numbers it compiles for (90 for sm_90)."""

    @abstractmethod
    def describe(self) -> str:
        """What it is and where it lies, for the manifest and errors."""

    @abstractmethod
    def _compile(self, source_path: Path, out: Path, archs: Sequence[str]) -> None: ...

    def check(self, archs: Sequence[str]) -> None:
        """Refuses an arch this compiler cannot build, naming those it can."""
        missing = [a for a in archs if arch_number(a) not in self.archs]
        if missing:
            have = ", ".join(f"sm_{n}" for n in sorted(self.archs))
            raise CodegenError(f"{self.describe()} cannot compile for {', '.join(missing)} "
                               f"(it has {have}): choose other --arch values or a newer "
                               "--cuda-version")

    def compile(self, source_path: Path, out: Path, archs: Sequence[str]) -> None:
        """One cubin per arch plus the PTX of the newest arch, into the fatbin ``out``."""
        self.check(archs)
        self._compile(source_path, out, archs)


class Nvcc(Toolkit):
    def __init__(self, path: str | Path):
        self.path = str(path)

    @cached_property
    def version(self) -> tuple[int, int]:
        proc = subprocess.run([self.path, "--version"], capture_output=True, text=True)
        m = re.search(r"release (\d+)\.(\d+)", proc.stdout)
        if m is None:
            raise CodegenError(f"{self.path} --version does not say its CUDA release")
        return int(m[1]), int(m[2])

    @cached_property
    def archs(self) -> frozenset[int]:
        proc = subprocess.run([self.path, "--list-gpu-arch"], capture_output=True, text=True)
        return frozenset(int(n) for n in re.findall(r"compute_(\d+)", proc.stdout))

    def describe(self) -> str:
        return f"nvcc {self.version[0]}.{self.version[1]} ({self.path})"

    def _compile(self, source_path: Path, out: Path, archs: Sequence[str]) -> None:
        gencode = []
        for arch in archs:
            num = arch.removeprefix("sm_")
            gencode += ["-gencode", f"arch=compute_{num},code=sm_{num}"]
        num = newest(archs).removeprefix("sm_")
        gencode += ["-gencode", f"arch=compute_{num},code=compute_{num}"]
        cmd = [self.path, "-fatbin", "-O3", "-diag-suppress", ",".join(_SUPPRESSED_DIAGNOSTICS),
               *gencode, str(source_path), "-o", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
            errors = [ln for ln in lines if "error" in ln.lower()] or lines
            raise CodegenError("nvcc failed: " + " | ".join(errors[:6]))


class Nvrtc(Toolkit):
    """NVRTC and nvFatbin of one CUDA major version, from NVIDIA's PyPI wheels."""

    def __init__(self, major: CudaVersion, files: dict[str, Path]):
        self.major = major
        nvrtc, fatbin, *includes = files.values()
        self._nvrtc_path, self._fatbin_path, self._includes = nvrtc, fatbin, includes

    @classmethod
    def from_wheels(cls, major: CudaVersion) -> Nvrtc | None:
        """The installed wheels of ``major``, or None when one is missing."""
        files = {}
        for dist, rel in PYPI_WHEELS.get(major, {}).items():
            try:
                path = Path(md.distribution(dist).locate_file(rel))
            except md.PackageNotFoundError:
                return None
            if not path.exists():
                return None
            files[dist] = path
        return cls(major, files) if files else None

    @cached_property
    def _nvrtc(self):
        lib = ctypes.CDLL(str(self._nvrtc_path))
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        return lib

    @cached_property
    def _fatbin(self):
        lib = ctypes.CDLL(str(self._fatbin_path))
        lib.nvFatbinGetErrorString.restype = ctypes.c_char_p
        return lib

    @cached_property
    def version(self) -> tuple[int, int]:
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._nvrtc.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
        return major.value, minor.value

    @cached_property
    def archs(self) -> frozenset[int]:
        n = ctypes.c_int()
        self._nvrtc.nvrtcGetNumSupportedArchs(ctypes.byref(n))
        out = (ctypes.c_int * n.value)()
        self._nvrtc.nvrtcGetSupportedArchs(out)
        return frozenset(out)

    def describe(self) -> str:
        return f"NVRTC {self.version[0]}.{self.version[1]} ({self._nvrtc_path})"

    def _program(self, source: bytes, option: str) -> tuple[bytes, bytes]:
        """Compile ``source`` with ``--gpu-architecture=option``: (PTX or cubin, log)."""
        lib = self._nvrtc
        prog = ctypes.c_void_p()
        self._check(lib.nvrtcCreateProgram(ctypes.byref(prog), source, b"fffc_kernels.cu",
                                           0, None, None), "nvrtcCreateProgram")
        try:
            opts = [f"--gpu-architecture={option}",
                    *(f"--include-path={p}" for p in self._includes),
                    *(f"--diag-suppress={d}" for d in _SUPPRESSED_DIAGNOSTICS)]
            copts = (ctypes.c_char_p * len(opts))(*(o.encode() for o in opts))
            rc = lib.nvrtcCompileProgram(prog, len(opts), copts)
            size = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetProgramLog(prog, log)
            if rc != 0:
                lines = [ln for ln in log.value.decode(errors="replace").splitlines()
                         if ln.strip()]
                errors = [ln for ln in lines if "error" in ln.lower()] or lines
                raise CodegenError(f"NVRTC failed ({option}): " + " | ".join(errors[:6]))
            ptx = option.startswith("compute_")
            get_size, get = ((lib.nvrtcGetPTXSize, lib.nvrtcGetPTX) if ptx else
                             (lib.nvrtcGetCUBINSize, lib.nvrtcGetCUBIN))
            self._check(get_size(prog, ctypes.byref(size)), "nvrtcGet*Size")
            code = ctypes.create_string_buffer(size.value)
            self._check(get(prog, code), "nvrtcGet*")
            return code.raw, log.value
        finally:
            lib.nvrtcDestroyProgram(ctypes.byref(prog))

    def _check(self, rc: int, call: str) -> None:
        if rc != 0:
            raise CodegenError(f"{call}: {self._nvrtc.nvrtcGetErrorString(rc).decode()}")

    def _check_fatbin(self, rc: int, call: str) -> None:
        if rc != 0:
            raise CodegenError(f"{call}: {self._fatbin.nvFatbinGetErrorString(rc).decode()}")

    def _compile(self, source_path: Path, out: Path, archs: Sequence[str]) -> None:
        source = Path(source_path).read_bytes()
        lib = self._fatbin
        handle = ctypes.c_void_p()
        # uncompressed: every driver of the major version reads the entries as they are
        opts = [b"-64", b"-host=linux", b"-compress=false"]
        self._check_fatbin(lib.nvFatbinCreate(ctypes.byref(handle),
                                              (ctypes.c_char_p * len(opts))(*opts), len(opts)),
                           "nvFatbinCreate")
        try:
            for arch in archs:
                cubin, _ = self._program(source, arch)
                num = arch.removeprefix("sm_").encode()
                self._check_fatbin(lib.nvFatbinAddCubin(handle, cubin, len(cubin), num,
                                                        b"fffc_kernels"), "nvFatbinAddCubin")
            num = newest(archs).removeprefix("sm_")
            ptx, _ = self._program(source, f"compute_{num}")
            self._check_fatbin(lib.nvFatbinAddPTX(handle, ptx, len(ptx), num.encode(),
                                                  b"fffc_kernels", b""), "nvFatbinAddPTX")
            size = ctypes.c_size_t()
            self._check_fatbin(lib.nvFatbinSize(handle, ctypes.byref(size)), "nvFatbinSize")
            data = ctypes.create_string_buffer(size.value)
            self._check_fatbin(lib.nvFatbinGet(handle, data), "nvFatbinGet")
            Path(out).write_bytes(data.raw)
        finally:
            lib.nvFatbinDestroy(ctypes.byref(handle))


def find(version: CudaVersion | None = None) -> Toolkit:
    """The compiler that builds fatbins for CUDA ``version``: ``FFFC_NVCC_<version>``, else
    the nvcc on PATH when its release is of that version, else the version's PyPI wheels
    (``PYPI_WHEELS``). ``None``: the nvcc on PATH, whatever its version."""
    if version is None:
        path = shutil.which("nvcc")
        if path is None:
            raise CodegenError("nvcc not found: install the CUDA toolkit (12 or newer) and put "
                               "nvcc on PATH to build --target cuda (or choose --cuda-version)")
        return Nvcc(path)
    version = CudaVersion(version)
    tried = []
    env = nvcc_from_env(version.value)
    if env is not None:
        nvcc = Nvcc(env)
        if not env.exists() or nvcc.version[0] != version:
            raise CodegenError(f"FFFC_NVCC_{version.value}={env}: not the nvcc of a CUDA "
                               f"{version.value} toolkit")
        return nvcc
    tried.append(f"FFFC_NVCC_{version.value} (unset)")
    path = shutil.which("nvcc")
    if path is not None:
        nvcc = Nvcc(path)
        if nvcc.version[0] == version:
            return nvcc
        tried.append(f"{nvcc.describe()} on PATH")
    else:
        tried.append("nvcc on PATH (none)")
    wheels = Nvrtc.from_wheels(version)
    if wheels is not None:
        return wheels
    if version in PYPI_WHEELS:
        dists = " ".join(PYPI_WHEELS[version])
        tried.append(f"the PyPI wheels ({dists}: pip install 'fffc[cuda{version.value}]')")
    raise CodegenError(f"--cuda-version {version.value}: no CUDA {version.value} compiler "
                       f"found; tried {'; '.join(tried)}")
