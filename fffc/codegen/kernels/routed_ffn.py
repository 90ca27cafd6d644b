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

# No ``from __future__ import annotations``: the kernels' parameter annotations use shapes
# from the enclosing function, which TVMScript can only see as evaluated annotations.

from fffc.contract.errors import CodegenError
from fffc.contract.kernels import CombineSpec, RouteSpec

from .._tvm import T, macro
from ..limits import MAX_TOKENS

VL = 16  # lanes of the score dot product and of the row loops
CHUNK = 32  # tokens per task of the score loop (task-local buffers are heap workspace)
KEY_BITS, DIGIT_BITS = 32, 8  # the radix select: int32 keys, 8-bit digits (4 passes)
# the route inputs a spec may lack (the kernel declares all, in spec.arg_names() order)
_ROUTE_OPTIONAL = ("BR", "WA", "BA", "LS", "LB", "KN")


def routed_variants(spec: RouteSpec | CombineSpec) -> list[tuple[str, int, int]]:
    """(variant, min_tokens, max_tokens inclusive): one variant for every token count."""
    check_spec(spec)
    return [("all", 1, MAX_TOKENS)]


def check_spec(spec: RouteSpec | CombineSpec) -> None:
    """Raise CodegenError for specs these kernels cannot compute."""
    if not isinstance(spec, RouteSpec | CombineSpec):
        raise CodegenError(f"not a RoutedFFN route or combine spec: {spec}")
    if spec.d < 1:
        raise CodegenError(f"RoutedFFN: d must be positive, got {spec.d}")
    if isinstance(spec, RouteSpec) and spec.topk and spec.k is not None and spec.k < 1:
        raise CodegenError(f"RoutedFFN route: topk needs k >= 1, got {spec.k}")


# Shared pieces: macros (a macro sees the module names defined above it) and Python helpers
# that unroll them.


def router_weight(score, sigmoid: bool):
    """A selected token's weight WT: its score (router raw) or sigmoid(score)."""
    if sigmoid:
        return T.float32(1) / (T.float32(1) + T.exp(T.float32(0) - score))
    return score


