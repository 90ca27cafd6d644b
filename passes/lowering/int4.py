"""SparseFFN on int4 weights (``bits`` 4): its inputs from a site's MatMulNBits projections,
and its fallback function, which dequantizes them in standard ops.

The gate and up projections are given as their MatMulNBits nodes hold them (the user's own
initializers: one row of blocks per neuron already); the down projection is re-laid out per
neuron (``fffc.contract.int4.columns``: the same codes, scales and zero points, moved). The
fallback computes ``(code − zero point)·scale`` in float32 as ONNX Runtime dequantizes, then
the float FFN: the function the kernels compute (exact with respect to the dequantized
weights), not MatMulNBits' own arithmetic (``accuracy_level`` 4 quantizes x to int8).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from fffc.contract.int4 import Int4Weights, Q4Matrix, columns, int4_weights
from fffc.contract.ops import QUANT_INPUTS, SPARSE_FFN

from .. import canonical_quant
from .._common import const_array, dequantized, initializer

QUANT = QUANT_INPUTS[SPARSE_FFN.name]  # weight input → (scales input, zero points input)
ROWS = ("W1", "WU")  # stored as MatMulNBits stores them: a row of blocks per neuron
NIBBLE = 16


def layout(inputs: dict[str, ir.Value | None]) -> Int4Weights | None:
    """The int4 layout of a dense or gated marker's weights (None: float weights); an error
    where they are quantized in a form SparseFFN's bits 4 cannot take (the plan leaves
    such sites as they were)."""
    formats = canonical_quant.formats(inputs)
    if not formats:
        return None
    names = [n for n in ("W1", "W2", "WU") if inputs.get(n) is not None]
    w1, w2 = const_array(inputs["W1"]).shape, const_array(inputs["W2"]).shape
    q = int4_weights(formats, names, w1[0], w1[1], w2[1])
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


def _matrix(value: ir.Value) -> Q4Matrix:
    b, scales, zp = _sources(value)
    q = canonical_quant.format_of(value)
    blocks = q.k // q.block_size
    codes = const_array(b).reshape(q.n, blocks, q.block_size // 2)
    zeros = const_array(zp)
    return Q4Matrix(codes, const_array(scales).reshape(q.n, blocks),
                    None if zeros is None else zeros.reshape(q.n, -1), q.k, q.block_size)


def arrays(inputs: dict[str, ir.Value | None], q: Int4Weights) -> dict[str, np.ndarray]:
    """The op's weight inputs as arrays (W1, W1S, [W1Z], W2, ..., by op input name)."""
    out: dict[str, np.ndarray] = {}
    for name in ("W1", "W2", "WU"):
        if inputs.get(name) is None:
            continue
        m = _matrix(inputs[name])
        scales, zeros = QUANT[name]
        if name in ROWS:
            out[name], out[scales], z = m.codes, m.scales, m.zero_points
        else:
            c = columns(m)
            out[name], out[scales], z = c.codes, c.scales, c.zero_points
        if q.zero_points:
            out[zeros] = z
    return out


def op_inputs(graph: ir.Graph, inputs: dict[str, ir.Value | None],
              q: Int4Weights) -> dict[str, ir.Value]:
    """The op's weight inputs as graph values: the user's MatMulNBits initializers for W1 and
    WU (a 3-D copy where the codes are stored in another shape), the down projection's
    columns as new initializers ``<codes>__columns``, ``<scales>__columns``, ...."""
    out: dict[str, ir.Value] = {}
    made = arrays(inputs, q)
    for name in ("W1", "WU", "W2"):
        if inputs.get(name) is None:
            continue
        scales, zeros = QUANT[name]
        b, s, z = _sources(inputs[name])
        if name in ROWS:
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


def _const(tape: ir.tape.Tape, values: list[int]) -> ir.Value:
    return tape.op("Constant", [], {"value": ir.tensor(np.array(values, dtype=np.int64))})


def _int(tape: ir.tape.Tape, v: ir.Value) -> ir.Value:
    return tape.op("Cast", [v], {"to": ir.DataType.INT32})


