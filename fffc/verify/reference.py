"""NumPy reference implementations of the ``ai.fffc`` ops: they document the math.

Kernels are tested against these; they compute in float64 so that a kernel's error is
measured against the exact value, not against another float32 rounding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ..contract.act_quant import At, FakeQuant
from ..contract.ops import capacity_k
from ..contract.structure import projection
from ..contract.tolerances import PREDICTOR_BAND, TEAL_BAND

_erf = np.frompyfunc(math.erf, 1, 1)


def activation(name: str, x: np.ndarray) -> np.ndarray:
    """Elementwise activation by its ``ai.fffc`` attribute name."""
    x = np.asarray(x, dtype=np.float64)
    if name == "none":
        return x
    if name == "relu":
        return np.maximum(x, 0.0)
    if name == "gelu":
        return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))
    if name == "gelu_tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    if name == "silu":
        return x / (1.0 + np.exp(-x))
    raise ValueError(f"unknown activation {name!r}")


def sparse_ffn(
    x: np.ndarray,
    w1: np.ndarray,
    b1: np.ndarray | None,
    w2: np.ndarray,
    b2: np.ndarray | None,
    wu: np.ndarray | None = None,
    *,
    activation_name: str = "relu",
    up_activation: str = "none",
    act_quant: Mapping[At, FakeQuant] | None = None,
) -> np.ndarray:
    """``ai.fffc::SparseFFN`` mode exact: ``act(x·W1+b1) [⊙ up_act(x·WUᵀ)] · W2 + b2`` over
    the last axis, with ``act_quant``'s fake quantizations where the op text puts them
    (``fffc.contract.act_quant``). Exact skipping drops only neurons whose value is exactly
    zero, so the reference is the dense computation.
    """
    return _sparse_ffn(x, w1, b1, w2, b2, wu, activation_name, up_activation, act_quant)[0]


# a pre-quantization value within this many steps (plus the relative part) of a rounding
# boundary may round either way in float32 (the kernels' sums, ONNX Runtime's integer
# products scaled back): its fake quantization is ambiguous by one step
FQ_EDGE_STEPS, FQ_EDGE_REL = 2e-4, 2e-6


def _fq(v: np.ndarray, fq: FakeQuant | None) -> tuple[np.ndarray, np.ndarray]:
    """fq(v) in float64 (round half to even) and where v is near a rounding boundary."""
    if fq is None:
        return v, np.zeros(v.shape, bool)
    t = v / fq.scale
    near = np.abs(np.abs(t - np.floor(t)) - 0.5) <= FQ_EDGE_STEPS + FQ_EDGE_REL * np.abs(t)
    q = np.clip(np.rint(t) + fq.zero_point, fq.qmin, fq.qmax)
    return (q - fq.zero_point) * fq.scale, near


def _sparse_ffn(x, w1, b1, w2, b2, wu, activation_name, up_activation, act_quant):
    """(y, the per-neuron bound on |Δh| where a fake quantization is ambiguous, or None)."""
    fq = dict(act_quant or {})
    xd = np.asarray(x, dtype=np.float64)
    p, near_p = _fq(xd @ np.asarray(w1, dtype=np.float64), fq.get(At.PRE))
    h = p + b1 if b1 is not None else p
    a = activation(activation_name, h)
    dh = None
    step = {at: (fq[at].scale if at in fq else 0.0) for at in At}
    if wu is not None:
        g, near_g = _fq(a, fq.get(At.GATE))
        u, near_u = _fq(activation(up_activation, xd @ np.asarray(wu, dtype=np.float64).T),
                        fq.get(At.UP))
        a, near_h = _fq(g * u, fq.get(At.HIDDEN))
        if fq:
            dg = np.where(near_p | near_g, step[At.PRE] + step[At.GATE], 0.0)
            du = np.where(near_u, step[At.UP], 0.0)
            dprod = dg * (np.abs(u) + du) + np.abs(g) * du
            dh = np.where(near_p | near_g | near_u | near_h, dprod + step[At.HIDDEN], 0.0)
    else:
        a, near_h = _fq(a, fq.get(At.HIDDEN))
        if fq:
            dh = np.where(near_p | near_h, step[At.PRE] + step[At.HIDDEN], 0.0)
    y = a @ np.asarray(w2, dtype=np.float64)
    if b2 is not None:
        y = y + b2
    return y, dh


def fake_quant_slack(x: np.ndarray, w1, b1, w2, wu, *, activation_name: str,
                     up_activation: str, act_quant: Mapping[At, FakeQuant]) -> np.ndarray:
    """Σ over the neurons whose fake quantization is ambiguous (within float32 rounding of a
    boundary: ``FQ_EDGE_STEPS``) of the bound on their |Δh| times |W2|'s row: the error a
    correct float32 implementation (or ONNX Runtime's integer one) may show beyond rtol —
    a flip of round() at .5 moves h by one step s."""
    _, dh = _sparse_ffn(x, w1, b1, w2, None, wu, activation_name, up_activation, act_quant)
    return dh @ np.abs(np.asarray(w2, dtype=np.float64))


def _masked_down(a: np.ndarray, dropped: np.ndarray, ambiguous: np.ndarray, w2: np.ndarray,
                 b2: np.ndarray | None, slack: bool):
    """``Where(dropped, 0, a)·W2 + b2``; with ``slack`` also Σ |a_i|·|W2[i]| over the
    ``ambiguous`` neurons (those a float32 implementation may decide the other way)."""
    w2d = np.asarray(w2, dtype=np.float64)
    y = np.where(dropped, 0.0, a) @ w2d
    y = y + b2 if b2 is not None else y
    return (y, np.where(ambiguous, np.abs(a), 0.0) @ np.abs(w2d)) if slack else y


# a code of a rounded activation within this much of a half step (in steps) may round
# either way: the kernels' a (float32 sums) differs from the reference's by float rounding
ROUND_BAND = 1e-3


def round_int8(v: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """``v [..., K]`` rounded to int8 per block of ``block`` entries of its last axis and
    scaled back, in float32 as MatMulNBits' ``accuracy_level`` 4 quantizes its input
    (SparseFFN's level-4 rounding): per block the step s = max|v| / 127, the codes
    round-half-even(v · (127 / max|v|)), 0 in an all-zero block, then code · s. Also the
    per-entry step where its code lies within ``ROUND_BAND`` of a half step (0 elsewhere):
    how far an implementation whose v differs by float rounding may be off."""
    v = np.asarray(v, np.float32)
    b = v.reshape(*v.shape[:-1], v.shape[-1] // block, block)
    top = np.abs(b).max(axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        inv = np.where(top > 0, np.float32(127) / top, np.float32(0)).astype(np.float32)
    t = (b * inv).astype(np.float32)
    back = (np.rint(t) * (top / np.float32(127))).astype(np.float32)
    step = np.broadcast_to(top / np.float32(127), b.shape)
    near = np.abs(np.abs(t - np.floor(t)) - 0.5) <= ROUND_BAND
    return back.reshape(v.shape), np.where(near, step, 0.0).reshape(v.shape)


def _rounded_x(x: np.ndarray, t_in: float, int8_block: int | None) -> np.ndarray:
    """x' = x with |x| <= t_in zeroed (as float32, exactly), rounded per ``int8_block``
    where given; float64."""
    x32 = np.asarray(x, np.float32)
    kept = np.where(np.abs(x32) <= np.float32(t_in), np.float32(0), x32) if t_in >= 0 else x32
    if int8_block:
        kept = round_int8(kept, int8_block)[0]
    return kept.astype(np.float64)


def _near(mag: np.ndarray, t: float) -> np.ndarray:
    """Magnitudes within float32 rounding (``TEAL_BAND``) of threshold ``t`` (none if off)."""
    if t < 0:
        return np.zeros(mag.shape, bool)
    return np.abs(mag - t) <= TEAL_BAND * (abs(t) + 0.05 * mag.max(axis=-1, keepdims=True))


def teal_ffn(x: np.ndarray, w1: np.ndarray, b1: np.ndarray | None, w2: np.ndarray,
             b2: np.ndarray | None, wu: np.ndarray | None = None, *, thresholds: np.ndarray,
             activation_name: str, up_activation: str = "none", xc: np.ndarray | None = None,
             hc: np.ndarray | None = None, int8_block: int | None = None,
             slack: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """``ai.fffc::SparseFFN`` mode=teal: TEAL's thresholded FFN. ``wu`` is [d_in, d_ff]
    (input-channel-major); ``thresholds`` [t_in, t_hidden] (as float32, like the op's TH),
    negative = off; ``xc``, ``hc``: the op's centers XC, HC (subtracted before each
    threshold). x (minus XC, in float32 as the op) is thresholded as given, so the decision
    is exact; a in float64. With ``slack``, also Σ |a_i|·|W2[i]| over neurons whose |a|
    lies within rounding (``TEAL_BAND``) of t_hidden: how far any float32 implementation
    may be off because it kept or dropped such a neuron the other way. ``int8_block`` (int4
    weights at accuracy_level 4): x' rounded to int8 per block of that many channels
    (``round_int8``) before the products, and a' (after the hidden threshold, as float32)
    per block of that many neurons before the down projection; the slack then also holds
    one step times |W2[i]| for each a'_i whose code is within ``ROUND_BAND`` of a half step."""
    t_in, t_h = (float(t) for t in np.asarray(thresholds, dtype=np.float32))
    if int8_block and (xc is not None or hc is not None):
        raise ValueError("teal_ffn: centered TEAL has no int8 rounding")
    x = np.asarray(x, dtype=np.float32)
    if xc is not None:
        x = x - np.asarray(xc, dtype=np.float32)
    xd = _rounded_x(x, t_in, int8_block)
    h = xd @ np.asarray(w1, dtype=np.float64)
    if b1 is not None:
        h = h + b1
    a = activation(activation_name, h)
    if wu is not None:
        a = a * activation(up_activation, xd @ np.asarray(wu, dtype=np.float64))
    if hc is not None:
        a = a - np.asarray(hc, dtype=np.float32)
    mag = np.abs(a)
    if not int8_block:
        return _masked_down(a, mag <= t_h, _near(mag, t_h), w2, b2, slack)
    kept, steps = round_int8(np.where(mag <= t_h, 0.0, a), int8_block)
    y, near = _masked_down(kept.astype(np.float64), mag <= t_h, _near(mag, t_h), w2, b2, True)
    rounding = steps @ np.abs(np.asarray(w2, np.float64))
    return (y, near + rounding) if slack else y


def cats_ffn(x: np.ndarray, w1: np.ndarray, b1: np.ndarray | None, w2: np.ndarray,
             b2: np.ndarray | None, wu_rows: np.ndarray, *, thresholds: np.ndarray,
             activation_name: str, up_activation: str = "none", int8_block: int | None = None,
             slack: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """``ai.fffc::SparseFFN`` mode=cats (gated): x' = x with |x| <= t_in zeroed; neurons
    with |act(x'·W1 + b1)| <= t_gate are zero (CATS); ``wu_rows`` [d_ff, d_in];
    ``thresholds`` [t_in, t_gate] as float32, negative = off. ``slack`` as in ``teal_ffn``,
    for gates within rounding of t_gate. ``int8_block`` (accuracy_level 4): x' rounded to
    int8 per block (``round_int8``) before the gate and up products; a in float."""
    t_in, t_g = (float(t) for t in np.asarray(thresholds, dtype=np.float32))
    xd = _rounded_x(x, t_in, int8_block)
    h = xd @ np.asarray(w1, dtype=np.float64)
    if b1 is not None:
        h = h + b1
    g = activation(activation_name, h)
    a = g * activation(up_activation, xd @ np.asarray(wu_rows, dtype=np.float64).T)
    mag = np.abs(g)
    return _masked_down(a, mag <= t_g, _near(mag, t_g), w2, b2, slack)




def predictor_ffn(x: np.ndarray, w1_rows: np.ndarray, b1: np.ndarray | None, w2: np.ndarray,
                  b2: np.ndarray | None, wu_rows: np.ndarray | None, pa: np.ndarray,
                  pb: np.ndarray, pc: np.ndarray, *, activation_name: str,
                  up_activation: str = "none", int8_block: int | None = None,
                  slack: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """``ai.fffc::SparseFFN`` mode=predictor: only the neurons with a positive predictor
    score ``(x·PA)·PB + PC`` contribute. ``w1_rows``/``wu_rows`` are [d_ff, d_in] (row per
    neuron). With ``slack``: Σ |a_i|·|W2[i]| over neurons whose score is within rounding of
    0 (selected by one float32 implementation, not by another). ``int8_block``
    (accuracy_level 4): the scores on x as given, the gate and up rows on x rounded to int8
    per block (``round_int8``); a in float."""
    xd = np.asarray(x, dtype=np.float64)
    score = (xd @ np.asarray(pa, np.float64)) @ np.asarray(pb, np.float64) + pc
    if int8_block:
        xd = _rounded_x(x, -1.0, int8_block)
    h = xd @ np.asarray(w1_rows, dtype=np.float64).T
    if b1 is not None:
        h = h + b1
    a = activation(activation_name, h)
    if wu_rows is not None:
        a = a * activation(up_activation, xd @ np.asarray(wu_rows, dtype=np.float64).T)
    scale = np.abs(xd) @ np.abs(np.asarray(pa, np.float64)) @ np.abs(np.asarray(pb, np.float64))
    ambiguous = np.abs(score) <= PREDICTOR_BAND * (scale + np.abs(pc))
    return _masked_down(a, score <= 0, ambiguous, w2, b2, slack)


def structured_ffn(x: np.ndarray, a1: np.ndarray, u1: np.ndarray | None, b1: np.ndarray | None,
                   a2: np.ndarray, u2: np.ndarray | None, b2: np.ndarray | None, *,
                   activation_name: str = "gelu", s1: np.ndarray | None = None,
                   s2: np.ndarray | None = None) -> np.ndarray:
    """``ai.fffc::StructuredFFN``: ``proj2(act(proj1(x) + b1)) + b2`` with ``proj(v) =
    blockdiag(v, A) [→ shuffled(·, S)] [· U]``."""
    h = projection(x, a1, u1, s1)
    if b1 is not None:
        h = h + b1
    g = projection(activation(activation_name, h), a2, u2, s2)
    return g + b2 if b2 is not None else g


def route(x: np.ndarray, wr: np.ndarray, br: np.ndarray | None, *, selection: str, k: int,
          router: str, wa: np.ndarray | None = None,
          ba: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``ai.fffc::RoutedFFN``'s selection: (flat token indices b·S + t of the selected tokens
    in ascending order, their router weights). Scores in float32 as the graph computes
    them; topk: the k largest per sequence, ties to the lower index (ONNX TopK); threshold:
    sigmoid(a) > 0.5, i.e. a > 0, with a the selection score x·WA (+ BA) where WA is given
    (MoD's causal predictor), else the router score itself."""
    b, s_len, _ = x.shape
    scores = (x.astype(np.float32) @ wr.reshape(-1).astype(np.float32)).astype(np.float32)
    if br is not None:
        scores = scores + np.float32(br.reshape(-1)[0])
    selecting = scores
    if wa is not None:
        selecting = (x.astype(np.float32) @ wa.reshape(-1).astype(np.float32)).astype(np.float32)
        if ba is not None:
            selecting = selecting + np.float32(ba.reshape(-1)[0])
    picked = []
    for i in range(b):
        if selection == "topk":
            order = np.lexsort((np.arange(s_len), -scores[i]))  # by score desc, index asc
            picked += sorted(int(i * s_len + t) for t in order[:k])
        else:
            picked += [int(i * s_len + t) for t in np.nonzero(selecting[i] > 0)[0]]
    idx = np.array(picked, dtype=np.int64)
    w = scores.reshape(-1)[idx].astype(np.float64)
    return idx, (w if router == "raw" else 1.0 / (1.0 + np.exp(-w)))


def layer_norm(v: np.ndarray, scale: np.ndarray, bias: np.ndarray, epsilon: float) -> np.ndarray:
    """LayerNorm over the last axis (ONNX LayerNormalization, axis -1)."""
    v = np.asarray(v, dtype=np.float64)
    mean = v.mean(axis=-1, keepdims=True)
    var = ((v - mean) ** 2).mean(axis=-1, keepdims=True)
    return (v - mean) / np.sqrt(var + epsilon) * scale + bias


def routed_ffn(x: np.ndarray, wr: np.ndarray, br: np.ndarray | None, w1: np.ndarray,
               b1: np.ndarray | None, w2: np.ndarray, b2: np.ndarray | None, *,
               activation_name: str = "gelu", selection: str = "topk", k: int = 1,
               router: str = "raw", x_coef=(1.0, 0.0), delta_coef=(0.0, 1.0),
               wa: np.ndarray | None = None, ba: np.ndarray | None = None,
               ln: tuple[np.ndarray, np.ndarray, float] | None = None,
               capacity: dict | None = None) -> np.ndarray:
    """``ai.fffc::RoutedFFN``: the FFN (on ``layer_norm`` of them with ``ln`` = (scale,
    bias, epsilon)) of the selected tokens only, combined with X. ``capacity``: k from the
    sequence length (``fffc.contract.ops.capacity_k``)."""
    if selection == "topk":
        k = capacity_k(x.shape[1], k, capacity)
    idx, w = route(x, wr, br, selection=selection, k=k, router=router, wa=wa, ba=ba)
    flat = np.asarray(x, dtype=np.float64).reshape(-1, x.shape[-1])
    y = flat.copy()
    if len(idx):
        inner = flat[idx] if ln is None else layer_norm(flat[idx], *ln)
        delta = sparse_ffn(inner, w1, b1, w2, b2, activation_name=activation_name)
        y[idx] = ((x_coef[0] + x_coef[1] * w)[:, None] * flat[idx]
                  + (delta_coef[0] + delta_coef[1] * w)[:, None] * delta)
    return y.reshape(x.shape)


def fast_feed_forward(x: np.ndarray, w_in: np.ndarray, b_in: np.ndarray, w_out: np.ndarray,
                      *, trees: int, depth: int, tie_break: str = "gt") -> np.ndarray:
    """``ai.fffc::FastFeedForward`` (UltraFastBERT hard walk), float64, over the last axis.

    ``w_out`` is stored row per node ([K·n, d_out]). ``z > 0`` goes right (``z >= 0`` with
    tie_break "ge").
    """
    n = 2 ** (depth + 1) - 1
    if w_in.shape[0] != trees * n:
        raise ValueError(f"W_in has {w_in.shape[0]} rows, expected trees·(2^(depth+1)-1) = "
                         f"{trees * n}")
    xd = np.asarray(x, dtype=np.float64).reshape(-1, w_in.shape[1])
    y = np.zeros((xd.shape[0], w_out.shape[1]))
    rows = np.arange(xd.shape[0])
    for k in range(trees):
        node = np.zeros(xd.shape[0], dtype=np.int64)
        for _ in range(depth + 1):
            r = k * n + node
            z = np.einsum("td,td->t", xd, w_in[r].astype(np.float64)) + b_in[r]
            y[rows] += activation("gelu", z)[:, None] * w_out[r].astype(np.float64)
            node = 2 * node + 1 + ((z >= 0) if tie_break == "ge" else (z > 0))
    return y.reshape(*np.shape(x)[:-1], w_out.shape[1])
