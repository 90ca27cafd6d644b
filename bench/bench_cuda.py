"""CUDA SparseFFN kernels against the NumPy-equivalent float64 reference and cuBLAS dense.

Two steps, because the GPU machine has no TVM and the build machine no GPU:

    python bench/bench_cuda.py build DIR     # here: fffc builds each case's fatbin + launches
    python bench/bench_cuda.py run DIR       # on the GPU: CuPy launches, PyTorch = cuBLAS

``run`` needs only numpy, cupy and torch (no fffc, no TVM). Per case and token count it
launches the variant the shim would pick, compares Y with a float64 reference computed on
the GPU (max |err| / max |ref|) — launched by CuPy and, again, by the shim's own C++
launcher (tests/runtime/cuda_harness.cc over runtime/src/cuda) —, then times fffc and the dense FFN in torch (fp32, TF32
off: cuBLAS SGEMM) side by side, interleaved, each side captured in a CUDA graph (GPU
time, not Python launch cost); medians are compared.

Cases: BERT-base ReLU FFN (768/3072, biases) and LLaMA-7B-sized dReLU FFN (4096/11008, no
biases, as TurboSparse), activation sparsity set as in bench_sparse_ffn.py (b1 = −Φ⁻¹(1−s);
dReLU: constant input channel 0 carries the gate shift, the up projection is ~always > 0).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from statistics import NormalDist

CASES = [
    # name, d, f, gated, sparsity
    ("bert-relu-90", 768, 3072, False, 0.90),
    ("bert-relu-50", 768, 3072, False, 0.50),
    ("llama-drelu-90", 4096, 11008, True, 0.90),
]
TOKENS = (1, 8, 128, 4096)


HARNESS = Path(__file__).resolve().parent.parent / "tests" / "runtime" / "cuda_harness.cc"


def build(out: Path) -> None:
    from fffc.codegen.build import build_kernel_library
    from fffc.codegen.schedules import family
    from fffc.contract.kernels import SparseSpec
    from fffc.package.native import build_shim

    out.mkdir(parents=True, exist_ok=True)
    meta = {}
    for name, d, f, gated, s in CASES:
        spec = SparseSpec("relu", "relu" if gated else "none", "exact", d, f, d,
                          not gated, not gated, gated)
        full = build_kernel_library([spec], family("cuda"), out / name)
        lib = full.cuda
        # the shim's own launch path (driver API, embedded fatbin, workspace), minus ORT
        build_shim(full, out / name, extra_sources=(HARNESS,), name="libfffc_harness.so")
        full.object_path.unlink()
        meta[name] = {
            "d": d, "f": f, "gated": gated, "sparsity": s, "fatbin": f"{name}/{lib.fatbin_path.name}",
            "harness": f"{name}/libfffc_harness.so",
            "variants": [{"name": v.variant, "min": v.min_tokens, "max": v.max_tokens,
                          "workspace": dict(v.workspace),
                          "launches": [{"kernel": ln.kernel, "params": list(ln.params),
                                        "grid": [[g.a, g.b, g.c] for g in ln.grid],
                                        "block": list(ln.block)} for ln in v.launches]}
                         for v in lib.variants],
        }
        (out / name / lib.source_path.name).unlink()  # the fatbin is what travels
    (out / "cases.json").write_text(json.dumps(meta, indent=1))
    print(f"built {len(meta)} cases in {out}")


def _weights(cp, d, f, gated, s, seed=0):
    rng = cp.random.default_rng(seed)
    shift = -NormalDist().inv_cdf(1 - s)
    w = {"W1": rng.standard_normal((d, f), dtype=cp.float32) / d ** 0.5,
         "W2": rng.standard_normal((f, d), dtype=cp.float32) / f ** 0.5}
    if gated:
        w["WU"] = rng.standard_normal((f, d), dtype=cp.float32) / d ** 0.5
        w["W1"][0, :] = -shift  # x[:, 0] == 1: the gate's shift
        w["WU"][:, 0] = 3.0
    else:
        w["B1"] = cp.full(f, -shift, dtype=cp.float32)
        w["B2"] = (rng.standard_normal(d, dtype=cp.float32) * 0.1).astype(cp.float32)
    return w


def _x(cp, n, d, gated, seed):
    x = cp.random.default_rng(seed).standard_normal((n, d), dtype=cp.float32)
    if gated:
        x[:, 0] = 1.0
    return x


def _reference(cp, x, w, gated):
    xd = x.astype(cp.float64)
    h = xd @ w["W1"].astype(cp.float64)
    if "B1" in w:
        h += w["B1"]
    h = cp.maximum(h, 0)
    if gated:
        h *= cp.maximum(xd @ w["WU"].astype(cp.float64).T, 0)
    y = h @ w["W2"].astype(cp.float64)
    if "B2" in w:
        y += w["B2"]
    return y, float((h == 0).mean())


def _dim(g, n):
    a, b, c = g
    return (a * n + b) // c


def _shim_launch(cp, lib, variant: str, tensors: dict, n: int) -> None:
    import ctypes

    index = next(i for i in range(lib.fffc_test_num_entries())
                 if lib.fffc_test_entry(i, ctypes.byref(ctypes.c_longlong()),
                                        ctypes.byref(ctypes.c_longlong())) == variant.encode())
    names = (ctypes.c_char_p * len(tensors))(*[k.encode() for k in tensors])
    ptrs = (ctypes.c_ulonglong * len(tensors))(*[a.data.ptr for a in tensors.values()])
    stream = cp.cuda.get_current_stream()
    err = lib.fffc_test_launch(index, len(tensors), names, ptrs, n, ctypes.c_void_p(stream.ptr))
    stream.synchronize()
    if err:
        raise RuntimeError(f"shim launch of {variant}: {err.decode()}")


def _harness(root: Path, m: dict):
    import ctypes

    lib = ctypes.CDLL(str(root / m["harness"]))
    lib.fffc_test_entry.restype = ctypes.c_char_p
    lib.fffc_test_launch.restype = ctypes.c_char_p
    return lib


def _measure(cp, np, torch, mod, m: dict, w: dict, tw: dict, n: int, repeat: int,
             harness=None, profile: bool = False, variant: str | None = None):
    """(variant, zeros, rel err, dense ms, fffc ms) of one case at n tokens."""
    v = next(v for v in m["variants"]
             if (v["name"] == variant if variant else v["min"] <= n <= v["max"]))
    x = _x(cp, n, m["d"], m["gated"], seed=n)
    bufs = dict(w, X=x, Y=cp.empty((n, m["d"]), cp.float32))
    for b, per in v["workspace"].items():
        bufs[b] = cp.empty(n * per, cp.float32)
    launches = [(mod.get_function(ln["kernel"]),
                 tuple(_dim(g, n) for g in ln["grid"]), tuple(ln["block"]),
                 tuple(np.int32(n) if p == "N" else bufs[p] for p in ln["params"]))
                for ln in v["launches"]]

    def fffc():
        for fn, grid, block, args in launches:
            fn(grid, block, args)

    tx = torch.from_dlpack(x)

    def dense():
        h = tx @ tw["W1"]
        if "B1" in tw:
            h = h + tw["B1"]
        h = torch.relu(h)
        if m["gated"]:
            h = h * torch.relu(tx @ tw["WU"].T)
        y = h @ tw["W2"]
        return y + tw["B2"] if "B2" in tw else y

    fffc()
    ref, zeros = _reference(cp, x, w, m["gated"])
    err = float(cp.abs(bufs["Y"] - ref).max() / cp.abs(ref).max())
    if harness is not None:  # the same variant through the shim's C++ launcher
        y2 = cp.full((n, m["d"]), cp.nan, cp.float32)
        _shim_launch(cp, harness, v["name"], dict(w, X=x, Y=y2), n)
        err = max(err, float(cp.abs(y2 - ref).max() / cp.abs(ref).max()))
    if profile:
        for ln, (fn, grid, block, args) in zip(v["launches"], launches, strict=True):
            start, end = cp.cuda.Event(), cp.cuda.Event()
            start.record()
            for _ in range(20):
                fn(grid, block, args)
            end.record()
            end.synchronize()
            print(f"    {ln['kernel'].split('_')[-2]:7} grid={grid} block={block}: "
                  f"{cp.cuda.get_elapsed_time(start, end) / 20 * 1e3:.1f} us")
    # CUDA graphs on both sides: GPU time, not Python launch overhead
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        fffc()
        stream.synchronize()
        stream.begin_capture()
        fffc()
        graph = stream.end_capture()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        dense()
    torch.cuda.current_stream().wait_stream(side)
    tgraph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(tgraph):
        dense()
    runs = {"dense": (tgraph.replay, torch.cuda.synchronize),
            "fffc": (lambda: graph.launch(stream), stream.synchronize)}
    inner = 20 if n * m["d"] * m["f"] < 1e10 else 5
    times = {"dense": [], "fffc": []}
    for _ in range(repeat):
        for key, (launch, sync) in runs.items():
            launch()
            sync()
            t0 = time.perf_counter()
            for _ in range(inner):
                launch()
            sync()
            times[key].append((time.perf_counter() - t0) * 1e3 / inner)
    td, tf = statistics.median(times["dense"]), statistics.median(times["fffc"])
    return v["name"], zeros, err, td, tf


def run(root: Path, tokens, repeat: int, shim: bool = True, profile: bool = False,
        also: tuple[str, ...] = ()) -> list[dict]:
    import cupy as cp
    import numpy as np
    import torch

    meta = json.loads((root / "cases.json").read_text())
    rows = []
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  cupy {cp.__version__}")
    print(f"{'case':16} {'tokens':>6} {'variant':>8} {'zeros':>6} {'rel err':>9} {'dense ms':>9} "
          f"{'fffc ms':>9} {'speed-up':>8}")
    for name, m in meta.items():
        mod = cp.RawModule(path=str(root / m["fatbin"]))
        harness = _harness(root, m) if shim else None
        w = _weights(cp, m["d"], m["f"], m["gated"], m["sparsity"])
        tw = {k: torch.from_dlpack(v) for k, v in w.items()}
        for n in tokens:
            # the variant the shim picks, then each of `also` (crossovers)
            for forced in [None, *[v["name"] for v in m["variants"] if v["name"] in also]]:
                variant, zeros, err, td, tf = _measure(cp, np, torch, mod, m, w, tw, n, repeat,
                                                       harness, profile, forced)
                row = {"case": name, "tokens": n, "variant": variant, "picked": forced is None,
                       "zeros": zeros, "rel_err": err, "dense_ms": td, "fffc_ms": tf,
                       "speedup": td / tf}
                rows.append(row)
                mark = "" if forced is None else " (forced)"
                print(f"{name:16} {n:6d} {variant:>8} {zeros:6.1%} {err:9.1e} {td:9.4f} {tf:9.4f} "
                      f"{td / tf:7.2f}x{mark}")
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("step", choices=["build", "run"])
    p.add_argument("dir", type=Path)
    p.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--json", type=Path)
    p.add_argument("--no-shim", action="store_true", help="skip the shim launcher check")
    p.add_argument("--profile", action="store_true", help="time each launch alone")
    p.add_argument("--also", default="", help="comma-separated variants to time at every "
                   "token count besides the one picked (crossovers), e.g. decode16,gemm")
    a = p.parse_args()
    if a.step == "build":
        build(a.dir)
        return 0
    rows = run(a.dir, [int(t) for t in a.tokens.split(",")], a.repeat, not a.no_shim, a.profile,
               tuple(v for v in a.also.split(",") if v))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return 1 if any(r["rel_err"] > 1e-4 for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
