"""CUDA StructuredFFN and 16-bit-weight SparseFFN kernels against a float64 reference and cuBLAS.

What bench_cuda.py does not cover, in the same two steps (the GPU machine has no TVM, the
build machine no GPU):

    python bench/bench_cuda_more.py build DIR [--check]  # here: one fatbin + the launches
    python bench/bench_cuda_more.py run DIR [--json F]   # on the GPU: CuPy launches, PyTorch dense

``run`` needs only numpy, cupy and torch (no fffc, no TVM). Two parts:

* **structured**: ``ai.fffc::StructuredFFN`` (exact-erf GELU) in its LowRank (k = 1, r = d/4,
  with U: ~31-34% of the dense parameters) and BlockDense (k = 4 blocks, with U: ~32%)
  parametrizations at BERT-base (768/3072, biases) and LLaMA-7B-sized (4096/11008, no
  biases) dims, against the dense FFN with the merged weights (blockdiag(A)·U) in torch, fp32,
  TF32 off (cuBLAS SGEMM); 1 / 16 / 128 / 4096 tokens.
* **sparse**: ``ai.fffc::SparseFFN`` mode exact (bench_cuda.py's BERT ReLU 768/3072 and LLaMA
  dReLU 4096/11008 at 90% activation sparsity) built with float32, float16 and bfloat16
  weights (``--weight-dtype``: 16-bit loads widened to float32, float32 arithmetic), against
  each other and against the dense FFN in torch fp32 (TF32 off) and in torch fp16 / bf16
  (activations, weights and biases in 16 bits, cast outside the timed graph: the full
  16-bit model, cuBLAS HGEMM / BF16 GEMM on tensor cores); 1 / 8 / 128 tokens.

Per case and token count ``run`` launches the variant the shim would pick (its token range),
its launches in order over the workspace buffers (float32, per token), grid ``(a·N + b) // c``
per dimension, the parameters in the kernel's order (every buffer's dtype checked against the
C type the kernel declares: ``half*`` float16, ``nv_bfloat16*`` the bfloat16 bit patterns);
compares Y (filled with NaN first) with a float64 reference computed on the GPU, max |err| /
max |ref| — for 16-bit weights the reference uses the *rounded* weights (bfloat16: round to
nearest even of the float32 bits, by bit operations); then times fffc and the dense
baselines side by side, interleaved, each captured in a CUDA graph (GPU time, not Python
launch cost), medians compared — bench_cuda.py's method. Prints markdown tables and writes
the rows to ``DIR/results.json`` (or ``--json``); exits 1 if a relative error exceeds 1e-4.

``build --check`` also builds small-dim specs of both parts (d = 64) and runs every variant
once through fffc's CPU emulator of the emitted CUDA, with the launches as ``run`` reads them
from the JSON and the buffers, weights, rounding and reference of ``run``'s own code
(NumPy in place of CuPy), against fffc.verify.reference; and the torch dense baselines on the CPU.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import sys
import time
from pathlib import Path
from statistics import NormalDist

# run's helpers shared with bench_cuda.py (numpy/cupy/torch only, like this step)
from bench_cuda import _dim, _x
from bench_cuda import _reference as _sparse_reference

STRUCTURED = [
    # name, d, f, structure (blocks k, width r, dense factor u per projection), biases
    ("bert-lowrank", 768, 3072, dict(k1=1, r1=192, u1=True, k2=1, r2=192, u2=True), True),
    ("bert-blockdense", 768, 3072, dict(k1=4, r1=320, u1=True, k2=4, r2=320, u2=True), True),
    ("llama-lowrank", 4096, 11008, dict(k1=1, r1=1024, u1=True, k2=1, r2=1024, u2=True), False),
    ("llama-blockdense", 4096, 11008, dict(k1=4, r1=1536, u1=True, k2=4, r2=1536, u2=True),
     False),
]
SPARSE = [
    # name, d, f, gated, sparsity (bench_cuda.py's)
    ("bert-relu-90", 768, 3072, False, 0.90),
    ("llama-drelu-90", 4096, 11008, True, 0.90),
]
WEIGHT_DTYPES = ("float32", "float16", "bfloat16")
STRUCTURED_TOKENS = (1, 16, 128, 4096)
SPARSE_TOKENS = (1, 8, 128)
ACTIVATION = "gelu"
TOLERANCE = 1e-4
FATBIN = "fffc_kernels.fatbin"

# --check: the same parametrizations at small dims (the emulator runs a host thread per CUDA
# thread); one with biases and one without
CHECK_STRUCTURED = [
    ("lowrank", 64, 96, dict(k1=1, r1=16, u1=True, k2=1, r2=24, u2=True), True),
    ("blockdense", 64, 96, dict(k1=4, r1=32, u1=True, k2=4, r2=32, u2=True), False),
]
CHECK_SPARSE = [("relu", 64, 96, False, 0.5), ("drelu", 64, 96, True, 0.5)]

# kernel parameter C type → the array dtype passed (bfloat16: its bit patterns)
C_TYPES = {"float*": "float32", "half*": "float16", "nv_bfloat16*": "uint16", "int*": "int32"}


# ---------------------------------------------------------------- build (here: fffc, nvcc)


def _specs(structured, sparse):
    """({name: (spec, info)}, {name: (info, {weight dtype: spec})})."""
    from fffc.contract.kernels import Projection, SparseSpec, StructuredSpec

    st = {}
    for name, d, f, shape, biases in structured:
        spec = StructuredSpec(ACTIVATION, d, f, d,
                              *(Projection(shape[f"k{n}"], shape[f"r{n}"], shape[f"u{n}"])
                                for n in (1, 2)), biases, biases)
        params = (d * shape["r1"] // shape["k1"] + shape["r1"] * f
                  + f * shape["r2"] // shape["k2"] + shape["r2"] * d)
        st[name] = (spec, {"d": d, "f": f, "activation": ACTIVATION, "structure": shape,
                           "params": params / (2 * d * f)})
    sp = {}
    for name, d, f, gated, s in sparse:
        spec = SparseSpec("relu", "relu" if gated else "none", "exact", d, f, d,
                          not gated, not gated, gated)
        sp[name] = ({"d": d, "f": f, "gated": gated, "sparsity": s},
                    {dt: spec.stored_as(dt) for dt in WEIGHT_DTYPES})
    return st, sp


def _kernels(lib, spec, types: dict) -> dict:
    """What ``run`` needs to launch one spec: its inputs and every variant's launches."""
    return {"args": spec.arg_names(), "weights": spec.weight_args(), "dtype": spec.dtype,
            "variants": [{"name": v.variant, "min": v.min_tokens, "max": v.max_tokens,
                          "workspace": dict(v.workspace),
                          "launches": [{"kernel": ln.kernel, "params": list(ln.params),
                                        "types": types[ln.kernel],
                                        "grid": [[g.a, g.b, g.c] for g in ln.grid],
                                        "block": list(ln.block)} for ln in v.launches]}
                         for v in lib.variants if v.spec == spec]}


