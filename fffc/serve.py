"""Serving an artifact on Ray Serve (``pip install 'fffc[serve]'``).

Each replica opens one ``fffc.runtime.InferenceSession`` (a plain ``.onnx`` file opens a
stock ONNX Runtime session, for comparing with the model an artifact came from) with as
many intra-op threads as Ray assigned the replica CPUs. Requests are HTTP POSTs to the
route: a JSON body ``{"inputs": {name: nested list}}`` (each input's dtype is the model's)
is answered ``{"outputs": {name: nested list}}``; an ``.npz`` body (Content-Type
``application/x-npz`` or ``application/octet-stream``) is answered with an ``.npz`` of the
outputs. A body the model cannot take (not JSON or not an ``.npz``, a missing or unknown
input, a wrong dtype or shape) is answered 400 (415 for another Content-Type) with a
one-line reason. Each answer names the replica that computed it in the ``x-fffc-replica``
header (the replica's actor name, in Ray's ``serve`` namespace) and its node in
``x-fffc-node``.

    from ray import serve
    import fffc.serve
    serve.run(fffc.serve.app("model.fffc", replicas=2, cpus_per_replica=4))

or ``python -m fffc.serve model.fffc --replicas 2 --cpus-per-replica 4 --port 8000``. The
artifact's path must hold the artifact on every node that runs a replica.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import io
import json
import sys
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

import fffc.runtime
from fffc.contract.errors import ArtifactCheckError, FffcError, UsageError
from fffc.runtime import NUMPY_TYPES

REPLICA_HEADER = "x-fffc-replica"
NODE_HEADER = "x-fffc-node"
PROG = "python -m fffc.serve"

# what reading an .npz archive raises on a body that is not one (truncated, not a zip,
# a member that is not an .npy or holds Python objects)
_NPZ_ERRORS = (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)
# what ONNX Runtime raises on feeds it refuses: the request's fault
_ORT_REFUSALS = (ort.capi.onnxruntime_pybind11_state.InvalidArgument,)


class BadRequest(ValueError):
    """A request the deployment cannot serve: answered with ``status`` and the message."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(_one_line(message))
        self.status = status


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class BodyFormat(enum.Enum):
    """How a request's body (and its answer) is encoded; the value is the answer's
    Content-Type."""

    JSON = "application/json"
    NPZ = "application/x-npz"

    @classmethod
    def of(cls, content_type: str | None) -> BodyFormat:
        """The format a Content-Type names (JSON when there is none)."""
        media = (content_type or cls.JSON.value).split(";")[0].strip().lower()
        try:
            return _MEDIA_TYPES[media]
        except KeyError:
            raise BadRequest(f"Content-Type {media!r}: expected one of "
                             f"{', '.join(sorted(_MEDIA_TYPES))}",
                             HTTPStatus.UNSUPPORTED_MEDIA_TYPE) from None

    def decode(self, body: bytes, dtypes: dict[str, Any]) -> dict[str, np.ndarray]:
        """The arrays a body holds, by name; a JSON input is read as its dtype in ``dtypes``
        (an ``.npz`` input keeps the dtype it was saved with)."""
        if self is BodyFormat.NPZ:
            return _decode_npz(body)
        try:
            inputs = json.loads(body)["inputs"]
        except (ValueError, KeyError, TypeError) as e:
            raise BadRequest(f'body is not JSON of the form {{"inputs": {{name: list}}}}: '
                             f"{type(e).__name__}: {e}") from None
        if not isinstance(inputs, dict):
            raise BadRequest('"inputs" must be an object mapping input names to lists')
        _check_names(inputs, dtypes)
        feeds = {}
        for name, value in inputs.items():
            try:
                feeds[name] = np.asarray(value, dtype=dtypes[name])
            except (ValueError, TypeError, OverflowError) as e:
                raise BadRequest(f"input {name!r} is not a rectangular list of "
                                 f"{np.dtype(dtypes[name]).name} values: {e}") from None
        return feeds

    def encode(self, outputs: dict[str, np.ndarray]) -> bytes:
        if self is BodyFormat.NPZ:
            buf = io.BytesIO()
            np.savez(buf, **outputs)
            return buf.getvalue()
        return json.dumps({"outputs": {k: v.tolist() for k, v in outputs.items()}}).encode()


