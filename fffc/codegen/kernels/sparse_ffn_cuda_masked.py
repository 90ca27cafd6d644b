"""``ai.fffc::SparseFFN`` modes teal, cats and predictor for CUDA: launches per call.

The calibrated modes drop neurons by thresholds or a predictor (``fffc.reference``'s
``teal_ffn``, ``cats_ffn``, ``predictor_ffn``); like the CPU kernels they are decode
kernels, one token per block, and the artifacts run ONNX Runtime's masked dense FFN past
``sparse_max_tokens`` (1). Every grid has a token axis (extent N), so the launches are
correct for any token count. Workspace buffers (float32 per token): ``H`` (the down
projection's input), ``P`` (its split-K partials), and per mode ``G``, ``ZP``, ``SC``.

A column GEMV (``gemv``) is the building block of the first projections: a block owns
``nt`` = 32 outputs (threadIdx.x: each warp reads a 128-byte segment of one row of an
input-channel-major matrix) and splits the reduction over ``ks`` warps (threadIdx.y),
summed in shared memory in a fixed order. Where it thresholds the input, all threads of
the block read the same x (one token per block), so the branch is warp-uniform and the
row segment of a channel with ``|x| <= t_in`` is never read.

teal (W1, WU [d_in, d_ff]; TH = [t_in, t_hidden]; centered: XC [d_in], HC [d_ff]):
  1. ``proj``: gemv over W1 (and WU, gated, in the same pass) skipping small x (x - XC);
     the epilogue writes ``H = act(·+B1) [⊙ up_act(·)]`` (- HC), zeroed where
     ``|a| <= t_hidden``.
cats (gated; W1 [d_in, d_ff], WU [d_ff, d_in]; TH = [t_in, t_gate]):
  1. ``gate``: gemv over W1 skipping small x; ``G = act(·+B1)``, zeroed where
     ``|g| <= t_gate``;
  2. ``up``: a warp per neuron reads the row ``WU[i, :]`` (coalesced) only where
     ``G != 0`` (warp-uniform), dot with the thresholded x; lane 0 adds the 32 lane sums
     in order; ``H = G ⊙ up_act(·)``.
predictor (W1, WU [d_ff, d_in]; PA [d_in, r], PB [r, d_ff], PC [d_ff]):
  1. ``z``: gemv of x over PA, d_in also split over ``kb`` blocks (blockIdx.y: r alone is
     too few blocks) into partials ``ZP``;
  2. ``score``: gemv of z (the partials added in order) over PB: ``SC = z·PB + PC``;
  3. ``rows``: a warp per neuron reads its rows of W1 (and WU) only where ``SC > 0``;
     ``H = act(W1[i]·x + B1) [⊙ up_act(WU[i]·x)]``, 0 for unselected neurons.
Then, every mode: ``down`` (sparse_ffn_cuda's: split over d_ff across blocks, a row of W2
read only for a non-zero ``H``, warp-uniform) and ``reduce`` (``Y = B2 + Σ P`` in order:
deterministic, no atomics).
"""

from __future__ import annotations

from fffc.errors import CodegenError
from fffc.ops import WEIGHT_DTYPES, KernelSpec

from .decode import ACTIVATIONS
from .sparse_ffn_cuda import _DOWN, _HEAD, _REDUCE, CudaTiling, ceil_div

MODES = ("teal", "cats", "predictor")


