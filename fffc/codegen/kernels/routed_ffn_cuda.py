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

from __future__ import annotations

from fffc.errors import CodegenError
from fffc.ops import KernelSpec

from .routed_ffn import _route_params, check_spec, is_route
from .sparse_ffn_cuda import ceil_div

WARPS = 8  # tokens (warps) per block of the score, gather and combine kernels
RANK_THREADS = 256  # tokens per block of the rank kernel
SCAN_THREADS = 256  # threads of the single scan block
SCAN_PER = 8  # consecutive tokens per scan thread per chunk
SCAN_CHUNK = SCAN_THREADS * SCAN_PER
FULL_MASK = "T.uint32(4294967295)"
# launch parameters outside the specs' arg_names: the buffers and scalars of the contract
LAUNCH_PARAMS = ("IDX", "WT", "CNT", "XS", "POS", "D", "COEF", "S", "KN")


def workspace(spec: KernelSpec) -> dict[str, int]:
    """Scratch of a route variant, elements per token: SC (float32), FL (int32 flags)."""
    check_spec(spec)
    return {"SC": 1, "FL": 1} if is_route(spec) else {}


_HEAD = '''
@T.prim_func
def kernel({params}):
    T.func_attr({{"global_symbol": "{symbol}", "tirx.noalias": True}})
    N = T.int32()
'''

_BUFFERS = {
    "X": ("x", '(N, {d}), "float32"'), "SC": ("sc", '(N,), "float32"'),
    "FL": ("fl", '(N,), "int32"'), "IDX": ("idx", '(N,), "int32"'),
    "WT": ("wt", '(N,), "float32"'), "POS": ("pos", '(N,), "int32"'),
    "XS": ("xs", '(N, {d}), "float32"'), "D": ("dl", '(N, {d}), "float32"'),
    "Y": ("y", '(N, {d}), "float32"'),
}
_FIXED = {"WR": '({d},), "float32"', "WA": '({d},), "float32"', "LS": '({d},), "float32"',
          "LB": '({d},), "float32"', "BR": '(1,), "float32"', "BA": '(1,), "float32"',
          "CNT": '(1,), "int32"', "COEF": '(4,), "float32"'}
_SCALARS = ("S", "KN")


def _kernel(symbol: str, names: list[str], d: int, body: str) -> str:
    """A kernel's TVMScript: parameters (token-sized buffers through match_buffer, fixed ones
    typed in place, int32 scalars) then ``body``."""
    params, matches = [], []
    for n in names:
        if n in _BUFFERS:
            handle, shape = _BUFFERS[n]
            params.append(f"{handle}: T.handle")
            matches.append(f"    {n} = T.match_buffer({handle}, {shape.format(d=d)})")
        elif n in _FIXED:
            params.append(f"{n}: T.Buffer({_FIXED[n].format(d=d)})")
        elif n in _SCALARS:
            params.append(f"{n}: T.int32")
        else:
            raise CodegenError(f"RoutedFFN CUDA: unknown kernel parameter {n!r}")
    return (_HEAD.format(params=", ".join(params), symbol=symbol) + "\n".join(matches) + "\n"
            + body)


# A warp per token; tokens past N compute on row N - 1 (every lane reaches the shuffles)
# and write nothing.
_SCORE = '''
    for bx in T.thread_binding((N + {W} - 1) // {W}, thread="blockIdx.x"):
        for ty in T.thread_binding({W}, thread="threadIdx.y"):
            for tx in T.thread_binding(32, thread="threadIdx.x"):
                acc = T.alloc_buffer((2,), "float32", scope="local")
                acc[0] = T.float32(0)
                acc[1] = T.float32(0)
                for j in range({NJ}):
                    if j * 32 + tx < {d}:
                        acc[0] = acc[0] + X[T.min(bx * {W} + ty, N - 1), j * 32 + tx] * WR[j * 32 + tx]{aux_dot}
                for s in T.unroll(5):
                    acc[0] = acc[0] + T.tvm_warp_shuffle_xor({MASK}, acc[0], T.shift_left(1, s), 32, 32){aux_shfl}
                if tx == 0 and bx * {W} + ty < N:
                    SC[bx * {W} + ty] = acc[0]{br}{flag}
'''
_AUX_DOT = '''
                        acc[1] = acc[1] + X[T.min(bx * {W} + ty, N - 1), j * 32 + tx] * WA[j * 32 + tx]'''
_AUX_SHFL = '''
                    acc[1] = acc[1] + T.tvm_warp_shuffle_xor({MASK}, acc[1], T.shift_left(1, s), 32, 32)'''
_FLAG = '''
                    FL[bx * {W} + ty] = T.Select({a} > T.float32(0), 1, 0)'''

