"""The shim's CUDA path end to end without a GPU: a ``--target cuda`` artifact's model run by
ONNX Runtime with the shim's CUDA kernels (built with FFFC_TEST_CUDA_ON_CPU, so they take
the CPU EP) and ``tests/runtime/fake_cuda.cc`` as libcuda.so.1: "device" memory is host
memory and every cuLaunchKernel runs the emitted CUDA source in fffc's CPU emulator. What
runs is everything the shim does on a GPU — kernel-table lookup, buffers and workspace,
launch parameters by name, grids from the token count, the order of launches — and the
outputs are compared with the original model in ONNX Runtime.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import fffc
from fffc.codegen.build import build_kernel_library
from fffc.codegen.schedules import family
from fffc.contract.config import cxx
from fffc.contract.kernels import KernelSpec, Row, StructuredSpec, from_row
from fffc.package.native import build_shim
from fffc.pipeline import analyze
from fffc.verify.cuda_emu import Emulator
from tests.fixtures.sanitizers import python_env
from tests.fixtures.shim import relu_ffn_model

pytestmark = pytest.mark.slow
FAKE = Path(__file__).with_name("fake_cuda.cc")

_RUN = """
import sys, numpy as np, onnxruntime as ort
model, shim, feeds, out = sys.argv[1:5]
opts = ort.SessionOptions()
opts.register_custom_ops_library(shim)
s = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
data = np.load(feeds)
n = len({k.split("/")[0] for k in data.files})
np.savez(out, *[s.run(None, {k.split("/")[1]: data[k] for k in data.files
                             if k.startswith(f"{i}/")})[0] for i in range(n)])
"""


@pytest.fixture(scope="module")
def fake_libcuda(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fakecuda")
    subprocess.run([cxx(), "-std=c++17", "-O1", "-shared", "-fPIC", str(FAKE), "-o",
                    str(out / "libcuda.so.1"), "-ldl"], check=True)
    return out


def _specs(manifest: dict) -> list[KernelSpec]:
    out = []
    for e in manifest["kernels"]["entries"]:
        row = {k: v for k, v in e["spec"].items() if k != "key"}
        row["extra"] = tuple(tuple(p) for p in row["extra"])
        spec = from_row(Row(**row))
        assert spec.key == e["spec"]["key"]
        out.append(spec)
    return list(dict.fromkeys(out))


def run_on_fake_gpu(artifact: Path, feeds: list[dict[str, np.ndarray]], fake: Path,
                    tmp: Path) -> tuple[list[np.ndarray], list[str]]:
    """The artifact's model through the shim's CUDA kernels (emulated): one output per feed,
    and the kernels launched (name and grid), in order."""
    manifest = json.loads((artifact / "manifest.json").read_text())
    # the CPU table's specs (float32 weights) at the weight dtype the CUDA variants read (a
    # 16-bit model's own): the one whose key the manifest's CUDA variants name
    cuda_keys = {v["spec_key"] for v in manifest["cuda"]["variants"]}
    specs = [next((t for t in (s.stored_as(d) for d in ("float32", "float16", "bfloat16"))
                   if t.key in cuda_keys), s) for s in _specs(manifest)]
    library = build_kernel_library(specs, family("cuda"), tmp / "lib",
                                   counted_specs=_counted(manifest),
                                   weight_dtype=manifest["options"]["weight_dtype"],
                                   cuda_version=manifest["options"]["cuda_version"])
    shim = build_shim(library, tmp, name="libcudaoncpu.so", defines=("FFFC_TEST_CUDA_ON_CPU",))
    emu = Emulator(library.cuda.source_path.read_text(), library.cuda.variants)
    np.savez(tmp / "feeds.npz", **{f"{i}/{k}": v for i, f in enumerate(feeds)
                                   for k, v in f.items()})
    log = tmp / "launches.txt"
    log.unlink(missing_ok=True)
    env = python_env(LD_LIBRARY_PATH=str(fake), FFFC_FAKE_CUDA_EMU=str(emu.library_path),
                     FFFC_FAKE_CUDA_LOG=str(log))
    proc = subprocess.run([sys.executable, "-c", _RUN, str(artifact / "model.onnx"), str(shim),
                           str(tmp / "feeds.npz"), str(tmp / "out.npz")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(tmp / "out.npz")
    launches = log.read_text().splitlines() if log.exists() else []
    return [got[f"arr_{i}"] for i in range(len(feeds))], launches


def _counted(manifest: dict) -> list[KernelSpec]:
    """The StructuredFFN specs a RoutedFFN runs on its gathered rows (counted variants)."""
    return [s for s in _specs(manifest) if isinstance(s, StructuredSpec)
            and any(e["spec"]["op"] == "RoutedFFN" for e in manifest["kernels"]["entries"])]


def _compare(path: Path, artifact: Path, feeds, fake: Path, tmp: Path, rtol=1e-4,
             atol=1e-5) -> list[str]:
    """Outputs equal the original's; returns the kernels launched (the shim's CUDA kernels
    must have run: an op without them would fall back to its function silently)."""
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got, launches = run_on_fake_gpu(artifact, feeds, fake, tmp)
    for f, g in zip(feeds, got, strict=True):
        want = ref.run(None, f)[0]
        np.testing.assert_allclose(g, want, rtol=rtol, atol=atol,
                                   err_msg=str({k: v.shape for k, v in f.items()}))
    return launches


def _feeds(d: int, shapes) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    return [{"x": rng.standard_normal((*s, d)).astype(np.float32)} for s in shapes]


def test_sparse_ffn_cuda_path(tmp_path, fake_libcuda):
    """SparseFFN exact: the decode variants (1, 5 and 16 tokens), ORT's dense FFN beyond."""
    path = relu_ffn_model(tmp_path / "m.onnx")
    art = fffc.compile(path, tmp_path / "m.fffc", fffc.CompileOptions(target="cuda")).artifact
    launches = _compare(path, art, _feeds(32, [(1, 1), (1, 5), (2, 8), (3, 100)]),
                        fake_libcuda, tmp_path)
    variants = {re.search(r"_(decode\d+|gemm)_", ln)[1] for ln in launches}
    # 300 tokens: past the CUDA sparse limit the artifact's If runs ORT's dense FFN
    assert variants == {"decode1", "decode8", "decode16"}, launches


