"""Structured FFN: ``proj1 (+b1) → act → proj2 (+b2)`` with at least one structured projection.

Runs after ``canonical_structured``, so every structured projection is one
``StructuredLinear(x, A [k, p, q] [, U])`` node; the other projection may be a plain
``MatMul(x, W)`` (stored as k = 1 without U). The marker's inputs are the op's:
``X, A1, U1, B1, A2, U2, B2``.
"""

from __future__ import annotations

import itertools
from enum import Enum

import onnx_ir as ir
from onnxscript.rewriter import pattern

from fffc.contract.kinds import SiteKind
from fffc.contract.ops import STRUCTURED_FFN
from fffc.contract.sites import Site

from ._common import CANON, RuleSequence, const_array, node_names
from ._ffn_common import act_name, apply_act, as_vector, check_bias, in_main_graph
from .markers import StructuredMarker, marker_inputs


class Form(str, Enum):
    """How one projection of a structured FFN reads after canonicalization."""

    LOWRANK_OR_BLOCKDENSE = "lowrank_or_blockdense"  # StructuredLinear(x, A, U)
    BLOCKDIAG = "blockdiag"  # StructuredLinear(x, A)
    DENSE = "dense"  # MatMul(x, W)
    SHUFFLE = "blockshuffle"  # BlockShuffle(x, A, S): pairs with itself or a dense projection

    def __str__(self) -> str:
        return self.value


FORMS = (Form.LOWRANK_OR_BLOCKDENSE, Form.BLOCKDIAG, Form.DENSE)
COMBOS = [*((a, b) for a, b in itertools.product(FORMS, FORMS)
            if (a, b) != (Form.DENSE, Form.DENSE)),  # (dense, dense) is ffn_dense's
          (Form.SHUFFLE, Form.SHUFFLE), (Form.SHUFFLE, Form.DENSE), (Form.DENSE, Form.SHUFFLE)]


def _project(op, form: Form, x, a, u, name: str):
    if form is Form.SHUFFLE:  # u binds the second factor S here
        return op.BlockShuffle(x, a, u, _domain=CANON, _outputs=[name])
    if form is Form.DENSE:
        return op.MatMul(x, a, _outputs=[name])
    if form is Form.BLOCKDIAG:
        return op.StructuredLinear(x, a, _domain=CANON, _outputs=[name])
    return op.StructuredLinear(x, a, u, _domain=CANON, _outputs=[name])


def _widths(form: Form, a: ir.Value, u: ir.Value | None) -> tuple[int, int]:
    """(input width, output width) of one projection."""
    arr = const_array(a)
    if form is Form.DENSE:
        return arr.shape[0], arr.shape[1]
    k, p, q = arr.shape
    if form is Form.SHUFFLE:
        m, _, cols = const_array(u).shape
        return k * p, m * cols
    return k * p, (const_array(u).shape[1] if form is not Form.BLOCKDIAG else k * q)


def describe(a: ir.Value | None, u: ir.Value | None, s: ir.Value | None = None) -> str:
    """LowRank / BlockDense / BlockDiagonal / BlockShuffle / Dense, from the op's A, U, S."""
    if s is not None:
        return "BlockShuffle"
    k = const_array(a).shape[0]
    if u is None:
        return "BlockDiagonal" if k > 1 else "Dense"
    return "BlockDense" if k > 1 else "LowRank"


def site(marker: StructuredMarker) -> Site:
    """The Site of a structured marker: widths and each projection's form."""
    v = marker.inputs
    arrays = {n: const_array(v[n]) if v[n] is not None else None
              for n in ("A1", "U1", "A2", "U2", "S1", "S2")}
    (k1, p1, q1), (k2, _, q2) = arrays["A1"].shape, arrays["A2"].shape

    def width(k: int, q: int, u, sh) -> int:
        return u.shape[1] if u is not None else (sh.shape[0] * sh.shape[2] if sh is not None
                                                 else k * q)

    d_ff = width(k1, q1, arrays["U1"], arrays["S1"])
    d_out = width(k2, q2, arrays["U2"], arrays["S2"])
    params = sum(a.size for a in arrays.values() if a is not None)
    structure = {
        "first": describe(v["A1"], v["U1"], v["S1"]),
        "second": describe(v["A2"], v["U2"], v["S2"]),
        "k1": k1, "r1": k1 * q1, "u1": v["U1"] is not None, "k2": k2, "r2": k2 * q2,
        "u2": v["U2"] is not None, "params": int(params),
        "params_fraction": round(params / (k1 * p1 * d_ff + d_ff * d_out), 4),
    }
    for i in (1, 2):
        sh = arrays[f"S{i}"]
        if sh is not None:
            structure[f"m{i}"], structure[f"s{i}"] = int(sh.shape[0]), int(sh.shape[2])
    return Site(
        name=marker.name, rule=marker.rule, kind=marker.kind, activation=marker.activation,
        up_activation="none", d_model=int(k1 * p1), d_ff=int(d_ff), d_out=int(d_out),
        has_b1=v["B1"] is not None, has_b2=v["B2"] is not None,
        dtype=str(arrays["A1"].dtype), matched_nodes=marker.matched, structure=structure,
    )


