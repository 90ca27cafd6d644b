"""``fffc verify ARTIFACT``: every check of an artifact folder — its manifest readable, each
path it names inside the folder, each file's sha256 as recorded (``fffc.runtime.integrity``)
— and, when those hold, that ONNX Runtime registers its shim and opens its model."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from .. import runtime
from ..runtime.integrity import Check, checks
from .compare import ORT_ERRORS


def verify_artifact(artifact: Path, load: bool = True) -> list[Check]:
    """The checks in order; a check that cannot run after a failed one is not listed."""
    try:
        manifest = runtime.manifest(artifact)
    except (OSError, ValueError) as e:
        return [Check("manifest", False, str(e))]
    out = [Check("manifest.json readable" if manifest else "no manifest.json (defaults)", True),
           *checks(artifact, manifest)]
    if not load or not all(c.ok for c in out):
        return out
    so = ort.SessionOptions()
    so.log_severity_level = 3
    try:
        sess = runtime.InferenceSession(artifact, so, check_files=False)
    except (OSError, ValueError, RuntimeError, *ORT_ERRORS) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return [*out, Check("ONNX Runtime opens it with its shim", False, first[:300])]
    what = f"ONNX Runtime opens it with its shim ({', '.join(sess.get_providers())})"
    return [*out, Check(what, True)]