def test_cuda_12_artifact(tmp_path, fake_libcuda):
    """--cuda-version 12: the fatbin built by a CUDA 12 compiler — its cubins of CUDA 12's
    ELF ABI, its PTX of a CUDA 12 PTX ISA — is the one the artifact's shim embeds; the
    manifest states the drivers it needs; the shim's CUDA path runs it as a CUDA 13 one."""
    from fffc.codegen import cuda_toolkit
    from fffc.contract.errors import CodegenError

    try:
        cuda_toolkit.find(12)
    except CodegenError as e:
        pytest.skip(str(e))
    path = relu_ffn_model(tmp_path / "m.onnx")
    result = fffc.compile(path, tmp_path / "m.fffc",
                          fffc.CompileOptions(target="cuda", cuda_version=12))
    art, manifest = result.artifact, result.manifest
    assert manifest["options"]["cuda_version"] == 12
    fatbin = (art / manifest["cuda"]["fatbin"]).read_bytes()
    assert fatbin in (art / manifest["shim"]).read_bytes()
    cubins = [fatbin[i:i + 9] for i in range(len(fatbin)) if fatbin.startswith(b"\x7fELF", i)]
    # ELF OSABI 0x33 ABI version 7: a CUDA 12 cubin (CUDA 13 writes OSABI 0x41, version 8)
    assert len(cubins) == 2 and {c[7:9] for c in cubins} == {b"\x33\x07"}, cubins
    ptx = re.findall(rb"\.version (\d+)\.(\d+)\s+\.target (sm_\d+)", fatbin)
    assert len(ptx) == 1 and ptx[0][0] == b"8" and ptx[0][2] == b"sm_90", ptx  # CUDA 12: PTX 8.x
    isa = f"{int(ptx[0][0])}.{int(ptx[0][1])}"
    req = manifest["requires"]["cuda"]
    assert req["driver"] == ">= 525.60.13" and req["cubins"] == ["sm_80", "sm_90"], req
    assert req["ptx"] == "sm_90" and req["ptx_isa"] == isa, req
    assert manifest["cuda"]["toolkit"].startswith(("NVRTC 12.", "nvcc 12.")), manifest["cuda"]
    launches = _compare(path, art, _feeds(32, [(1, 1), (2, 8)]), fake_libcuda, tmp_path)
    assert {re.search(r"_(decode\d+|gemm)_", ln)[1] for ln in launches} == {"decode1",
                                                                           "decode16"}, launches


