"""Mutations of valid models and artifacts, and the hypothesis strategies that draw them.

A case is plain data (JSON): a seed, a list of ``[mutation, params]`` and the entry point
it goes through, so a finding is replayed from its JSON alone (``scripts/fuzz.py
--replay``). Params are drawn integers; each mutation takes them modulo the sizes of the
model it meets, so one case stays meaningful whatever the mutations before it did.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from tests.fuzz import seeds

HUGE = (2**40, 2**31, 2**63 - 1, -1, -7, 0)
DIM_VALUES = (*HUGE, 1, 3, 17)
ELEM_TYPES = (0, TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16,
              TensorProto.DOUBLE, TensorProto.INT64, TensorProto.INT8, TensorProto.UINT8,
              TensorProto.BOOL, TensorProto.STRING, TensorProto.INT4, 999)
OPSETS = (1, 7, 12, 13, 17, 21, 99, 2**31 - 1)
IR_VERSIONS = (0, 1, 3, 7, 9, 10, 99)
ATTR_INTS = (0, 1, -1, 2, 7, 2**40, -(2**40), 2**63 - 1)
ATTR_FLOATS = (0.0, -1.0, 1e30, float("nan"), float("inf"))
LOCATIONS = ("absolute_outside", "dotdot", "missing", "absolute_inside", "offset_past_end",
             "length_huge", "negative_offset", "inside_ok", "directory", "symlink_out")

MODEL_MUTATIONS = (
    "drop_node", "dup_node", "cycle", "missing_input", "empty_input", "drop_graph_input",
    "drop_graph_output", "undefined_output", "empty_graph", "set_dim", "drop_shape",
    "set_elem_type", "init_dtype", "init_dims", "truncate_init", "external_data",
    "set_attr", "drop_attr", "add_attr", "opset", "unknown_domain", "node_domain",
    "op_type", "ir_version", "init_named_like_input", "dup_init", "nonfinite_init",
    "swap_op_types", "intermediate_value_info", "dup_output_name",
)
BYTE_MUTATIONS = ("bytes_truncate", "bytes_flip")
ARTIFACT_MUTATIONS = (
    "manifest_drop_key", "manifest_wrong_type", "manifest_extra_key", "manifest_path",
    "manifest_not_json", "manifest_not_object", "manifest_missing", "files_entry",
    "drop_file", "swap_files", "truncate_file", "garbage_shim", "other_shim",
    "file_to_dir", "symlink_out", "extra_file",
)
MODEL_OPS = ("inspect", "inspect-cli", "calibrate", "calibrate-cli", "compile", "compile-cli",
             "cli-subprocess")
ARTIFACT_OPS = ("session", "session-nocheck", "verify-cli", "verify-noload-cli", "check")

# ---------------------------------------------------------------------------------- models


def _pick(seq, i: int):
    return seq[i % len(seq)] if len(seq) else None


def _nodes(m):
    return m.graph.node


def _values(m):
    return [*m.graph.input, *m.graph.output, *m.graph.value_info]


def drop_node(m, p, ctx):
    if len(_nodes(m)):
        del m.graph.node[p["i"] % len(m.graph.node)]


def dup_node(m, p, ctx):
    n = _pick(_nodes(m), p["i"])
    if n is None:
        return
    c = m.graph.node.add()
    c.CopyFrom(n)
    if p["j"] % 2:  # else: two nodes writing one value
        c.name = n.name + "_dup"
        del c.output[:]
        c.output.extend(o + "_dup" for o in n.output)


def cycle(m, p, ctx):
    nodes = _nodes(m)
    if not len(nodes):
        return
    i = p["i"] % len(nodes)
    j = i + (p["j"] % (len(nodes) - i))  # a node at or after i feeds i
    if len(nodes[i].input) and len(nodes[j].output):
        nodes[i].input[p["k"] % len(nodes[i].input)] = nodes[j].output[0]


def missing_input(m, p, ctx):
    n = _pick(_nodes(m), p["i"])
    if n is not None and len(n.input):
        n.input[p["k"] % len(n.input)] = "fuzz_undefined"


def empty_input(m, p, ctx):
    n = _pick(_nodes(m), p["i"])
    if n is not None and len(n.input):
        n.input[p["k"] % len(n.input)] = ""


def drop_graph_input(m, p, ctx):
    if len(m.graph.input):
        del m.graph.input[p["i"] % len(m.graph.input)]


def drop_graph_output(m, p, ctx):
    if len(m.graph.output):
        del m.graph.output[p["i"] % len(m.graph.output)]


def undefined_output(m, p, ctx):
    m.graph.output.append(helper.make_tensor_value_info("fuzz_nowhere", TensorProto.FLOAT, [1]))


def empty_graph(m, p, ctx):
    del m.graph.node[:]
    if p["j"] % 2:
        del m.graph.initializer[:]
        del m.graph.input[:]
        del m.graph.output[:]


def set_dim(m, p, ctx):
    v = _pick(_values(m), p["i"])
    if v is None or not v.type.HasField("tensor_type"):
        return
    dims = v.type.tensor_type.shape.dim
    if not len(dims):
        return
    d = dims[p["j"] % len(dims)]
    choice = p["k"] % (len(DIM_VALUES) + 2)
    if choice < len(DIM_VALUES):
        d.dim_value = DIM_VALUES[choice]
    elif choice == len(DIM_VALUES):
        d.dim_param = "fuzz_sym"
    else:
        d.Clear()


def drop_shape(m, p, ctx):
    v = _pick(_values(m), p["i"])
    if v is not None and v.type.HasField("tensor_type"):
        if p["j"] % 2:
            v.type.tensor_type.ClearField("shape")
        else:
            v.type.tensor_type.shape.dim.add().dim_value = DIM_VALUES[p["k"] % len(DIM_VALUES)]


def set_elem_type(m, p, ctx):
    v = _pick(_values(m), p["i"])
    if v is not None and v.type.HasField("tensor_type"):
        v.type.tensor_type.elem_type = _pick(ELEM_TYPES, p["j"])


def _init(m, i):
    return _pick(m.graph.initializer, i)


def _as_raw(t):
    """Keep ``t``'s values but in ``raw_data`` (truncation then cuts bytes)."""
    if t.HasField("raw_data") or t.data_location == TensorProto.EXTERNAL:
        return
    try:
        a = numpy_helper.to_array(t)
    except Exception:
        return
    t.CopyFrom(numpy_helper.from_array(a, t.name))


