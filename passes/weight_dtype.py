"""16-bit weights (``--weight-dtype fp16|bf16``, CUDA; a 16-bit model's own): round, store
narrow, widen in fallbacks.

The kernels read each weight matrix in 16 bits and compute in float32. So that what fffc
verifies is what runs, a site's weights are first *rounded* in the working model
(``round_weights``: float32 values of the 16-bit numbers) — the artifact must then equal
that model, and its distance from the original is the cost of the rounding, reported
apart. Lowering stores the rounded weights as 16-bit initializers (lossless by then), feeds
them to the ``ai.fffc`` node, and prepends a ``Cast`` to float32 to the node's fallback
function (its own overload), so the model still runs in a stock ONNX Runtime. Any other
reader of such a weight (the dense branch of a token dispatch) reads it through one Cast.

A 16-bit model (float16/bfloat16 weights and activations) needs no rounding: its node
reads the model's own 16-bit weights with the same widening fallback, between a Cast of X
(the op's first input) to float32 and one of Y back (``widened_activations``,
``narrowed_output``); its biases become float32 copies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import ml_dtypes
import numpy as np
import onnx_ir as ir

from fffc.contract.int4 import Q4Matrix
from fffc.contract.int8 import Q8Matrix
from fffc.contract.ops import OPS, WEIGHT_INPUTS

from . import canonical_quant
from ._common import CANON, const_array, initializer
from .markers import OP_OF_KIND, decode, kind_of

NARROW = {"float16": (np.dtype(np.float16), "f16"),
          "bfloat16": (np.dtype(ml_dtypes.bfloat16), "bf16")}
ROWS = "__rows"  # name suffix of the lowering's row-per-neuron copy of a weight
ATTR = "weight_dtype"  # set on a marker: its ai.fffc node gets weights of this dtype


def _weight_positions(op: str) -> list[int]:
    names = [a.name for a in OPS[op].inputs]
    return [i for i, n in enumerate(names) if n in WEIGHT_INPUTS[op]]


def round_weights(model: ir.Model, sites: Iterable[str], dtype: str) -> list[str]:
    """Round the weight initializers of the markers named in ``sites`` to ``dtype`` in place
    (kept float32) and tag the markers for lowering. Returns the initializers rounded."""
    narrow, _ = NARROW[dtype]
    wanted, done = set(sites), []
    for node in model.graph:
        if node.domain != CANON or node.name not in wanted:
            continue
        try:
            op = OP_OF_KIND[kind_of(node)].name
        except (KeyError, ValueError):
            raise ValueError(f"site {node.name!r}: no 16-bit weights for this kind of site") \
                from None
        node.attributes[ATTR] = ir.AttrString(ATTR, dtype)
        for i in _weight_positions(op):
            value = node.inputs[i] if i < len(node.inputs) else None
            arr = const_array(value)
            if value is None or arr is None:
                continue  # an absent optional weight (U1, S2, WU, ...)
            if not value.is_initializer():
                raise ValueError(f"site {node.name!r}: weight {value.name} is not an initializer")
            if value.name in done:
                continue
            rounded = np.asarray(arr, np.float32).astype(narrow).astype(np.float32)
            value.const_value = ir.tensor(rounded, name=value.name)
            done.append(value.name)
    return done


def node_dtype(marker: ir.Node) -> str:
    return marker.attributes.get_string(ATTR, "float32")


def narrow_inputs(graph: ir.Graph, op: str, inputs: list, dtype: str) -> list:
    """``inputs`` of an ai.fffc ``op`` node with its weight matrices as 16-bit initializers
    (``<name>__f16`` / ``__bf16``, shared by every node reading the same weight; a weight
    already stored in ``dtype``, a 16-bit model's, is read as it is)."""
    narrow, tag = NARROW[dtype]
    out = list(inputs)
    for i in _weight_positions(op):
        value = out[i] if i < len(out) else None
        if value is None:
            continue
        arr = const_array(value)
        if arr is None or not value.is_initializer():
            raise ValueError(f"{op}: weight {value.name} is not an initializer")
        if arr.dtype != narrow:
            out[i] = initializer(graph, f"{value.name}__{tag}", np.asarray(arr).astype(narrow))
    return out


def model_dtype(op: str, inputs: list) -> str:
    """The dtype of an ai.fffc ``op`` node's first weight as the matched subgraph holds it:
    "float16" or "bfloat16" in a 16-bit model (its activations too), else "float32"."""
    for i in _weight_positions(op):
        arr = const_array(inputs[i]) if i < len(inputs) and inputs[i] is not None else None
        if arr is not None:
            return next((d for d, (n, _) in NARROW.items() if arr.dtype == n), "float32")
    return "float32"


def widened_activations(graph: ir.Graph, tape: ir.tape.Tape, op: str, inputs: list,
                        name: str) -> list:
    """A 16-bit model's op inputs as the op takes them: X cast to float32 on ``tape``
    (exact), every other 16-bit non-weight input (biases) a float32 initializer
    ``<name>__f32`` (its values exactly: widening loses nothing); the weights stay 16-bit."""
    out = list(inputs)
    weights = set(_weight_positions(op))
    for i, value in enumerate(out):
        if value is None or i in weights:
            continue
        if i == 0:
            out[0] = tape.op("Cast", [value], {"to": ir.DataType.FLOAT}, name=f"{name}/widen_x")
            out[0].name = f"{name}__x_f32"
            continue
        arr = const_array(value)
        if arr is not None and any(arr.dtype == n for n, _ in NARROW.values()):
            out[i] = initializer(graph, f"{value.name}__f32", arr.astype(np.float32))
    return out


def narrowed_output(tape: ir.tape.Tape, y: ir.Value, dtype: str, name: str) -> ir.Value:
    """A 16-bit model's op output ``y`` (float32) rounded to the model's ``dtype``."""
    y.name = f"{name}__y_f32"
    return tape.op("Cast", [y], {"to": ir.DataType.from_numpy(NARROW[dtype][0])},
                   name=f"{name}/narrow_y")


def widen_function(function: ir.Function, op: str, dtype: str) -> ir.Function:
    """``function`` (a fallback built for float32 weights) taking them in ``dtype``: a Cast to
    float32 of each weight formal before the body."""
    graph = function.graph
    first = next(iter(graph), None)
    for i in _weight_positions(op):
        formal = graph.inputs[i]
        cast = ir.node("Cast", [formal], {"to": ir.DataType.FLOAT}, name=f"widen_{formal.name}")
        wide = cast.outputs[0]
        wide.name = f"{formal.name}_f32"
        for user, index in list(formal.uses()):
            if user is not cast:
                user.replace_input_with(index, wide)
        if first is None:
            graph.append(cast)
        else:
            graph.insert_before(first, cast)
    function.overload = f"{function.overload}_{NARROW[dtype][1]}"
    graph.name = f"{graph.name}_{NARROW[dtype][1]}"
    return function


def share_narrow_weights(graph: ir.Graph) -> None:
    """A float32 initializer with a 16-bit twin that other nodes still read (the dense path
    of a token dispatch) is read through a Cast of the twin next to each reader, in the
    reader's own (sub)graph: the weights are stored once."""
    for _, tag in NARROW.values():
        suffix = f"__{tag}"
        for name, twin in list(graph.initializers.items()):
            if not name.endswith(suffix):
                continue
            base = name[: -len(suffix)]
            # the twin of W itself, and of W's row-per-neuron copy W__rows (transposed back)
            readers = [(False, u) for u in _uses(graph, base)]
            if base.endswith(ROWS):
                readers += [(True, u) for u in _uses(graph, base[: -len(ROWS)])]
            for n, (transposed, (user, index)) in enumerate(readers):
                nodes = [ir.node("Cast", [twin], {"to": ir.DataType.FLOAT},
                                 name=f"{user.name or 'node'}/widen_{index}")]
                if transposed:
                    nodes.append(ir.node("Transpose", [nodes[0].outputs[0]], {"perm": [1, 0]},
                                         name=f"{user.name or 'node'}/widen_{index}_t"))
                for i, node in enumerate(nodes):
                    node.outputs[0].name = f"{name}_f32_{n}" + ("_t" if i else "")
                user.graph.insert_before(user, nodes)
                user.replace_input_with(index, nodes[-1].outputs[0])


def _uses(graph: ir.Graph, name: str) -> list:
    value = graph.initializers.get(name)
    return list(value.uses()) if value is not None else []


def install_int4(model: ir.Model, site: str, matrices: Mapping[str, Q4Matrix | Q8Matrix]) -> None:
    """``--weight-dtype int4|int8``: the named float weights of marker ``site`` (op input
    name → their 4-bit (Q4Matrix) or 8-bit (Q8Matrix) symmetric MatMulNBits form, e.g. from
    ONNX Runtime's quantizer) replaced by canonical quantized weights; the site then lowers
    as an int4 or int8 site does."""
    marker = next((n for n in model.graph if n.domain == CANON and n.name == site), None)
    if marker is None:
        raise ValueError(f"no marker {site!r} in the model")
    names = [a.name for a in OP_OF_KIND[kind_of(marker)].inputs]
    for name, m in matrices.items():
        bits = 8 if isinstance(m, Q8Matrix) else 4
        if m.zero_points is not None:
            raise ValueError(f"site {site!r}: --weight-dtype int{bits} makes symmetric weights")
        canonical_quant.install_nbits(marker, names.index(name),
                                      f"{site}/{name.lower()}_int{bits}", m.k, m.n, m.block,
                                      m.codes, m.scales, bits)


def site_formats(model: ir.Model, site: str) -> dict:
    """The weight formats of marker ``site``'s quantized weights, by op input name."""
    marker = next((n for n in model.graph if n.domain == CANON and n.name == site), None)
    if marker is None:
        raise ValueError(f"no marker {site!r} in the model")
    return canonical_quant.formats(decode(marker).inputs)