def test_int4_cuda_path(tmp_path, fake_libcuda):
    """SparseFFN exact on int4 codes (a dReLU FFN ONNX Runtime's quantizer made 4-bit
    MatMulNBits with zero points, float activations): the int4 variants serve the token
    counts up to the bound, the user's MatMulNBits beyond; outputs as the original's."""
    from tests.fixtures import quantized as q

    src = q.float_ffn(tmp_path / "drelu.onnx", "drelu")
    path = q.matmul_nbits(src, tmp_path / "q4.onnx", 4, 32, False)
    result = fffc.compile(path, tmp_path / "q4.fffc", fffc.CompileOptions(target="cuda"))
    assert [s.decision for s in result.sites] == ["exact"]
    launches = _compare(path, result.artifact,
                        _feeds(q.D, [(1, 1), (1, 2), (1, 3), (2, 100)]), fake_libcuda, tmp_path)
    variants = {re.search(r"_(int4_\d+)_", ln)[1] for ln in launches}
    assert variants == {"int4_1", "int4_2", "int4_4"}, launches


def test_float16_model_cuda_path(tmp_path, fake_libcuda):
    """A float16 model's dReLU FFN (``convert_float_to_float16``): the CUDA kernels read
    the model's own float16 weights (``half*``), x cast to float32 before the node and y
    back after; within one float16 step of the float64 FFN of those weights up to the
    bound, the original float16 subgraph (ONNX Runtime's, bit for bit) beyond."""
    from onnx import numpy_helper
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from tests.fixtures import quantized as q

    path = tmp_path / "drelu16.onnx"
    onnx_model = convert_float_to_float16(onnx.load(q.float_ffn(tmp_path / "d.onnx", "drelu")))
    onnx.save(onnx_model, path)
    result = fffc.compile(path, tmp_path / "f16.fffc", fffc.CompileOptions(target="cuda"))
    assert [(s.decision, s.dtype) for s in result.sites] == [("exact", "float16")]
    (bound,) = [b["max_tokens"] for b in result.sites[0].dispatch.to_json()["branches"]
                if b["branch"] == "kernel"]
    source = next((result.artifact / "kernels").rglob("*.cu")).read_text()
    assert "half* __restrict__ W1_ptr" in source
    rng = np.random.default_rng(9)
    feeds = [{"x": rng.standard_normal((1, s, q.D)).astype(np.float16)}
             for s in (1, 2, bound, bound + 5)]
    got, launches = run_on_fake_gpu(result.artifact, feeds, fake_libcuda, tmp_path)
    # the calls within the bound ran the shim's CUDA kernels (decode variants)
    assert launches and all("_decode" in ln for ln in launches), launches
    assert any("_decode1_" in ln for ln in launches), launches
    w = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in onnx_model.graph.initializer}
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for f, g in zip(feeds, got, strict=True):
        assert g.dtype == np.float16
        x = f["x"].astype(np.float64)
        if x.shape[1] > bound:
            np.testing.assert_array_equal(g, ref.run(None, f)[0])
            continue
        want = (np.maximum(x @ w["wg"], 0) * np.maximum(x @ w["wu"], 0)) @ w["wd"]
        step = np.spacing(np.abs(want.astype(np.float16))).astype(np.float64)
        assert np.all(np.abs(g - want) <= step + 2.0**-20 * np.abs(want).max())


@pytest.mark.torch
def test_int4_genai_accuracy_level_4_cuda_path(tmp_path, fake_libcuda):
    """The GenAI model builder's int4 decoder (made dReLU; every MatMulNBits at
    accuracy_level 4, x rounded to int8 per block) compiled for --target cuda: each layer's
    FFN gets the int4 kernels with x rounded (``i8`` in the table's mode), and the logits
    of a decode step and a short prompt through the stand-in driver equal the builder's
    decoder with each FFN the float FFN on ONNX Runtime's dequantized weights of x rounded
    per block (the test's own reference graph)."""
    pytest.importorskip("onnxruntime_genai", reason="the GenAI model builder is needed")
    from tests.fixtures.genai_models import build, checkpoint, to_drelu
    from tests.quant.test_genai_quantized import LAYERS, _float_ffn_reference
    from tests.quant.test_genai_quantized import _feeds as decoder_feeds

    folder = to_drelu(build(checkpoint(tmp_path / "ckpt"), tmp_path / "int4", "int4"))
    result = fffc.compile(folder, tmp_path / "out", fffc.CompileOptions(target="cuda"))
    assert [s.decision for s in result.sites] == ["exact"] * LAYERS
    (bound,) = {b["max_tokens"] for s in result.manifest["sites"]
                for b in s["dispatch"]["branches"] if b["branch"] == "kernel"}
    ref = tmp_path / "reference.onnx"
    reference = ort.InferenceSession(str(_float_ffn_reference(folder, ref, bound)),
                                     providers=["CPUExecutionProvider"])
    feeds = [decoder_feeds(7, 1), decoder_feeds(0, 3)]
    got, launches = run_on_fake_gpu(result.artifact, feeds, fake_libcuda, tmp_path)
    for f, g in zip(feeds, got, strict=True):
        np.testing.assert_allclose(g, reference.run(None, f)[0], rtol=1e-4, atol=1e-4)
    rows = [ln for ln in launches if "_rows_kernel" in ln]
    assert {re.search(r"_(int4_\d+)_", ln)[1] for ln in rows} == {"int4_1", "int4_4"}, launches
    assert len(rows) == 2 * LAYERS, launches
    entries = result.manifest["kernels"]["entries"]
    assert entries and all(dict(map(tuple, e["spec"]["extra"])).get("int8_x") == "1"
                           for e in entries), entries


