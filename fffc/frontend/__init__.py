"""Reading models: load and validate an ONNX file, hand it to the passes as onnx_ir."""

from .load import load, load_proto, to_ir

__all__ = ["load", "load_proto", "to_ir"]
