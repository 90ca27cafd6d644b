"""ONNX graph passes (imported as ``fffc.passes``): canonicalize → detect → lower.

Pure IR → IR over onnx_ir with onnxscript rewrite rules; no TVM, no file I/O.
"""

from .canonical_quant import formats as weight_formats
from .detect import canonicalize, detect, near_misses
from .lowering import expose, legalize, lower, site_inputs, site_io
from .weight_dtype import install_int4, round_weights, site_formats

__all__ = ["canonicalize", "detect", "expose", "install_int4", "legalize", "lower",
           "near_misses", "round_weights", "site_formats", "site_inputs", "site_io",
           "weight_formats"]
