"""Canonical structured projections: ``ai.fffc.canon::StructuredLinear(x, A [, U])``.

A structured projection (Wei et al. 2024, "Building on Efficient Foundations") is a
block-diagonal product ``blockdiag(x, A)`` (A [k, p, q], block b maps x[.., b·p:(b+1)·p] to
out[.., b·q:(b+1)·q]) followed by an optional dense factor ``U [k·q, n]``. Exporters spell
it in several ways; each becomes this one node so the FFN rule matches them all:

* LowRank ``MatMul(MatMul(x, V [d, r]), U [r, n])`` with r < min(d, n) → k = 1.
* BlockDense/BlockDiagonal via ``bmm``: ``Reshape([-1, k, p]) → Transpose(1,0,2) →
  MatMul(A [k, p, q]) → Transpose(1,0,2) → Reshape([-1, k·q])``, then ``MatMul(U)``.
* the same via ``einsum`` (``Reshape → Einsum("bkp,kqp->bkq") → Reshape``), any operand
  letter order of the weight; BlockShuffle (Monarch) via bmm or two einsums →
  ``BlockShuffle(x, A, S)`` (ShuffleBmm, ShuffleEinsum).
* the same with the leading dims kept (``Reshape(x, [B, S, k, p]) → Einsum("...kp,..") →
  Reshape``; BlockDiagEinsumKept), a dense factor after it moved before the reshape that
  restores them (MatMulAfterRows); a projection written ``Einsum("...a,ba->...b")``
  becomes a ``MatMul`` in canonical_reshape (EinsumMatMul), and these rules see it there.
* a reshape whose row count is computed from the input's shape (``reshape(b·s, k, p)``)
  matches once ``canonical_reshape.computed_shape_rules`` (run before these) has proven
  its target on the symbolic shapes: ``[-1, k, p]``.
* the ``Reshape → act → Reshape`` round trip a structured MLP puts around its activation
  (``x.reshape(*batch, -1)`` after fc1, ``reshape(-1, d_ff)`` in fc2) is dropped: an
  elementwise activation commutes with a reshape that is undone.

The node's input is 2-D wherever ``k > 1`` (the exporters' reshapes flatten the tokens);
``legalize`` turns nodes that no FFN rule took back into standard ops.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from ._common import CANON, QUANTIZED, const_array, dequantized, last_dim


def _float32(r: pattern.MatchResult, value: ir.Value, rank: int, what: str):
    if dequantized(value.producer()):
        return r.fail(f"{what}: {QUANTIZED}", value)
    arr = const_array(value)
    if arr is None:
        return r.fail(f"{what}: expected a constant weight, got a computed tensor", value)
    if arr.ndim != rank or arr.dtype != np.float32:
        return r.fail(f"{what}: expected float32 rank {rank}, got {arr.dtype} "
                      f"{list(arr.shape)}", value)
    return r


def _shape_is(value: ir.Value, want: list[int]) -> bool:
    arr = const_array(value)
    return arr is not None and arr.reshape(-1).tolist() == want


def _rows_then(target: ir.Value, reshape: ir.Node) -> list[int] | None:
    """The entries after the first of ``reshape``'s constant ``target`` where the first keeps
    the rows n of its input ``[n, ..]``: ``-1``, or ``0`` (n copied) without ``allowzero``;
    None for any other target. A target computed at run time is constant once
    ``canonical_reshape`` has proven it on the symbolic shapes."""
    arr = const_array(target)
    if arr is None or arr.ndim != 1 or arr.size < 2:
        return None
    first = int(arr[0])
    if first == -1 or (first == 0 and not reshape.attributes.get_int("allowzero", 0)):
        return [int(e) for e in arr[1:]]
    return None


def _flat(op, v: ir.Value, width: int, name: str) -> ir.Value:
    """``Reshape(v, [-1, width])``: the tokens flattened, as the exporter's reshape did."""
    shape = op.initializer(ir.tensor(np.array([-1, width], dtype=np.int64)), name=name)
    return op.Reshape(v, shape)


def _pieces(target: ir.Value) -> list[ir.Value] | None:
    """The inputs of a Concat reshape target, Concats inside it spliced in (rewrites of its
    pieces may leave nested Concats); None where the target is not a Concat."""
    concat = target.producer()
    if concat is None or concat.op_type != "Concat" or concat.domain != "":
        return None
    out = []
    for v in concat.inputs:
        inner = _pieces(v) if v is not None else None
        out.extend(inner if inner is not None else [v])
    return out


def _entries(value: ir.Value) -> int | None:
    """The element count of a 1-D reshape-target piece: a constant's, or a static shape's."""
    arr = const_array(value)
    if arr is not None:
        return int(arr.size)
    shape = value.shape
    if shape is None or shape.rank() != 1 or not isinstance(shape[0], int):
        p = value.producer()  # Unsqueeze of a scalar (its rank from the axes)
        if p is not None and p.op_type == "Unsqueeze" and p.inputs[0].shape is not None \
                and p.inputs[0].shape.rank() == 0:
            return 1
        return None
    return shape[0]


