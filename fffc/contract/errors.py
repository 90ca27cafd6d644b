"""Typed errors. Each carries the model path and node name it is about.

Library code raises these and never prints or exits; the CLI turns one into a single
line on stderr and the exit code of its class.
"""

from __future__ import annotations

from pathlib import Path


class FffcError(Exception):
    """Base class; ``exit_code`` is what the CLI returns for it."""

    exit_code = 1
    stage = "fffc"

    def __init__(self, reason: str, *, path: str | Path | None = None, node: str | None = None):
        self.reason = reason
        self.path = str(path) if path is not None else None
        self.node = node
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = []
        if self.path:
            where.append(self.path)
        if self.node:
            where.append(f"node {self.node!r}")
        prefix = ": ".join(where)
        return f"{prefix}: {self.reason}" if prefix else self.reason


class UsageError(FffcError):
    """Bad command-line use: unknown target, output exists without --force."""

    exit_code = 2
    stage = "cli"


class ModelLoadError(FffcError):
    """The file is not a readable ONNX model (missing, truncated, not ONNX)."""

    exit_code = 3
    stage = "load"


class UnsupportedModelError(FffcError):
    """The model is ONNX but uses an opset or dtype fffc does not handle."""

    exit_code = 4
    stage = "load"


class NoSitesError(FffcError):
    """No FFN was found, so there is nothing to compile."""

    exit_code = 5
    stage = "rewrite"


class RewriteError(FffcError):
    exit_code = 6
    stage = "rewrite"


class VerificationError(FffcError):
    """The compiled artifact does not match the original model within tolerance."""

    exit_code = 7
    stage = "verify"


class UnsupportedTargetError(FffcError):
    """The target exists in fffc's dispatch but has no backend yet."""

    exit_code = 8
    stage = "codegen"


class CodegenError(FffcError):
    exit_code = 9
    stage = "codegen"


class PackagingError(FffcError):
    """Building the shim or writing the artifact failed (compiler, headers, disk)."""

    exit_code = 10
    stage = "package"


class ArtifactCheckError(FffcError):
    """An artifact's files are not the ones its manifest lists (missing, modified, a path
    leading outside its folder): ``fffc verify``, and any command that opens it."""

    exit_code = 11
    stage = "artifact"


class MemoryBudgetError(FffcError):
    """Reading, verifying or calibrating the model would need more memory than the
    ``--max-memory`` budget (``fffc.plan.memory``): refused before the stage allocates."""

    exit_code = 12
    stage = "memory"


EXIT_CODES: dict[str, int] = {
    cls.__name__: cls.exit_code
    for cls in (
        UsageError, ModelLoadError, UnsupportedModelError, NoSitesError, RewriteError,
        VerificationError, UnsupportedTargetError, CodegenError, PackagingError,
        ArtifactCheckError, MemoryBudgetError,
    )
}