def init_dtype(m, p, ctx):
    t = _init(m, p["i"])
    if t is not None:
        _as_raw(t)
        t.data_type = _pick(ELEM_TYPES, p["j"])


def init_dims(m, p, ctx):
    t = _init(m, p["i"])
    if t is None:
        return
    choice = p["k"] % 3
    if choice == 0 and len(t.dims):
        t.dims[p["j"] % len(t.dims)] = _pick(DIM_VALUES, p["j"] // 7)
    elif choice == 1:
        t.dims.append(_pick(DIM_VALUES, p["j"]))
    elif len(t.dims):
        del t.dims[p["j"] % len(t.dims)]


def truncate_init(m, p, ctx):
    t = _init(m, p["i"])
    if t is None:
        return
    _as_raw(t)
    if t.HasField("raw_data"):
        keep = len(t.raw_data) * (p["j"] % 100) // 100
        t.raw_data = t.raw_data[:keep]


def external_data(m, p, ctx):
    """Move one initializer to external data at a location drawn from ``LOCATIONS``."""
    t = _init(m, p["i"])
    if t is None:
        return
    _as_raw(t)
    data = t.raw_data
    kind = _pick(LOCATIONS, p["j"])
    folder: Path = ctx["model_dir"]
    outside: Path = ctx["case_dir"] / "outside.bin"
    outside.write_bytes(data + b"\0" * 64)
    entries = {"location": "weights.bin", "offset": "0", "length": str(len(data))}
    inside = folder / "weights.bin"
    if kind == "absolute_outside":
        entries["location"] = str(outside)
    elif kind == "dotdot":
        entries["location"] = "../outside.bin"
    elif kind == "missing":
        entries["location"] = "not_there.bin"
    elif kind == "absolute_inside":
        inside.write_bytes(data)
        entries["location"] = str(inside)
    elif kind == "directory":
        (folder / "adir").mkdir(exist_ok=True)
        entries["location"] = "adir"
    elif kind == "symlink_out":
        link = folder / "link.bin"
        if not link.is_symlink():
            os.symlink(outside, link)
        entries["location"] = "link.bin"
    else:
        inside.write_bytes(data)
        if kind == "offset_past_end":
            entries["offset"] = str(len(data) + 4096)
        elif kind == "length_huge":
            entries["length"] = str(2**40)
        elif kind == "negative_offset":
            entries["offset"] = "-8"
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    del t.external_data[:]
    for k, v in entries.items():
        e = t.external_data.add()
        e.key, e.value = k, v


def _attr_node(m, i):
    with_attrs = [n for n in _nodes(m) if len(n.attribute)]
    return _pick(with_attrs, i)


def set_attr(m, p, ctx):
    n = _attr_node(m, p["i"])
    if n is None:
        return
    a = n.attribute[p["j"] % len(n.attribute)]
    k = p["k"]
    if a.type == onnx.AttributeProto.INT:
        a.i = _pick(ATTR_INTS, k)
    elif a.type == onnx.AttributeProto.FLOAT:
        a.f = _pick(ATTR_FLOATS, k)
    elif a.type == onnx.AttributeProto.INTS:
        del a.ints[:]
        a.ints.extend([_pick(ATTR_INTS, k + r) for r in range(k % 4)])
    elif a.type == onnx.AttributeProto.STRING:
        a.s = (b"", b"fuzz", b"\xff\xfe")[k % 3]
    if k % 5 == 4:  # the value left, the type changed
        a.type = (onnx.AttributeProto.FLOAT, onnx.AttributeProto.STRING,
                  onnx.AttributeProto.TENSOR, onnx.AttributeProto.GRAPH)[k % 4]


def drop_attr(m, p, ctx):
    n = _attr_node(m, p["i"])
    if n is not None:
        del n.attribute[p["j"] % len(n.attribute)]


def add_attr(m, p, ctx):
    n = _pick(_nodes(m), p["i"])
    if n is not None:
        name = ("fuzz_attr", "axis", "perm", "transB", "alpha", "to")[p["j"] % 6]
        if all(a.name != name for a in n.attribute):
            n.attribute.append(helper.make_attribute(name, _pick(ATTR_INTS, p["k"])))


def opset(m, p, ctx):
    for o in m.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = _pick(OPSETS, p["i"])
            return


def unknown_domain(m, p, ctx):
    m.opset_import.append(helper.make_opsetid(("com.fuzz", "ai.onnx.ml", "com.microsoft")[p["i"] % 3],
                                              _pick(OPSETS, p["j"])))


def node_domain(m, p, ctx):
    n = _pick(_nodes(m), p["i"])
    if n is not None:
        n.domain = ("com.fuzz", "com.microsoft", "ai.onnx.ml", "fffc.canonical")[p["j"] % 4]


def op_type(m, p, ctx):
    n = _pick(_nodes(m), p["i"])
    if n is not None:
        n.op_type = ("FuzzOp", "MatMul", "Gemm", "Relu", "Reshape", "Loop", "If", "Scan",
                     "MatMulNBits", "SparseFFN", "")[p["j"] % 11]


def ir_version(m, p, ctx):
    m.ir_version = _pick(IR_VERSIONS, p["i"])


def init_named_like_input(m, p, ctx):
    t = _init(m, p["i"])
    if t is not None and len(m.graph.input):
        t.name = m.graph.input[0].name


def dup_init(m, p, ctx):
    t = _init(m, p["i"])
    if t is not None:
        c = m.graph.initializer.add()
        c.CopyFrom(t)
        if p["j"] % 2:
            _as_raw(c)
            c.raw_data = c.raw_data[: len(c.raw_data) // 2]


def nonfinite_init(m, p, ctx):
    t = _init(m, p["i"])
    if t is None or t.data_type != TensorProto.FLOAT:
        return
    try:
        a = numpy_helper.to_array(t).copy()
    except Exception:
        return
    if a.size:
        a.reshape(-1)[p["j"] % a.size] = (np.nan, np.inf, -np.inf, 3e38)[p["k"] % 4]
        t.CopyFrom(numpy_helper.from_array(a, t.name))


def swap_op_types(m, p, ctx):
    nodes = _nodes(m)
    if len(nodes) >= 2:
        a, b = nodes[p["i"] % len(nodes)], nodes[p["j"] % len(nodes)]
        a.op_type, b.op_type = b.op_type, a.op_type


def intermediate_value_info(m, p, ctx):
    n = _pick(_nodes(m), p["i"])
    if n is not None and len(n.output):
        shape = [_pick(DIM_VALUES, p["j"] + r) for r in range(1 + p["k"] % 3)]
        m.graph.value_info.append(helper.make_tensor_value_info(
            n.output[0], _pick(ELEM_TYPES, p["k"]), shape))


def dup_output_name(m, p, ctx):
    nodes = _nodes(m)
    if len(nodes) >= 2:
        a, b = nodes[p["i"] % len(nodes)], nodes[p["j"] % len(nodes)]
        if len(a.output) and len(b.output):
            b.output[0] = a.output[0]


def bytes_truncate(data: bytes, p) -> bytes:
    return data[: len(data) * (p["i"] % 100) // 100]


def bytes_flip(data: bytes, p) -> bytes:
    b = bytearray(data)
    if b:
        rng = np.random.default_rng(p["i"])
        for at in rng.integers(0, len(b), 1 + p["j"] % 8):
            b[at] ^= 1 << int(p["k"] % 8)
    return bytes(b)


def build_model(case: dict, case_dir: Path) -> Path:
    """Write the mutated model of ``case`` into ``case_dir/model/`` (external data files
    beside it, files meant to be outside it in ``case_dir``); returns its path."""
    model_dir = case_dir / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    m = onnx.ModelProto()
    m.ParseFromString(seeds.model_bytes(case["seed"]))
    ctx = {"model_dir": model_dir, "case_dir": case_dir}
    byte_steps = []
    for name, params in case["mutations"]:
        if name in BYTE_MUTATIONS:
            byte_steps.append((name, params))
        else:
            globals()[name](m, params, ctx)
    data = m.SerializeToString()
    for name, params in byte_steps:
        data = globals()[name](data, params)
    path = model_dir / "model.onnx"
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------------------- artifacts


def _manifest_path(art: Path) -> Path:
    return art / "manifest.json"


def _load_manifest(art: Path):
    try:
        return json.loads(_manifest_path(art).read_text())
    except (OSError, ValueError):
        return None


def _save_manifest(art: Path, m) -> None:
    _manifest_path(art).write_text(json.dumps(m))


def _keys(m) -> list[str]:
    return sorted(m) if isinstance(m, dict) else []


WRONG_VALUES = (None, 0, -1, 2**70, 1.5, "", "x", [], ["model.onnx"], {}, {"a": 1}, True,
                "../model.onnx", "/etc/passwd")


def _set_nested(m: dict, p, value) -> None:
    """Replace a top-level value, or one inside a nested object."""
    keys = _keys(m)
    if not keys:
        return
    k = keys[p["i"] % len(keys)]
    if isinstance(m[k], dict) and m[k] and p["k"] % 2:
        inner = sorted(m[k])
        m[k][inner[p["j"] % len(inner)]] = value
    else:
        m[k] = value


def mutate_artifact(art: Path, name: str, p, other_shim: Path | None) -> None:
    m = _load_manifest(art)
    files = [q for q in sorted(art.rglob("*")) if q.is_file() and q.name != "manifest.json"]
    if name == "manifest_drop_key" and isinstance(m, dict) and m:
        keys = _keys(m)
        k = keys[p["i"] % len(keys)]
        if isinstance(m[k], dict) and m[k] and p["k"] % 2:
            inner = sorted(m[k])
            del m[k][inner[p["j"] % len(inner)]]
        else:
            del m[k]
        _save_manifest(art, m)
    elif name == "manifest_wrong_type" and isinstance(m, dict):
        _set_nested(m, p, _pick(WRONG_VALUES, p["j"]))
        _save_manifest(art, m)
    elif name == "manifest_extra_key" and isinstance(m, dict):
        m[("fuzz", "shim_", "kernels_", "model ")[p["i"] % 4]] = _pick(WRONG_VALUES, p["j"])
        _save_manifest(art, m)
    elif name == "manifest_path" and isinstance(m, dict):
        key = ("model", "shim", "external_data")[p["i"] % 3]
        m[key] = ("/etc/passwd", "../outside.bin", "./model.onnx", "a/../../x", "..",
                  "model.onnx\\..", str(art / "model.onnx"), "nonexistent.so",
                  "manifest.json", ".")[p["j"] % 10]
        _save_manifest(art, m)
    elif name == "manifest_not_json":
        _manifest_path(art).write_bytes(b"{\"model\": " + bytes([p["i"] % 256]))
    elif name == "manifest_not_object":
        _manifest_path(art).write_text(json.dumps(_pick([[], 1, "s", None, [{}]], p["i"])))
    elif name == "manifest_missing":
        _manifest_path(art).unlink(missing_ok=True)
    elif name == "files_entry" and isinstance(m, dict) and isinstance(m.get("files"), dict) \
            and m["files"]:
        rel = sorted(m["files"])[p["i"] % len(m["files"])]
        entry = m["files"][rel]
        m["files"][rel] = ({"sha256": 5}, {"sha256": "0" * 64}, {"bytes": "7"}, None, [],
                           {"sha256": entry.get("sha256") if isinstance(entry, dict) else 1,
                            "bytes": -1})[p["j"] % 6]
        if p["k"] % 3 == 0:
            m["files"]["../outside.bin"] = {"sha256": "0" * 64, "bytes": 1}
        _save_manifest(art, m)
    elif name == "drop_file" and files:
        _pick(files, p["i"]).unlink()
    elif name == "swap_files" and len(files) >= 2:
        a, b = _pick(files, p["i"]), _pick(files, p["j"])
        da, db = a.read_bytes(), b.read_bytes()
        a.write_bytes(db)
        b.write_bytes(da)
    elif name == "truncate_file" and files:
        f = _pick(files, p["i"])
        data = f.read_bytes()
        f.write_bytes(data[: len(data) * (p["j"] % 100) // 100])
    elif name == "garbage_shim" and isinstance(m, dict) and isinstance(m.get("shim"), str):
        shim = art / m["shim"]
        if shim.is_file():
            garbage = (b"", b"\x7fELF" + bytes(60), bytes(np.random.default_rng(p["i"]).integers(
                0, 256, 4096, dtype=np.uint8)), shim.read_bytes()[:4096])[p["j"] % 4]
            shim.write_bytes(garbage)
    elif name == "other_shim" and other_shim is not None and isinstance(m, dict) \
            and isinstance(m.get("shim"), str) and (art / m["shim"]).is_file():
        (art / m["shim"]).write_bytes(other_shim.read_bytes())
    elif name == "file_to_dir" and files:
        f = _pick(files, p["i"])
        f.unlink()
        f.mkdir()
    elif name == "symlink_out" and files:
        f = _pick(files, p["i"])
        f.unlink()
        os.symlink(art.parent / "outside.bin", f)
    elif name == "extra_file":
        (art / ("extra.bin", "sub/x.onnx")[p["i"] % 2]).parent.mkdir(exist_ok=True)
        (art / ("extra.bin", "sub/x.onnx")[p["i"] % 2]).write_bytes(b"fuzz")


def redigest(art: Path) -> None:
    """Record the files as they now are in the manifest's digests (a tampered artifact
    whose manifest was rewritten to match: what the runtime's loading must survive)."""
    from fffc.runtime.integrity import digests

    m = _load_manifest(art)
    if isinstance(m, dict) and isinstance(m.get("files"), dict):
        try:
            m["files"] = digests(art, frozenset({"manifest.json"}))
        except OSError:
            return
        _save_manifest(art, m)


def build_artifact(case: dict, case_dir: Path, seed_art: Path, other: Path | None) -> Path:
    import shutil

    art = Path(shutil.copytree(seed_art, case_dir / "art.fffc", symlinks=True))
    (case_dir / "outside.bin").write_bytes(b"outside")
    for name, params in case["mutations"]:
        mutate_artifact(art, name, params, other)
    if case.get("redigest"):
        redigest(art)
    return art


# ------------------------------------------------------------------------------ strategies

_param = st.fixed_dictionaries({k: st.integers(0, 2**16) for k in "ijk"})


def model_cases(seed_names: list[str], ops: tuple[str, ...] = MODEL_OPS,
                max_mutations: int = 3) -> st.SearchStrategy[dict]:
    mutation = st.tuples(st.sampled_from(MODEL_MUTATIONS + BYTE_MUTATIONS), _param)
    return st.fixed_dictionaries({
        "kind": st.just("model"),
        "seed": st.sampled_from(seed_names),
        "mutations": st.lists(mutation, min_size=1, max_size=max_mutations),
        "op": st.sampled_from(ops),
    })


def artifact_cases(ops: tuple[str, ...] = ARTIFACT_OPS,
                   max_mutations: int = 2) -> st.SearchStrategy[dict]:
    mutation = st.tuples(st.sampled_from(ARTIFACT_MUTATIONS), _param)
    return st.fixed_dictionaries({
        "kind": st.just("artifact"),
        "mutations": st.lists(mutation, min_size=1, max_size=max_mutations),
        "redigest": st.booleans(),
        "op": st.sampled_from(ops),
    })


def as_json(case: dict) -> dict:
    """``case`` with its tuples as lists (what JSON gives back)."""
    return json.loads(json.dumps(case))
