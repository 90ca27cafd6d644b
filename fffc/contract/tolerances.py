"""Every tolerance a check uses, in one table. Leaf module.

Relative errors are ``max|got - want| / max|want|`` over a check's outputs (``fffc.verify``).
"""

RTOL = 1e-4  # default ``--rtol``: a float32 kernel or rewrite vs ONNX Runtime's original
TEAL_BAND = 2e-5  # reference slack: |a| this close (relative) to a threshold is decided by
# float32 rounding, so either side is correct
PREDICTOR_BAND = 1e-6  # reference slack: |score| within this of 0, relative to the sum of
# the terms' magnitudes (16 float32 epsilons), may select or not
