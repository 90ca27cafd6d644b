"""Import directions (DESIGN.md): each stage imports only what it may.

Checked on the source with ``ast`` (import-linter cannot see ``fffc.passes`` and
``fffc.runtime``, which setuptools maps from the top-level ``passes/`` and ``runtime/``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

RULES = {
    # folder: (module prefix it is imported as, forbidden import prefixes)
    "passes": ("fffc.passes", ("tvm", "fffc.codegen", "fffc.native", "fffc.pipeline", "fffc.cli",
                               "fffc.runtime", "onnxruntime")),
    "fffc/codegen": ("fffc.codegen", ("fffc.passes", "onnxscript", "onnx_ir", "fffc.pipeline",
                                      "fffc.cli")),
    "runtime": ("fffc.runtime", ("tvm", "onnxscript", "onnx_ir", "fffc.passes", "fffc.codegen",
                                 "fffc.pipeline", "fffc.cli", "torch")),
    "fffc/ops.py": ("fffc.ops", ("numpy", "onnx", "tvm", "fffc.")),
}


def _imports(path: Path, module: str) -> list[str]:
    tree = ast.parse(path.read_text())
    out = []
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                out.append(".".join([*base, node.module] if node.module else base))
            elif node.module:
                out.append(node.module)
    return out


def _files(folder: str) -> list[Path]:
    p = ROOT / folder
    return [p] if p.is_file() else sorted(p.rglob("*.py"))


@pytest.mark.parametrize("folder", sorted(RULES))
def test_import_directions(folder):
    prefix, forbidden = RULES[folder]
    bad = []
    for f in _files(folder):
        rel = f.relative_to(ROOT / folder).with_suffix("") if (ROOT / folder).is_dir() else None
        module = prefix if rel is None else ".".join([prefix, *rel.parts]).removesuffix(".__init__")
        for name in _imports(f, module):
            if any(name == b.rstrip(".") or name.startswith(b if b.endswith(".") else b + ".")
                   or name == b for b in forbidden):
                bad.append(f"{f.relative_to(ROOT)} imports {name}")
    assert bad == []


def test_only_the_adapter_imports_tvm():
    offenders = [str(f.relative_to(ROOT)) for f in ROOT.joinpath("fffc").rglob("*.py")
                 if f.name != "_tvm.py" and any(n == "tvm" or n.startswith("tvm.")
                                                for n in _imports(f, "fffc.x"))]
    assert offenders == []