# A thread per token n = b·S + t: rank = #{u < t: s_u >= s_t} + #{u > t: s_u > s_t}
# (r: [0] the rank, [1] b·S, [2] t); the loop stops at N should N not be a multiple of S.
_RANK = '''
    for bx in T.thread_binding((N + {RT} - 1) // {RT}, thread="blockIdx.x"):
        for tx in T.thread_binding({RT}, thread="threadIdx.x"):
            r = T.alloc_buffer((3,), "int32", scope="local")
            v = T.alloc_buffer((1,), "float32", scope="local")
            if bx * {RT} + tx < N:
                r[0] = 0
                r[1] = T.truncdiv(bx * {RT} + tx, S) * S
                r[2] = bx * {RT} + tx - r[1]
                v[0] = SC[bx * {RT} + tx]
                for u in range(r[2]):
                    r[0] = r[0] + T.Select(SC[r[1] + u] >= v[0], 1, 0)
                for u in range(T.min(S, N - r[1]) - r[2]):
                    r[0] = r[0] + T.Select(SC[r[1] + r[2] + u] > v[0], 1, 0)
                FL[bx * {RT} + tx] = T.Select(r[0] < {K} and S >= {K}, 1, 0)
'''

# st: [0] flagged tokens of the chunks before, [1] this thread's count, [2] scan scratch,
# then the next slot of this thread.
_SCAN = '''
    for bx in T.thread_binding(1, thread="blockIdx.x"):
        for tx in T.thread_binding({ST}, thread="threadIdx.x"):
            f = T.alloc_buffer(({SP},), "int32", scope="local")
            st = T.alloc_buffer((3,), "int32", scope="local")
            sh = T.alloc_buffer(({ST},), "int32", scope="shared")
            st[0] = 0
            for c in range((N + {SCH} - 1) // {SCH}):
                st[1] = 0
                for j in T.unroll({SP}):
                    f[j] = T.if_then_else(c * {SCH} + tx * {SP} + j < N, FL[T.min(c * {SCH} + tx * {SP} + j, N - 1)], 0)
                    st[1] = st[1] + f[j]
                sh[tx] = st[1]
                T.tvm_storage_sync("shared")
                for s in T.unroll({LOG}):
                    st[2] = sh[tx] + T.if_then_else(tx >= T.shift_left(1, s), sh[T.max(tx - T.shift_left(1, s), 0)], 0)
                    T.tvm_storage_sync("shared")
                    sh[tx] = st[2]
                    T.tvm_storage_sync("shared")
                st[2] = st[0] + sh[tx] - st[1]
                st[0] = st[0] + sh[{ST} - 1]
                for j in T.unroll({SP}):
                    if c * {SCH} + tx * {SP} + j < N:
                        if f[j] != 0:
                            IDX[st[2]] = c * {SCH} + tx * {SP} + j
                            WT[st[2]] = {weight}
                            POS[c * {SCH} + tx * {SP} + j] = st[2]
                            st[2] = st[2] + 1
                        else:
                            POS[c * {SCH} + tx * {SP} + j] = -1
                T.tvm_storage_sync("shared")
            if tx == 0:
                CNT[0] = st[0]
'''

_GATHER = '''
    for bx in T.thread_binding((N + {W} - 1) // {W}, thread="blockIdx.x"):
        for ty in T.thread_binding({W}, thread="threadIdx.y"):
            for tx in T.thread_binding(32, thread="threadIdx.x"):
                if bx * {W} + ty < CNT[0]:
                    for j in range({NJ}):
                        if j * 32 + tx < {d}:
                            XS[bx * {W} + ty, j * 32 + tx] = X[IDX[bx * {W} + ty], j * 32 + tx]
'''

# LayerNorm: slots past CNT in a live block work on the block's first row (every lane of
# the block reaches the shuffles) and write nothing; the block test is block-uniform.
_GATHER_LN = '''
    for bx in T.thread_binding((N + {W} - 1) // {W}, thread="blockIdx.x"):
        for ty in T.thread_binding({W}, thread="threadIdx.y"):
            for tx in T.thread_binding(32, thread="threadIdx.x"):
                st = T.alloc_buffer((2,), "float32", scope="local")
                row = T.alloc_buffer((1,), "int32", scope="local")
                if bx * {W} < CNT[0]:
                    row[0] = IDX[T.Select(bx * {W} + ty < CNT[0], bx * {W} + ty, bx * {W})]
                    st[0] = T.float32(0)
                    for j in range({NJ}):
                        if j * 32 + tx < {d}:
                            st[0] = st[0] + X[row[0], j * 32 + tx]
                    for s in T.unroll(5):
                        st[0] = st[0] + T.tvm_warp_shuffle_xor({MASK}, st[0], T.shift_left(1, s), 32, 32)
                    st[0] = st[0] / T.float32({d})
                    st[1] = T.float32(0)
                    for j in range({NJ}):
                        if j * 32 + tx < {d}:
                            st[1] = st[1] + (X[row[0], j * 32 + tx] - st[0]) * (X[row[0], j * 32 + tx] - st[0])
                    for s in T.unroll(5):
                        st[1] = st[1] + T.tvm_warp_shuffle_xor({MASK}, st[1], T.shift_left(1, s), 32, 32)
                    st[1] = T.float32(1) / T.sqrt(st[1] / T.float32({d}) + T.float32({EPS}))
                    if bx * {W} + ty < CNT[0]:
                        for j in range({NJ}):
                            if j * 32 + tx < {d}:
                                XS[bx * {W} + ty, j * 32 + tx] = (X[row[0], j * 32 + tx] - st[0]) * st[1] * LS[j * 32 + tx] + LB[j * 32 + tx]
'''

