"""Canonical GELU: every exporter's GELU form becomes one ``ai.fffc.canon::Gelu``.

GELU(x) = 0.5·x·(1 + erf(x/√2)); the tanh form is 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
Exporters write these as one opset-20 ``Gelu``, as Div/Erf/Add/Mul chains in several
operand orders, as GPT-2's hand-written tanh chain (even at opset 20), or, after ONNX
Runtime's optimizer, as ``com.microsoft`` Gelu/FastGelu/BiasGelu. ``legalize`` turns the
canonical node back into the opset-correct standard form of the output model.
"""

from __future__ import annotations

import math

from onnxscript.rewriter import pattern

from ._common import CANON, MS, require_scalar

SQRT2 = math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


class OnnxGelu(pattern.RewriteRuleClassBase):
    """Replaces ``Gelu`` (ai.onnx ≥ 20) with ``ai.fffc.canon.Gelu``.

    Matches: torch.onnx dynamo and TorchScript exporters at opset 20.
    """

    def pattern(self, op, x):
        return op.Gelu(x, _outputs=["y"])

    def rewrite(self, op, x, y):
        approx = y.producer().attributes.get_string("approximate", "none")
        return op.Gelu(x, approximate=approx, _domain=CANON)


class MsGelu(pattern.RewriteRuleClassBase):
    """Replaces ``com.microsoft.Gelu`` / ``BiasGelu`` / ``FastGelu`` with ``Add`` + canonical Gelu.

    Matches: models saved after ONNX Runtime's ORT_ENABLE_EXTENDED optimizer.
    """

    def __init__(self, name: str, op_type: str, has_bias: bool):
        super().__init__(name)
        self._op_type = op_type
        self._has_bias = has_bias

    def pattern(self, op, x, bias):
        inputs = (x, bias) if self._has_bias else (x,)
        return getattr(op, self._op_type)(*inputs, _domain=MS)

    def rewrite(self, op, x, bias=None):
        h = op.Add(x, bias) if self._has_bias else x
        approx = "tanh" if self._op_type == "FastGelu" else "none"
        return op.Gelu(h, approximate=approx, _domain=CANON)


class ErfGelu(pattern.RewriteRuleClassBase):
    """Replaces the erf chain ``x·0.5·(1 + Erf(x/√2))`` with ``ai.fffc.canon.Gelu``.

    Matches: dynamo opset < 20 (``Mul(x, Mul(0.5, 1+erf))``), TorchScript
    (``Mul(Mul(x, 1+erf), 0.5)``), and HF/ORT style (``Mul(Mul(0.5, x), 1+erf)``), each with
    ``Div(x, √2)`` or ``Mul(x, 1/√2)``; operand orders via ``.commute()``.
    """

    def __init__(self, name: str, order: str, scale_by_div: bool):
        super().__init__(name)
        self._order = order
        self._div = scale_by_div

    def pattern(self, op, x, c_scale, c_one, c_half):
        scaled = op.Div(x, c_scale) if self._div else op.Mul(x, c_scale)
        one_plus = op.Add(op.Erf(scaled), c_one)
        if self._order == "x_half_cdf":
            return op.Mul(x, op.Mul(c_half, one_plus))
        if self._order == "x_cdf_half":
            return op.Mul(op.Mul(x, one_plus), c_half)
        return op.Mul(op.Mul(c_half, x), one_plus)

    def check(self, context, x, c_scale, c_one, c_half, **_):
        r = pattern.MatchResult()
        r = require_scalar(r, c_scale, SQRT2 if self._div else 1.0 / SQRT2, "erf scale")
        r = r and require_scalar(r, c_one, 1.0, "erf offset")
        return r and require_scalar(r, c_half, 0.5, "gelu half")

    def rewrite(self, op, x, **_):
        return op.Gelu(x, approximate="none", _domain=CANON)


class TanhGelu(pattern.RewriteRuleClassBase):
    """Replaces the tanh chain (GPT-2 ``NewGELUActivation``) with canonical ``Gelu(tanh)``.

    Matches: GPT-2 from transformers with both exporters at every opset
    (``Mul(Mul(x,0.5), 1+Tanh(0.797·(x+0.0447·Pow(x,3))))``) and the
    ``Mul(x, Mul(0.5, 1+tanh))`` / ``Mul(Mul(x, 1+tanh), 0.5)`` orders (x³ written as
    ``x·(x·x)`` is a ``Pow`` by then: ``CubeToPow``).
    """

    def __init__(self, name: str, order: str):
        super().__init__(name)
        self._order = order

    def pattern(self, op, x, c_three, c_cubic, c_scale, c_one, c_half):
        inner = op.Mul(op.Add(x, op.Mul(op.Pow(x, c_three), c_cubic)), c_scale)
        one_plus = op.Add(op.Tanh(inner), c_one)
        if self._order == "half_x_first":
            return op.Mul(op.Mul(x, c_half), one_plus)
        if self._order == "x_half_cdf":
            return op.Mul(x, op.Mul(c_half, one_plus))
        return op.Mul(op.Mul(x, one_plus), c_half)

    def check(self, context, x, c_three, c_cubic, c_scale, c_one, c_half, **_):
        r = pattern.MatchResult()
        r = require_scalar(r, c_three, 3.0, "tanh-gelu power")
        r = r and require_scalar(r, c_cubic, 0.044715, "tanh-gelu cubic coefficient")
        r = r and require_scalar(r, c_scale, SQRT_2_OVER_PI, "tanh-gelu scale")
        r = r and require_scalar(r, c_one, 1.0, "tanh-gelu offset")
        return r and require_scalar(r, c_half, 0.5, "gelu half")

    def rewrite(self, op, x, **_):
        return op.Gelu(x, approximate="tanh", _domain=CANON)


class CubeToPow(pattern.RewriteRuleClassBase):
    """Replaces ``Mul(x, Mul(x, x))`` with ``Pow(x, 3)``: torch's ``gelu(approximate="tanh")``
    from the TorchScript exporter writes x³ this way; one spelling keeps ``TanhGelu``'s
    operand-order variants few."""

    def pattern(self, op, x):
        return op.Mul(x, op.Mul(x, x))

    def rewrite(self, op, x):
        return op.Pow(x, op.Constant(value_float=3.0))


def _commuted(rules: list[pattern.RewriteRule]) -> list[pattern.RewriteRule]:
    return [c for r in rules for c in r.commute()]


rules = pattern.RewriteRuleSet(
    [
        *CubeToPow.rule("CubeToPow").commute(),
        *_commuted(
            [TanhGelu.rule(f"TanhGelu_{o}", order=o)
             for o in ("half_x_first", "x_half_cdf", "x_cdf_half")]
        ),
        *_commuted(
            [ErfGelu.rule(f"ErfGelu_{o}_{'div' if d else 'mul'}", order=o, scale_by_div=d)
             for o in ("x_half_cdf", "x_cdf_half", "half_x_first") for d in (True, False)]
        ),
        OnnxGelu.rule("OnnxGelu"),
        MsGelu.rule("MsBiasGelu", op_type="BiasGelu", has_bias=True),
        MsGelu.rule("MsFastGeluBias", op_type="FastGelu", has_bias=True),
        MsGelu.rule("MsFastGelu", op_type="FastGelu", has_bias=False),
        MsGelu.rule("MsGelu", op_type="Gelu", has_bias=False),
    ]
)