class LowRank(pattern.RewriteRuleClassBase):
    """Replaces ``MatMul(MatMul(x, V), U)`` (constants, rank r < min(d_in, d_out)) with
    ``StructuredLinear(x, V[None], U)``.

    Matches: LowRankLinear (``torch.mm`` chains, nn.Linear pairs without a bias between)
    from both exporters, after Gemm canonicalization.
    """

    def pattern(self, op, x, v, u):
        return op.MatMul(op.MatMul(x, v), u)

    def check(self, context, x, v, u, **_):
        r = pattern.MatchResult()
        r = _float32(r, v, 2, "LowRank V")
        r = r and _float32(r, u, 2, "LowRank U")
        if not r:
            return r
        (d, rank), (rank_u, n) = const_array(v).shape, const_array(u).shape
        if rank != rank_u:
            return r.fail(f"LowRank U rows: expected {rank}, got {rank_u}", u)
        if rank >= min(d, n):
            return r.fail(f"LowRank: middle width {rank} is not below min({d}, {n})", v)
        return r

    def rewrite(self, op, x, v, u, **_):
        a = op.initializer(ir.tensor(const_array(v)[None].copy()), name=f"{v.name}__blocks")
        return op.StructuredLinear(x, a, u, _domain=CANON)


class BlockDiagBmm(pattern.RewriteRuleClassBase):
    """Replaces ``Reshape([-1,k,p]) → Transpose(1,0,2) → MatMul(A [k,p,q]) →
    Transpose(1,0,2) → Reshape([-1,k·q])`` with ``StructuredLinear(Reshape(x, [-1, k·p]), A)``.

    Matches: BlockDense/BlockShuffle halves written with ``torch.bmm`` (dynamo and
    TorchScript exporters).
    """

    def pattern(self, op, x, s_in, a, s_out):
        t = op.Transpose(op.Reshape(x, s_in), perm=[1, 0, 2])
        return op.Reshape(op.Transpose(op.MatMul(t, a), perm=[1, 0, 2]), s_out,
                          _outputs=["out"])

    def check(self, context, x, s_in, a, s_out, out, **_):
        r = _float32(pattern.MatchResult(), a, 3, "block-diagonal factor")
        if not r:
            return r
        k, p, q = const_array(a).shape
        if not _shape_is(s_in, [-1, k, p]):
            return r.fail(f"block input reshape: expected [-1, {k}, {p}]", s_in)
        if _rows_then(s_out, out.producer()) != [k * q]:
            return r.fail(f"block output reshape: expected [-1, {k * q}]", s_out)
        return r

    def rewrite(self, op, x, s_in, a, s_out, **_):
        k, p, _ = const_array(a).shape
        return op.StructuredLinear(_flat(op, x, k * p, f"{a.name}__flat"), a, _domain=CANON)


def _einsum_parts(equation: str) -> tuple[str, str, str] | None:
    """(activation letters, weight letters, output letters) of a two-operand einsum with
    three letters per operand and four distinct letters in all; None for anything else."""
    eq = equation.replace(" ", "")
    if "->" not in eq or eq.count(",") != 1:
        return None
    ins, out = eq.split("->")
    xs, ws = ins.split(",")
    if len(xs) != 3 or len(ws) != 3 or len(out) != 3 or len(set(xs + ws)) != 4:
        return None
    return xs, ws, out


def _einsum_perm(equation: str) -> tuple[int, int, int] | None:
    """The transpose that brings an einsum weight to [k, p, q], for ``x[b,k,p] · A -> [b,k,q]``
    (x first, three letters each); None for any other contraction."""
    parts = _einsum_parts(equation)
    if parts is None:
        return None
    xs, ws, out = parts
    b, k, p = xs
    if out[0] != b or out[1] != k or b in ws or p in out:
        return None
    q = out[2]
    if sorted(ws) != sorted(k + p + q):
        return None
    return (ws.index(k), ws.index(p), ws.index(q))


class BlockDiagEinsum(pattern.RewriteRuleClassBase):
    """Replaces ``Reshape([-1,k,p]) → Einsum(x_bkp, A) → Reshape([-1,k·q])`` with
    ``StructuredLinear(Reshape(x, [-1, k·p]), A as [k,p,q])``.

    Matches: block-diagonal layers written with ``torch.einsum`` (both exporters).
    """

    def pattern(self, op, x, s_in, a, s_out):
        return op.Reshape(op.Einsum(op.Reshape(x, s_in), a, _outputs=["e"]), s_out,
                          _outputs=["out"])

    def check(self, context, x, s_in, a, s_out, e, out, **_):
        r = _float32(pattern.MatchResult(), a, 3, "einsum block factor")
        if not r:
            return r
        eq = e.producer().attributes.get_string("equation", "")
        perm = _einsum_perm(eq)
        if perm is None:
            return r.fail(f"einsum {eq!r}: expected a per-block product x[b,k,p]·A -> [b,k,q]",
                          e.producer())
        k, p, q = (const_array(a).shape[i] for i in perm)
        if not _shape_is(s_in, [-1, k, p]):
            return r.fail(f"einsum input reshape: expected [-1, {k}, {p}]", s_in)
        if _rows_then(s_out, out.producer()) != [k * q]:
            return r.fail(f"einsum output reshape: expected [-1, {k * q}]", s_out)
        return r

    def rewrite(self, op, x, s_in, a, s_out, e, **_):
        perm = _einsum_perm(e.producer().attributes.get_string("equation", ""))
        arr = np.ascontiguousarray(const_array(a).transpose(perm))
        blocks = op.initializer(ir.tensor(arr), name=f"{a.name}__kpq")
        k, p, _ = arr.shape
        return op.StructuredLinear(_flat(op, x, k * p, f"{a.name}__flat"), blocks,
                                   _domain=CANON)



