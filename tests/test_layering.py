"""Import directions (DESIGN.md): each unit imports only the units below it, and no
module imports itself back through others.

Every import counts — module level, inside functions, under ``TYPE_CHECKING`` — read from
the source with ``ast`` (``fffc.passes`` and ``fffc.runtime`` are mapped from the top-level
``passes/`` and ``runtime/`` folders, which import-linter cannot see).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"fffc": "fffc", "passes": "fffc.passes", "runtime": "fffc.runtime"}

# Units from the bottom up: a unit may import its own modules and those of the units
# before it. The top unit is the public API: the package's __init__, the CLI and bench.
UNITS = (
    ("contract", ("fffc.contract",)),
    ("runtime", ("fffc.runtime",)),
    ("torch", ("fffc.torch",)),
    ("frontend", ("fffc.frontend",)),
    ("passes", ("fffc.passes",)),
    ("codegen", ("fffc.codegen",)),
    ("verify", ("fffc.verify", "fffc.timing")),  # fffc.timing: standard library only
    ("plan", ("fffc.plan",)),
    ("package", ("fffc.package",)),
    ("stages", ("fffc.stages",)),
    ("pipeline", ("fffc.pipeline",)),
    ("api", ("fffc", "fffc.cli", "fffc.bench", "fffc.bench_decode", "fffc.timing", "fffc.serve")),
)
# Libraries a unit must never import, whatever its rank allows.
FORBIDDEN = {
    "contract": ("onnx", "onnxruntime", "onnxscript", "onnx_ir", "tvm", "torch"),
    "passes": ("tvm", "onnxruntime"),
    "codegen": ("onnxscript", "onnx_ir"),
    "runtime": ("tvm", "onnxscript", "onnx_ir", "torch"),
}
LEAF_CONTRACT = ("fffc.contract.kinds", "fffc.contract.tolerances")  # and ops: kinds only


def _modules() -> dict[str, Path]:
    out = {}
    for folder, prefix in FOLDERS.items():
        for f in sorted((ROOT / folder).rglob("*.py")):
            rel = f.relative_to(ROOT / folder).with_suffix("")
            name = ".".join([prefix, *rel.parts]).removesuffix(".__init__")
            if folder == "fffc" and rel.parts[0] in ("passes", "runtime"):
                continue
            out[name] = f
    return out


MODULES = _modules()


def _target(name: str) -> str | None:
    """The fffc module an imported name lives in (its longest known prefix)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str) -> list[tuple[str, int]]:
    """(imported name, line) of every import in a module, nested ones too; ``from p import
    n`` gives ``p.n`` where that is a module, else ``p``."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
            mod = ".".join(p for p in (base, node.module or "") if p)
            for a in node.names:
                sub = f"{mod}.{a.name}"
                out.append((sub if sub in MODULES else mod, node.lineno))
    return out


def _edges() -> dict[str, set[str]]:
    """Module → the fffc modules it imports."""
    graph: dict[str, set[str]] = {}
    for module in MODULES:
        targets = {_target(name) for name, _ in _imports(module)}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def _unit(module: str) -> str:
    best, length = "", -1
    for unit, prefixes in UNITS:
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > length:
                best, length = unit, len(p)
    return best


RANK = {unit: i for i, (unit, _) in enumerate(UNITS)}


def test_every_module_is_in_a_unit():
    assert [m for m in MODULES if not _unit(m)] == []


def test_units_import_downwards():
    bad = []
    for module, targets in _edges().items():
        for t in targets:
            if RANK[_unit(t)] > RANK[_unit(module)]:
                bad.append(f"{module} ({_unit(module)}) imports {t} ({_unit(t)})")
    assert bad == []


@pytest.mark.parametrize("unit", sorted(FORBIDDEN))
def test_forbidden_libraries(unit):
    bad = [f"{m}:{line} imports {name}" for m in MODULES if _unit(m) == unit
           for name, line in _imports(m)
           if any(name == lib or name.startswith(lib + ".") for lib in FORBIDDEN[unit])]
    assert bad == []


def test_contract_leaves_import_no_fffc():
    bad = [f"{m} imports {name}" for m in LEAF_CONTRACT for name, _ in _imports(m)
           if name.startswith("fffc")]
    bad += [f"fffc.contract.ops imports {name}" for name, _ in _imports("fffc.contract.ops")
            if name.startswith("fffc") and name != "fffc.contract.kinds"]
    assert bad == []


def test_no_import_cycles():
    """Tarjan's strongly connected components over the module graph: none may hold two
    modules."""
    graph = _edges()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert cycles == []


def test_only_the_adapter_imports_tvm():
    offenders = [m for m in MODULES if m != "fffc.codegen._tvm"
                 and any(n == "tvm" or n.startswith("tvm.") for n, _ in _imports(m))]
    assert offenders == []
