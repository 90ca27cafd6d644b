"""Canonical quantized projections: ``MatMul(x, Dequantized(codes, scales, zero points))``.

Every quantized form the ONNX tools write (``fffc.contract.quant``) becomes one standard
``MatMul`` whose weight is an ``ai.fffc.canon::Dequantized`` node: its inputs are the
source's constants (the very initializers, never copied), its attributes the typed
``QuantizedWeight`` record, the source nodes' names and the source node's own attributes
(``source_*``). ``const_array`` reads such a weight as its float32 ``W [K, N]``, so the FFN
rules, the sites, verification and the NumPy reference see one linear form for float and
quantized projections alike, and a site's marker knows its weight format from its inputs
(``formats``).

The source nodes are not kept as nodes: ``restore`` rebuilds them from the record, the
names and the attributes, reading the same initializers, so a projection left as it was
(every one outside a site, and every quantized site: fffc has no kernels for these formats)
comes back as the user's nodes, codes and scales byte for byte — never as a float32
``MatMul``. ``legalize`` calls it; a ``Dequantized`` weight read by anything but a
``MatMul``'s B input is an error there.

An activation's ``QuantizeLinear → DequantizeLinear`` pair (``quantize_static``'s QDQ
format: one constant per-tensor scale and zero point shared by both) becomes one
``ai.fffc.canon::FakeQuant(v, scale, zero_point)`` (``fffc.contract.act_quant``), a ReLU
made explicit before it where the zero point is the code type's minimum (the quantizer
fuses a ReLU so; the function is the same, ``act_quant``); ``restore`` rebuilds the pair
from the same initializers and names (an explicit ReLU stays, computing nothing new).

Refused (left in their source form, and named in near misses by ``why_not``):
``MatMulNBits`` with ``g_idx`` (act order), a bias, float zero points or bits other than
4 and 8; non-float32 scales; weights that are not constants.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from fffc.contract.act_quant import CODE_RANGES, FakeQuant
from fffc.contract.kinds import Granularity, QuantSource
from fffc.contract.quant import QuantizedWeight, nbits_zero_points

from ._common import (
    CANON,
    DEQUANTIZED,
    MS,
    best_failure,
    const_array,
    dequantized,
    initializer,
    quantized_record,
)

_SOURCE = "source_"  # prefix of a source node's attributes kept on the canonical weight
_INT_CODES = {"int8": (8, True), "uint8": (8, False), "int4": (4, True), "uint4": (4, False)}


def _constant(r: pattern.MatchResult, v: ir.Value | None, what: str) -> pattern.MatchResult:
    if v is not None and const_array(v) is None:
        return r.fail(f"{what}: expected a constant initializer, got a computed tensor", v)
    return r


def _float32_scales(r: pattern.MatchResult, s: ir.Value, what: str) -> pattern.MatchResult:
    dtype = const_array(s).dtype.name
    if dtype != "float32":
        return r.fail(f"{what}: expected float32 scales, got {dtype} (a {dtype} model: "
                      "fffc's FFN ops take float32 activations)", s)
    return r


def _neutral(zp: np.ndarray | None, midpoint: int) -> bool:
    return zp is None or bool(np.all(np.asarray(zp).astype(np.int32) == midpoint))


def _weight(op, record: QuantizedWeight, inputs: list[ir.Value | None], names: list[str],
            source: ir.Node | None) -> ir.Value:
    """The canonical ``Dequantized`` weight (float32 ``[K, N]``)."""
    while inputs and inputs[-1] is None:
        inputs = inputs[:-1]
    attrs = {**record.to_attributes(), "original_names": names}
    if source is not None:
        attrs |= {f"{_SOURCE}{a.name}": a.value for a in source.attributes.values()}
    w = op.Dequantized(*inputs, _domain=CANON, **attrs)
    w.shape, w.type = ir.Shape([record.k, record.n]), ir.TensorType(ir.DataType.FLOAT)
    return w


def _named_matmul(op, x: ir.Value, w: ir.Value, name: str) -> ir.Value:
    y = op.MatMul(x, w)
    y.producer().name = name
    return y


# --------------------------------------------------------------- MatMulNBits


def _nbits_inputs(node: ir.Node) -> list[ir.Value | None]:
    return [*node.inputs, None, None, None, None, None, None][:6]  # A B scales zp g_idx bias


def nbits_record(node: ir.Node) -> QuantizedWeight:
    a = node.attributes
    zp = const_array(_nbits_inputs(node)[3])
    bits = a.get_int("bits", 4)
    level = a.get_int("accuracy_level", -1)
    q = QuantizedWeight(
        source=QuantSource.MATMUL_NBITS, bits=bits, k=a.get_int("K", 0), n=a.get_int("N", 0),
        granularity=Granularity.BLOCK, block_size=a.get_int("block_size", 0), axis=0,
        accuracy_level=None if level < 0 else level)
    if zp is None:
        return q
    if zp.dtype.name != "uint8" or zp.size != _nbits_zp_size(q):
        return replace(q, symmetric=False)  # refused by the rule's check
    return replace(q, symmetric=_neutral(nbits_zero_points(q, zp), 1 << (bits - 1)))


def _nbits_zp_size(q: QuantizedWeight) -> int:
    """How many bytes MatMulNBits' zero points take: per row, one per block (8 bits) or
    two a byte (4 bits)."""
    blocks = -(-q.k // max(q.block_size, 1))
    return q.n * (blocks if q.bits == 8 else -(-blocks // 2))


class MatMulNBitsToMatMul(pattern.RewriteRuleClassBase):
    """Replaces ``com.microsoft::MatMulNBits(x, B, scales[, zero_points])`` with
    ``MatMul(x, Dequantized(B, scales[, zero_points]))``.

    Matches: ONNX Runtime's MatMulNBitsQuantizer (bits 4 and 8, any block size, symmetric
    or with uint8 zero points, any accuracy_level) and the GenAI model builder's int4/int8.
    """

    def pattern(self, op, x, b, scales):
        return op.MatMulNBits(x, b, scales, _domain=MS, _allow_other_inputs=True,
                              _outputs=["y"])

    def check(self, context, x, b, scales, y, **_):
        r = pattern.MatchResult()
        node = y.producer()
        _, b, scales, zp, g_idx, bias = _nbits_inputs(node)
        if g_idx is not None and g_idx.name:
            return r.fail("MatMulNBits g_idx: act-order weights (a g_idx input permutes K) "
                          "are not supported: quantize without act order (desc_act=False)",
                          node)
        if bias is not None and bias.name:
            return r.fail("MatMulNBits bias: expected none (a bias input is not supported "
                          "yet)", node)
        for v, what in ((b, "MatMulNBits B"), (scales, "MatMulNBits scales"),
                        (zp, "MatMulNBits zero_points")):
            r = r and _constant(r, v, what)
        if not r:
            return r
        q = nbits_record(node)
        if q.bits not in (4, 8):
            return r.fail(f"MatMulNBits bits: expected 4 or 8, got {q.bits}", node)
        if zp is not None and (const_array(zp).dtype.name != "uint8"
                               or const_array(zp).size != _nbits_zp_size(q)):
            return r.fail(f"MatMulNBits zero_points: expected {_nbits_zp_size(q)} packed "
                          f"uint8, got {const_array(zp).dtype.name} "
                          f"{list(const_array(zp).shape)}", zp)
        r = _float32_scales(r, scales, "MatMulNBits scales")
        if not r:
            return r
        blocks = -(-q.k // max(q.block_size, 1))
        want = (q.n, blocks, q.block_size * q.bits // 8)
        if q.block_size < 16 or const_array(b).size != np.prod(want) or \
                const_array(scales).size != q.n * blocks:
            return r.fail(f"MatMulNBits shapes: expected B {list(want)} and {q.n * blocks} "
                          f"scales for K={q.k}, N={q.n}, block {q.block_size}, got "
                          f"{list(const_array(b).shape)}, {const_array(scales).size}", node)
        return r

    def rewrite(self, op, x, y, **_):
        node = y.producer()
        _, b, scales, zp, _, _ = _nbits_inputs(node)
        w = _weight(op, nbits_record(node), [b, scales, zp], [node.name], node)
        return _named_matmul(op, x, w, node.name)


# --------------------------------------------------------------- QDQ weights


def qdq_record(node: ir.Node) -> QuantizedWeight:
    q, scale = const_array(node.inputs[0]), const_array(node.inputs[1])
    zp = const_array(node.inputs[2]) if len(node.inputs) > 2 else None
    bits, signed = _INT_CODES[q.dtype.name]
    block = node.attributes.get_int("block_size", 0)
    axis = node.attributes.get_int("axis", 1) % 2
    granularity = (Granularity.TENSOR if scale.size == 1 else
                   Granularity.BLOCK if 0 < block < q.shape[axis] else Granularity.CHANNEL)
    if block >= q.shape[axis]:  # one block spans the axis: a scale per channel of the other
        axis = 1 - axis
    midpoint = 0 if signed else 1 << (bits - 1)
    return QuantizedWeight(
        source=QuantSource.QDQ, bits=bits, k=q.shape[0], n=q.shape[1], granularity=granularity,
        block_size=block if granularity is Granularity.BLOCK else 0,
        axis=None if granularity is Granularity.TENSOR else axis,
        symmetric=_neutral(zp, midpoint), signed=signed)


class DequantizeLinearWeight(pattern.RewriteRuleClassBase):
    """Replaces ``DequantizeLinear(codes, scale[, zero_point])`` of a constant 2-D weight
    read only as a ``MatMul``'s B with a canonical ``Dequantized`` weight.

    Matches: ``quantize_static`` in QDQ format (per tensor, per channel), and
    MatMulNBitsQuantizer's QDQ format (int4 blocks, opset 21).
    """

    def pattern(self, op, q, scale):
        return op.DequantizeLinear(q, scale, _allow_other_inputs=True, _outputs=["w"])

    def check(self, context, q, scale, w, **_):
        r = pattern.MatchResult()
        node = w.producer()
        zp = node.inputs[2] if len(node.inputs) > 2 else None
        readers = w.uses()
        if not readers or any(u.node.op_type != "MatMul" or u.node.domain != "" or u.idx != 1
                              for u in readers) or w in context.graph_or_function.outputs:
            return r.fail("DequantizeLinear: expected a weight read only as a MatMul's B", w)
        for v, what in ((q, "quantized weight"), (scale, "weight scale"),
                        (zp, "weight zero point")):
            r = r and _constant(r, v, what)
        if not r:
            return r
        codes = const_array(q)
        if codes.ndim != 2 or codes.dtype.name not in _INT_CODES:
            return r.fail(f"quantized weight: expected 2-D int8/uint8/int4/uint4 codes, got "
                          f"{codes.dtype.name} {list(codes.shape)}", q)
        if node.attributes.get_int("output_dtype", 0) not in (0, ir.DataType.FLOAT):
            return r.fail("DequantizeLinear output_dtype: expected float32", node)
        return _float32_scales(r, scale, "weight scale")

    def rewrite(self, op, q, scale, w, **_):
        node = w.producer()
        zp = node.inputs[2] if len(node.inputs) > 2 else None
        return _weight(op, qdq_record(node), [q, scale, zp], [node.name], node)


# --------------------------------------------------------------- QDQ activations

FAKE_QUANT = "FakeQuant"  # an activation's QDQ pair in canonical form


def fake_quant_record(node: ir.Node) -> FakeQuant:
    """The pair of a canonical ``FakeQuant`` node."""
    s, zp = const_array(node.inputs[1]), const_array(node.inputs[2])
    qmin, qmax = CODE_RANGES[zp.dtype.name]
    return FakeQuant(float(s.reshape(())), int(zp.reshape(())), qmin, qmax)


def fake_quant(node: ir.Node | None) -> bool:
    return node is not None and node.domain == CANON and node.op_type == FAKE_QUANT


def _non_negative(v: ir.Value, depth: int = 4) -> bool:
    """``v`` is ≥ 0 by construction: a ReLU, a pair clamping at zero (canonical or not yet),
    or a product of two such (a ReLU before it would compute nothing)."""
    p = v.producer()
    if p is None or depth == 0:
        return False
    if p.op_type == "Relu" and p.domain == "":
        return True
    if fake_quant(p) or (p.op_type == "DequantizeLinear" and p.domain == ""
                         and len(p.inputs) > 2 and p.inputs[0].producer() is not None
                         and p.inputs[0].producer().op_type == "QuantizeLinear"):
        zp = const_array(p.inputs[2])
        return (zp is not None and zp.dtype.name in CODE_RANGES and zp.size == 1
                and int(zp.reshape(())) == CODE_RANGES[zp.dtype.name][0])
    if p.op_type == "Mul" and p.domain == "" and len(p.inputs) == 2:
        return all(_non_negative(i, depth - 1) for i in p.inputs)
    return False


class QuantizeDequantizeActivation(pattern.RewriteRuleClassBase):
    """Replaces ``DequantizeLinear(QuantizeLinear(v, s, z), s, z)`` on a computed activation
    with ``ai.fffc.canon::FakeQuant(v, s, z)`` (``[Relu]`` first where z is the code type's
    minimum).

    Matches: ``quantize_static`` in QDQ format (int8 or uint8 activations, per tensor).
    """

    def pattern(self, op, v, s, zp):
        q = op.QuantizeLinear(v, s, zp, _outputs=["q"])
        return op.DequantizeLinear(q, s, zp, _outputs=["dq"])

    def check(self, context, v, s, zp, q, dq, **_):
        r = pattern.MatchResult()
        if const_array(v) is not None:
            return r.fail("QuantizeLinear: expected a computed activation, got a constant", v)
        for value, what in ((s, "activation scale"), (zp, "activation zero point")):
            r = r and _constant(r, value, what)
            if r and const_array(value).size != 1:
                return r.fail(f"{what}: expected one value (per tensor), got "
                              f"{list(const_array(value).shape)}", value)
        if not r:
            return r
        if const_array(zp).dtype.name not in CODE_RANGES:
            return r.fail(f"activation zero point: expected int8 or uint8, got "
                          f"{const_array(zp).dtype.name}", zp)
        r = _float32_scales(r, s, "activation scale")
        if r and not float(const_array(s).reshape(())) > 0:
            return r.fail("activation scale: expected > 0", s)
        for node in (q.producer(), dq.producer()):
            extra = [a for a in node.attributes if a not in ("axis", "saturate")]
            if r and extra:
                return r.fail(f"{node.op_type} attributes: expected none of {extra}", node)
        return r

    def rewrite(self, op, v, s, zp, q, dq, **_):
        names = [q.producer().name, dq.producer().name]
        attrs = {f"{_SOURCE}q_{a.name}": a.value for a in q.producer().attributes.values()}
        attrs |= {f"{_SOURCE}dq_{a.name}": a.value for a in dq.producer().attributes.values()}
        zero = int(const_array(zp).reshape(()))
        if zero == CODE_RANGES[const_array(zp).dtype.name][0] and not _non_negative(v):
            v = op.Relu(v)
        y = op.FakeQuant(v, s, zp, _domain=CANON, original_names=names, **attrs)
        y.type, y.shape = dq.type, dq.shape
        return y


# --------------------------------------------------------------- dynamic int8


def _dql(q: ir.Value, s: ir.Value, zp: ir.Value) -> ir.Node | None:
    """The DynamicQuantizeLinear whose three outputs ``q, s, zp`` are, else None."""
    node = q.producer()
    if node is None or node.op_type != "DynamicQuantizeLinear" or node.domain != "":
        return None
    return node if list(node.outputs) == [q, s, zp] else None


def dynamic_record(wq: ir.Value, ws: ir.Value, wzp: ir.Value | None) -> QuantizedWeight:
    codes, scale = const_array(wq), const_array(ws)
    bits, signed = _INT_CODES[codes.dtype.name]
    per_channel = scale.size > 1
    return QuantizedWeight(
        source=QuantSource.DYNAMIC, bits=bits, k=codes.shape[0], n=codes.shape[1],
        granularity=Granularity.CHANNEL if per_channel else Granularity.TENSOR,
        axis=1 if per_channel else None, signed=signed,
        symmetric=_neutral(const_array(wzp), 0 if signed else 128))


class DynamicInt8ToMatMul(pattern.RewriteRuleClassBase):
    """Replaces ``Mul(Cast(MatMulInteger(q, Wq, zp, Wzp)), Mul(s, Ws))`` on the outputs of
    ``DynamicQuantizeLinear(x)`` with ``MatMul(x, Dequantized(Wq, Ws, Wzp))``.

    Matches: ONNX Runtime's ``quantize_dynamic`` (int8 or uint8 weights, per tensor or
    per channel). The DynamicQuantizeLinear, shared by the projections reading x, goes when
    the last of them is rewritten.
    """

    def pattern(self, op, q, s, zp, wq, ws, wzp):
        prod = op.MatMulInteger(q, wq, zp, wzp, _outputs=["mi"])
        return op.Mul(op.Cast(prod, _outputs=["cast"]), op.Mul(s, ws, _outputs=["scales"]),
                      _outputs=["y"])

    def check(self, context, q, s, zp, wq, ws, wzp, cast, **_):
        r = pattern.MatchResult()
        if _dql(q, s, zp) is None:
            return r.fail("MatMulInteger: expected the outputs of one DynamicQuantizeLinear "
                          "as its A, A's scale and zero point", q)
        if cast.producer().attributes.get_int("to", 0) != ir.DataType.FLOAT:
            return r.fail("MatMulInteger Cast: expected to float32", cast.producer())
        for v, what in ((wq, "quantized weight"), (ws, "weight scale"),
                        (wzp, "weight zero point")):
            r = r and _constant(r, v, what)
        if not r:
            return r
        codes = const_array(wq)
        if codes.ndim != 2 or codes.dtype.name not in ("int8", "uint8"):
            return r.fail(f"quantized weight: expected 2-D int8/uint8 codes, got "
                          f"{codes.dtype.name} {list(codes.shape)}", wq)
        n = codes.shape[1]
        for v, what in ((ws, "weight scale"), (wzp, "weight zero point")):
            if const_array(v).size not in (1, n):
                return r.fail(f"{what}: expected one or {n} values, got "
                              f"{list(const_array(v).shape)}", v)
        return _float32_scales(r, ws, "weight scale")

    def rewrite(self, op, q, s, zp, wq, ws, wzp, mi, cast, scales, y, **_):
        dql = _dql(q, s, zp)
        names = [n.name for n in (dql, scales.producer(), mi.producer(), cast.producer(),
                                  y.producer())]
        w = _weight(op, dynamic_record(wq, ws, wzp), [wq, ws, wzp], names, None)
        return _named_matmul(op, dql.inputs[0], w, names[-1])


rules = pattern.RewriteRuleSet(
    [
        MatMulNBitsToMatMul.rule("MatMulNBits"),
        QuantizeDequantizeActivation.rule("QuantizeDequantizeActivation"),
        DequantizeLinearWeight.rule("DequantizeLinearWeight"),
        *DynamicInt8ToMatMul.rule("DynamicInt8").commute(),
    ]
)


# --------------------------------------------------------------- reading and restoring


def format_of(value: ir.Value | None) -> QuantizedWeight | None:
    """The weight format of a canonical weight value (None: a float weight)."""
    p = value.producer() if value is not None else None
    return quantized_record(p) if dequantized(p) else None


def formats(inputs) -> dict[str, QuantizedWeight]:
    """A marker's quantized weights by op input name (``inputs``: name → value)."""
    found = {n: format_of(v) for n, v in inputs.items() if n != "X"}
    return {n: q for n, q in found.items() if q is not None}


