"""Every tolerance a check uses, in one table. Leaf module.

Relative errors are ``max|got - want| / max|want|`` over a check's outputs (``fffc.verify``).
"""

RTOL = 1e-4  # default ``--rtol``: a float32 kernel or rewrite vs ONNX Runtime's original
TEAL_BAND = 2e-5  # reference slack: |a| this close (relative) to a threshold is decided by
# float32 rounding, so either side is correct
PREDICTOR_BAND = 1e-6  # reference slack: |score| within this of 0, relative to the sum of
# the terms' magnitudes (16 float32 epsilons), may select or not

# A 16-bit model (float16 or bfloat16 weights and activations): its site's op computes in
# float32 on the model's own 16-bit weights, x widened exactly at its input and y rounded
# to the model's dtype once at its output. The original subgraph rounds at most at every
# node's output (x·W1, + B1, x·WU, the product, ·W2, + B2: 6 roundings, each of at most
# the unit roundoff u relative to the value rounded; ONNX Runtime's x86 CPU provider has
# no float16 MatMul: it runs the whole FFN in float32 between one inserted Cast of x and
# one of y, fffc's function, and rounds once). A rounding inside the FFN reaches y through
# the down projection as about u·|y| (bounded by u·Σ|h||W2|, which exceeds max|y| by the
# cancellation in the sum), so the two functions differ by a small multiple of u relative
# to max|y|. The checks allow 8 u: the 6 roundings, and 2 for cancellation.
UNIT_ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8}
NARROW_ROUNDINGS = 8


def for_dtype(dtype: str, rtol: float) -> float:
    """The relative tolerance of a check of a site (or model) whose activations are
    ``dtype``: ``rtol`` for float32, at least ``NARROW_ROUNDINGS`` unit roundoffs of a
    16-bit dtype."""
    return max(rtol, NARROW_ROUNDINGS * UNIT_ROUNDOFF.get(dtype, 0.0))
