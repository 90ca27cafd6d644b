"""Where the shim's ONNX Runtime headers come from, and the errors when they cannot."""

from __future__ import annotations

from pathlib import Path

import pytest

from fffc.contract.errors import PackagingError
from fffc.package import ort_headers


def test_override_is_used_as_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "onnxruntime_c_api.h").write_text("// stub\n")
    monkeypatch.setenv("ORT_INCLUDE_DIR", str(tmp_path))
    assert ort_headers.ensure_ort_headers() == tmp_path


def test_override_without_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORT_INCLUDE_DIR", str(tmp_path))
    with pytest.raises(PackagingError, match=r"onnxruntime_c_api\.h"):
        ort_headers.ensure_ort_headers()


def test_missing_npm_says_how_to_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORT_INCLUDE_DIR", raising=False)
    monkeypatch.setenv("FFFC_CACHE_DIR", str(tmp_path))  # empty cache: a fetch is needed
    monkeypatch.setattr(ort_headers.shutil, "which", lambda _name: None)
    with pytest.raises(PackagingError, match="install npm or set ORT_INCLUDE_DIR"):
        ort_headers.ensure_ort_headers()


def test_cached_headers_are_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A filled cache needs no npm at all."""
    monkeypatch.delenv("ORT_INCLUDE_DIR", raising=False)
    monkeypatch.setenv("FFFC_CACHE_DIR", str(tmp_path))
    cached = tmp_path / "ort-headers" / f"{ort_headers.NPM_PACKAGE}-{ort_headers.NPM_VERSION}"
    cached.mkdir(parents=True)
    (cached / "onnxruntime_c_api.h").write_text("// stub\n")
    monkeypatch.setattr(ort_headers.shutil, "which", lambda _name: None)
    assert ort_headers.ensure_ort_headers() == cached
