"""PyTorch helpers (optional extra ``fffc[torch]``: ``pip install torch==2.13.0``).

``FastFeedForward``: UltraFastBERT's FFF layer with its training forward (dense compute,
hard path mask) and the inference walk, exportable to ONNX with both exporters.
``LowRankLinear``, ``BlockDenseLinear``, ``BlockShuffleLinear`` and ``StructuredMLP``: the
structured FFNs of Wei et al. 2024 with self-guided training (``guide_schedule``), whose
exports keep a dynamic token count. ``MoDFFN``: Mixture-of-Depths top-k routing around an
FFN (static export form) with its causal predictor for decoding.
"""

from .fff import FastFeedForward, swap_ffn
from .mod import MoDFFN
from .structured import (
    BlockDenseLinear,
    BlockShuffleLinear,
    LowRankLinear,
    StructuredMLP,
    guide_schedule,
)

__all__ = [
    "BlockDenseLinear",
    "BlockShuffleLinear",
    "FastFeedForward",
    "LowRankLinear",
    "MoDFFN",
    "StructuredMLP",
    "guide_schedule",
    "swap_ffn",
]
