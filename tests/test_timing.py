"""``fffc.timing``: sessions are timed in blocks (warm call first), all in every round."""

from __future__ import annotations

from fffc import timing


def test_blocks_time_each_callable_in_turn_after_one_untimed_call() -> None:
    log: list[str] = []
    calls = {k: (lambda k=k: log.append(k)) for k in ("a", "b")}
    times = timing.blocks(calls, rounds=2, inner=3, settle=0.0)
    assert {k: len(v) for k, v in times.items()} == {"a": 6, "b": 6}
    # 1 untimed + 3 timed per block; each round starts one session later
    assert log == ["a"] * 4 + ["b"] * 4 + ["b"] * 4 + ["a"] * 4
    assert all(t >= 0 for v in times.values() for t in v)
