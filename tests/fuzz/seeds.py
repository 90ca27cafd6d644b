"""Valid seed models and artifacts the fuzzer mutates: the small models the other tests build
(``tests.fixtures``), serialized once per process and cached as bytes.

``MODEL_SEEDS`` need only onnx and onnxruntime; ``TORCH_SEEDS`` export ``fffc.torch``
modules (structured MLPs, FFF) and are skipped where torch is absent. ``artifact`` compiles
one small model into an artifact folder, once per cache folder.
"""

from __future__ import annotations

import functools
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx

from fffc.contract.errors import FffcError

SeedBuilder = Callable[[Path], Path]  # writes the seed model into a folder, returns its path


def _proto(m: onnx.ModelProto, folder: Path) -> Path:
    path = folder / "seed.onnx"
    onnx.save(m, str(path))
    return path


def _dense(act: str) -> SeedBuilder:
    def build(folder: Path) -> Path:
        from tests.fixtures.graphs import dense_ffn
        return _proto(dense_ffn(act), folder)
    return build


def _gated(folder: Path) -> Path:
    from tests.fixtures.graphs import gated_ffn
    return _proto(gated_ffn("silu", up_relu=False), folder)


def _drelu(folder: Path) -> Path:
    from tests.fixtures.quantized import float_ffn
    return float_ffn(folder / "seed.onnx", "drelu")


def _two(folder: Path) -> Path:
    from tests.fixtures.quantized import two_drelu_ffns
    return two_drelu_ffns(folder / "seed.onnx")


def _mod(folder: Path) -> Path:
    from tests.fixtures.mod_graphs import handmade_mod
    return Path(handmade_mod(folder))


def _int4(folder: Path) -> Path:
    from tests.fixtures.quantized import float_ffn, matmul_nbits
    src = float_ffn(folder / "float.onnx", "drelu")
    quiet = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # it logs every node it visits
    try:
        return matmul_nbits(src, folder / "seed.onnx", bits=4, block=32, symmetric=True)
    finally:
        quiet.setLevel(level)


def _structured(kind: str) -> SeedBuilder:
    def build(folder: Path) -> Path:
        from tests.fixtures.structured_exports import export_structured
        return export_structured(kind, "torchscript17", folder / "seed.onnx", d_model=32,
                                 d_ff=64, rank=8, blocks=4)
    return build


def _fff(folder: Path) -> Path:
    from fffc.torch import FastFeedForward
    from tests.fixtures.fff_exports import export_fff
    return export_fff(FastFeedForward(16, 16, depth=2), folder / "seed.onnx", dynamo=False,
                      opset=17)


MODEL_SEEDS: dict[str, SeedBuilder] = {
    "dense-relu": _dense("relu"), "dense-gelu": _dense("gelu"), "gated-silu": _gated,
    "drelu": _drelu, "two-drelu": _two, "mod": _mod, "int4-matmulnbits": _int4,
}
TORCH_SEEDS: dict[str, SeedBuilder] = {
    "lowrank": _structured("lowrank"), "blockdense": _structured("blockdense"), "fff": _fff,
}


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def names(with_torch: bool = True) -> list[str]:
    return [*MODEL_SEEDS, *(TORCH_SEEDS if with_torch and torch_available() else ())]


@functools.cache
def model_bytes(name: str) -> bytes:
    """The seed model ``name``, serialized (every tensor inline)."""
    build = {**MODEL_SEEDS, **TORCH_SEEDS}[name]
    with tempfile.TemporaryDirectory(prefix="fffc-seed-") as tmp:
        path = build(Path(tmp))
        return onnx.load(str(path)).SerializeToString()


def artifact(cache: Path, name: str = "drelu") -> Path:
    """A compiled artifact of seed ``name`` (x86, crossovers from the table) under ``cache``,
    built once; a folder whose compile fails is not left behind."""
    out = cache / f"{name}.fffc"
    if (out / "manifest.json").exists():
        return out
    import fffc
    cache.mkdir(parents=True, exist_ok=True)
    src = cache / f"{name}.onnx"
    src.write_bytes(model_bytes(name))
    try:
        fffc.compile(src, out, fffc.CompileOptions(target="x86", crossovers="table", force=True))
    except FffcError as e:
        raise RuntimeError(f"the seed artifact {name} does not compile: {e}") from e
    return out
