"""Verify: prove each rewrite equal to what it replaces before anything is kept.

Three checks, all in ONNX Runtime on probe inputs:
1. the canonicalized model with every site left dense equals the original model
   (canonicalization and detection changed nothing);
2. per site, the NumPy reference of the planned op on the site's captured input equals
   the original subgraph's captured output (the rewrite's math and weight layout);
3. after codegen, the artifact run with the shim (compiled kernels) and without it
   (fallback functions) equals the original model, and every kernel alone equals its
   captured site output.

Error metric everywhere: max|got − want| / max(max|want|, 1e-6) ≤ rtol (fp32).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from . import reference
from .sites import Site

# Default relative tolerances per element type; one table, used by every check.
TOLERANCES = {"float32": 1e-4}


@dataclass
class Comparison:
    max_abs: float
    max_rel: float
    ok: bool


def worse(a: Comparison, b: Comparison) -> Comparison:
    """The combined verdict of two comparisons: largest errors, ok only if both are."""
    return Comparison(max(a.max_abs, b.max_abs), max(a.max_rel, b.max_rel), a.ok and b.ok)


def compare(got: np.ndarray, want: np.ndarray, rtol: float,
            slack: np.ndarray | None = None) -> Comparison:
    """Max abs error, relative to max |want|; ``slack`` (elementwise) is error that is
    allowed on top (threshold modes: entries decided by rounding, ``reference.teal_ffn``)."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return Comparison(float("inf"), float("inf"), False)
    if want.size == 0:
        return Comparison(0.0, 0.0, True)
    err = np.abs(got - want)
    if slack is not None:
        err = np.maximum(err - np.asarray(slack, dtype=np.float64).reshape(err.shape), 0.0)
    max_abs = float(np.max(err))
    max_rel = max_abs / max(float(np.max(np.abs(want))), 1e-6)
    return Comparison(max_abs, max_rel, bool(np.isfinite(max_rel) and max_rel <= rtol))


def _vocab_sizes(proto: onnx.ModelProto) -> dict[str, int]:
    """Inputs consumed as Gather indices into an initializer table → that table's rows."""
    inits = {i.name: i for i in proto.graph.initializer}
    out: dict[str, int] = {}
    for node in proto.graph.node:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[0] in inits:
            rows = inits[node.input[0]].dims[0]
            out[node.input[1]] = min(out.get(node.input[1], rows), rows)
    return out


_NP_TYPES = {
    onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.DOUBLE: np.float64, onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32, onnx.TensorProto.BOOL: np.bool_,
}


def probe_inputs(proto: onnx.ModelProto, batch: int, seq: int, seed: int,
                 count: int = 2) -> list[dict[str, np.ndarray]]:
    """Feeds for the model's inputs: random floats, in-vocabulary token ids, all-ones masks.

    Symbolic dims: the first one is the batch, the others the sequence.
    """
    rng = np.random.default_rng(seed)
    vocab = _vocab_sizes(proto)
    inits = {i.name for i in proto.graph.initializer}
    feeds = []
    for k in range(count):
        feed = {}
        for vi in proto.graph.input:
            if vi.name in inits:
                continue
            tt = vi.type.tensor_type
            dims, seen_symbolic = [], False
            for d in tt.shape.dim:
                if d.HasField("dim_value") and d.dim_value > 0:
                    dims.append(d.dim_value)
                else:
                    dims.append(batch if not seen_symbolic else seq + k)
                    seen_symbolic = True
            dtype = _NP_TYPES.get(tt.elem_type)
            if dtype is None:
                raise ValueError(f"input {vi.name!r} has element type {tt.elem_type}, "
                                 "which fffc cannot probe")
            name = vi.name.lower()
            if dtype == np.bool_ or "mask" in name:
                arr = np.ones(dims, dtype=dtype)
            elif np.issubdtype(dtype, np.integer):
                if "token_type" in name or "segment" in name:
                    arr = np.zeros(dims, dtype=dtype)
                elif "position" in name:
                    arr = np.broadcast_to(np.arange(dims[-1], dtype=dtype), dims).copy()
                else:
                    arr = rng.integers(0, vocab.get(vi.name, 100), size=dims).astype(dtype)
            else:
                arr = rng.standard_normal(dims).astype(dtype)
            feed[vi.name] = arr
        feeds.append(feed)
    return feeds


