"""Bad input: one clear line (file, node, reason), a documented exit code, nothing written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fffc.cli import main
from fffc.contract.errors import EXIT_CODES
from tests.fixtures.graphs import G, dense_ffn, rand


def _run(capsys, *argv: str) -> tuple[int, list[str]]:
    rc = main(list(argv))
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("fffc: error")]
    assert "Traceback" not in err
    return rc, lines


def _save(m: onnx.ModelProto, path: Path) -> Path:
    onnx.save(m, str(path))
    return path


def test_not_onnx(tmp_path, capsys):
    bad = tmp_path / "notes.onnx"
    bad.write_text("this is not a model")
    rc, lines = _run(capsys, "compile", str(bad), "-o", str(tmp_path / "out"))
    assert rc == EXIT_CODES["ModelLoadError"] and len(lines) == 1
    assert str(bad) in lines[0] and "not an ONNX model" in lines[0]
    assert not (tmp_path / "out").exists()


def test_truncated_file(tmp_path, capsys):
    good = _save(dense_ffn("relu"), tmp_path / "good.onnx")
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    rc, lines = _run(capsys, "inspect", str(cut))
    assert rc == EXIT_CODES["ModelLoadError"] and len(lines) == 1
    assert "cut.onnx" in lines[0]


def test_missing_file(tmp_path, capsys):
    rc, lines = _run(capsys, "inspect", str(tmp_path / "nope.onnx"))
    assert rc == EXIT_CODES["ModelLoadError"] and "no such file" in lines[0]


def test_unsupported_opset(tmp_path, capsys):
    m = dense_ffn("relu")
    m.opset_import[0].version = 9
    path = _save(m, tmp_path / "old.onnx")
    rc, lines = _run(capsys, "compile", str(path), "-o", str(tmp_path / "out"))
    assert rc == EXIT_CODES["UnsupportedModelError"] and "unsupported opset 9" in lines[0]
    assert not (tmp_path / "out").exists()


def test_unknown_target(tmp_path, capsys):
    path = _save(dense_ffn("relu"), tmp_path / "m.onnx")
    rc, lines = _run(capsys, "compile", str(path), "--target", "tpu", "-o", str(tmp_path / "out"))
    assert rc == EXIT_CODES["UsageError"] and "unknown target 'tpu'" in lines[0]
    assert not (tmp_path / "out").exists()


def test_arm_with_an_x86_cpu_is_refused(tmp_path, capsys):
    path = _save(dense_ffn("relu"), tmp_path / "m.onnx")
    rc, lines = _run(capsys, "compile", str(path), "--target", "arm", "--mcpu", "haswell",
                     "-o", str(tmp_path / "out"))
    assert rc == EXIT_CODES["UnsupportedTargetError"] and "not an aarch64 CPU" in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("arch", ["sm90", "compute_90", ","])
def test_bad_cuda_arch(tmp_path, capsys, arch):
    path = _save(dense_ffn("relu"), tmp_path / "m.onnx")
    rc, lines = _run(capsys, "compile", str(path), "--target", "cuda", "--arch", arch,
                     "-o", str(tmp_path / "out"))
    assert rc == EXIT_CODES["UsageError"] and "--arch" in lines[0]
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_force(tmp_path, capsys):
    path = _save(dense_ffn("relu"), tmp_path / "m.onnx")
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    rc, lines = _run(capsys, "compile", str(path), "-o", str(out))
    assert rc == EXIT_CODES["UsageError"] and "--force" in lines[0]
    assert (out / "mine.txt").read_text() == "user data"
    rc, lines = _run(capsys, "compile", str(path), "-o", str(out), "--force")
    assert rc == EXIT_CODES["UsageError"] and "not an fffc artifact" in lines[0]
    assert (out / "mine.txt").read_text() == "user data"


def test_no_ffn(tmp_path, capsys):
    g = G()
    path = _save(g.model(g.op("Add", "x", g.init("b", rand(16)))), tmp_path / "add.onnx")
    rc, lines = _run(capsys, "compile", str(path), "-o", str(tmp_path / "out"))
    assert rc == EXIT_CODES["NoSitesError"] and "no FFN found" in lines[0]
    assert not (tmp_path / "out").exists()


def test_bf16_model_is_rejected_clearly(tmp_path, capsys):
    """A bfloat16 model's FFN is a site, but ONNX Runtime's CPU provider (which verification
    runs) has no bfloat16 MatMul: one line, before anything is built."""
    w1 = helper.make_tensor("W1", TensorProto.BFLOAT16, (16, 48), np.ones(16 * 48))
    w2 = helper.make_tensor("W2", TensorProto.BFLOAT16, (48, 16), np.ones(48 * 16))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"),
         helper.make_node("Relu", ["h"], ["a"], name="act"),
         helper.make_node("MatMul", ["a", "W2"], ["y"], name="fc2")],
        "bf16", [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["T", 16])],
        [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, ["T", 16])], [w1, w2])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path = _save(m, tmp_path / "bf16.onnx")
    rc, lines = _run(capsys, "compile", str(path), "-o", str(tmp_path / "out"))
    assert rc == EXIT_CODES["UnsupportedModelError"]
    assert "CPU provider cannot run the original model" in lines[0] and "MatMul" in lines[0]
    assert not (tmp_path / "out").exists()


def test_bad_mattr(tmp_path, capsys):
    path = _save(dense_ffn("relu"), tmp_path / "m.onnx")
    rc, lines = _run(capsys, "compile", str(path), "--target", "arm", "--mattr", "dotprod",
                     "-o", str(tmp_path / "out"))
    assert rc == EXIT_CODES["UsageError"] and "--mattr" in lines[0]


def test_missing_cross_compiler_says_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CXX_AARCH64", str(tmp_path / "no-such-g++"))
    path = _save(dense_ffn("relu"), tmp_path / "m.onnx")
    rc, lines = _run(capsys, "compile", str(path), "--target", "arm", "-o", str(tmp_path / "out"))
    assert rc == EXIT_CODES["PackagingError"] and "g++-aarch64-linux-gnu" in lines[0]
    assert not (tmp_path / "out").exists()


def test_weight_dtype_is_for_cuda(tmp_path, capsys):
    """16-bit weights are read by the CUDA kernels only: a CPU target says so."""
    path = _save(dense_ffn("relu"), tmp_path / "m.onnx")
    rc, lines = _run(capsys, "compile", str(path), "--target", "x86", "--weight-dtype", "fp16",
                     "-o", str(tmp_path / "out"))
    assert rc == EXIT_CODES["UsageError"] and "--target cuda" in lines[0]
    assert not (tmp_path / "out").exists()


def test_cuda_version_without_its_compiler(tmp_path, capsys, monkeypatch):
    """--cuda-version 12 where no CUDA 12 compiler is: exit 9, one line naming what was
    tried and how to install one, nothing written."""
    from tests.fixtures.cuda_toolkit import no_cuda12

    no_cuda12(monkeypatch)
    path = _save(dense_ffn("relu"), tmp_path / "m.onnx")
    rc, lines = _run(capsys, "compile", str(path), "--target", "cuda", "--cuda-version", "12",
                     "-o", str(tmp_path / "out"))
    assert rc == EXIT_CODES["CodegenError"] == 9, lines
    assert "no CUDA 12 compiler found" in lines[0] and "fffc[cuda12]" in lines[0], lines
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, env, message", [
    ([], "sometimes", "FFFC_CROSSOVERS"),
    (["--timings", "missing.json"], None, "--timings: cannot read"),
    (["--timings", "rows.json"], None, "each row needs tokens, kernel_ms and original_ms"),
    (["--max-sparse-tokens", "-1"], None, "--max-sparse-tokens must be >= 0"),
])
def test_bad_crossover_settings(tmp_path, capsys, monkeypatch, extra, env, message):
    """Bad crossover settings: one line, exit code 2, nothing written."""
    import fffc

    path = _save(dense_ffn("relu"), tmp_path / "m.onnx")
    (name,) = [s.name for s in fffc.inspect(path).sites]
    (tmp_path / "rows.json").write_text(f'{{"{name}": [{{"tokens": 1, "kernel_ms": 1.0}}]}}')
    if env is not None:
        monkeypatch.setenv("FFFC_CROSSOVERS", env)
    monkeypatch.chdir(tmp_path)
    rc, lines = _run(capsys, "compile", str(path), "-o", str(tmp_path / "out"), *extra)
    assert rc == EXIT_CODES["UsageError"] and len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "out").exists()