_MEDIA_TYPES = {"application/json": BodyFormat.JSON, "application/x-npz": BodyFormat.NPZ,
                "application/octet-stream": BodyFormat.NPZ}


def _decode_npz(body: bytes) -> dict[str, np.ndarray]:
    try:
        npz = np.load(io.BytesIO(body), allow_pickle=False)
    except _NPZ_ERRORS as e:
        raise BadRequest(f"body is not an .npz archive: {type(e).__name__}: {e}") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise BadRequest("body is not an .npz archive: a single .npy array, not an .npz "
                         "archive of named arrays")
    try:
        with npz:
            return {name: npz[name] for name in npz.files}
    except _NPZ_ERRORS as e:  # a member read to its end only now
        raise BadRequest(f"body is not an .npz archive: {type(e).__name__}: {e}") from None


def _check_names(feeds: dict[str, Any], expected: dict[str, Any]) -> None:
    unknown = sorted(set(feeds) - set(expected))
    if unknown:
        raise BadRequest(f"unknown inputs {unknown}: the model's are {sorted(expected)}")
    missing = sorted(set(expected) - set(feeds))
    if missing:
        raise BadRequest(f"missing inputs {missing}: the model's are {sorted(expected)}")


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: status, body, its Content-Type."""

    status: HTTPStatus
    body: bytes
    media_type: str

    @classmethod
    def refusal(cls, error: BadRequest) -> Answer:
        return cls(error.status, str(error).encode(), "text/plain")


@dataclass
class Handler:
    """What a replica does with a request body, apart from Ray and HTTP: read the feeds,
    check them against the model's inputs, run the session, encode the outputs."""

    session: ort.InferenceSession
    dtypes: dict[str, Any] = field(init=False)  # input name -> NumPy dtype
    shapes: dict[str, list] = field(init=False)  # input name -> dims (int, or a name)
    output_names: list[str] = field(init=False)

    def __post_init__(self) -> None:
        inputs = self.session.get_inputs()
        self.dtypes = {i.name: np.dtype(NUMPY_TYPES.get(i.type, np.object_)) for i in inputs}
        self.shapes = {i.name: list(i.shape) for i in inputs}
        self.output_names = [o.name for o in self.session.get_outputs()]

    def feeds(self, content_type: str | None, body: bytes) -> tuple[BodyFormat,
                                                                     dict[str, np.ndarray]]:
        """The request's format and feeds, each of the model's dtype and rank and with its
        fixed dims; a BadRequest otherwise."""
        fmt = BodyFormat.of(content_type)
        feeds = fmt.decode(body, self.dtypes)
        _check_names(feeds, self.dtypes)
        for name, value in feeds.items():
            if value.dtype != self.dtypes[name]:
                raise BadRequest(f"input {name!r}: dtype {value.dtype.name}, the model's is "
                                 f"{self.dtypes[name].name}")
            dims = self.shapes[name]
            if value.ndim != len(dims) or any(
                    isinstance(d, int) and d != n for d, n in zip(dims, value.shape, strict=True)):
                raise BadRequest(f"input {name!r}: shape {list(value.shape)}, the model's is "
                                 f"{dims}")
        return fmt, feeds

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds),
                        strict=True))

    def answer(self, content_type: str | None, body: bytes) -> Answer:
        """The answer to one request: 200 with the outputs, or a refusal with its reason."""
        try:
            fmt, feeds = self.feeds(content_type, body)
            try:
                outputs = self.run(feeds)
            except _ORT_REFUSALS as e:
                raise BadRequest(f"the model refused the inputs: {e}") from None
        except BadRequest as e:
            return Answer.refusal(e)
        return Answer(HTTPStatus.OK, fmt.encode(outputs), fmt.value)


