"""Reading models: load and validate an ONNX file, hand it to the passes as onnx_ir."""

from .load import copy, load, load_proto, save, sha256_file, to_ir

__all__ = ["copy", "load", "load_proto", "save", "sha256_file", "to_ir"]
