"""Symbolic shapes: the sizes of a graph's values as products of named dims.

A dim is a monomial ``c · Π names`` (``Mono``: the constant c and the sorted names, with
repeats): a static dim is c with no names; a dim ONNX shape inference names is 1 · that
name; a dim nothing names gets a fresh name of its own (``Shapes.fresh``), never equal to
any other. Invariants:

* two dims are equal only where their products are (same constant, same names): equal
  monomials are equal sizes for every input; unequal ones are different sizes only where
  both are constants (a named dim may take any size, a constant's included);
* a shape is a list of dims, or None where it is unknown (an unknown shape proves nothing);
* values keep their shapes through every rewrite: a rewrite replaces a value only by one
  computing the same tensor, so a ``Shapes`` computed once stays true for the graph's whole
  rewriting and nothing is recomputed.

``Shapes`` gives the shape of a value (from its producer where the algebra follows it, else
from its declared shape) and the symbolic contents of shape tensors (1-D integer tensors
computed from ``Shape``: ``Gather``, ``Concat``, ``Slice``, ``Mul``/``Div``/``Add``/``Sub``
of dims, ...); ``encode`` writes a symbolic shape as a constant ``Reshape`` target.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable

import numpy as np
import onnx_ir as ir

from ._common import CANON, const_array, const_shape
from .markers import decode

Mono = tuple[int, tuple[str, ...]]  # c · Π names (a dim's size, symbolically)
ONE: Mono = (1, ())
_FRESH = "?"  # the prefix of the names given to dims nothing names

# elementwise ops of one tensor input (attributes aside): they commute with any reshape
UNARY = {"Relu", "Gelu", "Silu", "Sigmoid", "Tanh", "Erf", "Neg", "Abs", "Exp", "Log", "Sqrt",
         "Reciprocal", "Not", "Identity", "Cast", "Softplus", "Softsign", "LeakyRelu", "Elu",
         "Selu", "Celu", "HardSigmoid", "HardSwish", "Mish", "Sign", "Floor", "Ceil", "Round",
         "IsNaN", "FastGelu", "QuickGelu"}
# elementwise ops of two tensor inputs (with broadcasting)
BINARY = {"Add", "Sub", "Mul", "Div", "Pow", "Greater", "GreaterOrEqual", "Less",
          "LessOrEqual", "Equal", "And", "Or", "Xor", "Max", "Min", "PRelu"}


def mul(a: Mono, b: Mono) -> Mono:
    """a · b."""
    return a[0] * b[0], tuple(sorted(a[1] + b[1]))


def div(a: Mono, b: Mono) -> Mono | None:
    """a / b where it is a monomial (b's names among a's, the constants dividing)."""
    if b[0] == 0 or a[0] % b[0]:
        return None
    rest = Counter(a[1])
    rest.subtract(Counter(b[1]))
    if any(n < 0 for n in rest.values()):
        return None
    return a[0] // b[0], tuple(sorted(rest.elements()))


def prod(dims: Iterable[Mono]) -> Mono:
    """The product of dims (ONE for none): a shape's element count."""
    out = ONE
    for d in dims:
        out = mul(out, d)
    return out


def const(m: Mono) -> int | None:
    """m's value where it names nothing (a static dim), else None."""
    return m[0] if not m[1] else None


def ints(value: ir.Value | None) -> list[int] | None:
    """The entries of a constant integer scalar or 1-D tensor; None for any other value."""
    arr = const_array(value)
    if arr is None or arr.dtype.kind not in "iu" or arr.ndim > 1:
        return None
    return [int(i) for i in arr.reshape(-1)]


