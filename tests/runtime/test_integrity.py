"""Artifact integrity: the manifest lists every file fffc wrote with its sha256;
``fffc.runtime`` refuses a folder whose files differ, or whose manifest names a path outside
it, before ONNX Runtime loads the shim; ``fffc verify`` reports each check."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

import fffc.runtime
from fffc.cli import main
from fffc.contract.errors import EXIT_CODES
from tests.fixtures.quantized import float_ffn

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("integrity")
    out = tmp / "ffn.fffc"
    assert main(["compile", str(float_ffn(tmp / "ffn.onnx", "drelu")), "-o", str(out),
                 "--target", "x86"]) == 0
    return out


@pytest.fixture
def artifact(compiled, tmp_path) -> Path:
    """A fresh copy to tamper with."""
    return Path(shutil.copytree(compiled, tmp_path / "a.fffc"))


def _manifest(art: Path) -> dict:
    return json.loads((art / "manifest.json").read_text())


def _write(art: Path, m: dict) -> None:
    (art / "manifest.json").write_text(json.dumps(m))


def _run(art: Path) -> np.ndarray:
    x = np.random.default_rng(0).standard_normal((1, 3, 128)).astype(np.float32)
    return fffc.runtime.InferenceSession(art).run(None, {"x": x})[0]


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("fffc: error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_manifest_lists_every_file_with_its_digest(compiled, capsys):
    m = _manifest(compiled)
    on_disk = {p.relative_to(compiled).as_posix() for p in compiled.rglob("*") if p.is_file()}
    assert set(m["files"]) == on_disk - {"manifest.json"}
    assert {m["model"], m["shim"], m["kernels"]["object"]} <= set(m["files"])
    for rel, entry in m["files"].items():
        data = (compiled / rel).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    assert main(["verify", str(compiled)]) == 0
    assert "ONNX Runtime opens it" in capsys.readouterr().out


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("harm", ["flipped", "truncated", "missing", "extra digest"])
def test_a_file_that_differs_is_refused(harm, artifact, capsys):
    m = _manifest(artifact)
    shim = artifact / m["shim"]
    if harm == "flipped":
        _flip(shim, shim.stat().st_size // 2)
    elif harm == "truncated":
        shim.write_bytes(shim.read_bytes()[:4096])
    elif harm == "missing":
        shim.unlink()
    else:  # the manifest lists a file that is not there
        m["files"]["kernels/gone.o"] = {"sha256": "0" * 64, "bytes": 1}
        _write(artifact, m)
    with pytest.raises(fffc.runtime.ArtifactError):
        _run(artifact)
    assert main(["verify", str(artifact)]) == EXIT_CODES["ArtifactCheckError"]
    line = _one_error(capsys)
    assert str(artifact) in line
    assert ("kernels/gone.o" if harm == "extra digest" else m["shim"]) in line


def test_opt_out_skips_digests_not_paths(artifact):
    m = _manifest(artifact)
    model = onnx.load(artifact / m["model"])
    model.doc_string = "edited after compiling"  # a valid model, other bytes
    onnx.save(model, artifact / m["model"])
    with pytest.raises(fffc.runtime.ArtifactError, match=r"sha256|bytes"):
        _run(artifact)
    x = np.zeros((1, 2, 128), np.float32)
    fffc.runtime.InferenceSession(artifact, check_files=False).run(None, {"x": x})
    m["shim"] = "../" + m["shim"]
    _write(artifact, m)
    with pytest.raises(fffc.runtime.ArtifactError, match=r"'\.\.'"):
        fffc.runtime.InferenceSession(artifact, check_files=False)


@pytest.mark.parametrize("key", ["shim", "model", "external_data", "kernels"])
@pytest.mark.parametrize("where", ["absolute", "dotdot", "symlink"])
def test_paths_outside_the_folder_are_refused(key, where, artifact, tmp_path, capsys):
    m = _manifest(artifact)
    outside = tmp_path / "elsewhere.so"
    shutil.copy(artifact / m["shim"], outside)
    if where == "absolute":
        rel = str(outside)
    elif where == "dotdot":
        rel = "../elsewhere.so"
    else:
        (artifact / "link.so").symlink_to(outside)
        rel = "link.so"
    if key == "kernels":
        m["kernels"]["object"] = rel
    else:
        m[key] = rel
    _write(artifact, m)
    with pytest.raises(fffc.runtime.ArtifactError, match=r"outside|relative"):
        _run(artifact)
    assert main(["verify", str(artifact), "--no-load"]) == EXIT_CODES["ArtifactCheckError"]
    line = _one_error(capsys)
    assert "outside" in line or "relative" in line


def test_older_manifest_without_digests(artifact, capsys):
    m = _manifest(artifact)
    del m["files"]
    m["format"] = 1
    _write(artifact, m)
    with pytest.raises(fffc.runtime.ArtifactError, match="recompile"):
        _run(artifact)
    m["format"] = 2
    _write(artifact, m)
    with pytest.raises(fffc.runtime.ArtifactError, match="lists no files"):
        _run(artifact)
    del m["format"]  # a manifest written by hand: paths checked, nothing to hash
    _write(artifact, m)
    assert _run(artifact).shape == (1, 3, 128)


def test_digests_checked_once_per_unchanged_file(artifact, monkeypatch):
    from fffc.runtime import integrity

    _run(artifact)
    hashed = []
    monkeypatch.setattr(integrity, "sha256", lambda p: hashed.append(p) or "x")
    for _ in range(3):
        _run(artifact)
    assert hashed == []
