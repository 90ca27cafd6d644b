"""The whole-model check of an artifact whose function is discontinuous: each kernel site, in
the compiled model run with the shim, against its function on the input it receives there.

A masked function is discontinuous: an entry within float32 rounding of a threshold may be
kept by a kernel and dropped by ONNX Runtime's graph (either is correct, ``site_slack``).
Such an entry changes the site's output by up to the threshold times its weights, the next
layers' inputs move by that, more of their entries cross a threshold, and after a few layers
the model's outputs may differ from the masked reference by far more than any tolerance
while every site computes its function. A model that quantizes activations (``MatMulNBits``
at ``accuracy_level`` 4, ``QuantizeLinear``, ``DynamicQuantizeLinear``) is discontinuous the
same way: a site's output within float32 reassociation of the reference moves the next
layer's input by 1e-7, which can flip the int8 rounding of one of its entries. So for such
artifacts the outputs are compared and reported, and the check is per site in place: the
graph around the sites is the one the check without the shim verifies against the reference
(same nodes, ONNX Runtime's functions), and each node's kernel is compared with its function
on what it actually gets.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ..contract.dispatch import TokenDispatch
from ..contract.int4 import INT8_ACCURACY
from ..contract.kinds import Branch
from ..contract.ops import DOMAIN
from ..contract.sites import Site
from .compare import Comparison, compare, run, session, worse
from .sites import Inputs, site_reference

QUANTIZING = frozenset({"QuantizeLinear", "DynamicQuantizeLinear", "DynamicQuantizeMatMul",
                        "MatMulIntegerToFloat"})


def all_nodes(graph: onnx.GraphProto):
    """Nodes of a graph and of its subgraphs (If branches), depth first."""
    for n in graph.node:
        yield n
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from all_nodes(a.g)


def quantizes_activations(model: onnx.ModelProto) -> bool:
    """Whether some node of ``model`` (its If branches too) rounds activations to integers."""
    for n in all_nodes(model.graph):
        if n.op_type in QUANTIZING:
            return True
        if n.op_type == "MatMulNBits" and any(
                a.name == "accuracy_level" and a.i == INT8_ACCURACY for a in n.attribute):
            return True
    return False


def site_values(model: onnx.ModelProto, names: Collection[str]) -> dict[str, tuple[str, str]]:
    """Site → (input, output) value names in ``model``'s main graph: the ``ai.fffc`` node's
    ``X`` and its output or, where a token dispatch holds the node in an ``If`` branch, the
    ``If``'s output (the site's output whichever branch ran). A site nested deeper, or whose
    input is computed inside the branch, is left out: its values cannot be graph outputs."""
    main = {v for n in model.graph.node for v in n.output} | {i.name for i in model.graph.input}
    out: dict[str, tuple[str, str]] = {}
    for node in model.graph.node:
        if node.name in names and node.domain == DOMAIN:
            out[node.name] = (node.input[0], node.output[0])
        if node.op_type != "If":
            continue
        for attr in node.attribute:
            for inner in attr.g.node if attr.type == onnx.AttributeProto.GRAPH else ():
                if inner.name in names and inner.domain == DOMAIN and inner.input[0] in main:
                    out[inner.name] = (inner.input[0], node.output[0])
    return out


@dataclass
class InPlace:
    """A run of the compiled model with the shim, the sites' values exposed."""

    outputs: list[list[np.ndarray]]  # the model's own outputs, per feed
    sites: dict[str, Comparison] = field(default_factory=dict)  # site → worst in place
    probes: dict[str, int] = field(default_factory=dict)  # site → calls its kernel served
    unchecked: list[str] = field(default_factory=list)  # kernel sites not exposable

    @property
    def ok(self) -> bool:
        return not self.unchecked and all(c.ok for c in self.sites.values())

    def worst(self) -> Comparison:
        c = Comparison(0.0, 0.0, True)
        for s in self.sites.values():
            c = worse(c, s)
        return c

    def report(self) -> dict:
        return {name: c.__dict__ | {"kernel_calls": self.probes[name]}
                for name, c in self.sites.items()} | (
            {"unchecked": self.unchecked} if self.unchecked else {})


def run_in_place(sites: Sequence[Site], model_file: Path, shim: Path, feeds,
                 inputs: Callable[[Site], Inputs], tokens: Mapping[str, TokenDispatch],
                 rtol: float) -> InPlace:
    """The compiled model (``model_file``, its external data beside it) with the shim on
    ``feeds``, every site in ``sites`` compared in place where its kernel served the call."""
    proto = onnx.load(str(model_file), format="protobuf", load_external_data=False)
    where = site_values(proto, {s.name for s in sites})
    n_out = len(proto.graph.output)
    names = [o.name for o in proto.graph.output]
    for x, y in where.values():
        for n in (x, y):
            if n not in names:
                proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
                names.append(n)
    # beside the model file: its external data is found relative to the file
    exposed = model_file.with_name(f".{model_file.stem}.in-place.onnx")
    try:
        onnx.save(proto, str(exposed))
        del proto
        got = run(session(str(exposed), register=str(shim)), feeds)
    finally:
        exposed.unlink(missing_ok=True)
    result = InPlace([g[:n_out] for g in got])
    for site in sites:
        if site.name not in where:
            result.unchecked.append(site.name)
            continue
        xi, yi = (names.index(n) for n in where[site.name])
        dispatch = tokens.get(site.name)
        c, calls = Comparison(0.0, 0.0, True), 0
        for g in got:
            x = g[xi]
            if dispatch is not None and dispatch.branch(x.size // x.shape[-1]) is not Branch.KERNEL:
                continue  # another branch's standard ops: checked without the shim
            want, slack = site_reference(site, x, inputs(site))
            c = worse(c, compare(g[yi], want, rtol, slack))
            calls += 1
        result.sites[site.name], result.probes[site.name] = c, calls
    return result
