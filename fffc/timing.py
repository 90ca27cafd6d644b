"""Side-by-side timing of ONNX Runtime sessions on a small, shared machine.

After a run, a session's intra-op threads keep spinning for a while. On 2 cores, a call of
session A right after a call of session B runs against B's spinning workers, and the
fastest model loses most: bench/bench_fff.py's FFF layer measured 0.053–0.058 ms at 1 token
with five sessions interleaved call by call and 0.015–0.017 ms timed in blocks
(BENCHMARKS.md). So sessions are timed
in blocks: in each round every session in turn gets a short pause (the other pools go to
sleep), one untimed call (its own workers wake up), then ``inner`` timed calls. Every
round times all sessions, so they see the same drift of the machine, and each round starts
one session later than the last: on this VM the session timed right after a dense FFN's was
slower by ~10% whatever it ran (bench_sparse_ffn.py, two sessions of one artifact). The pause is long
because workers keep spinning longer after long calls (a dense FFN over 2048 tokens runs
for ~130 ms); ``settle`` shortens it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

SETTLE_S = 0.1  # pause before each block, for the other sessions' workers to park


def blocks(calls: Mapping[str, Callable[[], object]], rounds: int, inner: int = 5,
           settle: float = SETTLE_S) -> dict[str, list[float]]:
    """Seconds per timed call of each callable (``rounds·inner`` samples each)."""
    times: dict[str, list[float]] = {k: [] for k in calls}
    keys = list(calls)
    for r in range(rounds):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            call = calls[key]
            time.sleep(settle)
            call()
            for _ in range(inner):
                t0 = time.perf_counter()
                call()
                times[key].append(time.perf_counter() - t0)
    return times


def medians_ms(calls: Mapping[str, Callable[[], object]], rounds: int, inner: int = 5,
               settle: float = SETTLE_S) -> dict[str, float]:
    """Median milliseconds per call of each callable, timed by ``blocks``."""
    return {k: statistics.median(v) * 1e3
            for k, v in blocks(calls, rounds, inner, settle).items()}


def session_options(threads: int = 2):
    """Fresh ONNX Runtime session options for a side-by-side benchmark: ``threads`` intra-op
    threads, warnings off. One per session: an fffc artifact registers its shim on them."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return so
