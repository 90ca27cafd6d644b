"""Serve an artifact from Triton Inference Server's Python backend through PyTriton
(PyPI ``nvidia-pytriton``, which bundles ``tritonserver``): each model instance is one
``fffc.runtime.InferenceSession``, each request one session call on the arrays as sent
(no Triton batching, so a decode request keeps the token count fffc's kernels serve).

    python -m fffc.triton_serve model.fffc --http-port 8000 --grpc-port 8001 [--threads N]

or, in a program that owns a ``pytriton.triton.Triton``: ``bind(triton, "model.fffc")``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

from . import runtime
from .runtime import NUMPY_TYPES


def _tensors(args) -> list:
    from pytriton.model_config import Tensor

    out = []
    for a in args:
        if a.type not in NUMPY_TYPES:
            raise ValueError(f"{a.name}: {a.type} has no NumPy type PyTriton can declare")
        shape = tuple(d if isinstance(d, int) else -1 for d in a.shape)
        out.append(Tensor(name=a.name, dtype=NUMPY_TYPES[a.type], shape=shape))
    return out


def infer_function(session: runtime.InferenceSession) -> Callable[[list], list[dict]]:
    """PyTriton's inference callable over ``session``: one session call per request."""
    names = [o.name for o in session.get_outputs()]

    def infer(requests: list) -> list[dict]:
        return [dict(zip(names, session.run(names, dict(r)), strict=True)) for r in requests]

    return infer


def bind(triton, artifact: str | Path, model_name: str | None = None, instances: int = 1,
         threads: int = 0, sessions: Sequence[runtime.InferenceSession] | None = None) -> str:
    """Bind the artifact to ``triton`` (a ``pytriton.triton.Triton``) as ``model_name``
    (default: the folder's name up to its first dot) with ``instances`` sessions of
    ``threads`` intra-op threads each (0: ONNX Runtime's default), or the ``sessions``
    given; returns the name."""
    import onnxruntime as ort
    from pytriton.model_config import ModelConfig

    def session() -> runtime.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        return runtime.InferenceSession(artifact, options)

    artifact = Path(artifact)
    name = model_name or artifact.name.split(".")[0]
    sessions = list(sessions) if sessions else [session() for _ in range(instances)]
    triton.bind(model_name=name, infer_func=[infer_function(s) for s in sessions],
                inputs=_tensors(sessions[0].get_inputs()),
                outputs=_tensors(sessions[0].get_outputs()),
                config=ModelConfig(batching=False), strict=True)
    return name


def main(argv: Sequence[str] | None = None) -> int:
    from pytriton.triton import Triton, TritonConfig

    p = argparse.ArgumentParser(prog="python -m fffc.triton_serve",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", type=Path)
    p.add_argument("--name", help="model name (default: the folder's name up to its first dot)")
    p.add_argument("--instances", type=int, default=1, help="sessions (model instances)")
    p.add_argument("--threads", type=int, default=0,
                   help="intra-op threads per session (default 0: ONNX Runtime's choice)")
    p.add_argument("--address", default="127.0.0.1",
                   help="address of the HTTP and gRPC endpoints (default %(default)s)")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    args = p.parse_args(argv)
    config = TritonConfig(http_address=args.address, http_port=args.http_port,
                          grpc_address=args.address, grpc_port=args.grpc_port,
                          metrics_address=args.address, metrics_port=args.metrics_port)
    with Triton(config=config) as triton:
        bind(triton, args.artifact, args.name, args.instances, args.threads)
        triton.serve()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
