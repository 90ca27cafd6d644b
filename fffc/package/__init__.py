"""Packaging: the native shim build, ONNX Runtime's headers, the manifest and the artifact
folder (staged, then renamed into place)."""
