"""The token dispatch record: the bound its timings give (the kernel's winning prefix), the
branch serving each count, the manifest's shape."""

from __future__ import annotations

import pytest

from fffc.contract.dispatch import Timing, TokenDispatch, from_timings
from fffc.contract.kinds import Branch, Crossover


def _rows(*won: bool) -> list[Timing]:
    """Timings at 1, 2, 4, ...: the kernel 1 ms, the other 2 ms where the kernel won."""
    return [Timing(1 << i, 1.0, 2.0 if w else 0.5) for i, w in enumerate(won)]


@pytest.mark.parametrize("won, bound", [
    ((True, True, False), 2),  # lost at 4: the kernel serves 1..2
    ((False, True), 0),  # lost at 1: never the kernel
    ((True, True, True), None),  # won everywhere measured: every count
    ((True, False, True), 1),  # a later win does not reopen the prefix
])
def test_bound_is_the_prefix_the_kernel_won(won, bound):
    assert from_timings(_rows(*won)) == bound
    assert from_timings(list(reversed(_rows(*won)))) == bound  # in token order, as given


def test_a_count_the_other_branch_cannot_run_is_the_kernels():
    assert from_timings([Timing(1, 5.0, None), Timing(2, 5.0, 1.0)]) == 1


def test_branches_serving_each_count():
    t = TokenDispatch.measured(_rows(True, True, False), beyond=Branch.MASKED)
    assert [t.branch(n) for n in (1, 2, 3, 100)] == [Branch.KERNEL, Branch.KERNEL,
                                                     Branch.MASKED, Branch.MASKED]
    assert t.dispatched and t.kernel and t.describe() == "kernel 1..2, masked 3.."
    never = TokenDispatch.measured(_rows(False))
    assert not never.kernel and not never.dispatched and never.branch(1) is Branch.ORIGINAL
    always = TokenDispatch(None, Crossover.TABLE)
    assert always.kernel and not always.dispatched and always.branch(10**6) is Branch.KERNEL


def test_manifest_record():
    t = TokenDispatch.measured(_rows(True, False))
    assert t.to_json() == {
        "branches": [{"branch": "kernel", "min_tokens": 1, "max_tokens": 1},
                     {"branch": "original", "min_tokens": 2, "max_tokens": None}],
        "basis": "measured",
        "timings": [{"tokens": 1, "kernel_ms": 1.0, "original_ms": 2.0},
                    {"tokens": 2, "kernel_ms": 1.0, "original_ms": 0.5}]}
    rows = t.to_json()["timings"]
    assert TokenDispatch.measured([Timing.from_json(r, Branch.ORIGINAL) for r in rows]) == t


def test_nothing_beyond_the_kernel_is_the_kernel():
    with pytest.raises(ValueError):
        TokenDispatch(2, Crossover.OPTION, Branch.KERNEL)
