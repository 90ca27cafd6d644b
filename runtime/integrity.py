"""An artifact's files as its manifest records them: every path it names lies inside the
artifact folder, and every file fffc wrote has the SHA-256 the manifest lists (key
``files``: path relative to the folder → ``{"sha256", "bytes"}``; ``manifest.json`` itself
is not listed).

This detects a corrupted, partial or mixed-up copy (a shim or model from another build, a
truncated download) before ONNX Runtime loads the shim's native code or the model. It is
not a signature: whoever can rewrite the files can rewrite the manifest too.

Manifests written by fffc carry ``format`` ≥ ``FILES_FORMAT`` and must list their files; a
hand-written manifest without ``format`` (a folder assembled by hand) gets the path checks
only. A file whose size and modification time are unchanged since it was last checked in
this process is not hashed again (sessions of one artifact opened many times).
"""

from __future__ import annotations

import hashlib
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

FILES_KEY = "files"
FILES_FORMAT = 2  # the first manifest format that lists every file's digest
CHUNK = 1 << 20


class ArtifactError(ValueError):
    """The artifact's manifest or files are not what fffc wrote."""


@dataclass(frozen=True)
class Check:
    """One check of ``fffc verify``: what was checked, whether it holds, and why not."""

    what: str
    ok: bool
    detail: str = ""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def digests(folder: Path, skip: frozenset[str]) -> dict[str, dict]:
    """The ``files`` entry of a manifest: every file under ``folder`` but ``skip``."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and rel not in skip:
            out[rel] = {"sha256": sha256(p), "bytes": p.stat().st_size}
    return out


def inside(artifact: Path, rel: object, key: str) -> Path:
    """``artifact / rel`` where ``rel`` is a relative path that stays inside ``artifact``
    (no absolute path, no ``..``, no symbolic link leading out); else an ArtifactError
    naming the manifest key."""
    if not isinstance(rel, str) or not rel:
        raise ArtifactError(f"{artifact}: manifest key {key} is {rel!r}, not a file name")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or Path(rel).is_absolute() or ".." in pure.parts or "\\" in rel:
        raise ArtifactError(f"{artifact}: manifest key {key} names {rel!r}: paths must be "
                            "relative to the artifact folder, without '..'")
    path = artifact / rel
    root = artifact.resolve()
    if not path.resolve().is_relative_to(root):
        raise ArtifactError(f"{artifact}: manifest key {key} names {rel!r}, which leads "
                            f"outside the artifact folder (to {path.resolve()})")
    return path


def named(manifest: dict) -> Iterator[tuple[str, object]]:
    """(manifest key, path relative to the artifact folder) of every file it names."""
    for key in ("model", "shim"):
        if manifest.get(key) is not None:
            yield key, manifest[key]
    model = manifest.get("model")
    data = manifest.get("external_data")
    if data is not None:
        parent = PurePosixPath(model).parent if isinstance(model, str) else PurePosixPath()
        yield "external_data", (str(parent / data) if isinstance(data, str) else data)
    kernels = manifest.get("kernels")
    if isinstance(kernels, dict) and "object" in kernels:
        yield "kernels.object", kernels["object"]
    cuda = manifest.get("cuda")
    if isinstance(cuda, dict):
        for k in ("fatbin", "source"):
            if k in cuda:
                yield f"cuda.{k}", cuda[k]
    genai = manifest.get("genai")
    if isinstance(genai, dict):
        if "config" in genai:
            yield "genai.config", genai["config"]
        for i, rel in enumerate(genai.get("copied") or ()):
            yield f"genai.copied[{i}]", rel
    files = manifest.get(FILES_KEY)
    if isinstance(files, dict):
        for rel in files:
            yield f"files[{rel!r}]", rel


_checked: dict[tuple, str] = {}  # (path, size, mtime_ns, inode) → the digest it had
_lock = threading.Lock()


def _digest(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    with _lock:
        if key in _checked:
            return _checked[key]
    d = sha256(path)
    with _lock:
        _checked[key] = d
    return d


def checks(artifact: Path, manifest: dict, digests: bool = True) -> Iterator[Check]:
    """Every check, in order: paths inside the folder, files present, digests equal (with
    ``digests`` only)."""
    paths: dict[str, Path] = {}
    for key, rel in named(manifest):
        try:
            paths[key] = inside(artifact, rel, key)
            yield Check(f"{key}: {rel} inside the artifact", True)
        except ArtifactError as e:
            yield Check(f"{key}: path", False, str(e))
    if not digests:
        return
    files = manifest.get(FILES_KEY)
    fmt = manifest.get("format")
    if files is None:
        if isinstance(fmt, int) and fmt >= FILES_FORMAT:
            yield Check("file digests", False, f"{artifact}: the manifest (format {fmt}) "
                        f"lists no {FILES_KEY}")
        elif fmt is not None:
            yield Check("file digests", False, f"{artifact}: manifest format {fmt} records no "
                        "file digests (compiled by an older fffc: recompile it)")
        return
    if not isinstance(files, dict):
        yield Check("file digests", False, f"{artifact}: manifest key {FILES_KEY} is not an "
                    "object")
        return
    for key, rel in named(manifest):
        if not key.startswith(FILES_KEY) and isinstance(rel, str) and rel not in files:
            yield Check(f"{key}: digest", False, f"{artifact}: {rel} ({key}) has no digest "
                        f"in the manifest's {FILES_KEY}")
    for rel, entry in files.items():
        key = f"files[{rel!r}]"
        if key not in paths:
            continue  # refused above
        path = paths[key]
        want = entry.get("sha256") if isinstance(entry, dict) else None
        if not isinstance(want, str):
            yield Check(f"{rel}: sha256", False, f"{artifact}: no sha256 recorded for {rel}")
        elif not path.is_file():
            yield Check(f"{rel}: sha256", False, f"{artifact}: {rel} is missing")
        elif (size := path.stat().st_size) != entry.get("bytes", size):
            yield Check(f"{rel}: sha256", False, f"{artifact}: {rel} has {size} bytes, the "
                        f"manifest says {entry['bytes']} (truncated or replaced)")
        elif (got := _digest(path)) != want:
            yield Check(f"{rel}: sha256", False, f"{artifact}: {rel} has sha256 {got[:16]}…, "
                        f"the manifest says {want[:16]}… (modified or from another build)")
        else:
            yield Check(f"{rel}: sha256 {want[:16]}…", True)


def verify(artifact: Path, manifest: dict, digests: bool = True) -> None:
    """Raise ArtifactError at the first check that fails."""
    for c in checks(artifact, manifest, digests):
        if not c.ok:
            raise ArtifactError(c.detail)


def loadable(path: Path) -> None:
    """Refuse a shared library whose ELF headers describe more bytes than the file holds:
    the dynamic loader maps such a file and the process dies of SIGBUS on first touch (a
    truncated copy whose manifest was rewritten to match it, or a file checked with
    ``check_files=False``). Not ELF at all is left to the loader, which reports it."""
    if not path.is_file():
        raise ArtifactError(f"{path}: the shim library is not a file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF":
            return
        if len(head) < 64 or head[4] != 2 or head[5] not in (1, 2):
            raise ArtifactError(f"{path}: a truncated or non-64-bit ELF file ({size} bytes)")
        end = "<" if head[5] == 1 else ">"
        phoff, shoff = struct.unpack_from(end + "QQ", head, 32)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(end + "HHHH", head, 54)
        tables = [(phoff, phentsize * phnum), (shoff, shentsize * shnum)]
        if phoff + phentsize * phnum <= size and phentsize >= 56:
            f.seek(phoff)
            for _ in range(phnum):
                ph = f.read(phentsize)
                p_type, _, offset = struct.unpack_from(end + "IIQ", ph, 0)
                filesz = struct.unpack_from(end + "Q", ph, 32)[0]
                if p_type == 1:  # PT_LOAD
                    tables.append((offset, filesz))
    for offset, length in tables:
        if offset + length > size:
            raise ArtifactError(f"{path}: truncated shared library: its ELF headers need "
                                f"{offset + length} bytes, the file has {size}")
