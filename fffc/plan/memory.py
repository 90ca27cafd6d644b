"""The memory a compile or a calibration will need, estimated from shapes alone, and the
budget it must fit (``--max-memory``): a model over it is refused before the stage that
would allocate it runs.

Every figure is bytes above what the process held before the model was read, an upper
bound by construction (each term counts the largest thing that can be alive at once, and
copies that ONNX Runtime or NumPy may avoid are counted anyway):

``W``
    the model's weights as stored: every initializer's elements × its element size, from
    the protobuf's dims (external data included), and constant tensors in nodes.
``Q``
    the float32 copies of quantized (int4, int8) site weights: Σ over such sites of
    4 · (d_model·d_ff · (2 if gated else 1) + d_ff·d_out): what dequantizing them makes
    (calibration holds all of them at once); ``Q₁`` the largest one site's (verification
    checks the sites one at a time in NumPy, dequantizing only the site it checks).
``T``
    tokens: verification's probes, ``2·B·(S+1) + max(S, 16) + 3`` for the probes' batch B
    and sequence S (``CompileOptions.probe_batch``, ``probe_seq``: an encoder's two
    batched probes and a one-token one, or a decoder's prefill, its decode calls and a
    batched call), plus the tokens of the ``--data`` feeds; calibration's largest single
    call (its feeds are processed one at a time).
``a``
    bytes per token: each site's input and output captured in float32 for the original
    and the reference, ``8·Σ(K + D)``; ONNX Runtime's intermediates of every site,
    ``4·Σ 3F``; the NumPy reference of one site at a time in float64,
    ``8·max(4F + 2K + 2D)``; the model's own inputs and outputs per token (their fixed
    dims, e.g. a vocabulary's logits), kept for every probe, twice.

The stages:

load
    ``LOAD_COPIES · file bytes`` (the file read, the protobuf parsed, the checker's own
    parse) ``+ DEQUANTIZED · code bytes`` of the largest quantized tensor (the analysis
    reads a quantized projection as float32 on demand and keeps only the last
    ``passes._common._DEQUANTIZED_KEPT`` of them: 8 bytes per int4 code's byte each, and
    one dequantization's temporaries, the codes unpacked, widened, converted, scaled and
    transposed), from the files' sizes before the model is read (the codes are counted
    where the file is small enough to be parsed for its external data, ``INLINE_PROBE``;
    the verification's check, after reading, counts every copy).
verification (``fffc compile``)
    ``BASE`` (what ONNX Runtime's sessions take whatever the model) ``+ HELD · W`` (the
    loaded protobuf and its canonical form, which hold quantized weights as their codes)
    ``+ SESSIONS · W`` (one ONNX Runtime session at a time — the original's, then a
    capture's of the lowered markers, then a rounded or quantized working copy's — each
    given its model as a file and external data written one tensor at a time, and each
    gone before the next: its initializers, the prepacked copies of its MatMul weights,
    the pages of the external data it maps) ``+ SESSION_DEQUANTIZED · Q`` (the int4
    reference's session, and the artifact check's, compute every int4 site on its
    dequantized values: its down projection dequantized in standard ops, which ONNX
    Runtime folds into a float32 constant, and its gate and up projections' MatMulNBits at
    accuracy_level 0, whose prepacking may hold float32 too; measured, each site adds about
    1.4 · its Q) ``+ 3·Q₁`` (one site's dequantized copies in NumPy and one float64 gate
    matrix) ``+ T·a``.
calibration (``fffc calibrate``)
    ``BASE + HELD · (W + Q) + CALIBRATION_SESSIONS · W + Q`` (all dequantized site
    weights held together; not re-measured since the analysis stopped keeping them)
    ``+ 16 · max(d_model · d_ff)`` (the float64 promotion of a site's projections when its
    hidden activations are computed) ``+ Σ samples · d_model · 4`` (the reservoirs)
    ``+ 8 · samples · max(6F + 2K)`` (a site's centers: its activations over the
    reservoir rows in float64, their distances from the medians) ``+ T · a`` for the
    largest call ``+ 8 · T · max(10F + 6K)`` (one site's activations in float64 and the
    histograms' temporaries: magnitudes, masks, bin positions) ``+`` the synthetic feeds,
    all made up front.

Not estimated: the stages after verification (codegen, the shim, the crossover timings,
the artifact check: their sessions are of the sizes counted here, one at a time, the
shim's kernels in place of the subgraphs) and the allocation's search of ``--budget``.

Measured (``scripts/compile_memory.py``: each stage's peak resident set above the process's
before the model was read; 2026-12-07, a shared 2-core x86 VM with 23 GiB, ONNX Runtime
GenAI builder ``-p int4`` LLaMA-shaped models from ``bench/bench_llm_decode.py``, hidden
2048, FFN 5632, vocabulary 32000, dReLU, one int4 site per layer, ``--crossovers table``)::

    layers  weights    loading: measured / estimate   after loading: measured / estimate
    2       343.9 MiB    783 MiB /  3.8 GiB            1557 MiB (verify 1201) /  2.7 GiB
    4       397.6 MiB    852 MiB /  4.0 GiB            2196 MiB (verify 1826) /  3.5 GiB
    8       505.2 MiB    949 MiB /  4.4 GiB            3507 MiB (verify 3089) /  5.1 GiB
    16      720.3 MiB   1436 MiB /  5.3 GiB            6150 MiB (verify 5594) /  8.2 GiB

(the 16-layer model's process peaked at 6767 MiB in all, the interpreter and its imports
included.)

The largest stage after loading is the artifact check (its sessions with and without the
shim) or verification; before these estimates' constants were set, when the analysis kept
every quantized projection in float32 and the sessions were given their models as
protobuf bytes, the 2-layer model's loading peaked at 2033 MiB and its verification at
3362 MiB, and the 16-layer model (720.3 MiB of weights) at 13.07 GB in all
(``/usr/bin/time``), its estimate 17.5 GiB. The loading estimate counts the largest
quantized tensor (here the LM head's) dequantized, which no rule does here any more.

The default budget is ``DEFAULT_FRACTION`` of the memory available to this process: the
smaller of ``MemAvailable`` (``/proc/meminfo``) and the cgroup's limit less its usage
(``/sys/fs/cgroup/memory.max``, or cgroup v1's ``memory.limit_in_bytes``).
"""

