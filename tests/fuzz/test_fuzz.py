"""The fuzzer's short version (``scripts/fuzz.py`` runs the long one): a fixed, derandomized
set of mutated models through inspect, calibrate and compile (library and CLI, a few real
subprocesses), and of mutated artifacts through ``fffc.runtime`` and ``fffc verify``. Every
case must end in success or a typed error with its exit code, in its time limit, writing
nothing outside its output; a case that does not fails the test with its JSON (replay it
with ``python scripts/fuzz.py --replay CASE.json``)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from tests.fuzz import harness, inputs, mutations, seeds

pytestmark = pytest.mark.slow


def _settings(n: int):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    h = harness.Harness(tmp_path_factory.mktemp("fuzz-models"))
    yield h
    h.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz-artifacts")
    h = harness.Harness(tmp / "work", seeds.artifact(tmp, "drelu"))
    yield h
    h.close()


def _check(h: harness.Harness, case: dict) -> None:
    case = mutations.as_json(case)
    o, _ = h.run(case)
    assert not o.finding, f"{o.label} for case {json.dumps(case)}:\n{o.detail}"


SEEDS = seeds.names(with_torch=False)


@_settings(40)
@given(mutations.model_cases(SEEDS, ("inspect", "inspect-cli", "calibrate", "calibrate-cli")))
def test_mutated_models_inspect_and_calibrate(models, case):
    _check(models, case)


@_settings(6)
@given(mutations.model_cases(SEEDS, ("compile", "compile-cli")))
def test_mutated_models_compile(models, case):
    _check(models, case)


@_settings(1)
@given(mutations.model_cases(SEEDS, ("subprocess-inspect",)))
def test_mutated_models_exit_codes_in_a_subprocess(models, case):
    _check(models, case)


@_settings(30)
@given(mutations.artifact_cases(("check", "session", "session-nocheck", "verify-cli",
                                 "verify-noload-cli")))
def test_mutated_artifacts(artifacts, case):
    _check(artifacts, case)


@_settings(5)
@given(inputs.data_cases(("calibrate", "calibrate-cli"), ("dense-relu", "drelu", "genai-decoder")))
def test_mutated_data_feeds(models, case):
    _check(models, case)


@_settings(8)
@given(inputs.genai_cases(("inspect", "inspect-cli", "calibrate-cli")))
def test_mutated_genai_folders(models, case):
    _check(models, case)


@_settings(2)
@given(inputs.calibration_cases(("compile-cli",)))
def test_mutated_calibrations(models, case):
    _check(models, case)


@_settings(4)
@given(inputs.bench_cases(("bench-cli",), ("model",), {"repeat": ("1", "0", "-1", "x"),
                                                       "tokens": ("1", "1,2", "-1", "", "a")}))
def test_mutated_bench_runs(artifacts, case):
    _check(artifacts, case)


def test_every_input_mutation_applies(tmp_path):
    """Each feed, GenAI folder and calibration mutation builds its case without raising in
    the fuzzer itself (the cases are run by the tests above and by scripts/fuzz.py)."""
    h = harness.Harness(tmp_path / "work", cache=tmp_path / "seeds")
    p = {"i": 1, "j": 3, "k": 5}
    try:
        for kind, names in (("data", inputs.DATA_MUTATIONS), ("genai", inputs.GENAI_MUTATIONS),
                            ("calibration", inputs.CALIBRATION_MUTATIONS)):
            for name in dict.fromkeys(names):
                for j in range(4):
                    case = {"kind": kind, "seed": "drelu", "op": "compile-cli",
                            "mutations": [[name, {**p, "j": j, "k": p["k"] + j}]]}
                    d = h.build(case)
                    assert inputs.argv(case, d)[1] == str(inputs.model_path(case, d))
    finally:
        h.close()


def test_a_finding_is_reported(models):
    """The harness is honest: a case that escapes as an untyped error is a finding."""
    o, _ = models.run({"kind": "model", "seed": "dense-relu", "op": "inspect",
                       "mutations": [["drop_node", {"i": 0, "j": 0, "k": 0}]]})
    assert not o.finding
    o = harness.Outcome(**harness._exception(KeyError("x"), runtime=False))
    assert o.finding and o.label == "uncaught: KeyError"
    assert harness._cli_outcome(1, "fffc: internal error: KeyError: 'x'")["status"] == "uncaught"
    assert harness._cli_outcome(3, "fffc: error: m.onnx: no such file")["status"] == "typed"
    assert harness._cli_outcome(3, "Traceback ...\nfffc: error: x")["status"] == "bad-exit"
    assert harness._cli_outcome(2, "usage: fffc bench [-h] artifact\nfffc bench: error: "
                                "argument --threads: invalid int value: 'x'\n")["status"] == "typed"
    assert harness._cli_outcome(2, "usage: fffc\nTraceback\nfffc bench: error: x")["status"] \
        == "bad-exit"
    assert harness._outside({"a": (1,)}, {"a": (1,), "b": (2,)}, ()) == ["b"]
    assert harness._outside({}, {"out.fffc/x": (2,)}, ("out.fffc",)) == []


def test_every_mutation_applies(tmp_path):
    """Each model mutation runs on every seed without raising in the fuzzer itself."""
    for seed in SEEDS:
        for name in (*mutations.MODEL_MUTATIONS, *mutations.BYTE_MUTATIONS):
            for i in range(3):
                case = {"kind": "model", "seed": seed, "op": "inspect",
                        "mutations": [[name, {"i": i, "j": 2 * i + 1, "k": 3 * i + 2}]]}
                d = tmp_path / f"{seed}-{name}-{i}"
                d.mkdir()
                assert mutations.build_model(case, d).exists()


CRASHING = ("-c", "import os, signal, sys; f = os.fdopen(int(os.environ['"
            + harness.REPLY_FD + "']), 'w', buffering=1); f.write('ready\\n'); "
            "sys.stdin.readline(); os.kill(os.getpid(), signal.SIGSEGV)")
HANGING = ("-c", "import os, sys, time; f = os.fdopen(int(os.environ['" + harness.REPLY_FD
           + "']), 'w', buffering=1); f.write('ready\\n'); sys.stdin.readline(); "
           "time.sleep(60)")


@pytest.mark.parametrize(("command", "status", "label"), [
    (CRASHING, "crash", "crash: SIGSEGV"), (HANGING, "hang", "hang (> 1 s)")])
def test_a_worker_that_dies_or_hangs_is_a_finding(tmp_path, command, status, label):
    w = harness.Worker(tmp_path / "log", tmp_path, command)
    try:
        res = w.ask({"kind": "model", "op": "inspect"}, tmp_path, 1.0)
        assert (res["status"], res["label"]) == (status, label)
        assert w.proc is None  # the next case starts a fresh worker
    finally:
        w.stop()
