"""CUDA toolkit versions an artifact's kernels may be built with, and the NVIDIA driver each
build needs. Leaf module.

A fatbin holds one cubin per arch and the PTX of the newest arch. A driver loads a cubin
built by any CUDA X.y toolkit when it is a driver of CUDA X.0 or newer (CUDA minor version
compatibility), and JIT-compiles PTX only when it knows the PTX's ISA version: the PTX
sets the driver a GPU without a matching cubin needs.

Sources of the table: the PTX ISA's release history (PTX ISA document, "Release Notes":
which CUDA release introduced each PTX ISA version) and the CUDA Toolkit release notes'
"CUDA Toolkit and Corresponding Driver Versions" (the Linux x86-64 minimum driver of each
release's GA build).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class CudaVersion(IntEnum):
    """``--cuda-version``: the CUDA major version whose toolkit builds the fatbin."""

    CUDA12 = 12  # drivers R525 and newer (most servers, JetPack 6)
    CUDA13 = 13  # drivers R580 and newer

    @classmethod
    def parse(cls, text: str | int) -> CudaVersion:
        try:
            return cls(int(text))
        except ValueError:
            known = ", ".join(str(v.value) for v in cls)
            raise ValueError(f"unknown CUDA version {text!r}; expected one of {known}") from None


@dataclass(frozen=True)
class Release:
    """A CUDA toolkit release: the PTX ISA its compilers write and the driver it needs."""

    cuda: tuple[int, int]
    ptx_isa: tuple[int, int]
    driver: str  # Linux x86-64 minimum driver of the GA build

    @property
    def name(self) -> str:
        return f"{self.cuda[0]}.{self.cuda[1]}"


RELEASES = (
    Release((12, 0), (8, 0), "525.60.13"),
    Release((12, 1), (8, 1), "530.30.02"),
    Release((12, 2), (8, 2), "535.54.03"),
    Release((12, 3), (8, 3), "545.23.06"),
    Release((12, 4), (8, 4), "550.54.14"),
    Release((12, 5), (8, 5), "555.42.02"),
    Release((12, 6), (8, 5), "560.28.03"),  # 12.6 kept PTX ISA 8.5
    Release((12, 8), (8, 7), "570.26"),  # PTX ISA 8.6 belongs to 12.7, never released
    Release((12, 9), (8, 8), "575.51.03"),
    Release((13, 0), (9, 0), "580.65.06"),
)


# Jetson's integrated GPUs by cubin arch (Thor is sm_101 to CUDA 12.9, sm_110 from CUDA 13),
# and the JetPack whose driver (part of L4T, not a separate R5xx install) runs each CUDA
# major version's cubins: JetPack 6 (L4T r36) ships CUDA 12's, JetPack 7 (L4T r38) CUDA 13's.
JETSON_GPUS = {"sm_72": "Xavier", "sm_87": "Orin", "sm_101": "Thor", "sm_110": "Thor"}
JETPACK = {12: "JetPack 6 (L4T r36)", 13: "JetPack 7 (L4T r38)"}


def release(cuda: tuple[int, int]) -> Release:
    """The release of toolkit version ``cuda`` (major, minor)."""
    for r in RELEASES:
        if r.cuda == cuda:
            return r
    raise ValueError(f"CUDA {cuda[0]}.{cuda[1]} is not in fffc's table of releases "
                     f"({', '.join(r.name for r in RELEASES)})")


def release_of_ptx(isa: tuple[int, int]) -> Release:
    """The first release whose driver JIT-compiles PTX of ISA version ``isa``."""
    for r in RELEASES:
        if r.ptx_isa >= isa:
            return r
    raise ValueError(f"PTX ISA {isa[0]}.{isa[1]} is newer than fffc's table of releases")


def driver_requirement(toolkit: tuple[int, int], cubins: tuple[str, ...], ptx: str,
                       ptx_isa: tuple[int, int]) -> dict:
    """What a fatbin built by CUDA ``toolkit`` needs of the driver: its cubins (``sm_XX``)
    load on drivers of CUDA ``toolkit[0]``.0 or newer; its PTX of arch ``ptx`` (ISA
    ``ptx_isa``), which GPUs without a matching cubin JIT-compile, on the release that
    introduced that ISA or newer. Cubins of Jetson GPUs add the JetPack whose driver loads
    them (``jetson``)."""
    cubin_release = release((toolkit[0], 0))
    jit = release_of_ptx(ptx_isa)
    jetson = [f"{a} ({JETSON_GPUS[a]})" for a in cubins if a in JETSON_GPUS]
    board = {} if not jetson else {"jetson": {
        "gpus": jetson,
        "jetpack": f">= {JETPACK[toolkit[0]]}" if toolkit[0] in JETPACK else "unknown",
    }}
    return {
        "driver": f">= {cubin_release.driver}",
        "cubins": list(cubins),
        "cubins_driver": f">= {cubin_release.driver} (CUDA {cubin_release.name}+, minor "
                         "version compatibility)",
        "ptx": ptx,
        "ptx_isa": f"{ptx_isa[0]}.{ptx_isa[1]}",
        "ptx_driver": f">= {jit.driver} (CUDA {jit.name}+, to JIT the PTX on a GPU without "
                      "a matching cubin)",
    } | board