def _ellipsis_free(equation: str) -> str | None:
    """``equation`` with its ``...`` (leading dims, in the first operand and the output
    only) written as one letter of its own, or None where it has no such ``...``."""
    eq = equation.replace(" ", "")
    ins, _, out = eq.partition("->")
    first, _, second = ins.partition(",")
    if not (first.startswith("...") and out.startswith("...")) or "..." in second:
        return None
    free = next(c for c in "ZYXWVUTS" if c not in eq)
    return eq.replace("...", free)


class BlockDiagEinsumKept(pattern.RewriteRuleClassBase):
    """Replaces ``Reshape(Einsum("...kp,kqp->...kq", Reshape(x, [.., k, p]), A), t)`` with
    ``Reshape(StructuredLinear(Reshape(x, [-1, k·p]), A as [k,p,q]), t)``: the leading dims
    kept ([B, S, k, p]) instead of flattened. A reshape never reorders elements, so x's rows
    of k·p values are the split's (k, p) rows and the einsum's (k, q) rows are the flat
    product's rows, whatever the leading entries of the two targets.

    Matches: ``torch.einsum("...kp,kqp->...kq", x.unflatten(-1, (k, p)), A).flatten(-2)``
    (both exporters).
    """

    def __init__(self, name: str):
        # the split may also feed a Shape (TorchScript reads the leading dims from it): kept
        # for it, a view without compute; the einsum is dropped by the cleanup
        super().__init__(name, remove_nodes=False)

    def pattern(self, op, x, s_in, a, t):
        return op.Reshape(op.Einsum(op.Reshape(x, s_in), a, _outputs=["e"]), t,
                          _outputs=["out"])

    def check(self, context, x, s_in, a, t, e, out, **_):
        r = _float32(pattern.MatchResult(), a, 3, "einsum block factor")
        if not r:
            return r
        eq = e.producer().attributes.get_string("equation", "")
        free = _ellipsis_free(eq)
        perm = _einsum_perm(free) if free is not None else None
        if perm is None:
            return r.fail(f"einsum {eq!r}: expected x[..., k, p]·A -> [..., k, q]", e.producer())
        k, p, _ = (const_array(a).shape[i] for i in perm)
        if _split_tail(s_in) != [k, p]:
            return r.fail(f"einsum input reshape: expected a target ending in [{k}, {p}]", s_in)
        if last_dim(x) != k * p:
            return r.fail(f"einsum input: expected last dim {k * p}, got {x.shape}", x)
        if out.producer().attributes.get_int("allowzero", 0) == 0 and _has_const_zero(t):
            return r.fail("einsum output reshape: a 0 entry copies the einsum's dims", t)
        return r

    def rewrite(self, op, x, s_in, a, t, e, out, **_):
        perm = _einsum_perm(_ellipsis_free(e.producer().attributes.get_string("equation", "")))
        arr = np.ascontiguousarray(const_array(a).transpose(perm))
        blocks = op.initializer(ir.tensor(arr), name=f"{a.name}__kpq")
        k, p, _ = arr.shape
        allowzero = out.producer().attributes.get_int("allowzero", 0)
        flat = op.StructuredLinear(_flat(op, x, k * p, f"{a.name}__flat"), blocks, _domain=CANON)
        return op.Reshape(flat, t, allowzero=allowzero)


def _target_parts(target: ir.Value) -> list[np.ndarray | None] | None:
    """A reshape target as its pieces: one constant, or a Concat's inputs (None where
    computed)."""
    arr = const_array(target)
    if arr is not None:
        return [arr.reshape(-1)]
    pieces = _pieces(target)
    if pieces is None:
        return None
    return [None if const_array(v) is None else const_array(v).reshape(-1) for v in pieces]


def _split_tail(target: ir.Value) -> list[int] | None:
    """The last two entries of a reshape target, where they are constants."""
    parts = _target_parts(target)
    if parts is None:
        return None
    tail: list[int] = []
    for part in reversed(parts):
        if part is None:
            break
        tail = [int(e) for e in part] + tail
    return tail[-2:] if len(tail) >= 2 else None


def _has_const_zero(target: ir.Value) -> bool:
    parts = _target_parts(target)
    return parts is None or any(part is not None and (part == 0).any() for part in parts)