from __future__ import annotations

import math
import os
import re
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..contract.analysis import Analysis
from ..contract.config import CompileOptions
from ..contract.errors import MemoryBudgetError, UsageError
from ..contract.kinds import SiteKind
from ..contract.sites import Site
from ..frontend.load import external_data_files

GIB = 1 << 30
DEFAULT_FRACTION = 0.75  # of the available memory, without --max-memory
LOAD_COPIES = 4  # a model file's bytes while it is read, parsed and checked
HELD = 2  # the loaded protobuf and the canonical model, while the later stages run
SESSIONS = 3  # model-sized copies of one session (initializers, prepacked, mapped pages)
CALIBRATION_SESSIONS = 8  # model-sized copies alive at once in calibration
SESSION_DEQUANTIZED = 2  # float32 copies of every int4 site's weights a session holds
BASE = 64 << 20  # ONNX Runtime's sessions whatever the model: arenas, thread pools, kernels
DECODER_PREFILL = 16  # verification's decoder prefill is at least this many tokens
INLINE_PROBE = 64 << 20  # a model file larger than this holds its weights inline
# bytes per byte of the largest quantized tensor's codes while the analysis reads quantized
# projections: the float32 copies it keeps (8 per int4 code's byte) and one
# dequantization's temporaries
DEQUANTIZED = 8 * 4 + 48
CODES = (onnx.TensorProto.UINT8, onnx.TensorProto.INT8, onnx.TensorProto.UINT4,
         onnx.TensorProto.INT4)
UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
NO_LIMIT = ("none", "off")


@dataclass(frozen=True)
class Estimate:
    """A stage's peak bytes, and what they are made of (for the refusal's one line)."""

    stage: str  # "loading", "verification", "calibration"
    bytes: int
    detail: str  # e.g. "3 sites, K=1024, F=4096, D=1024, 38 tokens, 64.0 MiB of weights"
    lower: str  # how to lower it


def size(n: float) -> str:
    """Bytes in the largest binary unit that keeps a digit before the point."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


# ---- the budget ----------------------------------------------------------------------


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max": no limit


def _cgroup_room() -> int | None:
    """The cgroup's limit less what it uses (v2, else v1), None without a limit."""
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                          "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        cap = _read_int(limit)
        if cap is not None and cap < 1 << 60:  # v1 writes a huge number for "no limit"
            return max(0, cap - (_read_int(usage) or 0))
    return None