def check_masked_spec(spec: KernelSpec) -> None:
    """Raise CodegenError for specs these kernels cannot compute."""
    if spec.op != "SparseFFN" or spec.mode not in MODES:
        raise CodegenError(f"not a SparseFFN teal/cats/predictor spec: {spec}")
    if spec.activation not in ACTIVATIONS or spec.activation == "none":
        raise CodegenError(f"SparseFFN {spec.mode}: activation {spec.activation!r} has no kernel")
    if spec.up_activation not in ("none", "relu"):
        raise CodegenError(f"SparseFFN up_activation {spec.up_activation!r} is not supported")
    if spec.up_activation != "none" and not spec.gated:
        raise CodegenError("SparseFFN up_activation needs a gated FFN (input WU)")
    if spec.mode == "cats" and not spec.gated:
        raise CodegenError("SparseFFN cats thresholds a gate: gated FFNs only")
    if spec.centers and (spec.mode != "teal" or ("x" in spec.centers and spec.gated)):
        raise CodegenError("SparseFFN centers: mode teal only, XC for dense FFNs only")
    if spec.mode == "predictor" and spec.rank < 1:
        raise CodegenError("SparseFFN predictor: the spec carries no rank")
    if spec.dtype not in WEIGHT_DTYPES.values():
        raise CodegenError(f"SparseFFN weights: float32, float16 or bfloat16, got {spec.dtype!r}")
    if min(spec.d_in, spec.d_ff, spec.d_out) < 1:
        raise CodegenError(f"SparseFFN dims must be positive: {spec}")


def workspace(spec: KernelSpec, t: CudaTiling) -> dict[str, int]:
    """Scratch buffers of the variant: name → float32 elements per token."""
    f = spec.d_ff
    per_mode = {"teal": {}, "cats": {"G": f},
                "predictor": {"ZP": t.kb * spec.rank, "SC": f}}[spec.mode]
    return {**per_mode, "H": f, "P": t.splits * spec.d_out}


def _params(spec: KernelSpec, names: list[str]) -> str:
    """The kernel's signature: op inputs with their mode's layouts, workspace as handles."""
    d, f, do, r = spec.d_in, spec.d_ff, spec.d_out, spec.rank
    rows = spec.mode == "predictor"  # W1 row per neuron
    up_rows = spec.mode != "teal"  # WU row per neuron
    shapes = {"W1": (f, d) if rows else (d, f), "WU": (f, d) if up_rows else (d, f),
              "B1": (f,), "W2": (f, do), "B2": (do,), "TH": (2,), "PA": (d, r), "PB": (r, f),
              "PC": (f,), "XC": (d,), "HC": (f,)}
    out = []
    for n in names:
        if n in shapes:
            dims = ", ".join(str(v) for v in shapes[n]) + ("," if len(shapes[n]) == 1 else "")
            out.append(f'{n}: T.Buffer(({dims}), "float32")')
        else:  # token-major: X, Y and the workspace
            out.append(f"{n.lower()}: T.handle")
    return ", ".join(out)


def _match(name: str, width: str | int) -> str:
    """A token-major [N, width] buffer from its handle (named as the lower-case name)."""
    return f'    {name} = T.match_buffer({name.lower()}, (N, {width}), "float32")'


# A column GEMV: out[col] = Σ_k xin[k]·M[k, col] over a slice of K per blockIdx.y.
_GEMV = '''{bufs}
    for bx in T.thread_binding({NBX}, thread="blockIdx.x"):
        for bk in T.thread_binding({KB}, thread="blockIdx.y"):
            for bz in T.thread_binding(N, thread="blockIdx.z"):
                for ty in T.thread_binding({KS}, thread="threadIdx.y"):
                    for tx in T.thread_binding({NT}, thread="threadIdx.x"):
                        acc = T.alloc_buffer(({NA},), "float32", scope="local")
                        xv = T.alloc_buffer((1,), "float32", scope="local")
                        hv = T.alloc_buffer((1,), "float32", scope="local")
                        th = T.alloc_buffer((2,), "float32", scope="local")
                        red = T.alloc_buffer(({NA}, {KS}, {NT}), "float32", scope="shared")
{th_load}
                        for a in T.unroll({NA}):
                            acc[a] = T.float32(0)
                        for kk in range({KC} // 4):
                            for u in T.unroll(4):
                                if ty * {KC} + kk * 4 + u < {KCB} and {k} < {K}:
                                    xv[0] = {xread}
{accumulate}
                        for a in T.unroll({NA}):
                            red[a, ty, tx] = acc[a]
                        T.tvm_storage_sync("shared")
                        if ty == 0 and bx * {NT} + tx < {W}:
                            for a in T.unroll({NA}):
                                acc[a] = T.float32(0)
                                for j in T.unroll({KS}):
                                    acc[a] = acc[a] + red[a, j, tx]
{epilogue}
'''