@pytest.mark.torch
def test_fff_cuda_path(tmp_path, fake_libcuda):
    """FastFeedForward: one block per token (its inputs by the kernel's own names)."""
    import torch

    from fffc.torch import FastFeedForward

    torch.manual_seed(0)
    m = FastFeedForward(32, 32, 3, 2).eval()
    path = tmp_path / "fff.onnx"
    torch.onnx.export(m, (torch.randn(2, 5, 32),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "b", 1: "s"}})
    art = fffc.compile(path, tmp_path / "m.fffc", fffc.CompileOptions(target="cuda")).artifact
    launches = _compare(path, art, _feeds(32, [(1, 1), (2, 3)]), fake_libcuda, tmp_path)
    # one launch per call, a block per token
    assert [ln.split()[1:] for ln in launches] == [["1", "1", "1"], ["6", "1", "1"]], launches


@pytest.mark.torch
@pytest.mark.parametrize("kind, form, exporter", [("blockdense", "bmm", "dynamo18"),
                                                  ("blockshuffle", "einsum", "torchscript17")])
def test_structured_cuda_path(tmp_path, fake_libcuda, kind, form, exporter):
    """StructuredFFN: the structured kernels at 1, 6 and 40 tokens (no merged path on CUDA)."""
    from tests.fixtures.structured_exports import export_structured

    path = export_structured(kind, exporter, tmp_path / "s.onnx", form=form)
    result = fffc.compile(path, tmp_path / "m.fffc", fffc.CompileOptions(target="cuda"))
    (site,) = result.manifest["sites"]
    assert site["decision"] == "structured", site["reason"]
    emulated = result.manifest["verification"]["cuda_kernels"][site["name"]]
    assert emulated and all(r["ok"] for r in emulated.values()), emulated
    launches = _compare(path, result.artifact, _feeds(64, [(1, 1), (2, 3), (4, 10)]),
                        fake_libcuda, tmp_path)
    assert launches and all("structured_ffn" in ln for ln in launches), launches


@pytest.mark.torch
@pytest.mark.parametrize("kw", [{"k_form": "module", "combine": "residual_block"},
                                {"causal": True, "prenorm": True}])
def test_routed_cuda_path(tmp_path, fake_libcuda, kw):
    """RoutedFFN: route → the counted FFN on the gathered rows → combine, top-k with k from
    the sequence length and the causal threshold form with a pre-norm."""
    from tests.fixtures.structured_exports import export_mod

    path = export_mod("dynamo18", tmp_path / "mod.onnx", seq=16, capacity=0.25, **kw)
    result = fffc.compile(path, tmp_path / "m.fffc", fffc.CompileOptions(target="cuda"))
    (site,) = result.manifest["sites"]
    assert site["decision"] == "routed", site["reason"]
    emulated = result.manifest["verification"]["cuda_kernels"][site["name"]]
    assert emulated and all(r["ok"] for r in emulated.values()), emulated
    shapes = [(1, 1), (2, 5), (1, 16), (3, 24)]
    launches = _compare(path, result.artifact, _feeds(64, shapes), fake_libcuda, tmp_path)
    assert any("counted_" in ln for ln in launches), launches
    assert any("routed_ffn" in ln for ln in launches), launches


