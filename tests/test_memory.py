"""The memory guard: ``--max-memory`` parsed, the budget's default from the machine, a model
over it refused with its figure before the stage that allocates runs, and the estimates
(``fffc.plan.memory``) at least what the stages take, measured in a process of their own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import fffc
from fffc import frontend
from fffc.cli import main
from fffc.contract.config import CompileOptions
from fffc.contract.errors import EXIT_CODES, MemoryBudgetError, UsageError
from fffc.pipeline import analyze, compile_model
from fffc.plan import calibration, memory
from fffc.stages import plan, verify_sites
from tests.fixtures import memory_probe
from tests.fixtures.memory_probe import ffn_stack

ROOT = Path(__file__).resolve().parents[1]
GIB = 1 << 30


class Reached(Exception):
    """Raised by a stage replaced in a test: the compile got that far."""


def _counting(monkeypatch, owner, name: str, calls: list[str]) -> None:
    def stop(*_a, **_k):
        calls.append(name)
        raise Reached(name)

    monkeypatch.setattr(owner, name, stop)


# ---- the budget --------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("8G", 8 * GIB), ("8g", 8 * GIB), ("512M", 512 << 20), ("512MiB", 512 << 20),
    ("1.5GiB", 3 * GIB // 2), ("64KB", 64 << 10), ("123456", 123456), ("2T", 2 << 40),
    ("none", None), ("OFF", None),
])
def test_sizes(text, expected):
    assert memory.budget(text) == expected


def test_share_and_default_of_the_available_memory(monkeypatch):
    monkeypatch.setattr(memory, "available", lambda: 10 * GIB)
    assert memory.budget("50%") == 5 * GIB
    assert memory.budget("100%") == 10 * GIB
    assert memory.budget(None) == int(memory.DEFAULT_FRACTION * 10 * GIB)


@pytest.mark.parametrize("text", ["", "0", "0.5", "-1G", "8X", "many", "150%", "0%", "1e9"])
def test_bad_sizes_are_usage_errors(text):
    with pytest.raises(UsageError, match="--max-memory"):
        memory.budget(text)


def test_available_is_the_smaller_of_meminfo_and_the_cgroup(monkeypatch):
    monkeypatch.setattr(memory, "_meminfo_available", lambda: 8 * GIB)
    monkeypatch.setattr(memory, "_cgroup_room", lambda: 3 * GIB)
    assert memory.available() == 3 * GIB
    monkeypatch.setattr(memory, "_cgroup_room", lambda: None)
    assert memory.available() == 8 * GIB


def test_cgroup_room_is_its_limit_less_its_usage(monkeypatch):
    files = {"/sys/fs/cgroup/memory.max": "4294967296\n",
             "/sys/fs/cgroup/memory.current": "1073741824\n"}
    monkeypatch.setattr(memory, "_read_int", lambda p: int(files[p]) if files.get(p, "max\n")
                        .strip().isdigit() else None)
    assert memory._cgroup_room() == 3 * GIB
    files["/sys/fs/cgroup/memory.max"] = "max\n"  # v2 without a limit, and no v1 files
    assert memory._cgroup_room() is None


def test_the_refusal_names_the_figure_and_the_way_out():
    e = memory.Estimate("verification", 3 * GIB, "2 sites, K=64, F=256, D=64", "fewer feeds")
    memory.check(e, 3 * GIB, "m.onnx")  # at the budget: accepted
    memory.check(e, None, "m.onnx")
    with pytest.raises(MemoryBudgetError) as info:
        memory.check(e, 2 * GIB, "m.onnx")
    line = info.value.one_line()
    assert line.startswith("m.onnx: verification needs ~3.0 GiB (2 sites, K=64, F=256, D=64)")
    assert "over the --max-memory budget of 2.0 GiB" in line and "fewer feeds" in line
    assert EXIT_CODES["MemoryBudgetError"] == MemoryBudgetError.exit_code == 12


# ---- refused before the stage that allocates ------------------------------------------


@pytest.fixture
def model(tmp_path) -> Path:
    return ffn_stack(tmp_path / "m.onnx", "gated", 64, 256, 2)


def _between(model: Path) -> tuple[int, int]:
    """(the loading estimate, the verification estimate) of ``model``'s default compile."""
    load = memory.loading(model).bytes
    verify = memory.verification(analyze(model), CompileOptions()).bytes
    assert load < verify
    return load, verify


