"""The token count below which a structured FFN's pre-merged dense weights win, measured.

Structured projections do less work, but in more, smaller steps; where few tokens leave a
target memory- or launch-bound, one dense product over ``blockdiag(A)·U`` may be faster
(the paper's "pre-merge for online decoding"). Both kernels run on the site's own
weights at growing token counts, alternating, and the merged path is kept for the counts
where it was faster at every count up to there.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import median

import numpy as np

from fffc.contract.kernels import StructuredSpec
from fffc.contract.structure import merged_weight

from .schedules import Family

TOKENS = (1, 2, 4, 8, 16, 32, 64, 128)
MARGIN = 0.95  # merged must be at least 5% faster to be worth its extra weights


def _args(spec: StructuredSpec, arrays: dict[str, np.ndarray | None], x: np.ndarray) -> list:
    return [x, *(arrays[n] for n in spec.arg_names()[1:-1])]


def measure_crossover(fam: Family, structured: StructuredSpec, merged: StructuredSpec,
                      weights: dict[str, np.ndarray | None],
                      tokens: Sequence[int] = TOKENS, rounds: int = 3) -> tuple[int, dict]:
    """``(merged_max_tokens, timings)`` on this machine, whose CPU family is ``fam``: the
    largest count up to which the merged kernel beat the structured one at every measured
    count (0: never), and the medians in ms."""
    from .build import KernelRunner

    m = {"A1": merged_weight(weights["A1"], weights.get("U1"),
                             weights.get("S1"))[None].astype(np.float32),
         "A2": merged_weight(weights["A2"], weights.get("U2"),
                             weights.get("S2"))[None].astype(np.float32),
         "B1": weights.get("B1"), "B2": weights.get("B2")}
    runners = {"structured": (KernelRunner(structured, fam=fam), weights),
               "merged": (KernelRunner(merged, fam=fam), m)}
    rng = np.random.default_rng(0)
    table: list[dict] = []
    limit, open_ = 0, True
    for n in tokens:
        x = rng.standard_normal((n, structured.d_in)).astype(np.float32)
        times: dict[str, list[float]] = {"structured": [], "merged": []}
        for _ in range(rounds):  # alternate: the machine's noise hits both sides
            for name, (runner, arrays) in runners.items():
                times[name] += runner.time(*_args(runner.spec, arrays, x), number=5, repeat=3)
        ms = {k: 1e3 * median(v) for k, v in times.items()}
        table.append({"tokens": n, **{f"{k}_ms": round(v, 4) for k, v in ms.items()}})
        if open_ and ms["merged"] < MARGIN * ms["structured"]:
            limit = n
        else:
            open_ = False
    return limit, {"timings": table, "margin": MARGIN}
