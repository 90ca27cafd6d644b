"""Contracts of the ``ai.fffc`` operators: the one source of truth.

Passes emit nodes from these specs, verification and the NumPy reference read them,
codegen derives kernel signatures from them and packaging writes the C registration
table from them. Leaf module: standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    type: str  # "string" | "int" | "float"
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
SPARSE_MODES = ("exact", "teal", "cats", "predictor")

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
        "rows of W1, WU and W2 are computed; the others count as zero."
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
    ),
    outputs=(TensorArg("Y", "[..., d_out]"),),
    attributes=(
        Attribute("activation", "string", "relu", ACTIVATIONS, "activation of the first projection"),
        Attribute("up_activation", "string", "none", UP_ACTIVATIONS,
                  "gated FFNs: activation of the up projection (relu = dReLU)"),
        Attribute("mode", "string", "exact", SPARSE_MODES, "how neurons are skipped"),
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

OPS: dict[str, OpSpec] = {SPARSE_FFN.name: SPARSE_FFN, FAST_FEED_FORWARD.name: FAST_FEED_FORWARD}


def fff_mode(trees: int, depth: int, tie_break: str = "gt") -> str:
    """The kernel-table mode of a FastFeedForward: "<trees>x<depth>", "ge" appended for the
    ``>= 0`` tie-break (the shim builds the same string from the node's attributes)."""
    return f"{trees}x{depth}" + ("" if tie_break == "gt" else tie_break)


def fff_kernel_spec(d_in: int, d_out: int, trees: int, depth: int,
                    tie_break: str = "gt") -> KernelSpec:
    """The KernelSpec of a FastFeedForward shape; ``mode`` from ``fff_mode``."""
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"tie_break must be one of {TIE_BREAKS}, got {tie_break!r}")
    return KernelSpec(FAST_FEED_FORWARD.name, "gelu", "none", fff_mode(trees, depth, tie_break),
                      d_in, trees * (2 ** (depth + 1) - 1), d_out, True, False, False,
                      extra=(("depth", str(depth)), ("tie_break", tie_break),
                             ("trees", str(trees))))


@dataclass(frozen=True)
class KernelSpec:
    """Everything codegen needs to build one kernel family for one FFN shape.

    Sites with equal KernelSpecs share kernels. ``key`` is content-derived, so
    symbol names (and with them the artifact) are deterministic.
    """

    op: str
    activation: str
    up_activation: str
    mode: str
    d_in: int
    d_ff: int
    d_out: int
    has_b1: bool
    has_b2: bool
    gated: bool
    dtype: str = "float32"
    extra: tuple[tuple[str, str], ...] = field(default=())

    @property
    def key(self) -> str:
        import hashlib

        return hashlib.sha256(repr(self).encode()).hexdigest()[:10]

    def arg_names(self) -> list[str]:
        """Kernel argument order: present inputs in OpSpec order, then the output."""
        if self.op == FAST_FEED_FORWARD.name:
            return ["X", "W_in", "B_in", "W_out", "Y"]
        names = ["X", "W1"]
        if self.has_b1:
            names.append("B1")
        names.append("W2")
        if self.has_b2:
            names.append("B2")
        if self.gated:
            names.append("WU")
        if self.mode in ("teal", "cats"):
            names.append("TH")
        if self.mode == "predictor":
            names += ["PA", "PB", "PC"]
        return [*names, "Y"]

    @property
    def rank(self) -> int:
        """Mode predictor: the predictor's rank (in ``extra``)."""
        return int(dict(self.extra).get("rank", 0))