def test_verification_over_the_budget_is_refused_before_it_allocates(model, tmp_path,
                                                                      monkeypatch):
    _, verify = _between(model)
    calls: list[str] = []
    _counting(monkeypatch, plan.decide, "plan", calls)
    _counting(monkeypatch, verify_sites, "run", calls)
    with pytest.raises(MemoryBudgetError) as info:
        compile_model(model, tmp_path / "out", CompileOptions(max_memory=str(verify - 1)))
    assert calls == []
    line = info.value.one_line()
    assert line.startswith(f"{model}: verification needs ~")
    assert "2 sites, K=64, F=256, D=64 (largest)" in line and "probe tokens" in line
    assert not (tmp_path / "out").exists()
    # at the estimate, the compile goes on to plan
    with pytest.raises(Reached):
        compile_model(model, tmp_path / "out", CompileOptions(max_memory=str(verify)))
    assert calls == ["plan"]


def test_loading_over_the_budget_is_refused_before_the_file_is_read(model, tmp_path,
                                                                     monkeypatch):
    load, _ = _between(model)
    calls: list[str] = []
    _counting(monkeypatch, frontend, "load_proto", calls)
    with pytest.raises(MemoryBudgetError, match="loading needs ~"):
        compile_model(model, tmp_path / "out", CompileOptions(max_memory=str(load - 1)))
    assert calls == []
    with pytest.raises(Reached):
        compile_model(model, tmp_path / "out", CompileOptions(max_memory=str(load)))


def test_calibration_over_the_budget_is_refused_before_its_sessions(model, monkeypatch):
    a = analyze(model)
    need = memory.calibration(a, tokens=calibration.SEQ, samples=calibration.SAMPLES,
                              synthetic=2).bytes
    calls: list[str] = []
    _counting(monkeypatch, calibration, "SiteInputs", calls)
    with pytest.raises(MemoryBudgetError) as info:
        fffc.calibrate(model, synthetic=2, max_memory=str(need - 1))
    assert calls == []
    assert f"calibration needs ~{memory.size(need)}" in info.value.one_line()
    assert f"{calibration.SEQ} tokens per call" in info.value.one_line()
    with pytest.raises(Reached):
        fffc.calibrate(model, synthetic=2, max_memory=str(need))


def test_cli_exit_codes(model, tmp_path, capsys, monkeypatch):
    assert main(["compile", str(model), "-o", str(tmp_path / "out"), "--max-memory",
                 "1K"]) == 12
    err = capsys.readouterr().err
    assert "loading needs ~" in err and "over the --max-memory budget of 1.0 KiB" in err
    assert main(["compile", str(model), "--max-memory", "lots"]) == EXIT_CODES["UsageError"]
    assert "--max-memory" in capsys.readouterr().err
    calls: list[str] = []
    _counting(monkeypatch, calibration, "SiteInputs", calls)
    load, _ = _between(model)
    assert main(["calibrate", str(model), "--synthetic", "2", "--max-memory",
                 str(load)]) == 12
    assert "calibration needs ~" in capsys.readouterr().err and calls == []


# ---- the estimates hold ------------------------------------------------------------


