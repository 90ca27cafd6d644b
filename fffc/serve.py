"""Serving an artifact on Ray Serve (``pip install 'fffc[serve]'``).

Each replica opens one ``fffc.runtime.InferenceSession`` (a plain ``.onnx`` file opens a
stock ONNX Runtime session, for comparing with the model an artifact came from) with as
many intra-op threads as Ray assigned the replica CPUs. Requests are HTTP POSTs to the
route: a JSON body ``{"inputs": {name: nested list}}`` (each input's dtype is the model's)
is answered ``{"outputs": {name: nested list}}``; an ``.npz`` body (Content-Type
``application/octet-stream`` or ``application/x-npz``) is answered with an ``.npz`` of the
outputs. Each answer names the replica that computed it in the ``x-fffc-replica`` header
(the replica's actor name, in Ray's ``serve`` namespace) and its node in
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
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

import fffc.runtime

REPLICA_HEADER = "x-fffc-replica"
NODE_HEADER = "x-fffc-node"

# ONNX Runtime's tensor type names → the NumPy dtype a JSON input is read as
DTYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int8)": np.int8, "tensor(int16)": np.int16, "tensor(int32)": np.int32,
    "tensor(int64)": np.int64, "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32, "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_,
}


class BadRequest(ValueError):
    """A request body the deployment cannot read: answered 400 with the message."""


class BodyFormat(enum.Enum):
    """How a request's body (and its answer) is encoded; the value is the answer's
    Content-Type."""

    JSON = "application/json"
    NPZ = "application/x-npz"

    @classmethod
    def of(cls, content_type: str | None) -> BodyFormat:
        media = (content_type or "application/json").split(";")[0].strip().lower()
        try:
            return _MEDIA_TYPES[media]
        except KeyError:
            raise BadRequest(f"Content-Type {media!r}: expected one of "
                             f"{', '.join(sorted(_MEDIA_TYPES))}") from None

    def decode(self, body: bytes, dtypes: dict[str, Any]) -> dict[str, np.ndarray]:
        """The feeds a body holds; a JSON input is cast to its dtype in ``dtypes``."""
        if self is BodyFormat.NPZ:
            try:
                with np.load(io.BytesIO(body), allow_pickle=False) as npz:
                    return {name: npz[name] for name in npz.files}
            except (ValueError, OSError, EOFError) as e:
                raise BadRequest(f"body is not an .npz archive: {e}") from None
        try:
            inputs = json.loads(body)["inputs"]
        except (ValueError, KeyError, TypeError) as e:
            raise BadRequest(f'body is not JSON of the form {{"inputs": {{name: list}}}}: '
                             f"{type(e).__name__}: {e}") from None
        if not isinstance(inputs, dict):
            raise BadRequest('"inputs" must be an object mapping input names to lists')
        unknown = sorted(set(inputs) - set(dtypes))
        if unknown:
            raise BadRequest(f"unknown inputs {unknown}: the model's are {sorted(dtypes)}")
        try:
            return {name: np.asarray(value, dtype=dtypes[name])
                    for name, value in inputs.items()}
        except (ValueError, TypeError) as e:
            raise BadRequest(f"an input is not a rectangular list of numbers: {e}") from None

    def encode(self, outputs: dict[str, np.ndarray]) -> bytes:
        if self is BodyFormat.NPZ:
            buf = io.BytesIO()
            np.savez(buf, **outputs)
            return buf.getvalue()
        return json.dumps({"outputs": {k: v.tolist() for k, v in outputs.items()}}).encode()


_MEDIA_TYPES = {"application/json": BodyFormat.JSON, "application/x-npz": BodyFormat.NPZ,
                "application/octet-stream": BodyFormat.NPZ}


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
    """One session per replica; requests run on a worker thread so the replica keeps
    reading bodies while a session runs."""

    def __init__(self, model: str) -> None:
        self.threads = replica_threads()
        self.session = session(model, self.threads)
        self.dtypes = {i.name: DTYPES.get(i.type) for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.headers = {REPLICA_HEADER: serve.get_replica_context().replica_id.to_full_id_str(),
                        NODE_HEADER: ray.get_runtime_context().get_node_id()}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds),
                        strict=True))

    async def __call__(self, request: Request) -> Response:
        try:
            fmt = BodyFormat.of(request.headers.get("content-type"))
            feeds = fmt.decode(await request.body(), self.dtypes)
        except BadRequest as e:
            return Response(str(e), status_code=400, media_type="text/plain",
                            headers=self.headers)
        try:
            outputs = await asyncio.to_thread(self.run, feeds)
        except (ort.capi.onnxruntime_pybind11_state.InvalidArgument,
                ort.capi.onnxruntime_pybind11_state.Fail) as e:
            return Response(str(e), status_code=400, media_type="text/plain",
                            headers=self.headers)
        return Response(fmt.encode(outputs), media_type=fmt.value, headers=self.headers)


def app(model: str | Path, replicas: int = 1, cpus_per_replica: float = 1,
        **options: Any) -> serve.Application:
    """The bound application serving ``model`` (an artifact folder or an ``.onnx`` file):
    ``replicas`` replicas of ``cpus_per_replica`` CPUs each, as many intra-op threads;
    ``options`` go to the deployment's ``.options`` (e.g. ``max_ongoing_requests``)."""
    path = Path(model).resolve()
    if path.is_dir():
        fffc.runtime.check(path)  # a broken artifact fails here, not in every replica
    elif not path.is_file():
        raise FileNotFoundError(f"{model}: no artifact folder or model file")
    return ArtifactModel.options(
        num_replicas=replicas, ray_actor_options={"num_cpus": cpus_per_replica},
        **options).bind(str(path))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m fffc.serve",
                                description="Serve an fffc artifact over HTTP on Ray Serve.")
    p.add_argument("model", help="artifact folder (or an .onnx file)")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--cpus-per-replica", type=float, default=1)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--route", default="/", help="route prefix (default /)")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join (default: RAY_ADDRESS, else a local one)")
    args = p.parse_args(argv)
    ray.init(address=args.address)
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(app(args.model, args.replicas, args.cpus_per_replica), route_prefix=args.route,
              blocking=True)


if __name__ == "__main__":
    main()
