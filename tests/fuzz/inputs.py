"""Mutations of what a user hands fffc besides a model: ``--data`` feeds, ONNX Runtime GenAI
folders (``genai_config.json`` and the files it names), ``--calibration`` files with their
``--budget``, and ``fffc bench``'s flags and artifacts; the hypothesis strategies that draw
them.

A case is plain data as in ``mutations``: its ``kind`` (``data``, ``genai``,
``calibration``, ``bench``), a list of ``[mutation, params]`` and the entry point (``op``),
built into a case folder by ``build`` and run by the harness (``library``/``argv``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
from hypothesis import strategies as st

from tests.fuzz import genai_seed, seeds
from tests.fuzz.mutations import _param, _pick, mutate_artifact, redigest

WRONG_JSON = (None, 0, -1, 2**40, -(2**63), 1.5, float("nan"), float("inf"), "", "x",
              "../x", "/etc/passwd", [], [1, "a"], {}, {"a": 1}, True)
NUMBERS = (0, -1, 1, 2**31, 2**40, 2**64, 0.5, -0.0, 1e308, float("nan"), float("inf"),
           float("-inf"), "16", True)

# ------------------------------------------------------------------------ JSON documents


def json_paths(doc, depth: int = 5, prefix: tuple = ()) -> list[tuple]:
    """Every key and list index of ``doc`` down to ``depth`` (a list's first 3 items)."""
    out = []
    if depth == 0:
        return out
    if isinstance(doc, dict):
        for k in sorted(doc):
            out.append((*prefix, k))
            out += json_paths(doc[k], depth - 1, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:3]):
            out.append((*prefix, i))
            out += json_paths(v, depth - 1, (*prefix, i))
    return out


def _parent(doc, path: tuple):
    for k in path[:-1]:
        doc = doc[k]
    return doc


