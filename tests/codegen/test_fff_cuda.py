"""The FastFeedForward CUDA kernel, run by the CPU emulator, against the NumPy reference.

Tree shapes of the papers: UltraFastBERT 1x11 (12 of 4095 nodes per token), 4x3 and the
repository's default 128x4 (small hidden sizes keep the emulation fast).
"""

from __future__ import annotations

import numpy as np
import pytest

from fffc.codegen.cuda_build import CudaVariant, compile_fatbin, emit_kernels, fatbin_entries
from fffc.codegen.kernels.fff_cuda import FffTiling, fff_kernel
from fffc.contract.errors import CodegenError
from fffc.contract.kernels import FffSpec
from fffc.contract.tolerances import RTOL
from fffc.verify.cuda_emu import Emulator
from fffc.verify.reference import fast_feed_forward


@pytest.mark.parametrize("prefetch", [False, True])
@pytest.mark.parametrize("d_in, d_out, trees, depth, threads",
                         [(48, 40, 1, 11, 32), (64, 64, 4, 3, 32), (40, 24, 128, 4, 64),
                          (100, 70, 2, 5, 64)])
def test_fff_kernel_matches_the_reference(d_in, d_out, trees, depth, threads, prefetch,
                                          tmp_path) -> None:
    spec = FffSpec(d_in, d_out, trees, depth)
    func = fff_kernel(spec, FffTiling(threads, prefetch), "fff_test", "float32")
    source, launches = emit_kernels({"fff_test": func})
    launch = launches["fff_test"]
    assert launch.block == (threads, 1, 1) and launch.grid[0](7) == 7  # a block per token
    variant = CudaVariant(spec, "fff", 1, 2**31 - 1, (launch,), ())
    rng = np.random.default_rng(trees * 100 + depth)
    w = {"W_in": rng.standard_normal((spec.d_ff, d_in)) / np.sqrt(d_in),
         "B_in": rng.standard_normal(spec.d_ff) * 0.3,
         "W_out": rng.standard_normal((spec.d_ff, d_out))}
    w = {k: v.astype(np.float32) for k, v in w.items()}
    x = rng.standard_normal((9, d_in)).astype(np.float32)
    got = Emulator(source, [variant]).run(variant, {"X": x, **w})
    want = fast_feed_forward(x, w["W_in"], w["B_in"], w["W_out"], trees=trees, depth=depth)
    assert np.abs(got - want).max() / np.abs(want).max() < RTOL
    (tmp_path / "k.cu").write_text(source)
    compile_fatbin(tmp_path / "k.cu", tmp_path / "k.fatbin", ["sm_80", "sm_90"])
    assert ("elf", "sm_90") in fatbin_entries(tmp_path / "k.fatbin")


@pytest.mark.parametrize("prefetch", [False, True])
def test_fff_kernel_tie_break_ge(prefetch) -> None:
    """tie_break "ge": a token whose root logit is exactly 0 goes right, as the reference."""
    spec = FffSpec(32, 24, 2, 3, "ge")
    func = fff_kernel(spec, FffTiling(32, prefetch), "fff_ge", "float32")
    source, launches = emit_kernels({"fff_ge": func})
    variant = CudaVariant(spec, "fff", 1, 2**31 - 1, (launches["fff_ge"],), ())
    rng = np.random.default_rng(5)
    w = {"W_in": rng.standard_normal((spec.d_ff, 32)), "B_in": rng.standard_normal(spec.d_ff),
         "W_out": rng.standard_normal((spec.d_ff, 24))}
    w = {k: v.astype(np.float32) for k, v in w.items()}
    w["B_in"][0] = 0.0
    x = rng.standard_normal((3, 32)).astype(np.float32)
    x[1] = 0.0  # root logit of tree 0 exactly 0
    got = Emulator(source, [variant]).run(variant, {"X": x, **w})
    for tb in ("ge", "gt"):
        want = fast_feed_forward(x, w["W_in"], w["B_in"], w["W_out"], trees=2, depth=3,
                                 tie_break=tb)
        assert np.allclose(got, want, rtol=1e-5, atol=1e-5) == (tb == "ge")


def test_reference_walks_one_path_per_tree() -> None:
    """The reference visits D+1 nodes per tree: zeroing every other row of W_out leaves Y."""
    rng = np.random.default_rng(0)
    trees, depth, d = 2, 4, 16
    spec = FffSpec(d, d, trees, depth)
    w_in = rng.standard_normal((spec.d_ff, d)).astype(np.float32)
    b_in = rng.standard_normal(spec.d_ff).astype(np.float32)
    w_out = rng.standard_normal((spec.d_ff, d)).astype(np.float32)
    x = rng.standard_normal((1, d)).astype(np.float32)
    n = 2 ** (depth + 1) - 1
    path = []
    for k in range(trees):  # walk by hand, independently of the reference's loop
        j = 0
        for _ in range(depth + 1):
            path.append(k * n + j)
            z = float(x[0] @ w_in[k * n + j] + b_in[k * n + j])
            j = 2 * j + 1 + (1 if z > 0 else 0)
    masked = np.zeros_like(w_out)
    masked[path] = w_out[path]
    np.testing.assert_allclose(fast_feed_forward(x, w_in, b_in, masked, trees=trees, depth=depth),
                               fast_feed_forward(x, w_in, b_in, w_out, trees=trees, depth=depth))
    assert len(set(path)) == trees * (depth + 1)


def test_fff_shape_checks() -> None:
    spec = FffSpec(16, 16, 1, 3)
    with pytest.raises(CodegenError, match="power of two"):
        fff_kernel(spec, FffTiling(48), "x", "float32")
    with pytest.raises(CodegenError, match="float64"):
        fff_kernel(spec, FffTiling(32), "x", "float64")
    with pytest.raises(ValueError, match="expected trees"):
        fast_feed_forward(np.zeros((1, 16)), np.zeros((14, 16)), np.zeros(14), np.zeros((14, 16)),
                          trees=1, depth=3)
