"""Canonical SiLU: ``x·σ(x)`` and ``com.microsoft.QuickGelu(alpha=1)`` become ``ai.fffc.canon::Silu``.

SiLU(x) = x·sigmoid(x). PyTorch exports it as ``Mul(x, Sigmoid(x))`` (no Silu op below
opset 24 is emitted); ONNX Runtime's optimizer fuses that into QuickGelu with alpha=1.
"""

from __future__ import annotations

from onnxscript.rewriter import pattern

from ._common import CANON, MS


class MulSigmoid(pattern.RewriteRuleClassBase):
    """Replaces ``Mul(x, Sigmoid(x))`` with ``ai.fffc.canon.Silu``.

    Matches: torch.onnx dynamo and TorchScript exporters (LLaMA's SwiGLU gate), any opset.
    """

    def pattern(self, op, x):
        return op.Mul(x, op.Sigmoid(x))

    def rewrite(self, op, x):
        return op.Silu(x, _domain=CANON)


class QuickGelu(pattern.RewriteRuleClassBase):
    """Replaces ``com.microsoft.QuickGelu(alpha=1)`` with ``ai.fffc.canon.Silu``.

    Matches: models saved after ONNX Runtime's ORT_ENABLE_EXTENDED optimizer.
    """

    def pattern(self, op, x):
        return op.QuickGelu(x, _domain=MS, _outputs=["y"])

    def check(self, context, x, y, **_):
        r = pattern.MatchResult()
        alpha = y.producer().attributes.get_float("alpha", 1.702)
        if abs(alpha - 1.0) > 1e-6:
            return r.fail(f"QuickGelu alpha: expected 1.0 (SiLU), got {alpha}", y.producer())
        return r

    def rewrite(self, op, x, **_):
        return op.Silu(x, _domain=CANON)


rules = pattern.RewriteRuleSet([*MulSigmoid.rule("MulSigmoid").commute(), QuickGelu.rule("QuickGelu")])
