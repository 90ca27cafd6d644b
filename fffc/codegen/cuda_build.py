"""Build the CUDA kernels of an artifact: TVM emits CUDA C++, a CUDA compiler of the chosen
version (``cuda_toolkit``) compiles it to a fatbin.

TVM 0.27 only emits source for a cuda target, and its CUDA runtime would tie the artifact
to a CUDA-13 driver and Python-registered callbacks; the shim instead loads the fatbin
with the driver API and launches each kernel itself. So everything a launch needs is
recorded here, read off the scheduled TIR and the emitted source: the kernel name, its
parameter order (TVM sorts parameters by name), grid and block. Grid dimensions are
``(a·N + b) // c`` of the token count N; the shim evaluates them per call.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fffc.contract.cuda import CudaVersion
from fffc.contract.errors import CodegenError
from fffc.contract.kernels import KernelSpec

from . import _tvm, cuda_toolkit, registry
from .cuda_toolkit import Toolkit
from .schedules import Family

DEFAULT_ARCHS = ("sm_80", "sm_90")  # a GPU server's (schedules.cuda.Config.archs)
FATBIN_NAME = "fffc_kernels.fatbin"
SOURCE_NAME = "fffc_kernels.cu"
TOKEN_VAR = "N"


@dataclass(frozen=True)
class Dim:
    """One launch dimension: ``(a * N + b) // c`` for N tokens."""

    a: int
    b: int
    c: int = 1

    def __call__(self, n: int) -> int:
        return (self.a * n + self.b) // self.c


@dataclass(frozen=True)
class Launch:
    kernel: str  # the __global__ function's name in the fatbin
    params: tuple[str, ...]  # in the kernel's parameter order: buffer names, then "N"
    grid: tuple[Dim, Dim, Dim]
    block: tuple[int, int, int]


@dataclass(frozen=True)
class CudaVariant:
    """One token range of a spec: launches in order, over the listed workspace buffers."""

    spec: KernelSpec
    variant: str
    min_tokens: int
    max_tokens: int
    launches: tuple[Launch, ...]
    workspace: tuple[tuple[str, int], ...]  # (buffer, float32 elements per token)

    @property
    def symbol(self) -> str:
        return f"fffc_{registry.of(self.spec).cuda_symbol}_{self.spec.key}_{self.variant}"

    @property
    def table_mode(self) -> str:
        """The CUDA kernel table's mode: the shim's key for the call's arguments."""
        return registry.of(self.spec).cuda_table_mode(self.spec)


@dataclass(frozen=True)
class CudaLibrary:
    fatbin_path: Path
    source_path: Path
    archs: tuple[str, ...]
    variants: tuple[CudaVariant, ...]
    toolkit: str  # the compiler that built the fatbin (``Toolkit.describe``)
    cuda: tuple[int, int]  # its CUDA release


_DIM_FORMS = (
    (re.compile(r"^(\d+)$"), lambda m: Dim(0, int(m[1]), 1)),
    (re.compile(r"^\(N \+ (\d+)\) // (\d+)$"), lambda m: Dim(1, int(m[1]), int(m[2]))),
    (re.compile(r"^\(N \* (\d+) \+ (\d+)\) // (\d+)$"),
     lambda m: Dim(int(m[1]), int(m[2]), int(m[3]))),
    (re.compile(r"^N$"), lambda m: Dim(1, 0, 1)),
)
_BINDING = re.compile(r'thread_binding\((.*?), thread="([^"]+)"\)')
_KERNEL = re.compile(r'extern "C" __global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\(([^)]*)\)\s*\{')


def _dim(text: str) -> Dim:
    for pattern, make in _DIM_FORMS:
        m = pattern.match(text.strip())
        if m:
            dim = make(m)
            for n in (1, 2, 7, 64, 1000, 4097):  # the parsed form must be the expression
                if dim(n) != _tvm_eval(text, n):
                    break
            else:
                return dim
    raise CodegenError(f"launch extent {text!r} is not of the form (a*N + b) // c")