def session(model: str | Path, threads: int) -> ort.InferenceSession:
    """An artifact folder's session (its kernels registered) or, for an ``.onnx`` file, a
    stock ONNX Runtime session; ``threads`` intra-op threads, one inter-op thread."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if Path(model).is_dir():
        return fffc.runtime.InferenceSession(model, options)
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def replica_threads() -> int:
    """The CPUs Ray assigned this worker (at least 1 thread for a fractional share)."""
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    return max(1, int(cpus))


@serve.deployment
class ArtifactModel:
    """One session per replica; a request is read and run on a worker thread, so the
    replica keeps reading bodies while a session runs."""

    def __init__(self, model: str) -> None:
        self.threads = replica_threads()
        self.handler = Handler(session(model, self.threads))
        self.headers = {REPLICA_HEADER: serve.get_replica_context().replica_id.to_full_id_str(),
                        NODE_HEADER: ray.get_runtime_context().get_node_id()}

    async def __call__(self, request: Request) -> Response:
        answer = await asyncio.to_thread(self.handler.answer,
                                         request.headers.get("content-type"),
                                         await request.body())
        return Response(answer.body, status_code=answer.status, media_type=answer.media_type,
                        headers=self.headers)


def checked_model(model: str | Path) -> Path:
    """The absolute path of an artifact folder whose files are its manifest's, or of a
    model file; a UsageError (no such path) or ArtifactCheckError otherwise."""
    path = Path(model).resolve()
    if path.is_file():
        return path
    if not path.is_dir():
        raise UsageError(f"{model}: no artifact folder or model file")
    try:
        fffc.runtime.check(path)
    except FileNotFoundError as e:  # a folder without an artifact's files
        raise UsageError(str(e)) from None
    except fffc.runtime.ArtifactError as e:
        raise ArtifactCheckError(str(e)) from None
    return path


def app(model: str | Path, replicas: int = 1, cpus_per_replica: float = 1,
        **options: Any) -> serve.Application:
    """The bound application serving ``model`` (an artifact folder or an ``.onnx`` file):
    ``replicas`` replicas of ``cpus_per_replica`` CPUs each, as many intra-op threads;
    ``options`` go to the deployment's ``.options`` (e.g. ``max_ongoing_requests``). A
    missing or broken artifact fails here (``checked_model``), not in every replica."""
    return ArtifactModel.options(
        num_replicas=replicas, ray_actor_options={"num_cpus": cpus_per_replica},
        **options).bind(str(checked_model(model)))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG,
                                description="Serve an fffc artifact over HTTP on Ray Serve.")
    p.add_argument("model", help="artifact folder (or an .onnx file)")
    p.add_argument("--replicas", type=_positive(int), default=1,
                   help="replicas, each a session of the model (default 1)")
    p.add_argument("--cpus-per-replica", type=_positive(float), default=1,
                   help="Ray CPUs per replica, and its session's intra-op threads (default 1)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address the HTTP proxy listens on (default %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--route", default="/", help="route prefix (default /)")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join (default: RAY_ADDRESS, else a local one)")
    return p


def _positive(kind: type) -> Any:
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text}: must be positive")
        return value

    parse.__name__ = kind.__name__
    return parse


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        application = app(args.model, args.replicas, args.cpus_per_replica)
    except FffcError as e:
        print(f"{PROG}: error: {e.one_line()}", file=sys.stderr)
        return e.exit_code
    ray.init(address=args.address)
    serve.start(http_options={"host": args.host, "port": args.port})
    try:
        serve.run(application, route_prefix=args.route, blocking=True)
    except KeyboardInterrupt:
        return 130
    except RuntimeError as e:  # the deployment failed in its replicas (Ray logged why)
        print(f"{PROG}: error: {_one_line(e)[:500]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
