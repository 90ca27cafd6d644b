"""The fixed sets of values fffc reasons with, each defined once. Leaf module.

Members are ``str`` subclasses whose ``str()`` is their value, so manifests, reports and
ONNX attributes keep the plain names ("teal", "gated", "float16").
"""

from __future__ import annotations

from enum import Enum, IntEnum


class _Named(str, Enum):
    def __str__(self) -> str:
        return self.value


class SiteKind(_Named):
    """The form of FFN a rule matched."""

    DENSE = "dense"  # act(x·W1 + B1)·W2 + B2
    GATED = "gated"  # (act(x·W1 + B1) ⊙ up_act(x·WU))·W2 + B2
    FFF = "fff"  # Fast Feedforward tree (UltraFastBERT)
    STRUCTURED = "structured"  # low-rank / block-diagonal / BlockShuffle projections
    ROUTED = "routed"  # Mixture-of-Depths: the FFN on routed tokens only


class Decision(_Named):
    """What the plan makes of a site (``fffc.contract.modes`` says what each one means)."""

    PENDING = "pending"  # not planned yet
    DENSE = "dense"  # left as it was
    EXACT = "exact"  # SparseFFN: exact activation skipping (ReLU zeros)
    TEAL = "teal"  # SparseFFN: TEAL's calibrated thresholds on x and a
    CATS = "cats"  # SparseFFN: CATS's calibrated gate threshold
    PREDICTOR = "predictor"  # SparseFFN: a trained low-rank predictor selects neurons
    TREE = "tree"  # FastFeedForward
    WALK = "walk"  # an FFF's conditional walk in standard ops (no kernels)
    STRUCTURED = "structured"  # StructuredFFN
    ROUTED = "routed"  # RoutedFFN


class SparseMode(_Named):
    """``ai.fffc::SparseFFN``'s ``mode`` attribute: how neurons are skipped."""

    EXACT = "exact"
    TEAL = "teal"
    CATS = "cats"
    PREDICTOR = "predictor"


class Branch(_Named):
    """What serves a call at a site with kernels (an ``If`` on the token count picks one)."""

    KERNEL = "kernel"  # fffc's op, its compiled kernels through the shim
    ORIGINAL = "original"  # the site's original subgraph in standard ops
    MASKED = "masked"  # a masked mode's function in standard ops (--sparse-prefill)


class Crossover(_Named):
    """Where a site's token crossover comes from (``--crossovers`` takes the first two)."""

    MEASURED = "measured"  # timed on the build machine: the kernel vs ONNX Runtime
    TABLE = "table"  # the target family's table (fffc.codegen.schedules)
    OPTION = "option"  # --max-sparse-tokens
    PINNED = "pinned"  # timings given with --timings


class TargetFamily(_Named):
    """A code generation backend."""

    X86 = "x86"
    ARM = "arm"
    CUDA = "cuda"


class QuantSource(_Named):
    """The graph form a quantized projection came in (``fffc.contract.quant``)."""

    MATMUL_NBITS = "MatMulNBits"  # com.microsoft::MatMulNBits: codes in blocks along K
    QDQ = "QDQ"  # DequantizeLinear of a constant weight, then MatMul
    DYNAMIC = "MatMulInteger"  # DynamicQuantizeLinear(x) + MatMulInteger + Cast + scale Mul


class Granularity(_Named):
    """Which weights share one scale (and zero point)."""

    TENSOR = "tensor"  # the whole matrix
    CHANNEL = "channel"  # one output column (or one row: the record's axis)
    BLOCK = "block"  # block_size consecutive entries along the record's axis


class WeightDtype(_Named):
    """How a site's weight matrices are stored (``--weight-dtype``)."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"
    INT4 = "int4"  # 4-bit symmetric MatMulNBits codes with float32 scales per block
    INT8 = "int8"  # 8-bit symmetric MatMulNBits codes with float32 scales per block

    @property
    def flag(self) -> str:
        """The ``--weight-dtype`` spelling: fp32, fp16, bf16, int4, int8."""
        return {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16",
                "int4": "int4", "int8": "int8"}[self.value]

    @property
    def floating(self) -> bool:
        """A float format (the 16-bit ones widen to float32 in the kernels)."""
        return self not in (WeightDtype.INT4, WeightDtype.INT8)

    @property
    def bits(self) -> WeightBits:
        """SparseFFN's ``bits`` of the codes this dtype quantizes to (FLOAT: a float dtype)."""
        return {WeightDtype.INT4: WeightBits.INT4,
                WeightDtype.INT8: WeightBits.INT8}.get(self, WeightBits.FLOAT)


class WeightBits(IntEnum):
    """SparseFFN's ``bits`` attribute: how its weight matrices W1, W2, WU are stored."""

    FLOAT = 0  # float32 (or 16-bit) values
    INT4 = 4  # MatMulNBits' 4-bit codes, two a byte, float32 scales per block
    INT8 = 8  # MatMulNBits' 8-bit codes, one a byte, float32 scales per block

    @classmethod
    def from_flag(cls, text: str) -> WeightDtype:
        for d in cls:
            if text in (d.flag, d.value):
                return d
        raise ValueError(f"one of {', '.join(d.flag for d in cls)}, got {text!r}")