def in_float(value: ir.Value) -> None:
    """The MatMulNBits weight ``value`` restored to compute in float32: accuracy_level 0, x
    times the dequantized weight (what int4 kernels are checked against; other sources
    compute so already)."""
    node = value.producer()
    if dequantized(node) and quantized_record(node).source is QuantSource.MATMUL_NBITS:
        name = f"{_SOURCE}accuracy_level"
        node.attributes[name] = ir.AttrInt64(name, 0)


def quantized_source(node: ir.Node) -> bool:
    """A projection still in a quantized source form (a rule refused it)."""
    return (node.op_type == "MatMulNBits" and node.domain == MS) or (
        node.op_type == "MatMulInteger" and node.domain == "")


def why_not(model: ir.Model, node: ir.Node) -> str:
    """Why the quantized projection ``node`` was left in its source form."""
    roots = [node, *[u.node for v in node.outputs for u in v.uses()]]
    roots += [u.node for r in list(roots) for v in r.outputs for u in v.uses()]
    return best_failure(model, rules.rules, roots,
                        f"{node.op_type}: not a quantized projection fffc reads")


def _source_attrs(node: ir.Node) -> dict[str, ir.Attr]:
    """The source node's attributes, as it had them."""
    return {n[len(_SOURCE):]: ir.Attr(n[len(_SOURCE):], a.type, a.value)
            for n, a in node.attributes.items() if n.startswith(_SOURCE)}