class LeadingDimsOfEinsum(pattern.RewriteRuleClassBase):
    """Replaces ``Slice(Shape(Einsum("...kp,..->...kq", r, A)), 0, e)``, e ≤ -2, with
    ``Slice(Shape(r), 0, e)``: an einsum that keeps the leading dims has its input's.
    TorchScript reads them this way for ``flatten(-2)``, which would keep the einsum alive
    beside its canonical form."""

    def __init__(self, name: str):
        super().__init__(name, remove_nodes=False)

    def pattern(self, op, r, a, starts, ends, axes):
        shape = op.Shape(op.Einsum(r, a, _outputs=["e"]), _outputs=["s"])
        return op.Slice(shape, starts, ends, axes)

    def check(self, context, r, a, starts, ends, axes, e, s, **_):
        res = pattern.MatchResult()
        eq = _ellipsis_free(e.producer().attributes.get_string("equation", ""))
        if eq is None or _einsum_perm(eq) is None:
            return res.fail("einsum: expected x[..., k, p]·A -> [..., k, q]", e.producer())
        node = s.producer()
        if node.attributes.get_int("start", 0) != 0 or "end" in node.attributes:
            return res.fail("Shape with start/end", node)
        st, en, ax = (const_array(v) for v in (starts, ends, axes))
        if st is None or en is None or ax is None or st.reshape(-1).tolist() != [0] \
                or ax.reshape(-1).tolist() != [0] or not -len(eq.split("->")[1]) < int(
                    en.reshape(-1)[0]) <= -2:
            return res.fail("Slice: expected the leading dims [0, e) with -rank < e <= -2", s)
        return res

    def rewrite(self, op, r, a, starts, ends, axes, **_):
        return op.Slice(op.Shape(r), starts, ends, axes)



class LeadingDimsOfReshape(pattern.RewriteRuleClassBase):
    """Replaces ``Slice(Shape(Reshape(h, Concat(d_0, .., d_n))), 0, e)`` with
    ``Concat(d_0, .., d_{e-1})`` where those pieces are computed dims or positive
    constants: a reshape's leading dims are its target's entries (DimOfReshape's reasoning
    for a range). TorchScript reads the leading dims of ``x.view(b, s, k, p)`` this way."""

    def __init__(self, name: str):
        super().__init__(name, remove_nodes=False)

    def pattern(self, op, h, target, starts, ends, axes):
        return op.Slice(op.Shape(op.Reshape(h, target), _outputs=["s"]), starts, ends, axes)

    def check(self, context, h, target, starts, ends, axes, s, **_):
        r = pattern.MatchResult()
        pieces = _leading_pieces(target, starts, ends, axes, s)
        if pieces is None:
            return r.fail("expected a Slice [0, e) of a Concat target's 1-entry pieces", target)
        return r

    def rewrite(self, op, h, target, starts, ends, axes, s, **_):
        pieces = _leading_pieces(target, starts, ends, axes, s)
        return pieces[0] if len(pieces) == 1 else op.Concat(*pieces, axis=0)


def _leading_pieces(target: ir.Value, starts: ir.Value, ends: ir.Value, axes: ir.Value,
                    shape_value: ir.Value) -> list[ir.Value] | None:
    """The Concat inputs giving entries [0, e) of a reshape target, each one entry: a
    computed dim or a positive constant; None where the Slice or target is not such."""
    node, pieces = shape_value.producer(), _pieces(target)
    if node.attributes.get_int("start", 0) != 0 or "end" in node.attributes or pieces is None:
        return None
    st, en, ax = (const_array(v) for v in (starts, ends, axes))
    if st is None or en is None or ax is None or st.reshape(-1).tolist() != [0] \
            or ax.reshape(-1).tolist() != [0]:
        return None
    sizes = [_entries(v) for v in pieces]
    if any(n is None for n in sizes):
        return None
    rank, end = sum(sizes), int(en.reshape(-1)[0])
    end = end + rank if end < 0 else min(end, rank)
    if not 0 < end <= len(sizes) or any(n != 1 for n in sizes[:end]):
        return None
    pieces = pieces[:end]
    if any(const_array(v) is not None and int(const_array(v).reshape(-1)[0]) <= 0
           for v in pieces):
        return None
    return list(pieces)


class MatMulAfterRows(pattern.RewriteRuleClassBase):
    """Replaces ``MatMul(Reshape(h, t), U)`` with ``Reshape(MatMul(h, U), t')``, h a 2-D
    block-diagonal product [N, n] and t ending in n (or -1): the reshape only regroups h's
    rows, the product is row-wise, and t' is t ending in U's width m (other projections
    stay where the model has them: a dense FFN's rules match them as they are).

    Matches: the dense factor of a BlockDense projection after a block product whose
    leading dims were kept (``flatten(-2)`` of [B, S, k, q], then ``U``).
    """

    def pattern(self, op, h, t, u):
        return op.MatMul(op.Reshape(h, t, _outputs=["r"]), u)

    def check(self, context, h, t, u, r, **_):
        res = _float32(pattern.MatchResult(), u, 2, "dense factor U")
        if not res:
            return res
        n = const_array(u).shape[0]
        block = h.producer()
        if block is None or block.op_type != "StructuredLinear" or block.domain != CANON \
                or len(block.inputs) > 2:
            return res.fail("dense factor input: expected a block-diagonal product", h)
        if not is_2d(h) or _width(h) != n:
            return res.fail(f"dense factor input: expected a 2-D projection of width {n}", h)
        parts = _target_parts(t)
        if parts is None or parts[-1] is None or parts[-1].size == 0 \
                or int(parts[-1][-1]) not in (n, -1):
            return res.fail(f"reshape target: expected a constant last entry {n} (or -1)", t)
        if r.producer().attributes.get_int("allowzero", 0) == 0 and _has_const_zero(t):
            return res.fail("reshape target: a 0 entry copies h's dims", t)
        return res

    def rewrite(self, op, h, t, u, r, **_):
        m = const_array(u).shape[1]
        parts = _target_parts(t)
        tail = parts[-1].copy()
        tail[-1] = m
        allowzero = r.producer().attributes.get_int("allowzero", 0)
        if const_array(t) is not None:
            target = op.Constant(value=ir.tensor(tail.astype(np.int64)))
        else:
            target = op.Concat(*_pieces(t)[:-1],
                               op.Constant(value=ir.tensor(tail.astype(np.int64))), axis=0)
        return op.Reshape(op.MatMul(h, u), target, allowzero=allowzero)