def available() -> int:
    """Bytes this process can still allocate: the smaller of ``MemAvailable`` and the
    cgroup's room (the physical pages, ``sysconf``, where neither can be read)."""
    found = [v for v in (_meminfo_available(), _cgroup_room()) if v is not None]
    if found:
        return min(found)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def budget(text: str | None) -> int | None:
    """``--max-memory``: bytes (``8G``, ``512M``, ``1.5GiB``, ``123456``: binary units K,
    M, G, T, with or without ``iB``/``B``), a share of the available memory (``50%``),
    ``none`` (no guard); None: ``DEFAULT_FRACTION`` of the available memory."""
    if text is None:
        return int(DEFAULT_FRACTION * available())
    t = text.strip().lower()
    if t in NO_LIMIT:
        return None
    if m := re.fullmatch(r"(\d+(?:\.\d*)?)\s*%", t):
        share = float(m[1]) / 100
        if 0 < share <= 1:
            return int(share * available())
    elif m := re.fullmatch(r"(\d+(?:\.\d*)?)\s*([kmgt]?)(?:i?b)?", t):
        n = float(m[1]) * UNITS[m[2]]
        if n >= 1:
            return int(n)
    raise UsageError(f"--max-memory: expected a size (8G, 512M, 1.5GiB), a share of the "
                     f"available memory (50%) or none, got {text!r}")


def check(estimate: Estimate, limit: int | None, path: str | Path | None) -> None:
    """Refuse ``estimate`` over ``limit`` bytes (None: no guard) with its figure."""
    if limit is None or estimate.bytes <= limit:
        return
    raise MemoryBudgetError(
        f"{estimate.stage} needs ~{size(estimate.bytes)} ({estimate.detail}), over the "
        f"--max-memory budget of {size(limit)}; {estimate.lower}; or raise --max-memory "
        "(none: no guard)", path=path)


# ---- shapes --------------------------------------------------------------------------


def _tensor_bytes(t: onnx.TensorProto) -> int:
    elems = max(0, math.prod(t.dims))
    try:
        bits = 8 * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        bits = 64
    if t.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        bits = 4
    return (elems * bits + 7) // 8


def weight_bytes(proto: onnx.ModelProto) -> int:
    """``W``: the bytes of every initializer and node constant, from their dims."""
    total = 0

    def graph(g: onnx.GraphProto) -> None:
        nonlocal total
        total += sum(_tensor_bytes(t) for t in g.initializer)
        for n in g.node:
            for a in n.attribute:
                total += sum(_tensor_bytes(t) for t in (a.t, *a.tensors) if t.dims)
                for sub in (a.g, *a.graphs):
                    graph(sub)

    graph(proto.graph)
    return total


def file_bytes(path: str | Path) -> tuple[int, int]:
    """(a model file's bytes and its external data files', the bytes of its largest integer
    initializer of 8 bits or fewer: a quantized weight's codes), the second read from the
    file's protobuf without its external data when the file is at most ``INLINE_PROBE``
    bytes (else 0: the file holds its weights inline and is not read for this)."""
    path = Path(path)
    total, codes = path.stat().st_size, 0
    if total <= INLINE_PROBE:
        try:
            proto = onnx.load(str(path), format="protobuf", load_external_data=False)
            names = external_data_files(path)
        except Exception:  # an unreadable file is the loader's to report
            return total, 0
        codes = max((_tensor_bytes(t) for t in proto.graph.initializer
                     if t.data_type in CODES), default=0)
        for name in names:
            f = path.parent / name
            if f.is_file():
                total += f.stat().st_size
    return total, codes


def _quantized_floats(site: Site) -> int:
    """``Q`` of one site: its quantized projections as float32."""
    if not site.weight_formats:
        return 0
    ups = 2 if site.kind is SiteKind.GATED else 1
    return 4 * (site.d_model * site.d_ff * ups + site.d_ff * site.d_out)


def _io_per_token(values: Iterable[onnx.ValueInfoProto]) -> int:
    """Bytes per token of graph inputs or outputs: the product of their fixed dims (the
    symbolic ones are the batch and the tokens), at 8 bytes an element."""
    total = 0
    for v in values:
        dims = v.type.tensor_type.shape.dim
        total += 8 * math.prod(d.dim_value for d in dims if d.HasField("dim_value")
                               and d.dim_value > 0)
    return total


def per_token(a: Analysis) -> int:
    """``a``: the bytes each token of a probe or a calibration call costs."""
    sites = a.sites
    if not sites:
        return 0
    g = a.proto.graph
    inits = {t.name for t in g.initializer}
    io = _io_per_token([*(i for i in g.input if i.name not in inits), *g.output])
    return (8 * sum(s.d_model + s.d_out for s in sites) + 12 * sum(s.d_ff for s in sites)
            + 8 * max(4 * s.d_ff + 2 * s.d_model + 2 * s.d_out for s in sites) + 2 * io)


