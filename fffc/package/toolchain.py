"""The C++ toolchain that builds the shim: the system's g++ (the default), or zig's clang
linking against an older glibc than the build machine's (``--glibc``).

Either way the shim carries its own C++ runtime and exports only ``RegisterCustomOps``
(``runtime/exports.lds``): g++ links libstdc++ and libgcc statically, zig links LLVM's
libc++, libc++abi and libunwind statically. The shim talks to ONNX Runtime through its C API
only and turns every exception into an ``OrtStatus`` before returning, so which C++ runtime
it carries is private to it and never meets the process's own.
"""

from __future__ import annotations

import enum
import importlib.util
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..contract.config import cxx, sanitizers
from ..contract.errors import PackagingError


class Compiler(enum.Enum):
    GNU = "g++"  # CXX / CXX_AARCH64: the build machine's (or the cross) sysroot's glibc
    ZIG = "zig"  # zig c++ -target <arch>-linux-gnu.<glibc>: that glibc's symbol versions


GNU_RUNTIME = ("-static-libstdc++", "-static-libgcc", "-Wl,--exclude-libs,ALL")


def glibc_version(text: str) -> tuple[int, int]:
    """``"2.28"`` as ``(2, 28)``; ValueError for anything that is not ``MAJOR.MINOR``."""
    m = re.fullmatch(r"(\d+)\.(\d+)", text.strip())
    if not m:
        raise ValueError(f"--glibc: expected a glibc version such as 2.28, got {text!r}")
    return int(m[1]), int(m[2])


def find_zig() -> str | None:
    """The zig executable: PyPI ``ziglang``'s (``pip install 'fffc[glibc]'``), else ``zig``
    on PATH; None when neither is there."""
    spec = importlib.util.find_spec("ziglang")
    if spec is not None and spec.origin:
        binary = Path(spec.origin).parent / "zig"
        if binary.is_file():
            return str(binary)
    return shutil.which("zig")


@dataclass(frozen=True)
class Toolchain:
    compiler: Compiler
    command: tuple[str, ...]  # the compiler driver and its target arguments
    glibc: str | None = None  # the glibc the shim is linked against; None: the sysroot's

    @property
    def runtime_flags(self) -> tuple[str, ...]:
        """Link flags that put the C++ runtime inside the shim (zig's libc++ always is)."""
        return GNU_RUNTIME if self.compiler is Compiler.GNU else ()

    def describe(self) -> str:
        return " ".join([Path(self.command[0]).name, *self.command[1:]])


def toolchain(triple: str, glibc: str | None = None) -> Toolchain:
    """The toolchain for ``triple``: g++ without ``glibc``; with it, zig targeting that glibc,
    or g++ again when zig is not installed (``build_shim`` then refuses a shim that needs a
    newer glibc than asked for)."""
    if glibc is None:
        return Toolchain(Compiler.GNU, (cxx(triple),))
    glibc_version(glibc)
    zig = find_zig()
    if zig is None:
        return Toolchain(Compiler.GNU, (cxx(triple),))
    if sanitizers():
        raise PackagingError("FFFC_SANITIZE builds the shim with g++: drop --glibc (zig "
                             "ships no sanitizer runtimes for its glibc targets)")
    arch = triple.split("-")[0]
    return Toolchain(Compiler.ZIG, (zig, "c++", "-target", f"{arch}-linux-gnu.{glibc}"), glibc)
