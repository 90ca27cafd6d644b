"""ONNX graph passes (imported as ``fffc.passes``): canonicalize → detect → lower.

Pure IR → IR over onnx_ir with onnxscript rewrite rules; no TVM, no file I/O.
"""

from .detect import canonicalize, detect, near_misses
from .lower import expose, legalize, lower, site_io, site_weights
from .weight_dtype import round_weights

__all__ = ["canonicalize", "detect", "expose", "legalize", "lower", "near_misses",
           "round_weights", "site_io", "site_weights"]

from ._adapter import lower, site_inputs  # noqa: F401, F811  TEMP bridge
