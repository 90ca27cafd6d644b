"""Opset-correct standard-op bodies: activations and the FFN math, built on an IR tape.

One builder serves three places: ``legalize`` (canonical activations left outside FFN
sites), sites that stay dense (inlined back), and the model-local fallback function of
every ``ai.fffc`` node. Gelu is emitted as one node from opset 20 on, as its erf or tanh
chain below.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from fffc.contract.act_quant import At, FakeQuant
from fffc.contract.int4 import Int8Rounding

FLOAT32 = np.dtype(np.float32)


def _const(tape: ir.tape.Tape, value: float, dtype: np.dtype = FLOAT32) -> ir.Value:
    return tape.op("Constant", [], {"value": ir.tensor(np.array(value, dtype=dtype))})


def float_dtype(v: ir.Value | None) -> np.dtype:
    """The numpy dtype of a float value where the graph knows it (a 16-bit model's), else
    float32."""
    dt = v.dtype if v is not None else None
    if dt is None or not dt.is_floating_point():
        return FLOAT32
    return np.dtype(dt.numpy())


Threshold = float | ir.Value | None  # a constant, a scalar graph input, or none


def _zero_small(tape: ir.tape.Tape, v: ir.Value, t: float | ir.Value,
                center: ir.Value | None = None, keep_center: bool = False) -> ir.Value:
    """``Where(|v| <= t, 0, v)``; with a ``center`` c (per channel): ``Where(|v-c| <= t, c,
    v)`` (``keep_center``: the reference form) or ``Where(|v-c| <= t, 0, v-c)`` (the op's)."""
    limit = t if isinstance(t, ir.Value) else _const(tape, t)
    if center is not None:
        d = tape.op("Sub", [v, center])
        small = tape.op("LessOrEqual", [tape.op("Abs", [d]), limit])
        return tape.op("Where", [small, center, v] if keep_center else [small, _const(tape, 0.0), d])
    small = tape.op("LessOrEqual", [tape.op("Abs", [v]), limit])
    return tape.op("Where", [small, _const(tape, 0.0), v])


def _active(t: Threshold) -> bool:
    return isinstance(t, ir.Value) or (t is not None and t >= 0)


def activation(tape: ir.tape.Tape, name: str, x: ir.Value, opset: int,
               dtype: np.dtype = FLOAT32) -> ir.Value:
    """``name`` (relu/gelu/gelu_tanh/silu/none) applied to x with opset-``opset`` ops, its
    constants of x's ``dtype`` (a 16-bit model's)."""
    if name == "none":
        return x
    if name == "relu":
        return tape.op("Relu", [x])
    if name == "silu":
        return tape.op("Mul", [x, tape.op("Sigmoid", [x])])
    if name in ("gelu", "gelu_tanh"):
        if opset >= 20:
            return tape.op("Gelu", [x], {"approximate": "tanh" if name == "gelu_tanh" else "none"})
        if name == "gelu":
            cdf = tape.op("Erf", [tape.op("Div", [x, _const(tape, math.sqrt(2.0), dtype)])])
        else:
            cube = tape.op("Mul", [tape.op("Mul", [x, x]), x])
            inner = tape.op("Add", [x, tape.op("Mul", [cube, _const(tape, 0.044715, dtype)])])
            scaled = tape.op("Mul", [inner, _const(tape, math.sqrt(2.0 / math.pi), dtype)])
            cdf = tape.op("Tanh", [scaled])
        one_plus = tape.op("Add", [cdf, _const(tape, 1.0, dtype)])
        return tape.op("Mul", [tape.op("Mul", [x, _const(tape, 0.5, dtype)]), one_plus])
    raise ValueError(f"unknown activation {name!r}")


def quantize_x(tape: ir.tape.Tape, x: ir.Value, block: int, opset: int) -> ir.Value:
    """``x [..., K]`` rounded to int8 per block of ``block`` entries and scaled back, as
    SparseFFN's ``accuracy_level`` 4 says (``fffc.contract.int4.quantize_x``: the same
    float32 steps; ONNX's Round is half to even)."""
    shape = tape.op("Constant", [], {"value": ir.tensor(np.array([-1, block], np.int64))})
    blocks = tape.op("Reshape", [x, shape])
    magnitude = tape.op("Abs", [blocks])
    if opset >= 18:  # axes an input from opset 18, an attribute before
        axes = tape.op("Constant", [], {"value": ir.tensor(np.array([1], np.int64))})
        am = tape.op("ReduceMax", [magnitude, axes], {"keepdims": 1})
    else:
        am = tape.op("ReduceMax", [magnitude], {"axes": [1], "keepdims": 1})
    inv = tape.op("Where", [tape.op("Greater", [am, _const(tape, 0.0)]),
                            tape.op("Div", [_const(tape, 127.0), am]), _const(tape, 0.0)])
    q = tape.op("Round", [tape.op("Mul", [blocks, inv])])
    back = tape.op("Mul", [q, tape.op("Div", [am, _const(tape, 127.0)])])
    return tape.op("Reshape", [back, tape.op("Shape", [x])])


def ffn(
    tape: ir.tape.Tape,
    x: ir.Value,
    w1: ir.Value,
    b1: ir.Value | None,
    w2: ir.Value,
    b2: ir.Value | None,
    wu: ir.Value | None,
    *,
    activation_name: str,
    up_activation: str,
    opset: int,
    wu_rows: bool,
    thresholds: tuple[Threshold, Threshold] | None = None,
    predictor: tuple[ir.Value, ir.Value, ir.Value] | None = None,
    w1_rows: bool = False,
    gate_threshold: Threshold = None,
    centers: tuple[ir.Value | None, ir.Value | None] = (None, None),
    keep_centers: bool = True,
    act_quant: Mapping[At, FakeQuant] | None = None,
    rounding: Int8Rounding | None = None,
) -> ir.Value:
    """``act(x·W1+b1) [⊙ up_act(x·WU)] · W2 + b2``; ``wu_rows``: WU is stored [d_ff, d_in].

    ``thresholds`` (t_in, t_hidden): TEAL's thresholded FFN — entries of x with |x| <= t_in
    and of the down projection's input with |a| <= t_hidden are zeroed before the
    projections (``Where(|v| <= t, 0, v)``; None or a negative constant t leaves that one
    as it is; t may be a scalar graph input, to search thresholds without rebuilding): the
    reference a threshold kernel must equal. ``predictor`` (PA, PB, PC): only neurons with
    ``(x·PA)·PB + PC > 0`` contribute (``Where``; mode predictor's reference); ``w1_rows``:
    W1 is stored [d_ff, d_in]. ``gate_threshold`` (gated FFNs): CATS — entries of
    act(gate) with |g| <= t are zeroed before the product with the up projection.
    ``centers`` (c_in [d_in], c_hidden [d_ff], either None): centered TEAL — an entry within
    t of its channel's center becomes the center (``keep_centers``, the reference), or the
    centered entries are what is thresholded and projected (the op's form with XC, HC, whose
    biases hold the centers' share). ``act_quant``: the activations' fake quantizations by
    place (``fffc.contract.act_quant``), each a QuantizeLinear → DequantizeLinear pair.
    ``rounding`` (int4 weights at accuracy_level 4): x' (after the input threshold) rounded
    to int8 per block before the gate and up products, and with ``rounding.hidden`` a'
    (after the hidden threshold) before the down projection (``quantize_x``); the
    predictor's score reads x unrounded.
    """
    fq = dict(act_quant or {})

    def quantized(at: At, v: ir.Value) -> ir.Value:
        return fake_quant(tape, v, fq[at]) if at in fq else v

    c_in, c_hidden = centers
    t_in, t_hidden = thresholds if thresholds is not None else (None, None)
    if _active(t_in):
        x = _zero_small(tape, x, t_in, c_in, keep_centers)
    elif c_in is not None and not keep_centers:
        x = tape.op("Sub", [x, c_in])
    scored = x  # the predictor's input: x in float32 whatever the weights round
    if rounding is not None:
        x = quantize_x(tape, x, rounding.block, opset)
    if w1_rows:
        w1 = tape.op("Transpose", [w1], {"perm": [1, 0]})
    h = quantized(At.PRE, tape.op("MatMul", [x, w1]))
    if b1 is not None:
        h = tape.op("Add", [h, b1])
    dtype = float_dtype(w1)  # a 16-bit model's FFN in its own dtype
    a = activation(tape, activation_name, h, opset, dtype)
    if wu is not None and _active(gate_threshold):
        a = _zero_small(tape, a, gate_threshold)
    if wu is not None:
        wu_in_out = tape.op("Transpose", [wu], {"perm": [1, 0]}) if wu_rows else wu
        u = activation(tape, up_activation, tape.op("MatMul", [x, wu_in_out]), opset, dtype)
        a = tape.op("Mul", [quantized(At.GATE, a), quantized(At.UP, u)])
    a = quantized(At.HIDDEN, a)
    if _active(t_hidden):
        a = _zero_small(tape, a, t_hidden, c_hidden, keep_centers)
    elif c_hidden is not None and not keep_centers:
        a = tape.op("Sub", [a, c_hidden])
    if rounding is not None and rounding.hidden:
        a = quantize_x(tape, a, rounding.block, opset)
    if predictor is not None:
        pa, pb, pc = predictor
        score = tape.op("Add", [tape.op("MatMul", [tape.op("MatMul", [scored, pa]), pb]), pc])
        a = tape.op("Where", [tape.op("Greater", [score, _const(tape, 0.0)]), a, _const(tape, 0.0)])
    y = tape.op("MatMul", [a, w2])
    if b2 is not None:
        y = tape.op("Add", [y, b2])
    return y


def fake_quant(tape: ir.tape.Tape, v: ir.Value, fq: FakeQuant) -> ir.Value:
    """``QuantizeLinear → DequantizeLinear`` of v with fq's scale and zero point (per tensor,
    of its code type): ``fffc.contract.act_quant.fake_quantize`` in ONNX Runtime."""
    s = _const(tape, fq.scale)
    z = _const(tape, fq.zero_point, np.dtype(fq.code_type))
    return tape.op("DequantizeLinear", [tape.op("QuantizeLinear", [v, s, z]), s, z])


def _token_rows(tape: ir.tape.Tape, x: ir.Value, w_out: ir.Value):
    """x [..., H] as token rows [T, H], and how to give a [T, H_out] result x's leading
    dims back (the op's X is [..., d_in], all leading dims tokens)."""
    rows = tape.op("Reshape", [x, tape.op("Concat", [_ints(tape, [-1]), _dims(tape, x, -1, 2**62)],
                                          {"axis": 0})])

    def restore(y: ir.Value) -> ir.Value:
        shape = tape.op("Concat", [_dims(tape, x, 0, -1), _dims(tape, w_out, 1, 2)], {"axis": 0})
        return tape.op("Reshape", [y, shape])

    return rows, restore


def fff_walk(tape: ir.tape.Tape, x: ir.Value, w_in_rows: ir.Value, b_in: ir.Value,
             w_out: ir.Value, *, trees: int, depth: int, opset: int,
             tie_break: str = "gt") -> ir.Value:
    """FastFeedForward's conditional walk in standard ops (opset ≥ 13), all trees at once.

    ``x`` [..., H] (leading dims: tokens), ``w_in_rows`` [K·n, H] (row per node), ``b_in``
    [K·n], ``w_out`` [K·n, H_out]. Per level: node rows gathered ([T, K, H]), dot with x, + bias, exact GELU, the output
    rows gathered and summed over the trees, ``j = 2j + 1 + [z > 0]``: D+1 levels.
    """
    n = 2 ** (depth + 1) - 1
    x, restore = _token_rows(tape, x, w_out)

    def const(arr: np.ndarray) -> ir.Value:
        return tape.op("Constant", [], {"value": ir.tensor(arr)})

    offsets = const(np.arange(trees, dtype=np.int64) * n)  # [K]
    tokens = tape.op("Slice", [tape.op("Shape", [x]), const(np.array([0], np.int64)),
                               const(np.array([1], np.int64))])
    shape_tk = tape.op("Concat", [tokens, const(np.array([trees], np.int64))], {"axis": 0})
    node = tape.op("ConstantOfShape", [shape_tk],
                   {"value": ir.tensor(np.zeros(1, dtype=np.int64))})  # [T, K]
    xk = tape.op("Unsqueeze", [x, const(np.array([1], np.int64))])  # [T, 1, H]
    last = const(np.array([-1], np.int64))
    y = None
    for _ in range(depth + 1):
        rows = tape.op("Add", [node, offsets])  # [T, K] global node index
        z = tape.op("ReduceSum", [tape.op("Mul", [tape.op("Gather", [w_in_rows, rows]), xk]), last],
                    {"keepdims": 0})
        z = tape.op("Add", [z, tape.op("Gather", [b_in, rows])])  # [T, K]
        g = activation(tape, "gelu", z, opset)
        contrib = tape.op("ReduceSum", [
            tape.op("Mul", [tape.op("Unsqueeze", [g, last]), tape.op("Gather", [w_out, rows])]),
            const(np.array([1], np.int64))], {"keepdims": 0})  # [T, H_out]
        y = contrib if y is None else tape.op("Add", [y, contrib])
        compare = "GreaterOrEqual" if tie_break == "ge" else "Greater"
        right = tape.op("Cast", [tape.op(compare, [z, const(np.array(0, np.float32))])],
                        {"to": ir.DataType.INT64})
        node = tape.op("Add", [tape.op("Add", [tape.op("Mul", [node, const(np.array(2, np.int64))]),
                                               const(np.array(1, np.int64))]), right])
    return restore(y)


# Below this many trained nodes per visited node the fallback computes every node (one GEMM)
# instead of walking: a walk gathers [tokens, trees, d_in] rows per level, which costs more
# than the GEMM when few trained nodes are skipped per visited one (wide, shallow forests;
# bench/bench_fff.py times the fallback) and outgrows memory at long sequences.
MASKED_BELOW_RATIO = 32


def fff_fallback(tape: ir.tape.Tape, x: ir.Value, w_in_rows: ir.Value, b_in: ir.Value,
                 w_out: ir.Value, *, trees: int, depth: int, opset: int,
                 tie_break: str = "gt") -> ir.Value:
    """FastFeedForward in standard ops: the walk for deep, narrow forests, the masked form
    (all nodes, the path mask) for wide, shallow ones."""
    n = 2 ** (depth + 1) - 1
    build = fff_masked if n < MASKED_BELOW_RATIO * (depth + 1) else fff_walk
    return build(tape, x, w_in_rows, b_in, w_out, trees=trees, depth=depth, opset=opset,
                 tie_break=tie_break)


def fff_masked(tape: ir.tape.Tape, x: ir.Value, w_in_rows: ir.Value, b_in: ir.Value,
               w_out: ir.Value, *, trees: int, depth: int, opset: int,
               tie_break: str = "gt") -> ir.Value:
    """FastFeedForward as UltraFastBERT trains it: every node's logit (one Gemm), exact GELU,
    times the 0/1 mask of each tree's path (ScatterElements per level), one MatMul out.

    ``x`` [..., H] (leading dims: tokens), ``w_in_rows`` [K·n, H], ``b_in`` [K·n], ``w_out``
    [K·n, H_out].
    """
    n = 2 ** (depth + 1) - 1
    x, restore = _token_rows(tape, x, w_out)

    def const(arr: np.ndarray) -> ir.Value:
        return tape.op("Constant", [], {"value": ir.tensor(arr)})

    logits = tape.op("Gemm", [x, w_in_rows, b_in], {"transB": 1})  # [T, K·n]
    l3 = tape.op("Reshape", [logits, const(np.array([-1, trees, n], np.int64))])  # [T, K, n]
    compare = "GreaterOrEqual" if tie_break == "ge" else "Greater"
    right = tape.op("Cast", [tape.op(compare, [l3, const(np.array(0, np.float32))])],
                    {"to": ir.DataType.INT64})
    tokens = tape.op("Slice", [tape.op("Shape", [x]), const(np.array([0], np.int64)),
                               const(np.array([1], np.int64))])
    shape_tk1 = tape.op("Concat", [tokens, const(np.array([trees, 1], np.int64))], {"axis": 0})
    node = tape.op("ConstantOfShape", [shape_tk1],
                   {"value": ir.tensor(np.zeros(1, dtype=np.int64))})  # [T, K, 1]
    ones = tape.op("ConstantOfShape", [shape_tk1], {"value": ir.tensor(np.ones(1, np.float32))})
    mask = tape.op("ConstantOfShape", [tape.op("Shape", [l3])],
                   {"value": ir.tensor(np.zeros(1, np.float32))})
    mask = tape.op("ScatterElements", [mask, node, ones], {"axis": 2})
    two, one = const(np.array(2, np.int64)), const(np.array(1, np.int64))
    for _ in range(depth):
        move = tape.op("GatherElements", [right, node], {"axis": 2})
        node = tape.op("Add", [tape.op("Add", [tape.op("Mul", [node, two]), one]), move])
        mask = tape.op("ScatterElements", [mask, node, ones], {"axis": 2})
    active = tape.op("Mul", [activation(tape, "gelu", l3, opset), mask])
    flat = tape.op("Reshape", [active, const(np.array([-1, trees * n], np.int64))])
    return restore(tape.op("MatMul", [flat, w_out]))


def _ints(tape: ir.tape.Tape, values: list[int]) -> ir.Value:
    return tape.op("Constant", [], {"value": ir.tensor(np.array(values, dtype=np.int64))})


def _dims(tape: ir.tape.Tape, v: ir.Value, start: int, end: int) -> ir.Value:
    """``Shape(v)[start:end]`` (Slice: valid at every opset fffc emits)."""
    return tape.op("Slice", [tape.op("Shape", [v]), _ints(tape, [start]), _ints(tape, [end])])


def blockdiag(tape: ir.tape.Tape, x2: ir.Value, a: ir.Value) -> ir.Value:
    """``blockdiag(x2, A)`` for x2 [N, k·p], A [k, p, q] (shapes read at run time, so one
    body serves every fallback function): ``Reshape([N, k, p]) → Transpose → MatMul(A) →
    Transpose → Reshape([N, k·q])``."""
    shape = tape.op("Concat", [_ints(tape, [-1]), _dims(tape, a, 0, 2)], {"axis": 0})
    blocks = tape.op("Transpose", [tape.op("Reshape", [x2, shape])], {"perm": [1, 0, 2]})
    out = tape.op("Transpose", [tape.op("MatMul", [blocks, a])], {"perm": [1, 0, 2]})
    return tape.op("Reshape", [out, _ints(tape, [0, -1])])


def shuffled(tape: ir.tape.Tape, h2: ir.Value, s: ir.Value) -> ir.Value:
    """BlockShuffle's second factor on h2 [N, m·r] (S [m, r, t]): the (r, m) grid's columns
    through S's blocks, written back as a (t, m) grid: ``Reshape([N, r, m]) →
    Transpose(2,0,1) → MatMul(S) → Transpose(1,2,0) → Reshape([N, t·m])``."""
    grid = tape.op("Concat", [_ints(tape, [-1]), _dims(tape, s, 1, 2), _dims(tape, s, 0, 1)],
                   {"axis": 0})
    g = tape.op("Transpose", [tape.op("Reshape", [h2, grid])], {"perm": [2, 0, 1]})
    out = tape.op("Transpose", [tape.op("MatMul", [g, s])], {"perm": [1, 2, 0]})
    return tape.op("Reshape", [out, _ints(tape, [0, -1])])


def _projection(tape: ir.tape.Tape, v: ir.Value, a: ir.Value, s: ir.Value | None,
                u: ir.Value | None, b: ir.Value | None) -> ir.Value:
    """One structured projection: blockdiag(v, A) [→ shuffled(·, S)] [· U] [+ b]."""
    h = blockdiag(tape, v, a)
    if s is not None:
        h = shuffled(tape, h, s)
    if u is not None:
        h = tape.op("MatMul", [h, u])
    return tape.op("Add", [h, b]) if b is not None else h


def structured_ffn(tape: ir.tape.Tape, x: ir.Value, a1: ir.Value, u1: ir.Value | None,
                   b1: ir.Value | None, a2: ir.Value, u2: ir.Value | None, b2: ir.Value | None,
                   *, activation_name: str, opset: int, s1: ir.Value | None = None,
                   s2: ir.Value | None = None) -> ir.Value:
    """``ai.fffc::StructuredFFN`` in standard ops: X's leading dims flattened to tokens, the
    two structured projections, X's leading dims restored."""
    x2 = tape.op("Reshape", [x, tape.op("Concat", [_ints(tape, [-1]), _dims(tape, x, -1, 2**62)],
                                        {"axis": 0})])
    h = _projection(tape, x2, a1, s1, u1, b1)
    g = _projection(tape, activation(tape, activation_name, h, opset), a2, s2, u2, b2)
    out_shape = tape.op("Concat", [_dims(tape, x, 0, -1), _dims(tape, g, -1, 2**62)], {"axis": 0})
    return tape.op("Reshape", [g, out_shape])


def _capacity_k(tape: ir.tape.Tape, x: ir.Value, k: int, capacity: dict | None) -> ir.Value:
    """TopK's k [1]: the constant, or from the sequence length as ``fffc.contract.ops.capacity_k``."""
    if not capacity:
        return _ints(tape, [k])
    s = tape.op("Gather", [tape.op("Shape", [x]), _ints(tape, [1])], {"axis": 0})
    if capacity["divisor"]:
        v = tape.op("Div", [s, _ints(tape, [capacity["divisor"]])])
    else:
        v = tape.op("Mul", [tape.op("Cast", [s], {"to": ir.DataType.FLOAT}),
                            _const(tape, capacity["scale"])])
        if capacity["round"] != "trunc":
            v = tape.op(capacity["round"].capitalize(), [v])
        v = tape.op("Cast", [v], {"to": ir.DataType.INT64})  # truncates toward zero
    return tape.op("Max", [v, _ints(tape, [capacity["min"]])]) if capacity["min"] else v


def routed_ffn(tape: ir.tape.Tape, x: ir.Value, wr: ir.Value, br: ir.Value | None,
               w1: ir.Value, b1: ir.Value | None, w2: ir.Value, b2: ir.Value | None,
               wa: ir.Value | None = None, ba: ir.Value | None = None, *,
               activation_name: str, selection: str, k: int, router: str,
               x_coef: tuple[float, float], delta_coef: tuple[float, float],
               opset: int, layer_norm: tuple | None = None,
               capacity: dict | None = None) -> ir.Value:
    """``ai.fffc::RoutedFFN`` in standard ops: scores, the selection (TopK, or the mask
    ``score > 0`` → NonZero), the FFN on the gathered tokens only, the combine, scattered back
    into X (what the exports compute, in one canonical spelling)."""
    axis = _ints(tape, [-1])

    def score(w: ir.Value, b: ir.Value | None) -> ir.Value:
        s = tape.op("Squeeze", [tape.op("MatMul", [x, tape.op("Unsqueeze", [w, axis])]), axis])
        return tape.op("Add", [s, b]) if b is not None else s

    s = score(wr, br)
    weight = tape.op("Sigmoid", [s]) if router == "sigmoid" else s
    if selection == "topk":
        _, idx = tape.op_multi_out("TopK", [s, _capacity_k(tape, x, k, capacity)],
                                   {"axis": 1, "largest": 1, "sorted": 1}, num_outputs=2)
        shape = tape.op("Concat", [tape.op("Shape", [idx]), _dims(tape, x, 2, 3)], {"axis": 0})
        where = tape.op("Expand", [tape.op("Unsqueeze", [idx, axis]), shape])
        xs = tape.op("GatherElements", [x, where], {"axis": 1})
        w = tape.op("Unsqueeze", [tape.op("GatherElements", [weight, idx], {"axis": 1}), axis])
    else:
        chooser = score(wa, ba) if wa is not None else s
        mask = tape.op("Greater", [chooser, _const(tape, 0.0)])
        where = tape.op("Transpose", [tape.op("NonZero", [mask])], {"perm": [1, 0]})
        xs = tape.op("GatherND", [x, where])
        w = tape.op("Unsqueeze", [tape.op("GatherND", [weight, where]), axis])
    inner = xs
    if layer_norm is not None:  # pre-norm inside the routed block (opset >= 17)
        scale, bias, epsilon = layer_norm
        inner = tape.op("LayerNormalization", [xs, scale, bias], {"axis": -1,
                                                                   "epsilon": float(epsilon)})
    delta = ffn(tape, inner, w1, b1, w2, b2, None, activation_name=activation_name,
                up_activation="none", opset=opset, wu_rows=False)

    def term(v: ir.Value, coef: tuple[float, float]) -> ir.Value | None:
        a, b = coef
        if a == 0 and b == 0:
            return None
        factor = w if a == 0 and b == 1 else (
            tape.op("Add", [_const(tape, a), tape.op("Mul", [w, _const(tape, b)])]) if b
            else _const(tape, a))
        return v if (a == 1 and b == 0) else tape.op("Mul", [v, factor])

    terms = [t for t in (term(xs, x_coef), term(delta, delta_coef)) if t is not None]
    update = terms[0] if len(terms) == 1 else tape.op("Add", terms) if terms else \
        tape.op("Mul", [xs, _const(tape, 0.0)])
    if selection == "topk":
        return tape.op("ScatterElements", [x, where, update], {"axis": 1})
    return tape.op("ScatterND", [x, where, update])