def _build(structured, sparse, out: Path):
    """One library (one fatbin) of every spec; (library, cases.json's content)."""
    from fffc.codegen.cuda_build import build_cuda_library
    from fffc.codegen.schedules import family
    from fffc.verify.cuda_emu import _param_types  # kernel → each parameter's C type

    st, sp = _specs(structured, sparse)
    specs = [s for s, _ in st.values()] + [s for _, by in sp.values() for s in by.values()]
    lib = build_cuda_library(specs, family("cuda"), out)
    if lib.fatbin_path.name != FATBIN:
        raise RuntimeError(f"fatbin is {lib.fatbin_path.name}, expected {FATBIN}")
    types = _param_types(lib.source_path.read_text())
    meta = {"fatbin": FATBIN,
            "structured": {n: {**info, **_kernels(lib, s, types)} for n, (s, info) in st.items()},
            "sparse": {n: {**info, "kernels": {dt: _kernels(lib, s, types) for dt, s in by.items()}}
                       for n, (info, by) in sp.items()}}
    return lib, json.loads(json.dumps(meta))  # as run reads it


def _ranges(km: dict) -> str:
    return " ".join(f"{v['name']}[{v['min']}..{v['max'] if v['max'] < 1 << 30 else ''}:"
                    f"{len(v['launches'])}]" for v in km["variants"])


