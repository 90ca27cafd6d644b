"""Shared pieces of the FFN detection families: activation patterns and site markers.

Detection replaces each FFN with one ``ai.fffc.canon::FFN`` marker node carrying what
was found (kind, activation, biases). ``lower`` later turns every marker into either
the ``ai.fffc::SparseFFN`` node (with its fallback function) or back into standard ops.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern

from ._common import CANON, const_array, weight_error

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


def check_projection(r: pattern.MatchResult, w: ir.Value, what: str) -> pattern.MatchResult:
    err = weight_error(w, 2, what)
    if err:
        return r.fail(err, w)
    arr = const_array(w)
    if arr.dtype.name != "float32":
        return r.fail(
            f"{what}: expected float32 weights, got {arr.dtype.name} "
            "(SparseFFN supports float32 only in this version)", w)
    return r


def check_bias(r: pattern.MatchResult, b: ir.Value | None, size: int, what: str) -> pattern.MatchResult:
    if b is None:
        return r
    arr = const_array(b)
    if arr is None:
        return r.fail(f"{what}: expected a constant bias, got a computed tensor", b)
    if arr.shape not in ((size,), (1, size)) or arr.dtype.name != "float32":
        return r.fail(f"{what}: expected float32 shape [{size}], got {arr.dtype.name} "
                      f"{list(arr.shape)}", b)
    return r


def as_vector(op, b: ir.Value | None) -> ir.Value | None:
    """Biases of shape [1, n] become [n] so the op contract holds."""
    if b is None:
        return None
    arr = const_array(b)
    if arr.ndim == 1:
        return b
    return op.initializer(ir.tensor(arr.reshape(-1).copy()), name=f"{b.name}__vec")


def emit_marker(op, x, w1, b1, w2, b2, wu, *, rule: str, kind: str, activation: str,
                up_activation: str, matched: list[str]):
    """The canonical FFN marker node (WU in MatMul orientation [d_in, d_ff])."""
    y = op.FFN(
        x, w1, b1, w2, b2, wu,
        kind=kind, activation=activation, up_activation=up_activation, rule=rule,
        matched_nodes=",".join(matched), _domain=CANON,
    )
    return y
