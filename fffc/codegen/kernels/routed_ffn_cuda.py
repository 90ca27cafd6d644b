"""``ai.fffc::RoutedFFN`` (Mixture-of-Depths) for CUDA: the routing and the combine launches.

One call of the op on the GPU runs **route** (this file) → a dense FFN on the gathered rows
``XS`` (it reads ``CNT`` on the device and skips rows ≥ ``CNT[0]``) → **combine** (this
file). The host never reads ``CNT`` back: no synchronization inside the op. ``X`` is
``[N, d]`` with ``N = B·S`` tokens; sequence b is rows ``b·S .. b·S + S - 1``.

**route** (every launch's grid is a function of N; S and k are kernel scalars):

1. ``score``: a warp per token (8 per block), ``s = X·WR (+ BR)`` in float32 (lane-strided
   partial sums, an xor-shuffle butterfly: every token is summed in the same order, so
   equal rows give exactly equal scores and ties stay ties) → ``SC``; selection threshold
   also computes the selection score ``a = X·WA (+ BA)`` (or ``a = s``) and writes the flag
   ``FL = a > 0`` (= sigmoid(a) > 0.5).
2. ``rank`` (topk only): a thread per token t of sequence b counts ``rank(t) = #{u in b:
   s_u > s_t or (s_u == s_t and u < t)}`` (as ``#{u < t: s_u >= s_t} + #{u > t: s_u >
   s_t}``; float comparisons, so ``-0.0 == +0.0``) and writes
   ``FL = rank < k``: exactly ONNX TopK's set with its lower-index tie rule. O(S) per token,
   every token in parallel (no sort). S < k or k < 1 selects nothing (``CNT = 0``, as the
   CPU kernel; the shim rules S < k out).
3. ``scan``: a single block: an exclusive prefix sum of ``FL`` over all N tokens in chunks
   of ``SCAN_CHUNK`` (each thread counts its ``SCAN_PER`` consecutive tokens, a
   Hillis-Steele scan over the threads in shared memory). Token n with ``FL[n] = 1`` gets
   slot p = the number of flagged tokens before it: ``IDX[p] = n``, ``WT[p] = s_n`` (router
   raw) or ``sigmoid(s_n)``, ``POS[n] = p``; other tokens ``POS[n] = -1``. ``CNT[0]`` = the
   number selected. The slots are ascending in n, and for topk sequence b's tokens land at
   rows ``b·k ..`` (each earlier sequence has exactly k).
4. ``gather``: a warp per slot i < ``CNT[0]`` (blocks past ``CNT`` return at once):
   ``XS[i] = X[IDX[i]]``; with LS/LB the LayerNorm of the CPU kernel, in float32: mean,
   then ``Σ (x − mean)²``, ``XS = (x − mean)·rsqrt'(var + eps)·LS + LB`` with
   ``rsqrt' = 1 / sqrt``.

**combine**: a warp per token n: ``p = POS[n]``; ``Y[n] = X[n]`` if p < 0, else
``(xa + xb·WT[p])·X[n] + (da + db·WT[p])·D[p]`` with ``COEF = [xa, xb, da, db]``. Every row
of Y is written exactly once (no ``Y = X`` pass followed by a scatter).

**The shim's contract.** Buffers it allocates on the device (uninitialized: the kernels
write every entry they later read): ``IDX`` int32 [N], ``WT`` float32 [N], ``CNT`` int32
[1], ``XS`` float32 [N, d] (rows ≥ ``CNT[0]`` are left unwritten), ``POS`` int32 [N],
``D`` float32 [N, d] (the FFN output on ``XS``, rows < ``CNT[0]``), ``COEF`` float32 [4]
(x_coef then delta_coef), and the route variant's workspace ``SC`` (float32) and ``FL``
(int32), one element per token each. Scalars: ``N``, ``S`` (sequence length), ``KN``
(topk with k from the sequence length: this call's k). Route writes IDX, WT, CNT, XS,
POS; combine reads X, POS, WT, D, COEF and writes Y.
"""

# No ``from __future__ import annotations``: the kernels' parameter annotations use shapes
# from the enclosing function, which TVMScript can only see as evaluated annotations.

from fffc.contract.errors import CodegenError
from fffc.contract.kernels import CombineSpec, RouteSpec

from .._tvm import T
from .pieces import ceil_div
from .routed_ffn import check_spec, router_weight

WARPS = 8  # tokens (warps) per block of the score, gather and combine kernels
RANK_THREADS = 256  # tokens per block of the rank kernel
SCAN_THREADS = 256  # threads of the single scan block
SCAN_PER = 8  # consecutive tokens per scan thread per chunk
SCAN_CHUNK = SCAN_THREADS * SCAN_PER
FULL_MASK = 4294967295  # every lane of a warp
# launch parameters outside the specs' arg_names: the buffers and scalars of the contract
LAUNCH_PARAMS = ("IDX", "WT", "CNT", "XS", "POS", "D", "COEF", "S", "KN")