class Shapes:
    """Symbolic shapes of a graph's values, and the symbolic contents of its shape tensors
    (1-D integer tensors computed from ``Shape``). Values keep their shapes through every
    rewrite (they compute the same tensors), so nothing is ever recomputed."""

    def __init__(self) -> None:
        self._shapes: dict[ir.Value, list[Mono] | None] = {}
        self._values: dict[ir.Value, list[Mono] | None] = {}
        self._fresh = itertools.count()

    def fresh(self) -> Mono:
        return 1, (f"{_FRESH}{next(self._fresh)}",)

    def shape(self, v: ir.Value | None) -> list[Mono] | None:
        if v is None:
            return None
        if v not in self._shapes:
            self._shapes[v] = None  # a cycle reads as unknown
            self._shapes[v] = self._shape(v)
        return self._shapes[v]

    def values(self, v: ir.Value | None) -> list[Mono] | None:
        if v is None:
            return None
        if v not in self._values:
            self._values[v] = None
            self._values[v] = self._value(v)
        return self._values[v]

    def _declared(self, v: ir.Value) -> list[Mono] | None:
        if v.shape is None:
            arr = const_array(v) if v.const_value is not None else None
            return None if arr is None else [(int(d), ()) for d in arr.shape]
        out = []
        for d in v.shape:
            if isinstance(d, int):
                out.append((d, ()))
            elif getattr(d, "value", None) is not None:
                out.append((1, (str(d.value),)))
            else:
                out.append(self.fresh())
        return out

    def _shape(self, v: ir.Value) -> list[Mono] | None:
        p = v.producer()
        if p is not None and p.op_type == "TopK" and p.domain == "":
            src, k = self.shape(p.inputs[0]), self.values(p.inputs[1])
            axis = p.attributes.get_int("axis", -1)
            if src and k is not None and len(k) == 1 and -len(src) <= axis < len(src):
                return [k[0] if i == axis % len(src) else m for i, m in enumerate(src)]
            return self._declared(v)
        if p is None or p.domain not in ("", CANON) or v is not p.outputs[0]:
            return self._declared(v)
        op = p.op_type
        if op == "GatherElements" and p.domain == "":  # the indices' shape
            return self.shape(p.inputs[1]) or self._declared(v)
        if op == "Expand" and p.domain == "":
            return self.broadcast(self.shape(p.inputs[0]), self.values(p.inputs[1])) \
                or self._declared(v)
        if op in UNARY:
            return self.shape(p.inputs[0])
        if op in BINARY and len(p.inputs) == 2:
            return self.broadcast(self.shape(p.inputs[0]), self.shape(p.inputs[1]))
        if op == "MatMul" and p.domain == "":
            a, b = self.shape(p.inputs[0]), self.shape(p.inputs[1])
            if a is None or b is None or len(a) < 2 or len(b) < 2:
                return self._declared(v)
            batch = self.broadcast(a[:-2], b[:-2])
            return None if batch is None else [*batch, a[-2], b[-1]]
        if op == "Transpose" and p.domain == "":
            a = self.shape(p.inputs[0])
            if a is None:
                return self._declared(v)
            perm = p.attributes.get_ints("perm", list(range(len(a)))[::-1])
            return [a[i] for i in perm] if sorted(perm) == list(range(len(a))) else None
        if op == "Reshape" and p.domain == "":
            return self._reshape(p) or self._declared(v)
        if op in ("Squeeze", "Unsqueeze") and p.domain == "":
            return self._squeeze(p) or self._declared(v)
        if op == "FFN" and p.domain == CANON:  # a marker: token-wise, x [..., d] → [..., W2's]
            x, w2 = self.shape(p.inputs[0]), const_shape(decode(p).inputs["W2"])
            return [*x[:-1], (w2[1], ())] if x and w2 else self._declared(v)
        return self._declared(v)

    def _squeeze(self, node: ir.Node) -> list[Mono] | None:
        src = self.shape(node.inputs[0])
        axes = ints(node.inputs[1]) if len(node.inputs) > 1 else None
        if axes is None and len(node.inputs) < 2:
            axes = node.attributes.get_ints("axes", None)
        if src is None or axes is None:
            return None
        if node.op_type == "Squeeze":
            drop = {a % len(src) for a in axes} if src else set()
            if any(src[a] != ONE for a in drop):
                return None
            return [m for i, m in enumerate(src) if i not in drop]
        rank = len(src) + len(axes)
        put = {a % rank for a in axes}
        rest = iter(src)
        return [ONE if i in put else next(rest) for i in range(rank)]

    def broadcast(self, a: list[Mono] | None, b: list[Mono] | None) -> list[Mono] | None:
        """Numpy broadcasting of two symbolic shapes; None where it is not valid."""
        if a is None or b is None:
            return None
        n = max(len(a), len(b))
        a, b = [None] * (n - len(a)) + list(a), [None] * (n - len(b)) + list(b)
        out = []
        for x, y in zip(a, b, strict=True):
            if x is None or (x == ONE and y is not None):
                out.append(y)
            elif y is None or y == ONE or x == y:
                out.append(x)
            elif const(x) is not None and const(y) is not None:
                return None
            elif const(x) is not None or const(y) is not None:
                # a named dim facing a constant: it is 1 (broadcast) or that constant
                out.append(x if const(x) is not None else y)
            else:
                out.append(self.fresh())
        return out

    def _reshape(self, node: ir.Node) -> list[Mono] | None:
        target = self.values(node.inputs[1])
        src = self.shape(node.inputs[0])
        if target is None:
            return None
        allowzero = node.attributes.get_int("allowzero", 0)
        out: list[Mono | None] = []
        for i, m in enumerate(target):
            if m == (0, ()) and not allowzero:
                if src is None or i >= len(src):
                    return None
                out.append(src[i])
            elif m == (-1, ()):
                out.append(None)
            elif m[0] <= 0:
                return None
            else:
                out.append(m)
        missing = [i for i, m in enumerate(out) if m is None]
        if len(missing) > 1:
            return None
        if missing:
            q = div(prod(src), prod(m for m in out if m is not None)) if src else None
            out[missing[0]] = q if q is not None else self.fresh()
        return out

    def _value(self, v: ir.Value) -> list[Mono] | None:
        known = ints(v)
        if known is not None:
            return [(i, ()) for i in known]
        p = v.producer()
        if p is None or p.domain != "":
            return None
        op, ins = p.op_type, p.inputs
        if op == "Shape":
            s = self.shape(ins[0])
            if s is None:
                return None
            start, end = p.attributes.get_int("start", 0), p.attributes.get_int("end", len(s))
            return s[slice(*(max(0, min(len(s), i + len(s) if i < 0 else i))
                             for i in (start, end)))]
        if op in ("Unsqueeze", "Squeeze", "Identity", "Reshape", "Flatten") or (
                op == "Cast" and p.attributes.get_int("to", 0) in
                (int(ir.DataType.INT64), int(ir.DataType.INT32))):
            return self.values(ins[0])
        if op == "Gather" and p.attributes.get_int("axis", 0) == 0:
            data, idx = self.values(ins[0]), ints(ins[1])
            if data is None or idx is None or any(not -len(data) <= i < len(data) for i in idx):
                return None
            return [data[i] for i in idx]
        if op == "Concat" and p.attributes.get_int("axis", 0) in (0, -1):
            parts = [self.values(i) for i in ins]
            return None if any(q is None for q in parts) else [m for q in parts for m in q]
        if op == "Slice":
            data = self.values(ins[0])
            given = [ints(i) if i is not None else None for i in [*ins[1:5], None, None][:4]]
            starts, ends, axes, steps = given
            if data is None or starts is None or ends is None or len(starts) != 1 \
                    or axes not in (None, [0], [-1]) or steps not in (None, [1]):
                return None
            return data[starts[0]:ends[0]]
        if op == "ConstantOfShape":
            n, fill = self.values(ins[0]), p.attributes.get("value")
            fill = fill.as_tensor().numpy().reshape(-1) if fill is not None else np.zeros(1)
            if n is None or len(n) != 1 or const(n[0]) is None or fill.dtype.kind not in "iu":
                return None
            return [(int(fill[0]), ())] * n[0][0]
        if op == "Where" and len(ins) == 3:
            cond, a, b = (self.values(i) for i in ins)
            if cond is None or a is None or b is None or any(const(c) is None for c in cond):
                return None
            n = max(len(cond), len(a), len(b))
            if any(len(q) not in (1, n) for q in (cond, a, b)):
                return None
            cond, a, b = ((q * n if len(q) == 1 else q) for q in (cond, a, b))
            return [x if c[0] else y for c, x, y in zip(cond, a, b, strict=True)]
        if op in ("Mul", "Div", "Add", "Sub", "Equal") and len(ins) == 2:
            a, b = self.values(ins[0]), self.values(ins[1])
            if a is None or b is None or (len(a) != len(b) and 1 not in (len(a), len(b))):
                return None
            n = max(len(a), len(b))
            a, b = (a * n if len(a) == 1 else a), (b * n if len(b) == 1 else b)
            out = [_arith(op, x, y) for x, y in zip(a, b, strict=True)]
            return None if any(m is None for m in out) else out
        return None


