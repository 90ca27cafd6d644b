"""Concurrency soak of fffc artifacts: every op family and mode under threads.

For each artifact of the catalog (``tests/fixtures/soak_catalog.py``; built into
``--artifacts DIR``, or reused from it):

* one session shared by ``--threads`` threads, ``--calls`` calls of mixed token counts
  (1, 2 and 16 tokens, batch 1 and 2), each output compared bit for bit with the output a
  single-threaded run of the same session gave for the same input before the threads start;
  the process's RSS sampled 21 times from the end of a warm-up on;
* ``--sessions`` sessions of the artifact in the process, used concurrently by the threads,
  each output compared bit for bit with the same reference;
* ``--cycles`` session create / run / destroy cycles; and, in a process where nothing runs
  the artifact's shim, as many create / destroy cycles without a run, where a shim that did
  not keep itself loaded would be unloaded and loaded again, RSS sampled 21 times from the
  50th cycle on.

Growth is the trend of the samples: their rise with the largest rise between two samples
left out (``trend``): a leak rises in every interval, one allocator step (a 1 MiB arena of
Python's allocator, a glibc arena of a thread: 1.5% of a 70 MB process) in one. The raw
end-against-start difference is printed beside it.

Each artifact is soaked in fresh interpreters (``spawn``): the RSS figures are those of a
process holding only ONNX Runtime, NumPy and the artifact, not the compiler. Exits 1 on any
mismatch, error or RSS growth over ``--max-growth`` percent.

Run from the repository root: ``python scripts/soak.py [--artifacts DIR] [--only REGEX]``
(``--help``: the other flags).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import ctypes
import gc
import itertools
import multiprocessing
import os
import re
import resource
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# (batch, sequence) of the calls: 1, 2 and 16 tokens, and batch 2
SHAPES = ((1, 1), (1, 2), (1, 16), (2, 1), (2, 8))
POOL = 40  # distinct inputs, each with its single-threaded output
WARMUP_CYCLES = 50
SAMPLES = 20  # RSS samples after the warm-up's, of the calls and of the cycles
PAGE = os.sysconf("SC_PAGE_SIZE")
try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc: RSS as it is
    _LIBC = None


def rss() -> int:
    """The process's resident set size in bytes (``/proc/self/statm``), after a garbage
    collection and glibc's ``malloc_trim``: memory freed but kept by the allocator is not
    counted, memory still allocated is."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def growth(before: int, after: int) -> float:
    """Percent; 0 where nothing was measured (an error, reported as such)."""
    return 100.0 * (after - before) / before if before else 0.0


def trend(samples: list[tuple[int, int]]) -> float:
    """Percent growth over evenly sampled (cycle, RSS) samples, their largest rise from one
    sample to the next left out and the rest scaled to the whole span: a leak rises in every
    interval and shows in full; one allocator step (Python's allocator maps 1 MiB arenas, 1.5%
    of a 70 MB process) rises in one interval and is left out."""
    if len(samples) < 3 or not samples[0][1]:
        return 0.0
    rises = [r1 - r0 for (_, r0), (_, r1) in itertools.pairwise(samples)]
    kept = sum(rises) - max(rises)
    return 100.0 * kept * len(rises) / (len(rises) - 1) / samples[0][1]


