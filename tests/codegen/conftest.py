"""Shared helpers of the codegen tests: specs, random weights, a cached compile."""

from __future__ import annotations

import functools

import numpy as np

from fffc.codegen.build import compile_for_test
from fffc.contract.kernels import SparseSpec
from fffc.contract.kinds import SparseMode
from fffc.verify.reference import sparse_ffn

RTOL, ATOL = 1e-4, 1e-5  # fp32 kernel vs float64 reference: reassociation only
TOKENS = (1, 2, 3, 7, 30, 64, 130)  # every variant, full and partial token tiles


def spec(d_in: int = 32, d_ff: int = 128, d_out: int = 48, *, bias: bool = True,
         up: str | None = None) -> SparseSpec:
    """``up`` None: dense ReLU FFN; "none": ReGLU; "relu": dReLU."""
    return SparseSpec("relu", up or "none", SparseMode.EXACT, d_in, d_ff, d_out, bias, bias,
                      up is not None)


@functools.cache
def kernels(s: SparseSpec, variant: str | None = None):
    return compile_for_test(s, variant)


def weights(s: SparseSpec, seed: int = 0, shift: float = -0.5) -> dict[str, np.ndarray]:
    """Random weights; ``shift`` moves the first projection's pre-activation (sparsity)."""
    rng = np.random.default_rng(seed)
    w = {"W1": rng.standard_normal((s.d_in, s.d_ff)) / np.sqrt(s.d_in),
         "B1": rng.standard_normal(s.d_ff) * 0.1 + shift,
         "W2": rng.standard_normal((s.d_ff, s.d_out)) / np.sqrt(s.d_ff),
         "B2": rng.standard_normal(s.d_out), "WU": rng.standard_normal((s.d_ff, s.d_in))}
    if not s.has_b1:
        w["W1"][0] += shift  # x[:, 0] is ~1 in inputs(): the shift as a constant column
    return {k: v.astype(np.float32) for k, v in w.items()}


def inputs(s: SparseSpec, tokens: int, seed: int = 1) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((tokens, s.d_in)).astype(np.float32)
    x[:, 0] = 1.0
    return x


def args(s: SparseSpec, w: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [w[n] for n in s.arg_names()[1:-1]]


def reference(s: SparseSpec, w: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    return sparse_ffn(x, w["W1"], w["B1"] if s.has_b1 else None, w["W2"],
                      w["B2"] if s.has_b2 else None, w["WU"] if s.gated else None,
                      up_activation=s.up_activation)
