"""The shim for an older glibc (``--glibc 2.28``: zig c++ with LLVM's libc++ inside): the
glibc symbol versions it needs, read by readelf; that it loads here and computes exactly what
the g++ build computes; what ``--glibc`` does without zig; the aarch64 build under qemu.

The fixed shim objects are cached per toolchain (``FFFC_CACHE_DIR``) and zig caches its
libc++ build, so only the first run on a machine compiles them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fffc.codegen.schedules import family
from fffc.contract.config import sanitizers
from fffc.contract.errors import PackagingError
from fffc.package import toolchain
from fffc.package.native import build_shim, glibc_requirement
from tests.fixtures.aarch64_kernels import missing_tools
from tests.fixtures.aarch64_python import build_sysroot, run_python
from tests.fixtures.shim import D_IN, VARIANTS, make_model, reference, relu_ffn_model, weights

GLIBC = "2.28"  # RHEL 8, Debian 10, Ubuntu 20.04, JetPack 5
needs_zig = pytest.mark.skipif(toolchain.find_zig() is None or bool(sanitizers()),
                               reason="needs zig (pip install 'fffc[glibc]'), no FFFC_SANITIZE")
TOKEN_SHAPES = ((0, 4), (1, 1), (1, 3), (2, 65))


def needed_glibc(path: Path) -> set[tuple[int, ...]]:
    """Every GLIBC_* version in the library's version-needed section, as readelf lists it."""
    out = subprocess.run(["readelf", "-V", "--wide", str(path)], capture_output=True,
                         text=True, check=True).stdout
    section = out.split(".gnu.version_r")[1]
    return {tuple(map(int, v.split("."))) for v in re.findall(r"Name: GLIBC_([\d.]+)", section)}


def _library(fam: str, out: Path):
    from fffc.codegen.build import build_kernel_library

    return build_kernel_library([v.spec() for v in VARIANTS], family(fam), out / "kernels")


