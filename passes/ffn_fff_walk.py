"""Finds FastFeedForward layers written as the conditional walk (UltraFastBERT's hard CMM).

An unrolled export of ``fffc.torch.FastFeedForward.forward_walk`` (and of any code doing the
same per tree and level) is, after canonicalization, a sum of K·(D+1) terms::

    z_t = ReduceSum(Mul(x, Gather(W_in, i_t)), -1) + Gather(b_in, i_t)      W_in [K·n, H]
    y   = zeros + Σ_t Unsqueeze(Gelu(z_t), -1) * Gather(W_out, i_t)         W_out [K·n, H_out]

(``GatherND(W, Unsqueeze(i_t, -1))`` from the dynamo exporter), where each index i_t is
integer arithmetic (``Add``/``Sub``/``Mul``, or ``Where`` on a branch) on a zero tensor and
on the branch bits ``Cast(Greater(z_s, 0))`` of earlier terms. Rather than matching one exporter's spelling of ``2j + 1 + [z > 0]`` (and of
the tree offsets k·n), the index arithmetic is *evaluated*: every term's index is computed
for all 2^D branch patterns of its tree and compared with the heap walk, so a match is exact
for every path, not only for the paths some probe inputs take. The numeric check of the
compile step then compares the whole region with the reference walk as for every site.
A sum of any number of terms is no fixed pattern graph, so the rule is a ``RegionRule``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from ._common import CANON, const_array
from ._region import MatchFailure, RegionRule, RegionRuleSet
from .ffn_fff import TIE_BREAK_OF, Tree, fff_marker

_INT_OPS = ("Add", "Sub", "Mul")


@dataclass
class _Term:
    z: ir.Value  # the node's pre-activation (bias included)
    gelu: ir.Node
    index: ir.Value  # the global node index i_t (rank of the tokens)


def _producer(value: ir.Value | None, *ops: str) -> ir.Node:
    node = value.producer() if value is not None else None
    if node is None or node.op_type not in ops or node.domain not in ("", CANON):
        got = "an input" if node is None else node.op_type
        raise MatchFailure(f"expected {'/'.join(ops)}, got {got}")
    return node


def _made_by(value: ir.Value | None, *ops: str) -> bool:
    p = value.producer() if value is not None else None
    return p is not None and p.op_type in ops and p.domain == ""


def _ordered(node: ir.Node, first: Callable[[ir.Value], bool]) -> tuple[ir.Value, ir.Value] | None:
    """The two operands of a commutative node, the one satisfying ``first`` first."""
    a, b = node.inputs
    return (a, b) if first(a) else (b, a) if first(b) else None


def _axes(node: ir.Node) -> list[int] | None:
    """The axes of a ReduceSum/Unsqueeze (input from opset 13, attribute before)."""
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        arr = const_array(node.inputs[1])
        return None if arr is None else [int(a) for a in arr.reshape(-1)]
    attr = node.attributes.get("axes")
    return None if attr is None else [int(a) for a in attr.value]


def _last_axis(node: ir.Node, value: ir.Value) -> bool:
    """``axes`` is the single last axis of ``value`` (-1, or rank - 1 when the rank is known)."""
    axes = _axes(node)
    if axes is None or len(axes) != 1:
        return False
    rank = len(value.shape) if value.shape is not None else None
    return axes[0] == -1 or (rank is not None and axes[0] == rank - 1)


def _gathered(value: ir.Value) -> tuple[ir.Value, ir.Value]:
    """(table, index) of a row gather: ``Gather(T, i)`` on axis 0 or ``GatherND(T, i[..., None])``."""
    node = _producer(value, "Gather", "GatherND")
    table = node.inputs[0]
    if const_array(table) is None:
        raise MatchFailure(f"{node.op_type} {node.name!r} gathers from a computed tensor")
    if node.op_type == "Gather":
        if node.attributes.get_int("axis", 0) != 0:
            raise MatchFailure(f"Gather {node.name!r} is not a row gather (axis != 0)")
        return table, node.inputs[1]
    if node.attributes.get_int("batch_dims", 0) != 0:
        raise MatchFailure(f"GatherND {node.name!r} has batch_dims")
    unsq = _producer(node.inputs[1], "Unsqueeze")
    if not _last_axis(unsq, node.inputs[1]):
        raise MatchFailure(f"GatherND {node.name!r}: index not unsqueezed on its last axis")
    return table, unsq.inputs[0]


def _term(value: ir.Value) -> tuple[_Term, ir.Value, ir.Value, ir.Value, ir.Value]:
    """One level of one tree: (term, x, W_in, b_in, W_out) of
    ``Unsqueeze(Gelu(z), -1) * Gather(W_out, i)``; raises Fail."""
    pair = _ordered(_producer(value, "Mul"), lambda v: _made_by(v, "Unsqueeze"))
    if pair is None:
        raise MatchFailure("expected Unsqueeze(Gelu(z)) * Gather(W_out, i)")
    unsq, rows = pair[0].producer(), pair[1]
    if not _last_axis(unsq, unsq.outputs[0]):
        raise MatchFailure("the activation is not unsqueezed on its last axis")
    gelu = _producer(unsq.inputs[0], "Gelu")
    if gelu.domain != CANON or gelu.attributes.get_string("approximate", "none") != "none":
        raise MatchFailure("FFF uses the exact erf GELU")
    w_out, index = _gathered(rows)
    z = gelu.inputs[0]
    add = _producer(z, "Add")
    pair = _ordered(add, lambda v: _made_by(v, "ReduceSum"))
    if pair is None:
        raise MatchFailure("expected ReduceSum(x * W_in[i]) + b_in[i]")
    red, bias_v = pair[0].producer(), pair[1]
    if red.attributes.get_int("keepdims", 1) != 0 or not _last_axis(red, red.inputs[0]):
        raise MatchFailure("the dot product must reduce the last axis without keeping it")
    b_in, b_index = _gathered(bias_v)
    dot = _producer(red.inputs[0], "Mul")
    pair = _ordered(dot, lambda v: _made_by(v, "Gather", "GatherND"))
    if pair is None:
        raise MatchFailure("expected x * Gather(W_in, i) in the dot product")
    w_in, w_index = _gathered(pair[0])
    xv = pair[1]
    if not (index is b_index is w_index):
        raise MatchFailure("W_in, b_in and W_out rows are gathered with different index tensors")
    return _Term(z, gelu, index), xv, w_in, b_in, w_out


def _same_constant(a: ir.Value, b: ir.Value) -> bool:
    """The same weights (the dynamo exporter may give each level its own copy of a bias)."""
    return a is b or np.array_equal(const_array(a), const_array(b))


def _is_zeros(value: ir.Value) -> bool:
    p = value.producer()
    arr = const_array(value)
    if arr is not None:
        return not arr.any()
    if p is not None and p.op_type == "ConstantOfShape":
        t = p.attributes.get("value")
        return t is None or not np.asarray(t.value.numpy()).any()
    if p is not None and p.op_type == "Expand":
        c = const_array(p.inputs[0])
        return c is not None and not c.any()
    return False


def _terms(out: ir.Node) -> list[ir.Value]:
    """The summands of the Add tree ending at ``out`` (zero tensors dropped)."""
    summands, stack = [], [out]
    while stack:
        add = stack.pop()
        for v in add.inputs[::-1]:
            p = v.producer() if v is not None else None
            if p is not None and p.op_type == "Add" and p.domain == "" and not _is_term(v):
                stack.append(p)
            elif not _is_zeros(v):
                summands.append(v)
    return summands


def _is_term(value: ir.Value) -> bool:
    try:
        _term(value)
        return True
    except MatchFailure:
        return False


class _Index:
    """Evaluates the integer index arithmetic with the branch bits as inputs.

    Values are arrays over branch patterns (axis 0); zero tensors sized by the tokens become
    arrays of the pattern count; ``Cast(Greater(z_t, 0))`` (or the bare comparison, as a
    ``Where``'s condition) is pattern bit ``bits[t]``.
    """

    def __init__(self, terms: list[_Term]):
        self.branch_of = {id(t.z): i for i, t in enumerate(terms)}
        self.compares: set[str] = set()

    def _branch(self, node: ir.Node) -> int | None:
        """The term whose bit a ``Cast(Greater(z, 0))`` (or the bare comparison) is, else
        None."""
        cmp = node.inputs[0].producer() if node.op_type == "Cast" else node
        if cmp is None or cmp.op_type not in ("Greater", "GreaterOrEqual"):
            return None
        zero = const_array(cmp.inputs[1])
        term = self.branch_of.get(id(cmp.inputs[0]))
        if term is None or zero is None or zero.size != 1 or zero.item() != 0:
            raise MatchFailure(f"{cmp.op_type} {cmp.name!r}: the branch must compare a node's "
                               "pre-activation with 0")
        self.compares.add(cmp.op_type)
        return term

    def deps(self, value: ir.Value, memo: dict[int, frozenset[int]]) -> frozenset[int]:
        """The terms whose branch bits ``value`` depends on."""
        if id(value) in memo:
            return memo[id(value)]
        node = value.producer()
        out: frozenset[int] = frozenset()
        if node is not None and const_array(value) is None:
            b = self._branch(node)
            if b is not None:
                out = frozenset([b])
            elif node.op_type in (*_INT_OPS, "Cast", "Where"):
                for v in node.inputs:
                    out |= self.deps(v, memo)
            elif not _is_zeros(value):
                raise MatchFailure(f"the walk index is computed by {node.op_type} {node.name!r}, "
                                   "not by integer arithmetic on the branch bits")
        memo[id(value)] = out
        return out

    def eval(self, value: ir.Value, bits: dict[int, np.ndarray], patterns: int,
             memo: dict[int, np.ndarray]) -> np.ndarray:
        if id(value) in memo:
            return memo[id(value)]
        arr = const_array(value)
        node = value.producer()
        if arr is not None:
            out = arr.astype(np.int64)
        elif _is_zeros(value):
            out = np.zeros(patterns, np.int64)
        elif (b := self._branch(node)) is not None:
            out = bits.get(b, np.zeros(patterns, np.int64))
        elif node.op_type == "Cast":
            out = self.eval(node.inputs[0], bits, patterns, memo)
        elif node.op_type == "Where":
            bit, a, c = (self.eval(v, bits, patterns, memo) for v in node.inputs)
            out = np.where(bit != 0, a, c)
        else:
            a, c = (self.eval(v, bits, patterns, memo) for v in node.inputs)
            out = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}[node.op_type](a, c)
        memo[id(value)] = out
        return out


def _trees(terms: list[_Term], index: _Index) -> list[list[int]]:
    """The terms grouped into trees, each a chain root → leaf level (by the bits they use)."""
    memo: dict[int, frozenset[int]] = {}
    deps = [index.deps(t.index, memo) for t in terms]
    child: dict[int, int] = {}
    roots = []
    for t, d in enumerate(deps):
        if not d:
            roots.append(t)
            continue
        parents = [p for p in d if deps[p] == d - {p}]
        if len(parents) != 1 or parents[0] in child:
            raise MatchFailure("the node indices do not form root-to-leaf chains (one per tree)")
        child[parents[0]] = t
    chains = []
    for r in roots:
        chain = [r]
        while chain[-1] in child:
            chain.append(child[chain[-1]])
        chains.append(chain)
    if sum(map(len, chains)) != len(terms) or len({len(c) for c in chains}) != 1:
        raise MatchFailure("the trees do not all have the same depth")
    return chains


def _check_indices(chains: list[list[int]], terms: list[_Term], index: _Index, n: int) -> None:
    """Every term's index equals k·n + j_ℓ, j_0 = 0, j_ℓ+1 = 2j_ℓ + 1 + bit_ℓ, for all 2^D
    branch patterns of its tree (exhaustive, so exact)."""
    depth = len(chains[0]) - 1
    patterns = 2 ** depth
    p = np.arange(patterns)
    offsets = set()
    for chain in chains:
        bits = {t: (p >> lvl) & 1 for lvl, t in enumerate(chain[:-1])}
        memo: dict[int, np.ndarray] = {}
        j = np.zeros(patterns, np.int64)
        offset = None
        for lvl, t in enumerate(chain):
            got = np.broadcast_to(index.eval(terms[t].index, bits, patterns, memo), (patterns,))
            if offset is None:
                offset = int(got[0])
                if offset % n or offset in offsets or not 0 <= offset < n * len(chains):
                    raise MatchFailure(f"a tree's root index {offset} is not k·{n} for a new "
                                       "tree k")
                offsets.add(offset)
            if not np.array_equal(got, offset + j):
                raise MatchFailure(f"the node index at level {lvl} is not 2j + 1 + [z > 0] of the "
                                   "level above")
            j = 2 * j + 1 + bits.get(t, 0)


def _ends_sum(node: ir.Node) -> bool:
    return node.op_type == "Add" and node.domain == "" and any(
        _looks_like_term(v) for v in node.inputs)


def _looks_like_term(value: ir.Value | None) -> bool:
    """Cheap pre-check: ``Mul(Unsqueeze(Gelu), Gather/GatherND(const))`` (a gather of a
    computed tensor, e.g. the sizes of a decoder's attention-mask arithmetic, is no term)."""
    p = value.producer() if value is not None else None
    if p is None or p.op_type != "Mul":
        return False
    producers = [v.producer() if v is not None else None for v in p.inputs]
    unsqueeze = any(q is not None and q.op_type == "Unsqueeze" for q in producers)
    return unsqueeze and any(q is not None and q.op_type in ("Gather", "GatherND")
                             and const_array(q.inputs[0]) is not None for q in producers)


class WalkFFF(RegionRule):
    """Replaces ``Σ_t Unsqueeze(Gelu(ReduceSum(x * W_in[i_t]) + b_in[i_t])) * W_out[i_t]``,
    each i_t the heap walk of its tree (checked for every branch pattern), with an ``fff``
    marker.

    Matches: fffc.torch.FastFeedForward(eval_form="walk") and hand-written hard walks from
    the TorchScript (opset 17, 20; Gather) and dynamo (opset 18, 20; GatherND) exporters.
    """

    tag = "fff"

    def takes(self, root: ir.Node) -> bool:
        """An Add that ends a sum of walk terms (no further Add of terms uses it)."""
        return _ends_sum(root) and not any(_ends_sum(u.node) for u in root.outputs[0].uses())

    def read(self, out: ir.Node) -> Tree:
        """What the walk ending at the Add ``out`` is."""
        summands = _terms(out)
        found = [_term(v) for v in summands]
        terms = [f[0] for f in found]
        x, w_in, b_in, w_out = found[0][1:]
        for _, x_t, *weights in found:
            if x_t is not x or not all(map(_same_constant, weights, (w_in, b_in, w_out))):
                raise MatchFailure("the levels do not share one input and one set of weights")
        w_in_arr, b_arr, w_out_arr = const_array(w_in), const_array(b_in), const_array(w_out)
        if w_in_arr.ndim != 2 or b_arr.ndim != 1 or w_out_arr.ndim != 2 \
                or not w_in_arr.shape[0] == b_arr.shape[0] == w_out_arr.shape[0]:
            raise MatchFailure("W_in [R, H], b_in [R], W_out [R, H_out] do not agree")
        index = _Index(terms)
        chains = _trees(terms, index)
        depth, trees = len(chains[0]) - 1, len(chains)
        n = 2 ** (depth + 1) - 1
        if depth < 1 or trees * n != w_in_arr.shape[0]:
            raise MatchFailure(f"{trees} trees of depth {depth} need {trees * n} node rows, "
                               f"the weights have {w_in_arr.shape[0]}")
        _check_indices(chains, terms, index, n)
        if len(index.compares) != 1:
            raise MatchFailure("tie-break: some levels go right on z > 0, others on z >= 0")
        return Tree(x, w_in, b_in, w_out, trees, depth, TIE_BREAK_OF[index.compares.pop()],
                    rows=True)

    def rewrite(self, graph: ir.Graph, root: ir.Node, found: Tree,
                region: list[ir.Node]) -> ir.Node:
        return fff_marker(graph, found, region, self.name)


walk_fff_rule = WalkFFF("fff_walk")
rules = RegionRuleSet([walk_fff_rule], title="FastFeedForward walk")
