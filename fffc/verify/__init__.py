"""Verification: every rewrite is compared with what it replaces before anything is kept.

``compare`` runs models in ONNX Runtime and measures errors; ``reference`` is each op's
math in NumPy; ``sites`` checks a planned op against the original subgraph; ``cuda_emu``
runs emitted CUDA source on the CPU.
"""
