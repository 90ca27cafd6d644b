"""``ai.fffc::RoutedFFN`` (Mixture-of-Depths): the routing and the combine kernel (tirx).

One call of the op runs three kernels: **route** (this file) → a dense FFN kernel on the
gathered rows ``XS[:CNT]`` → **combine** (this file).

**route** (``X [B, S, d]`` → ``IDX, WT [B·S]``, ``CNT [1]``, ``XS [B·S, d]``), three
parallel regions (four for threshold):

1. scores ``s = X·WR (+ BR)``, parallel over chunks of ``CHUNK`` tokens of all ``B·S``
   (a single long sequence keeps every core busy; chunks, not tokens, because task-local
   buffers are allocated per parallel iteration): a 16-lane float32 dot product per
   token, folded pairwise. Every token is summed in the same order, so equal rows give
   exactly equal scores (ties stay ties). topk also stores an order-preserving int32 key
   of the score (``-0.0`` mapped to ``+0.0`` as the float comparison has them equal).
2. selection, parallel over sequences (O(S) serial work each, small next to the scores).
   topk: the exact key ``v`` of the k-th largest score by a 4-pass radix select (8 bits
   per pass, a 256-bin histogram of the tokens that match the bits found so far: O(S), no
   sort), which also yields ``e`` = how many of the tokens with key ``v`` are among the k.
   One ascending pass then takes ``key > v`` and the first ``e`` tokens with ``key == v``:
   exactly rank(t) < k with ONNX TopK's lower-index tie rule. Sequence b's tokens go to
   rows ``b·k ..`` (S < k, which the shim rules out, gives ``CNT = 0`` rather than writes
   out of bounds). threshold (``s > 0``): a counting pass per sequence, a serial exclusive
   prefix sum over sequences, then the ascending writes. ``CNT[0]`` = the number selected
   (``B·k`` for topk).
3. gather ``XS[i, :] = X[IDX[i], :]``, parallel over the selected rows.

**combine** (``Y [N, d]``): ``Y = X`` (parallel over rows), then for ``i < CNT[0]``
(parallel): ``Y[IDX[i]] = (xa + xb·WT[i])·X[IDX[i]] + (da + db·WT[i])·D[i]`` with
``COEF = [xa, xb, da, db]``. Rows are vectorized in 16-lane pieces plus a tail. Scalars
are never let-bound in loops (tirx turns a binding into a buffer allocated per parallel
iteration); the loop-invariant loads are left to LLVM to hoist.
"""

from __future__ import annotations

from fffc.errors import CodegenError
from fffc.ops import ROUTED_FFN, KernelSpec

from ..schedules import MAX_TOKENS
from .text import indent, parse, vector_loop

VL = 16  # lanes of the score dot product and of the row loops
CHUNK = 32  # tokens per task of the score loop (task-local buffers are heap workspace)


def routed_variants(spec: KernelSpec) -> list[tuple[str, int, int]]:
    """(variant, min_tokens, max_tokens inclusive): one variant for every token count."""
    check_spec(spec)
    return [("all", 1, MAX_TOKENS)]


def _route_params(spec: KernelSpec) -> tuple[int | None, str, str]:
    """(k, router, selection) of a route spec, validated; k None: read from KN per call."""
    extra = dict(spec.extra)
    k: int | None = None
    if extra.get("k") != "var":
        try:
            k = int(extra.get("k", "0"))
        except ValueError as e:
            raise CodegenError(f"RoutedFFN route: bad k {extra.get('k')!r}") from e
    router, selection = extra.get("router", "raw"), extra.get("selection", "topk")
    if router not in ("raw", "sigmoid"):
        raise CodegenError(f"RoutedFFN route: router {router!r} unknown")
    if selection not in ("topk", "threshold"):
        raise CodegenError(f"RoutedFFN route: selection {selection!r} unknown")
    if selection == "topk" and k is not None and k < 1:
        raise CodegenError(f"RoutedFFN route: topk needs k >= 1, got {k}")
    if selection == "threshold" and k is None:
        raise CodegenError("RoutedFFN route: a per-call k is for selection topk")
    if spec.gated and selection != "threshold":
        raise CodegenError("RoutedFFN route: a selection score (WA) needs selection threshold")
    return k, router, selection


def is_route(spec: KernelSpec) -> bool:
    """A routing spec (``mode`` "route…", the selection and router in ``extra``)."""
    return spec.mode.startswith("route")