def worth_trying(graph: ir.Graph) -> bool:
    """Whether canonicalization left a structured projection to match (the rules, hundreds
    of projection-form combinations, run only then)."""
    return any(n.domain == CANON and n.op_type in ("StructuredLinear", "BlockShuffle")
               for n in graph)


class StructuredFFN(pattern.RewriteRuleClassBase):
    """Replaces ``StructuredLinear|MatMul → (Add) → act → StructuredLinear|MatMul → (Add)``
    (not both MatMul) with an ``ai.fffc.canon.FFN`` marker of kind ``structured``.

    Matches: LowRank, BlockDense and block-diagonal MLPs (fffc.torch.StructuredMLP; the
    CLAIRE-Labo StructuredFFN layers) from the dynamo (opset 18, optimize=False) and
    TorchScript (opset 17) exporters, bmm and einsum spellings.
    """

    def __init__(self, name: str, act: str, first: str, second: str, has_b1: bool,
                 has_b2: bool):
        super().__init__(name)
        self._act, self._forms, self._has_b1, self._has_b2 = act, (first, second), has_b1, has_b2

    def pattern(self, op, x, a1, u1, b1, a2, u2, b2):
        h = _project(op, self._forms[0], x, a1, u1, "p1")
        if self._has_b1:
            h = op.Add(h, b1, _outputs=["add1"])
        act = apply_act(op, self._act, h, "act")
        y = _project(op, self._forms[1], act, a2, u2, "p2")
        if self._has_b2:
            y = op.Add(y, b2, _outputs=["add2"])
        return y

    def check(self, context, x, a1, a2, u1=None, u2=None, b1=None, b2=None, **_):
        r = in_main_graph(pattern.MatchResult(), context)
        if not r:
            return r
        for what, v in (("A1", a1), ("U1", u1), ("A2", a2), ("U2", u2)):
            arr = const_array(v) if v is not None else None
            if v is not None and (arr is None or arr.dtype.name != "float32"):
                return r.fail(f"structured FFN {what}: expected a float32 constant", v)
        (_, d_ff), (d_ff2, d_out) = (_widths(f, a, u) for f, a, u in
                                        zip(self._forms, (a1, a2), (u1, u2), strict=True))
        if d_ff2 != d_ff:
            return r.fail(f"second projection input: expected width {d_ff}, got {d_ff2}", a2)
        r = check_bias(r, b1, d_ff, "b1")
        return r and check_bias(r, b2, d_out, "b2")

    def rewrite(self, op, x, a1, a2, p1, p2, act, u1=None, u2=None, b1=None, b2=None,
                add1=None, add2=None, **_):
        def blocks(form, a, u):
            """(A, U, S) of one projection in the op's inputs."""
            if form is Form.DENSE:
                return op.initializer(ir.tensor(const_array(a)[None].copy()),
                                      name=f"{a.name}__blocks"), None, None
            if form is Form.SHUFFLE:
                return a, None, u
            return a, (u if form is not Form.BLOCKDIAG else None), None

        (a1, u1, s1), (a2, u2, s2) = (blocks(self._forms[0], a1, u1),
                                      blocks(self._forms[1], a2, u2))
        inputs = marker_inputs(STRUCTURED_FFN, X=x, A1=a1, U1=u1, B1=as_vector(op, b1), A2=a2,
                               U2=u2, B2=as_vector(op, b2), M1=None, M2=None, S1=s1, S2=s2)
        return op.FFN(
            *inputs,
            kind=str(SiteKind.STRUCTURED), activation=act_name(self._act, act),
            up_activation="none", rule=self.name,
            matched_nodes=",".join(node_names(p1, add1, act, p2, add2)), _domain=CANON,
        )


def _rules(has_b2: bool) -> list[pattern.RewriteRule]:
    out = []
    for first, second in COMBOS:
        for act in ("relu", "gelu", "silu"):
            for has_b1 in (True, False):
                name = (f"StructuredFFN_{first}_{second}_{act}{'_b1' if has_b1 else ''}"
                        f"{'_b2' if has_b2 else ''}")
                out.extend(StructuredFFN.rule(name, act=act, first=first, second=second,
                                              has_b1=has_b1, has_b2=has_b2).commute())
    return out


# Two passes, longest first: a rule without the trailing bias is rooted at the second
# MatMul, which a rule set visits before the Add that a with-bias rule is rooted at.
rules = RuleSequence(pattern.RewriteRuleSet(_rules(has_b2=True)),
                     pattern.RewriteRuleSet(_rules(has_b2=False)))
