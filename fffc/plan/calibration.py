"""``fffc calibrate``: per-site activation statistics from the user's inputs.

Threshold modes need, per FFN site, where a target sparsity s falls in the distribution of
magnitudes: TEAL thresholds the *input* of each projection (t = quantile_s |x|), CATS the
activated gate |act(x·Wg)|, and the down projection's input |a| is what any activation
threshold ends up skipping. Predictors are trained on (x, which neurons are active) pairs.

The original model runs in ONNX Runtime on the user's feeds, one feed at a time, with every
site's input exposed; the site's hidden activations are computed from that input with the
site's own weights (float64, as ``fffc.verify.reference``), so nothing the size of a model's
activations over all feeds is ever held: magnitudes go into fixed log-spaced histograms,
and the rows of x into a fixed-size uniform reservoir (the predictor's training set: its
labels are a function of x and the weights, recomputed for whatever threshold is chosen).

Centers: TEAL assumes every channel is centered at zero, true of LLaMA's RMSNorm outputs but
not of a BERT's LayerNorm outputs (each channel sits at its own offset) or of GELU outputs
(most in its negative lobe). So each channel gets a center from the reservoir rows (x of
dense FFNs, where the share it leaves out folds into B1; a of every site), and a second
pass over the feeds fills the histograms of |x - center| and |a - center|: the thresholds
then replace entries near their center by the center instead of by zero. ``center="median"``
takes each channel's median; ``"mode"`` (the default) the mean of its densest window of
width 2t (t: the site's median-centered threshold at ``WINDOW_LEVEL``), where a threshold
replaces the most entries with the least error — GELU outputs are skewed, so their densest
window is not around the median (bench/bench_minilm_teal.py compares the three on
all-MiniLM-L6-v2). Padding rows (``token_mask``) are left out.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from .. import passes
from ..contract.analysis import Analysis
from ..contract.errors import UsageError
from ..contract.int4 import Int4Weights, float_weights
from ..contract.kinds import Decision, SiteKind
from ..contract.lowering import Masks, SiteLowering
from ..contract.modes import mode
from ..contract.ops import QUANT_INPUTS, SPARSE_FFN
from ..contract.sites import Site
from ..contract.version import VERSION
from ..frontend import copy, sha256_file
from ..verify import compare as verify
from ..verify.feeds import probe_inputs, run_by_name
from . import memory
from .activations import hidden_activations
from .decide import site_centers
from .generation import Call, Phase, Prompts, Rows, calls, decoder_feeds

# thresholds are written for these target sparsities: every 0.05, TEAL's greedy step
# (greedyopt's base_step), so a per-site search can spend a budget in small steps
SPARSITIES = tuple(round(0.05 * i, 2) for i in range(1, 20))
SEQ = 128  # tokens per synthetic feed
SAMPLES = 4096  # rows of x kept per site for predictor training and the centers
TOKEN_MASK = "attention_mask"  # the input whose 0 entries mark padding tokens
CENTERS = ("mode", "median", "none")  # per-channel centers: densest window, median, TEAL's 0
WINDOW_LEVEL = 0.4  # "mode": the window is 2× the threshold of this sparsity around medians


@dataclass
class Histogram:
    """Counts of |v| in log-spaced bins (≈ 1.2% wide from 1e-8 to 1e4), exact zeros apart.

    ``quantile(q)`` is the upper edge of the bin holding the q-quantile: a threshold at
    least as large as the exact one, by at most one bin width (≈ 1.2%).
    """

    lo: float = 1e-8
    hi: float = 1e4
    bins: int = 2400
    counts: np.ndarray = field(default=None)  # type: ignore[assignment]
    zeros: int = 0
    below: int = 0  # 0 < |v| < lo
    above: int = 0  # |v| >= hi

    def __post_init__(self) -> None:
        if self.counts is None:
            self.counts = np.zeros(self.bins, np.int64)

    @property
    def total(self) -> int:
        return int(self.counts.sum()) + self.zeros + self.below + self.above

    def edges(self) -> np.ndarray:
        return np.logspace(np.log10(self.lo), np.log10(self.hi), self.bins + 1)

    def add(self, values: np.ndarray) -> None:
        a = np.abs(np.asarray(values, np.float64)).ravel()
        self.zeros += int(np.count_nonzero(a == 0))
        self.below += int(np.count_nonzero((a > 0) & (a < self.lo)))
        self.above += int(np.count_nonzero(a >= self.hi))
        inside = a[(a >= self.lo) & (a < self.hi)]
        pos = np.log10(inside / self.lo) / np.log10(self.hi / self.lo) * self.bins
        self.counts += np.bincount(np.minimum(pos.astype(np.int64), self.bins - 1),
                                   minlength=self.bins)

    def quantile(self, q: float) -> float:
        """Smallest bin edge t with fraction(|v| <= t) >= q (0.0 if zeros alone reach q)."""
        need = q * self.total
        if self.zeros >= need:
            return 0.0
        if self.zeros + self.below >= need:
            return self.lo
        cum = self.zeros + self.below + np.cumsum(self.counts)
        i = int(np.searchsorted(cum, need))
        return float(self.edges()[i + 1]) if i < self.bins else float(self.hi)

    def to_json(self) -> dict:
        nz = np.flatnonzero(self.counts)
        return {"lo": self.lo, "hi": self.hi, "bins": self.bins, "zeros": self.zeros,
                "below": self.below, "above": self.above, "total": self.total,
                "nonzero_bins": nz.tolist(), "counts": self.counts[nz].tolist()}

    @classmethod
    def from_json(cls, d: dict) -> Histogram:
        h = cls(d["lo"], d["hi"], d["bins"], zeros=d["zeros"], below=d["below"],
                above=d["above"])
        h.counts[np.asarray(d["nonzero_bins"], np.int64)] = d["counts"]
        return h


class Reservoir:
    """A uniform sample of at most ``size`` rows from a stream (Vitter's algorithm R)."""

    def __init__(self, size: int, width: int, seed: int = 0):
        self.rows = np.zeros((size, width), np.float32)
        self.seen = 0
        self.rng = np.random.default_rng(seed)

    def add(self, rows: np.ndarray) -> None:
        size = len(self.rows)
        fill = max(0, min(size - self.seen, len(rows)))  # the first ``size`` rows: kept
        self.rows[self.seen:self.seen + fill] = rows[:fill]
        rest = rows[fill:]
        # row number m (0-based) replaces a random slot with probability size / (m + 1);
        # later rows overwrite earlier ones at the same slot, as in the sequential algorithm
        slots = self.rng.integers(0, self.seen + fill + 1 + np.arange(len(rest)))
        keep = slots < size
        self.rows[slots[keep]] = rest[keep]
        self.seen += len(rows)

    def sample(self) -> np.ndarray:
        return self.rows[: min(self.seen, len(self.rows))]


@dataclass
class SiteStats:
    site: Site
    input: Histogram = field(default_factory=Histogram)  # |x|: TEAL, up/gate projections
    hidden: Histogram = field(default_factory=Histogram)  # |a|: the down projection's input
    gate: Histogram | None = None  # |act(x·Wg)| of gated sites: CATS
    samples: Reservoir | None = None
    centers: dict[str, np.ndarray] = field(default_factory=dict)  # part → [width] centers
    hidden_raw: Histogram | None = None  # |a| of the first pass, once centered

    def add(self, x: np.ndarray, w: dict[str, np.ndarray | None]) -> None:
        x = x.reshape(-1, self.site.d_model)
        gate, hidden = hidden_activations(self.site, w, x)
        self.input.add(x)
        self.hidden.add(hidden)
        if gate is not None:
            self.gate = self.gate or Histogram()
            self.gate.add(gate)
        self.samples.add(x)

    def find_centers(self, w: dict[str, np.ndarray | None], how: str = "median") -> None:
        """Per-channel centers over the reservoir rows — of a always, of x for dense sites:
        medians, or (``how`` "mode") the mean of each channel's densest window (``densest``)."""
        x = self.samples.sample()
        _, hidden = hidden_activations(self.site, w, x)
        values = {"hidden": hidden}
        if self.site.kind is SiteKind.DENSE:  # gated: no up bias to hold the center's share
            values["input"] = x.astype(np.float64)
        self.centers = {}
        for part, v in values.items():
            c = np.median(v, axis=0)
            if how == "mode":
                c = densest(v, float(np.quantile(np.abs(v - c), WINDOW_LEVEL)))
            self.centers[part] = c.astype(np.float32)
        self.hidden_raw = self.hidden
        self.input = Histogram() if "input" in self.centers else self.input
        self.hidden = Histogram()

    def add_centered(self, x: np.ndarray, w: dict[str, np.ndarray | None]) -> None:
        """The second pass: |x - center| and |a - center| (x alone if it has no center)."""
        x = x.reshape(-1, self.site.d_model)
        _, hidden = hidden_activations(self.site, w, x)
        if "input" in self.centers:
            self.input.add(x - self.centers["input"])
        self.hidden.add(hidden - self.centers["hidden"])

    def to_json(self, sparsities: Iterable[float]) -> dict:
        hists = {"input": self.input, "hidden": self.hidden}
        if self.gate is not None:
            hists["gate"] = self.gate
        return {
            "kind": self.site.kind, "family": self.site.family,
            "activation": self.site.activation, "up_activation": self.site.up_activation,
            "d_model": self.site.d_model, "d_ff": self.site.d_ff, "d_out": self.site.d_out,
            "tokens": self.input.total
            // self.site.d_model,
            "exact_zeros_hidden": (self.hidden_raw or self.hidden).zeros
            / max(1, self.hidden.total),
            "thresholds": {k: {f"{s:g}": h.quantile(s) for s in sparsities}
                           for k, h in hists.items()},
            "histograms": {k: h.to_json() for k, h in hists.items()},
            # thresholds of |v - center| for these parts (float32 values, 9 digits: exact)
            **({"centers": {k: [float(f"{v:.9g}") for v in c] for k, c in self.centers.items()}}
               if self.centers else {}),
        }


def densest(v: np.ndarray, t: float) -> np.ndarray:
    """Per column of ``v`` [rows, channels], the mean of the values in its most populated
    window of width 2t: the center that a threshold t replaces the most entries around
    (so the site's threshold for a sparsity can be smaller), and with the least error, as
    the mean of what it replaces. A median is the center of a window holding half the
    values; a skewed channel (GELU's outputs) has a denser window off its median."""
    out = np.empty(v.shape[1])
    for j in range(v.shape[1]):
        col = np.sort(v[:, j])
        ends = np.searchsorted(col, col + 2 * t, side="right")
        i = int(np.argmax(ends - np.arange(len(col))))
        out[j] = col[i:ends[i]].mean()
    return out


def parse_levels(text: str) -> tuple[float, ...]:
    """``--levels``: comma-separated target sparsities, each in (0, 1), sorted, no repeats."""
    try:
        levels = tuple(sorted({round(float(v), 6) for v in text.split(",") if v.strip()}))
    except ValueError:
        levels = ()
    if not levels or not all(0 < v < 1 for v in levels):
        raise UsageError(f"--levels {text!r}: expected sparsities in (0, 1), comma-separated, "
                         "e.g. 0.25,0.4,0.5")
    return levels


def load_feeds(data: Path, input_names: list[str]) -> Iterator[dict[str, np.ndarray]]:
    """Feeds from an ``.npz`` (one feed: arrays named like the model's inputs) or a folder
    of them (sorted by name); clear errors for anything else."""
    files = sorted(data.glob("*.npz")) if data.is_dir() else [data]
    if not data.exists():
        raise UsageError("calibration data not found", path=data)
    if not files:
        raise UsageError("no .npz feeds in this folder", path=data)
    for f in files:
        feed = read_feed(f)
        missing = sorted(set(input_names) - set(feed))
        if missing:
            raise UsageError(f"feed lacks model input(s) {missing}; it has {sorted(feed)}",
                             path=f)
        yield {k: feed[k] for k in input_names}


def read_feed(f: Path) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` ``f`` by name. Each member's ``.npy`` header is checked
    against the bytes the member holds before its array is allocated (a header may declare
    any shape); object arrays (pickles) are refused."""
    feed = {}
    try:
        with zipfile.ZipFile(f) as z:
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    raise ValueError(f"member {info.filename!r} is not a .npy array")
                with z.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    read = {(1, 0): np.lib.format.read_array_header_1_0,
                            (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                    if read is None:
                        raise ValueError(f"member {info.filename!r}: .npy format {version}")
                    shape, fortran, dtype = read(member)
                    if dtype.hasobject:
                        raise ValueError(f"member {info.filename!r} holds Python objects")
                    need = math.prod(shape) * dtype.itemsize
                    held = info.file_size - member.tell()
                    if need != held:
                        raise ValueError(f"member {info.filename!r} declares {list(shape)} "
                                         f"of {dtype} ({need} bytes) and holds {held} bytes")
                    a = np.frombuffer(member.read(need), dtype)
                feed[info.filename.removesuffix(".npy")] = np.ascontiguousarray(
                    a.reshape(shape, order="F" if fortran else "C"))
    except (OSError, ValueError, EOFError, zipfile.BadZipFile,
            NotImplementedError) as e:  # zipfile's: a zip version or method it lacks
        raise UsageError(f"not a NumPy .npz of input arrays ({e})", path=f) from e
    return feed


QUANT_NAMES = {n for pair in QUANT_INPUTS[SPARSE_FFN.name].values() for n in pair}


def _float_inputs(site: Site, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A site's exact-mode inputs with float32 weights: an int4 site's dequantized as ONNX
    Runtime dequantizes them (its statistics are of the function on those weights)."""
    if not isinstance(site.int4, Int4Weights):
        return arrays
    weights = float_weights(arrays)
    return {n: v for n, v in arrays.items() if n not in QUANT_NAMES} | weights


class SiteInputs:
    """The analysed model in ONNX Runtime with the input of every FFN site of ``kinds``
    exposed (all sites without ``kinds``): what calibration (and the benchmarks) feed on."""

    def __init__(self, model: Analysis, kinds: Collection[SiteKind] | None = None):
        self.proto = model.proto
        self.sites = [s for s in model.sites if kinds is None or s.kind in kinds]
        working = copy(model.working)
        io = passes.site_io(working)
        self.weights = {s.name: _float_inputs(s, passes.site_inputs(working, s, Decision.EXACT))
                        for s in self.sites}
        self._outputs = [io[s.name][0] for s in self.sites]
        passes.lower(working, {})
        passes.expose(working, self._outputs)
        self.session = verify.original_session(model.proto, model.path, working)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self._names = [o.name for o in self.session.get_outputs()]

    def outputs(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output for ``feed`` by name: the model's own and the sites' inputs."""
        return dict(zip(self._names, self.session.run(None, feed), strict=True))

    def site_rows(self, outputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Each site's input rows [tokens, d_model] among ``outputs`` (``self.outputs``')."""
        return [outputs[o].reshape(-1, s.d_model)
                for s, o in zip(self.sites, self._outputs, strict=True)]

    def rows(self, feed: dict[str, np.ndarray],
             token_mask: str | None = None) -> tuple[list[np.ndarray], bool]:
        """(each site's input rows [tokens, d_model] for ``feed``, whether the mask was
        applied): where the feed's ``token_mask`` input has the shape of a site input's
        leading dims, its 0 rows (padding) are left out."""
        mask = np.asarray(feed[token_mask]) if token_mask in feed else None
        out, applied = [], False
        for s, x in zip(self.sites, self.session.run(self._outputs, feed), strict=True):
            fits = mask is not None and mask.shape == x.shape[:-1]
            applied = applied or fits
            out.append(x[mask != 0] if fits else x.reshape(-1, s.d_model))
        return out, applied


def calibration_feeds(model: Analysis, data: str | Path | None, synthetic: int,
                      seq: int = SEQ, prompts: Prompts | None = None,
                      rows: Rows = Rows.DECODE) -> Iterator[dict[str, np.ndarray]]:
    """The feeds a calibration runs on: the user's (``data``, an .npz or a folder of them),
    ``synthetic`` generated ones of ``seq`` tokens, or the calls of ``rows``' phases in the
    original model's greedy generations after ``prompts`` (a decode call's feed holds the
    cache of the call before)."""
    if prompts is not None:
        run = run_by_name(verify.original_session(model.proto, model.path))
        return (c.feed for c in calls(model, run, prompts) if c.phase in rows.phases)
    if data is not None:
        inputs = [i.name for i in model.proto.graph.input
                  if i.name not in {t.name for t in model.proto.graph.initializer}]
        return load_feeds(Path(data), inputs)
    return iter(probe_inputs(model.proto, 1, seq, seed=1234, count=synthetic, path=model.path))


def calibrate(model: Analysis, data: str | Path | None = None, *, synthetic: int = 0,
              prompts: Prompts | None = None, rows: Rows = Rows.DECODE,
              seq: int = SEQ, samples: int = SAMPLES, sparsities: Iterable[float] = SPARSITIES,
              predictor_rank: int = 0, predictor_sparsity: float = 0.9,
              center: str = "mode", token_mask: str | None = TOKEN_MASK,
              progress: Callable[[int], None] | None = None,
              max_memory: int | None = None) -> dict:
    """Statistics of every site of the analysed ``model`` that a masked mode applies to over the
    feeds in ``data``, over ``synthetic`` generated feeds (random floats, in-vocabulary
    token ids) for models without user data, or over a decoder's greedy generations after
    ``prompts`` (``fffc.plan.generation``: the prefill and decode calls' rows are counted
    apart, and the statistics are made of ``rows``' — decode by default). With
    ``predictor_rank`` > 0, also a predictor
    per site (``fffc.predictor``) of the neurons active at ``predictor_sparsity``, trained on
    the samples. ``center`` "mode" (each channel's densest window's mean, ``densest``) or
    "median": thresholds of |v - per-channel center| (a second pass
    over the feeds; see the module's docstring), "none": of |v| (TEAL). ``token_mask``:
    a model input marking real tokens (1) and padding (0), as a transformer's
    ``attention_mask``: where a feed has it with the shape of a site input's leading dims,
    padding rows are left out of that site's statistics (padded batches would otherwise
    calibrate on what the model computes for padding; prompts run one at a time, unpadded).
    ``progress`` is called with the number of calls run. ``max_memory``: bytes the
    calibration may need (``fffc.plan.memory.calibration``), refused before its sessions
    are built (None: no guard). Returns the CALIB.json content
    (``fffc.plan.allocate.stored`` adds an allocation searched on the same feeds)."""
    if center not in CENTERS:
        raise UsageError(f"center must be one of {CENTERS}, got {center!r}")
    if sum([data is not None, synthetic > 0, prompts is not None]) != 1:
        raise UsageError("give one source of calibration inputs: data (--data), a number of "
                         "synthetic feeds (--synthetic N) or prompts (--prompts)")
    if prompts is not None:
        decoder_feeds(model)  # before the session is built: a clear refusal
        token_mask = None
    tokens = (max(len(p) for p in prompts.ids) + prompts.new_tokens if prompts is not None
              else max(memory.feed_tokens(data), default=0) if data is not None else seq)
    memory.check(memory.calibration(model, tokens=tokens, samples=samples,
                                    synthetic=synthetic if data is None and prompts is None
                                    else 0),
                 max_memory, model.path)
    cap = SiteInputs(model, kinds=mode(Decision.TEAL).kinds)
    sites, weights = cap.sites, cap.weights
    if not sites:
        raise UsageError("no dense or gated FFN site to calibrate", path=model.path)

    def source() -> Iterator[tuple[Call | None, list[np.ndarray], bool]]:
        """Per call: (the generation's call, None for a feed of data or synthetic ones; the
        sites' rows; whether padding rows were left out)."""
        if prompts is not None:
            for c in calls(model, cap.outputs, prompts):
                yield c, cap.site_rows(c.outputs), False
            return
        for i, feed in enumerate(calibration_feeds(model, data, synthetic, seq)):
            try:
                got, padded = cap.rows(feed, token_mask)
            except Exception as e:  # ORT's own message says which input and why
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                what = f"feed {i}" if data is not None else f"synthetic feed {i}"
                raise UsageError(f"{what}: ONNX Runtime rejected it: {first[:300]}",
                                 path=data if data is not None else model.path) from e
            yield None, got, padded

    stats = {s.name: SiteStats(s, samples=Reservoir(samples, s.d_model, seed=i))
             for i, s in enumerate(sites)}
    n = 0
    masked = False
    counts = dict.fromkeys(Phase, 0)  # a generation's rows per phase
    generated: list[list[int]] = [[] for _ in (prompts.ids if prompts else ())]

    def each_feed(first: bool) -> Iterator[list[np.ndarray]]:
        """The rows the statistics are made of, per call; the first pass counts and records."""
        nonlocal n, masked
        for c, got, padded in source():
            masked = masked or padded
            if first and c is not None:
                counts[c.phase] += len(got[0])
                if c.token is not None:
                    generated[c.prompt].append(c.token)
            if c is None or c.phase in rows.phases:
                yield got
            n += 1
            if progress:
                progress(n)

    for got in each_feed(True):
        for s, x in zip(sites, got, strict=True):
            stats[s.name].add(x, weights[s.name])
    feed_count = n
    if prompts is not None and not any(counts[p] for p in rows.phases):
        raise UsageError(f"the generations made no {rows.value} rows (--generate "
                         f"{prompts.new_tokens}; a stop token may end a generation at once): "
                         "calibrate on --rows all or prefill, or generate more")
    empty = [name for name, st in stats.items() if not st.samples.seen]
    if empty:
        raise UsageError(f"the feeds hold no rows for site(s) {empty}: nothing to calibrate "
                         "on (a feed of 0 tokens, or its padding only)",
                         path=data if data is not None else model.path)
    sparsities = tuple(sparsities)
    predictors, predictor_json = _train_predictors(sites, stats, weights, predictor_rank,
                                                   predictor_sparsity, sparsities)
    if center != "none":
        for s in sites:
            stats[s.name].find_centers(weights[s.name], center)
        for got in each_feed(False):
            for s, x in zip(sites, got, strict=True):
                stats[s.name].add_centered(x, weights[s.name])
    sites_json = {name: st.to_json(sparsities) for name, st in stats.items()}
    for name, info in predictor_json.items():
        sites_json[name]["predictor"] = info
    source_text = (f"prompts {prompts.source}" if prompts is not None
                   else str(data) if data is not None else f"synthetic x{synthetic}")
    result = {
        "fffc": VERSION,
        "model": {"path": str(model.path.resolve()), "sha256": sha256_file(model.path)},
        "feeds": feed_count, "source": source_text,
        **({"generation": {**prompts.to_json(), "generated": generated},
            # the rows of each phase, and those the statistics (thresholds) are made of
            "rows": {**{p.value: counts[p] for p in Phase}, "used": rows.value}}
           if prompts is not None else {}),
        "sparsities": list(sparsities), "center": center,
        "token_mask": token_mask if masked else None,
        "sites": sites_json,
        "_samples": {name: st.samples.sample() for name, st in stats.items()},
        "_predictors": predictors,
    }
    return result


def _train_predictors(sites: list[Site], stats: dict[str, SiteStats], weights: dict,
                      predictor_rank: int, predictor_sparsity: float,
                      sparsities: tuple[float, ...]) -> tuple[dict, dict]:
    """(arrays by ``<site>/a|b|c|cut``, JSON by site) of a rank-``predictor_rank`` predictor
    per site (none for rank 0), its labels the neurons outside the
    ``predictor_sparsity``-quantile of |a| (the first pass's, uncentered)."""
    predictors: dict[str, np.ndarray] = {}
    info: dict[str, dict] = {}
    if predictor_rank > 0:
        from . import predictor

        for s in sites:
            x = stats[s.name].samples.sample()
            t = stats[s.name].hidden.quantile(predictor_sparsity)
            active = predictor.labels(s, weights[s.name], x, t)
            pred, q = predictor.train(x, active, weights[s.name]["W1"], predictor_rank,
                                      b1=weights[s.name].get("B1"))
            predictors.update({f"{s.name}/a": pred.a.astype(np.float32),
                               f"{s.name}/b": pred.b.astype(np.float32),
                               f"{s.name}/c": pred.c.astype(np.float32),
                               f"{s.name}/cut": np.float32(pred.cut)})
            info[s.name] = {
                "rank": predictor_rank, "target_sparsity": predictor_sparsity, "threshold": t,
                "held_out": q.to_json(),
                "random_baseline_recall": predictor.random_baseline(active, q.selected).recall,
                # the same predictor cut at each calibrated sparsity: levels for the search
                "levels": predictor.cut_levels(pred, x, active, sparsities)}
    return predictors, info


def write(result: dict, out: str | Path, force: bool = False) -> list[Path]:
    """CALIB.json (statistics, thresholds), CALIB.samples.npz (x rows per site) and, with
    predictors, CALIB.predictors.npz (``<site>/a``, ``/b``, ``/c``, ``/cut``)."""
    out = Path(out)
    files = {"samples": out.with_suffix(".samples.npz")}
    if result.get("_predictors"):
        files["predictors"] = out.with_suffix(".predictors.npz")
    for p in (out, *files.values()):
        if p.exists() and not force:
            raise UsageError("output exists; pass --force to overwrite it", path=p)
    body = {k: v for k, v in result.items() if not k.startswith("_")}
    body.update({k: p.name for k, p in files.items()})
    out.write_text(json.dumps(body, indent=1))
    np.savez_compressed(files["samples"], **result["_samples"])
    if "predictors" in files:
        np.savez_compressed(files["predictors"], **result["_predictors"])
    return [out, *files.values()]



PARTS = ("input", "hidden")  # TEAL thresholds: the FFN input x, the down projection's input a
GATE = "gate"  # CATS threshold of gated sites: |act(x·Wg)|, instead of "hidden"
PREDICTOR = "predictor"  # a site's trained predictor on or off, instead of thresholds


def load_predictors(calibration_path: str | Path, calibration: dict) -> dict[str, tuple]:
    """Site → (A, B, C - cut) from CALIB.predictors.npz, or from the in-memory result of
    ``calibrate`` (empty without predictors)."""
    if calibration.get("_predictors"):
        arrays = calibration["_predictors"]
    elif calibration.get("predictors"):
        arrays = read_feed(Path(calibration_path).with_name(calibration["predictors"]))
    else:
        return {}
    out = {}
    for site, st in calibration["sites"].items():
        if f"{site}/a" not in arrays:
            continue
        if st.get("predictor") is None:
            raise UsageError(f"the predictors file holds a predictor for site {site!r}, "
                             "whose entry in the calibration has none", path=calibration_path)
        try:
            a, b, c, cut = (arrays[f"{site}/{k}"].astype(np.float32) for k in ("a", "b", "c", "cut"))
        except KeyError as e:
            raise UsageError(f"the predictors lack {e} of site {site!r}",
                             path=calibration_path) from e
        k, f = st["d_model"], st["d_ff"]
        if not (a.ndim == 2 and a.shape[0] == k and b.shape == (a.shape[1], f)
                and c.shape == (f,) and cut.shape in ((), (1,), (f,))):
            raise UsageError(f"the predictor of site {site!r} has shapes A {a.shape}, B "
                             f"{b.shape}, C {c.shape}, cut {cut.shape}; its site has K={k}, "
                             f"F={f}", path=calibration_path)
        out[site] = (a, b, c - cut)
    return out


def threshold_input_name(site: str, part: str) -> str:
    return f"fffc_threshold_{part}_{site}"


def thresholded_model(model: Analysis, calibration: dict, sparsity: float | None,
                      sites: Iterable[str] | None = None,
                      parts: tuple[str, ...] = PARTS,
                      predictors: dict[str, tuple] | None = None,
                      predictors_on: Iterable[str] = ()) -> onnx.ModelProto:
    """The analysed model with TEAL thresholds at ``sparsity`` on every calibrated site (or on
    ``sites``): |x| ("input") and |a| ("hidden") below their calibrated quantiles are
    zeroed before the projections, in standard ONNX ops (``parts``: which of them; "gate"
    adds CATS's threshold on |act(gate)| of gated sites).
    ``sparsity`` None: every threshold is a scalar float graph input instead
    (``threshold_input_name``; feed -1 to switch one off), for searching levels per site.
    ``predictors`` (site → A, B, C with the cut folded in): with ``sparsity`` None each such
    site also gets the input ``threshold_input_name(site, "predictor")``, added to its
    predictor's scores (0: predictor mode, 1e30: off); otherwise the sites in
    ``predictors_on`` run their predictor. A calibration with centers (``center`` "mode" or "median")
    thresholds |v - center| and puts the center in place of what it drops. It is the
    reference a threshold kernel must equal and what measures the accuracy a sparsity costs;
    it is not faster than the original."""
    if calibration["model"]["sha256"] != sha256_file(model.path):
        raise UsageError("the calibration was made for another model (sha256 differs)",
                         path=model.path)
    key = f"{sparsity:g}" if sparsity is not None else ""
    if sparsity is not None and not any(abs(s - sparsity) < 1e-9
                                        for s in calibration["sparsities"]):
        raise UsageError(f"no thresholds for sparsity {sparsity:g}; calibrated: "
                         f"{calibration['sparsities']}")
    working = copy(model.working)
    chosen = set(calibration["sites"]) if sites is None else set(sites)
    thresholds, gates, centers = {}, {}, {}
    for name, st in calibration["sites"].items():
        if name not in chosen:
            continue
        pair_centers = site_centers(calibration, name, tuple(p in parts for p in PARTS))
        if pair_centers is not None:
            centers[name] = pair_centers
        pair = []
        for p in PARTS:
            if p not in parts:
                pair.append(None)
            elif sparsity is not None:
                pair.append(st["thresholds"][p][key])
            else:
                v = ir.Value(name=threshold_input_name(name, p), shape=ir.Shape([]),
                             type=ir.TensorType(ir.DataType.FLOAT))
                working.graph.inputs.append(v)
                pair.append(v)
        thresholds[name] = tuple(pair)
        if GATE in parts and GATE in st["thresholds"]:
            if sparsity is not None:
                gates[name] = (None, st["thresholds"][GATE][key])
            else:
                v = ir.Value(name=threshold_input_name(name, GATE), shape=ir.Shape([]),
                             type=ir.TensorType(ir.DataType.FLOAT))
                working.graph.inputs.append(v)
                gates[name] = (None, v)
    masks = {}
    for name, arrays in (predictors or {}).items():
        if sparsity is None:
            v = ir.Value(name=threshold_input_name(name, PREDICTOR), shape=ir.Shape([]),
                         type=ir.TensorType(ir.DataType.FLOAT))
            working.graph.inputs.append(v)
            masks[name] = (*arrays, v)
        elif name in set(predictors_on):
            masks[name] = tuple(arrays)
    plans = {}
    for name in {*thresholds, *gates, *masks, *centers}:
        t, g, p = thresholds.get(name), gates.get(name), masks.get(name)
        plans[name] = SiteLowering(masks=Masks(
            input=(t or g or (None, None))[0], hidden=t[1] if t else None,
            gate=g[1] if g else None, predictor=tuple(p[:3]) if p else None,
            predictor_switch=p[3] if p and len(p) > 3 else None, centers=centers.get(name)))
    passes.lower(working, plans)
    return ir.serde.serialize_model(working)
