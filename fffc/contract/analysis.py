"""What ``inspect`` reports and ``compile`` and ``calibrate`` start from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .sites import NearMiss, Site


@dataclass
class Analysis:
    """A model read, canonicalized, and its FFNs found: ``working`` holds one marker node
    (``ai.fffc.canon::FFN``) per site."""

    path: Path
    proto: Any  # onnx.ModelProto, as loaded
    working: Any  # onnx_ir.Model, canonical, FFNs replaced by markers
    sites: list[Site]
    near_misses: list[NearMiss]
    canonical_rewrites: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what the user should know, one line each

    def to_json(self) -> dict:
        return {"model": str(self.path), "sites": [s.to_json() for s in self.sites],
                "near_misses": [m.to_json() for m in self.near_misses],
                "canonical_rewrites": self.canonical_rewrites, "notes": self.notes}
