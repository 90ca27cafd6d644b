"""What fffc found in a model: FFN sites and FFN-like regions it did not match. Leaf module."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .ops import describe_k


@dataclass
class Site:
    """One FFN matched by a rewrite rule and replaced by an ``ai.fffc`` node."""

    name: str  # the ai.fffc node's name (content-derived, stable across runs)
    rule: str  # the rule that matched it
    kind: str  # "dense" | "gated" | "fff" | "structured" | "routed"
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
    decision: str = "pending"  # "exact" | "teal" | "tree" (fff) | "walk" (fff) |
    # "structured" | "dense"
    thresholds: tuple[float, float] | None = None  # teal: (t_in, t_hidden), negative = off
    deviation: float | None = None  # teal/predictor: rel err of the site vs the original
    predictor: dict | None = None  # predictor: rank, recall/precision/selected (held out)
    predictor_arrays: tuple | None = field(default=None, repr=False, compare=False)  # A, B, C-cut
    centers: tuple | None = field(default=None, repr=False, compare=False)  # teal: c_in, c_hidden
    reason: str = ""  # why that decision
    max_abs_err: float | None = None
    max_rel_err: float | None = None

    @property
    def centered(self) -> str:
        """Teal: which thresholds are centered ("x", "h", "xh"; "" for TEAL's zero center)."""
        if self.decision != "teal" or self.centers is None:
            return ""
        return "".join(p for p, c in zip("xh", self.centers, strict=True) if c is not None)

    @property
    def bias(self) -> bool:
        return self.has_b1 or self.has_b2

    @property
    def family(self) -> str:
        """Human name: relu FFN, gelu FFN, SwiGLU, ReGLU, dReLU, ..."""
        if self.kind == "dense":
            return f"{self.activation} FFN"
        if self.kind == "routed" and self.routing:
            how = (f"top-{describe_k(self.routing['k'], self.routing.get('capacity'))}"
                   if self.routing["selection"] == "topk"
                   else "causal")
            return f"MoD {how} {self.activation} FFN"
        if self.kind == "structured" and self.structure:
            first, second = self.structure["first"], self.structure["second"]
            return f"{first} FFN" if first == second else f"{first}/{second} FFN"
        if self.kind == "fff":
            return f"FFF {self.trees}x{self.depth}" + (" (z >= 0 right)" if self.tie_break == "ge"
                                                         else "")
        if self.activation == "relu":
            return "dReLU" if self.up_activation == "relu" else "ReGLU"
        return {"silu": "SwiGLU", "gelu": "GeGLU", "gelu_tanh": "GeGLU(tanh)"}.get(
            self.activation, f"gated {self.activation}"
        )

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("predictor_arrays")
        d.pop("centers")
        d["family"] = self.family
        if self.centered:
            d["centered"] = self.centered
        return d


@dataclass
class NearMiss:
    """An FFN-like region (projection → activation → projection) that no rule matched."""

    nodes: list[str]
    reason: str

    def to_json(self) -> dict:
        return asdict(self)
