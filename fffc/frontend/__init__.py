"""Reading models: load and validate an ONNX file (or a GenAI folder's decoder), hand it to
the passes as onnx_ir."""

from .load import copy, external_data_files, load, load_proto, save, sha256_file, to_ir

__all__ = ["copy", "external_data_files", "load", "load_proto", "save", "sha256_file", "to_ir"]
