"""Outside the registry, no code compares site kinds, decisions or modes as strings.

A comparison (``==``, ``!=``, ``in``, ``not in``) or a dict literal keyed by the values of
``SiteKind``, ``Decision`` or ``SparseMode`` is a string switch that belongs in
``fffc.contract.modes`` (an entry's flags or a registered behaviour) or an enum lookup.
"""

from __future__ import annotations

import ast
from pathlib import Path

from fffc.contract.kinds import Decision, SiteKind, SparseMode

ROOT = Path(__file__).resolve().parent.parent
NAMES = {str(v) for enum in (SiteKind, Decision, SparseMode) for v in enum}
REGISTRY = {Path("fffc/contract/kinds.py"), Path("fffc/contract/modes.py")}


def _strings(node: ast.AST) -> set[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return {s for e in node.elts for s in _strings(e)}
    return set()


def _offences(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            found = set().union(*(_strings(n) for n in (node.left, *node.comparators))) & NAMES
            if found:
                out.append(f"{path.relative_to(ROOT)}:{node.lineno} compares with {sorted(found)}")
        elif isinstance(node, ast.Dict):
            keys = {k.value for k in node.keys
                    if isinstance(k, ast.Constant) and isinstance(k.value, str)} & NAMES
            if len(keys) > 1:
                out.append(f"{path.relative_to(ROOT)}:{node.lineno} dispatches on {sorted(keys)}")
    return out


def test_no_kind_decision_or_mode_strings_outside_the_registry():
    files = [f for folder in ("fffc", "passes", "runtime") for f in (ROOT / folder).rglob("*.py")
             if f.relative_to(ROOT) not in REGISTRY]
    assert [o for f in sorted(files) for o in _offences(f)] == []


def test_the_check_finds_a_string_switch(tmp_path):
    probe = ROOT / "tests" / "_probe_mode_strings.py"
    probe.write_text('def f(site):\n    return site.decision == "teal" or site.kind in '
                     '("gated", "fff")\nX = {"exact": 1, "cats": 2}\n')
    try:
        assert len(_offences(probe)) == 3
    finally:
        probe.unlink()
