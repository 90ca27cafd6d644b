"""SparseFFN on int4 or int8 weights (``bits`` 4, 8): its inputs from a site's MatMulNBits projections,
and its fallback function, which dequantizes them in standard ops.

The gate and up projections are given as their MatMulNBits nodes hold them (the user's own
initializers: one row of blocks per neuron already); the down projection is re-laid out per
neuron (``fffc.contract.int4.columns``, ``fffc.contract.int8.columns``: the same codes, scales
and zero points, moved). The
fallback computes ``(code − zero point)·scale`` in float32 as ONNX Runtime dequantizes, then
the float FFN: the function the kernels compute (exact with respect to the dequantized
weights), not MatMulNBits' own arithmetic (``accuracy_level`` 4 quantizes x to int8).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from fffc.contract import int8
from fffc.contract.act_quant import At
from fffc.contract.int4 import (
    QDQ_BLOCK,
    Int4Weights,
    Q4Matrix,
    column_projections,
    columns,
    int4_weights,
)
from fffc.contract.kinds import QuantSource, SparseMode, WeightBits
from fffc.contract.ops import QUANT_INPUTS, SPARSE_FFN

from .. import canonical_quant, standard_forms
from .._common import MS, const_array, const_shape, dequantized, initializer

QUANT = QUANT_INPUTS[SPARSE_FFN.name]  # weight input → (scales input, zero points input)
NIBBLE = 16


def layout(inputs: dict[str, ir.Value | None]) -> Int4Weights | None:
    """The int4 layout of a dense or gated marker's weights (None: float weights); an error
    where they are quantized in a form SparseFFN's bits 4 cannot take (the plan leaves
    such sites as they were)."""
    formats = canonical_quant.formats(inputs)
    if not formats:
        return None
    names = [n for n in ("W1", "W2", "WU") if inputs.get(n) is not None]
    w1, w2 = const_shape(inputs["W1"]), const_shape(inputs["W2"])
    q = int4_weights(formats, names, w1[0], w1[1], w2[1],
                     static_activations=inputs.get("AQ") is not None)
    if isinstance(q, str):
        raise ValueError(f"int4 SparseFFN: {q}")
    return q


def _sources(value: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value | None]:
    """A quantized weight's MatMulNBits constants: codes, scales, zero points (or None)."""
    node = value.producer()
    if not dequantized(node):
        raise ValueError(f"weight {value.name!r} is not a quantized projection")
    b, scales, zp = [*node.inputs, None, None][:3]
    return b, scales, zp