class IdentityTranspose(pattern.RewriteRuleClassBase):
    """Replaces ``Transpose(v, perm=[0, 1, .., r-1])`` with v: it moves nothing.

    Matches: dynamo ``optimize=False`` exports of advanced indexing with a multi-dim index
    (``w[r]``, r [B, S]: ``GatherND`` then an identity Transpose), as in an FFF walk that
    keeps the leading dims.
    """

    def pattern(self, op, v):
        return op.Transpose(v, _outputs=["t"])

    def check(self, context, v, t, **_):
        perm = t.producer().attributes.get_ints("perm", None)
        if perm is None or list(perm) != list(range(len(perm))):
            return pattern.MatchResult().fail("Transpose: not the identity permutation", t)
        if t in context.graph_or_function.outputs:
            return pattern.MatchResult().fail("Transpose: its output is a graph output", t)
        return pattern.MatchResult()

    def rewrite(self, op, v, t, **_):
        return v


class MergeTransposes(pattern.RewriteRuleClassBase):
    """Replaces ``Transpose(Transpose(v, p1), p2)`` with one ``Transpose(v, p1∘p2)``
    (dynamo ``optimize=False`` writes BlockShuffle's (2, 0, 1) as two transposes)."""

    def pattern(self, op, v):
        return op.Transpose(op.Transpose(v, _outputs=["t1"]), _outputs=["t2"])

    def check(self, context, v, t1, t2, **_):
        p1 = t1.producer().attributes.get_ints("perm", None)
        p2 = t2.producer().attributes.get_ints("perm", None)
        if p1 is None or p2 is None or len(p1) != len(p2):
            return pattern.MatchResult().fail("transposes without explicit perms", t1)
        return pattern.MatchResult()

    def rewrite(self, op, v, t1, t2, **_):
        p1 = t1.producer().attributes.get_ints("perm")
        p2 = t2.producer().attributes.get_ints("perm")
        return op.Transpose(v, perm=[p1[i] for i in p2])


class ShuffleBmm(pattern.RewriteRuleClassBase):
    """Replaces a BlockShuffle projection (Monarch; the release's ``block_shuffle_bmm``)
    ``Reshape(x, [-1, k, p]) → Transpose(1,0,2) → MatMul(A [k, p, q]) → Transpose(1,0,2) →
    Reshape([-1, r, m]) → Transpose(2,0,1) → MatMul(S [m, r, s]) → Transpose(1,2,0) →
    Reshape(t)`` (t ending in m·s) with ``Reshape(BlockShuffle(Reshape(x, [-1, k·p]), A, S),
    t)``: the (r, m) → (m, r) shuffle between the factors and the (m, s) → (s, m) one after
    them are the op's own (``fffc/ops.py``)."""

    def pattern(self, op, x, s_in, a, grid, s, t):
        h = op.Transpose(op.Reshape(x, s_in), perm=[1, 0, 2])
        h = op.Transpose(op.MatMul(h, a), perm=[1, 0, 2])
        g = op.Transpose(op.Reshape(h, grid, _outputs=["regrouped"]), perm=[2, 0, 1])
        return op.Reshape(op.Transpose(op.MatMul(g, s), perm=[1, 2, 0]), t, _outputs=["out"])

    def check(self, context, x, s_in, a, grid, s, t, out, regrouped, **_):
        r = _float32(pattern.MatchResult(), a, 3, "BlockShuffle first factor")
        r = r and _float32(r, s, 3, "BlockShuffle second factor")
        if not r:
            return r
        return _shuffle_shapes(r, const_array(a).shape, const_array(s).shape, s_in, grid,
                               regrouped.producer(), t, s)

    def rewrite(self, op, x, s_in, a, grid, s, t, out, **_):
        k, p, _ = const_array(a).shape
        allowzero = out.producer().attributes.get_int("allowzero", 0)
        flat = _flat(op, x, k * p, f"{a.name}__flat")
        return op.Reshape(op.BlockShuffle(flat, a, s, _domain=CANON), t, allowzero=allowzero)


