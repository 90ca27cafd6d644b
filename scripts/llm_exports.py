"""Catalog of the decoder exports the tests build: per model, its inputs, its outputs and what
``fffc inspect`` finds (sites, kinds, near misses, notes).

    python scripts/llm_exports.py [--root DIR] [--only REGEX] [--json OUT]

Builds every (family, exporter) of ``tests.fixtures.llm.CASES`` under ``--root`` (default
``$FFFC_LLM_CACHE`` or a temporary folder), timing each build. Optimum's exports need its
environment (``make optimum`` or ``$FFFC_OPTIMUM_VENV``); they are listed as skipped
without it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fixtures.llm import CACHE_ENV, CASES, LLMExports, optimum_venv


def _dims(value) -> str:
    t = value.type.tensor_type
    dims = [d.dim_param or str(d.dim_value) for d in t.shape.dim]
    import onnx

    return f"{onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}[{', '.join(dims)}]"


def _io(path: Path) -> tuple[list[str], list[str]]:
    """``name dtype[dims]`` of the model's inputs and outputs; layers past the first are
    summarized (``past_key_values.1..N``)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)

    def rows(values) -> list[str]:
        out, seen = [], set()
        for v in values:
            key = re.sub(r"\.\d+\.", ".N.", v.name)
            if key in seen:
                continue
            seen.add(key)
            n = sum(1 for w in values if re.sub(r"\.\d+\.", ".N.", w.name) == key)
            name = key if n > 1 else v.name
            out.append(f"{name} {_dims(v)}" + (f" ×{n}" if n > 1 else ""))
        return out

    return rows(list(m.graph.input)), rows(list(m.graph.output))


def _inspect(path: Path) -> dict:
    from fffc.pipeline import analyze

    a = analyze(path)
    return {"sites": [{"kind": str(s.kind), "family": s.family, "activation": s.activation,
                       "d_model": s.d_model, "d_ff": s.d_ff, "bias": s.bias, "dtype": s.dtype}
                      for s in a.sites],
            "near_misses": [{"nodes": m.nodes, "reason": m.reason} for m in a.near_misses],
            "notes": list(a.notes)}


def _summary(found: dict) -> str:
    kinds: dict[str, int] = {}
    for s in found["sites"]:
        key = f"{s['family']} {s['d_model']}/{s['d_ff']}{' +bias' if s['bias'] else ''}"
        kinds[key] = kinds.get(key, 0) + 1
    return ", ".join(f"{n}× {k}" for k, n in kinds.items()) or "none"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, help=f"build folder (default ${CACHE_ENV} or a temporary one)")
    p.add_argument("--only", default="", help="build only the cases whose 'family/exporter' matches")
    p.add_argument("--json", type=Path, help="also write the catalog as JSON")
    args = p.parse_args(argv)

    import os

    root = args.root or (Path(os.environ[CACHE_ENV]) if os.environ.get(CACHE_ENV)
                         else Path(tempfile.mkdtemp(prefix="fffc-llm-")))
    exports = LLMExports(root)
    catalog, total = [], 0.0
    for family, exporter in CASES:
        case = f"{family}/{exporter.value}"
        if not re.search(args.only, case):
            continue
        if exporter.needs_optimum and optimum_venv() is None:
            print(f"## {case}: skipped (no optimum environment)\n")
            continue
        t0 = time.perf_counter()
        exports.checkpoint(family)
        t1 = time.perf_counter()
        path = exports.model(family, exporter)
        built = time.perf_counter() - t1
        total += time.perf_counter() - t0
        inputs, outputs = _io(path)
        found = _inspect(path)
        catalog.append({"case": case, "model": str(path), "build_s": round(built, 1),
                        "inputs": inputs, "outputs": outputs, **found})
        print(f"## {case} (built in {built:.1f}s): {path.name}")
        print("inputs:  " + "; ".join(inputs))
        print("outputs: " + "; ".join(outputs))
        print(f"sites:   {len(found['sites'])}: {_summary(found)}")
        for m in found["near_misses"]:
            print(f"near miss: {' → '.join(m['nodes'])}: {m['reason']}")
        for n in found["notes"]:
            print(f"note:    {n}")
        print()
    print(f"built in {total:.0f}s in all under {exports.root}")
    if args.json:
        args.json.write_text(json.dumps(catalog, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
