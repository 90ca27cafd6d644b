"""Mutation fuzzing of fffc: valid seed models and a compiled artifact, mutated
(``tests/fuzz/mutations.py``), driven through ``fffc inspect``, ``calibrate`` and ``compile``
(library and CLI, a few real subprocesses) and through ``fffc.runtime`` and ``fffc verify``.

The property: every case ends in success or one of fffc's typed errors with its exit code
(for ``fffc.runtime``: its ``ArtifactError``/``FileNotFoundError`` or ONNX Runtime's own
errors); never an uncaught exception, a crash, a case past its time limit (``LIMITS`` of
``tests/fuzz/harness.py``: 60 s; compile 240 s, a subprocess 120 s), or a file written outside the output.

Prints the count of every outcome and each distinct finding; every finding's case (JSON)
and its input files are saved under ``--out``/findings/ and replayed with ``--replay
CASE.json``. Exits 1 when anything was found.

Run from the repository root: ``python scripts/fuzz.py --cases 100000 --seconds 36000``.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import seed as hypothesis_seed  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.fuzz import harness, inputs, mutations, seeds  # noqa: E402

# the share of each entry point among model cases: compile's survivors cost seconds each
MODEL_OPS = (("inspect",) * 4 + ("inspect-cli",) * 2 + ("calibrate",) * 3
             + ("calibrate-cli",) * 2 + ("compile",) * 3 + ("compile-cli",) * 2
             + ("subprocess-inspect", "subprocess-calibrate", "subprocess-compile"))
ARTIFACT_OPS = (("check", "session", "session", "session-nocheck", "verify-cli", "verify-cli",
                 "verify-noload-cli") * 3 + ("subprocess-verify",))

# what is mutated: models, artifacts (fffc.runtime, verify), --data feeds, GenAI folders,
# --calibration files with --budget, fffc bench's flags and artifacts
TARGETS = ("model", "artifact", "data", "genai", "calibration", "bench")


class Stop(Exception):
    """The time budget is spent."""


class Run:
    def __init__(self, out: Path, deadline: float, torch: bool) -> None:
        self.out = out
        self.deadline = deadline
        art = out / "artifacts"
        self.h = harness.Harness(out / "work", seeds.artifact(art, "drelu"),
                                 seeds.artifact(art, "dense-relu") / "libfffc_ops.so", cache=art)
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.findings: dict[str, tuple[int, dict, harness.Outcome]] = {}
        self.cases = 0
        self.slowest = (0.0, None)
        self.seed_names = seeds.names(with_torch=torch)
        for name in self.seed_names:  # built now: the time per case is the cases' own
            seeds.model_bytes(name)
        self.t0 = time.monotonic()

    def strategy(self, targets: tuple[str, ...]) -> st.SearchStrategy[dict]:
        model = mutations.model_cases(self.seed_names, MODEL_OPS)
        weighted = {"model": [model] * 3, "artifact": [mutations.artifact_cases(ARTIFACT_OPS)],
                    "data": [inputs.data_cases()], "genai": [inputs.genai_cases()],
                    "calibration": [inputs.calibration_cases()],
                    "bench": [inputs.bench_cases()]}
        return st.one_of(*(s for t in targets for s in weighted[t]))

    def one(self, case: dict) -> None:
        if time.monotonic() > self.deadline:
            raise Stop
        case = mutations.as_json(case)
        try:
            o, d = self.h.run(case)
        except Exception as e:  # the fuzzer's own bug building the case: counted, not fffc's
            self.counts[(case["kind"], f"FUZZER ERROR {type(e).__name__}: {e}")] += 1
            print(f"FUZZER ERROR {type(e).__name__}: {e}\n  {json.dumps(case)}", flush=True)
            return
        self.cases += 1
        group = case["op"] if case["kind"] in ("artifact", "bench") else \
            case["op"].split("-")[0]
        self.counts[(f"{case['kind']}:{group}", o.label if not o.finding else
                     f"FINDING {o.label}")] += 1
        if o.seconds > self.slowest[0]:
            self.slowest = (o.seconds, case)
        if o.finding:
            sig = o.signature()
            if sig not in self.findings:
                self.save(len(self.findings), case, o, d)
                self.findings[sig] = (1, case, o)
                print(f"FINDING {sig}\n  {json.dumps(case)}", flush=True)
            else:
                n, c, first = self.findings[sig]
                self.findings[sig] = (n + 1, c, first)
        if self.cases % 100 == 0:
            print(f"{self.cases} cases in {time.monotonic() - self.t0:.0f} s, "
                  f"{len(self.findings)} distinct finding(s)", flush=True)

    def save(self, i: int, case: dict, o: harness.Outcome, d: Path) -> None:
        dest = self.out / "findings" / f"{i:03d}"
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(d, dest / "case", symlinks=True, ignore_dangling_symlinks=True)
        (dest / "case.json").write_text(json.dumps(case, indent=1))
        (dest / "outcome.txt").write_text(f"{o.label}\n{o.signature()}\n\n{o.detail}\n")


def report(r: Run, seconds: float) -> None:
    print(f"\n{r.cases} cases in {seconds:.0f} s ({r.cases / max(seconds, 1e-9):.2f} cases/s); "
          f"slowest case {r.slowest[0]:.1f} s")
    width = max((len(g) for g, _ in r.counts), default=10)
    for (group, label), n in sorted(r.counts.items()):
        print(f"  {group:<{width}}  {n:>7}  {label}")
    print(f"{len(r.findings)} distinct finding(s)")
    for sig, (n, case, o) in r.findings.items():
        print(f"- {n}x {sig}\n  {json.dumps(case)}\n  {o.detail.strip().splitlines()[-1:]}")


def replay(path: Path, out: Path) -> int:
    case = json.loads(path.read_text())
    art = out / "artifacts"
    needs = case["kind"] in ("artifact", "bench")
    h = harness.Harness(out / "work", seeds.artifact(art, "drelu") if needs else None,
                        seeds.artifact(art, "dense-relu") / "libfffc_ops.so" if needs else None,
                        cache=art)
    try:
        o, _ = h.run(case)
    finally:
        h.close()
    print(f"{o.status}: {o.label} ({o.seconds:.1f} s)\n{o.detail}")
    return 1 if o.finding else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=1000, help="at most this many cases")
    p.add_argument("--seconds", type=float, default=600, help="stop generating after this")
    p.add_argument("--seed", type=int, default=0, help="hypothesis' random seed")
    p.add_argument("--out", type=Path, default=Path("fuzz-out"),
                   help="work folder, seed artifacts and findings (default ./fuzz-out)")
    p.add_argument("--no-torch", action="store_true",
                   help="leave out the seeds exported from torch (structured MLPs, FFF)")
    p.add_argument("--targets", default=",".join(TARGETS),
                   help=f"what is mutated, comma-separated (default all: {','.join(TARGETS)})")
    p.add_argument("--replay", type=Path, metavar="CASE.json", help="run one saved case")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.replay:
        return replay(args.replay, args.out)
    targets = tuple(t for t in args.targets.split(",") if t)
    if not targets or set(targets) - set(TARGETS):
        p.error(f"--targets: expected some of {','.join(TARGETS)}, got {args.targets!r}")
    t0 = time.monotonic()
    r = Run(args.out, t0 + args.seconds, torch=not args.no_torch)
    print(f"seeds: {', '.join(r.seed_names)}; per-case limits {harness.LIMITS}", flush=True)

    @hypothesis_seed(args.seed)
    @settings(max_examples=args.cases, deadline=None, database=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(r.strategy(targets))
    def fuzz(case: dict) -> None:
        r.one(case)

    t1 = time.monotonic()
    try:
        fuzz()
    except (Stop, KeyboardInterrupt):
        pass
    finally:
        r.h.close()
    report(r, time.monotonic() - t1)
    print(f"(seeds and artifacts built in {t1 - t0:.0f} s)")
    return 1 if r.findings else 0


if __name__ == "__main__":
    sys.exit(main())
