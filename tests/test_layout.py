"""The artifact's layout: the model keeps its weights in external data when the source had
external data or is large, written without touching the model in memory, and the artifact
stays what ``fffc.runtime`` opens."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

import fffc.runtime
from fffc.package import layout
from fffc.package.layout import Layout
from fffc.pipeline import compile_model
from tests.fixtures.graphs import dense_ffn, x_probe


def _save(model: onnx.ModelProto, path, external: bool) -> None:
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True,
                        all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    else:
        onnx.save(model, str(path))


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]


def test_external_data_when_the_source_has_it_or_is_large(tmp_path, monkeypatch):
    inline, external = tmp_path / "inline.onnx", tmp_path / "external.onnx"
    _save(dense_ffn("relu"), inline, external=False)
    _save(dense_ffn("relu"), external, external=True)
    assert Layout.for_source(inline) == Layout()
    assert Layout.for_source(external).external_data == "model.onnx.data"
    monkeypatch.setattr(layout, "INLINE_LIMIT", inline.stat().st_size - 1)
    assert Layout.for_source(inline).external_data == "model.onnx.data"


def test_write_model_leaves_the_model_in_memory_whole(tmp_path):
    proto = dense_ffn("relu")
    model = ir.serde.deserialize_model(proto)
    before = ir.serde.serialize_model(model).SerializeToString()
    path = Layout(external_data="model.onnx.data").write_model(model, tmp_path / "art")
    assert path == tmp_path / "art" / "model.onnx"
    assert (tmp_path / "art" / "model.onnx.data").stat().st_size > 1000
    assert ir.serde.serialize_model(model).SerializeToString() == before
    bare = onnx.load(str(path), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in bare.graph.initializer)
    x = x_probe()
    reference = tmp_path / "reference.onnx"
    onnx.save(proto, str(reference))
    np.testing.assert_array_equal(_run(path, x), _run(reference, x))


def test_compiled_artifact_of_an_external_data_model(tmp_path):
    src = tmp_path / "m.onnx"
    _save(dense_ffn("relu"), src, external=True)
    result = compile_model(src, tmp_path / "m.fffc")
    art = result.artifact
    manifest = json.loads((art / "manifest.json").read_text())
    assert (manifest["model"], manifest["external_data"]) == ("model.onnx", "model.onnx.data")
    assert manifest["genai"] is None
    assert (art / "model.onnx.data").exists() and not (art / "weights.bin").exists()
    x = x_probe()
    got = fffc.runtime.InferenceSession(art).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, _run(src, x), rtol=1e-4, atol=1e-5)