_COMBINE = '''
    for bx in T.thread_binding((N + {W} - 1) // {W}, thread="blockIdx.x"):
        for ty in T.thread_binding({W}, thread="threadIdx.y"):
            for tx in T.thread_binding(32, thread="threadIdx.x"):
                p = T.alloc_buffer((1,), "int32", scope="local")
                cf = T.alloc_buffer((2,), "float32", scope="local")
                if bx * {W} + ty < N:
                    p[0] = POS[bx * {W} + ty]
                    if p[0] >= 0:
                        cf[0] = COEF[0] + COEF[1] * WT[p[0]]
                        cf[1] = COEF[2] + COEF[3] * WT[p[0]]
                        for j in range({NJ}):
                            if j * 32 + tx < {d}:
                                Y[bx * {W} + ty, j * 32 + tx] = cf[0] * X[bx * {W} + ty, j * 32 + tx] + cf[1] * D[p[0], j * 32 + tx]
                    else:
                        for j in range({NJ}):
                            if j * 32 + tx < {d}:
                                Y[bx * {W} + ty, j * 32 + tx] = X[bx * {W} + ty, j * 32 + tx]
'''


def route_sources(spec: KernelSpec, prefix: str) -> dict[str, str]:
    """TVMScript of a route spec's kernels, by global symbol, in launch order."""
    check_spec(spec)
    if not is_route(spec):
        raise CodegenError(f"route_sources needs a 'route…' spec, got mode {spec.mode!r}")
    k, router, selection = _route_params(spec)
    d = spec.d_in
    topk = selection == "topk"
    fmt = {"W": WARPS, "NJ": ceil_div(d, 32), "d": d, "MASK": FULL_MASK}
    aux = spec.gated
    br = " + BR[0]" if spec.has_b1 else ""
    a = "acc[1]" + (" + BA[0]" if spec.has_b2 else "") if aux else "acc[0]" + br
    score = _SCORE.format(
        aux_dot=_AUX_DOT.format(**fmt) if aux else "",
        aux_shfl=_AUX_SHFL.format(**fmt) if aux else "",
        br=br, flag="" if topk else _FLAG.format(a=a, **fmt), **fmt)
    score_args = ["X", "WR", *(["BR"] if spec.has_b1 else []), *(["WA"] if aux else []),
                  *(["BA"] if spec.has_b2 else []), "SC", *([] if topk else ["FL"])]
    out = {f"{prefix}_score": _kernel(f"{prefix}_score", score_args, d, score)}
    if topk:
        kv = "KN" if k is None else str(k)
        rank = _RANK.format(RT=RANK_THREADS, K=kv)
        out[f"{prefix}_rank"] = _kernel(f"{prefix}_rank", ["SC", "FL", "S",
                                                           *(["KN"] if k is None else [])],
                                        d, rank)
    n = f"c * {SCAN_CHUNK} + tx * {SCAN_PER} + j"
    weight = (f"SC[{n}]" if router == "raw" else
              f"T.float32(1) / (T.float32(1) + T.exp(T.float32(0) - SC[{n}]))")
    scan = _SCAN.format(ST=SCAN_THREADS, SP=SCAN_PER, SCH=SCAN_CHUNK,
                        LOG=SCAN_THREADS.bit_length() - 1, weight=weight)
    out[f"{prefix}_scan"] = _kernel(f"{prefix}_scan", ["SC", "FL", "IDX", "WT", "POS", "CNT"],
                                    d, scan)
    eps = dict(spec.extra).get("ln_epsilon")
    if eps is None:
        gather = _GATHER.format(**fmt)
        gather_args = ["X", "IDX", "CNT", "XS"]
    else:
        gather = _GATHER_LN.format(EPS=repr(float(eps)), **fmt)
        gather_args = ["X", "IDX", "CNT", "LS", "LB", "XS"]
    out[f"{prefix}_gather"] = _kernel(f"{prefix}_gather", gather_args, d, gather)
    return out


def combine_sources(spec: KernelSpec, prefix: str) -> dict[str, str]:
    """TVMScript of the combine kernel (one launch), by global symbol."""
    check_spec(spec)
    if spec.mode != "combine":
        raise CodegenError(f"combine_sources needs a 'combine' spec, got mode {spec.mode!r}")
    d = spec.d_in
    body = _COMBINE.format(W=WARPS, NJ=ceil_div(d, 32), d=d)
    return {f"{prefix}_combine": _kernel(f"{prefix}_combine",
                                         ["X", "POS", "WT", "D", "COEF", "Y"], d, body)}


def routed_sources(spec: KernelSpec, prefix: str) -> dict[str, str]:
    """The kernels of a route or combine spec, by global symbol, in launch order."""
    return route_sources(spec, prefix) if is_route(spec) else combine_sources(spec, prefix)
