"""The concurrency soak's short version (``scripts/soak.py``): a few artifacts of the
catalog, threads sharing a session, several sessions, create/destroy cycles; every output
bit for bit the single-threaded run's, RSS growth under 1%."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.soak_catalog import CATALOG, NO_SCREEN, build

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CALLS, THREADS, SESSIONS, CYCLES = 300, 4, 3, 100
ENTRIES = {e.name: e for e in CATALOG}


@pytest.fixture(scope="module")
def soak():
    spec = importlib.util.spec_from_file_location("soak", ROOT / "scripts" / "soak.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    yield module
    del sys.modules["soak"]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("soak")


@pytest.mark.parametrize("name", ["exact-screen", "exact-noscreen", "teal", "float16-model",
                                  "int4"])
def test_artifact_under_threads_sessions_and_cycles(soak, catalog, name) -> None:
    entry = ENTRIES[name]
    artifact = build(entry, catalog)
    result = soak.soak(name, artifact, entry.env, NO_SCREEN if entry.screened else None,
                       CALLS, THREADS, SESSIONS, CYCLES)
    assert result.failures(1.0) == [], soak.table([result])
    assert result.calls == CALLS and result.multi_calls == CALLS // 5
    assert result.cycles == CYCLES and result.cycles_before > 0
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