def _shuffle_shapes(r: pattern.MatchResult, kpq: tuple, mrs: tuple, s_in: ir.Value,
                    grid: ir.Value, regroup: ir.Node, t: ir.Value,
                    second: ir.Value) -> pattern.MatchResult:
    """A BlockShuffle's reshapes agree with its factors A [k, p, q] and S [m, r, s]: input
    [-1, k, p], the k·q outputs regrouped as a [-1, r, m] grid, output ending in m·s."""
    (k, p, q), (m, rows, cols) = kpq, mrs
    if not _shape_is(s_in, [-1, k, p]):
        return r.fail(f"BlockShuffle input reshape: expected [-1, {k}, {p}]", s_in)
    if k * q != m * rows:
        return r.fail(f"BlockShuffle: {k}x{q} outputs do not regroup into {m}x{rows}", second)
    if _rows_then(grid, regroup) != [rows, m]:
        return r.fail(f"BlockShuffle grid reshape: expected [-1, {rows}, {m}]", grid)
    if _last_entry(t) != m * cols:
        return r.fail(f"BlockShuffle output reshape: expected last entry {m * cols}", t)
    return r


def _shuffle_einsum_perm(equation: str) -> tuple[int, int, int] | None:
    """The transpose that brings the second einsum's weight to S [m, r, s] for
    ``h[n,r,m] · W -> [n,s,m]`` (the (r, m) grid through block m, written in (s, m) order);
    None for any other contraction."""
    parts = _einsum_parts(equation)
    if parts is None:
        return None
    hs, ws, out = parts
    n, r, m = hs
    s = (set(ws) - set(hs)).pop() if len(set(ws) - set(hs)) == 1 else None
    if s is None or n in ws or out != n + s + m or sorted(ws) != sorted(m + r + s):
        return None
    return (ws.index(m), ws.index(r), ws.index(s))


class ShuffleEinsum(pattern.RewriteRuleClassBase):
    """Replaces a BlockShuffle projection written with ``torch.einsum``: ``Reshape(x, [-1,
    k, p]) → Einsum(x_nkp, A → [n,k,q]) → Reshape([-1, r, m]) → Einsum(h_nrm, W → [n,s,m])
    → Reshape(t)`` (t ending in m·s) with ``Reshape(BlockShuffle(Reshape(x, [-1, k·p]),
    A as [k,p,q], W as S [m,r,s]), t)``: the same function as ShuffleBmm's."""

    def pattern(self, op, x, s_in, a, grid, w, t):
        h = op.Einsum(op.Reshape(x, s_in), a, _outputs=["e1"])
        g = op.Einsum(op.Reshape(h, grid, _outputs=["regrouped"]), w, _outputs=["e2"])
        return op.Reshape(g, t, _outputs=["out"])

    def check(self, context, x, s_in, a, grid, w, t, e1, e2, out, regrouped, **_):
        r = _float32(pattern.MatchResult(), a, 3, "BlockShuffle first factor")
        r = r and _float32(r, w, 3, "BlockShuffle second factor")
        if not r:
            return r
        eq1 = e1.producer().attributes.get_string("equation", "")
        eq2 = e2.producer().attributes.get_string("equation", "")
        p1, p2 = _einsum_perm(eq1), _shuffle_einsum_perm(eq2)
        if p1 is None or p2 is None:
            return r.fail(f"einsums {eq1!r}, {eq2!r}: expected x[n,k,p]·A -> [n,k,q] then "
                          "h[n,r,m]·W -> [n,s,m]", e2.producer())
        kpq = tuple(const_array(a).shape[i] for i in p1)
        mrs = tuple(const_array(w).shape[i] for i in p2)
        return _shuffle_shapes(r, kpq, mrs, s_in, grid, regrouped.producer(), t, w)

    def rewrite(self, op, x, s_in, a, grid, w, t, e1, e2, out, **_):
        p1 = _einsum_perm(e1.producer().attributes.get_string("equation", ""))
        p2 = _shuffle_einsum_perm(e2.producer().attributes.get_string("equation", ""))
        first = np.ascontiguousarray(const_array(a).transpose(p1))
        second = np.ascontiguousarray(const_array(w).transpose(p2))
        k, p, _ = first.shape
        allowzero = out.producer().attributes.get_int("allowzero", 0)
        flat = _flat(op, x, k * p, f"{a.name}__flat")
        blocks = op.initializer(ir.tensor(first), name=f"{a.name}__kpq")
        shuffle = op.initializer(ir.tensor(second), name=f"{w.name}__mrs")
        return op.Reshape(op.BlockShuffle(flat, blocks, shuffle, _domain=CANON), t,
                          allowzero=allowzero)


def _last_entry(target: ir.Value) -> int | None:
    """The last entry of a reshape target: a constant, or a Concat ending in one."""
    arr = const_array(target)
    if arr is not None:
        return int(arr.reshape(-1)[-1])
    p = target.producer()
    if p is not None and p.op_type == "Concat":
        tail = const_array(p.inputs[-1])
        return int(tail.reshape(-1)[-1]) if tail is not None and tail.size else None
    return None


class BlockThenDense(pattern.RewriteRuleClassBase):
    """Replaces ``MatMul(StructuredLinear(x, A), U)`` with ``StructuredLinear(x, A, U)``
    (BlockDense: block-diagonal, then the dense factor)."""

    def pattern(self, op, x, a, u):
        return op.MatMul(op.StructuredLinear(x, a, _domain=CANON), u)

    def check(self, context, x, a, u, **_):
        r = _float32(pattern.MatchResult(), u, 2, "dense factor U")
        if not r:
            return r
        k, _, q = const_array(a).shape
        if const_array(u).shape[0] != k * q:
            return r.fail(f"dense factor U rows: expected {k * q}, got "
                          f"{list(const_array(u).shape)}", u)
        return r

    def rewrite(self, op, x, a, u, **_):
        return op.StructuredLinear(x, a, u, _domain=CANON)


