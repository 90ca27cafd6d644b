"""A Triton Inference Server model repository for an artifact, served by Triton's ONNX
Runtime backend: ``REPO/<name>/config.pbtxt`` and ``REPO/<name>/1/`` holding the model
(``model.onnx``, its external data under the name the model records) and the shim.

The backend hands each ``model_operations.op_library_filename`` to ONNX Runtime's
``RegisterCustomOpsLibrary`` as it is written, so the path is resolved by the dynamic loader
in the server's process, not against the model folder: the config names the shim by the
absolute path at which the server sees the repository (``mount``; KServe mounts a storage
URI at ``/mnt/models``).

Batching: fffc's kernels serve calls of few tokens (tokens = the product of the FFN input's
leading dimensions, batch x sequence); the rest go to the original subgraph. Triton's dynamic
batcher concatenates requests along the first dimension, so it multiplies the tokens per
call: by default the repository turns batching off and each request reaches ONNX Runtime with
the shape its client sent.

The config is parsed into Triton's own ``ModelConfig`` protobuf (``tritonclient[grpc]``)
before anything is written.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import onnx

from .. import runtime
from ..contract.errors import ArtifactCheckError, PackagingError, UnsupportedModelError, UsageError
from ..contract.kinds import Branch, TargetFamily
from ..frontend import external_data_files
from ..runtime.integrity import inside
from .output import install, staging

CONFIG = "config.pbtxt"
VERSION = "1"
MODEL = "model.onnx"  # the ONNX Runtime backend's default_model_filename

# ONNX tensor element types and Triton's names for them (model_config.proto's DataType).
TRITON_TYPES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.BFLOAT16: "TYPE_BF16",
    onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.INT8: "TYPE_INT8",
    onnx.TensorProto.INT16: "TYPE_INT16",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.UINT16: "TYPE_UINT16",
    onnx.TensorProto.UINT32: "TYPE_UINT32",
    onnx.TensorProto.UINT64: "TYPE_UINT64",
    onnx.TensorProto.BOOL: "TYPE_BOOL",
    onnx.TensorProto.STRING: "TYPE_STRING",
}
DYNAMIC = -1  # Triton's dimension of any size


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str
    dims: tuple[int, ...]  # DYNAMIC where the model names or leaves out a size


@dataclass(frozen=True)
class RepositoryOptions:
    name: str | None = None  # default: the artifact folder's name without its suffix
    instances: int = 1
    max_batch: int = 0  # 0: Triton batching off
    mount: str | None = None  # absolute path of REPO in the server; default REPO here
    force: bool = False


def tensors(model: onnx.ModelProto, path: Path) -> tuple[list[Tensor], list[Tensor]]:
    """The model's inputs (those without an initializer) and outputs as Triton sees them."""
    constants = {t.name for t in model.graph.initializer}
    ins = [_tensor(v, path) for v in model.graph.input if v.name not in constants]
    return ins, [_tensor(v, path) for v in model.graph.output]


def _tensor(value: onnx.ValueInfoProto, path: Path) -> Tensor:
    if not value.type.HasField("tensor_type"):
        raise UnsupportedModelError(f"{value.name} is not a tensor; Triton's ONNX Runtime "
                                    "backend serves tensors only", path=path)
    t = value.type.tensor_type
    if t.elem_type not in TRITON_TYPES:
        raise UnsupportedModelError(
            f"{value.name} has element type {onnx.TensorProto.DataType.Name(t.elem_type)}, "
            "which Triton has no type for", path=path)
    if not t.HasField("shape"):
        raise UnsupportedModelError(f"{value.name} has no shape (not even its rank); "
                                    "Triton's config needs its dimensions", path=path)
    dims = tuple(d.dim_value if d.HasField("dim_value") else DYNAMIC for d in t.shape.dim)
    return Tensor(value.name, TRITON_TYPES[t.elem_type], dims)


def kernel_tokens(manifest: dict) -> int | None:
    """The most tokens per call that fffc's kernels serve at every site with kernels (None:
    any count; 0: no site has kernels)."""
    bounds = []
    for site in manifest.get("sites") or []:
        for b in (site.get("dispatch") or {}).get("branches", []):
            if Branch(b["branch"]) is Branch.KERNEL:
                bounds.append(b["max_tokens"])
    if not bounds:
        return 0
    finite = [b for b in bounds if b is not None]
    return min(finite) if finite else None


def config_text(name: str, inputs: list[Tensor], outputs: list[Tensor], library: str,
                gpu: bool, instances: int, max_batch: int, tokens: int | None) -> str:
    """``config.pbtxt`` (protobuf text format, with comments saying why)."""
    batched = max_batch > 0
    lines = [f'name: "{name}"', 'backend: "onnxruntime"', ""]
    lines += _batching_comment(batched, max_batch, tokens)
    lines.append(f"max_batch_size: {max_batch}")
    if batched:
        lines.append("dynamic_batching { }")
    lines += ["", "# fffc's custom-op library (kernels linked in). The backend passes this path",
              "# to ONNX Runtime's RegisterCustomOpsLibrary as it is: absolute, as the server",
              "# sees the repository.",
              f'model_operations {{ op_library_filename: "{library}" }}' if library else
              "# (no fffc site has kernels: the model runs on standard ops, no library)", ""]
    for key, group in (("input", inputs), ("output", outputs)):
        lines += [f"{key} [", ",\n".join(_tensor_text(t, batched) for t in group), "]"]
    kind = "KIND_GPU" if gpu else "KIND_CPU"
    lines += ["", "# each instance is one ONNX Runtime session of the model",
              f"instance_group [ {{ count: {instances} kind: {kind} }} ]", ""]
    return "\n".join(lines)