def _matrix(value: ir.Value, zero_points: bool = False) -> Q4Matrix | int8.Q8Matrix:
    """A quantized weight in SparseFFN's layout (a row of blocks per output n); a QDQ int8
    weight per tensor or per channel mapped onto the 8-bit layout (``int8.from_per_channel``),
    with every zero point 128 spelled out where ``zero_points`` asks and it has none."""
    b, scales, zp = _sources(value)
    q = canonical_quant.format_of(value)
    if q.source is QuantSource.QDQ:
        m = int8.from_per_channel(const_array(b), const_array(scales), const_array(zp), q.axis,
                                  QDQ_BLOCK)
        if isinstance(m, str):
            raise ValueError(f"weight {value.name!r}: {m}")
        if zero_points and m.zero_points is None:
            m = dataclasses.replace(m, zero_points=np.full(
                m.scales.shape, int8.SYMMETRIC_ZERO_POINT, np.uint8))
        return m
    blocks = q.k // q.block_size
    if q.bits == WeightBits.INT8:
        zeros = const_array(zp)
        return int8.Q8Matrix(const_array(b).reshape(q.n, blocks, q.block_size),
                             const_array(scales).reshape(q.n, blocks),
                             None if zeros is None else zeros.reshape(q.n, blocks), q.k,
                             q.block_size)
    codes = const_array(b).reshape(q.n, blocks, q.block_size // 2)
    zeros = const_array(zp)
    return Q4Matrix(codes, const_array(scales).reshape(q.n, blocks),
                    None if zeros is None else zeros.reshape(q.n, -1), q.k, q.block_size)


def arrays(inputs: dict[str, ir.Value | None], q: Int4Weights,
           mode: SparseMode = SparseMode.EXACT) -> dict[str, np.ndarray]:
    """The op's weight inputs as arrays (W1, W1S, [W1Z], W2, ..., by op input name) in the
    layout of ``mode``'s int4 kernels (``column_projections``)."""
    out: dict[str, np.ndarray] = {}
    per_row = column_projections(mode)
    for name in ("W1", "W2", "WU"):
        if inputs.get(name) is None:
            continue
        m = _matrix(inputs[name], q.zero_points)
        scales, zeros = QUANT[name]
        if name not in per_row:
            out[name], out[scales], z = m.codes, m.scales, m.zero_points
        else:
            c = int8.columns(m) if isinstance(m, int8.Q8Matrix) else columns(m)
            out[name], out[scales], z = c.codes, c.scales, c.zero_points
        if q.zero_points:
            out[zeros] = z
    return out


def op_inputs(graph: ir.Graph, inputs: dict[str, ir.Value | None], q: Int4Weights,
              mode: SparseMode = SparseMode.EXACT) -> dict[str, ir.Value]:
    """The op's weight inputs as graph values: the user's MatMulNBits initializers for the
    projections ``mode``'s kernels read per neuron (a 3-D copy where the codes are stored in
    another shape), the columns of the others (``column_projections``: the down projection;
    in teal all three) as new initializers ``<codes>__columns``, ``<scales>__columns``, ...."""
    out: dict[str, ir.Value] = {}
    made = arrays(inputs, q, mode)
    per_row = column_projections(mode)
    for name in ("W1", "WU", "W2"):
        if inputs.get(name) is None:
            continue
        scales, zeros = QUANT[name]
        b, s, z = _sources(inputs[name])
        if canonical_quant.format_of(inputs[name]).source is QuantSource.QDQ:
            # codes moved to uint8, scales repeated per block: new initializers for all
            for op_name, source in ((name, b), (scales, s), (zeros, z if z is not None else s)):
                if op_name in made:
                    out[op_name] = initializer(graph, f"{source.name}__{op_name}_q8",
                                               made[op_name])
        elif name not in per_row:
            out[name] = b if tuple(b.shape or ()) == made[name].shape else initializer(
                graph, f"{b.name}__rows", made[name])
            out[scales] = s
            if q.zero_points:
                out[zeros] = z
        else:
            for op_name, source in ((name, b), (scales, s), (zeros, z)):
                if op_name in made:
                    out[op_name] = initializer(graph, f"{source.name}__columns",
                                               made[op_name])
    return out


# --------------------------------------------------------------- the fallback's dequantization
# In uint8 until the codes are whole, then float32: (code − zero point)·scale, each an exact
# small integer before the one rounding of the product (ONNX Runtime's value). ONNX Runtime
# folds these constants once when a session is made; uint8 keeps that cheap.


def _const(tape: ir.tape.Tape, values: list[int]) -> ir.Value:
    return tape.op("Constant", [], {"value": ir.tensor(np.array(values, dtype=np.int64))})


def _float(tape: ir.tape.Tape, v: ir.Value) -> ir.Value:
    return tape.op("Cast", [v], {"to": ir.DataType.FLOAT})


def _nibbles(tape: ir.tape.Tape, b: ir.Value, split: list[int], axis: int) -> ir.Value:
    """Each byte of ``b`` (uint8) as its low and high nibble: both reshaped to ``split``
    (Reshape's 0 = the same dim) and concatenated along ``axis`` (low first)."""
    four = tape.op("Constant", [], {"value": ir.tensor(np.array(4, dtype=np.uint8))})
    high = tape.op("BitShift", [b, four], {"direction": "RIGHT"})
    low = tape.op("Sub", [b, tape.op("BitShift", [high, four], {"direction": "LEFT"})])
    return tape.op("Concat", [tape.op("Reshape", [low, _const(tape, split)]),
                              tape.op("Reshape", [high, _const(tape, split)])], {"axis": axis})


def _dims(tape: ir.tape.Tape, v: ir.Value, start: int, end: int) -> ir.Value:
    return tape.op("Slice", [tape.op("Shape", [v]), _const(tape, [start]), _const(tape, [end])])


def _eight(tape: ir.tape.Tape, value: int = 8) -> ir.Value:
    """The zero point of codes whose node has none (8; 128 for 8-bit codes), as float32."""
    return tape.op("Constant", [], {"value": ir.tensor(np.array(value, dtype=np.float32))})


def dequantize_rows8(tape: ir.tape.Tape, b: ir.Value, s: ir.Value,
                     z: ir.Value | None) -> ir.Value:
    """W [N, K] float32 (a row per output) from MatMulNBits' 8-bit codes [N, KB, block],
    scales and zero points (one a byte)."""
    per_block = tape.op("Concat", [_dims(tape, b, 0, 2), _const(tape, [1])], {"axis": 0})
    zero = (_eight(tape, int8.SYMMETRIC_ZERO_POINT) if z is None
            else _float(tape, tape.op("Reshape", [z, per_block])))
    scale = tape.op("Reshape", [s, per_block])
    w = tape.op("Mul", [tape.op("Sub", [_float(tape, b), zero]), scale])
    return tape.op("Reshape", [w, _const(tape, [0, -1])])


def dequantize_columns8(tape: ir.tape.Tape, b: ir.Value, s: ir.Value,
                        z: ir.Value | None) -> ir.Value:
    """W2 [d_ff, d_out] float32 from its per-neuron 8-bit columns: codes [d_ff, d_out],
    scales and zero points [d_ff/block, d_out]."""
    groups, d_out = _dims(tape, s, 0, 1), _dims(tape, s, 1, 2)
    grouped = tape.op("Reshape", [b, tape.op("Concat", [groups, _const(tape, [-1]), d_out],
                                             {"axis": 0})])  # [G, block, d_out]
    zero = (_eight(tape, int8.SYMMETRIC_ZERO_POINT) if z is None
            else _float(tape, tape.op("Reshape", [z, _const(tape, [0, 1, -1])])))
    scale = tape.op("Reshape", [s, _const(tape, [0, 1, -1])])
    w = tape.op("Mul", [tape.op("Sub", [_float(tape, grouped), zero]), scale])
    return tape.op("Reshape", [w, tape.op("Concat", [_const(tape, [-1]), d_out], {"axis": 0})])


def dequantize_rows(tape: ir.tape.Tape, b: ir.Value, s: ir.Value,
                    z: ir.Value | None) -> ir.Value:
    """W [N, K] float32 (a row per output: per neuron for W1, WU) from MatMulNBits codes
    [N, KB, block/2], scales and packed zero points."""
    codes = tape.op("Reshape", [_nibbles(tape, b, [0, 0, 0, 1], 3),
                                _const(tape, [0, 0, -1])])  # [N, KB, block]
    rows_blocks = _dims(tape, b, 0, 2)  # [N, KB]
    if z is None:
        zero = _eight(tape)
    else:  # two a byte: [N · ceil(KB/2)] → [N, 2·ceil(KB/2)] → the first KB
        pairs = _nibbles(tape, z, [-1, 1], 1)
        per_row = tape.op("Reshape", [pairs, tape.op("Concat", [_dims(tape, b, 0, 1),
                                                                _const(tape, [-1])],
                                                     {"axis": 0})])
        kept = tape.op("Slice", [per_row, _const(tape, [0]), _dims(tape, b, 1, 2),
                                 _const(tape, [1])])
        zero = _float(tape, tape.op("Reshape", [kept, _const(tape, [0, 0, 1])]))
    scale = tape.op("Reshape", [s, tape.op("Concat", [rows_blocks, _const(tape, [1])],
                                           {"axis": 0})])
    w = tape.op("Mul", [tape.op("Sub", [_float(tape, codes), zero]), scale])
    return tape.op("Reshape", [w, _const(tape, [0, -1])])


def dequantize_columns(tape: ir.tape.Tape, b: ir.Value, s: ir.Value,
                       z: ir.Value | None) -> ir.Value:
    """W2 [d_ff, d_out] float32 from its per-neuron columns: codes [d_ff, d_out/2] in chunks
    of 32 outputs, scales and zero points [d_ff/block, d_out]."""
    chunks = tape.op("Reshape", [b, _const(tape, [0, -1, NIBBLE])])
    codes = tape.op("Reshape", [_nibbles(tape, chunks, [0, 0, 1, NIBBLE], 2),
                                _const(tape, [0, -1])])  # [d_ff, d_out]
    groups, d_out = _dims(tape, s, 0, 1), _dims(tape, s, 1, 2)
    grouped = tape.op("Reshape", [codes, tape.op("Concat", [groups, _const(tape, [-1]), d_out],
                                                 {"axis": 0})])  # [G, block, d_out]
    zero = (_eight(tape) if z is None
            else _float(tape, tape.op("Reshape", [z, _const(tape, [0, 1, -1])])))
    scale = tape.op("Reshape", [s, _const(tape, [0, 1, -1])])
    w = tape.op("Mul", [tape.op("Sub", [_float(tape, grouped), zero]), scale])
    return tape.op("Reshape", [w, tape.op("Concat", [_const(tape, [-1]), d_out], {"axis": 0})])


def nbits_matmul(tape: ir.tape.Tape, x: ir.Value, b: ir.Value, s: ir.Value, z: ir.Value | None,
                 k: int, n: int, block: int, bits: int = 4) -> ir.Value:
    """``x · W`` by ONNX Runtime's MatMulNBits on codes ``b`` (``bits`` 4 or 8) in float32
    (accuracy_level 0: x times the dequantized weight)."""
    return tape.op("MatMulNBits", [x, b, s, *([z] if z is not None else [])],
                   {"K": k, "N": n, "bits": int(bits), "block_size": block,
                    "accuracy_level": 0}, domain=MS)


def fake_quant_at(tape: ir.tape.Tape, v: ir.Value, aq: ir.Value, at: At) -> ir.Value:
    """Place ``at``'s fake quantization of v, its (s, z, qmin, qmax) read from the op's AQ
    at run time: (Clip(Round(v / s) + z, qmin, qmax) − z)·s in float32 — QuantizeLinear
    then DequantizeLinear's arithmetic (Round: half to even)."""
    row = tape.op("Gather", [aq, _const(tape, [int(at)])], {"axis": 0})  # [1, 4]
    s, z, lo, hi = (tape.op("Squeeze", [tape.op("Gather", [row, _const(tape, [i])],
                                                {"axis": 1})]) for i in range(4))
    q = tape.op("Clip", [tape.op("Add", [tape.op("Round", [tape.op("Div", [v, s])]), z]), lo, hi])
    return tape.op("Mul", [tape.op("Sub", [q, z]), s])


def exact_ffn(tape: ir.tape.Tape, f: dict[str, ir.Value | None], activation: str,
              up_activation: str, opset: int, q: Int4Weights, d_in: int,
              d_ff: int, act_quant: frozenset[At] = frozenset()) -> ir.Value:
    """SparseFFN exact on int4 or int8 weights (the op's inputs ``f`` by name) in standard ops and
    MatMulNBits: its fallback. The gate and up projections by MatMulNBits in float32 on x
    (rounded to int8 per block first with ``q.int8_x``), the down projection's columns
    dequantized (folded once by ONNX Runtime) and multiplied in float32."""
    def fq(at: At, v: ir.Value) -> ir.Value:  # ``act_quant``: the places AQ fills
        return fake_quant_at(tape, v, f["AQ"], at) if at in act_quant else v

    x = standard_forms.quantize_x(tape, f["X"], q.block, opset) if q.int8_x else f["X"]
    h = fq(At.PRE, nbits_matmul(tape, x, f["W1"], f["W1S"], f["W1Z"], d_in, d_ff, q.block,
                                q.bits))
    if f["B1"] is not None:
        h = tape.op("Add", [h, f["B1"]])
    a = standard_forms.activation(tape, activation, h, opset)
    if f["WU"] is not None:
        u = nbits_matmul(tape, x, f["WU"], f["WUS"], f["WUZ"], d_in, d_ff, q.block, q.bits)
        a = tape.op("Mul", [fq(At.GATE, a),
                            fq(At.UP, standard_forms.activation(tape, up_activation, u, opset))])
    a = fq(At.HIDDEN, a)
    down = dequantize_columns8 if q.bits is WeightBits.INT8 else dequantize_columns
    y = tape.op("MatMul", [a, down(tape, f["W2"], f["W2S"], f["W2Z"])])
    return y if f["B2"] is None else tape.op("Add", [y, f["B2"]])


def dequantized_weights(tape: ir.tape.Tape, f: dict[str, ir.Value | None],
                        mode: SparseMode) -> tuple[dict[str, ir.Value | None], set[str]]:
    """The op's int4 weights W1, W2, WU (``f``: the op's inputs by name) in ``mode``'s
    layout, dequantized to float32 in standard ops as ONNX Runtime dequantizes them; and
    which of them are stored a row per neuron ([d_ff, d_in]; the others [K, N])."""
    per_row = column_projections(mode)
    out: dict[str, ir.Value | None] = {}
    rows: set[str] = set()
    for name in ("W1", "W2", "WU"):
        scales, zeros = QUANT[name]
        if f[name] is None:
            out[name] = None
        elif name in per_row:
            out[name] = dequantize_columns(tape, f[name], f[scales], f[zeros])
        else:
            out[name] = dequantize_rows(tape, f[name], f[scales], f[zeros])
            rows.add(name)
    return out, rows


def float_down(tape: ir.tape.Tape, w2: ir.Value) -> ir.Value:
    """A quantized down projection ``w2`` (a marker's W2) as float32 ``[d_ff, d_out]``
    dequantized from the user's MatMulNBits constants in standard ops: the values the
    fallback's columns give, in the same float32 product."""
    if canonical_quant.format_of(w2).source is QuantSource.QDQ:
        return w2  # restored as its DequantizeLinear: ONNX Runtime's float32 values already
    b, s, z = _sources(w2)
    rows = (dequantize_rows8 if canonical_quant.format_of(w2).bits == WeightBits.INT8
            else dequantize_rows)
    return tape.op("Transpose", [rows(tape, b, s, z)], {"perm": [1, 0]})
