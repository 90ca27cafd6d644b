"""Gated FFN: ``(act(x·Wg) ⊙ up_act(x·Wu))·Wd (+b)``: SwiGLU, GeGLU, ReGLU and dReLU.

LLaMA/Mistral MLPs (SiLU gate), ReLU-LLaMA/ProSparse (ReGLU) and TurboSparse (dReLU,
ReLU on both gate and up). Runs after canonicalization (SiLU is one node).
"""

from __future__ import annotations

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
    emit_marker,
    fake_quant,
    ffn_site,
    in_main_graph,
)


class GatedFFN(pattern.RewriteRuleClassBase):
    """Replaces ``MatMul(Mul(act(MatMul(x,Wg)), [Relu](MatMul(x,Wu))), Wd) (+Add)`` with a marker.

    Matches: transformers LlamaMLP (SwiGLU; ReGLU with hidden_act=relu) and dReLU MLPs from
    torch.onnx dynamo and TorchScript exports, and after ORT_ENABLE_EXTENDED (QuickGelu).

    With ``quantized``: ``quantize_static``'s QDQ form (canonical FakeQuant after the gate's
    ReLU, the up activation and the product; ``fffc.contract.act_quant``).
    """

    def __init__(self, name: str, act: str, up_relu: bool, has_b2: bool,
                 quantized: bool = False):
        super().__init__(name)
        self._act, self._up_relu, self._has_b2 = act, up_relu, has_b2
        self._fq = quantized

    def pattern(self, op, x, wg, wu, wd, b2):
        g = apply_act(op, self._act, op.MatMul(x, wg, _outputs=["mmg"]), "act")
        u = op.MatMul(x, wu, _outputs=["mmu"])
        if self._up_relu:
            u = op.Relu(u, _outputs=["up_act"])
        if self._fq:
            g, u = fake_quant(op, g, "fq_gate"), fake_quant(op, u, "fq_up")
        h = op.Mul(g, u, _outputs=["mul"])
        if self._fq:
            h = fake_quant(op, h, "fq_hidden")
        y = op.MatMul(h, wd, _outputs=["mmd"])
        if self._has_b2:
            y = op.Add(y, b2, _outputs=["add2"])
        return y

    def check(self, context, x, wg, wu, wd, b2=None, fq_gate=None, fq_up=None, fq_hidden=None,
              **_):
        r = in_main_graph(pattern.MatchResult(), context)
        r = check_fake_quants(r, fq_gate, fq_up, fq_hidden)
        r = r and check_projection(r, wg, "W_gate")
        r = r and check_projection(r, wu, "W_up")
        r = r and check_projection(r, wd, "W_down")
        if not r:
            return r
        if const_array(wg).shape != const_array(wu).shape:
            return r.fail(f"W_up shape: expected {list(const_array(wg).shape)} like W_gate, "
                          f"got {list(const_array(wu).shape)}", wu)
        d_ff = const_array(wg).shape[1]
        if const_array(wd).shape[0] != d_ff:
            return r.fail(f"W_down rows: expected d_ff={d_ff}, got {list(const_array(wd).shape)}", wd)
        return check_bias(r, b2, const_array(wd).shape[1], "b_down")

    def rewrite(self, op, x, wg, wu, wd, act, mmg, mmu, mul, mmd, b2=None, up_act=None,
                add2=None, fq_gate=None, fq_up=None, fq_hidden=None, **_):
        return emit_marker(
            op, x, wg, None, wd, as_vector(op, b2), wu,
            rule=self.name, kind=SiteKind.GATED, activation=act_name(self._act, act),
            up_activation="relu" if self._up_relu else "none",
            matched=node_names(mmg, act, mmu, up_act, fq_gate, fq_up, mul, fq_hidden, mmd,
                               add2),
            aq=act_quant(op, {At.GATE: fq_gate, At.UP: fq_up, At.HIDDEN: fq_hidden},
                         mmd.producer().name or "ffn"),
        )


site = ffn_site  # the Site of its marker


def _rules(has_b2: bool) -> list[pattern.RewriteRule]:
    out = []
    for up_relu in (True, False):  # static int8 activations: ReLU gates only
        name = f"GatedFFN_relu{'_uprelu' if up_relu else ''}_qdq{'_b2' if has_b2 else ''}"
        out.extend(GatedFFN.rule(name, act="relu", up_relu=up_relu, has_b2=has_b2,
                                 quantized=True).commute())
    for up_relu in (True, False):  # dReLU before ReGLU: the longer pattern first
        for act in ("relu", "silu", "gelu"):
            name = f"GatedFFN_{act}{'_uprelu' if up_relu else ''}{'_b2' if has_b2 else ''}"
            out.extend(GatedFFN.rule(name, act=act, up_relu=up_relu, has_b2=has_b2).commute())
    return out


# Two passes, longest first: a rule without the trailing bias is rooted at the second
# MatMul, which a rule set visits before the Add that a with-bias rule is rooted at.
rules = RuleSequence(pattern.RewriteRuleSet(_rules(has_b2=True)),
                     pattern.RewriteRuleSet(_rules(has_b2=False)))