def _batching_comment(batched: bool, max_batch: int, tokens: int | None) -> list[str]:
    served = ("fffc's kernels serve calls of any number of tokens" if tokens is None else
              "no fffc kernel serves a call (every site runs its original subgraph)"
              if tokens == 0 else
              f"fffc's kernels serve calls of 1 to {tokens} tokens (tokens = the product of "
              "the FFN input's\n# leading dimensions, batch x sequence); larger calls run the "
              "original FFN")
    lines = [f"# {served}."]
    if batched:
        lines += ["# Dynamic batching concatenates requests along the first dimension: "
                  f"up to {max_batch} requests",
                  f"# of t tokens make one call of up to {max_batch}*t tokens."]
    else:
        lines += ["# Batching is off (max_batch_size 0): dynamic batching would concatenate "
                  "requests along the",
                  "# first dimension into calls of more tokens, past what the kernels serve; "
                  "each request is",
                  "# one ONNX Runtime call of the shape its client sent (dims include the "
                  "batch dimension)."]
    return lines


def _tensor_text(t: Tensor, batched: bool) -> str:
    dims = t.dims[1:] if batched else t.dims
    # A scalar: Triton wants at least one dimension, reshaped to none for the model.
    shape = ", ".join(str(d) for d in dims) if dims else "1"
    reshape = " reshape: { shape: [ ] }" if not dims else ""
    return f'  {{ name: "{t.name}" data_type: {t.data_type} dims: [ {shape} ]{reshape} }}'


def validate(text: str, where: Path):
    """``text`` parsed into Triton's ``ModelConfig`` (returned); PackagingError if it is not
    one, or if tritonclient[grpc] is not installed."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:
        raise PackagingError(f"checking the Triton config needs tritonclient[grpc] ({e}); "
                             "pip install 'fffc[triton]'", path=where) from e
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise PackagingError(f"the generated {CONFIG} is not a Triton ModelConfig: {e}",
                             path=where) from e


def write_repository(artifact: Path, repo: Path, options: RepositoryOptions) -> Path:
    """Write ``repo/<name>/`` for ``artifact`` (checked against its manifest first) and
    return it. ``repo`` may hold other models; ``repo/<name>`` is replaced only with
    ``force``, and only when it is a model folder (it has a config.pbtxt)."""
    if not artifact.is_dir():
        raise ArtifactCheckError("not an fffc artifact folder", path=artifact)
    runtime.check(artifact)
    manifest = runtime.manifest(artifact)
    name = options.name or artifact.name.split(".")[0]
    if not name or PurePosixPath(name).name != name or name.startswith("."):
        raise UsageError(f"model name {name!r} must be a plain folder name (--name)",
                         path=repo)
    if options.instances < 1:
        raise UsageError(f"--instances must be >= 1, got {options.instances}")
    if options.max_batch < 0:
        raise UsageError(f"--max-batch must be >= 0, got {options.max_batch}")
    mount = options.mount or str(repo.resolve())
    if not PurePosixPath(mount).is_absolute():
        raise UsageError(f"--mount {mount!r} must be an absolute path: the ONNX Runtime "
                         "backend does not resolve a library path against the model folder")
    out = repo / name
    _refuse_overwrite(repo, out, options.force)

    model_file = runtime.model_path(artifact)
    model = onnx.load(str(model_file), format="protobuf", load_external_data=False)
    inputs, outputs = tensors(model, model_file)
    if options.max_batch and (bad := [t.name for t in inputs + outputs
                                      if not t.dims or t.dims[0] != DYNAMIC]):
        raise UsageError(f"--max-batch needs a first dimension of any size in every input "
                         f"and output (Triton batches along it); these have none: "
                         f"{', '.join(bad)}", path=model_file)
    shim = runtime.shim_path(artifact)
    version = PurePosixPath(mount) / name / VERSION
    library = str(version / shim.name) if shim else ""
    family = (manifest.get("target") or {}).get("family")
    gpu = family is not None and TargetFamily(family) is TargetFamily.CUDA
    text = config_text(name, inputs, outputs, library, gpu, options.instances,
                       options.max_batch, kernel_tokens(manifest))
    validate(text, out / CONFIG)

    repo.mkdir(parents=True, exist_ok=True)
    with staging(repo) as tmp:
        (tmp / CONFIG).write_text(text)
        (tmp / VERSION).mkdir()
        shutil.copy2(model_file, tmp / VERSION / MODEL)
        for rel in external_data_files(model_file):
            source = inside(model_file.parent, rel, "external data")
            dest = inside(tmp / VERSION, rel, "external data")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest)
        if shim:
            shutil.copy2(shim, tmp / VERSION / shim.name)
        install(tmp, out)
    return out


def _refuse_overwrite(repo: Path, out: Path, force: bool) -> None:
    if repo.exists() and not repo.is_dir():
        raise UsageError("the repository path is a file", path=repo)
    if out.exists() and not force:
        raise UsageError("the model folder exists; pass --force to replace it", path=out)
    if out.exists() and not (out / CONFIG).exists():
        raise UsageError(f"exists and is not a Triton model folder (no {CONFIG}); refusing "
                         "to replace it even with --force", path=out)

