"""What the fuzzer found, one plain test each: the input that escaped as an untyped error,
a crash or a multi-line message, and the typed one-line error it now gets."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import fffc
import fffc.runtime
from fffc.cli import main
from fffc.contract.errors import ModelLoadError, UsageError
from fffc.runtime.integrity import ArtifactError, digests
from tests.fixtures.graphs import dense_ffn, gated_ffn
from tests.fixtures.mod_graphs import handmade_mod
from tests.fixtures.quantized import float_ffn, two_drelu_ffns
from tests.fuzz import genai_seed

ROOT = Path(__file__).resolve().parents[2]


def _save(m: onnx.ModelProto, path: Path) -> Path:
    onnx.save(m, str(path))
    return path


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("fffc: error")]
    assert len(lines) == 1 and "Traceback" not in err and "internal error" not in err, err
    return lines[0]


def _raw(m: onnx.ModelProto, name: str) -> onnx.TensorProto:
    t = next(t for t in m.graph.initializer if t.name == name)
    t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t), t.name))
    return t


@pytest.mark.parametrize("suffix", [".json", ".txt", ".textproto"])
def test_a_model_file_is_read_as_protobuf_whatever_its_name(tmp_path, capsys, suffix):
    """ONNX's loader picks a text format by the file's suffix (a GenAI config named as the
    decoder: protobuf's json_format ParseError, exit 1); ONNX Runtime reads binary protobuf
    whatever the name, and so does fffc."""
    text = tmp_path / f"m{suffix}"
    text.write_text('{"model": {"decoder": {"filename": "m.json"}}}')
    assert main(["inspect", str(text)]) == 3
    assert "not an ONNX model or truncated" in _error_line(capsys)
    binary = tmp_path / f"b{suffix}"  # onnx.save would pick the text format by the suffix
    binary.write_bytes(dense_ffn("relu").SerializeToString())
    assert main(["inspect", str(binary)]) == 0


def test_a_truncated_initializer_is_a_load_error(tmp_path, capsys):
    m = dense_ffn("relu")
    t = _raw(m, "W1")
    t.raw_data += bytes(8)  # ONNX's checker refuses too few bytes, not too many
    path = _save(m, tmp_path / "m.onnx")
    assert main(["inspect", str(path)]) == 3
    line = _error_line(capsys)
    assert "initializer 'W1': 3080 bytes of data, its shape [16, 48] of FLOAT needs 3072" in line


def test_an_initializer_whose_shape_does_not_fit_its_data_is_a_load_error(tmp_path):
    m = gated_ffn("silu", up_relu=False)
    _raw(m, "Wg").dims[:] = [16, 24]  # ONNX's checker refuses too few bytes, not too many
    with pytest.raises(ModelLoadError, match=r"initializer 'Wg'.*needs 1536"):
        fffc.inspect(_save(m, tmp_path / "m.onnx"))


def test_an_unknown_element_type_is_a_load_error(tmp_path, capsys):
    m = dense_ffn("relu")
    _raw(m, "b1").data_type = 999
    assert main(["calibrate", str(_save(m, tmp_path / "m.onnx")), "--synthetic", "1"]) == 3
    assert "initializer 'b1': unknown element type 999" in _error_line(capsys)


def test_a_graph_without_outputs_is_a_load_error(tmp_path):
    m = dense_ffn("relu")
    del m.graph.output[:]
    with pytest.raises(ModelLoadError, match="the graph has no outputs"):
        fffc.calibrate(_save(m, tmp_path / "m.onnx"), synthetic=1, seq=4)


def test_a_model_onnx_runtime_refuses_is_a_load_error(tmp_path, capsys):
    """ONNX's checker passes a string-typed input into MatMul; ONNX Runtime does not."""
    m = gated_ffn("silu", up_relu=False)
    m.graph.input[0].type.tensor_type.elem_type = TensorProto.STRING
    path = _save(m, tmp_path / "m.onnx")
    assert main(["calibrate", str(path), "--synthetic", "1", "-o",
                 str(tmp_path / "c.json")]) == 3
    assert "ONNX Runtime refuses the original model" in _error_line(capsys)
    assert not (tmp_path / "c.json").exists()


def test_identity_shapes_that_contradict_are_not_an_internal_error(tmp_path):
    """A value_info of rank 1 on the input of the Identity whose output is declared rank 3."""
    m = gated_ffn("silu", up_relu=False)
    into_out = next(n for n in m.graph.node if n.name == "out").input[0]
    m.graph.value_info.append(helper.make_tensor_value_info(into_out, TensorProto.FLOAT, [7]))
    a = fffc.inspect(_save(m, tmp_path / "m.onnx"))
    assert len(a.sites) == 1


def test_a_failing_synthetic_feed_is_one_line_naming_the_model(tmp_path, capsys):
    """MoD whose first GatherElements lost its axis (default 0): the generated feed drives
    it out of range."""
    path = Path(handmade_mod(tmp_path))
    m = onnx.load(str(path))
    gather = next(n for n in m.graph.node if n.op_type == "GatherElements")
    del gather.attribute[:]
    _save(m, path)
    with pytest.raises(UsageError) as e:
        fffc.calibrate(path, synthetic=1, seq=8)
    assert "\n" not in e.value.one_line() and e.value.path == str(path)
    assert "synthetic feed 0: ONNX Runtime rejected it" in e.value.reason


@pytest.mark.slow
def test_a_model_of_ir_version_3_compiles(tmp_path):
    """Before IR 4 initializers had to be graph inputs: the compiled model declared IR 3 with
    the new initializers fffc adds, and ONNX Runtime refused it in the artifact check."""
    m = onnx.load(str(two_drelu_ffns(tmp_path / "src.onnx")))
    m.ir_version = 3
    path = _save(m, tmp_path / "m.onnx")
    r = fffc.compile(path, tmp_path / "m.fffc", fffc.CompileOptions(target="x86"))
    assert onnx.load(str(r.artifact / "model.onnx")).ir_version >= 4


# ----------------------------------------------------------------------------- artifacts


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("findings")
    out = tmp / "ffn.fffc"
    fffc.compile(float_ffn(tmp / "ffn.onnx", "drelu"), out, fffc.CompileOptions(target="x86"))
    return out


@pytest.fixture
def artifact(compiled, tmp_path) -> Path:
    return Path(shutil.copytree(compiled, tmp_path / "a.fffc"))


def _redigest(art: Path) -> None:
    m = json.loads((art / "manifest.json").read_text())
    m["files"] = digests(art, frozenset({"manifest.json"}))
    (art / "manifest.json").write_text(json.dumps(m))


def test_a_manifest_that_is_not_json_is_an_artifact_error(artifact, capsys):
    (artifact / "manifest.json").write_text('{"model": ')
    with pytest.raises(ArtifactError, match="not valid JSON"):
        fffc.runtime.InferenceSession(artifact)
    assert main(["verify", str(artifact)]) == 11
    _error_line(capsys)


def test_a_truncated_shim_is_refused_before_it_is_loaded(artifact):
    """A shim cut to 4 KiB, the manifest's digests rewritten to match: the dynamic loader
    maps the missing pages and the process died of SIGBUS. In a subprocess, so that a
    regression is a failed test, not a dead test run."""
    shim = artifact / "libfffc_ops.so"
    shim.write_bytes(shim.read_bytes()[:4096])
    _redigest(artifact)
    code = ("import sys, fffc.runtime as r\n"
            "try:\n    r.InferenceSession(sys.argv[1])\n"
            "except r.ArtifactError as e:\n    print(e); sys.exit(42)\n")
    for check in ("", ", check_files=False"):
        p = subprocess.run([sys.executable, "-c", code.replace("(sys.argv[1])",
                                                               f"(sys.argv[1]{check})"),
                            str(artifact)], capture_output=True, text=True, timeout=120,
                           cwd=ROOT)
        assert p.returncode == 42, p.stderr[-2000:]
        assert "truncated shared library" in p.stdout


def test_a_declared_dim_of_2_to_the_40_is_a_load_error(tmp_path, capsys):
    """Declared on a Shape node's output, ONNX's shape inference ran for hours on it."""
    m = dense_ffn("relu")
    m.graph.value_info.append(helper.make_tensor_value_info("t1", TensorProto.FLOAT,
                                                            [2**40, 3]))
    assert main(["inspect", str(_save(m, tmp_path / "m.onnx"))]) == 3
    assert "value 't1' is declared with a dim of 1099511627776" in _error_line(capsys)


def test_a_node_name_that_is_not_utf8_is_a_load_error(tmp_path, capsys):
    """One flipped bit in a node name: protobuf returns the name as bytes, which the FFF
    rule's matched-nodes list could not join."""
    m = dense_ffn("relu")
    m.graph.node[0].name = "n1_MatMul"
    data = m.SerializeToString().replace(b"n1_MatMul", b"n1_MatMu\xe5", 1)
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    assert main(["inspect", str(path)]) == 3
    assert "a name that is not UTF-8 text (b'n1_MatMu\\xe5')" in _error_line(capsys)


def test_an_artifact_whose_model_onnx_runtime_cannot_parse_fails_verify(artifact, capsys):
    """A truncated model.onnx whose digest was rewritten to match: ONNX Runtime's
    InvalidProtobuf was not among the errors ``fffc verify`` reports as a failed check."""
    model = artifact / "model.onnx"
    model.write_bytes(model.read_bytes()[:100])
    _redigest(artifact)
    assert main(["verify", str(artifact)]) == 11
    assert "INVALID_PROTOBUF" in _error_line(capsys)


def test_an_opset_domain_that_is_not_utf8_is_a_load_error(tmp_path, capsys):
    """ONNX's checker quoted the domain in its message, and decoding that message raised
    UnicodeDecodeError out of ``onnx.checker``."""
    m = dense_ffn("relu")
    m.opset_import.append(helper.make_opsetid("com.fuzzz", 1))
    path = tmp_path / "m.onnx"
    path.write_bytes(m.SerializeToString().replace(b"com.fuzzz", b"com.fuzz\xf2", 1))
    assert main(["compile", str(path), "-o", str(tmp_path / "out")]) == 3
    assert "opset import: a name that is not UTF-8 text" in _error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_a_manifest_target_that_is_not_an_object_is_an_artifact_error(artifact, capsys):
    m = json.loads((artifact / "manifest.json").read_text())
    m["target"] = 1.5
    (artifact / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match=r"manifest key target is 1\.5, not an object"):
        fffc.runtime.InferenceSession(artifact)
    assert main(["verify", str(artifact)]) == 11
    assert "manifest key target is 1.5" in _error_line(capsys)


# ------------------------------------------------- --data feeds, calibrations, bench, GenAI


def _feed_case(tmp_path: Path) -> tuple[Path, Path]:
    model = float_ffn(tmp_path / "m.onnx", "drelu")
    feeds = tmp_path / "feeds.npz"
    np.savez(feeds, x=np.ones((1, 4, 128), np.float32))
    return model, feeds


@pytest.mark.parametrize(("content", "reason"), [
    (b"", "not a NumPy .npz"),  # np.load: EOFError
    (b"PK\x03\x04" + bytes(40), "not a NumPy .npz"),  # zipfile.BadZipFile
    (None, "not a NumPy .npz"),  # a .npy, not an .npz: np.load returns an array
])
def test_a_feed_file_that_is_no_npz_is_a_usage_error(tmp_path, capsys, content, reason):
    model, feeds = _feed_case(tmp_path)
    if content is None:
        np.save(tmp_path / "x.npy", np.ones((1, 4, 128), np.float32))
        (tmp_path / "x.npy").rename(feeds)
    else:
        feeds.write_bytes(content)
    assert main(["calibrate", str(model), "--data", str(feeds), "-o",
                 str(tmp_path / "c.json")]) == 2
    assert reason in _error_line(capsys)


def test_a_zip_of_a_version_zipfile_lacks_is_a_usage_error(tmp_path, capsys):
    """A feed whose central directory asks for extractor version 10.9 (one flipped bit):
    zipfile's NotImplementedError out of the memory estimate (exit 1)."""
    model, feeds = _feed_case(tmp_path)
    raw = bytearray(feeds.read_bytes())
    raw[raw.index(b"PK\x01\x02") + 6] = 109  # the central directory's "version needed"
    feeds.write_bytes(bytes(raw))
    assert main(["calibrate", str(model), "--data", str(feeds), "-o",
                 str(tmp_path / "c.json")]) == 2
    assert "not a NumPy .npz" in _error_line(capsys)


def test_a_feed_header_declaring_a_huge_shape_is_refused_before_allocating(tmp_path):
    """The member's .npy header says 2**62 float32s over 2 KiB of data: numpy allocated the
    declared array first (MemoryError, or an 8 EiB mapping)."""
    model, feeds = _feed_case(tmp_path)
    body = np.ones(512, np.float32).tobytes()
    header = repr({"descr": "<f4", "fortran_order": False, "shape": (2**62,)}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    with zipfile.ZipFile(feeds, "w") as z:
        z.writestr("x.npy", b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little")
                   + header + body)
    with pytest.raises(UsageError, match=r"declares \[4611686018427387904\] of float32"):
        fffc.calibrate(model, data=feeds, seq=4, samples=32)


def test_a_calibration_of_the_wrong_shape_is_a_usage_error(tmp_path, capsys):
    """CALIB.json whose model section is a number, or a site's thresholds without a level
    the sparsities list: AttributeError / KeyError in the allocation before."""
    model = float_ffn(tmp_path / "m.onnx", "relu")
    calib = tmp_path / "c.json"
    fffc.calibrate(model, synthetic=1, seq=4, samples=32, output=calib)
    good = json.loads(calib.read_text())
    bad_model = {**good, "model": 7}
    bad_kind = json.loads(calib.read_text())  # a list: unhashable, TypeError before
    next(iter(bad_kind["sites"].values()))["kind"] = ["dense"]
    bad_levels = json.loads(calib.read_text())
    site = next(iter(bad_levels["sites"].values()))
    del site["thresholds"]["input"]["0.5"]
    for doc, what in ((bad_model, "no model section"),
                      (bad_levels, "thresholds.input"), (bad_kind, "kind ['dense']")):
        calib.write_text(json.dumps(doc))
        assert main(["compile", str(model), "--calibration", str(calib), "--budget",
                     "sparsity=0.5", "-o", str(tmp_path / "out")]) == 2
        line = _error_line(capsys)
        assert "not a calibration fffc calibrate writes" in line and what in line
    assert not (tmp_path / "out").exists()


def test_a_calibration_without_sites_is_a_usage_error(tmp_path, capsys):
    """CALIB.json whose sites object is empty: the budget search divided by the skippable
    weights of no site (ZeroDivisionError, exit 1)."""
    model = float_ffn(tmp_path / "m.onnx", "relu")
    calib = tmp_path / "c.json"
    fffc.calibrate(model, synthetic=1, seq=4, samples=32, output=calib)
    calib.write_text(json.dumps({**json.loads(calib.read_text()), "sites": {}}))
    for budget in ("sparsity=0.5", "error=0.05"):
        assert main(["compile", str(model), "--calibration", str(calib), "--budget", budget,
                     "-o", str(tmp_path / "out")]) == 2
        assert "holds no site with weights to skip" in _error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_predictors_of_the_wrong_shape_are_a_usage_error(tmp_path):
    model = float_ffn(tmp_path / "m.onnx", "relu")
    calib = tmp_path / "c.json"
    fffc.calibrate(model, synthetic=2, seq=8, samples=64, predictor_rank=4, output=calib)
    preds = calib.with_suffix(".predictors.npz")
    with np.load(preds) as z:
        arrays = {k: z[k] for k in z.files}
    name = next(k for k in arrays if k.endswith("/b"))
    arrays[name] = arrays[name][:, :7]
    np.savez(preds, **arrays)
    with pytest.raises(UsageError, match=r"predictor of site .* has shapes"):
        fffc.compile(model, tmp_path / "out", fffc.CompileOptions(
            target="x86", calibration=calib, budget="predictor"))
    doc = json.loads(calib.read_text())  # the predictors' site without its predictor entry
    del next(iter(doc["sites"].values()))["predictor"]
    calib.write_text(json.dumps(doc))
    with pytest.raises(UsageError, match=r"whose entry in the calibration has none"):
        fffc.compile(model, tmp_path / "out", fffc.CompileOptions(
            target="x86", calibration=calib, budget="sparsity=0.5"))


@pytest.mark.parametrize(("argv", "code", "reason"), [
    (["--tokens", "-1"], 2, "expected token counts >= 1"),  # ValueError in numpy
    (["--tokens", "1099511627776"], 2, "does not fit in memory"),  # MemoryError
    (["--repeat", "-1"], 2, ">= 1 timed call"),
    (["--original", "DIR"], 3, "cannot read the original model"),  # IsADirectoryError
    (["--original", "OTHER"], 2, "is it the model the artifact was compiled from"),
    (["--tokens", "1", "--plot", "DIR/no/plot.png"], 2, "--plot: cannot write the plot"),
    (["--tokens", "1", "--plot", "DIR"], 2, "--plot: cannot write the plot"),  # DIR.png
])
def test_bench_refuses_bad_flags_in_one_line(artifact, tmp_path, capsys, argv, code, reason):
    (tmp_path / "DIR").mkdir()
    _save(dense_ffn("gelu"), tmp_path / "OTHER")
    argv = [str(tmp_path / a) if a.startswith(("DIR", "OTHER")) else a for a in argv]
    assert main(["bench", str(artifact), "--repeat", "1", *argv]) == code
    assert reason in _error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["DIR", "OTHER", "a.fffc"]


def test_a_manifest_without_the_source_is_an_artifact_error_for_bench(artifact, capsys):
    m = json.loads((artifact / "manifest.json").read_text())
    m["source"] = 1
    (artifact / "manifest.json").write_text(json.dumps(m))
    assert main(["bench", str(artifact), "--tokens", "1", "--repeat", "1"]) == 11
    assert "does not name the original model" in _error_line(capsys)


@pytest.mark.parametrize("options", ['"/etc/passwd"', "[]", "7"])
def test_genai_session_options_that_are_no_object_are_a_load_error(tmp_path, capsys, options):
    """The decoder's session_options a string, a list or a number: compile's folder layout
    called .get on it (AttributeError, exit 1)."""
    folder = genai_seed.folder(tmp_path / "g")
    cfg = json.loads((folder / "genai_config.json").read_text())
    cfg["model"]["decoder"]["session_options"] = json.loads(options)
    (folder / "genai_config.json").write_text(json.dumps(cfg))
    for argv in (["compile", str(folder), "-o", str(tmp_path / "out")], ["inspect", str(folder)]):
        assert main(argv) == 3
        assert "model.decoder.session_options in genai_config.json is" in _error_line(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("head", ["Infinity", "-1", "1e999", "2199023255552"])
def test_a_genai_head_size_that_is_no_size_is_refused(tmp_path, capsys, head):
    """A decoder whose cache's head dim is symbolic takes the config's head_size: an infinite
    one raised OverflowError, a negative or huge one ValueError out of numpy."""
    folder = genai_seed.folder(tmp_path / "g")
    dec = onnx.load(str(folder / "model.onnx"))
    for vi in (*dec.graph.input, *dec.graph.output):
        if vi.name.startswith(("past", "present")):
            vi.type.tensor_type.shape.dim[3].dim_param = "head_size"
    onnx.save(dec, str(folder / "model.onnx"))
    cfg = (folder / "genai_config.json").read_text()
    (folder / "genai_config.json").write_text(cfg.replace('"head_size": 8', f'"head_size": {head}'))
    assert main(["calibrate", str(folder), "--synthetic", "1", "--seq", "4", "-o",
                 str(tmp_path / "c.json")]) == 4
    assert "model.decoder.head_size in genai_config.json is" in _error_line(capsys)


@pytest.mark.slow
def test_bench_of_a_genai_folder_refuses_a_bad_original_in_one_line(tmp_path, capsys):
    """``fffc bench`` on a compiled GenAI folder with ``--original`` a folder onnxruntime-genai
    refuses (a RuntimeError out of ``og.Model``, exit 1 before) or one whose config names a
    native library outside it (GenAI tried to load it)."""
    pytest.importorskip("onnxruntime_genai")
    src = genai_seed.folder(tmp_path / "g")
    out = tmp_path / "g.fffc"
    fffc.compile(src, out, fffc.CompileOptions(target="x86", crossovers="table"))
    flags = ["--prompt", "2", "--generate", "2", "--repeat", "1"]

    def original(edit) -> Path:
        folder = Path(shutil.copytree(src, tmp_path / f"o{len(list(tmp_path.glob('o*')))}"))
        cfg = json.loads((folder / "genai_config.json").read_text())
        edit(cfg["model"])
        (folder / "genai_config.json").write_text(json.dumps(cfg))
        return folder

    bad = original(lambda m: m.update(context_length=None))
    assert main(["bench", str(out), "--original", str(bad), *flags]) == 3
    assert "onnxruntime-genai cannot open the folder" in _error_line(capsys)
    lib = original(lambda m: m["decoder"]["session_options"].update(
        custom_ops_library="/usr/lib/libc.so.6"))
    assert main(["bench", str(out), "--original", str(lib), *flags]) == 2
    assert "not a path inside the folder" in _error_line(capsys)
    assert main(["bench", str(out), *flags]) == 0


def test_feeds_without_rows_are_a_usage_error(tmp_path):
    """A decoder's feed of 0 tokens: the site saw no rows and the centers' quantile raised
    IndexError on the empty sample."""
    model = genai_seed.decoder(tmp_path / "m.onnx")
    feeds = tmp_path / "feeds.npz"
    np.savez(feeds, input_ids=np.zeros((0, 0), np.int64),
             attention_mask=np.zeros((1, 0), np.int64),
             **{f"past_key_values.0.{kv}": np.zeros((1, 2, 0, 8), np.float32)
                for kv in ("key", "value")})
    with pytest.raises(UsageError, match=r"the feeds hold no rows for site\(s\) \['fffc_ffn_0'\]"):
        fffc.calibrate(model, data=feeds, seq=4, samples=32)
