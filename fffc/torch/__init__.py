"""PyTorch helpers (optional extra ``fffc[torch]``: ``pip install torch==2.13.0``).

``FastFeedForward``: UltraFastBERT's FFF layer with its training forward (dense compute,
hard path mask) and the inference walk, exportable to ONNX with both exporters.
"""

from .fff import FastFeedForward, swap_ffn

__all__ = ["FastFeedForward", "swap_ffn"]
