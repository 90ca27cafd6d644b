"""CUDA int4 FFNs at 1 token: fffc's int4 exact kernels against ONNX Runtime's CUDA
``MatMulNBits`` dense FFN (CUDAExecutionProvider), side by side.

Two steps, because the GPU machine has no TVM and the build machine no GPU:

    python bench/bench_q4_cuda.py build DIR [--check]   # here: fatbins and launches (< 1 MB)
    PYTHONPATH=. python3 bench/bench_q4_cuda.py run DIR [--rounds 15] [--json F]  # on the GPU

``run`` needs numpy, onnx, cupy and onnxruntime-gpu, and fffc's NumPy modules (no TVM): it
makes the weights, ONNX Runtime's quantization of them, the dense model and the references
itself (seeded, as ``build --check`` does). Without a GPU, CuPy or ONNX Runtime's CUDA EP it
prints one line saying which and exits 2.

Cases (bench_quant_ffn.py's weights and sparsity): dReLU (relu(gate) ⊙ relu(up)) 2048/8192
and 4096/11008, the gate's bias B1 = Φ⁻¹(0.1) so that ~90% of the neurons are closed, every
projection int4 by ONNX Runtime's own quantizer (block 32, symmetric). Sides:

  * ``ort L4``: the dense FFN, each projection a ``MatMulNBits`` node at ``accuracy_level`` 4
    (what the GenAI builder writes), in an ONNX Runtime session on the CUDA EP only (CPU
    fallback disabled: every node on the GPU), x and y bound on the device (IOBinding), the
    session replaying a CUDA graph (``enable_cuda_graph``) where ONNX Runtime accepts it;
  * ``fffc f32`` / ``fffc i8``: ``kernels/exact_q4_cuda.py``'s ``int4_1`` variant (x in
    float32; x rounded to int8 per block as accuracy_level 4, ``__dp4a`` dots) on the same
    codes and scales (W2 re-laid out at build time), its launches in order captured in a
    CUDA graph by CuPy.

Each round times ``inner`` calls of every side in turn (synchronized, wall clock); the ratio
``ort / fffc`` of each round is summarized min / median / max. Before timing, every side's y
is compared with a float64 reference on the dequantized weights (x rounded for ``i8`` and
``ort L4``, which rounds the down projection's input too: its error is that rounding),
max |err| / max |ref|; ``run`` exits 1 where fffc's error exceeds 1e-4.

``build --check`` also builds a small case (256/1024) and runs its fffc sides through fffc's
CPU emulator of the emitted CUDA, with the launches and workspace as ``run`` reads them and
``run``'s inputs and references.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path
from statistics import NormalDist

CASES = {"drelu-2048": (2048, 8192), "drelu-4096": (4096, 11008)}
CHECK_CASES = {"drelu-256": (256, 1024)}  # build --check: small enough to emulate
SPARSITY = 0.9
BLOCK = 32
FORMATS = {"f32": False, "i8": True}  # fffc side → x rounded to int8 per block
TOL = 1e-4


def _spec(d: int, f: int):
    from fffc.contract.kernels import SparseSpec
    from fffc.contract.kinds import SparseMode

    return SparseSpec("relu", "relu", SparseMode.EXACT, d, f, d, True, False, True)


def _data(d: int, f: int) -> dict:
    """One case's weights (bench_quant_ffn's, seed 0), quantized by ONNX Runtime's quantizer:
    the kernels' inputs by argument name (X: one token), the dense ``MatMulNBits`` FFN at
    accuracy_level 4, the float64 reference of each fffc side, the fraction of closed gates.
    NumPy, onnx and onnxruntime only (fffc's NumPy modules): ``run`` makes them on the GPU
    machine, so that only the fatbins travel."""
    import numpy as np

    from fffc.contract.int4 import columns, dequantize, quantize_x
    from fffc.verify import matmul_nbits as mn
    from fffc.verify.reference import sparse_ffn

    rng = np.random.default_rng(0)
    w = _weights(d, f, SPARSITY, rng)
    q = {k: mn.quantize(w[k], BLOCK) for k in ("W1", "W2", "WU")}
    w2 = columns(q["W2"])
    x = rng.standard_normal((1, d)).astype(np.float32)
    x[:, 0] = 1.0
    inputs = {"X": x, "W1": q["W1"].codes, "W1S": q["W1"].scales, "B1": w["B1"],
              "W2": w2.codes, "W2S": w2.scales, "WU": q["WU"].codes, "WUS": q["WU"].scales}
    deq = {k: dequantize(m) for k, m in q.items()}
    refs = {side: sparse_ffn(quantize_x(x, BLOCK) if i8 else x, deq["W1"], w["B1"],
                             deq["W2"], None, deq["WU"].T, up_activation="relu")
            for side, i8 in FORMATS.items()}
    closed = float(np.mean(x.astype(np.float64) @ deq["W1"] + w["B1"] <= 0))
    model = mn.ffn_model(q["W1"], q["W2"], q["WU"], w["B1"], None, "relu", accuracy_level=4)
    return {"inputs": inputs, "model": model, "refs": refs, "closed": closed}


def _weights(d: int, f: int, s: float, rng) -> dict:
    """bench_quant_ffn.py's dReLU weights: gates positive with probability 1 − s (B1), the
    up projection positive on nearly every neuron (its row 0 is +3, x[0] = 1)."""
    import numpy as np

    w = {"W1": rng.standard_normal((d, f)) / np.sqrt(d),
         "B1": np.full(f, NormalDist().inv_cdf(1 - s)),
         "W2": rng.standard_normal((f, d)) / np.sqrt(f),
         "WU": rng.standard_normal((d, f)) / np.sqrt(d)}
    w["WU"][0] = 3.0
    return {k: np.asarray(v, np.float32) for k, v in w.items()}


def build(out: Path, check: bool = False) -> None:
    from fffc.codegen import q4_layout as ql
    from fffc.codegen.cuda_build import compile_fatbin, emit_kernels
    from fffc.codegen.kernels import exact_q4_cuda as q4c

    out.mkdir(parents=True, exist_ok=True)
    meta = {}
    for name, (d, f) in (CHECK_CASES | CASES if check else CASES).items():
        spec = _spec(d, f)
        case = out / name
        case.mkdir(exist_ok=True)
        funcs, variants = {}, {}
        for side, i8 in FORMATS.items():
            fmt = ql.Q4Format(BLOCK, False, i8)
            t = q4c.q4_cuda_tiling(spec, fmt, 1)
            vf = q4c.exact_q4_cuda_funcs(spec, fmt, t, f"q4_{side}")
            funcs.update(vf)
            variants[side] = {"funcs": list(vf), "workspace": q4c.workspace(spec, t)}
        source, launches = emit_kernels(funcs)
        (case / "q4.cu").write_text(source)
        compile_fatbin(case / "q4.cu", case / "q4.fatbin", ("sm_80", "sm_90"))
        if name not in CHECK_CASES:
            (case / "q4.cu").unlink()  # the fatbin is what travels
        for v in variants.values():
            v["launches"] = [{"kernel": launches[n].kernel, "params": list(launches[n].params),
                              "grid": [[g.a, g.b, g.c] for g in launches[n].grid],
                              "block": list(launches[n].block)} for n in v.pop("funcs")]
        meta[name] = {"d": d, "f": f, "variants": variants}
    (out / "cases.json").write_text(json.dumps(
        {k: v for k, v in meta.items() if k not in CHECK_CASES}, indent=1))
    print(f"built {len(CASES)} cases in {out}")
    if check:
        for name in CHECK_CASES:
            _emulate(out, name, meta[name])


def _emulate(root: Path, name: str, m: dict) -> None:
    """Each fffc side of a small case in fffc's CUDA emulator, with the launches and
    workspace as ``run`` reads them and ``run``'s inputs and references."""
    import numpy as np

    from fffc.codegen.cuda_build import CudaVariant, Dim, Launch
    from fffc.verify.cuda_emu import Emulator

    spec = _spec(m["d"], m["f"])
    variants = {side: CudaVariant(spec, side, 1, 1, tuple(
        Launch(ln["kernel"], tuple(ln["params"]), tuple(Dim(*g) for g in ln["grid"]),
               tuple(ln["block"])) for ln in v["launches"]), tuple(v["workspace"].items()))
        for side, v in json.loads(json.dumps(m["variants"])).items()}
    emu = Emulator((root / name / "q4.cu").read_text(), list(variants.values()))
    data = _data(m["d"], m["f"])
    for side, v in variants.items():
        y = emu.run(v, data["inputs"])
        ref = data["refs"][side]
        err = float(np.abs(y - ref).max() / np.abs(ref).max())
        print(f"check {name} fffc {side} (emulated): rel err {err:.2e}, gates closed "
              f"{data['closed']:.1%}")
        if not err <= TOL:
            raise SystemExit(f"bench_q4_cuda: {name} fffc {side}: rel err {err:.2e} > {TOL}")


def _unavailable() -> str | None:
    """Why ``run`` cannot run here (one line), or None."""
    try:
        import cupy as cp
    except ImportError as e:
        return f"no CuPy ({e})"
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            return "no CUDA device"
    except Exception as e:  # no driver
        return f"no CUDA device ({str(e).splitlines()[0]})"
    try:
        import onnxruntime as ort
    except ImportError as e:
        return f"no onnxruntime ({e})"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return (f"onnxruntime {ort.__version__} has no CUDAExecutionProvider "
                "(onnxruntime-gpu is needed)")
    return None


def _dim(g, n):
    a, b, c = g
    return (a * n + b) // c


def _ort_side(cp, np, ort, model, x, d: int):
    """(call, sync, y, note) of the dense FFN on the CUDA EP with x, y on the device."""
    y = cp.empty((1, d), cp.float32)
    for graph in (True, False):
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        opts = {"enable_cuda_graph": "1"} if graph else {}
        try:
            sess = ort.InferenceSession(model.SerializeToString(), so,
                                        providers=[("CUDAExecutionProvider", opts)])
            io = sess.io_binding()
            io.bind_input("x", "cuda", 0, np.float32, list(x.shape), x.data.ptr)
            io.bind_output("y", "cuda", 0, np.float32, list(y.shape), y.data.ptr)
            sess.run_with_iobinding(io)  # the first run captures the graph
            sess.run_with_iobinding(io)
        except Exception as e:
            if graph:
                continue
            raise RuntimeError(f"ONNX Runtime's CUDA EP cannot run the MatMulNBits FFN: "
                               f"{str(e).splitlines()[0]}") from e
        note = "CUDA graph" if graph else "no CUDA graph (ONNX Runtime refused one)"
        return functools.partial(sess.run_with_iobinding, io), io.synchronize_outputs, y, note
    raise AssertionError("unreachable")


def _fffc_side(cp, np, mod, v: dict, bufs: dict):
    """(call, sync, y) of one fffc variant at 1 token: its launches in a CUDA graph."""
    bufs = dict(bufs, Y=cp.full_like(bufs["X"], cp.nan))
    for b, per in v["workspace"].items():
        bufs[b] = cp.empty(per, cp.float32)
    launches = [(mod.get_function(ln["kernel"]), tuple(_dim(g, 1) for g in ln["grid"]),
                 tuple(ln["block"]), tuple(np.int32(1) if p == "N" else bufs[p]
                                           for p in ln["params"]))
                for ln in v["launches"]]

    def call():
        for fn, grid, block, args in launches:
            fn(grid, block, args)

    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        call()
        stream.synchronize()
        stream.begin_capture()
        call()
        graph = stream.end_capture()
    return (lambda: graph.launch(stream)), stream.synchronize, bufs["Y"]


def run(root: Path, rounds: int, inner: int) -> tuple[list[dict], bool]:
    import cupy as cp
    import numpy as np
    import onnxruntime as ort

    meta = json.loads((root / "cases.json").read_text())
    props = cp.cuda.runtime.getDeviceProperties(0)
    print(f"device: {props['name'].decode()}  onnxruntime {ort.__version__}  "
          f"cupy {cp.__version__}  ({rounds} rounds x {inner} calls per side)")
    rows, ok = [], True
    for name, m in meta.items():
        data = _data(m["d"], m["f"])
        bufs = {k: cp.asarray(v) for k, v in data["inputs"].items()}
        mod = cp.RawModule(path=str(root / name / "q4.fatbin"))
        call, sync, y_ort, note = _ort_side(cp, np, ort, data["model"], bufs["X"], m["d"])
        sides = {"ort L4": (call, sync, y_ort)}
        for side, v in m["variants"].items():
            sides[f"fffc {side}"] = _fffc_side(cp, np, mod, v, bufs)
        errs = {}
        for key, (call, sync, y) in sides.items():
            call()
            sync()
            ref = data["refs"]["i8" if key == "ort L4" else key.split()[1]]
            errs[key] = float(np.abs(cp.asnumpy(y) - ref).max() / np.abs(ref).max())
            if key != "ort L4" and not errs[key] <= TOL:
                ok = False
        times = {k: [] for k in sides}
        for _ in range(rounds):
            for key, (call, sync, _y) in sides.items():
                sync()
                t0 = time.perf_counter()
                for _ in range(inner):
                    call()
                sync()
                times[key].append((time.perf_counter() - t0) * 1e6 / inner)
        print(f"\n{name}: d {m['d']}, d_ff {m['f']}, dReLU, gates closed {data['closed']:.1%}; "
              f"ORT: {note}")
        print(f"{'side':<10} {'min us':>8} {'med us':>8} {'max us':>8} {'rel err':>9}")
        for key, ts in times.items():
            print(f"{key:<10} {min(ts):8.1f} {statistics.median(ts):8.1f} {max(ts):8.1f} "
                  f"{errs[key]:9.2e}")
        for key in sides:
            if key == "ort L4":
                continue
            r = sorted(a / b for a, b in zip(times["ort L4"], times[key], strict=True))
            print(f"  ort L4 / {key}: min {r[0]:.2f}x  median {statistics.median(r):.2f}x  "
                  f"max {r[-1]:.2f}x")
            rows.append({"case": name, "side": key, "ort_us": statistics.median(times["ort L4"]),
                         "fffc_us": statistics.median(times[key]), "ratio_min": r[0],
                         "ratio_median": statistics.median(r), "ratio_max": r[-1],
                         "rel_err": errs[key], "ort_rel_err": errs["ort L4"],
                         "ort_cuda_graph": note == "CUDA graph"})
    return rows, ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("step", choices=["build", "run"])
    p.add_argument("dir", type=Path)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--inner", type=int, default=50)
    p.add_argument("--json", type=Path)
    p.add_argument("--check", action="store_true",
                   help="build: also a small case, every fffc side run by the CUDA emulator")
    a = p.parse_args()
    if a.step == "build":
        build(a.dir, a.check)
        return 0
    why = _unavailable()
    if why:
        print(f"bench_q4_cuda: cannot run here: {why}")
        return 2
    try:
        rows, ok = run(a.dir, a.rounds, a.inner)
    except RuntimeError as e:
        print(f"bench_q4_cuda: {e}")
        return 2
    (a.json or a.dir / "results.json").write_text(json.dumps(rows, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