def session(model: onnx.ModelProto | str, threads: int = 0,
            register: str | None = None) -> ort.InferenceSession:
    """A CPU session; ``register`` is a custom-op library to load first."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    if register:
        so.register_custom_ops_library(register)
    src = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, feeds: Sequence[dict[str, np.ndarray]],
        outputs: Sequence[str] | None = None) -> list[list[np.ndarray]]:
    return [sess.run(list(outputs) if outputs else None, f) for f in feeds]


def compare_runs(got: list[list[np.ndarray]], want: list[list[np.ndarray]],
                 rtol: float) -> Comparison:
    """The worst comparison over every feed and every output."""
    worst = Comparison(0.0, 0.0, True)
    for g_outs, w_outs in zip(got, want, strict=True):
        for g, w in zip(g_outs, w_outs, strict=True):
            worst = worse(worst, compare(g, w, rtol))
    return worst


def site_reference(site: Site, x: np.ndarray, weights: dict[str, np.ndarray | None],
                   slack: bool = False):
    """The planned op on a captured input, with the weights as the artifact stores them.
    With ``slack``: ``(y, slack)``, slack being the error any float32 implementation of a
    masked mode (teal, cats, predictor) may show from entries within rounding of their
    threshold (kept by one side, dropped by the other); None for the exact modes."""
    if site.kind == "routed":
        r = site.routing
        y = reference.routed_ffn(
            x, *(weights.get(k) for k in ("WR", "BR", "W1", "B1", "W2", "B2")),
            activation_name=site.activation, selection=r.get("selection", "topk"), k=r["k"],
            router=r["router"], x_coef=r["x_coef"], delta_coef=r["delta_coef"],
            wa=weights.get("WA"), ba=weights.get("BA"), capacity=r.get("capacity"),
            ln=((weights["LS"], weights["LB"], r["layer_norm_epsilon"])
                if weights.get("LS") is not None else None))
        return (y, None) if slack else y
    if site.kind == "structured":
        y = reference.structured_ffn(x, *(weights.get(k) for k in ("A1", "U1", "B1", "A2", "U2",
                                                                   "B2")),
                                     activation_name=site.activation, s1=weights.get("S1"),
                                     s2=weights.get("S2"))
        return (y, None) if slack else y
    if site.kind == "fff":  # the op's inputs: W_in [K·n, H] row per node, B_in, W_out
        y = reference.fast_feed_forward(x, weights["W_in"], weights["B_in"], weights["W_out"],
                                        trees=site.trees, depth=site.depth,
                                        tie_break=site.tie_break or "gt")
        return (y, None) if slack else y
    w = (x, weights["W1"], weights.get("B1"), weights["W2"], weights.get("B2"), weights.get("WU"))
    act = {"activation_name": site.activation, "up_activation": site.up_activation}
    if site.decision == "predictor":  # W1, WU row per neuron
        return reference.predictor_ffn(*w, *site.predictor_arrays, **act, slack=slack)
    if site.decision in ("teal", "cats"):  # WU: [d_in, d_ff] for teal, row per neuron for cats
        th = np.asarray(site.thresholds, dtype=np.float32)
        if site.decision == "cats":
            return reference.cats_ffn(*w, thresholds=th, **act, slack=slack)
        return reference.teal_ffn(*w, thresholds=th, **act, xc=weights.get("XC"),
                                  hc=weights.get("HC"), slack=slack)
    y = reference.sparse_ffn(*w, **act)
    return (y, None) if slack else y


def site_slack(site: Site, x: np.ndarray, weights: dict[str, np.ndarray | None]) -> np.ndarray | None:
    """See ``site_reference``: the slack alone (for comparing a kernel's output)."""
    return site_reference(site, x, weights, slack=True)[1]


def verify_site(site: Site, xs: list[np.ndarray], ys: list[np.ndarray],
                weights: dict[str, np.ndarray | None], rtol: float) -> Comparison:
    """Check 2: reference op vs the original subgraph's outputs, worst over the probes."""
    worst = Comparison(0.0, 0.0, True)
    for x, y in zip(xs, ys, strict=True):
        want, slack = site_reference(site, x, weights, slack=True)
        worst = worse(worst, compare(want, y, rtol, slack))
    return worst


def _all_nodes(graph: onnx.GraphProto):
    """Nodes of a graph and of its subgraphs (If branches), depth first."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)


def single_node_model(model: onnx.ModelProto, node_name: str) -> onnx.ModelProto:
    """The named ``ai.fffc`` node alone, with its initializers, input ``X``, output ``Y``.

    Used to compare one compiled kernel with the activations captured for its site; the
    model carries no fallback functions, so only a registered kernel can run it.
    """
    node = next(n for n in _all_nodes(model.graph) if n.name == node_name)
    inits = {i.name: i for i in model.graph.initializer}
    new = onnx.NodeProto()
    new.CopyFrom(node)
    new.input[0] = "X"
    del new.output[:]
    new.output.append("Y")
    graph = onnx.helper.make_graph(
        [new], f"check_{node_name}",
        [onnx.helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, None)],
        [onnx.helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, None)],
        [inits[n] for n in node.input[1:] if n],
    )
    # no fallback functions: a kernel the shim does not provide must fail here, not be
    # replaced silently by the function body
    out = onnx.helper.make_model(graph, opset_imports=list(model.opset_import))
    out.ir_version = model.ir_version
    return out


def without_merged_path(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a single-node StructuredFFN model whose node never takes the pre-merged
    path (``merged_max_tokens`` = 0), to check its structured kernels on the same probes."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for attr in out.graph.node[0].attribute:
        if attr.name == "merged_max_tokens":
            attr.i = 0
    return out