@macro
def vector_loop(n, stmt, *args):
    """``stmt(*args, j)`` for j in 0..n-1: VL-lane vector steps, then a narrower tail (no
    n-lane LLVM vectors)."""
    if n >= VL:
        for jo in range(n // VL):
            for ji in T.vectorized(VL):
                stmt(*args, jo * VL + ji)
    if n % VL > 0:
        for ji in T.vectorized(n % VL):
            stmt(*args, n // VL * VL + ji)


@macro
def _fold_step(acc, half):
    for v in T.vectorized(half):
        acc[v] = acc[v] + acc[v + half]


def fold(acc):
    """acc[0] = the sum of the VL lanes, folded pairwise (the same order for every token)."""
    half = VL // 2
    while half >= 1:
        _fold_step(acc, half)
        half //= 2


@macro
def dot(acc, X, W, t, S, d):
    """acc[0] = X[token t]·W (t = b·S + s), as VL lane sums folded pairwise."""
    for v in T.vectorized(VL):
        acc[v] = T.float32(0)
    if d >= VL:
        for kb in range(d // VL):
            for v in T.vectorized(VL):
                acc[v] = acc[v] + X[t // S, t % S, kb * VL + v] * W[kb * VL + v]
    if d % VL > 0:
        for v in range(d % VL):
            acc[v] = acc[v] + X[t // S, t % S, d // VL * VL + v] * W[d // VL * VL + v]
    fold(acc)


def _digit(key, p: int):
    """Digit p (0: the top one) of an order-preserving key, as a histogram bin: the top
    digit's sign bit is flipped so that bins ascend with the keys."""
    shift = KEY_BITS - DIGIT_BITS * (p + 1)
    if p == 0:
        return T.shift_right(key, shift) + 128
    if shift:
        return T.bitwise_and(T.shift_right(key, shift), 255)
    return T.bitwise_and(key, 255)


@macro
def _radix_pass(KEY, row, S, hist, st, p):
    """One radix-select pass over the sequence at ``row``: the histogram of digit p among the
    tokens whose higher digits match st[1], then the bin holding the st[0]-th largest
    (counted from the top); st[1] gains that digit."""
    for c in range(256):
        hist[c] = 0
    for t in range(S):
        digit = T.meta_var(_digit(KEY[row + t], p))
        if p == 0:  # no higher digits to match
            hist[digit] = hist[digit] + 1
        else:
            if T.shift_right(KEY[row + t], KEY_BITS - DIGIT_BITS * p) == st[1]:
                hist[digit] = hist[digit] + 1
    st[2] = 0
    st[3] = -1
    for c in range(256):
        if st[3] < 0:
            if st[2] + hist[255 - c] >= st[0]:
                st[3] = 255 - c
                st[0] = st[0] - st[2]
            else:
                st[2] = st[2] + hist[255 - c]
    if p == 0:
        st[1] = st[3] - 128
    else:
        st[1] = st[1] * 256 + st[3]


def radix_select(KEY, row, S, hist, st):
    """st[1] = the key of the st[0]-th largest of the sequence at ``row``, st[0] = how many
    of the tokens with that key are among the st[0] largest."""
    for p in range(KEY_BITS // DIGIT_BITS):
        _radix_pass(KEY, row, S, hist, st, p)


@macro
def _copied_row(XS, X, IDX, S, i, j):
    XS[i, j] = X[IDX[i] // S, IDX[i] % S, j]


@macro
def _normed_row(XS, X, IDX, S, LS, LB, st, i, j):
    XS[i, j] = (X[IDX[i] // S, IDX[i] % S, j] - st[0]) * st[1] * LS[j] + LB[j]


@macro
def gather(XS, X, IDX, S, count, d, LS, LB, eps):
    """XS[i] = X[IDX[i]] for i < count, or with LS/LB (``eps`` not None) LayerNorm(X[IDX[i]])
    (the combine reads X itself)."""
    for i in T.parallel(count):
        if eps is None:
            vector_loop(d, _copied_row, XS, X, IDX, S, i)
        else:
            st = T.alloc_buffer((2,), "float32", scope="local")
            st[0] = T.float32(0)
            for j in range(d):
                st[0] = st[0] + X[IDX[i] // S, IDX[i] % S, j]
            st[0] = st[0] / T.float32(d)
            st[1] = T.float32(0)
            for j in range(d):
                st[1] = st[1] + (X[IDX[i] // S, IDX[i] % S, j] - st[0]) * (
                    X[IDX[i] // S, IDX[i] % S, j] - st[0])
            st[1] = T.float32(1) / T.sqrt(st[1] / T.float32(d) + T.float32(eps))
            vector_loop(d, _normed_row, XS, X, IDX, S, LS, LB, st, i)


def route_primfunc(spec: RouteSpec, symbol: str):
    """The routing PrimFunc; arguments in ``spec.arg_names()`` order."""
    check_spec(spec)
    if not isinstance(spec, RouteSpec):
        raise CodegenError(f"route_primfunc needs a route spec, got {spec}")
    d, k, eps = spec.d, spec.k, spec.ln_epsilon
    topk, sigmoid = spec.topk, spec.router == "sigmoid"
    has_br, aux, has_ba = spec.router_bias, spec.selection_score, spec.selection_bias

    @T.jit
    def kernel(x: T.handle, WR: T.Buffer((d,), "float32", align=4),
               BR: T.Optional(T.Buffer((1,), "float32", align=4)),
               WA: T.Optional(T.Buffer((d,), "float32", align=4)),
               BA: T.Optional(T.Buffer((1,), "float32", align=4)),
               LS: T.Optional(T.Buffer((d,), "float32", align=4)),
               LB: T.Optional(T.Buffer((d,), "float32", align=4)),
               KN: T.Optional(T.Buffer((1,), "int32", align=4)),
               idx: T.handle, wt: T.handle, CNT: T.Buffer((1,), "int32", align=4),
               xs: T.handle):
        T.func_attr({"global_symbol": symbol, "tirx.noalias": True})
        B = T.int32()
        S = T.int32()
        X = T.match_buffer(x, (B, S, d), "float32", align=4)
        IDX = T.match_buffer(idx, (B * S,), "int32", align=4)
        WT = T.match_buffer(wt, (B * S,), "float32", align=4)
        XS = T.match_buffer(xs, (B * S, d), "float32", align=4)
        SC = T.alloc_buffer((B * S,), "float32")
        if topk:
            KEY = T.alloc_buffer((B * S,), "int32")
        if aux:
            SA = T.alloc_buffer((B * S,), "float32")
        # scores: all tokens of all sequences in one parallel loop, CHUNK tokens per task
        for c in T.parallel((B * S + CHUNK - 1) // CHUNK):
            acc = T.alloc_buffer((VL,), "float32", scope="local")
            for pp in range(T.min(CHUNK, B * S - c * CHUNK)):
                t = T.meta_var(c * CHUNK + pp)  # substituted, not let-bound
                dot(acc, X, WR, t, S, d)
                if has_br:
                    SC[t] = acc[0] + BR[0]
                else:
                    SC[t] = acc[0]
                if topk:
                    # order-preserving int32 key of a float (not NaN): negative floats get
                    # their magnitude bits flipped; -0.0 becomes the key of +0.0
                    KEY[t] = T.if_then_else(SC[t] == T.float32(0), 0, T.if_then_else(
                        T.reinterpret("int32", SC[t]) < 0,
                        T.bitwise_xor(T.reinterpret("int32", SC[t]), 2147483647),
                        T.reinterpret("int32", SC[t])))
                if aux:
                    dot(acc, X, WA, t, S, d)
                    if has_ba:
                        SA[t] = acc[0] + BA[0]
                    else:
                        SA[t] = acc[0]
        if topk:
            kv = T.meta_var(KN[0] if k is None else k)
            # S < k breaks the shim's contract (k < 1 selects nothing): no rows rather than
            # writes out of bounds
            if S >= kv and kv >= 1:  # noqa: SIM300 (TIR: S >= k)
                # st: [0] rank still needed inside the matched set (in the end: how many of
                # the tokens with key == v are taken), [1] the key bits found so far (in the
                # end: v), [2]/[3] scan scratch; n[0] rows written, n[1] tokens with
                # key == v taken
                for b in T.parallel(B):
                    hist = T.alloc_buffer((256,), "int32", scope="local")
                    st = T.alloc_buffer((4,), "int32", scope="local")
                    n = T.alloc_buffer((2,), "int32", scope="local")
                    sel = T.alloc_buffer((1,), "int32", scope="local")
                    st[0] = kv
                    st[1] = 0
                    radix_select(KEY, b * S, S, hist, st)
                    n[0] = 0
                    n[1] = 0
                    for t in range(S):
                        if n[0] < kv:
                            sel[0] = 0
                            if KEY[b * S + t] > st[1]:
                                sel[0] = 1
                            elif KEY[b * S + t] == st[1]:  # noqa: SIM102 (TIR: nested ifs)
                                if n[1] < st[0]:
                                    sel[0] = 1
                                    n[1] = n[1] + 1
                            if sel[0] != 0:
                                IDX[b * kv + n[0]] = b * S + t
                                WT[b * kv + n[0]] = router_weight(SC[b * S + t], sigmoid)
                                n[0] = n[0] + 1
                CNT[0] = B * kv
                gather(XS, X, IDX, S, B * kv, d, LS, LB, eps)
            else:
                CNT[0] = 0
        else:
            # threshold (selection score > 0): a count per sequence, the exclusive prefix
            # sum over sequences, then the ascending writes
            SEL = T.meta_var(SA if aux else SC)
            OFF = T.alloc_buffer((B,), "int32")
            for b in T.parallel(B):
                n = T.alloc_buffer((1,), "int32", scope="local")
                n[0] = 0
                for t in range(S):
                    if SEL[b * S + t] > T.float32(0):
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
                    if SEL[b * S + t] > T.float32(0):
                        IDX[n[0]] = b * S + t
                        WT[n[0]] = router_weight(SC[b * S + t], sigmoid)
                        n[0] = n[0] + 1
            gather(XS, X, IDX, S, CNT[0], d, LS, LB, eps)

    return _specialized(kernel, spec, _ROUTE_OPTIONAL)


@macro
def _copied(Y, X, n, j):
    Y[n, j] = X[n, j]


@macro
def _mixed(Y, X, IDX, WT, DL, COEF, i, j):
    Y[IDX[i], j] = ((COEF[0] + COEF[1] * WT[i]) * X[IDX[i], j]
                    + (COEF[2] + COEF[3] * WT[i]) * DL[i, j])


def combine_primfunc(spec: CombineSpec, symbol: str):
    """The combine PrimFunc; arguments in ``spec.arg_names()`` order."""
    check_spec(spec)
    if not isinstance(spec, CombineSpec):
        raise CodegenError(f"combine_primfunc needs a combine spec, got {spec}")
    d = spec.d

    @T.jit
    def kernel(x: T.handle, idx: T.handle, wt: T.handle, dl: T.handle,
               CNT: T.Buffer((1,), "int32", align=4), COEF: T.Buffer((4,), "float32", align=4),
               y: T.handle):
        T.func_attr({"global_symbol": symbol, "tirx.noalias": True})
        N = T.int32()
        X = T.match_buffer(x, (N, d), "float32", align=4)
        IDX = T.match_buffer(idx, (N,), "int32", align=4)
        WT = T.match_buffer(wt, (N,), "float32", align=4)
        DL = T.match_buffer(dl, (N, d), "float32", align=4)
        Y = T.match_buffer(y, (N, d), "float32", align=4)
        for n in T.parallel(N):
            vector_loop(d, _copied, Y, X, n)
        for i in T.parallel(CNT[0]):
            vector_loop(d, _mixed, Y, X, IDX, WT, DL, COEF, i)

    return kernel.specialize()


def _specialized(kernel, spec: RouteSpec, optional: tuple[str, ...]):
    """The PrimFunc of a ``T.jit`` kernel without the optional parameters the spec lacks."""
    names = set(spec.arg_names())
    return kernel.specialize(**{n: None for n in optional if n not in names})
