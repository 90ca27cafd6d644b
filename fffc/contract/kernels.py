"""What codegen builds: one ``KernelSpec`` class per kernel an op runs, each with its own
typed fields, and the builders that derive a planned site's specs (named by the registry
entries: ``fffc.contract.modes``, ``Mode.specs``).

Every spec also has a flat ``row`` — the kernel table's and the manifest's record (op,
activation, mode, widths, three flag columns, weight dtype, extra) — and a ``key``, the
content hash of that row: equal specs share kernels, and kernel symbols are named by the
key, so names are stable across runs. ``from_row`` reads a row back into its spec.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import ClassVar

from .kinds import SiteKind, SparseMode, WeightBits, WeightDtype
from .ops import (
    FAST_FEED_FORWARD,
    QUANT_INPUTS,
    ROUTED_FFN,
    ROUTERS,
    SELECTIONS,
    SPARSE_FFN,
    STRUCTURED_FFN,
    TIE_BREAKS,
    WEIGHT_INPUTS,
)

FLOAT32 = WeightDtype.FLOAT32.value


@dataclass(frozen=True)
class Row:
    """The flat record of a kernel spec: a kernel table entry's key columns, the manifest's
    ``spec``. ``has_b1``/``has_b2``/``gated`` are the table's three flag columns; what each
    means for an op is stated by that op's spec (its ``row``)."""

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
    dtype: str = FLOAT32
    extra: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        """Content hash of the row (the text is the repr of the record under the name
        ``KernelSpec``, which kernel symbols and manifests have always been keyed by)."""
        text = "KernelSpec(" + ", ".join(f"{f.name}={getattr(self, f.name)!r}"
                                         for f in fields(self)) + ")"
        return hashlib.sha256(text.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class KernelSpec:
    """Base of the per-op specs: everything codegen needs to build one kernel family."""

    op: ClassVar[str] = ""

    @property
    def row(self) -> Row:
        raise NotImplementedError

    @property
    def key(self) -> str:
        return self.row.key

    def arg_names(self) -> list[str]:
        """Kernel argument order: the inputs it reads in op input order, then its outputs."""
        raise NotImplementedError

    def weight_args(self) -> list[str]:
        """The kernel arguments stored at ``dtype`` (the others are float32 or int32)."""
        return [n for n in self.arg_names() if n in WEIGHT_INPUTS.get(self.op, ())]

    def stored_as(self, dtype: str) -> KernelSpec:
        """This spec with its weight matrices stored as ``dtype`` (a spec without weights is
        unchanged)."""
        return replace(self, dtype=str(dtype)) if self.weight_args() else self


@dataclass(frozen=True)
class SparseSpec(KernelSpec):
    """SparseFFN in one mode for one FFN shape: Y = act(X·W1 + B1) [⊙ up_act(X·WU)]·W2 + B2,
    neurons skipped as ``mode`` says."""

    op: ClassVar[str] = SPARSE_FFN.name
    activation: str
    up_activation: str  # gated FFNs: of the up projection ("none": linear)
    mode: SparseMode
    d_in: int
    d_ff: int
    d_out: int
    has_b1: bool
    has_b2: bool
    gated: bool  # has the up projection WU
    dtype: str = FLOAT32
    rank: int = 0  # mode predictor: the predictor's rank (PA's width)
    centers: str = ""  # mode teal: the centered inputs, "x" (XC) and/or "h" (HC)
    bits: int = 0  # 4, 8: int4 / int8 codes with scales per ``block`` codes (SPARSE_FFN's
    # bits, a WeightBits); 0: float
    block: int = 0
    zero_points: bool = False  # int4: the weights have zero points (else every one is 8)
    int8_x: bool = False  # int4: x rounded to int8 per block first (accuracy_level 4)
    act_quant: bool = False  # the AQ input: activations fake-quantized inside the FFN

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", SparseMode(self.mode))
        if self.bits not in tuple(WeightBits) or bool(self.bits) != bool(self.block):
            raise ValueError(f"SparseSpec: bits {self.bits} with block {self.block}: int4 "
                             "and int8 weights have both, float weights neither")
        object.__setattr__(self, "bits", WeightBits(self.bits))

    @property
    def row(self) -> Row:
        extra = ((("rank", str(self.rank)),) if self.mode is SparseMode.PREDICTOR
                 else (("centers", self.centers),) if self.centers else ())
        dtype = self.dtype
        if self.bits:
            dtype = f"int{self.bits}"
            extra += (("block", str(self.block)), ("zero_points", str(int(self.zero_points))),
                      *((("int8_x", "1"),) if self.int8_x else ()),
                      *((("act_quant", "1"),) if self.act_quant else ()))
        return Row(self.op, self.activation, self.up_activation, str(self.mode), self.d_in,
                   self.d_ff, self.d_out, self.has_b1, self.has_b2, self.gated, dtype, extra)

    def weight_args(self) -> list[str]:
        return [] if self.bits else super().weight_args()

    def arg_names(self) -> list[str]:
        if self.bits:  # each weight followed by its scales and zero points
            def weight(w: str) -> list[str]:
                scales, zeros = QUANT_INPUTS[self.op][w]
                return [w, scales, *([zeros] if self.zero_points else [])]

            names = ["X", *weight("W1"), *(["B1"] if self.has_b1 else []), *weight("W2"),
                     *(["B2"] if self.has_b2 else []), *(weight("WU") if self.gated else [])]
        else:
            names = ["X", "W1", *(["B1"] if self.has_b1 else []), "W2",
                     *(["B2"] if self.has_b2 else []), *(["WU"] if self.gated else [])]
        if self.mode in (SparseMode.TEAL, SparseMode.CATS):
            names.append("TH")
        if self.mode is SparseMode.PREDICTOR:
            names += ["PA", "PB", "PC"]
        return [*names, *(f"{p.upper()}C" for p in self.centers),
                *(["AQ"] if self.act_quant else []), "Y"]


def fff_table_mode(trees: int, depth: int, tie_break: str = "gt") -> str:
    """The kernel-table mode of a FastFeedForward: "<trees>x<depth>", "ge" appended for the
    ``>= 0`` tie-break (the shim builds the same string from the node's attributes)."""
    return f"{trees}x{depth}" + ("" if tie_break == "gt" else tie_break)


@dataclass(frozen=True)
class FffSpec(KernelSpec):
    """FastFeedForward: ``trees`` trees of depth ``depth`` (UltraFastBERT), nodes in heap
    order, exact GELU."""

    op: ClassVar[str] = FAST_FEED_FORWARD.name
    d_in: int
    d_out: int
    trees: int
    depth: int
    tie_break: str = "gt"  # right child on z > 0 ("gt") or on z >= 0 ("ge")
    dtype: str = FLOAT32

    def __post_init__(self) -> None:
        if self.tie_break not in TIE_BREAKS:
            raise ValueError(f"tie_break must be one of {TIE_BREAKS}, got {self.tie_break!r}")

    @property
    def nodes(self) -> int:
        """Nodes per tree."""
        return 2 ** (self.depth + 1) - 1

    @property
    def d_ff(self) -> int:
        """Rows of W_in and W_out: every node of every tree."""
        return self.trees * self.nodes

    @property
    def right_on_tie(self) -> bool:
        """Whether z == 0 sends a token to the right child."""
        return self.tie_break == "ge"

    @property
    def row(self) -> Row:
        # flags: B_in (always there), none, none
        return Row(self.op, "gelu", "none", fff_table_mode(self.trees, self.depth,
                                                           self.tie_break),
                   self.d_in, self.d_ff, self.d_out, True, False, False, self.dtype,
                   (("depth", str(self.depth)), ("tie_break", self.tie_break),
                    ("trees", str(self.trees))))

    def arg_names(self) -> list[str]:
        return ["X", "W_in", "B_in", "W_out", "Y"]


@dataclass(frozen=True)
class Projection:
    """One structured projection: a block-diagonal factor A of ``blocks`` blocks ending at
    ``width``, then BlockShuffle's second factor S where ``shuffle_blocks`` > 0 (that many
    blocks of ``shuffle_width`` outputs each, reading the strided inputs), then the dense
    factor U where ``dense``."""

    blocks: int
    width: int
    dense: bool
    shuffle_blocks: int = 0
    shuffle_width: int = 0

    def __post_init__(self) -> None:
        if self.shuffle_blocks < 0 or (self.shuffle_blocks and self.shuffle_width < 1):
            raise ValueError(f"StructuredFFN: bad BlockShuffle factor of {self.shuffle_blocks} "
                             f"blocks of {self.shuffle_width} outputs")

    @property
    def out_width(self) -> int:
        """The width before the dense factor (the projection's output width without U)."""
        return self.shuffle_blocks * self.shuffle_width if self.shuffle_blocks else self.width

    @property
    def tag(self) -> str:
        sh = f"s{self.shuffle_blocks}x{self.shuffle_width}" if self.shuffle_blocks else ""
        return f"b{self.blocks}r{self.width}{sh}{'u' if self.dense else ''}"


@dataclass(frozen=True)
class StructuredSpec(KernelSpec):
    """StructuredFFN for one shape: act(proj1(X) + B1), then proj2(·) + B2 (a projection
    of one block without U is a dense matrix: the merged path)."""

    op: ClassVar[str] = STRUCTURED_FFN.name
    activation: str
    d_in: int
    d_ff: int
    d_out: int
    first: Projection
    second: Projection
    has_b1: bool
    has_b2: bool
    dtype: str = FLOAT32

    def __post_init__(self) -> None:
        f, s = self.first, self.second
        for name, whole, k in (("d_in", self.d_in, f.blocks), ("r1", f.width, f.blocks),
                               ("d_ff", self.d_ff, s.blocks), ("r2", s.width, s.blocks),
                               ("r1", f.width, f.shuffle_blocks or 1),
                               ("r2", s.width, s.shuffle_blocks or 1)):
            if k < 1 or whole % k:
                raise ValueError(f"StructuredFFN: {name}={whole} is not a multiple of {k} "
                                 "blocks")
        if (not f.dense and f.out_width != self.d_ff) or \
                (not s.dense and s.out_width != self.d_out):
            raise ValueError("StructuredFFN: a projection without U must end at its output "
                             "width")

    @property
    def projections(self) -> tuple[Projection, Projection]:
        return self.first, self.second

    @property
    def row(self) -> Row:
        f, s = self.first, self.second
        shuffle = ((("m1", str(f.shuffle_blocks)), ("s1", str(f.shuffle_width)))
                   if f.shuffle_blocks else ()) + \
            ((("m2", str(s.shuffle_blocks)), ("s2", str(s.shuffle_width)))
             if s.shuffle_blocks else ())
        # flags: B1, B2, none
        return Row(self.op, self.activation, "none", f"{f.tag}_{s.tag}", self.d_in, self.d_ff,
                   self.d_out, self.has_b1, self.has_b2, False, self.dtype,
                   (("k1", str(f.blocks)), ("k2", str(s.blocks)), ("r1", str(f.width)),
                    ("r2", str(s.width)), ("u1", str(int(f.dense))),
                    ("u2", str(int(s.dense))), *shuffle))

    def arg_names(self) -> list[str]:
        f, s = self.first, self.second
        return ["X", "A1", *(["S1"] if f.shuffle_blocks else []), *(["U1"] if f.dense else []),
                *(["B1"] if self.has_b1 else []), "A2",
                *(["S2"] if s.shuffle_blocks else []), *(["U2"] if s.dense else []),
                *(["B2"] if self.has_b2 else []), "Y"]


def dense_structured(activation: str, d_in: int, d_ff: int, d_out: int, has_b1: bool,
                     has_b2: bool) -> StructuredSpec:
    """A dense FFN as a StructuredSpec: each projection one block, no U (a structured site's
    pre-merged path, and the FFN a RoutedFFN runs on its gathered rows)."""
    return StructuredSpec(activation, d_in, d_ff, d_out, Projection(1, d_ff, False),
                          Projection(1, d_out, False), has_b1, has_b2)


@dataclass(frozen=True)
class RouteSpec(KernelSpec):
    """RoutedFFN's routing kernel: scores X·WR (+ BR), the selection, the gather of the
    selected rows (the FFN then runs as a ``dense_structured`` spec, the combine last)."""

    op: ClassVar[str] = ROUTED_FFN.name
    d: int
    selection: str  # "topk" | "threshold"
    k: int | None  # topk: tokens per sequence, None: from the sequence length per call (KN);
    # threshold: 0
    router: str  # "raw" | "sigmoid": the weight of a selected token from its score
    router_bias: bool  # BR
    selection_score: bool = False  # threshold: a separate selection score X·WA
    selection_bias: bool = False  # BA
    ln_epsilon: float | None = None  # a pre-norm in the routed block (LS, LB): its epsilon,
    # kept to 6 significant digits (the precision of the row, which the kernels are keyed by)
    dtype: str = field(default=FLOAT32, init=False)

    def __post_init__(self) -> None:
        if self.selection not in SELECTIONS or self.router not in ROUTERS:
            raise ValueError(f"RoutedFFN: selection {self.selection!r} / router "
                             f"{self.router!r} unknown")
        if self.selection_score and self.selection != "threshold":
            raise ValueError("RoutedFFN: a separate selection score is for selection "
                             "threshold")
        if self.selection != "topk":
            object.__setattr__(self, "k", 0)
        if self.ln_epsilon is not None:
            object.__setattr__(self, "ln_epsilon", float(f"{self.ln_epsilon:g}"))

    @property
    def d_in(self) -> int:
        return self.d

    @property
    def d_out(self) -> int:
        return self.d

    @property
    def topk(self) -> bool:
        return self.selection == "topk"

    @property
    def per_call_k(self) -> bool:
        """k follows the sequence length: read per call from the int32 input KN."""
        return self.topk and self.k is None

    @property
    def row(self) -> Row:
        kk = ("var" if self.k is None else str(self.k)) if self.topk else "0"
        aux = ("_aux" + ("b" if self.selection_bias else "")) if self.selection_score else ""
        ln = f"_ln{self.ln_epsilon:g}" if self.ln_epsilon is not None else ""
        # flags: BR, BA, WA
        return Row(self.op, "none", "none", f"route_{self.selection}_k{kk}_{self.router}{aux}{ln}",
                   self.d, 0, self.d, self.router_bias, self.selection_bias,
                   self.selection_score, self.dtype,
                   (("k", kk), ("router", self.router), ("selection", self.selection),
                    *((("ln_epsilon", f"{self.ln_epsilon:g}"),)
                      if self.ln_epsilon is not None else ())))

    def arg_names(self) -> list[str]:
        return ["X", "WR", *(["BR"] if self.router_bias else []),
                *(["WA"] if self.selection_score else []),
                *(["BA"] if self.selection_bias else []),
                *(["LS", "LB"] if self.ln_epsilon is not None else []),
                *(["KN"] if self.per_call_k else []), "IDX", "WT", "CNT", "XS"]

    def weight_args(self) -> list[str]:
        return []


COMBINE = "combine"  # the combine kernel's row mode


@dataclass(frozen=True)
class CombineSpec(KernelSpec):
    """RoutedFFN's combine kernel: Y = X, then the selected rows from X and FFN(X)."""

    op: ClassVar[str] = ROUTED_FFN.name
    d: int
    dtype: str = field(default=FLOAT32, init=False)

    @property
    def d_in(self) -> int:
        return self.d

    @property
    def d_out(self) -> int:
        return self.d

    @property
    def row(self) -> Row:
        return Row(self.op, "none", "none", COMBINE, self.d, 0, self.d, False, False, False)

    def arg_names(self) -> list[str]:
        return ["X", "IDX", "WT", "D", "CNT", "COEF", "Y"]

    def weight_args(self) -> list[str]:
        return []


# -- rows read back (a manifest's kernel entries) -------------------------------------------


def _sparse_of(r: Row, extra: dict[str, str]) -> KernelSpec:
    int4 = {}
    if "block" in extra:  # int codes: the row's dtype names the bits, the activations float32
        int4 = {"bits": int(r.dtype.removeprefix("int")), "block": int(extra["block"]),
                "zero_points": extra["zero_points"] == "1", "int8_x": extra.get("int8_x") == "1",
                "act_quant": extra.get("act_quant") == "1"}
    return SparseSpec(r.activation, r.up_activation, SparseMode(r.mode), r.d_in, r.d_ff,
                      r.d_out, r.has_b1, r.has_b2, r.gated, FLOAT32 if int4 else r.dtype,
                      rank=int(extra.get("rank", 0)), centers=extra.get("centers", ""), **int4)


def _fff_of(r: Row, extra: dict[str, str]) -> KernelSpec:
    return FffSpec(r.d_in, r.d_out, int(extra["trees"]), int(extra["depth"]),
                   extra["tie_break"], r.dtype)


def _structured_of(r: Row, extra: dict[str, str]) -> KernelSpec:
    def projection(n: int) -> Projection:
        return Projection(int(extra[f"k{n}"]), int(extra[f"r{n}"]), extra[f"u{n}"] == "1",
                          int(extra.get(f"m{n}", 0)), int(extra.get(f"s{n}", 0)))

    return StructuredSpec(r.activation, r.d_in, r.d_ff, r.d_out, projection(1), projection(2),
                          r.has_b1, r.has_b2, r.dtype)


def _routed_of(r: Row, extra: dict[str, str]) -> KernelSpec:
    if r.mode == COMBINE:
        return CombineSpec(r.d_in)
    k = None if extra["k"] == "var" else int(extra["k"])
    eps = extra.get("ln_epsilon")
    return RouteSpec(r.d_in, extra["selection"], k, extra["router"], r.has_b1, r.gated,
                     r.has_b2, None if eps is None else float(eps))


_FROM_ROW: dict[str, Callable[[Row, dict[str, str]], KernelSpec]] = {
    SPARSE_FFN.name: _sparse_of, FAST_FEED_FORWARD.name: _fff_of,
    STRUCTURED_FFN.name: _structured_of, ROUTED_FFN.name: _routed_of,
}


def from_row(row: Row) -> KernelSpec:
    """The spec whose ``row`` is ``row`` (``from_row(s.row) == s``)."""
    return _FROM_ROW[row.op](row, dict(row.extra))


# -- the specs of a planned site, per decision (named by the registry's entries) ----------


def merged_spec(site) -> StructuredSpec:
    """A structured site's pre-merged dense path (and the dense FFN a RoutedFFN runs on its
    gathered tokens)."""
    return dense_structured(site.activation, site.d_model, site.d_ff, site.d_out,
                            site.has_b1, site.has_b2)


def sparse_specs(site, m) -> list[KernelSpec]:
    """SparseFFN's one kernel for mode entry ``m``: the predictor's rank and a centered teal
    site's centers are part of the spec (they change the kernel's inputs)."""
    predictor = m.sparse_mode is SparseMode.PREDICTOR
    q = site.int4
    int4 = ({"bits": q.bits, "block": q.block, "zero_points": q.zero_points, "int8_x": q.int8_x,
             "act_quant": bool(site.act_quant)} if q else {})
    return [SparseSpec(
        site.activation, site.up_activation, m.sparse_mode, site.d_model, site.d_ff,
        site.d_out,
        # a centered teal site's biases hold its centers' share
        site.has_b1 or "x" in site.centered, site.has_b2 or "h" in site.centered,
        site.kind is SiteKind.GATED, site.dtype,
        rank=site.predictor["rank"] if predictor else 0,
        centers="" if predictor else site.centered, **int4)]


def fff_specs(site, m) -> list[KernelSpec]:
    return [FffSpec(site.d_model, site.d_out, site.trees, site.depth, site.tie_break or "gt")]


def structured_specs(site, m) -> list[KernelSpec]:
    st = site.structure or {}

    def projection(n: int) -> Projection:
        return Projection(st[f"k{n}"], st[f"r{n}"], st[f"u{n}"], st.get(f"m{n}", 0),
                          st.get(f"s{n}", 0))

    return [StructuredSpec(site.activation, site.d_model, site.d_ff, site.d_out,
                           projection(1), projection(2), site.has_b1, site.has_b2)]


def routed_specs(site, m) -> list[KernelSpec]:
    """Routing, the dense FFN on the gathered tokens, the combine."""
    r = site.routing or {}
    return [RouteSpec(site.d_model, r.get("selection", "topk"),
                      None if r.get("capacity") else r["k"], r["router"],
                      r.get("router_bias", False), r.get("selection_score", False),
                      r.get("selection_bias", False), r.get("layer_norm_epsilon")),
            merged_spec(site), CombineSpec(site.d_model)]


def routed_counted(site, m) -> list[KernelSpec]:
    """The dense FFN a RoutedFFN runs on its gathered rows: on CUDA its kernels read the
    selected count on the device ("counted" variants)."""
    return [merged_spec(site)]