def _tvm_eval(text: str, n: int) -> int:
    return int(eval(text, {"__builtins__": {}}, {TOKEN_VAR: n}))  # digits, N, + * // only


def _geometry(func) -> tuple[tuple[Dim, Dim, Dim], tuple[int, int, int]]:
    """Grid and block of a scheduled single-kernel PrimFunc, from its thread bindings."""
    found: dict[str, Dim] = {}
    for extent, tag in _BINDING.findall(func.script()):
        dim = _dim(extent)
        if tag.startswith("vthread"):
            if dim != Dim(0, 1, 1):
                raise CodegenError(f"virtual threads ({tag}={extent}) are not supported")
            continue
        if found.setdefault(tag, dim) != dim:
            raise CodegenError(f"{tag} bound with two extents ({found[tag]}, {dim})")
    grid = tuple(found.get(f"blockIdx.{a}", Dim(0, 1, 1)) for a in "xyz")
    block = []
    for a in "xyz":
        d = found.get(f"threadIdx.{a}", Dim(0, 1, 1))
        if d.a != 0:
            raise CodegenError(f"threadIdx.{a} extent depends on the token count")
        block.append(d(0))
    return grid, tuple(block)  # type: ignore[return-value]


def _signatures(source: str) -> dict[str, tuple[str, ...]]:
    """Kernel name → parameter names (``X_ptr`` → ``X``) in the emitted order."""
    out = {}
    for name, params in _KERNEL.findall(source):
        names = []
        for p in params.split(","):
            ident = p.strip().split()[-1]
            names.append(ident[:-4] if ident.endswith("_ptr") else ident)
        out[name] = tuple(names)
    return out


def emit_kernels(funcs: dict, arch: str = "sm_90") -> tuple[str, dict[str, Launch]]:
    """CUDA source of scheduled single-kernel PrimFuncs and each one's launch, by name."""
    geoms = {name: _geometry(f) for name, f in funcs.items()}
    try:
        source = _tvm.cuda_source(funcs, _tvm.cuda_target(arch))
    except Exception as e:
        raise CodegenError(f"TVM CUDA codegen for {arch} failed: {e}") from e
    sigs = _signatures(source)
    launches = {}
    for name, (grid, block) in geoms.items():
        kernel = f"{name}_kernel"
        if kernel not in sigs or any(k.startswith(kernel + "_") for k in sigs):
            raise CodegenError(f"{name}: expected exactly one CUDA kernel {kernel}")
        launches[name] = Launch(kernel, sigs[kernel], grid, block)
    return source, launches


def emit(specs: Sequence[KernelSpec], fam: Family, arch: str = "sm_90",
         counted_specs: Sequence[KernelSpec] = ()) -> tuple[str, list[CudaVariant]]:
    """CUDA source of every variant of every spec for the device family ``fam``, and how to
    launch each; the specs in ``counted_specs`` get their "counted_" variants (rows < CNT[0]
    only)."""
    target, tvm_target = fam.target(arch), _tvm.cuda_target(arch)
    if any(not registry.of(s).counted for s in counted_specs):
        raise CodegenError("counted CUDA variants exist for StructuredFFN specs only")
    funcs: dict = {}
    pending = []
    for spec in dict.fromkeys([*specs, *counted_specs]):
        op = registry.of(spec)
        for counted in (False, True):  # plain and/or counted variants, launches in order
            if spec not in (counted_specs if counted else specs):
                continue
            for v in op.cuda_variants(spec, fam, target, counted):
                vf = op.cuda_funcs(spec, v, f"fffc_{op.cuda_symbol}_{spec.key}_{v.name}",
                                   tvm_target)
                funcs.update(vf)
                pending.append((spec, v, list(vf)))
    source, launches = emit_kernels(funcs, arch)
    variants = []
    for spec, v, names in pending:
        op = registry.of(spec)
        ws = op.workspace(spec, v)
        known = {*spec.arg_names(), *ws, *op.launch_params(spec, v), TOKEN_VAR}
        for name in names:
            unknown = set(launches[name].params) - known
            if unknown:  # e.g. a host-computed expression TVM hoisted into a parameter
                raise CodegenError(f"{launches[name].kernel}: parameters {sorted(unknown)} "
                                   "cannot be launched")
        variants.append(CudaVariant(spec, v.name, v.min_tokens, v.max_tokens,
                                    tuple(launches[n] for n in names), tuple(ws.items())))
    return source, variants


