"""The mode registry: one entry per decision a site can take, owning what that decision is.

An entry (``Mode``) says which ``ai.fffc`` op the site becomes and with which ``mode``
attribute, whether compiled kernels run it, whether it computes the original function or
a masked one, whether calls are dispatched on their token count, and how the site's
weights become the op's inputs (``layouts``: inputs stored in another orientation than
the matched graph's; ``params``: inputs made from the plan's parameters), and the kernel
specs it needs (``specs``; codegen owns each spec type's kernel variants per target). What
a layer does differently per decision is registered under the entry by that layer
(``register``/``behaviour``), in the style of TVM's op attributes: the passes register the
lowering, verification the NumPy reference and the emulated CUDA check. A layer looks
behaviours up by decision; nothing outside this registry compares decision strings.

Adding a mode: a ``Decision`` member, an entry here, the behaviours each layer registers
for it (``tests/test_modes.py`` checks every entry has all of them), its kernel generator
and its tests (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .kernels import fff_specs, routed_counted, routed_specs, sparse_specs, structured_specs
from .kinds import Decision, SiteKind, SparseMode
from .lowering import Masks
from .ops import FAST_FEED_FORWARD, ROUTED_FFN, SPARSE_FFN, STRUCTURED_FFN, OpSpec


class Layout(Enum):
    """How an op input is stored relative to the matched graph's weight."""

    ROWS = "rows"  # transposed: one contiguous row per neuron (or tree node), read per row


class Param(Enum):
    """Op inputs made from a site's planned parameters rather than from its weights."""

    THRESHOLDS = "thresholds"  # TH [t_in, t_hidden | t_gate], negative = off
    PREDICTOR = "predictor"  # PA [d_in, rank], PB [rank, d_ff], PC [d_ff] (cut folded in)
    CENTERS = "centers"  # XC [d_in], HC [d_ff]; B1, B2 then hold the centers' share


class Behaviour(Enum):
    """What a layer registers per entry (the layer that registers it in brackets)."""

    REFERENCE = "reference"  # the op's NumPy reference on a site's inputs  [verify]
    LOWER = "lower"  # the site's marker → its op node and fallback function  [passes]
    EMULATE = "emulate"  # the site's CUDA kernels run by the CPU emulator, checked  [verify]


@dataclass(frozen=True)
class Mode:
    """One decision: the op it lowers to and how (see the module docstring)."""

    decision: Decision
    op: OpSpec | None  # None: the site stays in standard ONNX ops
    sparse_mode: SparseMode | None = None  # SparseFFN's ``mode`` attribute
    kinds: frozenset[SiteKind] = frozenset()  # site kinds it applies to
    kernels: bool = False  # compiled kernels run it (through the shim), for the token
    # counts where they beat ONNX Runtime running the original subgraph (an If on the count
    # runs the original beyond: fffc.contract.dispatch)
    masked: bool = False  # computes a masked function of the FFN (thresholds, predicted
    # neurons), not the original: where its kernel serves, the artifact must equal that
    # function, and its distance from the original is reported
    rewrites: bool = False  # the site is replaced (verified against the original subgraph)
    merged_path: bool = False  # the op also holds pre-merged dense weights for calls of up to
    # a token bound (measured per site, or --merged-max-tokens)
    layouts: Mapping[str, Layout] = field(default_factory=dict)  # by op input name
    params: tuple[Param, ...] = ()
    th_fields: tuple[str, str] = ("input", "hidden")  # the ``Masks`` fields TH = [t0, t1]
    # holds (Param.THRESHOLDS)
    masks: Callable[[Any], Masks | None] = lambda site: None  # a planned site's Masks
    specs: Callable[[Any, Mode], list] = lambda site, m: []  # its KernelSpecs (kernels.py)
    counted: Callable[[Any, Mode], list] = lambda site, m: []  # specs of those that also need
    # variants bounded by a row count read on the device
    behaviours: dict[Behaviour, Any] = field(default_factory=dict, compare=False, repr=False)

    def behaviour(self, key: Behaviour) -> Any:
        try:
            return self.behaviours[key]
        except KeyError:
            raise LookupError(f"no {key.value} registered for decision {self.decision}") \
                from None


