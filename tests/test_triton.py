"""Triton Inference Server: ``fffc triton-repo`` writes a model repository for the ONNX
Runtime backend whose config Triton's own ``ModelConfig`` protobuf accepts, and an artifact
served by a real ``tritonserver`` (PyTriton's, Python backend) over HTTP on loopback answers
what a local session computes."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import fffc.runtime
from fffc.cli import main
from fffc.contract.errors import EXIT_CODES
from fffc.package.triton import kernel_tokens
from tests.fixtures.quantized import D, float_ffn

HAVE_TRITONCLIENT = importlib.util.find_spec("tritonclient") is not None
needs_tritonclient = pytest.mark.skipif(not HAVE_TRITONCLIENT,
                                        reason="tritonclient[grpc] not installed (fffc[triton])")


def _model_config(text: str):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("triton")
    out = tmp / "ffn.fffc"
    assert main(["compile", str(float_ffn(tmp / "ffn.onnx", "drelu")), "-o", str(out),
                 "--target", "x86", "--crossovers", "table"]) == 0
    return out


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("fffc: error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- the repository ------------------------------------------------------------------------

@pytest.mark.slow
@needs_tritonclient
def test_repository_layout_and_config(artifact, tmp_path):
    repo = tmp_path / "repo"
    assert main(["triton-repo", str(artifact), "-o", str(repo), "--instances", "2"]) == 0
    model_dir = repo / "ffn"
    assert sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*")) == [
        "1", "1/libfffc_ops.so", "1/model.onnx", "config.pbtxt"]
    assert (model_dir / "1/model.onnx").read_bytes() == (artifact / "model.onnx").read_bytes()
    assert ((model_dir / "1/libfffc_ops.so").read_bytes()
            == (artifact / "libfffc_ops.so").read_bytes())

    cfg = _model_config((model_dir / "config.pbtxt").read_text())
    assert cfg.name == "ffn" and cfg.backend == "onnxruntime"
    assert list(cfg.model_operations.op_library_filename) == [
        str(repo.resolve() / "ffn/1/libfffc_ops.so")]
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    from tritonclient.grpc import model_config_pb2 as pb
    assert [(t.name, pb.DataType.Name(t.data_type), list(t.dims)) for t in cfg.input] == [
        ("x", "TYPE_FP32", [-1, -1, D])]
    assert [(t.name, pb.DataType.Name(t.data_type), list(t.dims)) for t in cfg.output] == [
        ("y", "TYPE_FP32", [-1, -1, D])]
    assert [(g.count, pb.ModelInstanceGroup.Kind.Name(g.kind)) for g in cfg.instance_group] == [
        (2, "KIND_CPU")]


@pytest.mark.slow
@needs_tritonclient
def test_repository_model_runs_as_the_backend_loads_it(artifact, tmp_path):
    """What the ONNX Runtime backend does with the folder: register the library the config
    names, open 1/model.onnx; outputs equal the artifact's at kernel and dense token counts."""
    repo = tmp_path / "repo"
    assert main(["triton-repo", str(artifact), "-o", str(repo), "--name", "m"]) == 0
    cfg = _model_config((repo / "m/config.pbtxt").read_text())
    so = ort.SessionOptions()
    so.register_custom_ops_library(cfg.model_operations.op_library_filename[0])
    served = ort.InferenceSession(str(repo / "m/1/model.onnx"), so,
                                  providers=["CPUExecutionProvider"])
    local = fffc.runtime.InferenceSession(artifact)
    model = onnx.load(str(repo / "m/1/model.onnx"))
    assert "ai.fffc" in {o.domain for o in model.opset_import}
    rng = np.random.default_rng(1)
    for tokens in (1, 2, 8):
        x = rng.standard_normal((1, tokens, D)).astype(np.float32)
        np.testing.assert_array_equal(served.run(None, {"x": x})[0], local.run(None, {"x": x})[0])


@pytest.mark.slow
@needs_tritonclient
def test_mount_and_batching(artifact, tmp_path):
    repo = tmp_path / "repo"
    assert main(["triton-repo", str(artifact), "-o", str(repo), "--mount", "/mnt/models",
                 "--max-batch", "4"]) == 0
    text = (repo / "ffn/config.pbtxt").read_text()
    cfg = _model_config(text)
    assert list(cfg.model_operations.op_library_filename) == ["/mnt/models/ffn/1/libfffc_ops.so"]
    # batched: Triton's dims leave out the first (batch) dimension
    assert cfg.max_batch_size == 4 and cfg.HasField("dynamic_batching")
    assert [list(t.dims) for t in cfg.input] == [[-1, D]]
    assert "up to 4*t tokens" in text and "1 to 2 tokens" in text


