"""Side-by-side timing of ONNX Runtime sessions on a small, shared machine.

After a run, a session's intra-op threads keep spinning for a while. On a small machine, a
call of session A right after a call of session B runs against B's spinning workers, and the
fastest model loses most (BENCHMARKS.md, Method). So sessions are timed in blocks: in each
round every session in turn gets a short pause (the other pools go to sleep), one untimed
call (its own workers wake up), then ``inner`` timed calls. Every round times all sessions,
so they see the same drift of the machine, and each round starts one session later than the
last, so that no session is always the one timed right after the heaviest. The pause is long
because workers keep spinning longer after long calls; ``settle`` shortens it.
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


def spread_ms(seconds: list[float]) -> str:
    """``min median max`` of per-call seconds, in milliseconds, as a fixed-width column."""
    ms = sorted(t * 1e3 for t in seconds)
    return f"{ms[0]:8.3f} {statistics.median(ms):8.3f} {ms[-1]:8.3f}"


def identity_session(d: int, threads: int = 2):
    """A one-Identity ``[T, d]`` model's session: ONNX Runtime's own per-call cost, timed
    beside a kernel called outside ONNX Runtime to estimate it inside an artifact."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "id",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", d])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    so = session_options(threads)
    so.inter_op_num_threads = 1
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