def _measure(stage: str, path: Path, weight_dtype: str = "float32") -> dict:
    out = subprocess.run([sys.executable, "-m", "tests.fixtures.memory_probe", stage,
                          str(path), weight_dtype], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


CASES = {  # (stage, model kind, weight dtype, MatMulNBits int4 source)
    "dense": ("verify", "dense", "float32", False),
    "gated-int4-weights": ("verify", "gated", "int4", False),
    "gated-int4-model": ("verify", "gated", "float32", True),
    "calibrate-gated": ("calibrate", "gated", "float32", False),
    "calibrate-int4-model": ("calibrate", "gated", "float32", True),
}


@pytest.mark.skipif(not memory_probe.can_measure(), reason="needs /proc/self/clear_refs")
@pytest.mark.parametrize("case", list(CASES))
def test_estimates_are_upper_bounds_of_what_is_measured(case, tmp_path):
    stage, kind, weight_dtype, int4 = CASES[case]
    path = ffn_stack(tmp_path / "m.onnx", kind, 512, 2048, 2)
    if int4:
        from tests.fixtures.quantized import matmul_nbits

        path = matmul_nbits(path, tmp_path / "q4.onnx", 4, 32, True)
    got = _measure(stage, path, weight_dtype)
    print(case, got)  # the figures, with -s
    assert got["measured"] <= got["estimate"] <= 20 * got["measured"], got
    if "load_measured" in got:
        assert got["load_measured"] <= got["load_estimate"] <= 20 * got["load_measured"], got


def test_the_budget_changes_no_artifact():
    assert CompileOptions(max_memory="8G").hash() == CompileOptions().hash()


def test_data_feeds_count_their_tokens(model, tmp_path):
    import numpy as np

    feeds = tmp_path / "feeds"
    feeds.mkdir()
    np.savez(feeds / "a.npz", x=np.zeros((2, 25, 64), np.float32))
    np.savez(feeds / "b.npz", x=np.zeros((1, 7, 64), np.float32), mask=np.ones((1, 7)))
    assert memory.feed_tokens(feeds) == [50, 7]
    a = analyze(model)
    without = memory.verification(a, CompileOptions())
    with_data = memory.verification(a, CompileOptions(data=feeds))
    assert with_data.bytes - without.bytes == 57 * memory.per_token(a) > 0
    assert f"{memory.probe_tokens(CompileOptions()) + 57} probe tokens" in with_data.detail


def test_verification_counts_one_sites_numpy_copies_not_every_sites(tmp_path):
    """The analysis holds int4 sites as their codes and verification dequantizes one site at
    a time in NumPy: two more int4 sites add their codes, what the sessions hold of their
    float32 values (2 copies) and their tokens' bytes, not 5 float32 copies of theirs (2
    held by the analysis, 3 by the NumPy checks) on top."""
    from tests.fixtures.quantized import matmul_nbits

    d, f = 256, 1024
    est = {}
    for layers in (2, 4):
        dense = ffn_stack(tmp_path / f"m{layers}.onnx", "gated", d, f, layers)
        q4 = matmul_nbits(dense, tmp_path / f"q{layers}.onnx", 4, 32, True)
        a = analyze(q4)
        assert len(a.sites) == layers and all(s.weight_formats for s in a.sites)
        est[layers] = memory.verification(a, CompileOptions()).bytes
    added_floats = 2 * 4 * 3 * d * f  # the two added sites' gate, up and down in float32
    # with 5 float32 copies of every site's projections on top it is ~38 MB more here
    assert 0 < est[4] - est[2] < 5 * added_floats, (est, added_floats)


def test_a_session_through_files_computes_what_one_from_bytes_does(tmp_path, monkeypatch):
    """Above ``THROUGH_FILES`` bytes of weights a session reads its model from a temporary
    file and external data: the same outputs, and the model in memory left as it was."""
    import numpy as np
    import onnx

    from fffc.verify import compare

    path = ffn_stack(tmp_path / "m.onnx", "gated", 64, 256, 2)
    proto = onnx.load(str(path))
    x = {"x": np.random.default_rng(0).standard_normal((2, 3, 64)).astype(np.float32)}
    from_bytes = compare.session(proto).run(None, x)[0]
    monkeypatch.setattr(compare, "THROUGH_FILES", 0)
    model = frontend.to_ir(proto)
    for m in (proto, model):
        got = compare.session(m).run(None, x)[0]
        np.testing.assert_array_equal(got, from_bytes)
    assert all(v.const_value is not None and v.const_value.numpy().size
               for v in model.graph.initializers.values())
    np.testing.assert_array_equal(compare.session(model).run(None, x)[0], from_bytes)


def test_the_analysis_keeps_int4_weights_as_their_codes(tmp_path):
    """Reading a quantized projection as float32 (a rule's match, a site's shapes) leaves
    it as its codes in the model: a few float32 copies are kept aside, read-only."""
    import numpy as np

    from fffc.passes import _common
    from tests.fixtures.quantized import matmul_nbits

    dense = ffn_stack(tmp_path / "m.onnx", "gated", 64, 256, 3)
    a = analyze(matmul_nbits(dense, tmp_path / "q.onnx", 4, 32, True))
    weights = [n.outputs[0] for n in a.working.graph if _common.dequantized(n)]
    assert len(weights) == 9 and all(w.const_value is None for w in weights)
    arrays = [_common.const_array(w) for w in weights]
    assert all(x.dtype == np.float32 and not x.flags.writeable for x in arrays)
    assert len(_common._dequantized_cache) <= 4
    assert all(w.const_value is None for w in weights)
