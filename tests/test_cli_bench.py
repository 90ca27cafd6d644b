"""``fffc bench``: original vs artifact side by side, as JSON rows and as a plot."""

from __future__ import annotations

import json

import onnx

from fffc.cli import main
from tests.fixtures.graphs import dense_ffn


def test_bench_json_and_plot(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(dense_ffn("relu"), str(path))
    assert main(["compile", str(path), "-o", str(tmp_path / "m.fffc")]) == 0
    capsys.readouterr()
    png = tmp_path / "bench.png"
    rc = main(["bench", str(tmp_path / "m.fffc"), "--tokens", "1,4", "--repeat", "3", "--json",
               "--plot", str(png)])
    assert rc == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["tokens"] for r in rows] == [1, 4]
    assert all(r["original_ms"] > 0 and r["fffc_ms"] > 0 and r["max_rel_err"] < 1e-4 for r in rows)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