def workspace(spec: RouteSpec) -> dict[str, int]:
    """Scratch of a route variant, elements per token: SC (float32), FL (int32 flags)."""
    check_spec(spec)
    return {"SC": 1, "FL": 1}


def warp_shuffled(value, s):
    """``value`` of the lane whose index differs in bit s (a step of the xor butterfly that
    leaves every lane with the warp's sum, added in the same order on every lane)."""
    return T.tvm_warp_shuffle_xor(T.uint32(FULL_MASK), value, T.shift_left(1, s), 32, 32)


def _score(spec: RouteSpec, symbol: str, topk: bool):
    """A warp per token; tokens past N compute on row N - 1 (every lane reaches the
    shuffles) and write nothing."""
    d, nj = spec.d, ceil_div(spec.d, 32)
    has_br, aux, has_ba = spec.router_bias, spec.selection_score, spec.selection_bias

    @T.jit
    def kernel(x: T.handle, WR: T.Buffer((d,), "float32"),
               BR: T.Optional(T.Buffer((1,), "float32")),
               WA: T.Optional(T.Buffer((d,), "float32")),
               BA: T.Optional(T.Buffer((1,), "float32")),
               sc: T.handle, fl: T.Optional(T.handle)):
        T.func_attr({"global_symbol": symbol, "tirx.noalias": True})
        N = T.int32()
        X = T.match_buffer(x, (N, d), "float32")
        SC = T.match_buffer(sc, (N,), "float32")
        if not topk:
            FL = T.match_buffer(fl, (N,), "int32")
        for bx in T.thread_binding((N + WARPS - 1) // WARPS, thread="blockIdx.x"):
            for ty in T.thread_binding(WARPS, thread="threadIdx.y"):
                for tx in T.thread_binding(32, thread="threadIdx.x"):
                    acc = T.alloc_buffer((2,), "float32", scope="local")
                    acc[0] = T.float32(0)
                    acc[1] = T.float32(0)
                    for j in range(nj):
                        if j * 32 + tx < d:
                            acc[0] = acc[0] + X[T.min(bx * WARPS + ty, N - 1), j * 32 + tx] * WR[
                                j * 32 + tx]
                            if aux:
                                acc[1] = acc[1] + X[T.min(bx * WARPS + ty, N - 1), j * 32 + tx] * WA[
                                    j * 32 + tx]
                    for s in T.unroll(5):
                        acc[0] = acc[0] + warp_shuffled(acc[0], s)
                        if aux:
                            acc[1] = acc[1] + warp_shuffled(acc[1], s)
                    if tx == 0 and bx * WARPS + ty < N:
                        score = T.meta_var(acc[0] + BR[0] if has_br else acc[0])
                        SC[bx * WARPS + ty] = score
                        if not topk:
                            # the selection score: a separate one (WA, BA) or the router's
                            if aux:
                                a = T.meta_var(acc[1] + BA[0] if has_ba else acc[1])
                            else:
                                a = T.meta_var(acc[0] + BR[0] if has_br else acc[0])
                            FL[bx * WARPS + ty] = T.Select(a > T.float32(0), 1, 0)

    names = set(spec.arg_names())
    absent = {n: None for n in ("BR", "WA", "BA") if n not in names}
    return kernel.specialize(**absent, **({"fl": None} if topk else {}))


def _rank(symbol: str, k: int | None):
    """A thread per token n = b·S + t: rank = #{u < t: s_u >= s_t} + #{u > t: s_u > s_t}
    (r: [0] the rank, [1] b·S, [2] t); the loop stops at N should N not be a multiple of S."""

    @T.jit
    def kernel(sc: T.handle, fl: T.handle, S: T.int32, KN: T.Optional(T.int32)):
        T.func_attr({"global_symbol": symbol, "tirx.noalias": True})
        N = T.int32()
        SC = T.match_buffer(sc, (N,), "float32")
        FL = T.match_buffer(fl, (N,), "int32")
        kv = T.meta_var(KN if k is None else k)
        for bx in T.thread_binding((N + RANK_THREADS - 1) // RANK_THREADS, thread="blockIdx.x"):
            for tx in T.thread_binding(RANK_THREADS, thread="threadIdx.x"):
                r = T.alloc_buffer((3,), "int32", scope="local")
                v = T.alloc_buffer((1,), "float32", scope="local")
                if bx * RANK_THREADS + tx < N:
                    r[0] = 0
                    r[1] = T.truncdiv(bx * RANK_THREADS + tx, S) * S
                    r[2] = bx * RANK_THREADS + tx - r[1]
                    v[0] = SC[bx * RANK_THREADS + tx]
                    for u in range(r[2]):
                        r[0] = r[0] + T.Select(SC[r[1] + u] >= v[0], 1, 0)
                    for u in range(T.min(S, N - r[1]) - r[2]):
                        r[0] = r[0] + T.Select(SC[r[1] + r[2] + u] > v[0], 1, 0)
                    FL[bx * RANK_THREADS + tx] = T.Select(r[0] < kv and S >= kv, 1, 0)  # noqa: SIM300 (TIR: S >= k)

    return kernel.specialize(**({"KN": None} if k is not None else {}))


def _scan(symbol: str, sigmoid: bool):
    """st: [0] flagged tokens of the chunks before, [1] this thread's count, [2] scan scratch,
    then the next slot of this thread."""

    @T.jit
    def kernel(sc: T.handle, fl: T.handle, idx: T.handle, wt: T.handle, pos: T.handle,
               CNT: T.Buffer((1,), "int32")):
        T.func_attr({"global_symbol": symbol, "tirx.noalias": True})
        N = T.int32()
        SC = T.match_buffer(sc, (N,), "float32")
        FL = T.match_buffer(fl, (N,), "int32")
        IDX = T.match_buffer(idx, (N,), "int32")
        WT = T.match_buffer(wt, (N,), "float32")
        POS = T.match_buffer(pos, (N,), "int32")
        for _bx in T.thread_binding(1, thread="blockIdx.x"):
            for tx in T.thread_binding(SCAN_THREADS, thread="threadIdx.x"):
                f = T.alloc_buffer((SCAN_PER,), "int32", scope="local")
                st = T.alloc_buffer((3,), "int32", scope="local")
                sh = T.alloc_buffer((SCAN_THREADS,), "int32", scope="shared")
                st[0] = 0
                for c in range((N + SCAN_CHUNK - 1) // SCAN_CHUNK):
                    st[1] = 0
                    for j in T.unroll(SCAN_PER):
                        n = T.meta_var(c * SCAN_CHUNK + tx * SCAN_PER + j)
                        f[j] = T.if_then_else(n < N, FL[T.min(n, N - 1)], 0)
                        st[1] = st[1] + f[j]
                    sh[tx] = st[1]
                    T.tvm_storage_sync("shared")
                    for s in T.unroll(SCAN_THREADS.bit_length() - 1):
                        st[2] = sh[tx] + T.if_then_else(tx >= T.shift_left(1, s),
                                                        sh[T.max(tx - T.shift_left(1, s), 0)], 0)
                        T.tvm_storage_sync("shared")
                        sh[tx] = st[2]
                        T.tvm_storage_sync("shared")
                    st[2] = st[0] + sh[tx] - st[1]
                    st[0] = st[0] + sh[SCAN_THREADS - 1]
                    for j in T.unroll(SCAN_PER):
                        n = T.meta_var(c * SCAN_CHUNK + tx * SCAN_PER + j)
                        if n < N:
                            if f[j] != 0:
                                IDX[st[2]] = n
                                WT[st[2]] = router_weight(SC[n], sigmoid)
                                POS[n] = st[2]
                                st[2] = st[2] + 1
                            else:
                                POS[n] = -1
                    T.tvm_storage_sync("shared")
                if tx == 0:
                    CNT[0] = st[0]

    return kernel.specialize()


def _gather(spec: RouteSpec, symbol: str):
    """A warp per slot i < CNT[0]: XS[i] = X[IDX[i]], or with LS/LB its LayerNorm. LayerNorm:
    slots past CNT in a live block work on the block's first row (every lane of the block
    reaches the shuffles) and write nothing; the block test is block-uniform."""
    d, nj, eps = spec.d, ceil_div(spec.d, 32), spec.ln_epsilon

    @T.jit
    def kernel(x: T.handle, idx: T.handle, CNT: T.Buffer((1,), "int32"),
               LS: T.Optional(T.Buffer((d,), "float32")),
               LB: T.Optional(T.Buffer((d,), "float32")), xs: T.handle):
        T.func_attr({"global_symbol": symbol, "tirx.noalias": True})
        N = T.int32()
        X = T.match_buffer(x, (N, d), "float32")
        IDX = T.match_buffer(idx, (N,), "int32")
        XS = T.match_buffer(xs, (N, d), "float32")
        for bx in T.thread_binding((N + WARPS - 1) // WARPS, thread="blockIdx.x"):
            for ty in T.thread_binding(WARPS, thread="threadIdx.y"):
                for tx in T.thread_binding(32, thread="threadIdx.x"):
                    if eps is None:
                        if bx * WARPS + ty < CNT[0]:
                            for j in range(nj):
                                if j * 32 + tx < d:
                                    XS[bx * WARPS + ty, j * 32 + tx] = X[
                                        IDX[bx * WARPS + ty], j * 32 + tx]
                    else:
                        st = T.alloc_buffer((2,), "float32", scope="local")
                        row = T.alloc_buffer((1,), "int32", scope="local")
                        if bx * WARPS < CNT[0]:
                            row[0] = IDX[T.Select(bx * WARPS + ty < CNT[0], bx * WARPS + ty,
                                                  bx * WARPS)]
                            st[0] = T.float32(0)
                            for j in range(nj):
                                if j * 32 + tx < d:
                                    st[0] = st[0] + X[row[0], j * 32 + tx]
                            for s in T.unroll(5):
                                st[0] = st[0] + warp_shuffled(st[0], s)
                            st[0] = st[0] / T.float32(d)
                            st[1] = T.float32(0)
                            for j in range(nj):
                                if j * 32 + tx < d:
                                    st[1] = st[1] + (X[row[0], j * 32 + tx] - st[0]) * (
                                        X[row[0], j * 32 + tx] - st[0])
                            for s in T.unroll(5):
                                st[1] = st[1] + warp_shuffled(st[1], s)
                            st[1] = T.float32(1) / T.sqrt(st[1] / T.float32(d) + T.float32(eps))
                            if bx * WARPS + ty < CNT[0]:
                                for j in range(nj):
                                    if j * 32 + tx < d:
                                        XS[bx * WARPS + ty, j * 32 + tx] = (
                                            (X[row[0], j * 32 + tx] - st[0]) * st[1]
                                            * LS[j * 32 + tx] + LB[j * 32 + tx])

    return kernel.specialize(**({"LS": None, "LB": None} if eps is None else {}))


def route_primfuncs(spec: RouteSpec, prefix: str) -> dict:
    """The PrimFuncs of a route spec's kernels, by global symbol, in launch order."""
    check_spec(spec)
    if not isinstance(spec, RouteSpec):
        raise CodegenError(f"route_primfuncs needs a route spec, got {spec}")
    k, router, topk = spec.k, spec.router, spec.topk
    out = {f"{prefix}_score": _score(spec, f"{prefix}_score", topk)}
    if topk:
        out[f"{prefix}_rank"] = _rank(f"{prefix}_rank", k)
    out[f"{prefix}_scan"] = _scan(f"{prefix}_scan", router == "sigmoid")
    out[f"{prefix}_gather"] = _gather(spec, f"{prefix}_gather")
    return out


def combine_primfuncs(spec: CombineSpec, prefix: str) -> dict:
    """The PrimFunc of the combine kernel (one launch), by global symbol."""
    check_spec(spec)
    if not isinstance(spec, CombineSpec):
        raise CodegenError(f"combine_primfuncs needs a combine spec, got {spec}")
    d, nj = spec.d, ceil_div(spec.d, 32)
    symbol = f"{prefix}_combine"

    @T.jit
    def kernel(x: T.handle, pos: T.handle, wt: T.handle, dl: T.handle,
               COEF: T.Buffer((4,), "float32"), y: T.handle):
        T.func_attr({"global_symbol": symbol, "tirx.noalias": True})
        N = T.int32()
        X = T.match_buffer(x, (N, d), "float32")
        POS = T.match_buffer(pos, (N,), "int32")
        WT = T.match_buffer(wt, (N,), "float32")
        D = T.match_buffer(dl, (N, d), "float32")
        Y = T.match_buffer(y, (N, d), "float32")
        for bx in T.thread_binding((N + WARPS - 1) // WARPS, thread="blockIdx.x"):
            for ty in T.thread_binding(WARPS, thread="threadIdx.y"):
                for tx in T.thread_binding(32, thread="threadIdx.x"):
                    p = T.alloc_buffer((1,), "int32", scope="local")
                    cf = T.alloc_buffer((2,), "float32", scope="local")
                    if bx * WARPS + ty < N:
                        p[0] = POS[bx * WARPS + ty]
                        if p[0] >= 0:
                            cf[0] = COEF[0] + COEF[1] * WT[p[0]]
                            cf[1] = COEF[2] + COEF[3] * WT[p[0]]
                            for j in range(nj):
                                if j * 32 + tx < d:
                                    Y[bx * WARPS + ty, j * 32 + tx] = (
                                        cf[0] * X[bx * WARPS + ty, j * 32 + tx]
                                        + cf[1] * D[p[0], j * 32 + tx])
                        else:
                            for j in range(nj):
                                if j * 32 + tx < d:
                                    Y[bx * WARPS + ty, j * 32 + tx] = X[bx * WARPS + ty, j * 32 + tx]

    return {symbol: kernel.specialize()}