def _names(node: ir.Node) -> list[str]:
    return list(node.attributes["original_names"].value)


def restore(graph: ir.Graph) -> None:
    """Every ``Dequantized`` weight of ``graph`` back in its source form: a DequantizeLinear
    in its place (QDQ), or each ``MatMul(x, W)`` reading it rebuilt as the source's nodes
    on x, in the MatMul's own (sub)graph (MatMulNBits; dynamic int8, one
    DynamicQuantizeLinear per x and graph)."""
    quantizers: dict[tuple[int, int], ir.Node] = {}
    touched: dict[int, ir.Graph] = {}
    for node in [n for n in graph if fake_quant(n)]:
        _restore_pair(graph, node)
    for node in [n for n in graph if dequantized(n)]:
        q = quantized_record(node)
        w = node.outputs[0]
        if q.source is QuantSource.QDQ:
            dq = ir.node("DequantizeLinear", list(node.inputs), attributes=_source_attrs(node),
                         name=_names(node)[0])
            graph.insert_before(node, dq)
            _replace_value(graph, w, dq.outputs[0])
        else:
            for i, use in enumerate(list(w.uses())):
                matmul = use.node
                if matmul.op_type != "MatMul" or matmul.domain != "" or use.idx != 1:
                    raise ValueError(f"quantized weight {w.name!r} read by {matmul.op_type} "
                                     f"{matmul.name!r}: only a MatMul's B can be restored")
                home = matmul.graph
                nodes, y = _projection(node, q, matmul.inputs[0], i, quantizers, home)
                home.insert_before(matmul, nodes)
                _replace_value(home, matmul.outputs[0], y)
                home.remove(matmul, safe=False)
                touched[id(home)] = home
        graph.remove(node, safe=False)
    if quantizers:  # a shared DynamicQuantizeLinear went before the first reader rebuilt
        for g in touched.values():
            g.sort()


