"""Dense FFN: ``act(x·W1 (+b1))·W2 (+b2)`` with act ∈ {ReLU, GELU (erf/tanh), SiLU}.

BERT, GPT-2 and OPT-style MLPs. Runs after canonicalization, so every linear is
``MatMul(x, W[in,out]) (+Add b)`` and every activation is one node. The second bias is
optional: ONNX Runtime's optimizer moves it into ``SkipLayerNormalization``.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern

from fffc.contract.act_quant import At
from fffc.contract.kinds import SiteKind

from ._common import RuleSequence, const_array, node_names
from ._ffn_common import (
    act_name,
    act_quant,
    apply_act,
    as_vector,
    check_bias,
    check_fake_quants,
    check_projection,
    dequantized_bias,
    emit_marker,
    fake_quant,
    ffn_site,
    in_main_graph,
)


class DenseFFN(pattern.RewriteRuleClassBase):
    """Replaces ``MatMul → (Add) → act → MatMul → (Add)`` with an ``ai.fffc.canon.FFN`` marker.

    Matches: BERT/GPT-2/OPT MLPs from torch.onnx dynamo (opset 18, 20, optimize=False)
    and TorchScript (opset 17, 20) exports, and after ORT_ENABLE_EXTENDED. With
    ``quantized``: ``quantize_static``'s QDQ form (canonical FakeQuant on x·W1 before the
    bias, where there is one, and after the ReLU; ``fffc.contract.act_quant``), its bias
    b1 a DequantizeLinear of constant codes (read as its float32 values).
    """

    def __init__(self, name: str, act: str, has_b1: bool, has_b2: bool,
                 quantized: bool = False):
        super().__init__(name)
        self._act, self._has_b1, self._has_b2 = act, has_b1, has_b2
        self._fq = quantized

    def pattern(self, op, x, w1, b1, w2, b2):
        h = op.MatMul(x, w1, _outputs=["mm1"])
        if self._has_b1:
            if self._fq:
                h = fake_quant(op, h, "fq_pre")
            h = op.Add(h, b1, _outputs=["add1"])
        a = apply_act(op, self._act, h, "act")
        if self._fq:
            a = fake_quant(op, a, "fq_hidden")
        y = op.MatMul(a, w2, _outputs=["mm2"])
        if self._has_b2:
            y = op.Add(y, b2, _outputs=["add2"])
        return y

    def check(self, context, x, w1, w2, b1=None, b2=None, fq_pre=None, fq_hidden=None, **_):
        r = in_main_graph(pattern.MatchResult(), context)
        r = check_fake_quants(r, fq_pre, fq_hidden)
        r = r and check_projection(r, w1, "W1 (first projection)")
        r = r and check_projection(r, w2, "W2 (second projection)")
        if not r:
            return r
        d_ff = const_array(w1).shape[1]
        if const_array(w2).shape[0] != d_ff:
            return r.fail(f"W2 rows: expected d_ff={d_ff}, got {list(const_array(w2).shape)}", w2)
        if self._fq and b1 is not None and const_array(b1) is None:
            b1 = dequantized_bias(b1)
            if b1 is None:
                return r.fail("b1: expected a constant bias or a DequantizeLinear of "
                              "constant codes, got a computed tensor")
        r = check_bias(r, b1, d_ff, "b1")
        return r and check_bias(r, b2, const_array(w2).shape[1], "b2")

    def rewrite(self, op, x, w1, w2, act, mm1, mm2, b1=None, b2=None, add1=None, add2=None,
                fq_pre=None, fq_hidden=None, **_):
        if b1 is not None and const_array(b1) is None:  # a quantized bias: its float32 values
            b1 = op.initializer(ir.tensor(const_array(dequantized_bias(b1))),
                                name=f"{b1.name}__float")
        return emit_marker(
            op, x, w1, as_vector(op, b1), w2, as_vector(op, b2), None,
            rule=self.name, kind=SiteKind.DENSE, activation=act_name(self._act, act),
            up_activation="none",
            matched=node_names(mm1, fq_pre, add1, act, fq_hidden, mm2, add2),
            aq=act_quant(op, {At.PRE: fq_pre, At.HIDDEN: fq_hidden},
                         mm2.producer().name or "ffn"),
        )


site = ffn_site  # the Site of its marker


def _rules(has_b2: bool) -> list[pattern.RewriteRule]:
    out = []
    for has_b1 in (True, False):  # static int8 activations: ReLU only
        name = f"DenseFFN_relu{'_b1' if has_b1 else ''}_qdq{'_b2' if has_b2 else ''}"
        out.extend(DenseFFN.rule(name, act="relu", has_b1=has_b1, has_b2=has_b2,
                                 quantized=True).commute())
    for act in ("relu", "gelu", "silu"):
        for has_b1 in (True, False):
            name = f"DenseFFN_{act}{'_b1' if has_b1 else ''}{'_b2' if has_b2 else ''}"
            out.extend(DenseFFN.rule(name, act=act, has_b1=has_b1, has_b2=has_b2).commute())
    return out


# Two passes, longest first: a rule without the trailing bias is rooted at the second
# MatMul, which a rule set visits before the Add that a with-bias rule is rooted at.
rules = RuleSequence(pattern.RewriteRuleSet(_rules(has_b2=True)),
                     pattern.RewriteRuleSet(_rules(has_b2=False)))
