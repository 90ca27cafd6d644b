"""Quantized models written by ONNX Runtime's tools from small float FFNs, once per run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures import quantized as q

# id → (float FFN, how ONNX Runtime's tool quantizes it)
FORMS: dict[str, tuple[str, Callable[[Path, Path], Path]]] = {
    "nbits4-b32-zp-drelu": ("drelu", lambda s, d: q.matmul_nbits(s, d, 4, 32, False)),
    "nbits4-b128-sym-al4-swiglu": ("swiglu",
                                   lambda s, d: q.matmul_nbits(s, d, 4, 128, True, 4)),
    "nbits8-b32-sym-relu": ("relu", lambda s, d: q.matmul_nbits(s, d, 8, 32, True)),
    "nbits8-b128-zp-drelu": ("drelu", lambda s, d: q.matmul_nbits(s, d, 8, 128, False)),
    "qdq4-b32-drelu": ("drelu", lambda s, d: q.matmul_nbits(s, d, 4, 32, True, qdq=True)),
    "dynamic-drelu": ("drelu", q.dynamic),
    "dynamic-channel-swiglu": ("swiglu", lambda s, d: q.dynamic(s, d, per_channel=True)),
    "static-qdq-tensor-drelu": ("drelu", lambda s, d: q.static_qdq(s, d, per_channel=False)),
    "static-qdq-channel-drelu": ("drelu", lambda s, d: q.static_qdq(s, d, per_channel=True)),
}


@pytest.fixture(scope="session")
def quantized_model(tmp_path_factory) -> Callable[[str], Path]:
    """``form id → the quantized model file`` (built on first use)."""
    root = tmp_path_factory.mktemp("quantized")
    done: dict[str, Path] = {}

    def get(form: str) -> Path:
        if form not in done:
            act, quantize = FORMS[form]
            src = root / f"{act}.onnx"
            if not src.exists():
                q.float_ffn(src, act)
            done[form] = quantize(src, root / f"{form}.onnx")
        return done[form]

    return get
