"""fffc: conditional-computation FFNs compiled with TVM, run in ONNX Runtime."""
