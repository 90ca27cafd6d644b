"""Dense FFN: ``act(x·W1 (+b1))·W2 (+b2)`` with act ∈ {ReLU, GELU (erf/tanh), SiLU}.

BERT, GPT-2 and OPT-style MLPs. Runs after canonicalization, so every linear is
``MatMul(x, W[in,out]) (+Add b)`` and every activation is one node. The second bias is
optional: ONNX Runtime's optimizer moves it into ``SkipLayerNormalization``.
"""

from __future__ import annotations

from onnxscript.rewriter import pattern

from fffc.contract.kinds import SiteKind

from ._common import RuleSequence, const_array, node_names
from ._ffn_common import (
    act_name,
    apply_act,
    as_vector,
    check_bias,
    check_projection,
    emit_marker,
    ffn_site,
    in_main_graph,
)


class DenseFFN(pattern.RewriteRuleClassBase):
    """Replaces ``MatMul → (Add) → act → MatMul → (Add)`` with an ``ai.fffc.canon.FFN`` marker.

    Matches: BERT/GPT-2/OPT MLPs from torch.onnx dynamo (opset 18, 20, optimize=False)
    and TorchScript (opset 17, 20) exports, and after ORT_ENABLE_EXTENDED.
    """

    def __init__(self, name: str, act: str, has_b1: bool, has_b2: bool):
        super().__init__(name)
        self._act, self._has_b1, self._has_b2 = act, has_b1, has_b2

    def pattern(self, op, x, w1, b1, w2, b2):
        h = op.MatMul(x, w1, _outputs=["mm1"])
        if self._has_b1:
            h = op.Add(h, b1, _outputs=["add1"])
        a = apply_act(op, self._act, h, "act")
        y = op.MatMul(a, w2, _outputs=["mm2"])
        if self._has_b2:
            y = op.Add(y, b2, _outputs=["add2"])
        return y

    def check(self, context, x, w1, w2, b1=None, b2=None, **_):
        r = in_main_graph(pattern.MatchResult(), context)
        r = r and check_projection(r, w1, "W1 (first projection)")
        r = r and check_projection(r, w2, "W2 (second projection)")
        if not r:
            return r
        d_ff = const_array(w1).shape[1]
        if const_array(w2).shape[0] != d_ff:
            return r.fail(f"W2 rows: expected d_ff={d_ff}, got {list(const_array(w2).shape)}", w2)
        r = check_bias(r, b1, d_ff, "b1")
        return r and check_bias(r, b2, const_array(w2).shape[1], "b2")

    def rewrite(self, op, x, w1, w2, act, mm1, mm2, b1=None, b2=None, add1=None, add2=None, **_):
        return emit_marker(
            op, x, w1, as_vector(op, b1), w2, as_vector(op, b2), None,
            rule=self.name, kind=SiteKind.DENSE, activation=act_name(self._act, act),
            up_activation="none", matched=node_names(mm1, add1, act, mm2, add2),
        )


site = ffn_site  # the Site of its marker


def _rules(has_b2: bool) -> list[pattern.RewriteRule]:
    out = []
    for act in ("relu", "gelu", "silu"):
        for has_b1 in (True, False):
            name = f"DenseFFN_{act}{'_b1' if has_b1 else ''}{'_b2' if has_b2 else ''}"
            out.extend(DenseFFN.rule(name, act=act, has_b1=has_b1, has_b2=has_b2).commute())
    return out


# Two passes, longest first: a rule without the trailing bias is rooted at the second
# MatMul, which a rule set visits before the Add that a with-bias rule is rooted at.
rules = RuleSequence(pattern.RewriteRuleSet(_rules(has_b2=True)),
                     pattern.RewriteRuleSet(_rules(has_b2=False)))