@pytest.mark.parametrize("budget", ["uniform=0.4", "cats=0.5", "predictor"])
def test_calibrated_cuda_path(tmp_path, fake_libcuda, budget):
    """SparseFFN teal, cats and predictor on CUDA (a GELU and a SwiGLU FFN): the artifact
    equals its own model run as the thresholded/predicted function in standard ops (stock
    ONNX Runtime, the fallback functions), at 1 token (the kernels) and 50 (the If's masked
    dense branch)."""
    from fffc.plan import calibration
    from tests.fixtures.calibration import D
    from tests.fixtures.calibration import feeds as calibration_feeds
    from tests.fixtures.calibration import two_ffn_model as _models

    path, _ = _models(tmp_path)
    data, _ = calibration_feeds(tmp_path, count=4)
    calib = calibration.calibrate(analyze(path), data, predictor_rank=8, predictor_sparsity=0.7)
    calibration.write(calib, tmp_path / "m.calib.json")
    result = fffc.compile(path, tmp_path / "m.fffc", fffc.CompileOptions(
        target="cuda", calibration=tmp_path / "m.calib.json", budget=budget, data=data))
    mode = {"uniform=0.4": "teal", "cats=0.5": "cats", "predictor": "predictor"}[budget]
    assert any(s.decision == mode for s in result.sites), [s.reason for s in result.sites]
    emulated = result.manifest["verification"]["cuda_kernels"]
    assert all(r["ok"] for s in result.sites if s.decision == mode
               for r in emulated[s.name].values()), emulated
    art = result.artifact
    launches = _compare(art / "model.onnx", art, _feeds(D, [(1, 1), (2, 25)]), fake_libcuda,
                        tmp_path)
    assert any(f"_{mode}_" in ln for ln in launches), launches  # the mode's kernels ran


@pytest.mark.torch
@pytest.mark.parametrize("kind, dtype", [("sparse", "float16"), ("sparse", "bfloat16"),
                                         ("structured", "bfloat16"), ("fff", "float16"),
                                         ("routed", "float16")])
def test_weight_dtype_cuda_path(tmp_path, fake_libcuda, kind, dtype):
    """--weight-dtype: the nodes take 16-bit weight initializers, the shim's CUDA kernels
    read them (the fake driver's buffers hold the 16-bit bytes) and the artifact equals its
    own model in stock ONNX Runtime (the fallback functions widen the weights: the rounded
    reference); the rounding's cost against the original stays at 16-bit precision."""
    import onnx

    from tests.fixtures.structured_exports import export_mod, export_structured

    shapes = [(1, 1), (2, 5)]
    if kind == "sparse":
        path, d = relu_ffn_model(tmp_path / "m.onnx"), 32
    elif kind == "structured":
        path, d = export_structured("blockdense", "dynamo18", tmp_path / "s.onnx"), 64
    elif kind == "routed":
        path, d = export_mod("dynamo18", tmp_path / "mod.onnx", seq=16, capacity=0.25), 64
        shapes = [(1, 16), (2, 16)]  # exported with a static sequence axis
    else:
        import torch

        from fffc.torch import FastFeedForward

        torch.manual_seed(0)
        path, d = tmp_path / "fff.onnx", 32
        torch.onnx.export(FastFeedForward(32, 32, 3, 2).eval(), (torch.randn(2, 5, 32),),
                          str(path), dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "b", 1: "s"}})
    result = fffc.compile(path, tmp_path / "m.fffc",
                          fffc.CompileOptions(target="cuda", weight_dtype=dtype))
    art = result.artifact
    assert all(s.decision not in ("dense",) for s in result.sites), [s.reason for s in result.sites]
    emulated = result.manifest["verification"]["cuda_kernels"]
    assert all(emulated[s.name] and all(r["ok"] for r in emulated[s.name].values())
               for s in result.sites), emulated
    model = onnx.load(str(art / "model.onnx"))
    elem = {"float16": onnx.TensorProto.FLOAT16, "bfloat16": onnx.TensorProto.BFLOAT16}[dtype]
    narrow = [t.name for t in model.graph.initializer if t.data_type == elem]
    assert narrow and all(f"__{'f16' if dtype == 'float16' else 'bf16'}" in n for n in narrow)
    feeds = _feeds(d, shapes)
    launches = _compare(art / "model.onnx", art, feeds, fake_libcuda, tmp_path)
    assert launches, "the shim's CUDA kernels did not run"
    original = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got, _ = run_on_fake_gpu(art, feeds, fake_libcuda, tmp_path)
    for f, g in zip(feeds, got, strict=True):
        want = original.run(None, f)[0]
        rel = np.abs(g - want).max() / np.abs(want).max()
        assert rel < (2e-2 if dtype == "bfloat16" else 3e-3), rel  # 8 / 11 mantissa bits