def build(out: Path, check: bool) -> int:
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    lib, meta = _build(STRUCTURED, SPARSE, out)
    lib.source_path.unlink()  # the fatbin is what travels
    (out / "cases.json").write_text(json.dumps(meta, indent=1))
    print(f"built {len(meta['structured'])} structured + {len(meta['sparse'])}×"
          f"{len(WEIGHT_DTYPES)} sparse kernel sets in {out} ({time.perf_counter() - t0:.0f} s; "
          "variant[min..max:launches])")
    for name, m in meta["structured"].items():
        print(f"  {name:17} {m['d']}/{m['f']} {m['params']:.1%} of dense: {_ranges(m)}")
    for name, m in meta["sparse"].items():
        for dt, km in m["kernels"].items():
            print(f"  {name + '/' + dt:24} {_ranges(km)}")
    return _check() if check else 0


# ------------------------------------------- run step's shared code (xp: numpy or cupy)

def _pick(km: dict, n: int) -> dict:
    """The variant the shim dispatches n tokens to."""
    return next(v for v in km["variants"] if v["min"] <= n <= v["max"])



def _stored(xp, w, dtype: str):
    """(the array the kernel reads, its float32 values) of float32 weights stored at
    ``dtype``: float16 rounds to nearest even (astype); bfloat16 is the upper half of the
    float32 bits rounded to nearest even (bit operations: no ml_dtypes on the GPU machine),
    passed as uint16."""
    if dtype == "float32":
        return w, w
    if dtype == "float16":
        h = w.astype(xp.float16)
        return h, h.astype(xp.float32)
    bits = xp.ascontiguousarray(w, dtype=xp.float32).view(xp.uint32)
    one, half, shift = xp.uint32(1), xp.uint32(0x7FFF), xp.uint32(16)
    top = ((bits + half + ((bits >> shift) & one)) >> shift).astype(xp.uint16)
    return top, (top.astype(xp.uint32) << shift).view(xp.float32)


def _as_stored(xp, w: dict, km: dict) -> tuple[dict, dict]:
    """(what the kernel reads, their float32 values) of every input in ``w``: the weights
    ``km["weights"]`` stored at ``km["dtype"]``, the rest float32."""
    stored = {k: _stored(xp, a, km["dtype"] if k in km["weights"] else "float32")
              for k, a in w.items()}
    return {k: s[0] for k, s in stored.items()}, {k: s[1] for k, s in stored.items()}


def _buffers(xp, v: dict, inputs: dict, n: int, d_out: int) -> dict:
    """Inputs, Y (NaN: anything unwritten shows) and the variant's workspace (float32)."""
    bufs = dict(inputs, Y=xp.full((n, d_out), xp.nan, xp.float32))
    for b, per in v["workspace"].items():
        bufs[b] = xp.empty(n * per, xp.float32)
    return bufs


def _launch_args(np, v: dict, bufs: dict, n: int) -> list:
    """(kernel, grid, block, args) per launch, in order; args in the kernel's parameter
    order, each buffer's dtype checked against the C type the kernel declares."""
    out = []
    for ln in v["launches"]:
        args = []
        for p, t in zip(ln["params"], ln["types"], strict=True):
            if t == "int":
                if p != "N":
                    raise ValueError(f"{ln['kernel']}: int parameter {p} is not N")
                args.append(np.int32(n))
                continue
            if str(bufs[p].dtype) != C_TYPES[t]:
                raise TypeError(f"{ln['kernel']}: {p} is {bufs[p].dtype}, the kernel reads {t}")
            args.append(bufs[p])
        out.append((ln["kernel"], tuple(_dim(g, n) for g in ln["grid"]), tuple(ln["block"]),
                    tuple(args)))
    return out


