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
    "static-qdq-tensor-relu": ("relu", lambda s, d: q.static_qdq(s, d, per_channel=False)),
    "static-qdq-channel-relu": ("relu", lambda s, d: q.static_qdq(s, d, per_channel=True)),
    "static-qdq-channel-reglu": ("reglu", lambda s, d: q.static_qdq(s, d, per_channel=True)),
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


@pytest.fixture(scope="session")
def quantized_fff(tmp_path_factory) -> Path:
    """A FastFeedForward (4 trees of depth 3, 128 → 128; TorchScript export) whose
    ``linear_out`` MatMul ONNX Runtime's MatMulNBitsQuantizer made int4 (block 32, K = 60:
    the last block padded); ``linear_in`` is a Gemm, which the quantizer leaves float."""
    torch = pytest.importorskip("torch", reason="the torch extra exports the FFF")
    from fffc.torch import FastFeedForward
    from tests.fixtures.fff_exports import export_fff

    root = tmp_path_factory.mktemp("quantized-fff")
    torch.manual_seed(0)
    module = FastFeedForward(128, 128, depth=3, trees=4).eval()
    src = export_fff(module, root / "fff.onnx", dynamo=False, opset=17)
    return q.matmul_nbits(src, root / "fff_q4.onnx", 4, 32, True)
