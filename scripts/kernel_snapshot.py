"""Every kernel variant's PrimFunc for a fixed catalog of FFN sites, saved or compared.

A refactoring of codegen must leave the generated TIR unchanged. This script builds the
PrimFunc of every kernel variant (CPU: x86 AVX2, x86 AVX-512, aarch64; CUDA: float32 and
16-bit weights, as scheduled before CUDA codegen) for a catalog of sites that covers every
op, mode and variant family, and writes them as TVM JSON keyed by a stable name
(site / kernel role / target / variant). Symbols embed a content hash of the kernel spec;
the names and ``global_symbol`` attributes are normalized so specs may change form.

    python scripts/kernel_snapshot.py save OUT.json          # this checkout's kernels
    python scripts/kernel_snapshot.py compare A.json B.json  # structural_equal, each
    python scripts/kernel_snapshot.py check --base REV       # save REV's (a git worktree,
                                                             # its own copy of this script)
                                                             # and this checkout's, compare

``--sites REGEX`` keeps the catalog sites whose name matches. Nothing is compiled: the
whole catalog takes about a minute and a half on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (target family, mcpu): the CPU kernels depend on vector width and F16C
CPU_TARGETS = (("x86", "haswell"), ("x86", "skylake-avx512"), ("arm", None))


def _catalog():
    """(name, Site, extra kernel roles) for every op, mode and variant family."""
    import numpy as np

    from fffc.contract.sites import Site

    def site(name, kind, decision, act="relu", up="none", d=64, f=256, o=None, b1=True,
             b2=True, **kw):
        return Site(name=name, rule="catalog", kind=kind, activation=act, up_activation=up,
                    d_model=d, d_ff=f, d_out=o or d, has_b1=b1, has_b2=b2, dtype="float32",
                    decision=decision, **kw)

    c = np.zeros
    out = [
        site("relu_small", "dense", "exact", d=32, f=128),
        site("relu", "dense", "exact", d=128, f=512, o=96),
        site("relu_nobias", "dense", "exact", d=128, f=512, b1=False, b2=False),
        site("reglu", "gated", "exact", d=128, f=512, b1=False, b2=False),
        site("drelu", "gated", "exact", "relu", "relu", d=128, f=512, b1=False, b2=False),
        site("teal_gelu", "dense", "teal", "gelu", d=128, f=512, thresholds=(0.1, 0.2)),
        site("teal_in_only", "dense", "teal", "gelu_tanh", d=64, f=256, b1=False, b2=False,
             thresholds=(0.1, -1.0)),
        site("teal_centered_xh", "dense", "teal", "gelu", d=128, f=512, thresholds=(0.1, 0.2),
             centers=(c(128, np.float32), c(512, np.float32))),
        site("teal_centered_h", "dense", "teal", "gelu", d=128, f=512, b2=False,
             thresholds=(-1.0, 0.2), centers=(None, c(512, np.float32))),
        site("teal_swiglu", "gated", "teal", "silu", d=128, f=512, b1=False, b2=False,
             thresholds=(0.1, 0.2)),
        site("teal_swiglu_centered", "gated", "teal", "silu", d=128, f=512, b1=False,
             b2=False, thresholds=(0.1, 0.2), centers=(None, c(512, np.float32))),
        site("cats_swiglu", "gated", "cats", "silu", d=128, f=512, b1=False, b2=False,
             thresholds=(0.1, 0.2)),
        site("predictor_gelu", "dense", "predictor", "gelu", d=128, f=512,
             predictor={"rank": 16}),
        site("predictor_swiglu", "gated", "predictor", "silu", d=128, f=512, b1=False,
             b2=False, predictor={"rank": 32}),
        site("fff_1x3", "fff", "tree", "gelu", d=48, f=15, o=40, trees=1, depth=3,
             tie_break="gt"),
        site("fff_2x2_ge", "fff", "tree", "gelu", d=32, f=14, o=24, trees=2, depth=2,
             tie_break="ge"),
        site("fff_64x3_level", "fff", "tree", "gelu", d=768, f=960, o=768, trees=64,
             depth=3, tie_break="gt"),
    ]
    st = {
        "lowrank": dict(k1=1, r1=24, u1=True, k2=1, r2=40, u2=True),
        "blockdense": dict(k1=2, r1=24, u1=True, k2=4, r2=16, u2=True),
        "blockdiag": dict(k1=4, r1=48, u1=False, k2=2, r2=40, u2=False),
        "shuffle": dict(k1=4, r1=24, u1=True, k2=2, r2=16, u2=True, m1=2, s1=8),
        "shuffle_out": dict(k1=2, r1=24, u1=False, k2=2, r2=20, u2=False, m1=4, s1=12,
                            m2=4, s2=10),
    }
    for name, s in st.items():
        out.append(site(f"structured_{name}", "structured", "structured", "gelu", d=40,
                        f=48, o=40, structure={"first": name, "second": name, **s}))
    routing = {
        "topk1": dict(selection="topk", k=1, router="raw"),
        "topk2_sigmoid_bias": dict(selection="topk", k=2, router="sigmoid", router_bias=True),
        "topk_capacity": dict(selection="topk", k=0, router="sigmoid", router_bias=True,
                              capacity={"scale": 0.125, "round": "trunc", "min": 1}),
        "topk_ln": dict(selection="topk", k=2, router="raw", router_bias=True,
                        layer_norm_epsilon=1e-5),
        "threshold": dict(selection="threshold", k=0, router="raw", router_bias=True),
        "threshold_aux": dict(selection="threshold", k=0, router="sigmoid", router_bias=True,
                              selection_score=True, selection_bias=True),
        "threshold_aux_ln": dict(selection="threshold", k=0, router="raw",
                                 selection_score=True, layer_norm_epsilon=1e-5),
    }
    for name, r in routing.items():
        out.append(site(f"routed_{name}", "routed", "routed", "gelu", d=40, f=96,
                        routing={"x_coef": (1.0, 0.0), "delta_coef": (0.0, 1.0), **r}))
    return out


def _specs(site):
    """(role, KernelSpec) of every kernel a site's artifact builds: its own, and for
    structured sites the pre-merged dense path; routed: route, FFN, combine."""
    from fffc.contract.kernels import merged_spec
    from fffc.contract.modes import kernel_specs

    specs = kernel_specs(site)
    roles = (["route", "ffn", "combine"] if len(specs) == 3 else ["main"])
    out = list(zip(roles, specs, strict=True))
    if site.kind == "structured":
        out.append(("merged", merged_spec(site)))
    return out


def _normalized(func, symbol: str):
    return func.with_attr("global_symbol", symbol)


def _cpu_funcs(spec, family: str, mcpu: str | None) -> dict:
    """variant → PrimFunc of a spec's CPU kernels for one target."""
    from fffc.codegen import build
    from fffc.codegen.schedules import family as fam

    f = fam(family)
    funcs, table = build._funcs([spec], f, f.target(mcpu))
    return {k.variant: funcs[k.symbol] for k in table}