def _restore_pair(graph: ir.Graph, node: ir.Node) -> None:
    """A canonical FakeQuant back as its QuantizeLinear → DequantizeLinear pair."""
    v, s, zp = node.inputs
    attrs = _source_attrs(node)  # q_<name>, dq_<name>
    qname, dqname = _names(node)
    q = ir.node("QuantizeLinear", [v, s, zp], name=qname,
                attributes={n[2:]: a.value for n, a in attrs.items() if n.startswith("q_")})
    dq = ir.node("DequantizeLinear", [q.outputs[0], s, zp], name=dqname,
                 attributes={n[3:]: a.value for n, a in attrs.items() if n.startswith("dq_")})
    graph.insert_before(node, [q, dq])
    _replace_value(graph, node.outputs[0], dq.outputs[0])
    graph.remove(node, safe=False)


def _replace_value(graph: ir.Graph, old: ir.Value, new: ir.Value) -> None:
    name = old.name
    for i, o in enumerate(graph.outputs):
        if o is old:
            graph.outputs[i] = new
    ir.convenience.replace_all_uses_with(old, new)
    old.name, new.name = None, name


def _projection(node: ir.Node, q: QuantizedWeight, x: ir.Value, use: int,
                quantizers: dict[tuple[int, int], ir.Node],
                home: ir.Graph) -> tuple[list[ir.Node], ir.Value]:
    """The source nodes of a quantized projection of ``x`` in graph ``home`` (the ``use``-th
    reader of the weight: names get a suffix after the first)."""
    names = [n if use == 0 else f"{n}_{use}" for n in _names(node)]
    if q.source is QuantSource.MATMUL_NBITS:
        mm = ir.node("MatMulNBits", [x, *node.inputs], attributes=_source_attrs(node),
                     domain=MS, name=names[0])
        return [mm], mm.outputs[0]
    wq, ws, wzp = [*node.inputs, None][:3]
    nodes = []
    dql = quantizers.get((id(x), id(home)))
    if dql is None:
        dql = quantizers[(id(x), id(home))] = ir.node("DynamicQuantizeLinear", [x], num_outputs=3,
                                          name=names[0])
        nodes.append(dql)
    xq, xs, xzp = dql.outputs
    scales = ir.node("Mul", [xs, ws], name=names[1])
    mi = ir.node("MatMulInteger", [xq, wq, xzp, wzp], name=names[2])
    cast = ir.node("Cast", [mi.outputs[0]], attributes={"to": ir.DataType.FLOAT},
                   name=names[3])
    y = ir.node("Mul", [cast.outputs[0], scales.outputs[0]], name=names[4])
    return [*nodes, scales, mi, cast, y], y.outputs[0]