def _width(h: ir.Value) -> int | None:
    """The static last dim of a projection output (bias Add, StructuredLinear, MatMul)."""
    if h.shape is not None and h.shape.rank() and isinstance(h.shape[-1], int):
        return h.shape[-1]
    node = h.producer()
    if node is None:
        return None
    if node.op_type == "Add" and const_array(node.inputs[1]) is not None:
        return int(const_array(node.inputs[1]).shape[-1])
    if node.op_type == "StructuredLinear" and node.domain == CANON:
        a = const_array(node.inputs[1])
        u = const_array(node.inputs[2]) if len(node.inputs) > 2 else None
        return int(u.shape[1] if u is not None else a.shape[0] * a.shape[2])
    if node.op_type == "MatMul" and const_array(node.inputs[1]) is not None:
        return int(const_array(node.inputs[1]).shape[-1])
    if node.op_type == "BlockShuffle" and node.domain == CANON:
        m, _, cols = const_array(node.inputs[2]).shape
        return int(m * cols)
    return None


def _takes_width(node: ir.Node, width: int) -> bool:
    """A projection whose constant weight reads rows of exactly ``width`` values."""
    w = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if w is None:
        return False
    if node.op_type == "MatMul" and node.domain == "" and w.ndim == 2:
        return w.shape[0] == width
    if node.op_type == "StructuredLinear" and node.domain == CANON:
        return w.shape[0] * w.shape[1] == width
    return False


def is_2d(value: ir.Value | None, depth: int = 6) -> bool:
    """True when ``value`` is known to be rank 2: from its shape, a 2-entry Reshape target,
    or an op that keeps its first input's rank (bias Add, MatMul, StructuredLinear)."""
    if value is None or depth == 0:
        return False
    if value.shape is not None and value.shape.rank() == 2:
        return True
    node = value.producer()
    if node is None:
        return False
    if node.op_type == "Reshape":
        target = const_array(node.inputs[1])
        return target is not None and target.size == 2
    same_rows = ((node.op_type in ("StructuredLinear", "BlockShuffle", "Gelu", "Silu")
                  and node.domain == CANON) or (node.op_type == "Relu" and node.domain == ""))
    if same_rows:
        return is_2d(node.inputs[0], depth - 1)
    if node.op_type in ("Add", "MatMul") and node.domain == "":
        other = const_array(node.inputs[1])
        ok = other is not None and other.ndim <= (2 if node.op_type == "MatMul" else 1)
        return ok and is_2d(node.inputs[0], depth - 1)
    return False


class BiasBeforeReshape(pattern.RewriteRuleClassBase):
    """Replaces ``Add(Reshape(h, s), b)`` with ``Reshape(Add(h, b), s)`` where b is [n], h is
    a 2-D projection output of width n and s's last entry is the constant n: both add b to
    every row of n values. Matches: fc1 of dynamo-exported structured MLPs, whose bias Add
    comes after the reshape that restores the batch dims."""

    def pattern(self, op, h, s, b):
        return op.Add(op.Reshape(h, s, _outputs=["r"]), b)

    def check(self, context, h, s, b, r, **_):
        res = pattern.MatchResult()
        bias = const_array(b)
        if bias is None or bias.ndim != 1 or _width(h) != bias.shape[0] or not is_2d(h):
            return res.fail("bias: expected [n] after a 2-D projection of width n", b)
        target = const_array(s)
        last = None
        if target is not None:
            last = int(target.reshape(-1)[-1])
        elif s.producer() is not None and s.producer().op_type == "Concat":
            tail = const_array(s.producer().inputs[-1])
            last = int(tail.reshape(-1)[-1]) if tail is not None and tail.size else None
        if last != bias.shape[0]:
            return res.fail(f"reshape target: expected a constant last entry {bias.shape[0]}", s)
        return res

    def rewrite(self, op, h, s, b, r, **_):
        allowzero = r.producer().attributes.get_int("allowzero", 0)
        return op.Reshape(op.Add(h, b), s, allowzero=allowzero)


