"""Stage: the native custom-op library that registers the kernels in ONNX Runtime; for a
CPU this machine cannot run, also a host build of the same kernels for the check."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..codegen._tvm import host_cpu
from ..codegen.build import build_kernel_library, host_can_run
from ..package.native import build_shim, shim_sources
from .codegen import Kernels
from .context import Context

NAME = "build shim"


@dataclass
class Shim:
    kernels: Kernels
    path: Path | None = None  # the shim in the artifact
    check_path: Path | None = None  # what the check loads: the shim, or a host twin
    twin: str | None = None  # where a twin's kernels run, when the check loads one

    @property
    def verified(self):
        return self.kernels.verified


def run(kernels: Kernels, ctx: Context) -> Shim:
    library = kernels.library
    if library is None:
        return Shim(kernels)
    with ctx.report(NAME):
        shim = build_shim(library, ctx.staging, glibc=ctx.options.glibc)
    for name, text in shim_sources(library).items():
        ctx.dump.text(f"07-shim/{name}", text)
    if host_can_run(library.target):
        return Shim(kernels, shim, shim)
    # The target CPU's code cannot run here: the check runs the same CPU kernels built for
    # this host instead (same TIR, only the instruction selection differs); a GPU's kernels
    # are checked in the emulator (stage check), so the twin carries the CPU ones only.
    with ctx.report("build host twin for the check"):
        twin = ctx.staging.parent / f"{ctx.staging.name}-twin"
        fam = ctx.family
        twin_lib = build_kernel_library(kernels.specs, fam.cpu, twin / "kernels",
                                        mcpu=ctx.target.mcpu or fam.cpu_mcpu, host_twin=True,
                                        mattr=ctx.options.mattr)
        check = build_shim(twin_lib, twin)
    return Shim(kernels, shim, check, f"a host build of the same kernels ({host_cpu()})")
