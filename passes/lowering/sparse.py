"""Dense and gated FFN sites: ``ai.fffc::SparseFFN``, or the FFN (masked or not) in standard ops.

One path serves every SparseFFN mode: the mode's registry entry says which inputs are stored
row per neuron (``layouts``) and which inputs its planned parameters make (``params``:
``PARAMS`` below), and the fallback function and its overload name follow from the same
declarations. With ``max_tokens`` the site becomes ``If(tokens <= max_tokens, SparseFFN,
the original FFN in standard ops)`` (the masked FFN with ``Branch.MASKED``: prefill sparse).
A site left as it was becomes the FFN in standard ops, with the plan's ``Masks`` applied
when it has them (the reference a masked mode must equal).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from fffc.contract.act_quant import At, unpack
from fffc.contract.int4 import INT8_ACCURACY, Int4Weights, Int8Rounding, int8_rounding
from fffc.contract.kinds import Branch, SiteKind, SparseMode
from fffc.contract.lowering import Masks, SiteLowering
from fffc.contract.modes import MODES, Behaviour, Layout, Mode, Param, mode, register
from fffc.contract.ops import SPARSE_FFN

from .. import canonical_quant, standard_forms
from .._common import MS, const_array, const_shape, initializer
from ..markers import FFNMarker
from . import int4
from ._emit import (
    Lowering,
    fallback,
    fffc_node,
    laid_out,
    provenance,
    replace,
    taped,
    token_dispatch,
)

INPUT_NAMES = [a.name for a in SPARSE_FFN.inputs]
DEFAULT_MODE = SparseMode(SPARSE_FFN.attribute("mode").default)  # no suffix in overload names

Centers = tuple[np.ndarray | None, np.ndarray | None]  # (c_in [d_in], c_hidden [d_ff])


def fold_centers(w1: np.ndarray, b1: np.ndarray | None, w2: np.ndarray, b2: np.ndarray | None,
                 centers: Centers) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(B1, B2) of a centered teal SparseFFN: the centers' share added, B1 + XC·W1 and
    B2 + HC·W2 (summed in float64, stored float32), so that thresholding x - XC and
    a - HC computes the FFN with each entry near its center replaced by the center."""
    c_in, c_hidden = centers

    def plus(b, c, w):
        if c is None:
            return b
        s = np.asarray(c, np.float64) @ np.asarray(w, np.float64)
        return (s if b is None else s + np.asarray(b, np.float64)).astype(np.float32)

    return plus(b1, c_in, w1), plus(b2, c_hidden, w2)


# --------------------------------------------------------------- the plan's parameters


def th_array(masks: Masks, entry: Mode) -> np.ndarray:
    """TH = [t0, t1] (float32; negative = off): the ``Masks`` fields the mode names."""
    return np.array([-1.0 if t is None else t for t in (getattr(masks, f) for f in
                                                        entry.th_fields)], dtype=np.float32)


def center_arrays(centers: Centers) -> Centers:
    return tuple(None if c is None else np.asarray(c, np.float32) for c in centers)


def centered(arrays: dict[str, np.ndarray | None], centers: Centers) -> dict[str, np.ndarray]:
    """XC, HC and the biases holding their share (only the inputs the centers change)."""
    c_in, c_hidden = centers
    b1, b2 = fold_centers(arrays["W1"], arrays.get("B1"), arrays["W2"], arrays.get("B2"),
                          centers)
    return {**({"XC": c_in, "B1": b1} if c_in is not None else {}),
            **({"HC": c_hidden, "B2": b2} if c_hidden is not None else {})}