@pytest.fixture(scope="module")
def x86(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("glibc-x86")
    library = _library("x86", out)
    (out / "gnu").mkdir()
    shims = {"gnu": build_shim(library, out / "gnu")}
    if toolchain.find_zig() is not None and not sanitizers():
        (out / "zig").mkdir()
        shims["zig"] = build_shim(library, out / "zig", glibc=GLIBC)
    return {**shims, "library": library}


def _session(shim: Path, model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.register_custom_ops_library(str(shim))
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


@needs_zig
def test_x86_needs_glibc_2_28_at_most(x86) -> None:
    versions = needed_glibc(x86["zig"])
    assert (2, 2, 5) in versions  # x86-64's base version: the section was read
    assert max(v[:2] for v in versions) <= (2, 28), sorted(versions)
    assert glibc_requirement(x86["zig"]) == "{}.{}".format(*max(v[:2] for v in versions))


@needs_zig
def test_x86_outputs_equal_gnu_build(x86) -> None:
    """The same kernel object behind either C++ runtime: bit-identical outputs."""
    rng = np.random.default_rng(4)
    for v in VARIANTS:
        w = weights(v)
        model = make_model(v, w)
        gnu, zig = _session(x86["gnu"], model), _session(x86["zig"], model)
        for shape in TOKEN_SHAPES:
            x = rng.standard_normal((*shape, D_IN)).astype(np.float32)
            (y,) = zig.run(None, {"X": x})
            np.testing.assert_array_equal(y, gnu.run(None, {"X": x})[0], err_msg=v.name)
            np.testing.assert_allclose(y, reference(v, w, x), rtol=1e-4, atol=1e-4)


@needs_zig
def test_x86_errors_reach_ort(x86) -> None:
    """A kernel's argument check and a missing kernel come back as ONNX Runtime errors:
    nothing of libc++ (exceptions included) leaves the shim."""
    v = VARIANTS[0]
    sess = _session(x86["zig"], make_model(v, weights(v), b1_shape=(1, 128)))
    with pytest.raises(Exception, match=r"fffc_sparse_ffn_\w+.*ndim"):
        sess.run(None, {"X": np.ones((1, 2, D_IN), np.float32)})
    sess = _session(x86["zig"], make_model(v, weights(v, d_ff=64)))
    with pytest.raises(Exception, match="no compiled kernel for SparseFFN"):
        sess.run(None, {"X": np.ones((1, 2, D_IN), np.float32)})
    # a bad attribute: the shim throws std::runtime_error (libc++'s, unwound by its own
    # libunwind) and catches it before ONNX Runtime's call returns
    from tests.runtime.test_fff_shim import _model, _weights

    shape = (8, 8, 1, 2, "lt")
    with pytest.raises(Exception, match="tie_break must be gt or ge, got lt"):
        _session(x86["zig"], _model(shape, _weights(*shape[:4]))).run(
            None, {"X": np.ones((1, 2, 8), np.float32)})


@needs_zig
def test_x86_exports_and_needs_only_glibc(x86) -> None:
    out = subprocess.run(["nm", "-D", "--defined-only", str(x86["zig"])], capture_output=True,
                         text=True, check=True).stdout
    assert {ln.split()[-1] for ln in out.splitlines() if ln.strip()} == {"RegisterCustomOps"}
    dyn = subprocess.run(["readelf", "-d", str(x86["zig"])], capture_output=True, text=True,
                         check=True).stdout
    needed = set(re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", dyn))
    assert needed and needed <= {"libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0",
                                 "ld-linux-x86-64.so.2"}, needed


def test_without_zig(x86, tmp_path, monkeypatch) -> None:
    """Without zig, --glibc builds with g++: refused when g++'s shim needs a newer glibc,
    kept when it does not."""
    gnu_needs = glibc_requirement(x86["gnu"])
    monkeypatch.setattr(toolchain, "find_zig", lambda: None)
    assert build_shim(x86["library"], tmp_path, glibc=gnu_needs).read_bytes() == \
        x86["gnu"].read_bytes()
    if tuple(map(int, gnu_needs.split("."))) <= (2, 28):
        pytest.skip(f"this machine's g++ builds a shim for glibc {gnu_needs} already")
    with pytest.raises(PackagingError, match=rf"--glibc {GLIBC}: the shim built with g\+\+ "
                                             rf"needs glibc {gnu_needs}.*ziglang"):
        build_shim(x86["library"], tmp_path, glibc=GLIBC)


@needs_zig
@pytest.mark.slow
def test_compile_reports_measured_glibc(tmp_path) -> None:
    """``fffc compile --glibc 2.28``: the artifact's shim (loaded by the compile's own check)
    needs glibc 2.28 at most, and the manifest says what it needs."""
    from fffc.cli import main

    model = relu_ffn_model(tmp_path / "ffn.onnx")
    art = tmp_path / "ffn.fffc"
    assert main(["compile", str(model), "-o", str(art), "--glibc", GLIBC,
                 "--crossovers", "table"]) == 0
    manifest = json.loads((art / "manifest.json").read_text())
    versions = needed_glibc(art / manifest["shim"])
    assert manifest["requires"]["glibc"] == "{}.{}".format(*max(v[:2] for v in versions))
    assert max(versions) <= (2, 28)
    assert manifest["options"]["glibc"] == GLIBC


def test_bad_glibc_refused(tmp_path) -> None:
    from fffc.cli import main

    model = relu_ffn_model(tmp_path / "ffn.onnx")
    assert main(["compile", str(model), "-o", str(tmp_path / "o"), "--glibc", "2.x"]) != 0
    assert not (tmp_path / "o").exists()


RUNNER = '''
import sys, numpy as np, onnxruntime as ort
data = np.load(sys.argv[1])
out = {}
for shim in ("gnu", "zig"):
    so = ort.SessionOptions()
    so.register_custom_ops_library(f"{sys.argv[2]}/{shim}/libfffc_ops.so")
    for i in range(int(sys.argv[3])):
        sess = ort.InferenceSession(f"{sys.argv[2]}/m{i}.onnx", so,
                                    providers=["CPUExecutionProvider"])
        for k in data.files:
            out[f"{shim}-{i}-{k}"] = sess.run(None, {"X": data[k]})[0]
np.savez(sys.argv[4], **out)
'''


@needs_zig
@pytest.mark.slow
@pytest.mark.skipif(missing_tools() is not None, reason=str(missing_tools()))
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_aarch64_loads_under_qemu(tmp_path) -> None:
    """The aarch64 shim for glibc 2.28 in aarch64 ONNX Runtime under qemu-aarch64 (the
    sysroot of tests/e2e/test_arm.py): outputs equal to the aarch64 g++ build's."""
    sysroot = build_sysroot()
    library = _library("arm", tmp_path)
    for shim in ("gnu", "zig"):
        (tmp_path / shim).mkdir()
    zig = build_shim(library, tmp_path / "zig", glibc=GLIBC)
    build_shim(library, tmp_path / "gnu")
    header = zig.read_bytes()[:20]
    assert int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64
    versions = needed_glibc(zig)
    assert (2, 17) in versions and max(versions) <= (2, 28), sorted(versions)
    ws = [weights(v) for v in VARIANTS]
    for i, (v, w) in enumerate(zip(VARIANTS, ws, strict=True)):
        onnx.save(make_model(v, w), str(tmp_path / f"m{i}.onnx"))
    rng = np.random.default_rng(5)
    inputs = {f"t{b}x{s}": rng.standard_normal((b, s, D_IN)).astype(np.float32)
              for b, s in ((1, 1), (1, 3), (2, 65))}
    np.savez(tmp_path / "in.npz", **inputs)
    (tmp_path / "runner.py").write_text(RUNNER)
    run_python(sysroot, tmp_path / "runner.py",
               [tmp_path / "in.npz", tmp_path, len(VARIANTS), tmp_path / "out.npz"])
    got = dict(np.load(tmp_path / "out.npz"))
    for i, (v, w) in enumerate(zip(VARIANTS, ws, strict=True)):
        for k, x in inputs.items():
            np.testing.assert_array_equal(got[f"zig-{i}-{k}"], got[f"gnu-{i}-{k}"], err_msg=v.name)
            np.testing.assert_allclose(got[f"zig-{i}-{k}"], reference(v, w, x), rtol=1e-4,
                                       atol=1e-4)
