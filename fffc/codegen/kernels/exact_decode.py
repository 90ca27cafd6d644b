"""``SparseFFN`` mode=exact for one token, on the split-K decode kernels.

Exact skipping is the threshold kernels with their thresholds fixed: no input threshold,
and a neuron counts when its value is non-zero (|a| > 0). Dense ReLU FFNs run the teal
kernel (``sparse_ffn_teal``): the first projection streams whole rows of W1 split over the
inputs, then only the rows of W2 of non-zero neurons. Gated ones (ReGLU, dReLU) run the
cats kernel (``sparse_ffn_cats``): gate first, then WU's and W2's rows only where the
ReLU gate is positive. Same function as the dense FFN up to float reassociation.
"""

from __future__ import annotations

from dataclasses import replace

from fffc.contract.kernels import SparseSpec
from fffc.contract.kinds import SparseMode

from .sparse_ffn import Tiling, check_spec
from .sparse_ffn_cats import cats_primfunc
from .sparse_ffn_teal import teal_primfunc


def exact_decode_primfunc(spec: SparseSpec, tiling: Tiling, symbol: str, dtype: str = "float32"):
    """The teal (dense) or cats (gated) kernel without TH: its thresholds fixed to exact
    skipping's (``decode.EXACT_THRESHOLDS``); the weights W1, W2, WU stored as ``dtype``."""
    check_spec(spec)  # what exact skipping can compute (ReLU-family, float32)
    as_mode = replace(spec, mode=SparseMode.CATS if spec.gated else SparseMode.TEAL)
    make = cats_primfunc if spec.gated else teal_primfunc
    return make(as_mode, tiling, symbol, dtype=dtype, args=spec.arg_names())
