"""Load: read an ONNX file into onnx_ir with every way it can be wrong turned into one error."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from ..contract.errors import ModelLoadError, UnsupportedModelError

MIN_IR_VERSION = 4
MAX_DIM = 2**31
MIN_OPSET = 13  # MatMul/Add/Gemm semantics fffc relies on are stable from here
FLOAT_TYPES = {"FLOAT", "FLOAT16", "BFLOAT16", "DOUBLE"}


def load_proto(path: str | Path) -> onnx.ModelProto:
    """The checked ModelProto; ModelLoadError/UnsupportedModelError say what is wrong."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError("no such file", path=path)
    if path.is_dir():
        raise ModelLoadError("is a directory without genai_config.json, expected an .onnx "
                             "file or an ONNX Runtime GenAI model folder", path=path)
    if path.stat().st_size == 0:
        raise ModelLoadError("empty file, expected an ONNX model", path=path)
    try:
        proto = onnx.load(str(path), format="protobuf")
    except DecodeError as e:
        raise ModelLoadError(f"not an ONNX model or truncated (protobuf: {e})", path=path) from e
    except (OSError, ValueError, onnx.onnx_cpp2py_export.checker.ValidationError) as e:
        raise ModelLoadError(f"cannot read model: {e}", path=path) from e
    if not proto.graph.node:
        raise ModelLoadError("not an ONNX model or truncated: the graph has no nodes", path=path)
    if not proto.graph.output:
        raise ModelLoadError("the graph has no outputs", path=path)
    _check_names(proto, path)
    try:  # from the file: a model with its weights loaded may exceed protobuf's 2 GiB
        onnx.checker.check_model(str(path))
    except UnicodeDecodeError as e:  # the checker's message quotes a field that is not text
        raise ModelLoadError(f"invalid ONNX model: a string field that is not UTF-8 text "
                             f"({e.object[max(e.start - 20, 0):e.end + 20]!r})",
                             path=path) from e
    except onnx.checker.ValidationError as e:
        # ONNX Runtime's saved optimized models use its own ops in the default domain
        # (e.g. SimplifiedLayerNormalization), which the checker rejects: accept what
        # ONNX Runtime itself loads.
        if not _ort_loads(path):
            first = str(e).strip().splitlines()[0] if str(e).strip() else "validation failed"
            raise ModelLoadError(f"invalid ONNX model: {first}", path=path) from e
    _check_opset(proto, path)
    _check_tensors(proto, path)
    _check_declared_shapes(proto, path)
    return proto


def _check_names(proto: onnx.ModelProto, path: Path) -> None:
    """Every name of the main graph is text: protobuf hands a string field that is not UTF-8
    back as bytes, which the passes cannot join into names."""
    g = proto.graph
    fields = [("graph value", v.name) for v in (*g.input, *g.output, *g.value_info,
                                                  *g.initializer)]
    fields += [("opset import", o.domain) for o in proto.opset_import]
    for n in g.node:
        label = n.name if isinstance(n.name, str) else repr(n.name)
        fields += [(f"node {label}", f) for f in (n.name, n.op_type, n.domain, *n.input,
                                                  *n.output)]
        fields += [(f"node {label}", a.name) for a in n.attribute]
    for what, name in fields:
        if not isinstance(name, str):
            raise ModelLoadError(f"{what}: a name that is not UTF-8 text ({name!r})", path=path)


def _check_declared_shapes(proto: onnx.ModelProto, path: Path) -> None:
    """No declared dim (graph inputs, outputs, value_info) of 2**31 or more: no tensor of a
    model fffc runs has such an axis, and ONNX's shape inference, which propagates a shape
    tensor's declared length as a rank, spends hours on one."""
    for v in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        for d in v.type.tensor_type.shape.dim:
            if d.HasField("dim_value") and d.dim_value >= MAX_DIM:
                raise ModelLoadError(f"value {v.name!r} is declared with a dim of "
                                     f"{d.dim_value} (fffc handles dims below 2**31)",
                                     path=path)


def _check_tensors(proto: onnx.ModelProto, path: Path) -> None:
    """Every initializer (and Constant node value) of the main graph has a known element type,
    no negative dim, and as many bytes as its shape needs: the checker reads neither the
    type's range nor ``raw_data``'s length, and a short tensor fails deep in the passes."""
    named = [(f"initializer {t.name!r}", t) for t in proto.graph.initializer]
    named += [(f"node {n.name or n.op_type!r}: tensor attribute {a.name!r}", a.t)
              for n in proto.graph.node for a in n.attribute
              if a.type == onnx.AttributeProto.TENSOR]
    for what, t in named:
        try:
            np_dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
        except (KeyError, ValueError):
            raise ModelLoadError(f"{what}: unknown element type {t.data_type}",
                                 path=path) from None
        if any(d < 0 for d in t.dims):
            raise ModelLoadError(f"{what}: negative dim in shape {list(t.dims)}", path=path)
        if not t.HasField("raw_data") or t.data_type == onnx.TensorProto.STRING:
            continue
        count = math.prod(t.dims)
        bits = 4 if t.data_type in _FOUR_BIT else 8 * np_dtype.itemsize
        need = (count * bits + 7) // 8
        if len(t.raw_data) != need:
            raise ModelLoadError(
                f"{what}: {len(t.raw_data)} bytes of data, its shape {list(t.dims)} of "
                f"{onnx.TensorProto.DataType.Name(t.data_type)} needs {need} (truncated or "
                "a wrong shape)", path=path)