def _structured_weights(xp, m: dict, seed: int = 0) -> dict:
    """float32 weights of every input of the spec (scaled: values stay O(1)); layouts A
    [k, d_in/k, r/k] (the blocks), U [r, d_out of the projection], B [d_out]."""
    s, d, f = m["structure"], m["d"], m["f"]
    shapes = {"A1": (s["k1"], d // s["k1"], s["r1"] // s["k1"]), "U1": (s["r1"], f), "B1": (f,),
              "A2": (s["k2"], f // s["k2"], s["r2"] // s["k2"]), "U2": (s["r2"], d), "B2": (d,)}
    rng = xp.random.default_rng(seed)
    w = {}
    for name in m["args"][1:-1]:
        shape = shapes[name]
        scale = 0.1 if len(shape) == 1 else 1 / math.sqrt(shape[-2])
        w[name] = rng.standard_normal(shape, dtype=xp.float32) * xp.float32(scale)
    return w


def _blockdiag(xp, v, a):
    """float64 ``v [n, k·p]`` times the block-diagonal matrix of ``a [k, p, q]``."""
    k, p, q = a.shape
    blocks = v.reshape(v.shape[0], k, p).transpose(1, 0, 2)
    return xp.matmul(blocks, a.astype(xp.float64)).transpose(1, 0, 2).reshape(v.shape[0], k * q)


def _merged(xp, a, u):
    """The dense matrix of a projection (float64): blockdiag(A) [· U]."""
    k, p, q = a.shape
    full = xp.zeros((k * p, k * q), xp.float64)
    for i in range(k):
        full[i * p:(i + 1) * p, i * q:(i + 1) * q] = a[i]
    return full if u is None else full @ u.astype(xp.float64)


def _structured_reference(xp, x, w: dict, gelu):
    """float64, as fffc/reference.py's structured_ffn: h = act(blockdiag(x, A1)·U1 + B1),
    y = blockdiag(h, A2)·U2 + B2."""
    h = _blockdiag(xp, x.astype(xp.float64), w["A1"])
    if "U1" in w:
        h = h @ w["U1"].astype(xp.float64)
    if "B1" in w:
        h += w["B1"]
    y = _blockdiag(xp, gelu(h), w["A2"])
    if "U2" in w:
        y = y @ w["U2"].astype(xp.float64)
    if "B2" in w:
        y += w["B2"]
    return y


def _sparse_weights(xp, m: dict, seed: int = 0) -> dict:
    """bench_cuda.py's: W1 [d, f], W2 [f, d], WU [f, d]; sparsity s from b1 = −Φ⁻¹(1−s),
    dReLU: constant input channel 0 carries the gate shift, the up projection ~always > 0."""
    d, f, s = m["d"], m["f"], m["sparsity"]
    rng = xp.random.default_rng(seed)
    shift = -NormalDist().inv_cdf(1 - s)
    w = {"W1": rng.standard_normal((d, f), dtype=xp.float32) / xp.float32(d ** 0.5),
         "W2": rng.standard_normal((f, d), dtype=xp.float32) / xp.float32(f ** 0.5)}
    if m["gated"]:
        w["WU"] = rng.standard_normal((f, d), dtype=xp.float32) / xp.float32(d ** 0.5)
        w["W1"][0, :] = -shift  # x[:, 0] == 1: the gate's shift
        w["WU"][:, 0] = 3.0
    else:
        w["B1"] = xp.full(f, -shift, dtype=xp.float32)
        w["B2"] = (rng.standard_normal(d, dtype=xp.float32) * 0.1).astype(xp.float32)
    return w




def _dense(torch, tw: dict, activation: str, gated: bool):
    """The dense FFN in torch over the weights ``tw`` (their dtype: the GEMMs')."""
    act = torch.relu if activation == "relu" else torch.nn.functional.gelu  # exact erf

    def ffn(tx):
        h = tx @ tw["W1"]
        if "B1" in tw:
            h = h + tw["B1"]
        h = act(h)
        if gated:
            h = h * torch.relu(tx @ tw["WU"].T)
        y = h @ tw["W2"]
        return y + tw["B2"] if "B2" in tw else y

    return ffn


def _rel(xp, got, ref) -> float:
    return float(xp.abs(got.astype(xp.float64) - ref).max() / xp.abs(ref).max())


def _ok(err: float) -> bool:
    return math.isfinite(err) and err <= TOLERANCE


# ---------------------------------------------------------------------- run (the GPU)

def _gelu64(cp):
    return cp.ElementwiseKernel("float64 x", "float64 y",
                                "y = 0.5 * x * (1.0 + erf(x * 0.7071067811865476))",
                                "fffc_bench_gelu64")


def _launcher(mod, launches: list):
    calls = [(mod.get_function(k), grid, block, args) for k, grid, block, args in launches]

    def fffc():
        for fn, grid, block, args in calls:
            fn(grid, block, args)

    return fffc


def _graphs(cp, torch, dense: dict, fffc: dict) -> dict:
    """Every candidate captured in a CUDA graph: key → (launch, synchronize)."""
    runs = {}
    for key, fn in dense.items():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        tgraph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(tgraph):
            fn()
        runs[key] = (tgraph.replay, torch.cuda.synchronize)
    for key, fn in fffc.items():
        stream = cp.cuda.Stream(non_blocking=True)
        with stream:
            fn()
            stream.synchronize()
            stream.begin_capture()
            fn()
            graph = stream.end_capture()
        runs[key] = (functools.partial(graph.launch, stream), stream.synchronize)
    return runs


def _time(runs: dict, repeat: int, inner: int) -> dict:
    """Median ms per call of each candidate, interleaved: per round each one in turn gets
    an untimed launch, then a timed block of ``inner`` launches."""
    times = {k: [] for k in runs}
    for _ in range(repeat):
        for key, (launch, sync) in runs.items():
            launch()
            sync()
            t0 = time.perf_counter()
            for _ in range(inner):
                launch()
            sync()
            times[key].append((time.perf_counter() - t0) * 1e3 / inner)
    return {k: statistics.median(v) for k, v in times.items()}


def _inner(n: int, d: int, f: int) -> int:
    return 20 if n * d * f < 1e10 else 5


def _md(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def run_structured(cp, np, torch, mod, meta: dict, names, tokens, repeat: int) -> list[dict]:
    gelu = _gelu64(cp)
    rows = []
    print(_md(["case", "params", "tokens", "variant", "fffc ms", "dense fp32 ms", "speed-up",
               "rel err"]))
    print(_md(["---"] * 2 + ["---:"] * 6))
    for name, m in meta["structured"].items():
        if names and name not in names:
            continue
        w = _structured_weights(cp, m)
        inputs, values = _as_stored(cp, w, m)
        tw = {"W1": _merged(cp, values["A1"], values.get("U1")).astype(cp.float32),
              "W2": _merged(cp, values["A2"], values.get("U2")).astype(cp.float32),
              **{b: values[b] for b in ("B1", "B2") if b in values}}
        dense = _dense(torch, {k: torch.from_dlpack(a) for k, a in tw.items()}, m["activation"],
                       False)
        for n in tokens:
            v = _pick(m, n)
            x = _x(cp, n, m["d"], False, seed=n)
            bufs = _buffers(cp, v, dict(inputs, X=x), n, m["d"])
            fffc = _launcher(mod, _launch_args(np, v, bufs, n))
            fffc()
            cp.cuda.Device().synchronize()
            ref = _structured_reference(cp, x, values, gelu)
            err = _rel(cp, bufs["Y"], ref)
            dense_err = _rel(cp, cp.from_dlpack(dense(torch.from_dlpack(x))), ref)
            del ref
            tx = torch.from_dlpack(x)
            runs = _graphs(cp, torch, {"dense": functools.partial(dense, tx)}, {"fffc": fffc})
            t = _time(runs, repeat, _inner(n, m["d"], m["f"]))
            row = {"part": "structured", "case": name, "weights": m["dtype"], "tokens": n,
                   "variant": v["name"], "params": m["params"], "rel_err": err,
                   "dense_rel_err": dense_err, "fffc_ms": t["fffc"], "dense_ms": t["dense"],
                   "speedup": t["dense"] / t["fffc"]}
            rows.append(row)
            print(_md([name, f"{m['params']:.1%}", str(n), v["name"], f"{t['fffc']:.4f}",
                       f"{t['dense']:.4f}", f"{row['speedup']:.2f}x", f"{err:.1e}"]), flush=True)
    return rows


def run_sparse(cp, np, torch, mod, meta: dict, names, tokens, repeat: int) -> list[dict]:
    tdt = {"float16": torch.float16, "bfloat16": torch.bfloat16}
    rows = []
    print(_md(["case", "weights", "tokens", "variant", "zeros", "fffc ms", "fffc fp32-w ms",
               "vs fp32-w", "dense fp32 ms", "vs dense fp32", "dense 16-bit ms",
               "vs dense 16-bit", "rel err"]))
    print(_md(["---"] * 2 + ["---:"] * 11))
    for name, m in meta["sparse"].items():
        if names and name not in names:
            continue
        w = _sparse_weights(cp, m)
        inputs, values, dense = {}, {}, {}
        for dt, km in m["kernels"].items():
            inputs[dt], values[dt] = _as_stored(cp, w, km)
            if dt == "float32":
                tw = {k: torch.from_dlpack(a) for k, a in w.items()}
            else:  # the 16-bit model: the same rounded weights, biases in 16 bits too
                tw = {k: (torch.from_dlpack(inputs[dt][k]) if dt == "float16" else
                          torch.from_dlpack(inputs[dt][k].view(cp.int16)).view(torch.bfloat16))
                      if k in km["weights"] else torch.from_dlpack(a).to(tdt[dt])
                      for k, a in w.items()}
            dense[dt] = _dense(torch, tw, "relu", m["gated"])
        for n in tokens:
            x = _x(cp, n, m["d"], m["gated"], seed=n)
            tx = torch.from_dlpack(x)
            picked, fffc, err, dense_err, txs = {}, {}, {}, {}, {}
            zeros = 0.0
            for dt, km in m["kernels"].items():
                v = picked[dt] = _pick(km, n)
                bufs = _buffers(cp, v, dict(inputs[dt], X=x), n, m["d"])
                fffc[dt] = _launcher(mod, _launch_args(np, v, bufs, n))
                fffc[dt]()
                cp.cuda.Device().synchronize()
                ref, z = _sparse_reference(cp, x, values[dt], m["gated"])
                zeros = z if dt == "float32" else zeros
                err[dt] = _rel(cp, bufs["Y"], ref)
                txs[dt] = tx if dt == "float32" else tx.to(tdt[dt])
                y = dense[dt](txs[dt]).float()
                dense_err[dt] = _rel(cp, cp.from_dlpack(y), ref)
                del ref, y
            runs = _graphs(cp, torch,
                           {f"dense:{dt}": functools.partial(dense[dt], txs[dt]) for dt in dense},
                           {f"fffc:{dt}": fn for dt, fn in fffc.items()})
            t = _time(runs, repeat, _inner(n, m["d"], m["f"]))
            for dt in m["kernels"]:
                tf, tf32, td = t[f"fffc:{dt}"], t["fffc:float32"], t["dense:float32"]
                t16 = t[f"dense:{dt}"] if dt != "float32" else None
                row = {"part": "sparse", "case": name, "weights": dt, "tokens": n,
                       "variant": picked[dt]["name"], "zeros": zeros, "rel_err": err[dt],
                       "dense_rel_err": dense_err[dt], "fffc_ms": tf, "fffc_fp32_weights_ms": tf32,
                       "dense_ms": td, "speedup": td / tf, "speedup_vs_fp32_weights": tf32 / tf,
                       "dense16_ms": t16, "speedup_vs_dense16": t16 / tf if t16 else None}
                rows.append(row)
                print(_md([name, dt, str(n), picked[dt]["name"], f"{zeros:.1%}", f"{tf:.4f}",
                           f"{tf32:.4f}", f"{tf32 / tf:.2f}x", f"{td:.4f}", f"{td / tf:.2f}x",
                           f"{t16:.4f}" if t16 else "–", f"{t16 / tf:.2f}x" if t16 else "–",
                           f"{err[dt]:.1e}"]), flush=True)
    return rows


def run(root: Path, parts, names, structured_tokens, sparse_tokens, repeat: int,
        out: Path) -> int:
    import cupy as cp
    import numpy as np
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 dense: cuBLAS SGEMM
    torch.backends.cudnn.allow_tf32 = False
    meta = json.loads((root / "cases.json").read_text())
    unknown = set(names) - set(meta["structured"]) - set(meta["sparse"])
    if unknown:
        raise SystemExit(f"unknown cases {sorted(unknown)}; known: "
                         f"{[*meta['structured'], *meta['sparse']]}")
    mod = cp.RawModule(path=str(root / meta["fatbin"]))
    device = torch.cuda.get_device_name()
    print(f"device: {device}  torch {torch.__version__}  cupy {cp.__version__}\n")
    rows = []
    if "structured" in parts:
        rows += run_structured(cp, np, torch, mod, meta, names, structured_tokens, repeat)
        print()
    if "sparse" in parts:
        rows += run_sparse(cp, np, torch, mod, meta, names, sparse_tokens, repeat)
    out.write_text(json.dumps({"device": device, "torch": torch.__version__,
                               "cupy": cp.__version__, "repeat": repeat, "rows": rows}, indent=1))
    print(f"\nrows written to {out}")
    bad = [r for r in rows if not _ok(r["rel_err"])]
    for r in bad:
        print(f"rel err {r['rel_err']:.1e} > {TOLERANCE}: {r['case']} {r['weights']} "
              f"{r['tokens']} tokens ({r['variant']})")
    return 1 if bad else 0


# ------------------------------------------------------------- --check (here: emulator)

def _check() -> int:
    """Every variant of small-dim specs through the CPU emulator with run's own launch
    records, buffers, weights, rounding and reference; the torch baselines on the CPU."""
    import tempfile

    import ml_dtypes
    import numpy as np
    import torch

    from fffc.codegen.cuda_build import CudaVariant, Dim, Launch
    from fffc.verify.cuda_emu import Emulator
    from fffc.verify.reference import activation, sparse_ffn, structured_ffn

    failures = []

    def verdict(what: str, err: float, tol: float = TOLERANCE, note: str = "") -> None:
        ok = math.isfinite(err) and err <= tol
        if not ok:
            failures.append(what)
        print(f"  {what:40} {err:9.1e}  {'ok' if ok else 'FAIL'}{note}")

    # the bfloat16 rounding by bit operations is ml_dtypes' (round to nearest even)
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 1 << 32, 1 << 18, dtype=np.uint64).astype(np.uint32)
    bits[: 1 << 16] = (bits[: 1 << 16] & 0xFFFF0000) | 0x8000  # exact ties
    bits[1 << 16: 1 << 17] = (bits[1 << 16: 1 << 17] & 0xFFFF0000) | 0x7FFF
    sample = bits.view(np.float32)
    sample = sample[np.isfinite(sample)]
    got, vals = _stored(np, sample, "bfloat16")
    want = sample.astype(ml_dtypes.bfloat16)
    mism = int((got != want.view(np.uint16)).sum()
               + (vals.view(np.uint32) != want.astype(np.float32).view(np.uint32)).sum())
    print(f"check: bfloat16 rounding of {sample.size} float32 values vs ml_dtypes: "
          f"{mism} mismatches")
    if mism:
        failures.append("bfloat16 rounding")

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        lib, meta = _build(CHECK_STRUCTURED, CHECK_SPARSE, Path(tmp))
        source = lib.source_path.read_text()
    # the variants as run reads them, back into CudaVariants for the emulator (kernel
    # names carry the spec's key and the variant: the spec is the one built with them)
    spec_of = {cv.launches[0].kernel: cv.spec for cv in lib.variants}
    kernel_sets = [(f"{n}", m) for n, m in meta["structured"].items()]
    kernel_sets += [(f"{n}/{dt}", km) for n, m in meta["sparse"].items()
                    for dt, km in m["kernels"].items()]
    recorded = {}
    for _, km in kernel_sets:
        for v in km["variants"]:
            recorded[id(v)] = CudaVariant(
                spec_of[v["launches"][0]["kernel"]], v["name"], v["min"], v["max"],
                tuple(Launch(ln["kernel"], tuple(ln["params"]), tuple(Dim(*g) for g in ln["grid"]),
                             tuple(ln["block"])) for ln in v["launches"]),
                tuple(v["workspace"].items()))
    emu = Emulator(source, list(recorded.values()))
    print(f"check: built {len(recorded)} small variants ({time.perf_counter() - t0:.0f} s); "
          "each in the emulator vs fffc.verify.reference, max|err|/max|ref| (and run's own "
          "reference vs fffc.verify.reference)")

    def emulate(what: str, km: dict, inputs: dict, reference: tuple) -> None:
        """Y through the emulator, launched as run's records and buffers say, at the edges
        of every variant's token range."""
        for v in km["variants"]:
            for n in sorted({v["min"], min(v["max"], v["min"] + 2)}):
                x = inputs["X"](n)
                if _pick(km, n) is not v:
                    failures.append(f"{what}: {n} tokens do not pick {v['name']}")
                cv = recorded[id(v)]
                bufs = _buffers(np, v, dict(inputs, X=x), n, cv.spec.d_out)
                _launch_args(np, v, bufs, n)  # run's parameter order and dtype checks
                given = {k: (a.view(ml_dtypes.bfloat16) if a.dtype == np.uint16 else a)
                         for k, a in bufs.items() if k in km["args"][:-1]}
                mine, theirs = reference(x)
                diff = _rel(np, mine, theirs)
                verdict(f"{what} {v['name']} n={n}", _rel(np, emu.run(cv, given), theirs),
                        note="" if diff < 1e-12 else f"  run's reference differs: {diff:.1e}")
                if diff >= 1e-12:
                    failures.append(f"{what} reference")

    for name, m in meta["structured"].items():
        w = _structured_weights(np, m, seed=3)
        inputs, val = _as_stored(np, w, m)

        def reference(x, m=m, val=val):
            theirs = structured_ffn(x, val["A1"], val.get("U1"), val.get("B1"), val["A2"],
                                    val.get("U2"), val.get("B2"), activation_name=m["activation"])
            return (_structured_reference(np, x, val, functools.partial(activation,
                                                                        m["activation"])), theirs)

        def xs(n, m=m):
            return _x(np, n, m["d"], False, seed=n)

        emulate(name, m, dict(inputs, X=xs), reference)
        # the dense baseline (merged weights, torch fp32 on the CPU) computes the same FFN
        x = xs(5)
        tw = {"W1": _merged(np, val["A1"], val.get("U1")).astype(np.float32),
              "W2": _merged(np, val["A2"], val.get("U2")).astype(np.float32),
              **{b: val[b] for b in ("B1", "B2") if b in val}}
        y = _dense(torch, {k: torch.from_numpy(a) for k, a in tw.items()}, m["activation"],
                   False)(torch.from_numpy(x))
        verdict(f"{name} torch dense fp32 (merged) n=5", _rel(np, y.numpy(), reference(x)[1]))

    tdt = {"float16": torch.float16, "bfloat16": torch.bfloat16}
    for name, m in meta["sparse"].items():
        w = _sparse_weights(np, m, seed=3)
        for dt, km in m["kernels"].items():
            inputs, val = _as_stored(np, w, km)

            def reference(x, m=m, val=val):
                theirs = sparse_ffn(x, val["W1"], val.get("B1"), val["W2"], val.get("B2"),
                                    val.get("WU"), up_activation="relu" if m["gated"] else "none")
                return _sparse_reference(np, x, val, m["gated"])[0], theirs

            def xs(n, m=m):
                return _x(np, n, m["d"], m["gated"], seed=n)

            emulate(f"{name}/{dt}", km, dict(inputs, X=xs), reference)
            x = xs(5)
            if dt == "float32":
                tw = {k: torch.from_numpy(a) for k, a in w.items()}
                tx, tol = torch.from_numpy(x), TOLERANCE
            else:  # run's 16-bit model, from the uploaded bits
                tw = {k: (torch.from_numpy(inputs[k]) if dt == "float16" else
                          torch.from_numpy(inputs[k].view(np.int16)).view(torch.bfloat16))
                      if k in km["weights"] else torch.from_numpy(a).to(tdt[dt])
                      for k, a in w.items()}
                tx, tol = torch.from_numpy(x).to(tdt[dt]), 5e-2
            y = _dense(torch, tw, "relu", m["gated"])(tx).float()
            verdict(f"{name}/{dt} torch dense {dt} n=5", _rel(np, y.numpy(), reference(x)[1]),
                    tol)
    print(f"check: {'FAILED: ' + ', '.join(failures) if failures else 'all passed'}")
    return 1 if failures else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="step", required=True)
    b = sub.add_parser("build", help="here: build the fatbin and cases.json into DIR")
    b.add_argument("dir", type=Path)
    b.add_argument("--check", action="store_true",
                   help="also run small-dim variants through the CPU emulator (DIR/check)")
    r = sub.add_parser("run", help="on the GPU: check and time every case")
    r.add_argument("dir", type=Path)
    r.add_argument("--parts", default="structured,sparse")
    r.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    r.add_argument("--structured-tokens", default=",".join(map(str, STRUCTURED_TOKENS)))
    r.add_argument("--sparse-tokens", default=",".join(map(str, SPARSE_TOKENS)))
    r.add_argument("--repeat", type=int, default=15)
    r.add_argument("--json", type=Path, help="the rows (default: DIR/results.json)")
    a = p.parse_args()
    if a.step == "build":
        return build(a.dir, a.check)
    return run(a.dir, a.parts.split(","), [c for c in a.cases.split(",") if c],
               [int(t) for t in a.structured_tokens.split(",")],
               [int(t) for t in a.sparse_tokens.split(",")], a.repeat,
               a.json or a.dir / "results.json")


if __name__ == "__main__":
    sys.exit(main())
