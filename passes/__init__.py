"""ONNX graph passes (imported as ``fffc.passes``): canonicalize → detect → lower.

Pure IR → IR over onnx_ir with onnxscript rewrite rules; no TVM, no file I/O.
"""

from .detect import canonicalize, detect, near_misses
from .lowering import expose, legalize, lower, site_inputs, site_io
from .weight_dtype import round_weights

__all__ = ["canonicalize", "detect", "expose", "legalize", "lower", "near_misses",
           "round_weights", "site_inputs", "site_io"]