_FOUR_BIT = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1")
             if hasattr(onnx.TensorProto, n)}


def _ort_loads(path: Path) -> bool:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception:  # any load failure means: not a model ORT accepts either
        return False
    return True


def _check_opset(proto: onnx.ModelProto, path: Path) -> None:
    opsets = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
    version = opsets.get("ai.onnx")
    newest = onnx.defs.onnx_opset_version()
    if version is None:
        raise UnsupportedModelError("model imports no ai.onnx opset", path=path)
    if version < MIN_OPSET or version > newest:
        raise UnsupportedModelError(
            f"unsupported opset {version}: fffc handles ai.onnx opsets {MIN_OPSET}..{newest}",
            path=path)


def to_ir(proto: onnx.ModelProto, path: str | Path | None = None) -> ir.Model:
    """The IR of a checked model; what onnx_ir cannot read is a ModelLoadError."""
    try:
        model = ir.serde.deserialize_model(proto)
    except (ir.serde.SerdeError, ValueError) as e:
        cause = str(e.__cause__ or e).strip().splitlines() or [type(e).__name__]
        raise ModelLoadError(f"cannot read the model's graph: {cause[0]}", path=path) from e
    # before IR 4 every initializer had to be a graph input; the passes add initializers
    # that are not, so what fffc writes declares at least IR 4 (ONNX Runtime loads older)
    model.ir_version = max(model.ir_version, MIN_IR_VERSION)
    return model


def load(path: str | Path) -> ir.Model:
    """Load and check; the IR model the pipeline works on."""
    return to_ir(load_proto(path), path)


def external_data_files(path: str | Path) -> tuple[str, ...]:
    """The external data files the model at ``path`` refers to (relative to its folder), in
    the order first met; () for a model whose tensors are all inline."""
    proto = onnx.load(str(path), format="protobuf", load_external_data=False)
    files: dict[str, None] = {}

    def graph(g: onnx.GraphProto) -> None:
        for t in g.initializer:
            tensor(t)
        nodes(g.node)

    def nodes(ns) -> None:
        for n in ns:
            for a in n.attribute:
                for t in (a.t, *a.tensors):
                    tensor(t)
                for g in (a.g, *a.graphs):
                    graph(g)

    def tensor(t: onnx.TensorProto) -> None:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            entries = {e.key: e.value for e in t.external_data}
            if entries.get("location"):
                files.setdefault(entries["location"])

    graph(proto.graph)
    for f in proto.functions:
        nodes(f.node)
    return tuple(files)


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file: which model a calibration or an artifact was made from."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def copy(model: ir.Model) -> ir.Model:
    """A copy of a model's graph, functions and values (stages that lower or round work on
    copies); initializer tensors are shared, which is safe because passes replace a value's
    tensor and never write into one, and keeps a multi-GB model in memory once. onnx_ir's
    cloner refuses graph attributes that capture outer values (a marker's ``original``
    subgraph can): those models are copied through their protobuf, tensors included."""
    try:
        return model.clone()
    except (RuntimeError, ValueError):
        return ir.serde.deserialize_model(ir.serde.serialize_model(model))


INLINE_MAX = 1 << 30  # bytes of initializers kept inside one protobuf (its limit is 2 GiB)


def initializer_bytes(model: ir.Model | onnx.ModelProto) -> int:
    if isinstance(model, onnx.ModelProto):
        return sum(len(t.raw_data) or 4 * max(len(t.float_data), len(t.int64_data))
                   for t in model.graph.initializer)
    return sum(v.const_value.nbytes for v in model.graph.initializers.values()
               if v.const_value is not None)


def too_large(model: ir.Model | onnx.ModelProto) -> bool:
    """Whether ``model``'s weights go to external data rather than into its protobuf."""
    return initializer_bytes(model) > INLINE_MAX


def save(model: ir.Model | onnx.ModelProto, path: str | Path) -> None:
    """``model`` to ``path``; its weights to ``<name>.data`` beside it when they are too large
    for one protobuf (how ONNX Runtime GenAI and Optimum store large models)."""
    path = Path(path)
    if isinstance(model, onnx.ModelProto):
        if not too_large(model):
            onnx.save(model, str(path))
            return
        model = to_ir(model)
    external = f"{path.name}.data" if too_large(model) else None
    ir.save(model, str(path), external_data=external)
