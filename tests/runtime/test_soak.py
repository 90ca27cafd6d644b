"""The concurrency soak's short version (``scripts/soak.py``): a few artifacts of the
catalog, threads sharing a session, several sessions, create/destroy cycles; every output
bit for bit the single-threaded run's, RSS growth under 1%."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.sanitizers import PRELOAD, preloaded
from tests.fixtures.scripts import script_module
from tests.fixtures.soak_catalog import CATALOG, NO_SCREEN, build

pytestmark = pytest.mark.slow

CALLS, THREADS, SESSIONS, CYCLES = 300, 4, 3, 100
ENTRIES = {e.name: e for e in CATALOG}


@pytest.fixture(scope="module")
def soak():
    """scripts/soak.py as module ``soak`` (on sys.path: its spawned soaks import it)."""
    with script_module("soak") as module:
        yield module


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("soak")


@pytest.mark.parametrize("name", ["exact-screen", "exact-noscreen", "teal", "float16-model",
                                  "int4"])
def test_artifact_under_threads_sessions_and_cycles(soak, catalog, name) -> None:
    entry = ENTRIES[name]
    artifact = build(entry, catalog)
    # in a fresh interpreter, as the script soaks: RSS growth is measured against a process
    # holding the artifact, not this one's compiler
    with preloaded():
        result = soak.soak_isolated(name, artifact, entry.env,
                                    NO_SCREEN if entry.screened else None, CALLS, THREADS,
                                    SESSIONS, CYCLES)
    # under ASan (make test-asan) RSS holds its quarantine and shadow memory: growth is not
    # the shim's there, and only the outputs count
    growth = 1.0 if not PRELOAD else float("inf")
    assert result.failures(growth) == [], soak.table([result])
    assert result.calls == CALLS and result.multi_calls == CALLS // 5
    assert result.cycles == result.bare_cycles == CYCLES
    assert result.cycles_before > 0 and result.bare_before > 0
    if entry.screened:  # the screened kernel ran under the threads, not only the plain one
        assert result.screened > 0, soak.table([result])


def test_a_changed_bit_is_a_mismatch(soak, catalog) -> None:
    """The comparison can fail: one reference with one bit flipped counts every call on
    that input, and only those."""
    import fffc.runtime

    sess = fffc.runtime.InferenceSession(build(ENTRIES["exact-noscreen"], catalog))
    feeds = soak.inputs(sess, count=4)
    refs = [(out,) for out in soak.run_all(sess, feeds)]
    flipped = refs[2][0][0].copy()
    flipped.view(np.uint32).reshape(-1)[0] ^= 1  # the last bit of one float32
    refs[2] = ([flipped],)
    h = soak.Hammer()
    h.run([sess], feeds, refs, [200], THREADS, 0)
    assert h.calls == [200] and not h.errors
    assert 0 < h.mismatches < 200


def test_trend_counts_a_steady_leak_and_not_one_step(soak) -> None:
    """The cycles' growth: 1 KB per cycle over 1000 cycles of a 100 MB process is 1.0%;
    one 1 MiB step, with no other change, is no trend; two steps are; a leak under noise
    still is."""
    base = 100 << 20
    cycles = sorted(soak.sampled(1050, 50))
    assert cycles[0] == 50 and cycles[-1] == 1050 and len(cycles) == 21
    leak = [(c, base + 1024 * (c - 50)) for c in cycles]
    assert soak.trend(leak) == pytest.approx(100 * 1024 * 1000 / base)
    step = [(c, base + (1 << 20) * (c > 500)) for c in cycles]
    assert soak.trend(step) == 0.0
    steps = [(c, base + (1 << 20) * ((c > 300) + (c > 700))) for c in cycles]
    assert soak.trend(steps) == pytest.approx(100 * 20 / 19 / 100)
    rng = np.random.default_rng(0)
    noisy = [(c, r + int(rng.integers(-4096, 4096))) for c, r in leak]
    assert soak.trend(noisy) == pytest.approx(0.9765625, abs=0.03)