@pytest.mark.slow
def test_refusals(artifact, tmp_path, capsys):
    repo = tmp_path / "repo"
    if HAVE_TRITONCLIENT:
        assert main(["triton-repo", str(artifact), "-o", str(repo)]) == 0
        before = (repo / "ffn/config.pbtxt").read_text()
        assert main(["triton-repo", str(artifact), "-o", str(repo),
                     "--instances", "3"]) == EXIT_CODES["UsageError"]
        assert "--force" in _one_error(capsys)
        assert (repo / "ffn/config.pbtxt").read_text() == before
        assert main(["triton-repo", str(artifact), "-o", str(repo), "--instances", "3",
                     "--force"]) == 0
        assert "count: 3" in (repo / "ffn/config.pbtxt").read_text()
        capsys.readouterr()
    other = tmp_path / "other"
    (other / "ffn").mkdir(parents=True)
    (other / "ffn" / "mine.txt").write_text("not a model")
    assert main(["triton-repo", str(artifact), "-o", str(other),
                 "--force"]) == EXIT_CODES["UsageError"]
    assert "not a Triton model folder" in _one_error(capsys)
    assert (other / "ffn" / "mine.txt").exists()
    assert main(["triton-repo", str(artifact), "-o", str(tmp_path / "r2"), "--mount",
                 "models"]) == EXIT_CODES["UsageError"]
    assert "absolute" in _one_error(capsys)
    # the model's first dimension is the batch one here, so a fixed-batch model is needed to
    # see the refusal: covered by test_batching_needs_a_dynamic_first_dimension
    tampered = Path(shutil.copytree(artifact, tmp_path / "t.fffc"))
    (tampered / "libfffc_ops.so").write_bytes(b"\0" * 64)
    assert main(["triton-repo", str(tampered), "-o",
                 str(tmp_path / "r3")]) == EXIT_CODES["ArtifactCheckError"]
    assert "libfffc_ops.so" in _one_error(capsys)
    assert not (tmp_path / "r3").exists()


