"""The CPU FastFeedForward kernels (walk_serial, walk, level) in-process, against the
float64 NumPy reference, and which of them an artifact's kernel table uses."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from fffc.codegen.build import KernelRunner, source
from fffc.codegen.schedules import MAX_TOKENS, family
from fffc.contract.errors import CodegenError
from fffc.contract.kernels import FffSpec
from fffc.verify.reference import fast_feed_forward

X86 = family("x86")
SERIAL_MAX, BLOCK = X86.config.fff_serial_max_tokens, X86.config.fff_level_block

# 128 trees of depth 4 at H 256: 1.3 MB of rows walked per token, so the table has "level"
BIG = FffSpec(256, 256, 128, 4)
BIG_GE = FffSpec(256, 256, 128, 4, "ge")
SMALL = FffSpec(48, 40, 1, 7)


@functools.cache
def _runner(spec: FffSpec, variant: str) -> KernelRunner:
    return KernelRunner(spec, variant)


def _weights(spec: FffSpec) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(spec.d_ff)
    w = {"W_in": rng.standard_normal((spec.d_ff, spec.d_in)) / np.sqrt(spec.d_in),
         "B_in": rng.standard_normal(spec.d_ff) * 0.1,
         "W_out": rng.standard_normal((spec.d_ff, spec.d_out))}
    w = {k: v.astype(np.float32) for k, v in w.items()}
    w["B_in"][0] = 0.0  # tree 0's root logit is exactly 0 for a zero token: the tie decides
    return w


def test_table_adds_level_only_for_forests_that_do_not_stay_cached() -> None:
    assert [v.name for v in X86.fff_variants(SMALL)] == ["walk_serial", "walk"]
    assert [(v.name, v.min_tokens, v.max_tokens) for v in X86.fff_variants(BIG)] == [
        ("walk_serial", 1, SERIAL_MAX), ("walk", SERIAL_MAX + 1, 2 * BLOCK - 1),
        ("level", 2 * BLOCK, MAX_TOKENS)]
    with pytest.raises(CodegenError, match="no variant"):
        source(SMALL, "level", X86)


@pytest.mark.parametrize("spec", [BIG, BIG_GE], ids=["gt", "ge"])
@pytest.mark.parametrize("variant", ["walk_serial", "walk", "level"])
def test_variant_matches_reference(spec: FffSpec, variant: str) -> None:
    w = _weights(spec)
    run = _runner(spec, variant)
    tie_break = spec.tie_break
    # one token, a partial block, two full blocks plus a remainder
    for tokens in (1, BLOCK - 5, 2 * BLOCK + 3):
        x = np.random.default_rng(tokens).standard_normal((tokens, spec.d_in)).astype(np.float32)
        x[0] = 0.0
        got = run(x, w["W_in"], w["B_in"], w["W_out"])
        want = fast_feed_forward(x, w["W_in"], w["B_in"], w["W_out"], trees=128, depth=4,
                                 tie_break=tie_break)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
        other = fast_feed_forward(x, w["W_in"], w["B_in"], w["W_out"], trees=128, depth=4,
                                  tie_break="ge" if tie_break == "gt" else "gt")
        assert not np.allclose(got[0], other[0], rtol=1e-4, atol=1e-4 * np.abs(want).max())
