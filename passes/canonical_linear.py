"""Canonical linear layers: every projection becomes ``MatMul(x, W[in, out]) (+ Add(b))``.

Exporters write linears as ``MatMul`` with a pre-transposed weight, as ``Gemm`` (with or
without ``transB``), as GPT-2's Conv1D ``Reshape → Gemm → Reshape``, or, with dynamo
``optimize=False``, as ``MatMul(x, Transpose(W))``. One form lets one FFN rule match them all.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from ._common import const_array, last_dim, weight_error


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
    ]
)
