"""Target families: each gives the kernel variants of a spec and a TVM target."""

from __future__ import annotations

from dataclasses import dataclass

from fffc.contract.kernels import FffSpec, KernelSpec, RouteSpec, SparseSpec, StructuredSpec
from fffc.contract.kinds import SparseMode
from fffc.contract.modes import sparse

from ..limits import MAX_TOKENS as MAX_TOKENS  # re-exported: the schedules use it


@dataclass(frozen=True)
class Variant:
    """One kernel of a spec: its name, the token range it serves (inclusive), its tiling
    (whatever the op's generator takes). ``alternative``: a variant the shim prefers over
    the one covering its range where it can derive its inputs (outside the cover)."""

    name: str
    min_tokens: int
    max_tokens: int
    tiling: object = None
    alternative: bool = False


@dataclass(frozen=True)
class Crossovers:
    """Token counts up to which a family's kernels run where they are not measured on the
    build machine; past them the artifact runs the original subgraph in ONNX Runtime (an If
    on the token count). 0: the kernels at every count."""

    sparse_max_tokens: int = 0  # exact, dense FFNs
    sparse_max_tokens_gated: int = 0  # exact, gated FFNs
    masked_max_tokens: int = 0  # the masked modes (Mode.masked)
    structured_max_tokens: int = 0  # StructuredFFN
    fff_max_tokens: int = 0  # FastFeedForward
    routed_max_tokens: int = 0  # RoutedFFN


class Family:
    """One target family (x86, arm, cuda): its TVM target, its kernel variants, its token
    crossovers (``config``) and what its kernels can do."""

    name = ""
    narrow_weights = False  # kernels that read 16-bit weight matrices (--weight-dtype)
    int4_weights = False  # SparseFFN exact kernels on int4 codes (SPARSE_FFN's bits 4)
    int8_weights = False  # ... and on int8 codes (SPARSE_FFN's bits 8)
    int8_act_quant = False  # its int8 kernels apply the AQ input (static QDQ sites'
    # activations fake-quantized inside the FFN)
    int4_modes: frozenset[SparseMode] = frozenset({SparseMode.EXACT})  # the SparseFFN modes
    # of its int4 kernels (at accuracy_level 0 and 4: ``fffc.contract.int4.int8_rounding``;
    # int8 codes: exact only)
    merged_path = True  # StructuredFFN kernels with a pre-merged dense path for few tokens
    timed_here = False  # its kernels run on this build machine, so crossovers are measured
    device = False  # its kernels run on an accelerator; the CPU EP's nodes run ``cpu``'s
    cpu_mcpu: str | None = None  # a device family: the LLVM CPU of its ``cpu`` kernels

    def __init__(self, config: Crossovers, cpu: Family | None = None):
        self.config = config
        self.cpu = cpu or self  # the family of the CPU kernels an artifact carries

    def target(self, mcpu: str | None, mattr: tuple[str, ...] = ()) -> dict:
        raise NotImplementedError

    def sparse_variants(self, spec: SparseSpec, target: dict) -> list[Variant]:
        """SparseFFN's variants, covering tokens 1..MAX_TOKENS without gaps or overlaps."""
        raise NotImplementedError

    def sparse_max_tokens(self, spec: SparseSpec) -> int:
        """Token count up to which the kernels beat the runtime's dense GEMMs (0: always);
        past it the artifact runs the dense FFN (an If on the token count)."""
        c = self.config
        if sparse(spec.mode).masked:
            return c.masked_max_tokens
        return c.sparse_max_tokens_gated if spec.gated else c.sparse_max_tokens

    def max_tokens(self, spec: KernelSpec) -> int:
        """The table's crossover for the op whose (first) kernel ``spec`` is (0: always)."""
        if isinstance(spec, SparseSpec):
            return self.sparse_max_tokens(spec)
        c = self.config
        by_op = {StructuredSpec: c.structured_max_tokens, FffSpec: c.fff_max_tokens,
                 RouteSpec: c.routed_max_tokens}
        return by_op[type(spec)]