def _nibbles(tape: ir.tape.Tape, b: ir.Value, split: list[int],
             axis: int) -> ir.Value:
    """Each byte of ``b`` (int32) as its low and high nibble: both reshaped to ``split``
    (Reshape's 0 = the same dim) and concatenated along ``axis`` (low first)."""
    sixteen = tape.op("Constant", [], {"value": ir.tensor(np.array(NIBBLE, dtype=np.int32))})
    low = tape.op("Reshape", [tape.op("Mod", [b, sixteen]), _const(tape, split)])
    high = tape.op("Reshape", [tape.op("Div", [b, sixteen]), _const(tape, split)])
    return tape.op("Concat", [low, high], {"axis": axis})


def _dims(tape: ir.tape.Tape, v: ir.Value, start: int, end: int) -> ir.Value:
    return tape.op("Slice", [tape.op("Shape", [v]), _const(tape, [start]), _const(tape, [end])])


def dequantize_rows(tape: ir.tape.Tape, b: ir.Value, s: ir.Value,
                    z: ir.Value | None) -> ir.Value:
    """W [d_ff, d_in] float32 from MatMulNBits codes [d_ff, KB, block/2], scales and packed
    zero points."""
    codes = tape.op("Reshape", [_nibbles(tape, _int(tape, b), [0, 0, 0, 1], 3),
                                _const(tape, [0, 0, -1])])  # [d_ff, KB, block]
    rows_blocks = _dims(tape, b, 0, 2)  # [d_ff, KB]
    if z is None:
        zero = tape.op("Constant", [], {"value": ir.tensor(np.array(8, dtype=np.int32))})
    else:  # two a byte: [d_ff · ceil(KB/2)] → [d_ff, 2·ceil(KB/2)] → the first KB
        pairs = _nibbles(tape, _int(tape, z), [-1, 1], 1)
        per_row = tape.op("Reshape", [pairs, tape.op("Concat", [_dims(tape, b, 0, 1),
                                                                _const(tape, [-1])],
                                                     {"axis": 0})])
        kept = tape.op("Slice", [per_row, _const(tape, [0]), _dims(tape, b, 1, 2),
                                 _const(tape, [1])])
        zero = tape.op("Reshape", [kept, _const(tape, [0, 0, 1])])
    scale = tape.op("Reshape", [s, tape.op("Concat", [rows_blocks, _const(tape, [1])],
                                           {"axis": 0})])
    w = tape.op("Mul", [tape.op("Cast", [tape.op("Sub", [codes, zero])],
                                {"to": ir.DataType.FLOAT}), scale])
    return tape.op("Reshape", [w, _const(tape, [0, -1])])


def dequantize_columns(tape: ir.tape.Tape, b: ir.Value, s: ir.Value,
                       z: ir.Value | None) -> ir.Value:
    """W2 [d_ff, d_out] float32 from its per-neuron columns: codes [d_ff, d_out/2] in chunks
    of 32 outputs, scales and zero points [d_ff/block, d_out]."""
    chunks = tape.op("Reshape", [_int(tape, b), _const(tape, [0, -1, NIBBLE])])
    codes = tape.op("Reshape", [_nibbles(tape, chunks, [0, 0, 1, NIBBLE], 2),
                                _const(tape, [0, -1])])  # [d_ff, d_out]
    groups, d_out = _dims(tape, s, 0, 1), _dims(tape, s, 1, 2)
    grouped = tape.op("Reshape", [codes, tape.op("Concat", [groups, _const(tape, [-1]), d_out],
                                                 {"axis": 0})])  # [G, block, d_out]
    zero = (tape.op("Constant", [], {"value": ir.tensor(np.array(8, dtype=np.int32))})
            if z is None else tape.op("Reshape", [_int(tape, z), _const(tape, [0, 1, -1])]))
    scale = tape.op("Reshape", [s, _const(tape, [0, 1, -1])])
    w = tape.op("Mul", [tape.op("Cast", [tape.op("Sub", [grouped, zero])],
                                {"to": ir.DataType.FLOAT}), scale])
    return tape.op("Reshape", [w, tape.op("Concat", [_const(tape, [-1]), d_out], {"axis": 0})])

