"""What fffc found in a model: FFN sites and FFN-like regions it did not match."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .act_quant import At, FakeQuant
from .dispatch import TokenDispatch
from .int4 import Int4Weights, int4_weights
from .kinds import Decision, SiteKind, WeightDtype
from .modes import Param, mode
from .ops import describe_k
from .quant import QuantizedWeight

_TYPED = {"kind": SiteKind, "decision": Decision}


@dataclass(frozen=True)
class GateFlips:
    """Gate entries (token × neuron) of a quantized site's probes whose on/off decision
    differs between fffc's function and ONNX Runtime's own kernel: ``differ`` of ``of``."""

    differ: int
    of: int

    @property
    def rate(self) -> float:
        return self.differ / self.of if self.of else 0.0

    def to_json(self) -> dict:
        return {"differ": self.differ, "of": self.of, "rate": self.rate}


@dataclass
class Site:
    """One FFN matched by a rewrite rule and replaced by an ``ai.fffc`` node."""

    name: str  # the ai.fffc node's name (content-derived, stable across runs)
    rule: str  # the rule that matched it
    kind: SiteKind
    activation: str  # "relu" | "gelu" | "gelu_tanh" | "silu"
    up_activation: str  # gated only: "none" | "relu" (dReLU)
    d_model: int
    d_ff: int
    d_out: int
    has_b1: bool
    has_b2: bool
    dtype: str
    matched_nodes: list[str] = field(default_factory=list)
    trees: int = 0  # fff: K
    depth: int = 0  # fff: D (D+1 nodes visited per tree)
    tie_break: str = ""  # fff: "gt" (z > 0 goes right) | "ge" (z >= 0)
    routing: dict | None = None  # routed (MoD): selection, k, router, x_coef, delta_coef
    structure: dict | None = None  # structured: each projection's form, k1/r1/u1, k2/r2/u2,
    # params; after compile: merged_max_tokens and the crossover timings
    decision: Decision = Decision.PENDING  # set by the plan (fffc.contract.modes)
    thresholds: tuple[float, float] | None = None  # teal: (t_in, t_hidden), negative = off
    deviation: float | None = None  # teal/predictor: rel err of the site vs the original
    predictor: dict | None = None  # predictor: rank, recall/precision/selected (held out)
    predictor_arrays: tuple | None = field(default=None, repr=False, compare=False)  # A, B, C-cut
    centers: tuple | None = field(default=None, repr=False, compare=False)  # teal: c_in, c_hidden
    reason: str = ""  # why that decision
    dispatch: TokenDispatch | None = None  # after compile, a site with kernels (or left as
    # it was by its timings): which branch serves which token counts
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    # the quantized projections' formats by op input name (W1, WU, W2; an FFF's W_in,
    # W_out); the weights above are their dequantized float32 values
    weight_formats: dict[str, QuantizedWeight] = field(default_factory=dict)
    gate_flips: GateFlips | None = None  # quantized exact sites (``fffc.verify.decisions``)
    # static activation quantization inside the FFN (``fffc.contract.act_quant``): by place
    act_quant: dict[At, FakeQuant] = field(default_factory=dict)

    def __setattr__(self, name: str, value) -> None:
        """``kind`` and ``decision`` always hold their enums (a plain value is read as one)."""
        typed = _TYPED.get(name)
        super().__setattr__(name, typed(value) if typed else value)

    @property
    def centered(self) -> str:
        """Teal: which thresholds are centered ("x", "h", "xh"; "" for TEAL's zero center)."""
        if self.centers is None or Param.CENTERS not in mode(self.decision).params:
            return ""
        return "".join(p for p, c in zip("xh", self.centers, strict=True) if c is not None)

    @property
    def float32(self) -> bool:
        """Float32 weights (quantized ones read as their float32 values) and activations."""
        return self.dtype == str(WeightDtype.FLOAT32)

    @property
    def quantized(self) -> str:
        """The distinct weight formats of its quantized projections, in one phrase ("":
        float weights)."""
        return " / ".join(dict.fromkeys(q.describe() for q in self.weight_formats.values()))

    @property
    def int4(self) -> Int4Weights | str | None:
        """A quantized dense or gated site's int4 or int8 layout for SparseFFN (its ``bits``),
        or why it has none; None for float weights."""
        if not self.weight_formats:
            return None
        if self.kind not in (SiteKind.DENSE, SiteKind.GATED):
            return f"no int4 kernels for {self.kind} sites yet"
        names = ("W1", "W2", *(("WU",) if self.kind is SiteKind.GATED else ()))
        return int4_weights(self.weight_formats, names, self.d_model, self.d_ff, self.d_out,
                            static_activations=bool(self.act_quant))

    @property
    def bias(self) -> bool:
        return self.has_b1 or self.has_b2

    @property
    def family(self) -> str:
        """Human name: relu FFN, gelu FFN, SwiGLU, ReGLU, dReLU, ..."""
        return _FAMILY[self.kind](self)

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("predictor_arrays")
        d.pop("centers")
        d["dispatch"] = self.dispatch.to_json() if self.dispatch is not None else None
        d["family"] = self.family
        d["weight_formats"] = {n: q.to_json() for n, q in self.weight_formats.items()}
        d["gate_flips"] = self.gate_flips.to_json() if self.gate_flips is not None else None
        d["act_quant"] = {at.name.lower(): fq.row() for at, fq in self.act_quant.items()}
        if self.centered:
            d["centered"] = self.centered
        return d


def _gated_family(s: Site) -> str:
    if s.activation == "relu":
        return "dReLU" if s.up_activation == "relu" else "ReGLU"
    return {"silu": "SwiGLU", "gelu": "GeGLU", "gelu_tanh": "GeGLU(tanh)"}.get(
        s.activation, f"gated {s.activation}")


def _routed_family(s: Site) -> str:
    r = s.routing or {}
    how = (f"top-{describe_k(r['k'], r.get('capacity'))}" if r.get("selection") == "topk"
           else "causal")
    return f"MoD {how} {s.activation} FFN"


def _structured_family(s: Site) -> str:
    first, second = s.structure["first"], s.structure["second"]
    return f"{first} FFN" if first == second else f"{first}/{second} FFN"


_FAMILY = {
    SiteKind.DENSE: lambda s: f"{s.activation} FFN",
    SiteKind.GATED: _gated_family,
    SiteKind.FFF: lambda s: f"FFF {s.trees}x{s.depth}" + (" (z >= 0 right)"
                                                          if s.tie_break == "ge" else ""),
    SiteKind.STRUCTURED: _structured_family,
    SiteKind.ROUTED: _routed_family,
}


@dataclass
class NearMiss:
    """An FFN-like region (projection → activation → projection) that no rule matched."""

    nodes: list[str]
    reason: str

    def to_json(self) -> dict:
        return asdict(self)