def check_spec(spec: KernelSpec) -> None:
    """Raise CodegenError for specs these kernels cannot compute."""
    if spec.op != ROUTED_FFN.name:
        raise CodegenError(f"not a RoutedFFN spec: {spec.op!r}")
    if not is_route(spec) and spec.mode != "combine":
        raise CodegenError(f"RoutedFFN mode {spec.mode!r}: only 'route…' and 'combine'")
    if spec.dtype != "float32":
        raise CodegenError(f"RoutedFFN kernels are float32 only, got {spec.dtype!r}")
    if spec.d_in < 1:
        raise CodegenError(f"RoutedFFN: d must be positive, got {spec.d_in}")
    if is_route(spec):
        _route_params(spec)


_ROUTE_HEAD = """
@T.prim_func
def kernel({params}):
    T.func_attr({{"global_symbol": "{symbol}", "tirx.noalias": True}})
    B = T.int32()
    S = T.int32()
    X = T.match_buffer(x, (B, S, {D}), "float32", align=4)
    IDX = T.match_buffer(idx, (B * S,), "int32", align=4)
    WT = T.match_buffer(wt, (B * S,), "float32", align=4)
    XS = T.match_buffer(xs, (B * S, {D}), "float32", align=4)
    SC = T.alloc_buffer((B * S,), "float32")
"""

# Phase 1: one score per token (all tokens of all sequences in one parallel loop).
_SCORES = """
for c in T.parallel((B * S + {CH} - 1) // {CH}):
    acc = T.alloc_buffer(({VL},), "float32", scope="local")
    for pp in range(T.min({CH}, B * S - c * {CH})):
        for v in T.vectorized({VL}):
            acc[v] = T.float32(0)
{body}
        SC[c * {CH} + pp] = acc[0]{bias}
{key}
{aux}
"""
# Selection threshold with a separate selection score (MoD's causal auxiliary predictor):
# a second dot product per token, into SA.
_AUX = """
for v in T.vectorized({VL}):
    acc[v] = T.float32(0)
{body}
SA[c * {CH} + pp] = acc[0]{bias}
"""
_DOT_MAIN = """
for kb in range({NKB}):
    for v in T.vectorized({VL}):
        acc[v] = acc[v] + X[(c * {CH} + pp) // S, (c * {CH} + pp) % S, kb * {VL} + v] * WR[kb * {VL} + v]
"""
_DOT_TAIL = """
for v in range({TAIL}):
    acc[v] = acc[v] + X[(c * {CH} + pp) // S, (c * {CH} + pp) % S, {T0} + v] * WR[{T0} + v]
"""
_FOLD = """
for v in T.vectorized({half}):
    acc[v] = acc[v] + acc[v + {half}]
"""
# Order-preserving int32 key of a float (not NaN): negative floats get their magnitude bits
# flipped; -0.0 becomes the key of +0.0.
_KEY = """
KEY[c * {CH} + pp] = T.if_then_else(SC[c * {CH} + pp] == T.float32(0), 0, T.if_then_else(T.reinterpret("int32", SC[c * {CH} + pp]) < 0, T.bitwise_xor(T.reinterpret("int32", SC[c * {CH} + pp]), 2147483647), T.reinterpret("int32", SC[c * {CH} + pp])))
"""

# One radix-select pass over sequence b: histogram of digit `digit` among the tokens whose
# higher bits match st[1], then the bin holding the st[0]-th largest (counted from the top).
_RADIX_PASS = """
for c in range(256):
    hist[c] = 0
for t in range(S):
{match}
st[2] = 0
st[3] = -1
for c in range(256):
    if st[3] < 0:
        if st[2] + hist[255 - c] >= st[0]:
            st[3] = 255 - c
            st[0] = st[0] - st[2]
        else:
            st[2] = st[2] + hist[255 - c]
st[1] = {update}
"""

# st: [0] rank still needed inside the matched set (in the end: how many of the tokens with
# key == v are taken), [1] the key bits found so far (in the end: v), [2]/[3] scan scratch,
# n[0] rows written, n[1] tokens with key == v taken.
_TOPK_SELECT = """
for b in T.parallel(B):
    hist = T.alloc_buffer((256,), "int32", scope="local")
    st = T.alloc_buffer((4,), "int32", scope="local")
    n = T.alloc_buffer((2,), "int32", scope="local")
    sel = T.alloc_buffer((1,), "int32", scope="local")
    st[0] = {K}
    st[1] = 0
{passes}
    n[0] = 0
    n[1] = 0
    for t in range(S):
        if n[0] < {K}:
            sel[0] = 0
            if KEY[b * S + t] > st[1]:
                sel[0] = 1
            else:
                if KEY[b * S + t] == st[1]:
                    if n[1] < st[0]:
                        sel[0] = 1
                        n[1] = n[1] + 1
            if sel[0] != 0:
                IDX[b * {K} + n[0]] = b * S + t
                WT[b * {K} + n[0]] = {weight}
                n[0] = n[0] + 1
CNT[0] = B * {K}
"""

