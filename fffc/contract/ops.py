"""Contracts of the ``ai.fffc`` operators: the one source of truth.

Passes emit nodes from these specs, verification and the NumPy reference read them,
codegen derives kernel signatures from them and packaging writes the C registration
table from them. Leaf module: the standard library and the enums of ``kinds``.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from .kinds import SparseMode

DOMAIN = "ai.fffc"
OPSET_VERSION = 1


@dataclass(frozen=True)
class TensorArg:
    """One positional input or output of an operator."""

    name: str
    doc: str
    optional: bool = False


@dataclass(frozen=True)
class Attribute:
    """One attribute of an operator; ``choices`` empty means free-form."""

    name: str
    type: str  # "string" | "int" | "float" | "floats" (default: comma-separated)
    default: str | int | float
    choices: tuple[str, ...] = ()
    doc: str = ""


@dataclass(frozen=True)
class OpSpec:
    """Domain, name, version, inputs, outputs, attributes and element types of an op."""

    name: str
    inputs: tuple[TensorArg, ...]
    outputs: tuple[TensorArg, ...]
    attributes: tuple[Attribute, ...]
    dtypes: tuple[str, ...] = ("float32",)
    domain: str = DOMAIN
    version: int = OPSET_VERSION
    doc: str = ""

    def input_index(self, name: str) -> int:
        return [a.name for a in self.inputs].index(name)

    def attribute(self, name: str) -> Attribute:
        for a in self.attributes:
            if a.name == name:
                return a
        raise KeyError(name)


ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu")
UP_ACTIVATIONS = ("none", "relu")
SPARSE_MODES = tuple(str(m) for m in SparseMode)

SPARSE_FFN = OpSpec(
    name="SparseFFN",
    doc=(
        "Dense or gated FFN with input-dependent neuron skipping. Dense: "
        "Y = act(X·W1 + B1)·W2 + B2. Gated: Y = (act(X·W1 + B1) ⊙ up_act(X·WU^T))·W2 + B2. "
        "mode=exact skips neuron i exactly when its activation is zero (ReLU, ReGLU, dReLU). "
        "mode=teal is TEAL's thresholded FFN: entries of X with |x| <= TH[0] and of the down "
        "projection's input with |a| <= TH[1] are zero (a negative threshold keeps all), so "
        "their rows of W1/WU and of W2 are skipped. mode=cats (gated FFNs): TH = [t_in, "
        "t_gate]; x as in teal, then neurons with |act(gate)| <= t_gate are zero, so their "
        "rows of WU and W2 are skipped. mode=predictor (Deja Vu / PowerInfer): a "
        "low-rank predictor selects neurons, S = {i: ((X·PA)·PB + PC)_i > 0}, and only their "
        "rows of W1, WU and W2 are computed; the others count as zero. Centered teal "
        "(inputs XC, HC): x' = X - XC and a' = a - HC are what is thresholded and projected "
        "(Y = a''·W2 + B2); with B1 holding XC·W1 and B2 holding HC·W2, that is TEAL with every "
        "entry within the threshold of its channel's center replaced by the center. "
        "bits=4 (int4 weights): each weight is (code - zero point)·scale in float32, one scale "
        "(and zero point) per block of `block` consecutive codes along d_in (W1, WU) or d_ff "
        "(W2). W1 and WU as com.microsoft::MatMulNBits stores them: codes [d_ff, d_in/block, "
        "block/2] uint8, two a byte, the lower index in the low nibble; row i = neuron i. W2 "
        "per neuron: codes [d_ff, d_out/2] uint8, neuron i's outputs in chunks of 32 (byte k "
        "of chunk c holds output 32c + k in the low nibble, 32c + 16 + k in the high one). "
        "bits=8 (int8 weights): the same with MatMulNBits' 8-bit codes, one a byte: W1 and WU "
        "codes [d_ff, d_in/block, block] uint8; W2 codes [d_ff, d_out] uint8, row i = neuron "
        "i's outputs in order; zero points one a byte everywhere (absent: 128). "
        "The function computed is the float FFN on the dequantized weights."
    ),
    inputs=(
        TensorArg("X", "activations [..., d_in]; all leading dims are tokens"),
        TensorArg("W1", "first projection (the gate for gated FFNs): [d_in, d_ff]; mode "
                        "predictor: transposed [d_ff, d_in], row i = neuron i"),
        TensorArg("B1", "bias of the first projection [d_ff]", optional=True),
        TensorArg("W2", "down projection [d_ff, d_out]: row i holds neuron i's output weights"),
        TensorArg("B2", "bias of the down projection [d_out]", optional=True),
        TensorArg("WU", "gated FFNs: the up projection; mode exact: transposed [d_ff, d_in], "
                        "row i = neuron i (read per neuron, gate first; also cats, predictor); mode teal: "
                        "[d_in, d_ff], "
                        "row k = input channel k (read per surviving channel)", optional=True),
        TensorArg("TH", "mode teal: thresholds [t_in, t_hidden]; mode cats: [t_in, t_gate]",
                  optional=True),
        TensorArg("PA", "mode predictor: first factor [d_in, rank]", optional=True),
        TensorArg("PB", "mode predictor: second factor [rank, d_ff]", optional=True),
        TensorArg("PC", "mode predictor: offsets [d_ff] (the cut folded in: selected where "
                        "the score is > 0)", optional=True),
        TensorArg("XC", "mode teal, dense FFNs: centers of X's channels [d_in], subtracted "
                        "before the input threshold", optional=True),
        TensorArg("HC", "mode teal: centers of the down projection's input [d_ff], "
                        "subtracted before the hidden threshold", optional=True),
        TensorArg("W1S", "bits 4, 8: W1's scales [d_ff · d_in/block] (MatMulNBits' order)",
                  optional=True),
        TensorArg("W1Z", "bits 4: W1's zero points [d_ff · ceil(d_in/block / 2)] uint8, two "
                         "a byte (absent: 8); bits 8: [d_ff · d_in/block], one a byte "
                         "(absent: 128)", optional=True),
        TensorArg("W2S", "bits 4, 8: W2's scales [d_ff/block, d_out]", optional=True),
        TensorArg("W2Z", "bits 4, 8: W2's zero points [d_ff/block, d_out] uint8, one a "
                         "byte (absent: 8; bits 8: 128)", optional=True),
        TensorArg("WUS", "bits 4, 8: WU's scales, as W1S", optional=True),
        TensorArg("WUZ", "bits 4, 8: WU's zero points, as W1Z", optional=True),
        TensorArg("AQ", "static activation quantization (quantize_static's QDQ pairs inside "
                        "the FFN): float32 [4, 4], row r = where (0: X·W1 before B1, 1: the "
                        "gate's activation, 2: the up activation, 3: the down projection's "
                        "input), (s, z, qmin, qmax); fq(v) = (clamp(round_half_even(v / s) + "
                        "z, qmin, qmax) - z)·s applied there, a row of zeros: none (dense: "
                        "Y = fq3(act(fq0(X·W1) + B1))·W2 + B2; gated: Y = fq3(fq1(act(fq0("
                        "X·W1) + B1)) ⊙ fq2(up_act(X·WU)))·W2 + B2). fq(0) = 0, so zeros stay "
                        "zeros", optional=True),
    ),
    outputs=(TensorArg("Y", "[..., d_out]"),),
    attributes=(
        Attribute("activation", "string", "relu", ACTIVATIONS, "activation of the first projection"),
        Attribute("up_activation", "string", "none", UP_ACTIVATIONS,
                  "gated FFNs: activation of the up projection (relu = dReLU)"),
        Attribute("mode", "string", "exact", SPARSE_MODES, "how neurons are skipped"),
        Attribute("bits", "int", 0, doc="0: float weights; 4: int4 codes with scales; 8: "
                  "int8 codes with scales (mode exact; see the op text)"),
        Attribute("accuracy_level", "int", 0, doc="bits 4, 8: 4 rounds x to int8 per block of "
                  "`block` entries before the gate and up products, as MatMulNBits' "
                  "accuracy_level 4 (x' = q·s, s = max|x_block|/127, q = round-half-even(x·"
                  "(127/max|x_block|)), 0 in an all-zero block) — in teal and cats x after its "
                  "input threshold, in predictor not for the scores, and in teal the hidden "
                  "activation after its threshold too, per block of neurons "
                  "(fffc.contract.int4); 0: x as it is"),
    ),
)

TIE_BREAKS = ("gt", "ge")  # FastFeedForward: right child on z > 0 / z >= 0

FAST_FEED_FORWARD = OpSpec(
    name="FastFeedForward",
    doc=(
        "UltraFastBERT's Fast Feedforward tree (conditional matrix multiplication). K trees "
        "of depth D, n = 2^(D+1) - 1 nodes each in heap order. Per token x and tree k: j = 0; "
        "D+1 times: z = W_in[k·n+j]·x + B_in[k·n+j]; y += GELU(z)·W_out[k·n+j]; "
        "j = 2j + 1 + [z > 0] (tie_break 'gt'; 'ge': [z >= 0]). Every visited node "
        "contributes; GELU is the exact erf form."
    ),
    inputs=(
        TensorArg("X", "activations [..., d_in]; all leading dims are tokens"),
        TensorArg("W_in", "node weights [K·n, d_in] (nn.Linear layout: row = node)"),
        TensorArg("B_in", "node biases [K·n]"),
        TensorArg("W_out", "output weights transposed [K·n, d_out]: row = node"),
    ),
    outputs=(TensorArg("Y", "[..., d_out]"),),
    attributes=(
        Attribute("trees", "int", 1, doc="K"),
        Attribute("depth", "int", 11, doc="D: each tree visits D+1 nodes per token"),
        Attribute("activation", "string", "gelu", ("gelu",), doc="of every visited node"),
        Attribute("tie_break", "string", "gt", TIE_BREAKS,
                  doc="gt: z > 0 goes right (UltraFastBERT's training code); ge: z >= 0 "
                      "(its benchmark code); they differ only where z is exactly 0"),
    ),
)

STRUCTURED_FFN = OpSpec(
    name="StructuredFFN",
    doc=(
        "FFN whose projections are structured (Wei et al. 2024): each projection is a "
        "block-diagonal product, then an optional dense factor. blockdiag(v, A) for A [k, p, q] "
        "maps v [.., k·p] to [.., k·q], block b: v[.., b·p:(b+1)·p] · A[b]. "
        "Y = blockdiag(act(blockdiag(X, A1)·U1 + B1), A2)·U2 + B2. LowRank: k = 1 (A = V, "
        "U = U); BlockDense: k > 1 with U; block-diagonal only: no U; a dense projection: "
        "k = 1, no U. BlockShuffle (Monarch): after blockdiag(v, A) (width w = k·q = m·r), "
        "with S [m, r, s]: h'[i·r + j] = h[j·m + i], g'[i·s + t] = Σ_j h'[i·r + j]·S[i, j, t], "
        "out[t·m + i] = g'[i·s + t] (width m·s), then U if given. "
        "M1/M2 are the pre-merged dense weights (blockdiag(A)·U, computed at "
        "compile time) for token counts up to merged_max_tokens, where a dense product beats "
        "the structured one on the target (measured at compile time)."
    ),
    inputs=(
        TensorArg("X", "activations [..., d_in]; all leading dims are tokens"),
        TensorArg("A1", "first projection's block-diagonal factor [k1, d_in/k1, r1/k1]"),
        TensorArg("U1", "first projection's dense factor [r1, d_ff]", optional=True),
        TensorArg("B1", "bias of the first projection [d_ff]", optional=True),
        TensorArg("A2", "second projection's block-diagonal factor [k2, d_ff/k2, r2/k2]"),
        TensorArg("U2", "second projection's dense factor [r2, d_out]", optional=True),
        TensorArg("B2", "bias of the second projection [d_out]", optional=True),
        TensorArg("M1", "pre-merged first projection [d_in, d_ff]", optional=True),
        TensorArg("M2", "pre-merged second projection [d_ff, d_out]", optional=True),
        TensorArg("S1", "BlockShuffle (Monarch): the first projection's second block-diagonal "
                        "factor [m, r, s] behind a shuffle (see the op doc)", optional=True),
        TensorArg("S2", "the same for the second projection", optional=True),
    ),
    outputs=(TensorArg("Y", "[..., d_out]"),),
    attributes=(
        Attribute("activation", "string", "gelu", ACTIVATIONS, "between the projections"),
        Attribute("merged_max_tokens", "int", 0,
                  doc="calls with at most this many tokens use M1/M2 (0: never)"),
    ),
)

ROUTERS = ("raw", "sigmoid")
SELECTIONS = ("topk", "threshold")
K_ROUNDS = ("trunc", "floor", "ceil")


def _f32(v: float) -> float:
    return struct.unpack("f", struct.pack("f", v))[0]


def describe_k(k: int, capacity: dict | None) -> str:
    """``4``, or how k follows the sequence length S (``max(1, int(S·0.125))``, ``S // 8``)."""
    if not capacity:
        return str(k)
    if capacity.get("divisor", 0) > 0:
        v = f"S // {capacity['divisor']}"
    else:
        v = f"{capacity.get('round', 'trunc').replace('trunc', 'int')}(S·{capacity['scale']:g})"
    return f"max({capacity['min']}, {v})" if capacity.get("min", 0) else v


def capacity_k(seq: int, k: int, capacity: dict | None = None) -> int:
    """RoutedFFN's top-k count for a sequence of ``seq`` tokens: the constant ``k``, or from
    ``capacity`` {scale, divisor, round, min} (the op's k_* attributes) computed the way the
    exported graph does it: float32(S)·scale rounded (Cast to int truncates), or S // divisor,
    then max(·, min). The shim computes the same in C++ (runtime/src/op_common.cc)."""
    if not capacity:
        return k
    if capacity.get("divisor", 0) > 0:
        v = seq // int(capacity["divisor"])
    else:
        prod = _f32(_f32(seq) * _f32(capacity["scale"]))  # exact product, one rounding
        how = capacity.get("round", "trunc")
        v = math.ceil(prod) if how == "ceil" else math.floor(prod) if how == "floor" else \
            int(prod)
    return max(v, int(capacity.get("min", 0)))

ROUTED_FFN = OpSpec(
    name="RoutedFFN",
    doc=(
        "Mixture-of-Depths around a dense FFN (Raposo et al. 2024). Per sequence b of X "
        "[B, S, d]: scores s = X[b]·WR (+ BR); selection topk: the k tokens with the largest "
        "scores (ties: the lower index, as ONNX TopK); selection threshold: the tokens with "
        "sigmoid(a) > 0.5 (causal, decode), a = X[b]·WA (+ BA) where WA is given, else a = s. "
        "Router weight w = s (router raw) or sigmoid(s). "
        "Selected tokens: Y = (x_coef[0] + x_coef[1]·w)·X + (delta_coef[0] + delta_coef[1]·w)"
        "·FFN(X), FFN(x) = act(x·W1 + B1)·W2 + B2; every other token: Y = X. The FFN runs "
        "on the selected tokens only."
    ),
    inputs=(
        TensorArg("X", "activations [B, S, d]: routing is over axis 1"),
        TensorArg("WR", "router weight [d]"),
        TensorArg("BR", "router bias [1]", optional=True),
        TensorArg("W1", "first projection [d, d_ff]"),
        TensorArg("B1", "bias of the first projection [d_ff]", optional=True),
        TensorArg("W2", "second projection [d_ff, d]"),
        TensorArg("B2", "bias of the second projection [d]", optional=True),
        TensorArg("WA", "selection threshold: a separate selection score (MoD's causal "
                        "auxiliary predictor) [d]; tokens with X·WA (+ BA) > 0 are selected",
                  optional=True),
        TensorArg("BA", "bias of the selection score [1]", optional=True),
        TensorArg("LS", "pre-norm inside the routed block: LayerNorm scale [d] (the FFN runs "
                        "on LN(X) of the selected tokens; the combine's X term stays raw)",
                  optional=True),
        TensorArg("LB", "LayerNorm bias [d] (with LS)", optional=True),
    ),
    outputs=(TensorArg("Y", "[B, S, d]"),),
    attributes=(
        Attribute("activation", "string", "gelu", ACTIVATIONS, "of the FFN"),
        Attribute("selection", "string", "topk", SELECTIONS, "which tokens take the FFN"),
        Attribute("k", "int", 1, doc="selection topk: tokens per sequence (capacity), when "
                  "k_scale and k_divisor are 0"),
        Attribute("k_scale", "float", 0.0, doc="> 0: k from the sequence length S, "
                  "round(float32(S)·k_scale) (an export with a dynamic sequence axis)"),
        Attribute("k_divisor", "int", 0, doc="> 0: k = S // k_divisor"),
        Attribute("k_round", "string", "trunc", K_ROUNDS, "how k_scale's product is rounded"),
        Attribute("k_min", "int", 0, doc="k = max(k, k_min) when k comes from S"),
        Attribute("router", "string", "raw", ROUTERS, "the weight w from the score s"),
        Attribute("x_coef", "floats", "1,0", doc="[a, b]: selected tokens keep (a + b·w)·X"),
        Attribute("delta_coef", "floats", "0,1", doc="[a, b]: and add (a + b·w)·FFN(X)"),
        Attribute("epsilon", "float", 1e-5, doc="LayerNorm epsilon (with LS)"),
    ),
)

OPS: dict[str, OpSpec] = {SPARSE_FFN.name: SPARSE_FFN, FAST_FEED_FORWARD.name: FAST_FEED_FORWARD,
                          STRUCTURED_FFN.name: STRUCTURED_FFN, ROUTED_FFN.name: ROUTED_FFN}


# --weight-dtype (CUDA): the weight matrices of each op that may be stored in 16 bits (the
# kernels widen every load to float32; biases, thresholds, predictors, routers stay float32)
WEIGHT_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "int4": "int4",
                 "int8": "int8"}
# Inputs that may hold uint8: integer codes (the weight matrices with bits 4, 8), zero points
CODE_INPUTS: dict[str, tuple[str, ...]] = {"SparseFFN": ("W1", "W2", "WU", "W1Z", "W2Z", "WUZ")}
# The scales and zero points of each quantized weight matrix of an op, by the matrix's input
QUANT_INPUTS: dict[str, dict[str, tuple[str, str]]] = {
    "SparseFFN": {"W1": ("W1S", "W1Z"), "W2": ("W2S", "W2Z"), "WU": ("WUS", "WUZ")}}
WEIGHT_INPUTS: dict[str, tuple[str, ...]] = {
    "SparseFFN": ("W1", "W2", "WU"),
    "FastFeedForward": ("W_in", "W_out"),
    "StructuredFFN": ("A1", "S1", "U1", "A2", "S2", "U2"),
    "RoutedFFN": ("W1", "W2"),  # the FFN's; its kernels read them as StructuredFFN A1, A2
}
