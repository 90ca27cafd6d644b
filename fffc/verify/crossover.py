"""A site's kernel against ONNX Runtime running what the artifact would run instead (the
original subgraph, or a masked mode's function), timed on this machine at growing token
counts: what a token dispatch's bound rests on.

Both sides run as ONNX Runtime sessions — the site's ``ai.fffc`` node alone with the shim
registered, and the other branch's subgraph alone — on rows of the site's own captured
inputs, so each pays the same per-call cost and the difference is the site's. Sessions are
timed in alternating blocks (``fffc.timing``), a few calls per count, medians kept; the
counts stop at the first one where the kernel lost (the bound is the prefix it won:
``fffc.contract.dispatch.from_timings``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from .. import timing
from ..contract.dispatch import Timing
from .compare import session

TOKENS = (1, 2, 4, 8, 16, 32, 64)
ROUNDS = 5  # blocks per session and count
INNER = 3  # timed calls per block
SETTLE_S = 0.01  # pause before each block: the other session's workers park


def subgraph(proto: onnx.ModelProto, x: str, y: str,
             elem: int = onnx.TensorProto.FLOAT) -> onnx.ModelProto:
    """The nodes of ``proto``'s graph that compute value ``y`` from value ``x`` and the
    initializers, as a model of their own (input ``X``, output ``Y``, of element type
    ``elem``: a 16-bit model's). Raises ValueError where ``y`` also needs another graph
    input."""
    producers = {o: n for n in proto.graph.node for o in n.output}
    inits = {i.name: i for i in proto.graph.initializer}
    keep: dict[int, onnx.NodeProto] = {}
    stack = [y]
    while stack:
        name = stack.pop()
        if name == x or name in inits or not name:
            continue
        node = producers.get(name)
        if node is None:
            raise ValueError(f"{y!r} also depends on the graph input {name!r}")
        if id(node) in keep:
            continue
        keep[id(node)] = node
        stack += list(node.input) + _outer_names(node)
    nodes = []
    for node in proto.graph.node:
        if id(node) in keep:
            nodes.append(onnx.NodeProto())
            nodes[-1].CopyFrom(node)
    read = {i for n in nodes for i in (*n.input, *_outer_names(n))}
    rename = {x: "X", y: "Y"}
    for n in nodes:
        _rename(n, rename)
    graph = onnx.helper.make_graph(
        nodes, "site",
        [onnx.helper.make_tensor_value_info("X", elem, None)],
        [onnx.helper.make_tensor_value_info("Y", elem, None)],
        [inits[n] for n in sorted(read) if n in inits])
    out = onnx.helper.make_model(graph, opset_imports=list(proto.opset_import),
                                 functions=list(proto.functions))
    out.ir_version = proto.ir_version
    return out


def _outer_names(node: onnx.NodeProto) -> list[str]:
    """Values a node's subgraphs read from the scope around them."""
    out: list[str] = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            g = attr.g
            local = {i.name for i in g.initializer} | {i.name for i in g.input} | {
                o for n in g.node for o in n.output}
            out += [i for n in g.node for i in (*n.input, *_outer_names(n)) if i not in local]
    return out


def _rename(node: onnx.NodeProto, names: dict[str, str]) -> None:
    for i, v in enumerate(node.input):
        node.input[i] = names.get(v, v)
    for i, v in enumerate(node.output):
        node.output[i] = names.get(v, v)
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            for n in attr.g.node:
                _rename(n, names)


_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def _probe(rows: np.ndarray, tokens: int, rank: int) -> np.ndarray:
    """``tokens`` rows of the site's inputs (repeated), in the rank the site reads."""
    x = rows[np.arange(tokens) % len(rows)]
    return x.reshape((1,) * max(rank - 2, 0) + x.shape)


def time_site(kernel: onnx.ModelProto, other: onnx.ModelProto, shim: str,
              xs: Sequence[np.ndarray], tokens: Sequence[int] = TOKENS) -> tuple[Timing, ...]:
    """Median ms per call of ``kernel`` (a single ``ai.fffc`` node, input ``X``; ``shim``
    registered) and of ``other`` (input ``X``) at each count of ``tokens`` up to the first
    where the kernel lost, on rows of ``xs`` (the site's captured inputs). A count the other
    side cannot run is recorded with ``other_ms`` None."""
    rows = np.concatenate([x.reshape(-1, x.shape[-1]) for x in xs])
    rank = xs[0].ndim
    sessions = {"kernel": session(kernel, register=shim), "other": session(other)}
    out = []
    # each side's X as it takes it: a 16-bit model's original subgraph its rows as they
    # are, the ai.fffc node (float32 activations) the rows widened, as its Cast does
    dtypes = {k: _NP_TYPES.get(s.get_inputs()[0].type, rows.dtype) for k, s in sessions.items()}
    for n in tokens:
        x = _probe(rows, n, rank)
        feeds = {k: {"X": x.astype(dtypes[k])} for k in sessions}
        calls = {k: (lambda s=s, f=feeds[k]: s.run(None, f)) for k, s in sessions.items()}
        try:
            calls["other"]()
        except Exception:  # ORT raises one type for everything: this count cannot run
            calls.pop("other")
        ms = timing.medians_ms(calls, ROUNDS, INNER, SETTLE_S)
        row = Timing(n, ms["kernel"], ms.get("other"))
        out.append(row)
        if not row.kernel_wins:
            break
    return tuple(out)
