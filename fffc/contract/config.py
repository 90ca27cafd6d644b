"""Compile options and the ``FFFC_*`` environment knobs, read in this one place."""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .tolerances import RTOL


@dataclass(frozen=True)
class CompileOptions:
    """Everything that changes what ``fffc compile`` produces."""

    target: str = "x86"
    mcpu: str | None = None  # None: the host CPU for x86
    mattr: tuple[str, ...] = ()  # extra LLVM CPU features, e.g. ("+dotprod",)
    rtol: float = RTOL
    probe_batch: int = 2
    probe_seq: int = 8
    seed: int = 0
    dump_dir: Path | None = None
    force: bool = False
    sites: tuple[str, ...] = field(default=())  # empty: all sites
    host: str | None = None  # --host: a GPU target's host CPU ("x86", "aarch64"; None: the
    # target's own, x86 for cuda, aarch64 for jetson)
    cuda_archs: tuple[str, ...] | None = None  # --arch: cubins (+ PTX of the newest); None:
    # the target family's (``Cuda.default_archs``)
    cuda_version: int | None = None  # --cuda-version (``fffc.contract.cuda.CudaVersion``): the
    # CUDA major version whose compiler builds the fatbin (None: the nvcc on PATH, any version)
    max_sparse_tokens: int | None = None  # SparseFFN sites: the kernel up to N tokens, the
    # original FFN beyond (None: the crossover, see ``crossovers``; 0: the kernel always)
    crossovers: str | None = None  # "measured" | "table" (fffc.contract.kinds.Crossover):
    # where each site's crossover between its kernel and the original subgraph comes from;
    # None: FFFC_CROSSOVERS, else measured where the kernels run on this machine (x86)
    timings: Path | None = None  # pinned timings (JSON: a manifest.json, or per site a list
    # of {tokens, kernel_ms, original_ms}): the crossovers of those sites, not measured
    sparse_prefill: bool = False  # masked modes: the masked function beyond the kernel's
    # crossover too (default: the original FFN serves many-token calls)
    merged_max_tokens: int | None = None  # StructuredFFN: merged dense path up to N tokens
    # (None: measured at compile time on x86; 0: never)
    calibration: Path | None = None  # CALIB.json of `fffc calibrate`: TEAL thresholds
    budget: str | None = None  # with calibration: "sparsity=S" | "error=E" | "uniform=S"
    data: Path | None = None  # feeds: verification's (with made-up ones) and the budget
    # search's (default: made up)
    weight_dtype: str = "float32"  # --target cuda: float16 / bfloat16 weight matrices
    glibc: str | None = None  # --glibc 2.28: the oldest glibc the shim must load on (built
    # with zig for it; None: the shim compiler's own glibc, which requires.glibc reports)
    max_memory: str | None = None  # --max-memory (``fffc.plan.memory.budget``): a model whose
    # loading or verification needs more is refused (None: a share of the available memory)

    def hash(self) -> str:
        d = asdict(self)
        d.pop("dump_dir")
        d.pop("force")
        d.pop("max_memory")  # refuses a compile, never changes what it makes
        return hashlib.sha256(repr(sorted(d.items())).encode()).hexdigest()[:12]


def cache_dir() -> Path:
    """Where downloaded headers and built objects are cached (``FFFC_CACHE_DIR``)."""
    env = os.environ.get("FFFC_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "fffc"


def ort_include_dir_override() -> Path | None:
    """``ORT_INCLUDE_DIR``: a directory holding ``onnxruntime_c_api.h``, used as is."""
    env = os.environ.get("ORT_INCLUDE_DIR")
    return Path(env) if env else None


def num_threads() -> int | None:
    """``FFFC_NUM_THREADS``: threads of the shim's kernel pool (None: all cores)."""
    env = os.environ.get("FFFC_NUM_THREADS")
    return int(env) if env else None


def crossovers_from_env() -> str | None:
    """``FFFC_CROSSOVERS``: the default of ``CompileOptions.crossovers`` ("table" makes
    compiles reproducible, e.g. in CI)."""
    return os.environ.get("FFFC_CROSSOVERS") or None


def nvcc_from_env(major: int) -> Path | None:
    """``FFFC_NVCC_<major>`` (e.g. ``FFFC_NVCC_12``): the nvcc of a CUDA ``major`` toolkit,
    preferred to any other compiler of that version."""
    env = os.environ.get(f"FFFC_NVCC_{major}")
    return Path(env) if env else None


def dump_dir_from_env() -> Path | None:
    env = os.environ.get("FFFC_DUMP")
    return Path(env) if env else None


def cxx(triple: str = "x86_64-linux-gnu") -> str:
    """The C++ compiler that builds the shim for ``triple``: ``CXX`` (default g++) for this
    x86-64 machine, ``CXX_AARCH64`` (default aarch64-linux-gnu-g++) for aarch64."""
    if triple.startswith("aarch64"):
        return os.environ.get("CXX_AARCH64", "aarch64-linux-gnu-g++")
    return os.environ.get("CXX", "g++")


SANITIZERS = ("address", "undefined")


def sanitizers() -> tuple[str, ...]:
    """``FFFC_SANITIZE=address,undefined``: the shim built with those sanitizers (ASan's
    runtime must then be loaded first, e.g. ``LD_PRELOAD=$(g++ -print-file-name=libasan.so)``:
    ``make test-asan``); a name outside ``SANITIZERS`` is refused."""
    names = tuple(n for n in os.environ.get("FFFC_SANITIZE", "").split(",") if n)
    unknown = [n for n in names if n not in SANITIZERS]
    if unknown:
        raise ValueError(f"FFFC_SANITIZE: unknown sanitizer(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(SANITIZERS)}")
    return names


def debug() -> bool:
    """``FFFC_DEBUG=1``: the CLI shows tracebacks instead of one-line errors."""
    return os.environ.get("FFFC_DEBUG", "") not in ("", "0")
