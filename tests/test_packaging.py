"""The wheel maps passes/ and runtime/ to fffc.passes and fffc.runtime, and nothing bare.

The editable install used by the test suite imports them too (setuptools' package-dir
mapping is known to break editable installs in some versions: pypa/setuptools#4248).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_editable_install_imports_mapped_packages():
    import fffc.passes
    import fffc.runtime

    assert Path(fffc.passes.__file__).parent == ROOT / "passes"
    assert Path(fffc.runtime.__file__).parent == ROOT / "runtime"


def _source_tree(dest: Path) -> Path:
    """The checkout's files (tracked and new, not ignored) copied to ``dest``: a build there
    sees no leftovers of earlier builds (setuptools reuses ``build/``)."""
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--cached", "--others",
                            "--exclude-standard"], check=True, capture_output=True,
                           text=True).stdout.split()
    for name in files:
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def test_wheel_has_only_fffc_and_imports_from_it(tmp_path):
    src = _source_tree(tmp_path / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps",
                    "--no-build-isolation", "-q", "-w", str(tmp_path / "dist")], check=True)
    wheel = next((tmp_path / "dist").glob("fffc-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"fffc"}
    assert "fffc/passes/__init__.py" in names and "fffc/runtime/__init__.py" in names
    assert any(n.startswith("fffc/runtime/src/") and n.endswith(".cc") for n in names)
    for source in ("src/op_common.cc", "src/cuda/sparse_ffn.cc", "src/cuda/driver.cc",
                   "include/fffc/cuda_table.h", "include/fffc/contract.h",
                   "CMakeLists.txt"):  # the shim is built from the installed copy
        assert f"fffc/runtime/{source}" in names, source
    assert "fffc/torch/fff.py" in names and "fffc/codegen/schedules/arm.py" in names
    shipped = {"fffc": ROOT / "fffc", "fffc/passes": ROOT / "passes",
               "fffc/runtime": ROOT / "runtime"}
    packages = {f"{dest}/{f.parent.relative_to(src).as_posix()}/__init__.py".replace("/./", "/")
                for dest, src in shipped.items() for f in src.rglob("__init__.py")}
    assert packages - set(names) == set()  # every package of the source tree is shipped

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(site), str(wheel)], check=True)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import fffc.passes, fffc.runtime; "
            "import fffc.pipeline, fffc.cli; "
            "print(fffc.passes.__file__); print(fffc.runtime.__file__); "
            "print(fffc.pipeline.__file__)")
    out = subprocess.run([sys.executable, "-c", code, str(site)], check=True,
                         capture_output=True, text=True, cwd=tmp_path).stdout.split()
    assert all(p.startswith(str(site)) for p in out), out
