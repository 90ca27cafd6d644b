"""The sites table stays readable: an unrolled FFF walk matches hundreds of nodes."""

from __future__ import annotations

from fffc.cli import _nodes


def test_long_node_lists_are_shortened_with_a_count() -> None:
    assert _nodes(["a", "b", "c"]) == "a, b, c"
    names = [f"n{i}" for i in range(100)]
    assert _nodes(names) == "n0, n1, n2, … (95 more) …, n98, n99"