def sampled(count: int, warmup: int) -> set[int]:
    """The cycles (1-based) after which RSS is sampled: the warm-up's end, then ``SAMPLES``
    more evenly to the last."""
    step = max((count - warmup) // SAMPLES, 1)
    return {warmup, *range(warmup + step, count, step), count}


@contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """``env`` set while sessions are created (the shim reads its switches then)."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def open_session(artifact: Path, env: dict[str, str]):
    import fffc.runtime

    with environment(env):
        return fffc.runtime.InferenceSession(artifact)


def tokens(i: int) -> int:
    """The token count of the pool's input ``i``."""
    b, s = SHAPES[i % len(SHAPES)]
    return b * s


_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def inputs(sess, count: int = POOL, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``count`` feeds for the session's model, cycling through ``SHAPES``: a rank-3 input
    [batch, seq, d] takes (batch, seq), a rank-2 one [tokens, d] batch·seq rows."""
    rng = np.random.default_rng(seed)
    feeds = []
    for i in range(count):
        b, s = SHAPES[i % len(SHAPES)]
        feed = {}
        for arg in sess.get_inputs():
            if arg.type not in _NUMPY:
                raise ValueError(f"input {arg.name}: {arg.type} is not a float input")
            d = arg.shape[-1]
            shape = (b, s, d) if len(arg.shape) == 3 else (b * s, d)
            feed[arg.name] = rng.standard_normal(shape).astype(_NUMPY[arg.type])
        feeds.append(feed)
    return feeds


def run_all(sess, feeds) -> list[list[np.ndarray]]:
    """``sess``'s outputs for ``feeds``, one call after another on this thread."""
    return [sess.run(None, f) for f in feeds]


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    """Bit-for-bit equality (NaNs included)."""
    return len(a) == len(b) and all(
        x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
        for x, y in zip(a, b, strict=True))


def references(artifact: Path, env: dict[str, str], sess, feeds,
               plain_env: dict[str, str] | None) -> tuple[list[tuple[list, ...]], int]:
    """The outputs each input may give, and how many single-threaded outputs of ``sess``
    are not among them. Without ``plain_env``: ``sess``'s single-threaded output, run
    before any thread starts. With it (exact sites whose kernel the screen policy picks by
    the call history): the plain kernel's (a session created under ``plain_env``) or the
    screened kernel's (a fresh session's first call, which the policy always screens),
    each bit for bit; both are the plain kernel's beyond 1 token."""
    want = run_all(sess, feeds)
    if plain_env is None:
        return [(w,) for w in want], 0
    plain = run_all(open_session(artifact, {**env, **plain_env}), feeds)
    first = [open_session(artifact, env).run(None, f) for f in feeds]
    refs = [(p, f) for p, f in zip(plain, first, strict=True)]
    bad = sum(not any(same(w, r) for r in ref) for w, ref in zip(want, refs, strict=True))
    bad += sum(not same(p, f) for i, (p, f) in enumerate(refs) if tokens(i) > 1)
    return refs, bad


@dataclass
class Hammer:
    """``threads`` threads calling sessions on the pool's inputs, comparing each output
    with its references; the same threads run every phase, ``between(k)`` runs on the
    calling thread while they wait after phase k."""

    mismatches: int = 0
    second: int = 0  # outputs equal to the second reference only (the screened kernel's)
    errors: list[str] = field(default_factory=list)
    calls: list[int] = field(default_factory=list)  # per phase

    def run(self, sessions, feeds, refs, phases: list[int], threads: int, seed: int,
            between=lambda k: None) -> None:
        lock = threading.Lock()
        barrier = threading.Barrier(threads + 1, timeout=3600)
        self.calls = [0] * len(phases)

        def work(t: int) -> None:
            rng = np.random.default_rng((seed, t))
            failed = False
            for k, calls in enumerate(phases):
                bad = second = done = 0
                for _ in range(calls // threads + (t < calls % threads)):
                    if failed:
                        break
                    i = int(rng.integers(len(feeds)))
                    sess = sessions[int(rng.integers(len(sessions)))]
                    try:
                        out = sess.run(None, feeds[i])
                    except Exception as e:  # every failure is reported
                        failed = True
                        with lock:
                            self.errors.append(f"thread {t}: {type(e).__name__}: {e}")
                        break
                    match = [same(out, r) for r in refs[i]]
                    bad += not any(match)
                    second += len(match) > 1 and match[1] and not match[0]
                    done += 1
                with lock:
                    self.mismatches += bad
                    self.second += second
                    self.calls[k] += done
                barrier.wait()
                barrier.wait()

        pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for p in pool:
            p.start()
        for k in range(len(phases)):
            barrier.wait()
            between(k)
            barrier.wait()
        for p in pool:
            p.join()


@dataclass
class Result:
    name: str
    sites: str = ""  # the artifact's sites' decisions
    calls: int = 0
    threads: int = 0
    mismatches: int = 0
    screened: int = 0  # outputs that were the screened kernel's (where it differs)
    rss_before: int = 0
    rss_after: int = 0
    growth: float = 0.0  # trend, percent
    raw_growth: float = 0.0  # end against start, percent
    multi_calls: int = 0
    multi_mismatches: int = 0
    cycles: int = 0
    cycle_mismatches: int = 0
    cycles_before: int = 0
    cycles_after: int = 0
    cycles_growth: float = 0.0  # trend, percent
    cycles_raw: float = 0.0  # end against start, percent
    bare_cycles: int = 0
    bare_before: int = 0
    bare_after: int = 0
    bare_growth: float = 0.0
    bare_raw: float = 0.0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def failures(self, max_growth: float) -> list[str]:
        """What failed; ``max_growth``: the RSS growth limit in percent (the cycles': their
        trend)."""
        out = list(self.errors)
        if self.mismatches or self.multi_mismatches or self.cycle_mismatches:
            out.append(f"mismatches: {self.mismatches} shared, {self.multi_mismatches} "
                       f"across sessions, {self.cycle_mismatches} in cycles")
        if self.growth >= max_growth:
            out.append(f"RSS grew {self.growth:.2f}% over the calls (trend)")
        if self.cycles_growth >= max_growth:
            out.append(f"RSS grew {self.cycles_growth:.2f}% over the cycles (trend)")
        if self.bare_growth >= max_growth:
            out.append(f"RSS grew {self.bare_growth:.2f}% over the cycles without a run "
                       "(trend)")
        return out


def shared_session(artifact: Path, env: dict[str, str], plain_env: dict[str, str] | None,
                   calls: int, threads: int, result: Result):
    """One session, ``threads`` threads, ``calls`` calls after a warm-up (a tenth as many,
    at least 8 per input), in 20 phases with RSS sampled between them (``trend``). Returns
    the pool's inputs and their references."""
    sess = open_session(artifact, env)
    feeds = inputs(sess)
    refs, bad = references(artifact, env, sess, feeds, plain_env)
    parts = [calls // SAMPLES + (k < calls % SAMPLES) for k in range(SAMPLES)]
    samples = []

    def measure(k: int) -> None:
        samples.append((sum(parts[:k]), rss()))

    h = Hammer()
    h.run([sess], feeds, refs, [max(calls // 10, 8 * len(feeds)), *parts], threads, 2,
          measure)
    result.rss_before, result.rss_after = samples[0][1], samples[-1][1]
    result.growth = trend(samples)
    result.raw_growth = growth(result.rss_before, result.rss_after)
    result.calls, result.threads = sum(h.calls[1:]), threads
    result.mismatches, result.screened = bad + h.mismatches, h.second
    result.errors += h.errors
    return feeds, refs


def several_sessions(artifact: Path, env: dict[str, str], feeds, refs, calls: int,
                     threads: int, sessions: int, result: Result) -> None:
    """``sessions`` sessions of the artifact, each thread picking one per call."""
    opened = [open_session(artifact, env) for _ in range(sessions)]
    h = Hammer()
    h.run(opened, feeds, refs, [calls], threads, 3)
    result.multi_calls, result.multi_mismatches = h.calls[0], h.mismatches
    result.screened += h.second
    result.errors += h.errors


def cycles(artifact: Path, env: dict[str, str], feeds, refs, count: int,
           result: Result) -> None:
    """``count`` sessions created, run on a 1-token and a 16-token input (so the shim's
    per-session caches — the screen's float16 and transposed W1, widened 16-bit weights —
    are built) and destroyed; RSS sampled from the first ``WARMUP_CYCLES`` on (half the
    cycles when there are fewer than twice as many)."""
    warmup = min(WARMUP_CYCLES, count // 2)
    at = sampled(count, warmup)
    samples = []
    picks = [i for i, (b, s) in enumerate(SHAPES) if (b, s) in ((1, 1), (1, 16))]
    for c in range(count):
        sess = open_session(artifact, env)
        for i in picks:
            out = sess.run(None, feeds[i])
            result.cycle_mismatches += not any(same(out, r) for r in refs[i])
        del sess
        if c + 1 in at:
            samples.append((c + 1, rss()))
    result.cycles_before, result.cycles_after = samples[0][1], samples[-1][1]
    result.cycles = count
    result.cycles_growth = trend(samples)
    result.cycles_raw = growth(result.cycles_before, result.cycles_after)


def plain_session(model: Path, env: dict[str, str]):
    """An ONNX Runtime session of a model without fffc (the control)."""
    import onnxruntime

    return onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])


def bare_cycles(artifact: Path, env: dict[str, str], count: int, result: Result,
                opener=open_session) -> None:
    """``count`` sessions created and destroyed without a run, before anything else runs
    the artifact's shim in this process (a run's thread-local destructors keep a library
    loaded): unless the shim keeps itself loaded, ONNX Runtime unloads it with each session
    and loads it again with the next, and what a load allocates that an unload does not
    return adds up; RSS sampled from the first cycles on."""
    warmup = min(WARMUP_CYCLES, count // 2)
    at = sampled(count, warmup)
    samples = []
    start = time.perf_counter()
    try:
        for c in range(count):
            opener(artifact, env)  # dropped at once
            if c + 1 in at:
                samples.append((c + 1, rss()))
    except Exception as e:  # reported: exit status 1
        result.errors.append(f"cycles without a run: {type(e).__name__}: {e}")
    if samples:
        result.bare_before, result.bare_after = samples[0][1], samples[-1][1]
    result.bare_cycles = count
    result.bare_growth = trend(samples)
    result.bare_raw = growth(result.bare_before, result.bare_after)
    result.seconds = time.perf_counter() - start


def soak(name: str, artifact: Path, env: dict[str, str], plain_env: dict[str, str] | None,
         calls: int, threads: int, sessions: int, cycle_count: int) -> Result:
    """Threads on a shared session, several sessions, create/run/destroy cycles: one
    artifact, in this process (``bare_cycles`` needs one of its own)."""
    import fffc.runtime

    result = Result(name)
    start = time.perf_counter()
    try:
        manifest = fffc.runtime.manifest(artifact)
        result.sites = ",".join(site["decision"] for site in manifest["sites"])
        if not manifest.get("kernels"):
            raise ValueError(f"{artifact}: no site has kernels, nothing of fffc's to soak")
        feeds, refs = shared_session(artifact, env, plain_env, calls, threads, result)
        several_sessions(artifact, env, feeds, refs, max(calls // 5, threads), threads,
                         sessions, result)
        cycles(artifact, env, feeds, refs, cycle_count, result)
    except Exception as e:  # reported: exit status 1
        result.errors.append(f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}")
    result.seconds = time.perf_counter() - start
    return result


def _soak_in_child(*args) -> dict:
    return asdict(soak(*args))


def _bare_in_child(name: str, artifact: Path, env: dict[str, str], count: int,
                   plain: bool = False) -> dict:
    result = Result(name)
    bare_cycles(artifact, env, count, result, plain_session if plain else open_session)
    return asdict(result)


def control(model: Path, count: int) -> Result:
    """``count`` create / destroy cycles of ONNX Runtime sessions of a float model without
    fffc, in a fresh interpreter: what ONNX Runtime and Python alone leave behind, the
    baseline of the artifacts' cycles without a run."""
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(1, mp_context=ctx, max_tasks_per_child=1) as ex:
        return Result(**ex.submit(_bare_in_child, "control", model, {}, count, True).result())


def soak_isolated(name: str, artifact: Path, env: dict[str, str],
                  plain_env: dict[str, str] | None, calls: int, threads: int, sessions: int,
                  cycle_count: int) -> Result:
    """``soak`` and ``bare_cycles`` each in a fresh interpreter: RSS is the artifact's, not
    the compiler's, and neither sees what the other left to Python's allocator."""
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(1, mp_context=ctx, max_tasks_per_child=1) as ex:
        bare = Result(**ex.submit(_bare_in_child, name, artifact, env, cycle_count).result())
    with cf.ProcessPoolExecutor(1, mp_context=ctx, max_tasks_per_child=1) as ex:
        result = Result(**ex.submit(_soak_in_child, name, artifact, env, plain_env, calls,
                                    threads, sessions, cycle_count).result())
    result.bare_cycles, result.bare_before = bare.bare_cycles, bare.bare_before
    result.bare_after, result.bare_growth = bare.bare_after, bare.bare_growth
    result.bare_raw = bare.bare_raw
    result.errors += bare.errors
    result.seconds += bare.seconds
    return result


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f}"


LEGEND = """calls: shared-session calls after the warm-up (thr threads); mism: outputs not
bit-identical to a single-threaded run's (shared session, several sessions, cycles); scr:
1-token outputs that were the screened kernel's; RSS0/RSS1: after the warm-up / at the end;
trend: growth from 21 RSS samples, the largest rise between two left out; raw: end against
start; multi: calls across the several sessions; cyc RSS0/RSS1: after the first cycles / at the end;
bare: as many cycles without a run, in a process of their own (loads of the shim)"""


def table(results: list[Result]) -> str:
    head = ("artifact", "sites", "calls", "thr", "mism", "scr", "RSS0 MB", "RSS1 MB",
            "trend %", "raw %", "multi", "cycles", "cyc RSS0", "cyc RSS1", "cyc trend %", "cyc raw %",
            "bare trend %", "bare raw %", "s")
    rows = [head]
    for r in results:
        rows.append((r.name, r.sites, str(r.calls), str(r.threads),
                     str(r.mismatches + r.multi_mismatches + r.cycle_mismatches),
                     str(r.screened), _mb(r.rss_before), _mb(r.rss_after), f"{r.growth:+.3f}",
                     f"{r.raw_growth:+.3f}",
                     str(r.multi_calls), str(r.cycles), _mb(r.cycles_before),
                     _mb(r.cycles_after), f"{r.cycles_growth:+.3f}", f"{r.cycles_raw:+.3f}",
                     f"{r.bare_growth:+.3f}", f"{r.bare_raw:+.3f}", f"{r.seconds:.0f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    return "\n".join([*lines, LEGEND])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--artifacts", type=Path, default=Path(tempfile.gettempdir()) / "fffc-soak",
                   help="catalog folder: artifacts built into it, or reused from it "
                        "(default: %(default)s)")
    p.add_argument("--calls", type=int, default=10_000, help="calls per artifact (shared session)")
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--sessions", type=int, default=3, help="sessions used concurrently")
    p.add_argument("--cycles", type=int, default=1000, help="session create/destroy cycles")
    p.add_argument("--max-growth", type=float, default=1.0, help="RSS growth limit, percent")
    p.add_argument("--only", default="", help="regex on the artifact names")
    args = p.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from tests.fixtures.soak_catalog import CATALOG, NO_SCREEN, build

    entries = [e for e in CATALOG if re.search(args.only, e.name)]
    if not entries:
        print(f"no artifact matches {args.only!r}", file=sys.stderr)
        return 2
    print(f"soak: {len(entries)} artifacts, {args.calls} calls x {args.threads} threads, "
          f"{args.sessions} sessions, {args.cycles} cycles; {os.cpu_count()} CPUs, "
          f"max RSS of the builder {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss} KB",
          flush=True)
    results, failed = [], []
    for e in entries:
        try:
            artifact = build(e, args.artifacts)
        except Exception as ex:  # reported: exit status 1
            r = Result(e.name, errors=[f"build: {type(ex).__name__}: {ex}"])
        else:
            r = soak_isolated(e.name, artifact, e.env, NO_SCREEN if e.screened else None,
                              args.calls, args.threads, args.sessions, args.cycles)
        results.append(r)
        problems = r.failures(args.max_growth)
        failed += [f"{r.name}: {m}" for m in problems]
        print(f"{r.name}: {'FAIL' if problems else 'ok'} ({r.seconds:.0f} s)", flush=True)
    try:
        from tests.fixtures.soak_catalog import control_model

        base = control(control_model(args.artifacts), args.cycles)
        print(table(results))
        print(f"control: {base.bare_cycles} cycles of onnxruntime.InferenceSession alone (a "
              f"float FFN, no fffc): trend {base.bare_growth:+.3f}%, raw {base.bare_raw:+.3f}% "
              f"of {_mb(base.bare_before)} MB")
    except Exception as ex:  # the control is a baseline, not a check
        print(table(results))
        print(f"control: not run ({type(ex).__name__}: {ex})")
    for f in failed:
        print(f"FAIL {f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