class ActReshapeRoundTrip(pattern.RewriteRuleClassBase):
    """Replaces ``Reshape(act(Reshape(h, s)), [-1, n])`` with ``act(h)`` where h is 2-D
    [N, n]: the second reshape restores h's layout and act is elementwise.

    Matches: structured MLPs whose fc1 restores the batch dims and fc2 flattens them again.
    """

    def __init__(self, name: str, op_type: str, domain: str):
        # the activation's output may also feed Shape nodes (TorchScript's reshape targets):
        # keep the old nodes for them; unused ones are dropped by the cleanup
        super().__init__(name, remove_nodes=False)
        self._op_type, self._domain = op_type, domain

    def pattern(self, op, h, s, t):
        a = getattr(op, self._op_type)(op.Reshape(h, s), _domain=self._domain, _outputs=["act"])
        return op.Reshape(a, t)

    def check(self, context, h, s, t, act, **_):
        r = pattern.MatchResult()
        width = _width(h)
        if width is None or not is_2d(h):
            return r.fail("reshape round trip: the activation's input is not a known 2-D "
                          "projection output", h)
        target = const_array(t)
        if target is not None:
            if target.reshape(-1).tolist() != [-1, width]:
                return r.fail(f"second reshape: expected [-1, {width}]", t)
            return r
        # a computed target [-1, <a dim>] (TorchScript's x.reshape(-1, x.shape[-1])): valid
        # wherever the model runs, because every consumer needs rows of ``width``
        concat = t.producer()
        if (concat is None or concat.op_type != "Concat" or len(concat.inputs) != 2
                or const_array(concat.inputs[0]) is None
                or const_array(concat.inputs[0]).reshape(-1).tolist() != [-1]):
            return r.fail("second reshape: expected a target [-1, n]", t)
        out = t.uses()[0][0].outputs[0] if t.uses() else None
        if out is None or not out.uses() or not all(_takes_width(u, width) for u, _ in out.uses()):
            return r.fail(f"second reshape: not every consumer takes rows of {width}", t)
        return r

    def rewrite(self, op, h, s, t, act, **_):
        attrs = {k: v.value for k, v in act.producer().attributes.items()}
        return getattr(op, self._op_type)(h, _domain=self._domain, **attrs)


class ShapeOfElementwise(pattern.RewriteRuleClassBase):
    """Replaces ``Shape(act(v))`` with ``Shape(v)`` for an elementwise activation, so that
    a TorchScript export's shape plumbing does not keep the activation alive outside the FFN."""

    def __init__(self, name: str, op_type: str, domain: str):
        super().__init__(name, remove_nodes=False)
        self._op_type, self._domain = op_type, domain

    def pattern(self, op, v):
        return op.Shape(getattr(op, self._op_type)(v, _domain=self._domain), _outputs=["s"])

    def check(self, context, v, s, **_):
        node = s.producer()
        if node.attributes.get_int("start", 0) != 0 or "end" in node.attributes:
            return pattern.MatchResult().fail("Shape with start/end", node)
        return pattern.MatchResult()

    def rewrite(self, op, v, **_):
        return op.Shape(v)


class DimOfReshape(pattern.RewriteRuleClassBase):
    """Replaces ``Gather(Shape(Reshape(h, Concat(.., Unsqueeze(d_i), ..))), i)`` with
    ``d_i``: dim i of a reshape is its target's entry i (a tensor's dim is never -1; an
    empty dim 0 would copy h's dim, a case of empty tensors only). TorchScript exports
    read the batch dims of an MLP's hidden tensor this way to restore its output shape."""

    def __init__(self, name: str):
        super().__init__(name, remove_nodes=False)

    def pattern(self, op, h, target, i):
        return op.Gather(op.Shape(op.Reshape(h, target)), i, _outputs=["g"])

    def check(self, context, h, target, i, g, **_):
        r = pattern.MatchResult()
        idx = const_array(i)
        pieces = _pieces(target)
        if idx is None or idx.ndim != 0 or pieces is None:
            return r.fail("expected a constant scalar index into a Concat target", target)
        if g.producer().attributes.get_int("axis", 0) != 0 or not 0 <= int(idx) < len(pieces):
            return r.fail("index out of the target's entries", i)
        if any(_entries(v) != 1 for v in pieces[:int(idx)]):
            return r.fail("target entries before the index are not one dim each", target)
        part = pieces[int(idx)].producer()
        if part is None or part.op_type != "Unsqueeze":
            return r.fail("target entry is not an Unsqueeze of a scalar dim", target)
        return r

    def rewrite(self, op, h, target, i, **_):
        return op.Identity(_pieces(target)[int(const_array(i))].producer().inputs[0])


rules = pattern.RewriteRuleSet([
    ShapeOfElementwise.rule("ShapeOfGelu", op_type="Gelu", domain=CANON),
    ShapeOfElementwise.rule("ShapeOfSilu", op_type="Silu", domain=CANON),
    ShapeOfElementwise.rule("ShapeOfRelu", op_type="Relu", domain=""),
    DimOfReshape.rule("DimOfReshape"),
    *BiasBeforeReshape.rule("BiasBeforeReshape").commute(),
    IdentityTranspose.rule("IdentityTranspose"),
    MergeTransposes.rule("MergeTransposes"),
    ShuffleBmm.rule("ShuffleBmm"),
    ShuffleEinsum.rule("ShuffleEinsum"),
    BlockDiagBmm.rule("BlockDiagBmm"),
    BlockDiagEinsum.rule("BlockDiagEinsum"),
    LeadingDimsOfEinsum.rule("LeadingDimsOfEinsum"),
    LeadingDimsOfReshape.rule("LeadingDimsOfReshape"),
    BlockDiagEinsumKept.rule("BlockDiagEinsumKept"),
    MatMulAfterRows.rule("MatMulAfterRows"),
    BlockThenDense.rule("BlockThenDense"),
    LowRank.rule("LowRank"),
    ActReshapeRoundTrip.rule("ReshapeRoundTrip_gelu", op_type="Gelu", domain=CANON),
    ActReshapeRoundTrip.rule("ReshapeRoundTrip_silu", op_type="Silu", domain=CANON),
    ActReshapeRoundTrip.rule("ReshapeRoundTrip_relu", op_type="Relu", domain=""),
])