# A warp per neuron: the neuron's rows (row per neuron [d_ff, d_in]) dotted with x, read
# only where {select} holds (warp-uniform); lane 0 adds the lane sums in order.
_ROWS = '''{bufs}
    for bx in T.thread_binding({NBW}, thread="blockIdx.x"):
        for by in T.thread_binding(N, thread="blockIdx.y"):
            for ty in T.thread_binding({WPB}, thread="threadIdx.y"):
                for tx in T.thread_binding(32, thread="threadIdx.x"):
                    acc = T.alloc_buffer(({NA},), "float32", scope="local")
                    xv = T.alloc_buffer((1,), "float32", scope="local")
                    hv = T.alloc_buffer((1,), "float32", scope="local")
                    th = T.alloc_buffer((1,), "float32", scope="local")
                    sel = T.alloc_buffer((1,), "int32", scope="local")
                    red = T.alloc_buffer(({NA}, {WPB}, 32), "float32", scope="shared")
{th_load}
                    for a in T.unroll({NA}):
                        acc[a] = T.float32(0)
                    sel[0] = 0
                    if bx * {WPB} + ty < {F}:
                        if {select}:
                            sel[0] = 1
                    if sel[0] != 0:
                        for kk in range({NK}):
                            for u in T.unroll(4):
                                if (kk * 4 + u) * 32 + tx < {D}:
                                    xv[0] = {xread}
{accumulate}
                    for a in T.unroll({NA}):
                        red[a, ty, tx] = acc[a]
                    T.tvm_storage_sync("shared")
                    if tx == 0 and bx * {WPB} + ty < {F}:
                        H[by, bx * {WPB} + ty] = T.float32(0)
                        if sel[0] != 0:
                            for a in T.unroll({NA}):
                                acc[a] = T.float32(0)
                                for j in range(32):
                                    acc[a] = acc[a] + red[a, ty, j]
{epilogue}
'''


def _lines(indent: int, *stmts: str) -> str:
    """Statements at a template's indentation."""
    return "\n".join(" " * indent + s for s in stmts)


def _act(spec: KernelSpec, pre: str, up: str | None) -> list[str]:
    """Statements leaving ``act(pre) [⊙ up_act(up)]`` in hv[0]."""
    out = [f"hv[0] = {pre}", "hv[0] = " + ACTIVATIONS[spec.activation].format(v="hv[0]")]
    if up is not None:
        out.append(f"hv[0] = hv[0] * ({ACTIVATIONS[spec.up_activation].format(v=up)})")
    return out


def _gemv(spec: KernelSpec, *, symbol: str, args: list[str], bufs: list[str], width: int,
          k: int, kb: int, ks: int, nt: int, mats: list[str], xread: str, thresholds: bool,
          epilogue: list[str]) -> str:
    """One column GEMV kernel over the input-channel-major matrices ``mats`` [k, width]."""
    ks = max(1, min(ks, ceil_div(ceil_div(k, kb), 4)))  # no warp without 4 rows
    kcb = ceil_div(k, kb)
    if ceil_div(k, kcb) != kb:
        raise CodegenError(f"kb={kb} leaves empty slices of {k}")
    kc = 4 * ceil_div(ceil_div(kcb, ks), 4)
    kidx = f"bk * {kcb} + ty * {kc} + kk * 4 + u"
    col = f"T.min(bx * {nt} + tx, {width - 1})"
    acc = [f"acc[{a}] = acc[{a}] + xv[0] * {m}[{kidx}, {col}]" for a, m in enumerate(mats)]
    if thresholds:
        acc = ["if T.fabs(xv[0]) > th[0]:", *["    " + s for s in acc]]
    fmt = {
        "bufs": "\n".join(bufs), "NBX": ceil_div(width, nt), "KB": kb, "KS": ks, "NT": nt,
        "NA": len(mats), "KC": kc, "KCB": kcb, "K": k, "W": width, "k": kidx,
        "xread": xread.format(k=kidx),
        "th_load": _lines(24, "th[0] = TH[0]", "th[1] = TH[1]") if thresholds else "",
        "accumulate": _lines(36, *acc),
        "epilogue": _lines(28, *epilogue),
    }
    head = _HEAD.format(params=_params(spec, args), symbol=symbol)
    return head + _GEMV.format(**fmt)


