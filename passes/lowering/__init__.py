"""Lowering: every FFN marker becomes what its plan says, then the graph is made standard.

``lower(model, plans)`` takes one ``SiteLowering`` per marker (a marker without one stays
as it was). A decision that rewrites the site is looked up in the mode registry: each site
kind's module registers its decisions' ``Behaviour.LOWER`` (SparseFFN modes in ``sparse``,
FastFeedForward and the walk in ``fff``, ``structured``, ``routed``). A site left as it
was goes back to standard ops by its kind (``AS_IT_WAS``): dense and gated FFNs as standard
ops (with the plan's masks, the masked modes' reference), FFF and MoD regions exactly as
exported. Then every canonical node left is legalized for the model's opset.
``site_inputs`` gives the arrays a site's op node is given, from the same layout and
parameter declarations.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from fffc.contract.kinds import Decision, SiteKind
from fffc.contract.lowering import SiteLowering
from fffc.contract.modes import Behaviour, Layout, mode
from fffc.contract.ops import SPARSE_FFN
from fffc.contract.sites import Site

from .. import weight_dtype
from .._common import const_array, dequantized
from ..markers import decode, markers
from . import fff, int4, routed, sparse, structured
from ._emit import Lowering, default_opset, drop_unused_initializers, graphs
from .legalize import legalize
from .sparse import fold_centers

AS_IT_WAS = {  # a site not rewritten, by kind
    SiteKind.DENSE: sparse.keep, SiteKind.GATED: sparse.keep, SiteKind.FFF: fff.keep,
    SiteKind.STRUCTURED: structured.keep, SiteKind.ROUTED: routed.keep,
}

__all__ = ["AS_IT_WAS", "expose", "fold_centers", "legalize", "lower", "site_inputs",
           "site_io"]


def lower(model: ir.Model, plans: Mapping[str, SiteLowering]) -> None:
    """Replace every marker as ``plans[name]`` says (a marker without a plan, or planned
    ``Decision.DENSE``, stays as it was), legalize the rest, drop what nothing reads."""
    ctx = Lowering(model, default_opset(model))
    pending = _markers(model.graph)
    while pending:  # a routed region put back (or beyond a token dispatch) brings its inner
        # FFN marker back
        for node in pending:
            _lower_site(ctx, node, plans.get(node.name) or SiteLowering())
        pending = _markers(model.graph)
    legalize(model)
    _name_branch_values(model.graph)
    weight_dtype.share_narrow_weights(model.graph)
    common_passes.RemoveUnusedNodesPass()(model)
    drop_unused_initializers(model.graph)


def _name_branch_values(graph: ir.Graph) -> None:
    """Values in If branches (of a region's inner FFN or a legalized node, lowered there)
    whose names are unset or also name a value outside the branch, renamed after their
    branch: a graph names new values uniquely within itself only, and a branch sees the
    names around it."""
    outer = {v.name for v in (*graph.inputs, *graph.initializers.values())}
    outer |= {v.name for n in graph for v in n.outputs}
    for g in list(graphs(graph))[1:]:
        for i, node in enumerate(g):
            for j, v in enumerate(node.outputs):
                if not v.name or v.name in outer:
                    v.name = f"{g.name}__{i}_{j}"
        outer |= {v.name for n in g for v in n.outputs}


def _markers(graph: ir.Graph) -> list[ir.Node]:
    """The markers of ``graph`` and of its If branches."""
    return [n for g in graphs(graph) for n in markers(g)]


def _lower_site(ctx: Lowering, node: ir.Node, plan: SiteLowering) -> None:
    marker = decode(node)
    entry = mode(plan.decision)
    if not entry.rewrites:
        AS_IT_WAS[marker.kind](ctx, marker, plan)
        return
    if marker.kind not in entry.kinds:
        raise ValueError(f"site {node.name!r} ({marker.kind}): decision {entry.decision} "
                         "does not apply to it")
    entry.behaviour(Behaviour.LOWER)(ctx, marker, plan)


def site_inputs(model: ir.Model, site: Site,
                decision: Decision | None = None) -> dict[str, np.ndarray]:
    """The arrays the site's op node is given, by op input name, in the op's layout for its
    decision (or ``decision``): its weights (an FFF's W_in row per node, a gated up
    projection row per neuron where the mode says so), and the inputs the mode makes from
    the site's planned parameters (TH; PA, PB, PC; XC, HC with B1, B2 holding the centers'
    share). A decision without an op gives the weights in the matched graph's orientation.
    Absent inputs are left out (as are StructuredFFN's M1, M2: a lowering option)."""
    node = next((n for n in markers(model.graph) if n.name == site.name), None)
    if node is None:
        raise KeyError(f"no marker {site.name!r} in the model")
    marker = decode(node)
    entry = mode(decision if decision is not None else site.decision)
    q = int4.layout(marker.inputs) if entry.op is SPARSE_FFN else None
    if q is not None:  # the codes, scales and zero points in the op's int4 layout (no
        # float32 copy of a weight), and the mode's parameters
        arrays = {n: const_array(v) for n, v in marker.inputs.items()
                  if n != "X" and v is not None and not dequantized(v.producer())}
        arrays |= int4.arrays(marker.inputs, q, entry.sparse_mode)
        masks = entry.masks(site)
        for p in entry.params:  # (no centers on int4 sites: the plan gives them none)
            arrays |= sparse.PARAMS[p].arrays(arrays, masks, entry)
        return {a.name: arrays[a.name] for a in marker.op.inputs if a.name in arrays}
    arrays = {n: const_array(v) for n, v in marker.inputs.items()
              if n != "X" and v is not None}
    masks = entry.masks(site)
    for p in entry.params:
        arrays |= sparse.PARAMS[p].arrays(arrays, masks, entry)
    for name, layout in entry.layouts.items():
        if layout is Layout.ROWS and name in arrays:
            arrays[name] = np.ascontiguousarray(arrays[name].T)
    return {a.name: arrays[a.name] for a in marker.op.inputs if a.name in arrays}


def site_io(model: ir.Model) -> dict[str, tuple[str, str]]:
    """Marker name → (input value name, output value name), for capturing site activations."""
    return {n.name: (n.inputs[0].name, n.outputs[0].name) for n in markers(model.graph)}


def expose(model: ir.Model, names: list[str]) -> None:
    """Add the named intermediate values as graph outputs (for activation capture)."""
    values = {v.name: v for n in model.graph for v in n.outputs}
    values.update({v.name: v for v in model.graph.inputs})
    present = {v.name for v in model.graph.outputs}
    for name in names:
        if name not in present:
            model.graph.outputs.append(values[name])
            present.add(name)