_SPARSE_KINDS = frozenset({SiteKind.DENSE, SiteKind.GATED})


def _teal_masks(site) -> Masks:
    t_in, t_hidden = site.thresholds
    return Masks(input=t_in, hidden=t_hidden, centers=site.centers)


def _cats_masks(site) -> Masks:
    t_in, t_gate = site.thresholds
    return Masks(input=t_in, gate=t_gate)


def _predictor_masks(site) -> Masks:
    return Masks(predictor=site.predictor_arrays)


MODES: dict[Decision, Mode] = {m.decision: m for m in (
    Mode(Decision.PENDING, None),
    Mode(Decision.DENSE, None),
    Mode(Decision.EXACT, SPARSE_FFN, SparseMode.EXACT, _SPARSE_KINDS, kernels=True,
         rewrites=True, layouts={"WU": Layout.ROWS}, specs=sparse_specs),
    Mode(Decision.TEAL, SPARSE_FFN, SparseMode.TEAL, _SPARSE_KINDS, kernels=True, masked=True,
         rewrites=True, params=(Param.THRESHOLDS, Param.CENTERS),
         masks=_teal_masks, specs=sparse_specs),
    Mode(Decision.CATS, SPARSE_FFN, SparseMode.CATS, frozenset({SiteKind.GATED}), kernels=True,
         masked=True, rewrites=True, layouts={"WU": Layout.ROWS},
         params=(Param.THRESHOLDS,), th_fields=("input", "gate"), masks=_cats_masks,
         specs=sparse_specs),
    Mode(Decision.PREDICTOR, SPARSE_FFN, SparseMode.PREDICTOR, _SPARSE_KINDS, kernels=True,
         masked=True, rewrites=True,
         layouts={"W1": Layout.ROWS, "WU": Layout.ROWS}, params=(Param.PREDICTOR,),
         masks=_predictor_masks, specs=sparse_specs),
    Mode(Decision.TREE, FAST_FEED_FORWARD, None, frozenset({SiteKind.FFF}), kernels=True,
         rewrites=True, layouts={"W_in": Layout.ROWS}, specs=fff_specs),
    Mode(Decision.WALK, None, None, frozenset({SiteKind.FFF}), rewrites=True,
         layouts={"W_in": Layout.ROWS}),
    Mode(Decision.STRUCTURED, STRUCTURED_FFN, None, frozenset({SiteKind.STRUCTURED}),
         kernels=True, rewrites=True, merged_path=True, specs=structured_specs),
    Mode(Decision.ROUTED, ROUTED_FFN, None, frozenset({SiteKind.ROUTED}), kernels=True,
         rewrites=True, specs=routed_specs, counted=routed_counted),
)}


def mode(decision: Decision | str) -> Mode:
    """The entry of a decision (a plain string is read as its ``Decision``)."""
    return MODES[Decision(decision)]


def sparse(mode_attr: SparseMode | str) -> Mode:
    """The entry of a SparseFFN ``mode`` attribute."""
    return next(m for m in MODES.values() if m.sparse_mode == SparseMode(mode_attr))


def kernel_specs(site) -> list:
    """Every kernel a site's op calls: one spec, except RoutedFFN (routing, the dense FFN on
    the gathered tokens, the combine); none for a decision without kernels."""
    m = mode(site.decision)
    return list(m.specs(site, m))


def counted_specs(site) -> list:
    """The specs among ``kernel_specs(site)`` that also need device-counted variants."""
    m = mode(site.decision)
    return list(m.counted(site, m))


def kernel_spec(site):
    """The spec of the kernel a site's op runs itself (a RoutedFFN's: its routing)."""
    return kernel_specs(site)[0]


def register(decision: Decision, key: Behaviour) -> Callable[[Any], Any]:
    """Decorator: ``fn`` is ``decision``'s ``key`` behaviour (one per entry and key)."""

    def add(fn: Any) -> Any:
        entry = MODES[decision]
        if key in entry.behaviours:
            raise ValueError(f"{key.value} of decision {decision} registered twice")
        entry.behaviours[key] = fn
        return fn

    return add