def predictor_arrays(masks: Masks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(np.asarray(a, dtype=np.float32) for a in masks.predictor)


@dataclass(frozen=True)
class MaskValues:
    """A site's masks as graph values: its centers and its predictor (PC switched)."""

    centers: tuple[ir.Value | None, ir.Value | None] = (None, None)
    predictor: tuple[ir.Value, ir.Value, ir.Value] | None = None


def _mask_values(ctx: Lowering, tape: ir.tape.Tape, m: FFNMarker,
                 masks: Masks | None) -> MaskValues:
    """``<site>__center_{in,hidden}`` and ``<site>__predictor_{a,b,c}`` initializers (float32);
    a predictor switch is added to PC on ``tape``."""
    if masks is None:
        return MaskValues()
    centers = (None, None)
    if masks.centers is not None:
        if masks.centers[0] is not None and m.kind is SiteKind.GATED:
            raise ValueError(f"site {m.name!r}: a gated FFN's input has no center (its up "
                             "projection has no bias to hold the center's share)")
        centers = tuple(None if c is None else initializer(ctx.graph,
                                                           f"{m.name}__center_{part}", c)
                        for part, c in zip(("in", "hidden"), center_arrays(masks.centers),
                                           strict=True))
    predictor = None
    if masks.predictor is not None:
        predictor = tuple(initializer(ctx.graph, f"{m.name}__predictor_{part}", arr)
                          for part, arr in zip("abc", predictor_arrays(masks), strict=True))
        if masks.predictor_switch is not None:  # the switch of a searched model
            predictor = (*predictor[:2], tape.op("Add", [predictor[2], masks.predictor_switch]))
    return MaskValues(centers, predictor)


@dataclass(frozen=True)
class ParamInputs:
    """The SparseFFN inputs a ``Param`` makes (``arrays``: as arrays, for ``site_inputs``;
    ``lower``: as graph values, the lowering's), the ``Masks`` fields it reads, whether a
    plan must give it (``given``), and whether the overload name lists its inputs (a site of
    the mode may lack them) or the mode implies them."""

    names: tuple[str, ...]
    fields: Callable[[Mode], tuple[str, ...]]
    given: Callable[[Masks | None], bool]
    named: bool
    arrays: Callable[[dict, Masks, Mode], dict[str, np.ndarray]]
    lower: Callable[[Lowering, FFNMarker, Masks, Mode, MaskValues], dict[str, ir.Value]]


def _thresholds(ctx: Lowering, m: FFNMarker, masks: Masks, entry: Mode,
                values: MaskValues) -> dict[str, ir.Value]:
    return {"TH": initializer(ctx.graph, f"{m.name}__teal_thresholds", th_array(masks, entry))}


def _centers(ctx: Lowering, m: FFNMarker, masks: Masks, entry: Mode,
             values: MaskValues) -> dict[str, ir.Value]:
    xc, hc = values.centers
    if xc is None and hc is None:
        return {}
    weights = {n: const_array(v) if v is not None else None for n, v in m.inputs.items()}
    share = centered(weights, tuple(None if c is None else const_array(c) for c in (xc, hc)))
    return {"XC": xc, "HC": hc,
            **{n: initializer(ctx.graph, f"{m.name}__centered_{n.lower()}", share[n])
               for n in ("B1", "B2") if n in share}}


PARAMS: dict[Param, ParamInputs] = {
    Param.THRESHOLDS: ParamInputs(
        ("TH",), lambda entry: entry.th_fields, lambda masks: masks is not None, named=False,
        arrays=lambda arrays, masks, entry: {"TH": th_array(masks, entry)}, lower=_thresholds),
    Param.CENTERS: ParamInputs(
        ("XC", "HC"), lambda entry: ("centers",), lambda masks: True, named=True,
        arrays=lambda arrays, masks, entry: (centered(arrays, center_arrays(masks.centers))
                                             if masks.centers is not None else {}),
        lower=_centers),
    Param.PREDICTOR: ParamInputs(
        ("PA", "PB", "PC"), lambda entry: ("predictor", "predictor_switch"),
        lambda masks: masks is not None and masks.predictor is not None, named=False,
        arrays=lambda arrays, masks, entry: dict(zip(("PA", "PB", "PC"),
                                                     predictor_arrays(masks), strict=True)),
        lower=lambda ctx, m, masks, entry, values: dict(zip(("PA", "PB", "PC"),
                                                            values.predictor, strict=True))),
}


def own_masks(masks: Masks | None, entry: Mode) -> Masks | None:
    """The part of ``masks`` the mode computes with (its params' fields), None without."""
    if masks is None:
        return None
    return Masks(**{f: getattr(masks, f) for p in entry.params for f in PARAMS[p].fields(entry)})


# --------------------------------------------------------------- standard ops


def masked_ffn(tape: ir.tape.Tape, m: FFNMarker, masks: Masks | None, values: MaskValues,
               opset: int, rounding: Int8Rounding | None = None) -> ir.Value:
    """The marker's FFN in standard ops, the masks applied (the masked modes' reference;
    ``rounding``: where an int4 site at accuracy_level 4 rounds to int8, ``standard_forms.ffn``)."""
    v, masks = m.inputs, masks or Masks()
    return standard_forms.ffn(
        tape, v["X"], v["W1"], v["B1"], v["W2"], v["B2"], v["WU"],
        activation_name=m.activation, up_activation=m.up_activation, opset=opset,
        wu_rows=False, thresholds=(masks.input, masks.hidden), predictor=values.predictor,
        gate_threshold=masks.gate, centers=values.centers,
        act_quant=unpack(const_array(v["AQ"])), rounding=rounding)


def in_float(m: FFNMarker) -> Int4Weights | None:
    """The marker's quantized projections restored to compute on their dequantized weights
    in float32 (MatMulNBits at accuracy_level 0: the int4 kernels' function before any
    rounding to int8, which ``int8_rounding`` places); its int4 layout (None: float)."""
    q = int4.layout(m.inputs)
    for v in m.inputs.values():
        if v is not None:
            canonical_quant.in_float(v)
    return q


def keep(ctx: Lowering, m: FFNMarker, plan: SiteLowering) -> None:
    """A site left as it was: the FFN in standard ops, with the plan's masks if any (and
    with ``plan.dequantized``, on its weights' dequantized values in float32: its MatMulNBits
    at accuracy_level 0, x rounded to int8 per block first where the int4 kernels do so;
    no float32 copy of a weight; ``plan.dequantized``: the mode whose kernels round)."""
    tape = ir.tape.Tape()
    values = _mask_values(ctx, tape, m, plan.masks)
    rounding = None
    if plan.dequantized:  # what the fallback computes, in the same float32 operations
        q = in_float(m)
        rounding = int8_rounding(q, plan.dequantized)
        if q is not None:
            m = dataclasses.replace(m, inputs=m.inputs | {
                "W2": int4.float_down(tape, m.inputs["W2"])})
    replace(m.node, tape, masked_ffn(tape, m, plan.masks, values, ctx.opset, rounding))


# --------------------------------------------------------------- SparseFFN


def overload_for(activation: str, up_activation: str, present: dict[str, bool],
                 entry: Mode) -> str:
    """Deterministic overload name: one fallback function per op configuration (the
    optional inputs a site of the mode may or may not have, and the mode)."""
    implied = {n for p in PARAMS.values() if not p.named for n in p.names}
    flags = "".join(a.name.lower() for a in SPARSE_FFN.inputs
                    if a.optional and present[a.name] and a.name not in implied)
    suffix = "" if entry.sparse_mode == DEFAULT_MODE else f"_{entry.sparse_mode}"
    return f"{activation}_{up_activation}_{flags or 'nobias'}{suffix}"


def int4_function(overload: str, present: dict[str, bool], act: str, up_act: str, opset: int,
                  q: Int4Weights, d_in: int, d_ff: int,
                  act_quant: frozenset[At] = frozenset()) -> ir.Function:
    """SparseFFN's fallback on int4 weights (``int4.exact_ffn``; ``act_quant``: the places
    its AQ fills)."""
    formals = [ir.Value(name=n) for n in INPUT_NAMES]
    f = {v.name: v if present[v.name] else None for v in formals}
    tape = ir.tape.Tape()
    y = int4.exact_ffn(tape, f, act, up_act, opset, q, d_in, d_ff, act_quant)
    return fallback(SPARSE_FFN, overload, formals, tape, y, opset, {MS: 1})


def sparse_function(overload: str, present: dict[str, bool], act: str, up_act: str,
                    opset: int, entry: Mode, int4_weights: bool = False,
                    rounding: Int8Rounding | None = None) -> ir.Function:
    """SparseFFN's fallback for a mode: its inputs in the mode's layouts, TH read as the
    mode's ``th_fields``, the centered form (XC, HC subtracted) where given; with
    ``int4_weights`` (a masked mode's bits 4), the weights dequantized in standard ops from
    the layout of the mode's int4 kernels first (``int4.dequantized_weights``), rounded to
    int8 per block as ``rounding`` says (accuracy_level 4: ``int8_rounding``)."""
    formals = [ir.Value(name=n) for n in INPUT_NAMES]
    f = {v.name: v if present[v.name] else None for v in formals}
    tape = ir.tape.Tape()
    rows = {n for n, layout in entry.layouts.items() if layout is Layout.ROWS}
    if int4_weights:
        weights, rows = int4.dequantized_weights(tape, f, entry.sparse_mode)
        f = f | weights
    masks = Masks()
    if Param.THRESHOLDS in entry.params:  # TH [t0, t1] → two scalars
        t = (tape.op("Gather", [f["TH"], tape.op("Constant", [], {
            "value": ir.tensor(np.array(i, dtype=np.int64))})], {"axis": 0}) for i in (0, 1))
        masks = Masks(**dict(zip(entry.th_fields, t, strict=True)))
    y = standard_forms.ffn(
        tape, f["X"], f["W1"], f["B1"], f["W2"], f["B2"], f["WU"], activation_name=act,
        up_activation=up_act, opset=opset, wu_rows="WU" in rows,
        thresholds=(masks.input, masks.hidden), w1_rows="W1" in rows,
        predictor=((f["PA"], f["PB"], f["PC"]) if Param.PREDICTOR in entry.params else None),
        gate_threshold=masks.gate, centers=(f["XC"], f["HC"]), keep_centers=False,
        rounding=rounding)
    return fallback(SPARSE_FFN, overload, formals, tape, y, opset)


def _sparse_node(ctx: Lowering, m: FFNMarker, tape: ir.tape.Tape, entry: Mode, masks: Masks,
                 values: MaskValues) -> ir.Value:
    """The SparseFFN node of a marker (and its fallback function, once per overload); int4
    weights as their codes (``int4``)."""
    q = int4.layout(m.inputs)
    if q is None:
        inputs = dict.fromkeys(INPUT_NAMES) | laid_out(ctx.graph, m.inputs, entry)
    else:
        inputs = dict.fromkeys(INPUT_NAMES) | m.inputs | int4.op_inputs(ctx.graph, m.inputs, q,
                                                                       entry.sparse_mode)
    if m.inputs["AQ"] is not None and (q is None or entry.sparse_mode is not SparseMode.EXACT):
        raise ValueError(f"site {m.name!r}: fake-quantized activations (AQ) are computed by "
                         "the int8 exact kernels only")
    for p in entry.params:
        inputs |= PARAMS[p].lower(ctx, m, masks, entry, values)
    present = {n: v is not None for n, v in inputs.items()}
    overload = overload_for(m.activation, m.up_activation, present, entry)
    attrs = {"activation": m.activation, "up_activation": m.up_activation,
             "mode": str(entry.sparse_mode)}
    build = lambda: sparse_function(overload, present, m.activation,  # noqa: E731
                                    m.up_activation, ctx.opset, entry)
    if q is not None:  # the fallback's MatMulNBits name the shapes: one per shape and layout
        attrs["bits"] = int(q.bits)
        d_in, d_ff = const_shape(m.inputs["W1"])
        overload += f"_q{int(q.bits)}_{d_in}x{d_ff}b{q.block}"
        if q.int8_x:
            attrs["accuracy_level"] = INT8_ACCURACY
            overload += "i8"
        places = frozenset(unpack(const_array(m.inputs["AQ"])))
        if places:  # one fallback per set of fake-quantized places
            overload += "_aq" + "".join(str(int(at)) for at in sorted(places))
        if entry.sparse_mode is SparseMode.EXACT:
            build = lambda: int4_function(overload, present, m.activation,  # noqa: E731
                                          m.up_activation, ctx.opset, q, d_in, d_ff, places)
        else:
            build = lambda: sparse_function(overload, present, m.activation,  # noqa: E731
                                            m.up_activation, ctx.opset, entry, True,
                                            int8_rounding(q, entry.sparse_mode))
    return fffc_node(ctx, tape, m, SPARSE_FFN, inputs, attrs, overload, build, provenance(m))


def lower_sparse(ctx: Lowering, m: FFNMarker, plan: SiteLowering) -> None:
    """A site planned with a SparseFFN mode: the op, its inputs and fallback from the mode's
    entry; with ``plan.max_tokens``, behind ``If(tokens <= max_tokens)`` with the original
    FFN beyond (or, ``Branch.MASKED``, the FFN masked as the op masks it) in standard ops."""
    entry = mode(plan.decision)
    for p in entry.params:
        if not PARAMS[p].given(plan.masks):
            raise ValueError(f"site {m.name!r}: mode {entry.sparse_mode} needs its parameters")
    masks = own_masks(plan.masks, entry) or Masks()
    tape = ir.tape.Tape()
    values = _mask_values(ctx, tape, m, masks)
    if plan.max_tokens <= 0:
        replace(m.node, tape, _sparse_node(ctx, m, tape, entry, masks, values))
        return
    kernel = ir.tape.Tape()
    out = _sparse_node(ctx, m, kernel, entry, masks, values)
    beyond = ir.tape.Tape()
    masked = plan.beyond is Branch.MASKED
    rounding = None
    if masked:  # the function the kernels compute (int4: W2 still by MatMulNBits, level 0)
        rounding = int8_rounding(in_float(m), entry.sparse_mode)
    beyond_out = masked_ffn(beyond, m, masks if masked else None,
                            values if masked else MaskValues(), ctx.opset, rounding)
    d_in = const_shape(m.inputs["W1"])[0]
    replace(m.node, tape, token_dispatch(
        tape, m, d_in, plan.max_tokens, (list(kernel.nodes), out),
        taped(beyond, beyond_out, f"{m.name}/{plan.beyond}")))


for _entry in MODES.values():  # every SparseFFN mode is lowered by the one path above
    if _entry.op is SPARSE_FFN:
        register(_entry.decision, Behaviour.LOWER)(lower_sparse)
