"""The artifact folder: never overwrite what the user owns, build it aside, then move it in."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..contract.errors import UsageError


def default_output(model_path: Path) -> Path:
    """``MODEL.fffc`` beside a model file, ``FOLDER.fffc`` beside a GenAI folder."""
    return model_path.with_name(model_path.stem + ".fffc")


def prepare_output(out: Path, force: bool, source: Path | None = None) -> None:
    """Refuse an existing output without ``force``, and anything that is not an artifact;
    refuse an output that holds or lies in ``source``, the folder compiled."""
    if source is not None:
        o, s = out.resolve(), source.resolve()
        if o == s or s in o.parents or o in s.parents:
            raise UsageError(f"the output folder must lie outside the model folder {source} "
                             "and not contain it", path=out)
    if out.exists() and not force:
        raise UsageError("output exists; pass --force to overwrite it", path=out)
    if out.exists() and not (out / "manifest.json").exists() and any(out.iterdir()):
        raise UsageError("output exists and is not an fffc artifact; refusing to overwrite it "
                         "even with --force", path=out)


@contextlib.contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A fresh folder beside ``out`` (a rename moves it in); removed if the build fails."""
    parent = out.parent if out.parent.exists() else None
    path = Path(tempfile.mkdtemp(prefix=".fffc-", dir=parent))
    try:
        yield path
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise


def clear(folder: Path) -> None:
    """Empty a staging folder for another build round."""
    for p in folder.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def install(staging_dir: Path, out: Path) -> None:
    """Replace ``out`` by the finished artifact, with a folder's usual permissions (a
    staging folder is private to its user)."""
    umask = os.umask(0o022)
    os.umask(umask)
    staging_dir.chmod(0o777 & ~umask)
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(staging_dir), str(out))  # a rename when staging sits next to out