def json_mutate(doc, name: str, p: dict, preferred: tuple[tuple, ...] = ()):
    """``doc`` mutated in place by ``name`` (drop, set, number, extra) at a path drawn from
    ``preferred`` (when it exists there) or from every path; returns the document."""
    paths = json_paths(doc)
    present = [q for q in preferred if q in paths]
    pool = present if present and p["k"] % 2 else paths
    if not pool:
        return doc
    path = pool[p["i"] % len(pool)]
    parent = _parent(doc, path)
    key = path[-1]
    if name == "json_drop":
        del parent[key]
    elif name == "json_set":
        parent[key] = _pick(WRONG_JSON, p["j"])
    elif name == "json_number":
        parent[key] = _pick(NUMBERS, p["j"])
    elif name == "json_extra" and isinstance(parent[key], dict):
        parent[key][("fuzz", "filename", "session_options", "custom_ops_library",
                     "pipeline", "type")[p["j"] % 6]] = _pick(WRONG_JSON, p["j"] // 6)
    return doc


JSON_MUTATIONS = ("json_drop", "json_set", "json_number", "json_extra")


def _dump(doc) -> str:
    return json.dumps(doc)  # NaN and Infinity as Python's json writes (and reads) them


# ---------------------------------------------------------------------------- data feeds

DATA_MUTATIONS = ("rename", "drop", "extra", "dtype", "add_dim", "drop_dim", "set_dim",
                  "nonfinite", "scalar", "empty_array", "huge_values", "object_array",
                  "fortran", "truncate", "flip", "empty_file", "not_zip", "huge_header",
                  "not_npy_member", "missing", "folder", "empty_folder", "symlink_out",
                  "directory_named_npz", "nested_member")
DTYPES = ("float64", "float16", "int64", "int32", "bool", "uint8", "complex64", "<U3",
          "int8", "float32")
DATA_OPS = ("calibrate", "calibrate-cli", "calibrate", "calibrate-cli", "compile-cli",
            "subprocess-calibrate")
DATA_SEEDS = ("dense-relu", "gated-silu", "drelu", "mod", "genai-decoder")


def good_feed(model: Path) -> dict[str, np.ndarray]:
    """A feed the model runs on (fffc's own feed synthesis: a decoder's agrees with itself)."""
    import onnx

    from fffc.verify.feeds import probe_inputs

    return probe_inputs(onnx.load(str(model)), 1, 4, seed=0, count=1, path=model)[0]


def _npz(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _array_step(feed: dict, name: str, p: dict) -> None:
    if not feed:
        return
    keys = sorted(feed)
    k = keys[p["i"] % len(keys)]
    a = feed[k]
    if name == "rename":
        feed[("X", k + "_", "", "input_ids", "../x", "attention_mask")[p["j"] % 6]] = feed.pop(k)
    elif name == "drop":
        del feed[k]
    elif name == "extra":
        feed[("fuzz", "attention_mask", "past_key_values.0.key")[p["j"] % 3]] = a
    elif name == "dtype":
        feed[k] = a.astype(_pick(DTYPES, p["j"]))
    elif name == "add_dim":
        feed[k] = a.reshape((1,) * (1 + p["j"] % 2) + a.shape)
    elif name == "drop_dim" and a.ndim:
        feed[k] = a.reshape(a.shape[1:]) if a.ndim > 1 and a.shape[0] == 1 else a.reshape(-1)
    elif name == "set_dim" and a.ndim:
        shape = list(a.shape)
        shape[p["j"] % len(shape)] = (0, 1, 3, 4096, 7)[p["k"] % 5]
        feed[k] = np.resize(a, shape)
    elif name == "nonfinite" and a.dtype.kind == "f" and a.size:
        a = a.copy()
        a.reshape(-1)[p["j"] % a.size] = (np.nan, np.inf, -np.inf)[p["k"] % 3]
        if p["k"] % 4 == 3:
            a[...] = np.nan
        feed[k] = a
    elif name == "scalar":
        feed[k] = np.asarray(a.reshape(-1)[0] if a.size else 0, a.dtype)
    elif name == "empty_array":
        feed[k] = np.zeros((0,) * max(a.ndim, 1), a.dtype)
    elif name == "huge_values" and a.dtype.kind in "fi":
        feed[k] = np.full_like(a, np.finfo(np.float32).max if a.dtype.kind == "f" else
                               np.iinfo(a.dtype).max)
    elif name == "object_array":
        feed[k] = np.array([a, None], dtype=object)
    elif name == "fortran" and a.ndim >= 2:
        feed[k] = np.asfortranarray(np.swapaxes(a, -1, -2))


def _huge_header(data: bytes, p: dict) -> bytes:
    """Every member's .npy header rewritten to declare dims of 2**40 (or a product past
    2**63) over the data it holds."""
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for info in src.infolist():
            raw = src.read(info)
            shape = ((2**40, 16), (2**31, 2**31, 4), (2**62,), (0, 2**40))[p["j"] % 4]
            header = {"descr": "<f4", "fortran_order": False, "shape": shape}
            hdr = repr(header).encode()
            hdr += b" " * (63 - (len(hdr) + 10) % 64) + b"\n"
            body = b"\x93NUMPY\x01\x00" + len(hdr).to_bytes(2, "little") + hdr
            z.writestr(info.filename, body + raw[128:])
    return out.getvalue()


def build_data(case: dict, d: Path) -> None:
    """The unmutated model under ``d/model/`` and the mutated feeds at ``d/feeds.npz`` (or
    the folder ``d/feeds/``)."""
    model_dir = d / "model"
    model_dir.mkdir()
    if case["seed"] == "genai-decoder":
        model = genai_seed.decoder(model_dir / "model.onnx")
    else:
        model = model_dir / "model.onnx"
        model.write_bytes(seeds.model_bytes(case["seed"]))
    feed = good_feed(model)
    steps = case["mutations"]
    for name, p in steps:
        _array_step(feed, name, p)
    try:
        data = _npz(feed)
    except Exception:  # an array np.savez cannot write: the feed as it was
        data = _npz(good_feed(model))
    target = d / "feeds.npz"
    (d / "outside.npz").write_bytes(_npz(good_feed(model)))
    for name, p in steps:
        if name == "truncate":
            data = data[: len(data) * (p["j"] % 100) // 100]
        elif name == "flip" and data:
            b = bytearray(data)
            for at in np.random.default_rng(p["j"]).integers(0, len(b), 1 + p["k"] % 8):
                b[at] ^= 1 << int(p["k"] % 8)
            data = bytes(b)
        elif name == "empty_file":
            data = b""
        elif name == "not_zip":
            data = (b"hello", b"PK\x03\x04", b"\x93NUMPY\x01\x00")[p["j"] % 3]
        elif name == "huge_header":
            with contextlib.suppress(zipfile.BadZipFile):
                data = _huge_header(data, p)
        elif name == "not_npy_member":
            buf = io.BytesIO(data)
            try:
                with zipfile.ZipFile(buf, "a") as z:
                    z.writestr(("x.npy", "x", "notes.txt")[p["j"] % 3], b"not an array")
                data = buf.getvalue()
            except zipfile.BadZipFile:
                pass
        elif name == "nested_member":
            buf = io.BytesIO(data)
            try:
                with zipfile.ZipFile(buf, "a") as z:
                    z.writestr(("../x.npy", "/abs.npy", "sub/x.npy")[p["j"] % 3],
                               _npz({"x": np.zeros(2)}))
                data = buf.getvalue()
            except zipfile.BadZipFile:
                pass
    names = [n for n, _ in steps]
    if "missing" in names:
        return
    if "empty_folder" in names:
        (d / "feeds").mkdir()
        return
    if "directory_named_npz" in names:
        (d / "feeds.npz").mkdir()
        return
    if "folder" in names:
        (d / "feeds").mkdir()
        (d / "feeds" / "a.npz").write_bytes(_npz(good_feed(model)))
        target = d / "feeds" / "b.npz"
    if "symlink_out" in names:
        outside = d / "outside_feed.npz"
        outside.write_bytes(data)
        os.symlink(outside, target)
        return
    target.write_bytes(data)


def data_path(d: Path) -> Path:
    return d / "feeds" if (d / "feeds").is_dir() else d / "feeds.npz"


# ------------------------------------------------------------------------- GenAI folders

GENAI_MUTATIONS = (*JSON_MUTATIONS, *JSON_MUTATIONS, "filename", "session_options",
                   "custom_ops_library", "head_size", "head_size", "config_bytes",
                   "decoder_file", "folder_file", "pipeline", "symbolic_head")
GENAI_PATHS = (("model", "decoder", "filename"), ("model", "decoder", "head_size"),
               ("model", "decoder", "session_options"), ("model", "decoder"), ("model",),
               ("model", "context_length"), ("model", "vocab_size"),
               ("model", "decoder", "session_options", "provider_options"),
               ("model", "decoder", "inputs"), ("model", "decoder", "outputs"))
GENAI_OPS = ("inspect", "inspect-cli", "calibrate", "calibrate-cli", "inspect", "calibrate-cli",
             "compile-cli", "subprocess-inspect")
FILENAMES = ("/etc/passwd", "../outside.onnx", "", "sub/../model.onnx", "model.onnx/",
             "./model.onnx", "missing.onnx", "adir", "link.onnx", "..\\outside.onnx",
             "special_tokens_map.json", "genai_config.json", "C:\\model.onnx", "model.onnx\0")


def _genai_config(doc, name: str, p: dict, folder: Path, case_dir: Path):
    decoder = doc.get("model", {}).get("decoder") if isinstance(doc, dict) and \
        isinstance(doc.get("model"), dict) else None
    if name in JSON_MUTATIONS:
        return json_mutate(doc, name, p, GENAI_PATHS)
    if not isinstance(decoder, dict):
        return doc
    if name == "filename":
        f = _pick(FILENAMES, p["j"])
        if f == "adir":
            (folder / "adir").mkdir(exist_ok=True)
        elif f == "link.onnx" and not (folder / f).is_symlink():
            os.symlink(case_dir / "outside.onnx", folder / f)
        decoder["filename"] = f
    elif name == "session_options":
        decoder["session_options"] = _pick(WRONG_JSON, p["j"])
    elif name == "custom_ops_library":
        so = decoder.setdefault("session_options", {})
        if isinstance(so, dict):
            so["custom_ops_library"] = ("/usr/lib/libc.so.6", "../lib.so", "libfffc_ops.so",
                                        5, "", None, str(case_dir / "lib.so"))[p["j"] % 7]
    elif name == "head_size":
        decoder["head_size"] = _pick(NUMBERS, p["j"])
    elif name == "pipeline":
        decoder["pipeline"] = ([{"embed": {"filename": "model.onnx"}}], [], "x")[p["j"] % 3]
        if p["k"] % 2:
            decoder.pop("filename", None)
    return doc


def build_genai(case: dict, d: Path, seed_folder: Path) -> Path:
    """The seed GenAI folder copied to ``d/model/`` and mutated; files meant to be outside
    it in ``d``."""
    folder = Path(shutil.copytree(seed_folder, d / "model", symlinks=True))
    (d / "outside.onnx").write_bytes((folder / "model.onnx").read_bytes())
    cfg = folder / genai_seed.CONFIG
    doc = json.loads(cfg.read_text())
    raw: bytes | None = None
    for name, p in case["mutations"]:
        if name == "config_bytes":
            raw = (b"", b"{", b"[]", b"null", b"\xff\xfe{}", b'{"model": 1}',
                   _dump(doc).encode()[: p["k"] % 200], b"{\"model\": {\"decoder\": "
                   b"{\"filename\": \"model.onnx\", \"head_size\": 1e999}}}")[p["j"] % 8]
        elif name == "decoder_file":
            dec = folder / "model.onnx"
            choice = p["j"] % 5
            if choice == 0:
                dec.unlink()
            elif choice == 1:
                dec.write_bytes(dec.read_bytes()[: p["k"] % 2000])
            elif choice == 2:
                dec.unlink()
                dec.mkdir()
            elif choice == 3:
                dec.unlink()
                os.symlink(d / "outside.onnx", dec)
            else:
                dec.write_bytes(seeds.model_bytes("dense-relu"))
        elif name == "symbolic_head":  # the cache's head size then comes from the config
            import onnx

            dec = folder / "model.onnx"
            if dec.is_file() and not dec.is_symlink():
                m = onnx.load(str(dec))
                for vi in (*m.graph.input, *m.graph.output):
                    dims = vi.type.tensor_type.shape.dim
                    if vi.name.startswith(("past", "present")) and len(dims) == 4:
                        dims[3].dim_param = "head_size"
                onnx.save(m, str(dec))
        elif name == "folder_file":
            rel = ("manifest.json", "libfffc_ops.so", "kernels/x.so", "sub/deep/x.txt",
                   "loop", "outlink", "outdir", "model.onnx.data")[p["j"] % 8]
            target = folder / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists() or target.is_symlink():
                continue
            if rel == "loop":
                os.symlink(folder, target)
            elif rel == "outlink":
                os.symlink(d / "outside.onnx", target)
            elif rel == "outdir":
                os.symlink(d, target)
            else:
                target.write_bytes(b"fuzz")
        else:
            doc = _genai_config(doc, name, p, folder, d)
    cfg.write_bytes(raw if raw is not None else _dump(doc).encode())
    return folder


# ------------------------------------------------------------------------- calibrations

CALIBRATION_MUTATIONS = (*JSON_MUTATIONS, *JSON_MUTATIONS, "threshold", "calib_file",
                         "calib_bytes", "model_hash")
CALIBRATION_PATHS = (("model",), ("model", "sha256"), ("sites",), ("sparsities",),
                     ("sparsities", 0), ("center",), ("predictors",), ("samples",),
                     ("sites", "fffc_ffn_0"), ("sites", "fffc_ffn_0", "thresholds"),
                     ("sites", "fffc_ffn_0", "d_model"), ("sites", "fffc_ffn_0", "d_ff"),
                     ("sites", "fffc_ffn_0", "kind"), ("sites", "fffc_ffn_0", "predictor"),
                     ("sites", "fffc_ffn_0", "thresholds", "input"),
                     ("sites", "fffc_ffn_0", "thresholds", "hidden"),
                     ("sites", "fffc_ffn_0", "centers"), ("allocation",), ("budget",))
BUDGETS = (None, "sparsity=0.5", "error=0.05", "uniform=0.5", "cats=0.5", "predictor",
           "sparsity=2", "sparsity=nan", "error=-1", "foo=1", "sparsity=", "uniform=0.33",
           "error=inf", "=", "sparsity=0.5=1")
CALIBRATION_OPS = ("compile-cli", "compile-cli", "compile", "subprocess-compile")
CALIBRATION_SEED = "dense-relu"


def calibration_seed(cache: Path) -> Path:
    """CALIB.json of the ``dense-relu`` seed (2 synthetic feeds, a rank-4 predictor) with
    its ``.samples.npz`` and ``.predictors.npz``, made once under ``cache``."""
    out = cache / "calibration" / "calib.json"
    if out.exists():
        return out
    import fffc

    out.parent.mkdir(parents=True, exist_ok=True)
    model = out.parent / "model.onnx"
    model.write_bytes(seeds.model_bytes(CALIBRATION_SEED))
    fffc.calibrate(model, synthetic=2, seq=8, samples=64, predictor_rank=4, output=out)
    return out


def build_calibration(case: dict, d: Path, seed_calib: Path) -> None:
    (d / "model").mkdir()
    (d / "model" / "model.onnx").write_bytes(seeds.model_bytes(CALIBRATION_SEED))
    for f in seed_calib.parent.glob("calib*"):
        shutil.copy(f, d / f.name)
    calib = d / "calib.json"
    doc = json.loads(calib.read_text())
    raw: bytes | None = None
    for name, p in case["mutations"]:
        if name in JSON_MUTATIONS:
            doc = json_mutate(doc, name, p, CALIBRATION_PATHS)
        elif name == "threshold" and isinstance(doc, dict):
            try:
                th = doc["sites"]["fffc_ffn_0"]["thresholds"]
                part = sorted(th)[p["i"] % len(th)]
                level = sorted(th[part])[p["j"] % len(th[part])]
                th[part][level] = _pick(NUMBERS, p["k"])
            except (KeyError, TypeError, ZeroDivisionError, AttributeError):
                pass
        elif name == "calib_file":
            f = _pick(sorted(d.glob("calib.*.npz")), p["i"])
            if f is not None:
                choice = p["j"] % 4
                if choice == 0:
                    f.unlink()
                elif choice == 1:
                    f.write_bytes(f.read_bytes()[: p["k"] % 4000])
                elif choice == 2:
                    f.write_bytes(_npz({"x": np.zeros((2, 3), np.float32)}))
                else:
                    with np.load(f) as z:
                        arrays = {k: z[k] for k in z.files}
                    for k in arrays:
                        arrays[k] = arrays[k].reshape(-1)[: max(1, arrays[k].size // 2)]
                    f.write_bytes(_npz(arrays))
        elif name == "calib_bytes":
            raw = (b"", b"{", b"[]", b"null", b"\xff")[p["j"] % 5]
        elif name == "model_hash" and isinstance(doc, dict) and isinstance(doc.get("model"),
                                                                          dict):
            doc["model"]["sha256"] = ("0" * 64, 5, None, "")[p["j"] % 4]
    calib.write_bytes(raw if raw is not None else _dump(doc).encode())


# --------------------------------------------------------------------------------- bench

BENCH_FLAGS = {
    "tokens": (None, "1", "1,2", "", "0", "-1", "a", "1,,2", "4096", "1099511627776", "2,1,2"),
    "threads": (None, "1", "0", "-1", "64", "1", "2"),
    "repeat": ("1", "2", "1", "2", "1", "2", None, "0", "-1", "x"),
    "prompt": (None, None, None, "4", "0", "-3", "100000"),
    "generate": (None, None, None, "4", "1", "0", "100000"),
    "original": (None,) * 6 + ("missing", "directory", "garbage", "other_model",
                                "mutated_genai", "mutated_genai"),
    "json": (False, True),
    "plot": (None, None, "plot.png", "nodir/plot.png", "adir"),
}
BENCH_TARGET_FLAGS = {  # each kind of artifact's own flags drawn mostly valid
    "model": {"prompt": (None,) * 9 + ("4",), "generate": (None,) * 9 + ("4",),
              "tokens": ("1", "1,2", None, "8") * 2 + BENCH_FLAGS["tokens"]},
    "genai": {"tokens": (None,) * 9 + ("1",), "plot": (None,) * 9 + ("plot.png",),
              "prompt": ("2", "4") * 3 + BENCH_FLAGS["prompt"],
              "generate": ("2", "4") * 3 + BENCH_FLAGS["generate"]},
}
BENCH_OPS = ("bench-cli", "bench-cli", "bench-cli", "subprocess-bench")
BENCH_TARGETS = ("model", "model", "genai")


def bench_argv(case: dict, d: Path) -> list[str]:
    f = case["flags"]
    argv = ["bench", str(d / "art.fffc")]
    for key in ("tokens", "threads", "repeat", "prompt", "generate"):
        if f.get(key) is not None:
            argv += [f"--{key}", f[key]]
    if f.get("json"):
        argv.append("--json")
    if f.get("plot") is not None:
        argv += ["--plot", str(d / f["plot"])]
    original = f.get("original")
    if original is not None:
        argv += ["--original", str(d / "original" if original != "missing" else d / "nothere")]
    return argv


def build_bench(case: dict, d: Path, artifacts: dict[str, Path], genai_source: Path,
                other_shim: Path | None) -> None:
    art = Path(shutil.copytree(artifacts[case["target"]], d / "art.fffc", symlinks=True))
    (d / "outside.bin").write_bytes(b"outside")
    for name, params in case["art_mutations"]:
        mutate_artifact(art, name, params, other_shim)
    if case["art_mutations"] and case.get("redigest"):
        redigest(art)
    f = case["flags"]
    if f.get("plot") == "adir":
        (d / "adir").mkdir()
    original = f.get("original")
    if original == "directory":
        (d / "original").mkdir()
    elif original == "garbage":
        (d / "original").write_bytes(b"\x08\x07garbage")
    elif original == "other_model":
        (d / "original").write_bytes(seeds.model_bytes("dense-gelu"))
    elif original == "mutated_genai":
        build_genai({"mutations": case["genai_mutations"]}, d / "g", genai_source)
        (d / "g" / "model").rename(d / "original")


# ---------------------------------------------------------------------- running a case

def outputs(case: dict) -> tuple[str, ...]:
    """Names in the case folder the entry point may write (its ``-o`` / ``--plot``)."""
    if case["kind"] == "bench":
        plot = case["flags"].get("plot")
        return (plot.split("/")[0],) if plot else ()
    if "compile" in case["op"]:
        return ("out.fffc",)
    if "calibrate" in case["op"]:
        return ("calib.json", "calib.samples.npz", "calib.predictors.npz")
    return ()


def model_path(case: dict, d: Path) -> Path:
    return d / "model" if case["kind"] == "genai" else d / "model" / "model.onnx"


def argv(case: dict, d: Path) -> list[str]:
    """The CLI's arguments for ``case`` (its op without ``-cli``/``subprocess-``)."""
    if case["kind"] == "bench":
        return bench_argv(case, d)
    op = case["op"].removesuffix("-cli").removeprefix("subprocess-")
    model = str(model_path(case, d))
    if op == "inspect":
        return ["inspect", model]
    if op == "calibrate":
        source = ["--data", str(data_path(d))] if case["kind"] == "data" else ["--synthetic", "1"]
        return ["calibrate", model, *source, "--seq", "4", "--samples", "32",
                "-o", str(d / "calib.json")]
    args = ["compile", model, "--target", "x86", "--crossovers", "table", "-o",
            str(d / "out.fffc")]
    if case["kind"] == "data":
        args += ["--data", str(data_path(d))]
    if case["kind"] == "calibration":
        args += ["--calibration", str(d / "calib.json")]
        if case.get("budget") is not None:
            args += ["--budget", case["budget"]]
    return args


def library(case: dict, d: Path) -> None:
    """``case`` through fffc's Python API."""
    import fffc

    model = model_path(case, d)
    if case["op"] == "inspect":
        fffc.inspect(model)
    elif case["op"] == "calibrate":
        kw = {"data": data_path(d)} if case["kind"] == "data" else {"synthetic": 1}
        fffc.calibrate(model, seq=4, samples=32, output=d / "calib.json", **kw)
    elif case["op"] == "compile":
        kw = {"data": data_path(d)} if case["kind"] == "data" else {}
        if case["kind"] == "calibration":
            kw = {"calibration": d / "calib.json", "budget": case.get("budget")}
        fffc.compile(model, d / "out.fffc",
                     fffc.CompileOptions(target="x86", crossovers="table", **kw))


# ---------------------------------------------------------------------------- strategies


def data_cases(ops: tuple[str, ...] = DATA_OPS, seed_names: tuple[str, ...] = DATA_SEEDS,
               max_mutations: int = 3) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({
        "kind": st.just("data"), "seed": st.sampled_from(seed_names),
        "mutations": st.lists(st.tuples(st.sampled_from(DATA_MUTATIONS), _param),
                              min_size=1, max_size=max_mutations),
        "op": st.sampled_from(ops)})


def _genai_mutations(max_mutations: int = 3):
    return st.lists(st.tuples(st.sampled_from(GENAI_MUTATIONS), _param), min_size=1,
                    max_size=max_mutations)


def genai_cases(ops: tuple[str, ...] = GENAI_OPS) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({"kind": st.just("genai"), "mutations": _genai_mutations(),
                                  "op": st.sampled_from(ops)})


def calibration_cases(ops: tuple[str, ...] = CALIBRATION_OPS) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({
        "kind": st.just("calibration"),
        "mutations": st.lists(st.tuples(st.sampled_from(CALIBRATION_MUTATIONS), _param),
                              min_size=0, max_size=3),
        "budget": st.sampled_from(BUDGETS), "op": st.sampled_from(ops)})


def bench_cases(ops: tuple[str, ...] = BENCH_OPS, targets: tuple[str, ...] = BENCH_TARGETS,
                flags: dict[str, tuple] | None = None) -> st.SearchStrategy[dict]:
    """``flags``: choices that replace ``BENCH_FLAGS``' (a short run's: few timed calls)."""
    from tests.fuzz.mutations import ARTIFACT_MUTATIONS

    def for_target(target: str) -> st.SearchStrategy[dict]:
        # the other kind's flags are left out of most cases: a refusal of the mix (exit 2)
        # would otherwise hide what lies behind it
        choices = BENCH_FLAGS | BENCH_TARGET_FLAGS[target] | (flags or {})
        return st.fixed_dictionaries({
            "kind": st.just("bench"), "target": st.just(target),
            "flags": st.fixed_dictionaries({k: st.sampled_from(v) for k, v in choices.items()}),
            "art_mutations": st.lists(st.tuples(st.sampled_from(ARTIFACT_MUTATIONS), _param),
                                      max_size=1),
            "redigest": st.booleans(), "genai_mutations": _genai_mutations(2),
            "op": st.sampled_from(ops)})

    return st.one_of(*(for_target(t) for t in targets))

