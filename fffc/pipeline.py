"""The compile pipeline: the one module that runs every stage, in order.

load → canonicalize → detect → plan → probe + verify sites → lower → codegen →
package (shim) → check the artifact → manifest. Each stage takes the previous
stage's output; with a dump directory each writes a numbered artifact so a failure can
be reproduced from the stage that broke. Nothing lands in the output directory unless
every check passed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from . import frontend, passes, plan, verify
from .config import CompileOptions
from .contract.lowering import Masks, SiteLowering
from .contract.modes import mode
from .errors import NoSitesError, RewriteError, UsageError, VerificationError
from .ops import WEIGHT_DTYPES
from .sites import NearMiss, Site
from .targets import normalize

Reporter = Callable[[str], contextlib.AbstractContextManager]
KERNEL_DECISIONS = ("exact", "tree", "teal", "cats", "predictor", "structured", "routed")
MASKED_DECISIONS = ("teal", "cats", "predictor")  # the op computes a masked function  # sites that become an ai.fffc node with kernels
MAX_ROUNDS = 2  # a site whose kernel fails the artifact check is dropped and the rest rebuilt
STACKED_PROBE_TOKENS = 301  # structured kernels' check: past every variant's first bound
TEAL_MODEL_RTOL = 1e-3  # whole-model check of artifacts with teal sites (see _check_artifact)


@contextlib.contextmanager
def _quiet(_: str) -> Iterator[None]:
    yield


@dataclass
class Analysis:
    """What ``inspect`` reports and ``compile`` starts from."""

    path: Path
    proto: onnx.ModelProto
    working: ir.Model  # canonicalized, FFNs replaced by markers
    sites: list[Site]
    near_misses: list[NearMiss]
    canonical_rewrites: dict[str, int]
    pristine: ir.Model | None = None  # --weight-dtype: ``working`` before any rounding
    rounded: tuple[str, ...] = ()  # the sites whose weights ``working`` holds rounded


@dataclass
class CompileResult:
    artifact: Path
    sites: list[Site]
    near_misses: list[NearMiss]
    manifest: dict = field(default_factory=dict)


def analyze(path: str | Path, stage: Reporter = _quiet) -> Analysis:
    """Load, canonicalize and detect: every FFN site and every near miss."""
    with stage("load"):
        proto = frontend.load_proto(path)
        working = frontend.to_ir(proto)
    with stage("canonicalize + detect"):
        counts = passes.canonicalize(working)
        sites = passes.detect(working)
        misses = passes.near_misses(working)
    return Analysis(Path(path), proto, working, sites, misses, counts)


def _copy(model: ir.Model) -> ir.Model:
    return ir.serde.deserialize_model(ir.serde.serialize_model(model))


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file (manifest and calibration records of the source model)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _prepare_output(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise UsageError("output exists; pass --force to overwrite it", path=out)
    if out.exists() and not (out / "manifest.json").exists() and any(out.iterdir()):
        raise UsageError("output exists and is not an fffc artifact; refusing to overwrite it "
                         "even with --force", path=out)


def default_output(model_path: Path) -> Path:
    return model_path.with_name(model_path.stem + ".fffc")


def compile_model(path: str | Path, out: str | Path | None = None,
                  options: CompileOptions | None = None, stage: Reporter = _quiet) -> CompileResult:
    """``fffc compile``: write a verified artifact directory for ``options.target``."""
    options = options or CompileOptions()
    path = Path(path)
    out = Path(out) if out is not None else default_output(path)
    try:
        request = normalize(options.target, options.mcpu)
    except ValueError as e:
        raise UsageError(str(e)) from e
    if options.calibration is None and (options.budget is not None or options.data is not None):
        raise UsageError("--budget and --data apply to a calibration: add --calibration "
                         "CALIB.json (from fffc calibrate)")
    if options.merged_max_tokens is not None and options.merged_max_tokens < 0:
        raise UsageError(f"--merged-max-tokens must be >= 0, got {options.merged_max_tokens}")
    if options.weight_dtype not in WEIGHT_DTYPES.values():
        raise UsageError(f"--weight-dtype: one of {', '.join(WEIGHT_DTYPES)}, got "
                         f"{options.weight_dtype!r}")
    if options.weight_dtype != "float32" and request.family != "cuda":
        raise UsageError(f"--weight-dtype {options.weight_dtype}: 16-bit weights are for "
                         "--target cuda (the CPU kernels read float32 weights)")
    if options.merged_max_tokens and request.family == "cuda":
        raise UsageError("--merged-max-tokens: the CUDA StructuredFFN kernels have no pre-merged "
                         "path (the structured kernels serve every token count)")
    _prepare_output(out, options.force)
    a = analyze(path, stage)

    from .codegen.build import build_kernel_library, check_target, host_can_run, source
    from .native import build_shim

    check_target(request.family)  # unsupported targets fail before the slow stages
    dump = _Dumper(options.dump_dir)
    dump.model("00-loaded.onnx", a.proto)
    dump.ir("01-canonical.onnx", a.working)
    if not a.sites:
        why = "; ".join(f"{m.nodes[-1]}: {m.reason}" for m in a.near_misses[:3])
        raise NoSitesError("no FFN found" + (f" (near misses: {why})" if why else ""), path=path)
    plan.plan(a.sites, options.sites)
    allocation = None
    if options.calibration is not None:
        with stage("allocate calibrated modes"):
            allocation = _allocate(a, path, options)

    with stage("verify sites"):
        # many-token probes plus a one-token one: both sides of a token dispatch run
        feeds = (verify.probe_inputs(a.proto, options.probe_batch, options.probe_seq, options.seed)
                 + verify.probe_inputs(a.proto, 1, 1, options.seed + 1, count=1))
        want = verify.run(verify.session(a.proto), feeds)
        captured = _capture(a, feeds, want, options.rtol)
        # teal/cats/predictor sites compute another function (thresholds, predicted
        # neurons), and --weight-dtype rounds the weights: that is what the artifact must
        # equal; the distance from the original is reported
        _round_weights(a, options.weight_dtype)
        masked, captured_ref, want_ref = _masked_reference(a, feeds, captured, want, options.rtol)
        for site in a.sites:
            if site.decision not in (*KERNEL_DECISIONS, "walk"):
                continue
            weights = _site_weights(a, site)
            c = verify.verify_site(site, *captured_ref[site.name], weights, options.rtol)
            site.max_abs_err, site.max_rel_err = c.max_abs, c.max_rel
            if site.decision in MASKED_DECISIONS or a.rounded:
                site.deviation = verify.verify_site(site, *captured[site.name], weights,
                                                    options.rtol).max_rel
            if not c.ok:
                _drop(site, f"verification failed: rel err {c.max_rel:.2e} > {options.rtol:g}")
        rounding_changed = _round_weights(a, options.weight_dtype)  # dropped: as it was
        if rounding_changed or _masked_sites(a.sites) != masked:  # new reference
            masked, captured_ref, want_ref = _masked_reference(a, feeds, captured, want,
                                                               options.rtol)
    dump.json("03-verify.json", {"sites": [s.to_json() for s in a.sites]})

    limits = _sparse_limits(a.sites, request.family, options)
    merged = _merged_limits(a, request.family, options, stage)
    staging = Path(tempfile.mkdtemp(prefix=".fffc-", dir=out.parent if out.parent.exists() else None))
    try:
        for _ in range(MAX_ROUNDS):
            final = _copy(a.working)
            masks = _masks(a.sites)
            passes.lower(final, {s.name: SiteLowering(s.decision, masks.get(s.name),
                                                      limits.get(s.name, 0),
                                                      merged.get(s.name, 0))
                                 for s in a.sites})
            final_proto = ir.serde.serialize_model(final)
            dump.model("02-rewritten.onnx", final_proto)
            exact = [s for s in a.sites if s.decision in KERNEL_DECISIONS]
            _clear(staging)
            model_file = staging / "model.onnx"
            onnx.save(final_proto, str(model_file))
            library = shim = None
            if exact:
                specs = sorted({k for s in exact for k in plan.kernel_specs(s)}
                               | {plan.merged_spec(s) for s in exact if merged.get(s.name, 0) > 0},
                               key=lambda k: k.key)
                with stage(f"codegen ({len(specs)} kernel families, {request.family})"):
                    library = build_kernel_library(specs, request.family,
                                                   staging / "kernels" / request.family,
                                                   mcpu=request.mcpu, archs=options.cuda_archs,
                                                   mattr=options.mattr,
                                                   counted_specs=_counted_specs(exact),
                                                   weight_dtype=options.weight_dtype)
                cpu_family = "x86" if request.family == "cuda" else request.family
                for k in library.kernels:
                    dump.text(f"04-kernels/{k.symbol}.py",
                              source(k.spec, k.variant, cpu_family, library.target.get("mcpu")))
                with stage("build shim"):
                    shim = build_shim(library, staging)
            check_shim = shim
            if library is not None and not host_can_run(library.target):
                # The target CPU's code cannot run here: compare the same kernels built for
                # this host instead (same TIR, only the instruction selection differs).
                with stage("build host twin for the check"):
                    twin = staging.parent / f"{staging.name}-twin"
                    twin_lib = build_kernel_library(specs, request.family, twin / "kernels",
                                                    mcpu=request.mcpu, host_twin=True,
                                                    mattr=options.mattr)
                    check_shim = build_shim(twin_lib, twin)
            try:
                with stage("check artifact"):
                    report, failed = _check_artifact(a, final_proto, model_file, check_shim,
                                                     feeds, want_ref, captured_ref, options.rtol)
                    if want_ref is not want:
                        report["deviation_from_original"] = _deviation(
                            model_file, check_shim, feeds, want, options.rtol)
            finally:
                if check_shim is not shim:
                    shutil.rmtree(check_shim.parent, ignore_errors=True)
            if check_shim is not shim:
                report["kernels_checked_on"] = f"a host build of the same kernels ({_host()})"
            if library is not None and library.cuda is not None:
                with stage("check CUDA kernels (CPU emulation)"):
                    # masked sites (teal, cats, predictor) against the masked function
                    report["cuda_kernels"] = _check_cuda(a, library, captured_ref,
                                                         options.rtol, failed,
                                                         options.weight_dtype)
            if not failed:
                break
            for s in a.sites:
                if s.name in failed:
                    _drop(s, f"kernel check failed: {failed[s.name]}")
            rounding_changed = _round_weights(a, options.weight_dtype)
            if rounding_changed or _masked_sites(a.sites) != masked:  # a new reference
                masked, captured_ref, want_ref = _masked_reference(a, feeds, captured, want,
                                                                   options.rtol)
        else:
            raise VerificationError("artifact check still failing after dropping failed sites",
                                    path=path)
        manifest = _manifest(a, options, request, library, shim, staging, report, feeds, limits)
        if allocation is not None:
            manifest["calibration"] = allocation
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), str(out))  # a rename when staging sits next to out
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return CompileResult(out, a.sites, a.near_misses, manifest)


def _counted_specs(sites: list[Site]) -> list:
    """The dense FFN specs RoutedFFN runs on its gathered rows: on CUDA they read the
    selected count on the device ("counted_" variants)."""
    return sorted({plan.merged_spec(s) for s in sites if s.decision == "routed"},
                  key=lambda k: k.key)


def _masked_sites(sites: list[Site]) -> set[str]:
    """Sites whose op computes a masked function (teal thresholds, predicted neurons)."""
    return {s.name for s in sites if s.decision in MASKED_DECISIONS}


def _drop(site: Site, reason: str) -> None:
    """Leave a site as it was (a check failed), forgetting its masked-mode parameters."""
    site.decision, site.thresholds, site.predictor_arrays, site.centers = "dense", None, None, None
    site.reason = reason


def _masked_reference(a: Analysis, feeds, captured, want, rtol: float):
    """(masked site names, captured site activations, outputs) of the reference the
    artifact must equal: the masked model when some site is masked, else the original."""
    masked = _masked_sites(a.sites)
    if not masked and not a.rounded:
        return masked, captured, want
    return (masked, *_capture(a, feeds, None, rtol, _masks(a.sites), reference=True))


def _round_weights(a: Analysis, dtype: str) -> bool:
    """--weight-dtype: ``a.working`` with the weights of the sites that get kernels rounded to
    ``dtype`` (from the unrounded copy, so a dropped site is left exactly as it was). True
    when that set of sites changed (the reference must be captured again)."""
    if dtype == "float32":
        return False
    sites = tuple(sorted(s.name for s in a.sites if s.decision in KERNEL_DECISIONS))
    if sites == a.rounded and a.pristine is not None:
        return False
    if a.pristine is None:
        a.pristine = _copy(a.working)
    a.working = _copy(a.pristine)
    passes.round_weights(a.working, sites, dtype)
    a.rounded = sites
    return True


def _masks(sites: list[Site]) -> dict[str, Masks]:
    """The masked sites' ``Masks`` (their mode's: thresholds and centers of teal sites,
    predictor arrays of predictor sites, thresholds of cats sites)."""
    return {s.name: m for s in sites if (m := mode(s.decision).masks(s)) is not None}


def _site_weights(a: Analysis, site: Site) -> dict[str, np.ndarray]:
    """The site's op inputs as the artifact stores them (a centered teal site: with XC, HC
    and the biases holding their share)."""
    return passes.site_inputs(a.working, site)


def _allocate(a: Analysis, path: Path, options: CompileOptions) -> dict:
    """``--calibration`` + ``--budget``: a mode (teal, cats, predictor) and its levels per
    site (``fffc.allocate``, or one rule for ``cats=S`` / ``predictor``), set on the sites as
    their decisions. Returns the manifest's ``calibration`` section."""
    from . import allocate
    from .calibration import load_feeds, load_predictors

    if options.budget is not None:
        allocate.parse_budget(options.budget)  # a bad budget fails before the file is read
    try:
        calib = json.loads(Path(options.calibration).read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read the calibration ({e})", path=options.calibration) from e
    if calib.get("model", {}).get("sha256") != sha256_file(path):
        raise UsageError("the calibration was made for another model (sha256 differs); run "
                         "fffc calibrate on this one", path=options.calibration)
    # no --budget: the allocation `fffc calibrate --budget` stored, applied as it is
    kept = calib.get("allocation") if options.budget is None else None
    if options.budget is None and kept is None:
        raise UsageError("--calibration needs a --budget (sparsity=S, error=E, uniform=S, "
                         "cats=S or predictor), or a calibration made with fffc calibrate "
                         "--budget", path=options.calibration)
    budget_text = options.budget or kept["budget"]
    budget = allocate.parse_budget(budget_text)
    if budget[0] == "cats":
        plan.apply_gate_thresholds(a.sites, calib, budget[1])
        return {"path": str(Path(options.calibration).resolve()), "budget": budget_text,
                "gate_thresholds": {s.name: s.thresholds[1] for s in a.sites
                                    if s.decision == "cats"}}
    predictors = load_predictors(options.calibration, calib)
    if budget[0] == "predictor":
        if not predictors:
            raise UsageError("--budget predictor: this calibration has no predictors (run fffc "
                             "calibrate with --predictor-rank R)", path=options.calibration)
        plan.apply_predictors(a.sites, calib, predictors)
        return {"path": str(Path(options.calibration).resolve()), "budget": budget_text,
                "predictors": {s.name: s.predictor for s in a.sites if s.predictor}}
    if kept is not None:
        chosen = {k: v for k, v in kept.items() if k != "budget"}
        feeds_used = "the calibration's (fffc calibrate --budget)"
    else:
        inputs = [i.name for i in a.proto.graph.input
                  if i.name not in {t.name for t in a.proto.graph.initializer}]
        feeds = (list(load_feeds(Path(options.data), inputs)) if options.data is not None
                 else verify.probe_inputs(a.proto, 1, 32, options.seed + 7, count=8))
        chosen = allocate.choose(path, calib, budget, feeds, predictors or None).to_json()
        feeds_used = str(options.data) if options.data else "synthetic x8"
    plan.apply_thresholds(a.sites, chosen["thresholds"], chosen["levels"], calib, predictors,
                          chosen["predictor_shifts"])
    return {"path": str(Path(options.calibration).resolve()), "budget": budget_text,
            "feeds": feeds_used, "allocation": chosen}


def _deviation(model_file: Path, shim: Path | None, feeds, want, rtol: float) -> dict:
    """The compiled (thresholded) model vs the original: what the thresholds cost."""
    got = verify.run(verify.session(str(model_file), register=str(shim) if shim else None), feeds)
    c = verify.compare_runs(got, want, rtol)
    return {"max_abs": c.max_abs, "max_rel": c.max_rel}


def _sparse_limits(sites: list[Site], target: str, options: CompileOptions) -> dict[str, int]:
    """Per exact/teal/predictor site, the token count up to which its kernel runs (0: always)."""
    from .codegen.schedules import family

    fam = family(target)
    out = {}
    for s in sites:
        if s.decision in ("exact", *MASKED_DECISIONS):
            out[s.name] = (options.max_sparse_tokens if options.max_sparse_tokens is not None
                           else fam.sparse_max_tokens(plan.kernel_spec(s)))
    return out


def _merged_limits(a: Analysis, target: str, options: CompileOptions,
                   stage: Reporter) -> dict[str, int]:
    """Per structured site, the token count up to which its pre-merged dense path runs:
    ``--merged-max-tokens`` if given, else measured here (structured vs merged kernel on
    the site's weights, ``codegen.crossover``) for the host's own target; a cross target
    cannot be timed here and keeps the structured path (0). Recorded in the site."""
    from .codegen.crossover import measure_crossover

    out = {}
    for s in a.sites:
        if s.decision != "structured":
            continue
        st = s.structure
        if options.merged_max_tokens is not None:
            out[s.name] = options.merged_max_tokens
            st["crossover"] = "set by --merged-max-tokens"
        elif target == "cuda":
            out[s.name] = 0
            st["crossover"] = "cuda: the structured kernels serve every token count"
        elif target != "x86":
            out[s.name] = 0
            st["crossover"] = f"not measured: {target} kernels do not run on this host"
        else:
            with stage(f"time structured vs merged ({s.name})"):
                w = passes.site_inputs(a.working, s)
                out[s.name], st["crossover"] = measure_crossover(
                    plan.kernel_spec(s), plan.merged_spec(s), w)
        st["merged_max_tokens"] = out[s.name]
    return out


def _clear(d: Path) -> None:
    for p in d.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def _capture(a: Analysis, feeds, want, rtol: float, masks: dict[str, Masks] | None = None,
             reference: bool = False):
    """Check 1 and the site activations: the all-dense lowering must equal the original.

    ``reference`` (with ``masks``, ``_masks`` of the teal / cats / predictor sites, and/or
    rounded weights in ``a.working``): the reference model in standard ops instead, whose
    site activations and outputs are returned as ``(captured, outputs)``."""
    dense = _copy(a.working)
    io = passes.site_io(dense)
    passes.lower(dense, {n: SiteLowering(masks=m) for n, m in (masks or {}).items()})
    n_out = len(a.proto.graph.output)
    names = [n for pair in io.values() for n in pair]
    passes.expose(dense, names)
    got = verify.run(verify.session(ir.serde.serialize_model(dense)), feeds)
    if not reference:
        c = verify.compare_runs([g[:n_out] for g in got], want, rtol)
        if not c.ok:
            raise RewriteError(f"canonicalization changed the model's outputs (rel err "
                               f"{c.max_rel:.2e}); please report this model", path=a.path)
    out_names = [o.name for o in dense.graph.outputs]
    captured = {}
    for site, (x_name, y_name) in io.items():
        xi, yi = out_names.index(x_name), out_names.index(y_name)
        captured[site] = ([g[xi] for g in got], [g[yi] for g in got])
    if reference:
        return captured, [g[:n_out] for g in got]
    return captured


def _check_artifact(a: Analysis, final_proto, model_file: Path, shim: Path | None, feeds, want,
                    captured, rtol: float) -> tuple[dict, dict[str, str]]:
    """Check 3: kernels alone vs captured site outputs; whole model with and without shim."""
    failed: dict[str, str] = {}
    report: dict = {"rtol": rtol}
    fallback = verify.compare_runs(verify.run(verify.session(str(model_file)), feeds), want, rtol)
    report["model_without_shim"] = fallback.__dict__
    if shim is None:
        return report, failed
    kernels = {}
    for site in a.sites:
        if site.decision not in KERNEL_DECISIONS:
            continue
        xs, ys = captured[site.name]
        weights = _site_weights(a, site)
        single = verify.single_node_model(final_proto, site.name)
        paths = [single]
        if site.kind == "structured":
            # every kernel of the site: the structured path too where probes are within the
            # merged path's range, and the many-token variants (an FFN is per token: the
            # probes' tokens stacked are a valid probe with the stacked outputs)
            paths.append(verify.without_merged_path(single))
            xs, ys = _stacked(xs, ys, STACKED_PROBE_TOKENS)
        c = verify.Comparison(0.0, 0.0, True)
        try:
            sessions = [verify.session(m, register=str(shim)) for m in paths]
        except Exception as e:  # ORT raises one type for everything: keep its first line
            failed[site.name] = f"kernel could not be loaded: {str(e).splitlines()[0][:200]}"
            continue
        for sess in sessions:
            for x, y in zip(xs, ys, strict=True):
                c = verify.worse(c, verify.compare(sess.run(None, {"X": x})[0], y, rtol,
                                                    verify.site_slack(site, x, weights)))
        kernels[site.name] = c.__dict__
        site.max_abs_err = max(site.max_abs_err or 0.0, c.max_abs)
        site.max_rel_err = max(site.max_rel_err or 0.0, c.max_rel)
        if not c.ok:
            failed[site.name] = f"rel err {c.max_rel:.2e} > {rtol:g}"
    report["kernels"] = kernels
    # teal: a hidden entry within rounding of its threshold may be kept by the kernel and
    # dropped by ORT's graph (each site is checked with that slack above); its effect on
    # the layers after it is bounded here by a looser whole-model tolerance
    model_rtol = max(rtol, TEAL_MODEL_RTOL) if _masked_sites(a.sites) else rtol
    report["model_rtol"] = model_rtol
    with_shim = verify.compare_runs(
        verify.run(verify.session(str(model_file), register=str(shim)), feeds), want, model_rtol)
    report["model_with_shim"] = with_shim.__dict__
    if not with_shim.ok and not failed:
        raise VerificationError(f"compiled model differs from the original (rel err "
                                f"{with_shim.max_rel:.2e}) although every kernel matched", path=a.path)
    if not fallback.ok:
        raise VerificationError(f"fallback functions differ from the original (rel err "
                                f"{fallback.max_rel:.2e})", path=a.path)
    return report, failed


def _stacked(xs: list[np.ndarray], ys: list[np.ndarray],
             tokens: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The probes plus one of at least ``tokens`` tokens: every probe's tokens, repeated."""
    x2 = np.concatenate([x.reshape(-1, x.shape[-1]) for x in xs])
    y2 = np.concatenate([y.reshape(-1, y.shape[-1]) for y in ys])
    reps = -(-tokens // len(x2))
    return [*xs, np.tile(x2, (reps, 1))], [*ys, np.tile(y2, (reps, 1))]


def _check_cuda(a: Analysis, library, captured, rtol: float, failed: dict[str, str],
                weight_dtype: str = "float32") -> dict:
    """Every CUDA variant of every site with kernels, run by the CPU emulator of the generated
    CUDA source, against the captured site outputs (no GPU here; GPU runs: bench_cuda.py,
    bench_fff_cuda.py)."""
    from .codegen.cuda_emu import Emulator

    emu = Emulator(library.cuda.source_path.read_text(), library.cuda.variants)
    out: dict = {"checked_on": "CPU emulation of the emitted CUDA source (one host thread per "
                               "CUDA thread, barriers for __syncthreads)"}
    for site in a.sites:
        if site.decision not in KERNEL_DECISIONS:
            continue
        weights = _kernel_inputs(a, site)
        if site.decision == "routed":
            out[site.name] = _check_cuda_routed(emu, library.cuda.variants, site, weights,
                                                captured[site.name], rtol, failed,
                                                weight_dtype)
            continue
        spec = plan.kernel_spec(site).stored_as(weight_dtype)
        xs, ys = captured[site.name]
        x = np.concatenate([v.reshape(-1, spec.d_in) for v in xs])
        y = np.concatenate([v.reshape(-1, spec.d_out) for v in ys])
        results = {}
        for v in library.cuda.variants:
            if v.spec != spec or v.variant.startswith("counted_"):
                continue
            n = min(v.max_tokens, len(x))  # every variant runs, also below its range
            got = emu.run(v, {"X": x[:n], **weights}, any_tokens=True)
            c = verify.compare_runs([[got]], [[y[:n]]], rtol)
            results[v.variant] = c.__dict__ | {"tokens": n}
            site.max_abs_err = max(site.max_abs_err or 0.0, c.max_abs)
            site.max_rel_err = max(site.max_rel_err or 0.0, c.max_rel)
            if not c.ok:
                failed[site.name] = f"CUDA {v.variant}: rel err {c.max_rel:.2e} > {rtol:g}"
        if not results:  # never an unchecked kernel
            failed[site.name] = "no CUDA variant of this site was found to check"
        out[site.name] = results
    return out


def _kernel_inputs(a: Analysis, site: Site) -> dict[str, np.ndarray]:
    """A site's constant kernel inputs by kernel argument name, in the op's layout for its
    decision (thresholds and predictor factors included)."""
    return passes.site_inputs(a.working, site)


def _check_cuda_routed(emu, variants, site: Site, weights: dict, captured, rtol: float,
                       failed: dict[str, str], weight_dtype: str = "float32") -> dict:
    """A RoutedFFN site's CUDA launches as the shim chains them (route → the counted FFN
    variant for the selected rows → combine), per captured probe, against its output."""
    from .ops import capacity_k

    r = site.routing
    route, ffn_spec, combine = plan.kernel_specs(site)
    ffn_spec = ffn_spec.stored_as(weight_dtype)
    by_spec = {}
    for v in variants:
        by_spec.setdefault(v.spec, []).append(v)
    coef = np.array([*r["x_coef"], *r["delta_coef"]], np.float32)
    ffn_w = {"A1": weights["W1"][None], "A2": weights["W2"][None],
             **{k: weights[k] for k in ("B1", "B2") if k in weights}}
    results = {}
    for x, y in zip(*captured, strict=True):
        b, s, d = x.shape
        n = b * s
        topk = r.get("selection", "topk") == "topk"
        k = capacity_k(s, r["k"], r.get("capacity")) if topk else 0
        flat = x.reshape(n, d)
        (rv,), (cv,) = by_spec[route], by_spec[combine]
        got = emu.run(rv, {"X": flat, **weights}, any_tokens=True, scalars={"S": s, "KN": k},
                      outputs={"IDX": n, "WT": n, "CNT": 1, "XS": n * d, "POS": n})
        rows = b * k if topk else n
        delta = np.zeros((n, d), np.float32)
        used = "none selected"
        if rows:
            fv = next(v for v in by_spec[ffn_spec] if v.variant.startswith("counted_")
                      and v.min_tokens <= rows <= v.max_tokens)
            used = fv.variant
            delta[:rows] = emu.run(fv, {"X": got["XS"].reshape(n, d)[:rows], "CNT": got["CNT"],
                                        **ffn_w}, any_tokens=True)
        out = emu.run(cv, {"X": flat, "IDX": got["IDX"], "WT": got["WT"], "CNT": got["CNT"],
                           "POS": got["POS"], "D": delta, "COEF": coef}, any_tokens=True)
        c = verify.compare_runs([[out]], [[y.reshape(n, d)]], rtol)
        results[f"B{b}xS{s}"] = c.__dict__ | {"tokens": n, "ffn_variant": used}
        site.max_abs_err = max(site.max_abs_err or 0.0, c.max_abs)
        site.max_rel_err = max(site.max_rel_err or 0.0, c.max_rel)
        if not c.ok:
            failed[site.name] = f"CUDA routing chain (B={b}, S={s}): rel err {c.max_rel:.2e}"
    return results


def _host() -> str:
    from .codegen._tvm import host_cpu

    return host_cpu()


ORT_API_VERSION = 17  # runtime/src/ort_api.h kOrtApiVersion


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for dist in ("fffc", "onnx", "onnxruntime", "onnxscript", "onnx-ir", "apache-tvm",
                 "apache-tvm-ffi", "numpy"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _manifest(a: Analysis, options: CompileOptions, request, library, shim, staging: Path,
              report: dict, feeds, limits: dict[str, int]) -> dict:
    from .codegen.cuda_build import nvcc_version
    from .native import glibc_requirement

    opts = replace(options, dump_dir=None)
    return {
        "format": 1,
        "versions": _versions(),
        "source": {"path": str(a.path.resolve()), "sha256": sha256_file(a.path)},
        "target": {"family": request.family, "mcpu": request.mcpu,
                   "tvm": library.target if library else None},
        "model": "model.onnx",
        "shim": shim.name if shim else None,
        "requires": None if shim is None else {
            "os": "linux", "arch": (library.target.get("mtriple") or "x86_64").split("-")[0],
            "glibc": glibc_requirement(shim),
            "onnxruntime": f">= 1.17 (C API {ORT_API_VERSION}); built and checked with "
                           f"{_versions()['onnxruntime']}",
            "cuda": None if library.cuda is None else
            f"NVIDIA driver for CUDA {nvcc_version()}+ (cubins {', '.join(library.cuda.archs)}"
            f", PTX {max(library.cuda.archs)})",
        },
        "cuda": None if library is None or library.cuda is None else _cuda_manifest(library.cuda,
                                                                                     staging),
        "kernels": None if library is None else {
            "object": str(library.object_path.relative_to(staging)),
            "entries": [{"symbol": k.c_symbol, "variant": k.variant, "min_tokens": k.min_tokens,
                         "max_tokens": k.max_tokens, "args": k.arg_names,
                         "spec": k.spec.__dict__ | {"key": k.spec.key}} for k in library.kernels],
        },
        "options": {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
                    for k, v in opts.__dict__.items() if k != "dump_dir"},
        "canonical_rewrites": a.canonical_rewrites,
        "max_sparse_tokens": {s.name: limits.get(s.name) for s in a.sites
                              if s.decision in ("exact", *MASKED_DECISIONS)},
        "sites": [s.to_json() for s in a.sites],
        "near_misses": [m.to_json() for m in a.near_misses],
        "verification": report | {"probes": [{k: list(v.shape) for k, v in f.items()} for f in feeds]},
    }


def _cuda_manifest(cuda, staging: Path) -> dict:
    """Where the GPU code is and how each variant is launched (the shim's table, readable)."""
    from .codegen.cuda_build import fatbin_entries

    return {
        "archs": list(cuda.archs),
        "fatbin_contents": [f"{kind} {arch}" for kind, arch in fatbin_entries(cuda.fatbin_path)],
        "fatbin": str(cuda.fatbin_path.relative_to(staging)),
        "source": str(cuda.source_path.relative_to(staging)),
        "variants": [{
            "spec_key": v.spec.key, "variant": v.variant, "min_tokens": v.min_tokens,
            "max_tokens": v.max_tokens, "workspace_floats_per_token": dict(v.workspace),
            "launches": [{"kernel": ln.kernel, "params": list(ln.params),
                          "grid": [f"({g.a}*N+{g.b})//{g.c}" for g in ln.grid],
                          "block": list(ln.block)} for ln in v.launches],
        } for v in cuda.variants],
    }


class _Dumper:
    """Writes numbered stage artifacts when a dump directory is set."""

    def __init__(self, root: Path | None):
        self.root = root
        if root:
            root.mkdir(parents=True, exist_ok=True)

    def model(self, name: str, proto: onnx.ModelProto) -> None:
        if self.root:
            onnx.save(proto, str(self.root / name))

    def ir(self, name: str, model: ir.Model) -> None:
        if self.root:
            ir.save(model, str(self.root / name))

    def text(self, name: str, text: str) -> None:
        if self.root:
            (self.root / name).parent.mkdir(parents=True, exist_ok=True)
            (self.root / name).write_text(text)

    def json(self, name: str, data: dict) -> None:
        if self.root:
            (self.root / name).write_text(json.dumps(data, indent=2))