_THRESHOLD_SELECT = """
OFF = T.alloc_buffer((B,), "int32")
for b in T.parallel(B):
    n = T.alloc_buffer((1,), "int32", scope="local")
    n[0] = 0
    for t in range(S):
        if {SEL}[b * S + t] > T.float32(0):
            n[0] = n[0] + 1
    OFF[b] = n[0]
tot = T.alloc_buffer((2,), "int32", scope="local")
tot[0] = 0
for b in range(B):
    tot[1] = OFF[b]
    OFF[b] = tot[0]
    tot[0] = tot[0] + tot[1]
CNT[0] = tot[0]
for b in T.parallel(B):
    n = T.alloc_buffer((1,), "int32", scope="local")
    n[0] = OFF[b]
    for t in range(S):
        if {SEL}[b * S + t] > T.float32(0):
            IDX[n[0]] = b * S + t
            WT[n[0]] = {weight}
            n[0] = n[0] + 1
"""

_GATHER = """
for i in T.parallel({count}):
{row}
"""

# Pre-norm inside the routed block: the gathered rows are LayerNorm(X) (mean and variance
# over the row, then LS·(x − mean)/sqrt(var + eps) + LB); the combine reads X itself.
_GATHER_LN = """
for i in T.parallel({count}):
    st = T.alloc_buffer((2,), "float32", scope="local")
    st[0] = T.float32(0)
    for j in range({D}):
        st[0] = st[0] + X[IDX[i] // S, IDX[i] % S, j]
    st[0] = st[0] / T.float32({D})
    st[1] = T.float32(0)
    for j in range({D}):
        st[1] = st[1] + (X[IDX[i] // S, IDX[i] % S, j] - st[0]) * (X[IDX[i] // S, IDX[i] % S, j] - st[0])
    st[1] = T.float32(1) / T.sqrt(st[1] / T.float32({D}) + T.float32({EPS}))
{row}
"""