def feed_tokens(data: str | Path | None) -> list[int]:
    """The tokens of each ``.npz`` feed under ``data`` (a file or a folder of them): the
    largest count of rows of one of its arrays (elements over the last dim), read from the
    arrays' headers."""
    if data is None:
        return []
    data = Path(data)
    files = sorted(data.glob("*.npz")) if data.is_dir() else [data]
    out = []
    for f in files:
        rows = 0
        try:
            with zipfile.ZipFile(f) as z:
                for name in z.namelist():
                    with z.open(name) as member:
                        read = (np.lib.format.read_array_header_1_0
                                if np.lib.format.read_magic(member) == (1, 0)
                                else np.lib.format.read_array_header_2_0)
                        shape, _, _ = read(member)
                    last = shape[-1] if shape and shape[-1] else 1
                    rows = max(rows, math.prod(shape) // last)
        except (OSError, ValueError, zipfile.BadZipFile, NotImplementedError):
            continue  # the feed's loader says what is wrong with it
        out.append(rows)
    return out


def _weights(w: int, q: int) -> str:
    return f"{size(w)} of weights" + (f", {size(q)} dequantized" if q else "")


def _dims(sites: list[Site]) -> str:
    k = max(s.d_model for s in sites)
    f = max(s.d_ff for s in sites)
    d = max(s.d_out for s in sites)
    return (f"{len(sites)} site{'s' if len(sites) != 1 else ''}, K={k}, F={f}, D={d}"
            + (" (largest)" if len(sites) > 1 else ""))


# ---- the estimates -------------------------------------------------------------------


def loading(path: str | Path) -> Estimate:
    """Reading the model at ``path``."""
    b, codes = file_bytes(path)
    return Estimate("loading", LOAD_COPIES * b + DEQUANTIZED * codes,
                    f"{size(b)} of model files"
                    + (f", {size(codes)} of the largest quantized weight" if codes else ""),
                    "the model's size alone sets it")


def probe_tokens(o: CompileOptions) -> int:
    """``T`` of verification's made-up probes (an encoder's or a decoder's, the larger)."""
    b, s = o.probe_batch, o.probe_seq
    return 2 * b * (s + 1) + max(s, DECODER_PREFILL) + 3


def verification(a: Analysis, o: CompileOptions) -> Estimate:
    """``fffc compile``'s verification of the analysed model ``a``."""
    w = weight_bytes(a.proto)
    q = sum(_quantized_floats(s) for s in a.sites)
    one = max((_quantized_floats(s) for s in a.sites), default=0)
    tokens = probe_tokens(o) + sum(feed_tokens(o.data))
    total = (BASE + (HELD + SESSIONS) * w + SESSION_DEQUANTIZED * q + 3 * one
             + tokens * per_token(a))
    detail = (f"{_dims(a.sites)}, {tokens} probe tokens, " if a.sites else "") + _weights(w, q)
    return Estimate("verification", total, detail,
                    "fewer or shorter --data feeds lower it (the weights set the rest)")


def calibration(a: Analysis, *, tokens: int, samples: int, synthetic: int = 0) -> Estimate:
    """``fffc calibrate`` of the analysed model ``a``: ``tokens`` in its largest call,
    ``samples`` reservoir rows per site, ``synthetic`` made-up feeds of ``tokens`` each."""
    w = weight_bytes(a.proto)
    sites = a.sites
    q = sum(_quantized_floats(s) for s in sites)
    site_terms = 0
    if sites:
        site_terms = (16 * max(s.d_model * s.d_ff for s in sites)
                      + 4 * samples * sum(s.d_model for s in sites)
                      + 8 * samples * max(6 * s.d_ff + 2 * s.d_model for s in sites)
                      + 8 * tokens * max(10 * s.d_ff + 6 * s.d_model for s in sites))
    g = a.proto.graph
    inits = {t.name for t in g.initializer}
    feeds = synthetic * tokens * _io_per_token(i for i in g.input if i.name not in inits)
    total = (BASE + (HELD + CALIBRATION_SESSIONS) * w + (HELD + 1) * q + site_terms
             + tokens * per_token(a) + feeds)
    detail = (f"{_dims(sites)}, {tokens} tokens per call, {samples} samples per site, "
              if sites else "") + _weights(w, q)
    return Estimate("calibration", total, detail,
                    "fewer tokens per call (--seq, shorter --data feeds or prompts, "
                    "--generate) or --samples lower it")