def _arith(op: str, x: Mono, y: Mono) -> Mono | None:
    if op == "Equal":  # a dim (a positive coefficient) never equals a negative constant
        if x == y:
            return 1, ()
        if const(x) is not None and const(y) is not None:
            return 0, ()
        c = const(x) if const(x) is not None else const(y)
        return (0, ()) if c is not None and c < 0 else None
    if op == "Mul":
        return mul(x, y)
    if op == "Div":
        if const(x) is not None and const(y) is not None:
            return (int(x[0] / y[0]), ()) if y[0] else None  # ONNX integer Div truncates
        return div(x, y)
    if const(x) is None or const(y) is None:
        return None
    return (x[0] + y[0] if op == "Add" else x[0] - y[0]), ()


def encode(target: list[Mono], src: list[Mono] | None, allowzero: int = 0) -> list[int] | None:
    """A constant Reshape target giving the symbolic shape ``target`` from an input of shape
    ``src``: constants as they are, 0 where the dim is the input's dim at that axis, -1 for
    one dim left; None where more than one dim is left."""
    out, free = [], []
    for i, m in enumerate(target):
        c = const(m)
        if c is not None and c > 0:
            out.append(c)
        elif c is None and not allowzero and src is not None and i < len(src) and src[i] == m:
            out.append(0)
        elif c is None:
            out.append(-1)
            free.append(i)
        else:
            return None
    return out if len(free) <= 1 else None


def ir_shape(dims: list[Mono] | None) -> ir.Shape | None:
    """A symbolic shape as onnx_ir's (a product of names, or a fresh name, unnamed)."""
    if dims is None:
        return None
    return ir.Shape([m[0] if not m[1] else m[1][0] if m[0] == 1 and len(m[1]) == 1
                     and not m[1][0].startswith(_FRESH) else None for m in dims])


def drops_last_unit_axis(node: ir.Node) -> bool:
    """``node`` is a Reshape of x [..., 1] to x's other dims (a Squeeze written as a view)."""
    if node.op_type != "Reshape" or node.domain != "":
        return False
    shapes = Shapes()
    src, out = shapes.shape(node.inputs[0]), shapes.shape(node.outputs[0])
    return bool(src) and out is not None and src[-1] == ONE and src[:-1] == out
