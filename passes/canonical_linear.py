"""Canonical linear layers: every projection becomes ``MatMul(x, W[in, out]) (+ Add(b))``.

Exporters write linears as ``MatMul`` with a pre-transposed weight, as ``Gemm`` (with or
without ``transB``), as GPT-2's Conv1D ``Reshape → Gemm → Reshape``, or, with dynamo
``optimize=False``, as ``MatMul(x, Transpose(W))``. A projection packing two (Phi-3's
``gate_up_proj``, halved by ``chunk(2, -1)``) becomes one projection per half. One form lets
one FFN rule match them all.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from ._common import QUANTIZED, const_array, dequantized, last_dim, weight_error


def _attr_int(value: ir.Value, name: str, default: int) -> int:
    return value.producer().attributes.get_int(name, default)


def _attr_float(value: ir.Value, name: str, default: float) -> float:
    return value.producer().attributes.get_float(name, default)


def _check_gemm(r: pattern.MatchResult, y: ir.Value, w: ir.Value) -> pattern.MatchResult:
    if _attr_int(y, "transA", 0) != 0:
        return r.fail("Gemm transA: expected 0, got 1", y.producer())
    # beta scales C only: torch.mm exports Gemm(x, W) with beta=0 and no C
    has_c = len(y.producer().inputs) > 2 and y.producer().inputs[2] is not None
    for name in ("alpha", "beta") if has_c else ("alpha",):
        got = _attr_float(y, name, 1.0)
        if got != 1.0:
            return r.fail(f"Gemm {name}: expected 1.0, got {got}", y.producer())
    err = weight_error(w, 2, "Gemm weight")
    if err:
        return r.fail(err, w)
    if _attr_int(y, "transB", 0) and dequantized(w.producer()):
        return r.fail(f"Gemm transB=1: {QUANTIZED}", w)
    return r


def _weight_in_out(op, y: ir.Value, w: ir.Value) -> ir.Value:
    """The weight as [in, out]: transB=1 weights get a transposed initializer."""
    if _attr_int(y, "transB", 0) == 0:
        return w
    arr = np.ascontiguousarray(const_array(w).T)
    return op.initializer(ir.tensor(arr), name=f"{w.name}__T_{y.producer().name}")


class GemmToMatMul(pattern.RewriteRuleClassBase):
    """Replaces ``Gemm(x, W, b)`` (alpha=beta=1, transA=0, any transB) with ``MatMul`` + ``Add``.

    Matches: nn.Linear on 2-D inputs from the TorchScript exporter; GPT-2 Conv1D pieces.
    """

    def __init__(self, name: str, has_bias: bool):
        super().__init__(name)
        self._has_bias = has_bias

    def pattern(self, op, x, w, b):
        if self._has_bias:
            return op.Gemm(x, w, b, _outputs=["y"])
        return op.Gemm(x, w, _outputs=["y"])

    def check(self, context, x, w, y, b=None, **_):
        return _check_gemm(pattern.MatchResult(), y, w)

    def rewrite(self, op, x, w, y, b=None, **_):
        mm = op.MatMul(x, _weight_in_out(op, y, w))
        return op.Add(mm, b) if self._has_bias else mm


class Conv1DReshapeGemm(pattern.RewriteRuleClassBase):
    """Replaces GPT-2 Conv1D ``Reshape(x,[-1,in]) → Gemm(W,b) → Reshape`` with ``MatMul`` + ``Add``.

    Matches: transformers GPT2MLP (Conv1D c_fc/c_proj) from both exporters; the second
    Reshape restores x's leading dims (checked where its target shape is constant).
    """

    def __init__(self, name: str, has_bias: bool):
        super().__init__(name)
        self._has_bias = has_bias

    def pattern(self, op, x, s1, w, b, s2):
        flat = op.Reshape(x, s1)
        g = op.Gemm(flat, w, b, _outputs=["y"]) if self._has_bias else op.Gemm(flat, w, _outputs=["y"])
        return op.Reshape(g, s2)

    def check(self, context, x, s1, w, y, s2, b=None, **_):
        r = _check_gemm(pattern.MatchResult(), y, w)
        if not r:
            return r
        trans_b = _attr_int(y, "transB", 0)
        d_in, d_out = const_array(w).shape[::-1] if trans_b else const_array(w).shape
        last = last_dim(x)
        if last != d_in:
            return r.fail(f"Conv1D input: expected last dim {d_in}, got shape {x.shape}", x)
        # Any reshape of a row-major [..., d_in] tensor to [n, d_in] keeps its rows: it is
        # the flatten, whether the target shape is a constant [-1, d_in] or computed.
        flat = y.producer().inputs[0]
        shape1 = const_array(s1)
        if shape1 is not None and shape1.tolist() not in ([-1, d_in], [0, d_in]):
            return r.fail(f"Conv1D flatten: expected Reshape to [-1, {d_in}], got {shape1.tolist()}", s1)
        if shape1 is None and flat.shape is not None and flat.shape.rank() not in (None, 2):
            return r.fail(f"Conv1D flatten: expected a 2-D Reshape, got {flat.shape}", s1)
        out = y.uses()[0][0].outputs[0] if y.uses() else None
        shape2 = const_array(s2)
        if shape2 is not None and int(shape2.reshape(-1)[-1]) not in (d_out, -1):
            return r.fail(f"Conv1D unflatten: expected last dim {d_out}, got {shape2.tolist()}", s2)
        if (out is not None and out.shape is not None and x.shape is not None
                and out.shape.rank() != x.shape.rank()):
            return r.fail(f"Conv1D unflatten: expected rank {x.shape.rank()}, got {out.shape}", s2)
        if out is not None and out.shape is not None and x.shape is not None:
            # the unflatten must give back x's leading dims: a static dim of x facing a
            # different static or a symbolic dim of the output is another reshape (e.g. an
            # FFF's [T, 1, n] mask product reshaped to [batch, seq, d])
            for a, b in zip(list(x.shape)[:-1], list(out.shape)[:-1], strict=True):
                if isinstance(a, int) and a != b:
                    return r.fail(f"Conv1D unflatten: leading dims {list(x.shape)[:-1]} of the "
                                  f"input are not restored ({out.shape})", s2)
        return r

    def rewrite(self, op, x, w, y, b=None, **_):
        mm = op.MatMul(x, _weight_in_out(op, y, w))
        return op.Add(mm, b) if self._has_bias else mm


class FoldWeightTranspose(pattern.RewriteRuleClassBase):
    """Replaces ``Transpose(W)`` of a 2-D or 3-D initializer with the transposed initializer.

    Matches: torch.onnx dynamo with ``optimize=False`` (nn.Linear weights stay [out, in];
    bmm block weights [k, q, p] transposed per block).
    """

    def pattern(self, op, w):
        return op.Transpose(w, _outputs=["t"])

    def check(self, context, w, t, **_):
        r = pattern.MatchResult()
        if dequantized(w.producer()):
            return r.fail(f"transposed weight: {QUANTIZED}", w)
        arr = const_array(w)
        if arr is None or arr.ndim not in (2, 3):
            return r.fail(weight_error(w, 2, "transposed weight") or
                          f"transposed weight: expected rank 2 or 3, got {list(arr.shape)}", w)
        perm = t.producer().attributes.get_ints("perm", list(range(arr.ndim))[::-1])
        if sorted(perm) != list(range(arr.ndim)):
            return r.fail(f"Transpose perm: expected a permutation of the axes, got "
                          f"{list(perm)}", t.producer())
        return r

    def rewrite(self, op, w, t, **_):
        arr = const_array(w)
        perm = t.producer().attributes.get_ints("perm", list(range(arr.ndim))[::-1])
        folded = np.ascontiguousarray(arr.transpose(perm))
        return op.initializer(ir.tensor(folded), name=f"{w.name}__T_{t.producer().name}")


def _packed(y: ir.Value) -> np.ndarray | None:
    """The weight of the ``MatMul(x, W)`` producing ``y``, if it is a constant 2-D one."""
    p = y.producer()
    if p is None or p.op_type != "MatMul" or p.domain != "" or dequantized(p.inputs[1].producer()):
        return None  # a quantized packed projection stays packed: QUANTIZED
    w = const_array(p.inputs[1])
    return w if w is not None and w.ndim == 2 else None


def _last_axis(axis: int, y: ir.Value) -> bool:
    rank = y.shape.rank() if y.shape is not None else None
    return axis == -1 or (rank is not None and axis == rank - 1)


def _half(node: ir.Node, y: ir.Value, n: int) -> int | None:
    """Which half (0, 1) of ``y``'s last axis (size ``n``) the Slice ``node`` takes, or None."""
    if node.op_type != "Slice" or node.domain != "" or node.inputs[0] is not y:
        return None
    given = [*node.inputs[1:5], None, None][:4]  # starts, ends, axes, steps (optional)
    starts, ends, axes, steps = (const_array(v) for v in given)
    if given[3] is None:
        steps = np.ones(1)
    if any(b is None or b.size != 1 for b in (starts, ends, axes, steps)):
        return None
    if int(steps.item()) != 1 or not _last_axis(int(axes.item()), y):
        return None
    start, end = int(starts.item()), min(int(ends.item()), n)
    return {(0, n // 2): 0, (n // 2, n): 1}.get((start, end)) if n % 2 == 0 else None


def _weight_part(op, y: ir.Value, w: np.ndarray, half: int) -> ir.Value:
    """``W``'s columns of ``half`` as an initializer (named after W: shared by every rewrite)."""
    f = w.shape[1] // 2
    name = f"{y.producer().inputs[1].name}__half{half}"
    return op.initializer(ir.tensor(np.ascontiguousarray(w[:, half * f:(half + 1) * f])),
                          name=name)


class PackedHalfSlice(pattern.RewriteRuleClassBase):
    """Replaces ``Slice(MatMul(x, W), ...)`` taking one half of the last axis with
    ``MatMul(x, W_half)``, where every reader of the product takes a half.

    Matches: Phi-3's ``gate_up_proj`` halved by ``chunk(2, dim=-1)`` from the TorchScript
    exporter (Optimum); the QKV projection, sliced in three, is left packed.
    """

    def pattern(self, op, y):
        return op.Slice(y, _allow_other_inputs=True, _outputs=["part"])

    def check(self, context, y, part, **_):
        r = pattern.MatchResult()
        w = _packed(y)
        if w is None:
            return r.fail("packed projection: expected MatMul(x, W) with a constant 2-D W", y)
        readers = [u.node for u in y.uses()]
        if y in context.graph_or_function.outputs or len(readers) > 2 or any(
                _half(n, y, w.shape[1]) is None for n in readers):
            return r.fail(f"packed projection: expected its [.., {w.shape[1]}] product read "
                          "only by Slices of its halves", y)
        return r

    def rewrite(self, op, y, part, **_):
        w = _packed(y)
        half = _half(part.producer(), y, w.shape[1])
        return op.MatMul(y.producer().inputs[0], _weight_part(op, y, w, half))


class PackedHalfSplit(pattern.RewriteRuleClassBase):
    """Replaces ``Split(MatMul(x, W))`` into the two halves of the last axis with one
    ``MatMul(x, W_half)`` per half.

    Matches: Phi-3's ``gate_up_proj`` halved by ``chunk(2, dim=-1)`` from torch.onnx dynamo
    (opset 18, ``num_outputs=2``) and with the sizes as an input.
    """

    def pattern(self, op, y):
        return op.Split(y, _allow_other_inputs=True, _outputs=["a", "b"])

    def check(self, context, y, a, **_):
        r = pattern.MatchResult()
        w = _packed(y)
        if w is None:
            return r.fail("packed projection: expected MatMul(x, W) with a constant 2-D W", y)
        node = a.producer()
        n = w.shape[1]
        sizes = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
        if not _last_axis(node.attributes.get_int("axis", 0), y):
            return r.fail("packed projection: expected a Split of the last axis", node)
        if n % 2 or (sizes is not None and sizes.tolist() != [n // 2, n // 2]) or (
                len(node.inputs) > 1 and node.inputs[1] is not None and sizes is None):
            return r.fail(f"packed projection: expected a Split of {n} into two halves", node)
        if len(y.uses()) != 1 or y in context.graph_or_function.outputs:
            return r.fail("packed projection: its product is also read elsewhere", y)
        return r

    def rewrite(self, op, y, a, **_):
        w = _packed(y)
        x = y.producer().inputs[0]
        return (op.MatMul(x, _weight_part(op, y, w, 0)), op.MatMul(x, _weight_part(op, y, w, 1)))


# Conv1D first, as its own pass: its root (the last Reshape) comes after the Gemm that the
# plain Gemm rule would otherwise take first.
conv1d_rules = pattern.RewriteRuleSet(
    [
        Conv1DReshapeGemm.rule("Conv1DBias", has_bias=True),
        Conv1DReshapeGemm.rule("Conv1D", has_bias=False),
    ]
)
rules = pattern.RewriteRuleSet(
    [
        GemmToMatMul.rule("GemmBias", has_bias=True),
        GemmToMatMul.rule("Gemm", has_bias=False),
        FoldWeightTranspose.rule("FoldWeightTranspose"),
        PackedHalfSlice.rule("PackedHalfSlice"),
        PackedHalfSplit.rule("PackedHalfSplit"),
    ]
)
