"""What every stage is given: the options, the target resolved once, where to report and
where to dump."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import onnx
import onnx_ir as ir

from .. import frontend
from ..codegen import cuda_toolkit
from ..codegen.schedules import Family, family
from ..contract import config
from ..contract.config import CompileOptions
from ..contract.cuda import CudaVersion
from ..contract.errors import UsageError
from ..contract.kinds import Crossover, WeightDtype
from ..contract.targets import TargetRequest, normalize
from ..package.layout import Layout
from ..package.toolchain import glibc_version
from ..plan import memory

Reporter = Callable[[str], contextlib.AbstractContextManager]
Notifier = Callable[[str], None]  # one line the user should know (not a failure)

# --dump DIR: what each stage writes, in the order the stages run
DUMPS = {
    "00-loaded.onnx": "the model as read",
    "01-canonical.onnx": "after canonicalization (exporter variants rewritten into one form, "
                         "constants folded), in standard ops: runs in any ONNX Runtime",
    "02-sites.json": "the FFN sites found and the FFN-like regions no rule matched",
    "03-plan.json": "each site's decision and why (after the allocation, with --calibration)",
    "04-verify.json": "each site's check against the original subgraph",
    "05-rewritten.onnx": "the artifact's model: ai.fffc nodes with their fallback functions "
                         "(runs in any ONNX Runtime; the shim makes the kernels run)",
    "06-kernels": "one TVMScript file per kernel variant",
    "07-shim": "the shim's per-artifact sources (the kernel tables), what runtime/CMakeLists.txt "
               "builds the shim from without Python",
    "08-check.json": "the artifact check: every kernel alone, the model with and without the "
                     "shim",
}


@contextlib.contextmanager
def quiet(_: str) -> Iterator[None]:
    yield


def silent(_: str) -> None:
    pass


class Dumper:
    """Writes the numbered stage dumps when a dump directory is set (``DUMPS``)."""

    def __init__(self, root: Path | None):
        self.root = root
        if root:
            root.mkdir(parents=True, exist_ok=True)

    def _path(self, name: str) -> Path | None:
        if not self.root:
            return None
        if name.split("/")[0] not in DUMPS:
            raise ValueError(f"undeclared dump {name!r}")
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def model(self, name: str, model: onnx.ModelProto | ir.Model) -> None:
        if (path := self._path(name)) is not None:
            frontend.save(model, path)

    def text(self, name: str, text: str) -> None:
        if (path := self._path(name)) is not None:
            path.write_text(text)

    def json(self, name: str, data: dict) -> None:
        self.text(name, json.dumps(data, indent=2))


@dataclass
class Context:
    """A compile's options, its target resolved into a schedule family once, its output
    path and the artifact's layout, the reporter (a context manager per step), where notes
    go, and the dumper."""

    options: CompileOptions = field(default_factory=CompileOptions)
    report: Reporter = quiet
    out: Path | None = None
    target: TargetRequest | None = None
    family: Family | None = None
    dump: Dumper = field(default_factory=lambda: Dumper(None))
    staging: Path | None = None  # the artifact being built, renamed to ``out`` when done
    layout: Layout = field(default_factory=Layout)
    note: Notifier = silent
    _budget: tuple[int | None] | None = field(default=None, repr=False)

    def memory_budget(self) -> int | None:
        """``--max-memory`` in bytes (None: no guard), read once: the default share of the
        available memory is taken before the model is read, so that what the compile holds
        later is not counted twice."""
        if self._budget is None:
            self._budget = (memory.budget(self.options.max_memory),)
        return self._budget[0]

    @property
    def weight_dtype(self) -> WeightDtype:
        return WeightDtype(self.options.weight_dtype)

    @classmethod
    def for_compile(cls, options: CompileOptions, out: Path, report: Reporter,
                    note: Notifier = silent) -> Context:
        """Options checked and the target resolved, before any slow stage runs."""
        try:
            target = normalize(options.target, options.mcpu, options.host)
        except ValueError as e:
            raise UsageError(str(e)) from e
        if options.calibration is None and options.budget is not None:
            raise UsageError("--budget applies to a calibration: add --calibration "
                             "CALIB.json (from fffc calibrate)")
        if options.merged_max_tokens is not None and options.merged_max_tokens < 0:
            raise UsageError(f"--merged-max-tokens must be >= 0, got "
                             f"{options.merged_max_tokens}")
        try:
            dtype = WeightDtype(options.weight_dtype)
        except ValueError:
            raise UsageError(f"--weight-dtype: one of {', '.join(d.flag for d in WeightDtype)}, "
                             f"got {options.weight_dtype!r}") from None
        given = options.crossovers or config.crossovers_from_env() or Crossover.MEASURED
        choices = (Crossover.MEASURED, Crossover.TABLE)
        if given not in choices:  # the others name where a site's bound came from
            raise UsageError(f"--crossovers (FFFC_CROSSOVERS): one of "
                             f"{', '.join(map(str, choices))}, got {given!r}")
        options = replace(options, crossovers=str(Crossover(given)))
        if options.max_sparse_tokens is not None and options.max_sparse_tokens < 0:
            raise UsageError(f"--max-sparse-tokens must be >= 0, got {options.max_sparse_tokens}")
        if options.glibc is not None:
            try:
                glibc_version(options.glibc)
            except ValueError as e:
                raise UsageError(str(e)) from None
        fam = family(target.family, target.host)
        ctx_budget = (memory.budget(options.max_memory),)  # a bad --max-memory: refused now
        if dtype is WeightDtype.INT4 and not fam.int4_weights:
            raise UsageError(f"--weight-dtype int4: no int4 kernels for {target.family}")
        if dtype is WeightDtype.INT8 and not fam.int8_weights:
            raise UsageError(f"--weight-dtype int8: no int8 kernels for {target.family}")
        if dtype.floating and dtype is not WeightDtype.FLOAT32 and not fam.narrow_weights:
            raise UsageError(f"--weight-dtype {options.weight_dtype}: 16-bit weights are for "
                             "--target cuda (the CPU kernels read float32 weights)")
        if options.cuda_version is not None and not fam.device:
            raise UsageError(f"--cuda-version applies to --target cuda, not {target.family}")
        if fam.device:
            options = _cuda_options(options, fam)
        if options.merged_max_tokens and not fam.merged_path:
            raise UsageError(f"--merged-max-tokens: the {target.family.upper()} StructuredFFN kernels "
                             "have no pre-merged path (the structured kernels serve every "
                             "token count)")
        return cls(options, report, out, target, fam, Dumper(options.dump_dir), note=note,
                   _budget=ctx_budget)


def _cuda_options(options: CompileOptions, fam: Family) -> CompileOptions:
    """A GPU target's CUDA version parsed and its cubins chosen (``--arch``, else the family's
    default, which may depend on what the toolkit compiles); no compiler of that version,
    or one without an arch: refused before any stage."""
    version = None
    if options.cuda_version is not None:
        try:
            version = CudaVersion.parse(options.cuda_version)
        except ValueError as e:
            raise UsageError(f"--cuda-version: {e}") from None
    toolkit = None
    if version is not None or (options.cuda_archs is None and fam.config.archs_if_compiled):
        toolkit = cuda_toolkit.find(version)
    archs = options.cuda_archs or fam.default_archs(toolkit.archs if toolkit else frozenset())
    if toolkit is not None:
        toolkit.check(archs)
    return replace(options, cuda_version=None if version is None else int(version),
                   cuda_archs=tuple(archs))