def install_nbits(reader: ir.Node, index: int, name: str, k: int, n: int, block: int,
                  codes: np.ndarray, scales: np.ndarray, bits: int = 4) -> ir.Value:
    """Input ``index`` of ``reader`` (a float weight ``W [K, N]``) replaced by the canonical
    weight of ``bits``-bit symmetric MatMulNBits codes ``codes [N, K/block, block·bits/8]``
    and ``scales [N, K/block]`` (new initializers ``<name>_q4`` (``_q8``), ``<name>_scales``;
    restored as a MatMulNBits named ``name`` computing in float32): what ``--weight-dtype
    int4|int8`` makes of a site's weight."""
    graph = reader.graph
    q = QuantizedWeight(source=QuantSource.MATMUL_NBITS, bits=bits, k=k, n=n,
                        granularity=Granularity.BLOCK, block_size=block, axis=0)
    inputs = [initializer(graph, f"{name}_q{bits}", np.ascontiguousarray(codes, np.uint8)),
              initializer(graph, f"{name}_scales",
                          np.ascontiguousarray(scales, np.float32).reshape(-1))]
    attrs: dict = {**q.to_attributes(), "original_names": [name],
                   **{f"{_SOURCE}{a}": v for a, v in
                      (("K", k), ("N", n), ("bits", bits), ("block_size", block))}}
    node = ir.node(DEQUANTIZED, inputs, attributes=attrs, domain=CANON, name=f"{name}_weight")
    w = node.outputs[0]
    w.shape, w.type = ir.Shape([k, n]), ir.TensorType(ir.DataType.FLOAT)
    graph.insert_before(reader, node)
    reader.replace_input_with(index, w)
    return w