def _rows(spec: KernelSpec, t: CudaTiling, *, symbol: str, args: list[str], bufs: list[str],
          mats: list[str], select: str, xread: str, thresholds: bool,
          epilogue: list[str]) -> str:
    """One warp-per-neuron kernel over the row-per-neuron matrices ``mats`` [d_ff, d_in]."""
    i = f"bx * {t.wpb} + ty"
    kidx = "(kk * 4 + u) * 32 + tx"
    acc = [f"acc[{a}] = acc[{a}] + xv[0] * {m}[{i}, {kidx}]" for a, m in enumerate(mats)]
    fmt = {
        "bufs": "\n".join(bufs), "NBW": ceil_div(spec.d_ff, t.wpb), "WPB": t.wpb,
        "NA": len(mats), "F": spec.d_ff, "D": spec.d_in, "NK": ceil_div(spec.d_in, 128),
        "select": select.format(i=i), "xread": xread.format(k=kidx),
        "th_load": _lines(20, "th[0] = TH[0]") if thresholds else "",
        "accumulate": _lines(36, *acc),
        "epilogue": _lines(28, *(s.format(i=i) for s in epilogue)),
    }
    head = _HEAD.format(params=_params(spec, args), symbol=symbol)
    return head + _ROWS.format(**fmt)


def _down_reduce(spec: KernelSpec, t: CudaTiling, prefix: str) -> dict[str, str]:
    """sparse_ffn_cuda's down and reduce kernels over H, one token per block."""
    f, do = spec.d_ff, spec.d_out
    fc = ceil_div(f, t.splits)
    if ceil_div(f, fc) != t.splits:
        raise CodegenError(f"splits={t.splits} leaves empty chunks of d_ff={f}")
    row = f"T.min(bz + (i * {t.no} + tx) // {fc}, N - 1)"
    col = f"T.min(bs * {fc} + (i * {t.no} + tx) % {fc}, {f} - 1)"
    fmt = {"F": f, "DO": do, "MR": 1, "NO": t.no, "NBO": ceil_div(do, t.no),
           "NBR": ceil_div(do, 256), "S": t.splits, "FC": fc, "STAGE": ceil_div(fc, t.no),
           "b2": "B2[bx * 256 + tx]" if spec.has_b2 else "T.float32(0)",
           "hbuf": _match("H", f), "stage": f"H[{row}, {col}]"}
    b2 = ["B2"] if spec.has_b2 else []
    return {
        f"{prefix}_down": _HEAD.format(params=_params(spec, ["H", "W2", "P"]),
                                       symbol=f"{prefix}_down") + _DOWN.format(**fmt),
        f"{prefix}_reduce": _HEAD.format(params=_params(spec, ["P", *b2, "Y"]),
                                         symbol=f"{prefix}_reduce") + _REDUCE.format(**fmt),
    }


