"""fffc.serve's request handling without a cluster: bodies read, checked against the
model's inputs and answered (``Handler.answer``), and the command line's errors."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from http import HTTPStatus
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

pytest.importorskip("ray.serve")
from fffc.contract.errors import ArtifactCheckError, UsageError
from fffc.serve import BodyFormat, Handler, main

ROOT = Path(__file__).resolve().parent.parent
X = np.array([[0.5, -1.0, 2.0], [3.0, 0.25, -4.0]], dtype=np.float32)
K = np.array([7], dtype=np.int64)


@pytest.fixture(scope="module")
def handler(tmp_path_factory) -> Handler:
    """y = x + float(k): x float32 [batch, 3], k int64 [1]."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["k"], ["kf"], to=TensorProto.FLOAT),
         helper.make_node("Add", ["x", "kf"], ["y"])], "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("k", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("serve") / "add.onnx"
    onnx.save(model, path)
    return Handler(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]))


def npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def as_json(**inputs) -> bytes:
    return json.dumps({"inputs": inputs}).encode()


EXPECTED = np.array([[7.5, 6.0, 9.0], [10.0, 7.25, 3.0]], dtype=np.float32)


@pytest.mark.parametrize("content_type", [None, "application/json",
                                          "application/json; charset=utf-8"])
def test_json_body(handler, content_type) -> None:
    answer = handler.answer(content_type, as_json(x=X.tolist(), k=[7]))
    assert answer.status == HTTPStatus.OK and answer.media_type == "application/json"
    y = json.loads(answer.body)["outputs"]["y"]
    np.testing.assert_array_equal(np.asarray(y, dtype=np.float32), EXPECTED)


@pytest.mark.parametrize("content_type", ["application/x-npz", "application/octet-stream"])
def test_npz_body(handler, content_type) -> None:
    answer = handler.answer(content_type, npz(x=X, k=K))
    assert answer.status == HTTPStatus.OK and answer.media_type == BodyFormat.NPZ.value
    with np.load(io.BytesIO(answer.body), allow_pickle=False) as out:
        assert out.files == ["y"]
        assert out["y"].dtype == np.float32
        np.testing.assert_array_equal(out["y"], EXPECTED)


BAD_JSON = {
    "not JSON": (b'{"inputs": {"x": [', "not JSON"),
    "not UTF-8": (b"\xff\xfe\x00", "not JSON"),
    "empty": (b"", "not JSON"),
    "a list, not an object": (b"[1, 2]", "not JSON"),
    "no inputs key": (b'{"x": [[1, 2, 3]]}', "not JSON"),
    "inputs not an object": (b'{"inputs": [1, 2]}', '"inputs" must be an object'),
    "missing input": (as_json(x=X.tolist()), "missing inputs ['k']"),
    "unknown input": (as_json(x=X.tolist(), k=[7], z=[1.0]), "unknown inputs ['z']"),
    "ragged list": (as_json(x=[[1, 2, 3], [1, 2]], k=[7]), "input 'x'"),
    "strings for numbers": (as_json(x=[["a", "b", "c"]], k=[7]), "input 'x'"),
    "int64 overflow": (as_json(x=X.tolist(), k=[2**70]), "input 'k'"),
    "wrong fixed dim": (as_json(x=[[1, 2]], k=[7]), "input 'x': shape [1, 2]"),
    "wrong rank": (as_json(x=[1, 2, 3], k=[7]), "input 'x': shape [3]"),
    "null for an input": (as_json(x=None, k=[7]), "input 'x': shape []"),
}


@pytest.mark.parametrize("body, reason", BAD_JSON.values(), ids=BAD_JSON.keys())
def test_bad_json_bodies(handler, body, reason) -> None:
    refused(handler.answer("application/json", body), HTTPStatus.BAD_REQUEST, reason)


def _truncated() -> bytes:
    body = npz(x=X, k=K)
    return body[: len(body) // 2]


def _npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, X)
    return buf.getvalue()


BAD_NPZ = {
    "wrong dtype": (npz(x=X.astype(np.float64), k=K), "input 'x': dtype float64"),
    "int32 for int64": (npz(x=X, k=K.astype(np.int32)), "input 'k': dtype int32"),
    "missing input": (npz(x=X), "missing inputs ['k']"),
    "unknown input": (npz(x=X, k=K, z=X), "unknown inputs ['z']"),
    "wrong shape": (npz(x=X[:, :2], k=K), "input 'x': shape [2, 2]"),
    "wrong rank": (npz(x=X[None], k=K), "input 'x': shape [1, 2, 3]"),
    "truncated": (_truncated(), "not an .npz archive"),
    "garbage": (b"PK\x03\x04 not really a zip", "not an .npz archive"),
    "JSON sent as npz": (as_json(x=X.tolist(), k=[7]), "not an .npz archive"),
    "empty": (b"", "not an .npz archive"),
    "a single .npy": (_npy(), "a single .npy array"),
    "Python objects": (npz(x=np.array([{"a": 1}], dtype=object), k=K), "not an .npz archive"),
}


@pytest.mark.parametrize("body, reason", BAD_NPZ.values(), ids=BAD_NPZ.keys())
def test_bad_npz_bodies(handler, body, reason) -> None:
    refused(handler.answer("application/x-npz", body), HTTPStatus.BAD_REQUEST, reason)


def test_unsupported_content_type(handler) -> None:
    refused(handler.answer("text/csv", b"1,2,3"), HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            "Content-Type 'text/csv'")


def refused(answer, status: HTTPStatus, reason: str) -> None:
    text = answer.body.decode()
    assert answer.status == status and answer.media_type == "text/plain", text
    assert reason in text, text
    assert "\n" not in text and "Traceback" not in text


def run_module(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "fffc.serve", *args], capture_output=True,
                          text=True, timeout=120, env=env, cwd=ROOT)


def test_help() -> None:
    done = run_module("--help")
    assert done.returncode == 0 and done.stdout.startswith("usage: python -m fffc.serve")
    assert "--replicas" in done.stdout and "--cpus-per-replica" in done.stdout


def test_missing_artifact_is_one_line(tmp_path) -> None:
    done = run_module(str(tmp_path / "nothing.fffc"))
    assert done.returncode == UsageError.exit_code
    assert done.stderr == (f"python -m fffc.serve: error: {tmp_path / 'nothing.fffc'}: no "
                           "artifact folder or model file\n")


def one_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("python -m fffc.serve: error: "), err
    return err


def test_folder_without_an_artifact(tmp_path, capsys) -> None:
    assert main([str(tmp_path)]) == UsageError.exit_code
    assert "not an fffc artifact" in one_error(capsys)


def test_broken_manifest(tmp_path, capsys) -> None:
    (tmp_path / "manifest.json").write_text("{not json")
    assert main([str(tmp_path)]) == ArtifactCheckError.exit_code
    assert "manifest.json: not valid JSON" in one_error(capsys)


def test_bad_option_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["model.fffc", "--replicas", "0"])
    assert exit_.value.code == 2
    assert "argument --replicas: 0: must be positive" in capsys.readouterr().err
