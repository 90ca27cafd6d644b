"""Shared pieces of the FFN detection families: activation patterns and site markers.

Detection replaces each FFN with one ``ai.fffc.canon::FFN`` marker node carrying what
was found (kind, activation, biases; ``markers``). The lowering later turns every marker
into either the ``ai.fffc::SparseFFN`` node (with its fallback function) or back into
standard ops.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from fffc.contract.act_quant import At, pack, unpack
from fffc.contract.kinds import SiteKind
from fffc.contract.ops import SPARSE_FFN
from fffc.contract.sites import Site

from . import canonical_quant
from ._common import CANON, const_array, weight_error
from .markers import FFNMarker

# activation name -> (op_type, domain) of its canonical node
ACT_OPS = {"relu": ("Relu", ""), "gelu": ("Gelu", CANON), "silu": ("Silu", CANON)}


def apply_act(op, kind: str, x, name: str):
    """Pattern for one canonical activation node, binding its output as ``name``."""
    op_type, domain = ACT_OPS[kind]
    return getattr(op, op_type)(x, _domain=domain, _outputs=[name])


def act_name(kind: str, act_value: ir.Value) -> str:
    """The ``ai.fffc`` activation name; canonical Gelu splits into gelu / gelu_tanh."""
    if kind != "gelu":
        return kind
    approx = act_value.producer().attributes.get_string("approximate", "none")
    return "gelu_tanh" if approx == "tanh" else "gelu"


# the weight dtypes a site may have (a float16/bfloat16 model is found, and left as it
# was by the plan: fffc's FFN ops take float32 activations)
FLOAT_WEIGHTS = ("float32", "float16", "bfloat16")

# why an FFN in an If/Loop branch (Optimum's merged decoder) or a function is not a site:
# the later stages (verification, lowering, token dispatch) work on the main graph
SUBGRAPH = "fffc finds FFNs in the model's main graph only"


def in_main_graph(r: pattern.MatchResult, context) -> pattern.MatchResult:
    """``r`` unchanged where the match is in the model's main graph, else a failure."""
    if context.graph_or_function is context.model.graph:
        return r
    return r.fail(f"in a subgraph or function: {SUBGRAPH}")


def check_projection(r: pattern.MatchResult, w: ir.Value, what: str) -> pattern.MatchResult:
    err = weight_error(w, 2, what)
    if err:
        return r.fail(err, w)
    arr = const_array(w)
    if arr.dtype.name not in FLOAT_WEIGHTS:
        return r.fail(f"{what}: expected float32, float16 or bfloat16 weights, got "
                      f"{arr.dtype.name}", w)
    return r


def check_bias(r: pattern.MatchResult, b: ir.Value | None, size: int, what: str) -> pattern.MatchResult:
    if b is None:
        return r
    arr = const_array(b)
    if arr is None:
        return r.fail(f"{what}: expected a constant bias, got a computed tensor", b)
    if arr.shape not in ((size,), (1, size)) or arr.dtype.name not in FLOAT_WEIGHTS:
        return r.fail(f"{what}: expected a float shape [{size}], got {arr.dtype.name} "
                      f"{list(arr.shape)}", b)
    return r


def dequantized_bias(b: ir.Value) -> ir.Value | None:
    """A bias given as ``DequantizeLinear`` of constant codes (``quantize_static``'s), as a
    value holding its float32 values ((code − z)·s, as DequantizeLinear computes them);
    None where it is not one."""
    p = b.producer()
    if p is None or p.op_type != "DequantizeLinear" or p.domain != "" or len(p.inputs) < 2:
        return None
    arrays = [const_array(v) for v in p.inputs]
    if any(a is None for a in arrays) or arrays[1].size != 1:
        return None
    zp = arrays[2] if len(arrays) > 2 else np.zeros((), arrays[0].dtype)
    out = ir.Value(name=f"{b.name}__float")
    out.const_value = ir.tensor((arrays[0].astype(np.int32) - zp.astype(np.int32))
                                 .astype(np.float32) * arrays[1].astype(np.float32))
    return out


def as_vector(op, b: ir.Value | None) -> ir.Value | None:
    """Biases of shape [1, n] become [n] so the op contract holds."""
    if b is None:
        return None
    arr = const_array(b)
    if arr.ndim == 1:
        return b
    return op.initializer(ir.tensor(arr.reshape(-1).copy()), name=f"{b.name}__vec")


def fake_quant(op, v, name: str):
    """Pattern for an activation's canonical fake quantization (``canonical_quant``),
    binding its output as ``name``."""
    return op.FakeQuant(v, _allow_other_inputs=True, _domain=CANON, _outputs=[name])


def check_fake_quants(r: pattern.MatchResult, *values: ir.Value | None) -> pattern.MatchResult:
    """``r`` unless a fake quantization inside the FFN has more than one reader (its
    output would be needed outside the site)."""
    for v in values:
        if r and v is not None and len(v.uses()) != 1:
            return r.fail("fake-quantized activation inside the FFN: expected one reader, "
                          f"got {len(v.uses())}", v)
    return r


def act_quant(op, pairs: dict[At, ir.Value | None], name: str) -> ir.Value | None:
    """The marker's AQ (``fffc.contract.act_quant.pack``) of the matched FakeQuant outputs
    by place; None where there are none."""
    found = {at: canonical_quant.fake_quant_record(v.producer())
             for at, v in pairs.items() if v is not None}
    if not found:
        return None
    return op.initializer(ir.tensor(pack(found)), name=f"{name}__aq")


def emit_marker(op, x, w1, b1, w2, b2, wu, *, rule: str, kind: SiteKind, activation: str,
                up_activation: str, matched: list[str], aq: ir.Value | None = None):
    """The canonical FFN marker node: SparseFFN's X, W1, B1, W2, B2, WU (``markers.FFN_INPUTS``;
    WU in MatMul orientation [d_in, d_ff]), and AQ where the activations are fake-quantized
    inside (the inputs between WU and AQ absent)."""
    between = [None] * (SPARSE_FFN.input_index("AQ") - SPARSE_FFN.input_index("WU") - 1)
    return op.FFN(
        x, w1, b1, w2, b2, wu, *((*between, aq) if aq is not None else ()),
        kind=str(kind), activation=activation, up_activation=up_activation, rule=rule,
        matched_nodes=",".join(matched), _domain=CANON,
    )


def ffn_site(marker: FFNMarker) -> Site:
    """The Site of a dense or gated marker: its widths, activations and biases."""
    w1, w2 = (const_array(marker.inputs[n]) for n in ("W1", "W2"))
    return Site(
        name=marker.name, rule=marker.rule, kind=marker.kind, activation=marker.activation,
        up_activation=marker.up_activation, d_model=int(w1.shape[0]), d_ff=int(w1.shape[1]),
        d_out=int(w2.shape[1]), has_b1=marker.inputs["B1"] is not None,
        has_b2=marker.inputs["B2"] is not None, dtype=str(w1.dtype),
        matched_nodes=marker.matched, act_quant=unpack(const_array(marker.inputs["AQ"])),
    )
