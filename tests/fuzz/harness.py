"""Run fuzz cases through fffc and classify what happened.

The parent builds each case's files (``mutations``), then hands the case to a worker
process (``python -m tests.fuzz.harness``) that runs the entry point in-process and
answers one JSON line. Everything native (ONNX Runtime, TVM, the shim) runs in the worker:
a crash ends the worker, not the run, and is reported with its signal; a case past its
time limit kills the worker (a hang). The parent snapshots the case folder before and
after: anything written outside the entry point's output is a finding.

Outcomes: ``ok``; a typed error (fffc's ``FffcError`` subclasses, with their exit codes;
for ``fffc.runtime``, its ``ArtifactError``/``FileNotFoundError`` and ONNX Runtime's own
errors); or a finding: ``uncaught`` (any other exception, or the CLI's internal error),
``crash``, ``hang``, ``wrote-outside``, ``bad-exit`` (an exit code no error class has, a
traceback or not exactly one error line on stderr).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# per-case limits (seconds): compile builds kernels and a shim when a mutant survives loading
# and a subprocess starts an interpreter that imports fffc (tens of seconds on a busy machine)
LIMITS = {"compile": 240.0, "subprocess": 120.0, "default": 60.0}
STARTUP = 120.0  # seconds for a worker to import fffc
MEMORY_LIMIT = 8 << 30  # the worker's address space: a 2**40-element allocation fails fast
REPLY_FD = "FFFC_FUZZ_REPLY_FD"
FINDINGS = ("uncaught", "crash", "hang", "wrote-outside", "bad-exit")


@dataclass
class Outcome:
    status: str  # ok | typed | finding kinds (FINDINGS)
    label: str  # the row of the outcome table: "ok", "ModelLoadError (3)", "uncaught: KeyError"
    exit: int | None = None
    detail: str = ""
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def finding(self) -> bool:
        return self.status in FINDINGS

    def signature(self) -> str:
        """What makes two findings the same bug: the kind, the label and the innermost
        fffc frame of the traceback."""
        frame = ""
        for line in self.detail.splitlines():
            s = line.strip()
            if s.startswith("File ") and ("/fffc/" in s or "/passes/" in s or "/runtime/" in s):
                frame = s
        return f"{self.label} @ {frame}" if frame else self.label


def limit(op: str) -> float:
    if "compile" in op:
        return LIMITS["compile"]
    return LIMITS["subprocess"] if op.startswith("subprocess-") else LIMITS["default"]


def outputs(op: str) -> tuple[str, ...]:
    """Names in the case folder the entry point may write (its ``-o``)."""
    if "compile" in op:
        return ("out.fffc",)
    if "calibrate" in op:
        return ("calib.json", "calib.samples.npz")
    return ()


# ------------------------------------------------------------------------------ the worker

MODEL_ARGS = {
    "inspect": lambda m, d: ["inspect", str(m)],
    "calibrate": lambda m, d: ["calibrate", str(m), "--synthetic", "2", "--seq", "8",
                               "--samples", "64", "-o", str(d / "calib.json")],
    "compile": lambda m, d: ["compile", str(m), "--target", "x86", "--crossovers", "table",
                             "-o", str(d / "out.fffc")],
}


def _library(op: str, model: Path, d: Path) -> None:
    import fffc

    if op == "inspect":
        fffc.inspect(model)
    elif op == "calibrate":
        fffc.calibrate(model, synthetic=2, seq=8, samples=64, output=d / "calib.json")
    elif op == "compile":
        fffc.compile(model, d / "out.fffc", fffc.CompileOptions(target="x86",
                                                                 crossovers="table"))


def _cli(argv: list[str]) -> dict:
    from fffc.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse
            code = e.code if isinstance(e.code, int) else 2
    return _cli_outcome(code, err.getvalue())


ARGPARSE_ERROR = re.compile(r"^fffc( [\w-]+)?: error: ")  # argparse's own refusal, exit 2


def _cli_outcome(code: int, err: str) -> dict:
    from fffc.contract.errors import EXIT_CODES

    lines = [ln for ln in err.splitlines() if ln.startswith("fffc: error")]
    if code == 2 and not lines and "Traceback" not in err and err.startswith("usage: ") \
            and len([ln for ln in err.splitlines() if ARGPARSE_ERROR.match(ln)]) == 1:
        return {"status": "typed", "label": "exit 2 (argparse)", "exit": 2,
                "detail": err.strip().splitlines()[-1]}
    if code == 0:
        return {"status": "ok", "label": "ok", "exit": 0}
    if "internal error" in err or code == 1:
        kind = err.split("internal error: ", 1)[-1].split(":", 1)[0] if "internal error" in err \
            else "?"
        return {"status": "uncaught", "label": f"uncaught (CLI exit 1): {kind}", "exit": code,
                "detail": err[-2000:]}
    if "Traceback" in err or code not in EXIT_CODES.values() or len(lines) != 1:
        return {"status": "bad-exit", "label": f"bad exit {code}", "exit": code,
                "detail": err[-2000:]}
    return {"status": "typed", "label": f"exit {code}", "exit": code, "detail": lines[0]}


def _subprocess(argv: list[str], timeout: float) -> dict:
    try:
        r = subprocess.run([sys.executable, "-m", "fffc.cli", *argv], capture_output=True,
                           text=True, timeout=timeout, env=os.environ)
    except subprocess.TimeoutExpired as e:
        return {"status": "hang", "label": f"hang (subprocess > {timeout:g} s)",
                "detail": str(e.stderr or "")[-2000:]}
    if r.returncode < 0:
        return {"status": "crash", "label": f"crash: {signal.Signals(-r.returncode).name} "
                "(subprocess)", "exit": r.returncode, "detail": r.stderr[-2000:]}
    return _cli_outcome(r.returncode, r.stderr)


def _feeds(sess) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    feeds = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) and 0 < d < 1024 else 2 for d in i.shape]
        dtype = np.int64 if "int64" in i.type else np.float32
        feeds[i.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def _artifact(op: str, art: Path) -> dict:
    import fffc.runtime

    if op == "check":
        fffc.runtime.check(art)
    elif op in ("session", "session-nocheck"):
        sess = fffc.runtime.InferenceSession(art, check_files=op == "session")
        sess.run(None, _feeds(sess))
    return {"status": "ok", "label": "ok", "exit": 0}


def _exception(e: BaseException, runtime: bool) -> dict:
    from fffc.contract.errors import EXIT_CODES, FffcError
    from fffc.runtime.integrity import ArtifactError

    name = type(e).__name__
    if isinstance(e, FffcError):
        if EXIT_CODES.get(name, e.exit_code) != e.exit_code or "\n" in e.one_line():
            return {"status": "bad-exit", "label": f"{name}: exit or message", "exit":
                    e.exit_code, "detail": e.one_line()}
        return {"status": "typed", "label": f"{name} ({e.exit_code})", "exit": e.exit_code,
                "detail": e.one_line()}
    if runtime and isinstance(e, ArtifactError | FileNotFoundError):
        return {"status": "typed", "label": f"runtime {name}", "detail": str(e)[:500]}
    if runtime and type(e).__module__.startswith("onnxruntime"):
        return {"status": "typed", "label": f"onnxruntime {name}", "detail": str(e)[:500]}
    return {"status": "uncaught", "label": f"uncaught: {name}",
            "detail": "".join(traceback.format_exception(e))[-4000:]}


def _input_case(case: dict, d: Path) -> dict:
    """A case of ``tests.fuzz.inputs`` (feeds, GenAI folders, calibrations, bench)."""
    from tests.fuzz import inputs

    op = case["op"]
    if op.startswith("subprocess-"):
        return _subprocess(inputs.argv(case, d), limit(op) - 5)
    if op.endswith("-cli"):
        return _cli(inputs.argv(case, d))
    try:
        inputs.library(case, d)
    except Exception as e:
        return _exception(e, runtime=False)
    return {"status": "ok", "label": "ok", "exit": 0}


def run_in_worker(case: dict, d: Path) -> dict:
    op = case["op"]
    if case["kind"] not in ("model", "artifact"):
        return _input_case(case, d)
    if case["kind"] == "model":
        model = d / "model" / "model.onnx"
        if op.startswith("subprocess-"):
            cmd = op.removeprefix("subprocess-")
            return _subprocess(MODEL_ARGS[cmd](model, d), limit(cmd) - 5)
        if op.endswith("-cli"):
            return _cli(MODEL_ARGS[op.removesuffix("-cli")](model, d))
        try:
            _library(op, model, d)
        except Exception as e:
            return _exception(e, runtime=False)
        return {"status": "ok", "label": "ok", "exit": 0}
    art = d / "art.fffc"
    if op == "subprocess-verify":
        return _subprocess(["verify", str(art)], limit(op) - 5)
    if op == "verify-cli":
        return _cli(["verify", str(art)])
    if op == "verify-noload-cli":
        return _cli(["verify", "--no-load", str(art)])
    try:
        return _artifact(op, art)
    except Exception as e:
        return _exception(e, runtime=True)


def worker_main() -> None:
    """Read one JSON request per line on stdin, answer one JSON line on the pipe the parent
    named (native code may write to stdout)."""
    os.environ.setdefault("FFFC_CROSSOVERS", "table")
    reply = os.fdopen(int(os.environ[REPLY_FD]), "w", buffering=1)
    import fffc.cli
    import fffc.pipeline
    import fffc.runtime  # noqa: F401  (what imports write to TMPDIR is not a case's doing)
    reply.write("ready\n")
    for line in sys.stdin:
        req = json.loads(line)
        try:
            res = run_in_worker(req["case"], Path(req["dir"]))
        except BaseException as e:  # the harness itself: reported, never a silent death
            res = {"status": "uncaught", "label": f"harness: {type(e).__name__}",
                   "detail": "".join(traceback.format_exception(e))[-4000:]}
        reply.write(json.dumps(res) + "\n")


# ------------------------------------------------------------------------------ the parent


def _limit_memory() -> None:
    import resource

    os.setsid()
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


class Worker:
    """One worker process; restarted after a crash or a hang."""

    COMMAND = ("-c", "from tests.fuzz.harness import worker_main; worker_main()")

    def __init__(self, log: Path, tmp: Path, command: tuple[str, ...] = COMMAND) -> None:
        self.log, self.tmp, self.command = log, tmp, command
        self.proc: subprocess.Popen | None = None
        self.baseline: set[str] = set()

    def start(self) -> None:
        r, w = os.pipe()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "FFFC_CROSSOVERS": "table",
               "TMPDIR": str(self.tmp), "PYTHONUNBUFFERED": "1", REPLY_FD: str(w)}
        env.pop("FFFC_DEBUG", None)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, *self.command], stdin=subprocess.PIPE, stdout=log, stderr=log, cwd=ROOT,
                env=env, pass_fds=(w,), preexec_fn=_limit_memory)
        os.close(w)
        self.reply = os.fdopen(r, "r")
        ready, _, _ = select.select([self.reply], [], [], STARTUP)
        if not ready or self.reply.readline() != "ready\n":
            self.stop()
            raise RuntimeError(f"the fuzz worker did not start; its log: {_tail(self.log)}")
        self.baseline = {p.name for p in self.tmp.iterdir()}

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.reply.close()
            self.proc = None

    def ask(self, case: dict, d: Path, seconds: float) -> dict:
        if self.proc is None:
            self.start()
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"case": case, "dir": str(d)}).encode() + b"\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.reply], [], [], seconds)
        line = self.reply.readline() if ready else ""
        if line:
            return json.loads(line)
        if not ready:
            self.stop()
            return {"status": "hang", "label": f"hang (> {seconds:g} s)"}
        code = self.proc.wait()
        self.stop()
        name = signal.Signals(-code).name if code < 0 else f"exit {code}"
        return {"status": "crash", "label": f"crash: {name}",
                "detail": _tail(self.log)}


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_bytes()[-n:].decode(errors="replace")
    except OSError:
        return ""


def _tree(d: Path) -> dict[str, tuple]:
    out = {}
    for root, dirs, files in os.walk(d):
        for name in dirs + files:
            p = Path(root, name)
            st = p.lstat()
            out[p.relative_to(d).as_posix()] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def _outside(before: dict, after: dict, allowed: tuple[str, ...]) -> list[str]:
    changed = [p for p in set(before) | set(after) if before.get(p) != after.get(p)]
    return sorted(p for p in changed if p.split("/")[0] not in allowed)


class Harness:
    """Builds cases under ``work`` and runs them in a worker."""

    def __init__(self, work: Path, seed_artifact: Path | None = None,
                 other_shim: Path | None = None, cache: Path | None = None) -> None:
        self.work = work
        self.work.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix="tmp-", dir=work))
        self.worker = Worker(work / "worker.log", self.tmp)
        self.seed_artifact, self.other_shim = seed_artifact, other_shim
        self.cache = cache or work / "seeds"  # the input kinds' seeds, built when first needed
        self.n = 0

    def genai_folder(self) -> Path:
        from tests.fuzz import genai_seed

        folder = self.cache / "genai"
        if not (folder / genai_seed.CONFIG).exists():
            genai_seed.folder(folder)
        return folder

    def genai_artifact(self) -> Path:
        """The seed GenAI folder compiled (what ``fffc bench`` times by generation)."""
        import fffc

        out = self.cache / "genai.fffc"
        if not (out / "manifest.json").exists():
            fffc.compile(self.genai_folder(), out, fffc.CompileOptions(
                target="x86", crossovers="table", force=True))
        return out

    def build_input(self, case: dict, d: Path) -> None:
        from tests.fuzz import inputs

        kind = case["kind"]
        if kind == "data":
            inputs.build_data(case, d)
        elif kind == "genai":
            inputs.build_genai(case, d, self.genai_folder())
        elif kind == "calibration":
            inputs.build_calibration(case, d, inputs.calibration_seed(self.cache))
        else:
            assert self.seed_artifact is not None, "bench cases need a seed artifact"
            artifacts = {"model": self.seed_artifact}
            if case["target"] == "genai":
                artifacts["genai"] = self.genai_artifact()
            inputs.build_bench(case, d, artifacts, self.genai_folder(), self.other_shim)

    def close(self) -> None:
        self.worker.stop()

    def build(self, case: dict) -> Path:
        from tests.fuzz import mutations

        self.n += 1
        d = self.work / f"case{self.n % 4}"  # a few folders, reused
        if d.exists():
            _rmtree(d)
        d.mkdir()
        if case["kind"] == "model":
            mutations.build_model(case, d)
        elif case["kind"] != "artifact":
            self.build_input(case, d)
        else:
            assert self.seed_artifact is not None, "artifact cases need a seed artifact"
            mutations.build_artifact(case, d, self.seed_artifact, self.other_shim)
        return d

    def run(self, case: dict) -> tuple[Outcome, Path]:
        d = self.build(case)
        before = _tree(d)
        seconds = limit(case["op"])
        t0 = time.perf_counter()
        res = self.worker.ask(case, d, seconds)
        elapsed = time.perf_counter() - t0
        out = Outcome(res["status"], res["label"], res.get("exit"), res.get("detail", ""),
                      elapsed)
        if not out.finding:
            wrote = _outside(before, _tree(d), _allowed(case))
            left = sorted(p.name for p in self.tmp.iterdir()
                          if p.name not in self.worker.baseline)
            if wrote or left:
                out = Outcome("wrote-outside", "wrote outside -o", out.exit,
                              f"in the case folder: {wrote}; left in TMPDIR: {left}",
                              elapsed)
        for p in self.tmp.iterdir():
            if p.name in self.worker.baseline:
                continue
            _rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        return out, d


def _allowed(case: dict) -> tuple[str, ...]:
    if case["kind"] in ("model", "artifact"):
        return outputs(case["op"])
    from tests.fuzz import inputs

    return inputs.outputs(case)


def _rmtree(d: Path) -> None:
    import shutil

    def writable(func, path, _):
        os.chmod(path, 0o700)
        func(path)

    shutil.rmtree(d, onexc=writable) if sys.version_info >= (3, 12) else \
        shutil.rmtree(d, onerror=writable)


if __name__ == "__main__":
    worker_main()