def decode_sources(spec: KernelSpec, t: CudaTiling, prefix: str) -> dict[str, str]:
    """TVMScript of the variant's kernels, by global symbol, in launch order."""
    check_masked_spec(spec)
    if t.mr != 1 or t.gemm:
        raise CodegenError(f"SparseFFN {spec.mode} on CUDA: one token per block (mr=1)")
    d, f = spec.d_in, spec.d_ff
    b1 = ["B1"] if spec.has_b1 else []
    bias = f" + B1[bx * {t.nt} + tx]" if spec.has_b1 else ""
    col = f"bx * {t.nt} + tx"
    thresholded = "T.if_then_else(T.fabs(hv[0]) > th[1], hv[0], T.float32(0))"
    wu = ["WU"] if spec.gated else []
    out: dict[str, str] = {}
    if spec.mode == "teal":  # centered: x - XC and a - HC thresholded (their share in B1, B2)
        centers = [f"{p.upper()}C" for p in spec.centers]
        epi = [*_act(spec, f"acc[0]{bias}", "acc[1]" if spec.gated else None),
               *([f"hv[0] = hv[0] - HC[{col}]"] if "h" in spec.centers else []),
               f"H[bz, {col}] = {thresholded}"]
        out[f"{prefix}_proj"] = _gemv(
            spec, symbol=f"{prefix}_proj", args=["X", "W1", *b1, *wu, "TH", *centers, "H"],
            bufs=[_match("X", d), _match("H", f)], width=f, k=d, kb=1, ks=t.ks, nt=t.nt,
            mats=["W1", *wu], thresholds=True, epilogue=epi,
            xread="X[bz, {k}] - XC[{k}]" if "x" in spec.centers else "X[bz, {k}]")
    elif spec.mode == "cats":
        epi = [*_act(spec, f"acc[0]{bias}", None), f"G[bz, {col}] = {thresholded}"]
        out[f"{prefix}_gate"] = _gemv(
            spec, symbol=f"{prefix}_gate", args=["X", "W1", *b1, "TH", "G"],
            bufs=[_match("X", d), _match("G", f)], width=f, k=d, kb=1, ks=t.ks, nt=t.nt,
            mats=["W1"], xread="X[bz, {k}]", thresholds=True, epilogue=epi)
        up = ACTIVATIONS[spec.up_activation].format(v="acc[0]")
        out[f"{prefix}_up"] = _rows(
            spec, t, symbol=f"{prefix}_up", args=["X", "WU", "TH", "G", "H"],
            bufs=[_match("X", d), _match("G", f), _match("H", f)], mats=["WU"],
            select="G[by, {i}] != T.float32(0)",
            xread="T.if_then_else(T.fabs(X[by, {k}]) > th[0], X[by, {k}], T.float32(0))",
            thresholds=True, epilogue=[f"H[by, {{i}}] = G[by, {{i}}] * ({up})"])
    else:
        r = spec.rank
        out[f"{prefix}_z"] = _gemv(
            spec, symbol=f"{prefix}_z", args=["X", "PA", "ZP"],
            bufs=[_match("X", d), f'    ZP = T.match_buffer(zp, (N, {t.kb}, {r}), "float32")'],
            width=r, k=d, kb=t.kb, ks=t.ks, nt=t.nt, mats=["PA"], xread="X[bz, {k}]",
            thresholds=False, epilogue=[f"ZP[bz, bk, {col}] = acc[0]"])
        zsum = " + ".join(f"ZP[bz, {j}, {{k}}]" for j in range(t.kb))
        out[f"{prefix}_score"] = _gemv(
            spec, symbol=f"{prefix}_score", args=["ZP", "PB", "PC", "SC"],
            bufs=[f'    ZP = T.match_buffer(zp, (N, {t.kb}, {r}), "float32")', _match("SC", f)],
            width=f, k=r, kb=1, ks=t.ks, nt=t.nt, mats=["PB"], xread=zsum, thresholds=False,
            epilogue=[f"SC[bz, {col}] = acc[0] + PC[{col}]"])
        b1i = " + B1[{i}]" if spec.has_b1 else ""
        epi = [*_act(spec, f"acc[0]{b1i}", "acc[1]" if spec.gated else None),
               "H[by, {i}] = hv[0]"]
        out[f"{prefix}_rows"] = _rows(
            spec, t, symbol=f"{prefix}_rows", args=["X", "W1", *b1, *wu, "SC", "H"],
            bufs=[_match("X", d), _match("SC", f), _match("H", f)], mats=["W1", *wu],
            select="SC[by, {i}] > T.float32(0)", xread="X[by, {k}]", thresholds=False,
            epilogue=epi)
    return {**out, **_down_reduce(spec, t, prefix)}