def _plain_artifact(folder: Path, batch: int | str, external: bool,
                    elem=TensorProto.FLOAT) -> Path:
    """An artifact folder without sites (no shim, no manifest): y = x·W, W as external data
    when asked."""
    folder.mkdir(parents=True)
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", elem, [batch, 4])],
        [helper.make_tensor_value_info("y", elem, [batch, 3])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    kw = {"save_as_external_data": True, "location": "model.onnx.data",
          "size_threshold": 0} if external else {}
    onnx.save(model, str(folder / "model.onnx"), **kw)
    return folder


@needs_tritonclient
def test_external_data_copied_and_no_library(tmp_path):
    art = _plain_artifact(tmp_path / "plain.fffc", "batch", external=True)
    repo = tmp_path / "repo"
    assert main(["triton-repo", str(art), "-o", str(repo)]) == 0
    version = repo / "plain/1"
    assert sorted(p.name for p in version.iterdir()) == ["model.onnx", "model.onnx.data"]
    cfg = _model_config((repo / "plain/config.pbtxt").read_text())
    assert list(cfg.model_operations.op_library_filename) == []
    x = np.ones((2, 4), np.float32)
    y = ort.InferenceSession(str(version / "model.onnx")).run(None, {"x": x})[0]
    np.testing.assert_array_equal(y, x @ np.arange(12, dtype=np.float32).reshape(4, 3))


@needs_tritonclient
def test_batching_needs_a_dynamic_first_dimension(tmp_path, capsys):
    art = _plain_artifact(tmp_path / "fixed.fffc", 2, external=False)
    assert main(["triton-repo", str(art), "-o", str(tmp_path / "repo"),
                 "--max-batch", "8"]) == EXIT_CODES["UsageError"]
    assert "first dimension" in _one_error(capsys)
    assert main(["triton-repo", str(art), "-o", str(tmp_path / "repo")]) == 0
    cfg = _model_config((tmp_path / "repo/fixed/config.pbtxt").read_text())
    assert [list(t.dims) for t in cfg.input] == [[2, 4]]


@needs_tritonclient
def test_element_types(tmp_path, capsys):
    art = _plain_artifact(tmp_path / "h.fffc", "b", external=False, elem=TensorProto.FLOAT16)
    assert main(["triton-repo", str(art), "-o", str(tmp_path / "repo")]) == 0
    from tritonclient.grpc import model_config_pb2 as pb
    cfg = _model_config((tmp_path / "repo/h/config.pbtxt").read_text())
    assert pb.DataType.Name(cfg.input[0].data_type) == "TYPE_FP16"
    art = _plain_artifact(tmp_path / "c.fffc", "b", external=False,
                          elem=TensorProto.COMPLEX64)
    assert main(["triton-repo", str(art), "-o",
                 str(tmp_path / "repo2")]) == EXIT_CODES["UnsupportedModelError"]
    assert "COMPLEX64" in _one_error(capsys)


def test_kernel_tokens_from_the_manifest():
    def site(*branches):
        return {"dispatch": {"branches": [{"branch": b, "min_tokens": lo, "max_tokens": hi}
                                          for b, lo, hi in branches]}}
    assert kernel_tokens({"sites": [site(("kernel", 1, 2), ("original", 3, None)),
                                    site(("kernel", 1, 4), ("original", 5, None))]}) == 2
    assert kernel_tokens({"sites": [site(("kernel", 1, None))]}) is None
    assert kernel_tokens({"sites": [site(("original", 1, None))]}) == 0
    assert kernel_tokens({}) == 0


# -- a real server: PyTriton's tritonserver -------------------------------------------------

TRITON_VENV_ENV = "FFFC_TRITON_VENV"
ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serving_python() -> str:
    """The Python that runs the server: this one when its NumPy is 1.x and it has PyTriton,
    else the ``fffc[triton]`` environment (``make triton`` creates ``<repo>/.venv-triton``;
    ``$FFFC_TRITON_VENV`` points elsewhere). PyTriton's Python backend stub is built against
    NumPy 1 and returns empty output tensors under NumPy 2."""
    if int(np.__version__.split(".")[0]) < 2 and importlib.util.find_spec("pytriton"):
        return sys.executable
    env = os.environ.get(TRITON_VENV_ENV)
    python = (Path(env) if env else ROOT / ".venv-triton") / "bin" / "python"
    if not python.exists():
        pytest.skip(f"PyTriton's Python backend stub needs NumPy 1 and this environment has "
                    f"numpy {np.__version__}: make triton (or ${TRITON_VENV_ENV}) gives the "
                    "server an environment of its own")
    return str(python)


def _server_env(python: str) -> dict[str, str]:
    """The bundled tritonserver finds its libraries in ``nvidia_pytriton.libs`` (PyTriton adds
    them to LD_LIBRARY_PATH only when it sees itself in a site-packages folder of its
    interpreter, which a venv layered over another one's is not), and its Python backend stub
    must load that interpreter's libpython, not a system build of the same version."""
    probe = ("import pathlib, sysconfig, pytriton; print(sysconfig.get_config_var('LIBDIR')); "
             "print(pathlib.Path(pytriton.__file__).parent.parent / 'nvidia_pytriton.libs')")
    r = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=60)
    if r.returncode:
        pytest.skip(f"{python} cannot import PyTriton: {r.stderr.strip()[-300:]}")
    env = os.environ.copy()
    paths = [*r.stdout.split(), env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = ":".join(p for p in paths if p)
    return env


@pytest.mark.slow
def test_pytriton_serves_the_artifact(artifact, tmp_path):
    """``python -m fffc.triton_serve`` on loopback, free ports; 10 requests over HTTP, each
    output equal to a local session's; the server stops on SIGINT."""
    httpclient = pytest.importorskip("tritonclient.http",
                                     reason="tritonclient not installed (fffc[triton])")
    python = _serving_python()
    env = _server_env(python)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    local = fffc.runtime.InferenceSession(artifact, so)
    http_port = _free_port()
    log = tmp_path / "server.log"
    rng = np.random.default_rng(2)
    feeds = [rng.standard_normal((b, t, D)).astype(np.float32)
             for b, t in [(1, 1)] * 6 + [(1, 2), (2, 1), (1, 8), (3, 5)]]
    with open(log, "w") as out:
        server = subprocess.Popen(
            [python, "-m", "fffc.triton_serve", str(artifact), "--threads", "1",
             "--address", "127.0.0.1", "--http-port", str(http_port),
             "--grpc-port", str(_free_port()), "--metrics-port", str(_free_port())],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    client = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
    try:
        deadline = time.monotonic() + 90
        while not _ready(client, "ffn"):
            assert server.poll() is None, f"the server exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"not ready in 90 s: {log.read_text()[-2000:]}"
            time.sleep(0.5)
        meta = client.get_model_metadata("ffn")
        assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [
            ("x", "FP32", [-1, -1, D])]
        for x in feeds:
            inp = httpclient.InferInput("x", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            y = client.infer("ffn", [inp]).as_numpy("y")
            np.testing.assert_array_equal(y, local.run(None, {"x": x})[0])
    finally:
        client.close()
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    with contextlib.closing(socket.socket()) as s:
        assert s.connect_ex(("127.0.0.1", http_port)) != 0  # nothing listens any more


def _ready(client, name: str) -> bool:
    try:
        return client.is_model_ready(name)
    except Exception:  # not listening yet
        return False


def test_bad_arguments(tmp_path, capsys):
    art = _plain_artifact(tmp_path / "p.fffc", "b", external=False)
    repo = tmp_path / "repo"
    assert main(["triton-repo", str(tmp_path / "missing.fffc"), "-o",
                 str(repo)]) == EXIT_CODES["ArtifactCheckError"]
    assert "not an fffc artifact" in _one_error(capsys)
    for flags, message in ((["--instances", "0"], "--instances"),
                           (["--max-batch", "-1"], "--max-batch"),
                           (["--name", "../x"], "plain folder name")):
        assert main(["triton-repo", str(art), "-o", str(repo), *flags]) == EXIT_CODES[
            "UsageError"]
        assert message in _one_error(capsys)
    assert not repo.exists()