def _fatbin_headers(path: Path) -> list[tuple[str, str, tuple[int, int]]]:
    """Each fatbin entry's kind, arch and version (a PTX entry's: its PTX ISA version)."""
    import struct

    data = Path(path).read_bytes()
    magic, _, header, size = struct.unpack_from("<IHHQ", data, 0)
    if magic != 0xBA55ED50:
        raise CodegenError(f"{path} is not a CUDA fatbin")
    out, off = [], header
    while off < header + size:
        kind, _, entry_header, payload = struct.unpack_from("<HHIQ", data, off)
        minor, major, arch = struct.unpack_from("<HHI", data, off + 24)
        out.append(({1: "ptx", 2: "elf"}.get(kind, f"kind{kind}"), f"sm_{arch}", (major, minor)))
        off += entry_header + payload
    return out


def fatbin_entries(path: Path) -> list[tuple[str, str]]:
    """``[("elf" | "ptx", "sm_XX"), ...]``: what a fatbin holds (for the manifest and tests)."""
    return [(kind, arch) for kind, arch, _ in _fatbin_headers(path)]


def fatbin_ptx_isa(path: Path) -> tuple[int, int]:
    """The PTX ISA version of the fatbin's PTX (the newest, if several)."""
    isas = [version for kind, _, version in _fatbin_headers(path) if kind == "ptx"]
    if not isas:
        raise CodegenError(f"{path} holds no PTX")
    return max(isas)


def compile_fatbin(source_path: Path, out: Path, archs: Sequence[str],
                   toolkit: Toolkit | None = None) -> Toolkit:
    """One cubin per arch plus PTX of the newest arch (forward compatibility), compiled by
    ``toolkit`` (default: the nvcc on PATH); returns the toolkit."""
    toolkit = toolkit or cuda_toolkit.find()
    toolkit.compile(source_path, out, archs)
    return toolkit


def build_cuda_library(specs: Sequence[KernelSpec], fam: Family, out_dir: Path,
                       archs: Sequence[str] | None = None,
                       counted_specs: Sequence[KernelSpec] = (),
                       cuda_version: CudaVersion | None = None) -> CudaLibrary:
    """Emit, check and compile the CUDA kernels of ``specs`` (and the counted variants of
    ``counted_specs``) for the device family ``fam`` into ``out_dir``, with the compiler of
    ``cuda_version`` (None: the nvcc on PATH), a cubin per arch of ``archs`` (None: the
    family's default for that compiler)."""
    toolkit = cuda_toolkit.find(cuda_version)  # before the slow emission: refusals come first
    archs = tuple(archs) if archs is not None else fam.default_archs(toolkit.archs)
    for arch in archs:
        if not re.fullmatch(r"sm_\d+a?", arch):
            raise CodegenError(f"CUDA arch {arch!r}: expected sm_XX (e.g. sm_80, sm_90)")
    toolkit.check(archs)
    # One source for every arch: the fp32 schedules do not depend on it, which is checked.
    source, variants = emit(specs, fam, archs[0], counted_specs)
    for arch in archs[1:]:
        other, _ = emit(specs, fam, arch, counted_specs)
        if other != source:
            raise CodegenError(f"TVM emits different CUDA for {archs[0]} and {arch}; build them "
                               "as separate artifacts")
    out_dir.mkdir(parents=True, exist_ok=True)
    src = out_dir / SOURCE_NAME
    src.write_text(source)
    fatbin = out_dir / FATBIN_NAME
    compile_fatbin(src, fatbin, archs, toolkit)
    return CudaLibrary(fatbin, src, archs, tuple(variants), toolkit.describe(), toolkit.version)
