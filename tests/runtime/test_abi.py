"""The shim against a naive TVMScript kernel of the same ABI, independent of codegen's schedules.

Pins what the shim relies on: ``__tvm_ffi_<symbol>`` entry, DLTensor args in
``SparseSpec.arg_names()`` order, X/Y passed 2-D, parallel launches through the shim's
pool, and dispatch on the kernel table's token range.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from fffc.contract.kernels import SparseSpec
from tests.fixtures.shim import D_FF, D_IN, D_OUT, VARIANTS, make_model, reference, weights


def naive_kernel(symbol: str):
    """A plain ReLU FFN over X [N, d_in]: one token per parallel task, no tiling."""
    from fffc.codegen._tvm import T

    @T.prim_func
    def kernel(x: T.handle, w1: T.Buffer((D_IN, D_FF), "float32"),
               b1: T.Buffer((D_FF,), "float32"), w2: T.Buffer((D_FF, D_OUT), "float32"),
               b2: T.Buffer((D_OUT,), "float32"), y: T.handle):
        T.func_attr({"global_symbol": symbol, "tirx.noalias": True})
        N = T.int32()
        X = T.match_buffer(x, (N, D_IN), "float32", align=4)
        Y = T.match_buffer(y, (N, D_OUT), "float32", align=4)
        for t in T.parallel(N):
            h = T.alloc_buffer((D_FF,), "float32", scope="local")
            for f in range(D_FF):
                h[f] = b1[f]
            for k in range(D_IN):
                for f in range(D_FF):
                    h[f] = h[f] + X[t, k] * w1[k, f]
            for j in range(D_OUT):
                Y[t, j] = b2[j]
            for f in range(D_FF):
                if h[f] > T.float32(0):
                    for j in range(D_OUT):
                        Y[t, j] = Y[t, j] + h[f] * w2[f, j]

    return kernel


MAX_TOKENS = 64  # the naive kernel serves 1..64 tokens; more must find no kernel


@pytest.fixture(scope="module")
def naive_shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fffc.codegen import _tvm
    from fffc.codegen.build import CompiledKernel, KernelLibrary
    from fffc.package.native import build_shim

    spec = SparseSpec("relu", "none", "exact", D_IN, D_FF, D_OUT, True, True, False)
    assert spec.arg_names() == ["X", "W1", "B1", "W2", "B2", "Y"]
    symbol = "fffc_test_naive"
    func = naive_kernel(symbol)
    target = {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}
    out = tmp_path_factory.mktemp("naive")
    _tvm.compile_module({symbol: func}, target).mod.write_to_file(str(out / "kernels.o"))
    library = KernelLibrary(out / "kernels.o", (CompiledKernel(spec, "naive", symbol, 1, MAX_TOKENS),),
                            target, "x86")
    return build_shim(library, out)


def test_naive_kernel_through_shim(naive_shim: Path) -> None:
    v = VARIANTS[0]
    w = weights(v)
    so = ort.SessionOptions()
    so.register_custom_ops_library(str(naive_shim))
    sess = ort.InferenceSession(make_model(v, w).SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(5)
    for batch, seq in ((0, 3), (1, 1), (1, 3), (4, 16)):  # 0 tokens needs no kernel at all
        x = rng.standard_normal((batch, seq, D_IN)).astype(np.float32)
        (y,) = sess.run(None, {"X": x})
        np.testing.assert_allclose(y, reference(v, w, x), rtol=1e-4, atol=1e-4)
    with pytest.raises(Exception, match="no compiled kernel"):
        sess.run(None, {"X": np.ones((1, MAX_TOKENS + 1, D_IN), np.float32)})