def _route_body(spec: KernelSpec) -> str:
    d = spec.d_in
    k, router, selection = _route_params(spec)
    def dot(w: str) -> str:
        parts = []
        if d >= VL:
            parts.append(_DOT_MAIN.format(NKB=d // VL, VL=VL, CH=CHUNK).replace("WR[", w + "["))
        if d % VL:
            parts.append(_DOT_TAIL.format(TAIL=d % VL, T0=d // VL * VL, CH=CHUNK)
                         .replace("WR[", w + "["))
        half = VL // 2
        while half >= 1:
            parts.append(_FOLD.format(half=half))
            half //= 2
        return "\n".join(parts)

    topk = selection == "topk"
    aux = _AUX.format(VL=VL, CH=CHUNK, body=dot("WA"),
                      bias=" + BA[0]" if spec.has_b2 else "") if spec.gated else ""
    scores = _SCORES.format(VL=VL, CH=CHUNK, body=indent(dot("WR"), 8),
                            bias=" + BR[0]" if spec.has_b1 else "",
                            key=indent(_KEY.format(CH=CHUNK), 8) if topk else "",
                            aux=indent(aux, 8))
    lines = ['KEY = T.alloc_buffer((B * S,), "int32")'] if topk else []
    if spec.gated:
        lines.append('SA = T.alloc_buffer((B * S,), "float32")')
    lines.append(scores)
    weight = ("SC[b * S + t]" if router == "raw" else
              "T.float32(1) / (T.float32(1) + T.exp(T.float32(0) - SC[b * S + t]))")
    eps = dict(spec.extra).get("ln_epsilon")
    stmt = ("XS[i, {j}] = X[IDX[i] // S, IDX[i] % S, {j}]" if eps is None else
            "XS[i, {j}] = (X[IDX[i] // S, IDX[i] % S, {j}] - st[0]) * st[1] * LS[{j}] + LB[{j}]")
    row = vector_loop("j", d, stmt, VL)

    def gather(count: str) -> str:
        if eps is None:
            return _GATHER.format(count=count, row=indent(row, 4))
        return _GATHER_LN.format(count=count, row=indent(row, 4), D=d, EPS=repr(float(eps)))

    if topk:
        passes = []
        for p in range(4):
            dig_shift = 24 - 8 * p
            digit = ("T.shift_right(KEY[b * S + t], 24) + 128" if p == 0 else
                     f"T.bitwise_and(T.shift_right(KEY[b * S + t], {dig_shift}), 255)" if dig_shift else
                     "T.bitwise_and(KEY[b * S + t], 255)")
            inc = f"hist[{digit}] = hist[{digit}] + 1"
            match = (inc if p == 0 else
                     f"if T.shift_right(KEY[b * S + t], {32 - 8 * p}) == st[1]:\n    {inc}")
            update = "st[3] - 128" if p == 0 else "st[1] * 256 + st[3]"
            passes.append(_RADIX_PASS.format(match=indent(match, 4), update=update))
        kv = "KN[0]" if k is None else str(k)
        select = _TOPK_SELECT.format(K=kv, weight=weight, passes=indent("\n".join(passes), 4))
        gather = gather(f"B * {kv}")
        # S < k breaks the shim's contract (k < 1 selects nothing): no rows rather than
        # writes out of bounds
        lines.append(f"if S >= {kv} and {kv} >= 1:\n{indent(select, 4)}\n{indent(gather, 4)}\n"
                     "else:\n    CNT[0] = 0")
    else:
        lines.append(_THRESHOLD_SELECT.format(weight=weight, SEL="SA" if spec.gated else "SC"))
        lines.append(gather("CNT[0]"))
    return "\n".join(indent(part, 4) for part in lines)


def route_source(spec: KernelSpec, symbol: str) -> str:
    """TVMScript of the routing kernel of a ``route`` spec (kept as text: readable)."""
    check_spec(spec)
    if not is_route(spec):
        raise CodegenError(f"route_source needs a 'route…' spec, got mode {spec.mode!r}")
    d = spec.d_in
    shapes = {"X": "x: T.handle", "WR": f'WR: T.Buffer(({d},), "float32", align=4)',
              "BR": 'BR: T.Buffer((1,), "float32", align=4)',
              "WA": f'WA: T.Buffer(({d},), "float32", align=4)',
              "BA": 'BA: T.Buffer((1,), "float32", align=4)',
              "LS": f'LS: T.Buffer(({d},), "float32", align=4)',
              "LB": f'LB: T.Buffer(({d},), "float32", align=4)', "IDX": "idx: T.handle",
              "WT": "wt: T.handle", "CNT": 'CNT: T.Buffer((1,), "int32", align=4)',
              "XS": "xs: T.handle", "KN": 'KN: T.Buffer((1,), "int32", align=4)'}
    params = ", ".join(shapes[a] for a in spec.arg_names())
    head = _ROUTE_HEAD.format(params=params, symbol=symbol, D=d)
    return head + _route_body(spec) + "\n"


_COMBINE = """
@T.prim_func
def kernel({params}):
    T.func_attr({{"global_symbol": "{symbol}", "tirx.noalias": True}})
    N = T.int32()
    X = T.match_buffer(x, (N, {D}), "float32", align=4)
    IDX = T.match_buffer(idx, (N,), "int32", align=4)
    WT = T.match_buffer(wt, (N,), "float32", align=4)
    DL = T.match_buffer(dl, (N, {D}), "float32", align=4)
    Y = T.match_buffer(y, (N, {D}), "float32", align=4)
    for n in T.parallel(N):
{copy}
    for i in T.parallel(CNT[0]):
{mix}
"""


def combine_source(spec: KernelSpec, symbol: str) -> str:
    """TVMScript of the combine kernel of a ``combine`` spec."""
    check_spec(spec)
    if spec.mode != "combine":
        raise CodegenError(f"combine_source needs a 'combine' spec, got mode {spec.mode!r}")
    d = spec.d_in
    shapes = {"X": "x: T.handle", "IDX": "idx: T.handle", "WT": "wt: T.handle",
              "D": "dl: T.handle", "CNT": 'CNT: T.Buffer((1,), "int32", align=4)',
              "COEF": 'COEF: T.Buffer((4,), "float32", align=4)', "Y": "y: T.handle"}
    params = ", ".join(shapes[a] for a in spec.arg_names())
    copy = indent(vector_loop("j", d, "Y[n, {j}] = X[n, {j}]", VL), 8)
    mix = indent(vector_loop("j", d, "Y[IDX[i], {j}] = (COEF[0] + COEF[1] * WT[i]) * X[IDX[i], {j}] + (COEF[2] + COEF[3] * WT[i]) * DL[i, {j}]", VL), 8)
    return _COMBINE.format(params=params, symbol=symbol, D=d, copy=copy, mix=mix)


def route_primfunc(spec: KernelSpec, symbol: str):
    """The routing PrimFunc; arguments in ``spec.arg_names()`` order."""
    return parse(route_source(spec, symbol), symbol)


def combine_primfunc(spec: KernelSpec, symbol: str):
    """The combine PrimFunc; arguments in ``spec.arg_names()`` order."""
    return parse(combine_source(spec, symbol), symbol)