def _cuda_funcs(specs: list, counted: list) -> dict:
    """name (with the spec's key) → scheduled PrimFunc of every CUDA launch."""
    from fffc.codegen import cuda_build
    from fffc.codegen.schedules import family

    captured = {}

    class Stop(Exception):
        pass

    def capture(funcs, arch="sm_90"):
        captured.update(funcs)
        raise Stop

    real = cuda_build.emit_kernels
    cuda_build.emit_kernels = capture
    try:
        cuda_build.emit(specs, family("cuda"), "sm_90", counted)
    except Stop:
        pass
    finally:
        cuda_build.emit_kernels = real
    return captured


def save(path: Path, sites: str = "") -> int:
    import re

    import tvm

    out: dict[str, str] = {}
    for site in _catalog():
        if sites and not re.search(sites, site.name):
            continue
        specs = _specs(site)
        for role, spec in specs:
            for family, mcpu in CPU_TARGETS:
                for variant, f in _cpu_funcs(spec, family, mcpu).items():
                    name = f"{site.name}/{role}/{family}-{mcpu or 'generic'}/{variant}"
                    out[name] = tvm.ir.save_json(_normalized(f, name))
        for dtype in ("float32", "float16", "bfloat16"):
            if dtype != "float32" and site.kind == "routed":
                continue
            own = [s.stored_as(dtype) for r, s in specs if r != "ffn"]
            counted = [s.stored_as(dtype) for r, s in specs if r == "ffn"]
            keys = {s.key: r for r, s in specs}
            keys.update({s.stored_as(dtype).key: r for r, s in specs})
            for name, f in _cuda_funcs(own, counted).items():
                key = next(k for k in keys if f"_{k}_" in name)
                stable = name.replace(f"_{key}_", f"_{site.name}.{keys[key]}_")
                label = f"{site.name}/{keys[key]}/cuda-{dtype}/{stable}"
                out[label] = tvm.ir.save_json(_normalized(f, label))
        print(f"{site.name}: {len(out)} PrimFuncs so far", file=sys.stderr)
    path.write_text(json.dumps(out, sort_keys=True))
    print(f"{len(out)} PrimFuncs written to {path}")
    return 0


def compare(a: Path, b: Path) -> int:
    import tvm
    import tvm_ffi

    old, new = json.loads(a.read_text()), json.loads(b.read_text())
    missing, added = sorted(set(old) - set(new)), sorted(set(new) - set(old))
    differ = []
    for k in sorted(set(old) & set(new)):
        f, g = tvm.ir.load_json(old[k]), tvm.ir.load_json(new[k])
        if not tvm_ffi.structural_equal(f, g):
            differ.append(k)
            print(f"differs: {k}: first mismatch {tvm_ffi.get_first_structural_mismatch(f, g)}")
    for k in missing:
        print(f"only in {a.name}: {k}")
    for k in added:
        print(f"only in {b.name}: {k}")
    same = len(set(old) & set(new)) - len(differ)
    print(f"{same} PrimFuncs structurally equal, {len(differ)} differ, {len(missing)} missing, "
          f"{len(added)} added")
    return 1 if (missing or added or differ) else 0


def check(base: str, sites: str = "") -> int:
    """Save ``base``'s kernels from a temporary worktree (its own script and code) and this
    checkout's, and compare them."""
    with tempfile.TemporaryDirectory(prefix="fffc-snapshot-") as tmp:
        tree = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), base],
                       check=True, capture_output=True)
        try:
            env = dict(os.environ, PYTHONPATH=str(tree))
            subprocess.run([sys.executable, str(tree / "scripts" / "kernel_snapshot.py"), "save",
                            str(Path(tmp) / "base.json"), *(["--sites", sites] if sites else [])],
                           check=True, env=env, cwd=tree)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                           check=False, capture_output=True)
        save(Path(tmp) / "head.json", sites)
        return compare(Path(tmp) / "base.json", Path(tmp) / "head.json")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("save")
    s.add_argument("out", type=Path)
    s.add_argument("--sites", default="", help="only catalog sites whose name matches (regex)")
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    k = sub.add_parser("check")
    k.add_argument("--base", required=True)
    k.add_argument("--sites", default="", help="only catalog sites whose name matches (regex)")
    args = p.parse_args(argv)
    if args.cmd == "save":
        return save(args.out, args.sites)
    if args.cmd == "compare":
        return compare(args.a, args.b)
    return check(args.base, args.sites)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
