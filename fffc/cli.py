"""``fffc`` command line: parse, call the library, print. Nothing else lives here.

Exit codes: 0 success; 1 internal error; 2 usage (bad flag, unknown target, output
exists without --force); 3 model cannot be read; 4 unsupported opset or dtype; 5 no FFN
found; 6 rewrite failed; 7 verification failed; 8 target not supported yet; 9 codegen
failed; 10 packaging failed (compiler, headers, disk); 11 an artifact's files do not match
its manifest; 12 the model needs more memory than --max-memory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .contract import config
from .contract.cuda import CudaVersion
from .contract.errors import ArtifactCheckError, FffcError, UsageError
from .contract.kinds import Crossover, WeightDtype
from .contract.ops import WEIGHT_DTYPES
from .contract.tolerances import RTOL
from .plan.memory import DEFAULT_FRACTION
from .runtime.integrity import ArtifactError

MAX_MEMORY_HELP = ("refuse a model whose {stages} would need more memory, estimated from its "
                   "shapes before anything large is allocated (exit 12): a size (8G, 512M, "
                   "1.5GiB), a share of the available memory (50%%) or none (default: "
                   f"{DEFAULT_FRACTION * 100:g}%% of the memory available, the cgroup's "
                   "limit included)")
err_console = Console(stderr=True, soft_wrap=True)
console = Console(width=None if sys.stdout.isatty() else 160)


@contextlib.contextmanager
def _stage(name: str) -> Iterator[None]:
    """Spinner while a stage runs, then one line with its duration (stderr)."""
    t0 = time.perf_counter()
    with err_console.status(f"{name}…"):
        yield
    err_console.print(f"[green]✓[/] {name} [dim]({time.perf_counter() - t0:.1f}s)[/]")


def _note(text: str) -> None:
    """One line the user should know (stderr; the text is printed as it is, not as markup)."""
    err_console.print(Text.assemble(("note: ", "yellow"), text))


def _sites_table(sites, title: str) -> Table:
    t = Table(title=title)
    for col in ("site", "kind", "activation", "d_model", "d_ff", "bias", "weights", "decision",
                "rel err", "tokens", "nodes"):
        t.add_column(col)
    for s in sites:
        err = "" if s.max_rel_err is None else f"{s.max_rel_err:.1e}"
        tokens = "" if s.dispatch is None else s.dispatch.describe()
        t.add_row(s.name, f"{s.kind} ({s.family})", s.activation, str(s.d_model), str(s.d_ff),
                  "yes" if s.bias else "no", s.quantized or s.dtype, s.decision, err, tokens,
                  _nodes(s.matched_nodes))
    return t


def _nodes(names: list[str], keep: int = 6) -> str:
    """The matched nodes, shortened for an FFF region (an unrolled walk has hundreds)."""
    if len(names) <= keep:
        return ", ".join(names)
    return (", ".join(names[:3]) + f", … ({len(names) - 5} more) …, " + ", ".join(names[-2:]))


def cmd_inspect(args: argparse.Namespace) -> int:
    from .pipeline import analyze
    from .plan.decide import plan

    a = analyze(args.model, _stage if not args.json else contextlib.nullcontext, note=_note)
    plan(a.sites)
    if args.json:
        print(json.dumps(a.to_json(), indent=2))
        return 0
    console.print(_sites_table(a.sites, f"{len(a.sites)} FFN site(s) in {a.path}"))
    if a.near_misses:
        t = Table(title=f"{len(a.near_misses)} FFN-like region(s) not matched")
        t.add_column("nodes")
        t.add_column("reason")
        for m in a.near_misses:
            t.add_row(" → ".join(m.nodes), m.reason)
        console.print(t)
    return 0


def _mattr(text: str | None) -> tuple[str, ...]:
    features = tuple(f.strip() for f in (text or "").split(",") if f.strip())
    bad = [f for f in features if not re.fullmatch(r"[+-][\w.-]+", f)]
    if bad:
        raise UsageError(f"--mattr: expected e.g. +dotprod,+fullfp16, got {text!r}")
    return features


def _archs(text: str) -> tuple[str, ...]:
    archs = tuple(a.strip() for a in text.split(",") if a.strip())
    bad = [a for a in archs if not re.fullmatch(r"sm_\d+a?", a)]
    if bad or not archs:
        raise UsageError(f"--arch: expected e.g. sm_80,sm_90, got {text!r}")
    return archs


def cmd_compile(args: argparse.Namespace) -> int:
    from .contract.config import CompileOptions
    from .contract.modes import mode
    from .pipeline import compile_model

    options = CompileOptions(
        target=args.target, host=args.host, mcpu=args.mcpu, rtol=args.rtol, force=args.force,
        dump_dir=Path(args.dump) if args.dump else config.dump_dir_from_env(),
        sites=tuple(args.sites or ()),
        max_sparse_tokens=args.max_sparse_tokens, merged_max_tokens=args.merged_max_tokens,
        crossovers=args.crossovers, timings=args.timings, sparse_prefill=args.sparse_prefill,
        mattr=_mattr(args.mattr),
        calibration=args.calibration, budget=args.budget, data=args.data,
        **({"cuda_archs": _archs(args.arch)} if args.arch else {}),
        cuda_version=args.cuda_version,
        weight_dtype=WEIGHT_DTYPES[args.weight_dtype], max_memory=args.max_memory,
        glibc=args.glibc,
    )
    result = compile_model(args.model, args.output, options, _stage, _note)
    console.print(_sites_table(result.sites, f"{len(result.sites)} FFN site(s)"))
    for s in result.sites:  # left as they were by their timings or weight format: say why
        if (s.dispatch is not None and not s.dispatch.kernel) or s.weight_formats:
            console.print(f"{s.name}: {s.reason}")
        if s.gate_flips is not None:
            f = s.gate_flips
            console.print(f"{s.name}: gate on/off vs ONNX Runtime's MatMulNBits: {f.differ} of "
                          f"{f.of} decisions differ ({f.rate:.2e}) on the probe inputs")
    v = result.manifest.get("verification", {})
    masked = "deviation_from_original" in v  # the artifact computes the masked function
    rounded = result.manifest.get("options", {}).get("weight_dtype", "float32") != "float32"
    int4 = [s.int4 for s in result.sites if mode(s.decision).kernels and s.int4
            and WeightDtype(options.weight_dtype).floating]  # else: rounded
    widths = "/".join(f"int{b}" for b in sorted({int(q.bits) for q in int4}))
    what = " and ".join([*(["masked"] if any(mode(s.decision).masked
                                                for s in result.sites) else []),
                         *([f"{options.weight_dtype}-rounded weights"] if rounded else []),
                         *([f"{widths} weights dequantized to float32" + (
                             ", x rounded to int8 per block (accuracy_level 4)"
                             if any(q.int8_x for q in int4) else "")] if int4 else [])])
    for key in ("model_with_shim", "model_without_shim"):
        if key in v:
            vs = f" vs the reference ({what})" if masked else ""
            if key == "model_with_shim" and "sites_in_place" in v:
                vs = ", each kernel site on the input it receives vs its function"
            console.print(f"{key.replace('_', ' ')}{vs}: max rel err {v[key]['max_rel']:.2e} "
                          f"(rtol {v['rtol']:g}) {'[green]ok[/]' if v[key]['ok'] else '[red]FAIL[/]'}")
    if "model_with_shim_outputs" in v:
        console.print(f"model outputs with shim vs the reference ({what}): max rel err "
                      f"{v['model_with_shim_outputs']['max_rel']:.2e} (thresholds and int8 roundings "
                      "decide entries within float32 rounding either way; such differences grow "
                      "through later layers)")
    if masked:
        _print_calibration(result, what)
    console.print(f"artifact: [bold]{result.artifact}[/]")
    return 0


def _print_calibration(result, what: str) -> None:
    """What the kernels' function (``what`` it differs by) costs against the original: per
    site, and for the whole model (manifest keys)."""
    m = result.manifest
    for s in result.sites:
        if s.deviation is not None:
            console.print(f"{s.name}: {s.decision} — {s.reason}; site output vs the original: "
                          f"max rel err {s.deviation:.2e}")
    alloc = m.get("calibration", {}).get("allocation")
    if alloc:
        console.print(f"allocation ({m['calibration']['budget']}): {alloc['sparsity']:.0%} of the "
                      f"FFN weight bytes skipped; relative L2 output error {alloc['error_calibration']:.3f} "
                      f"(search feeds), {alloc['error_held_out']:.3f} (held out)")
    dev = m["verification"]["deviation_from_original"]
    console.print(f"[yellow]the compiled model differs from the original by design[/] "
                  f"({what}): max rel err {dev['max_rel']:.2e} on the probe inputs")
    masked = m["verification"].get("masked_from_original")
    if masked is not None:
        console.print(f"the kernels' function at every token count vs the original: max rel "
                      f"err {masked['max_rel']:.2e} on the probe inputs")


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import bench, plot, rows_to_json
    from .bench_decode import is_genai_artifact

    if is_genai_artifact(args.artifact):
        return _bench_decode(args)
    if args.prompt is not None or args.generate is not None:
        raise UsageError("--prompt and --generate time a compiled GenAI folder; "
                         f"{args.artifact} is a model artifact (use --tokens)")
    args.tokens = args.tokens or "1,8,128"
    args.repeat = args.repeat or 30
    try:
        tokens = [int(t) for t in args.tokens.split(",") if t]
    except ValueError as e:
        raise UsageError(f"--tokens: expected comma-separated integers, got {args.tokens!r}") from e
    with _stage("bench") if not args.json else contextlib.nullcontext():
        rows = bench(args.artifact, tokens, threads=args.threads, repeat=args.repeat,
                     original=args.original)
    if args.plot:
        plot(rows, args.plot, f"{args.artifact.name}: original vs fffc, ONNX Runtime, "
                              f"{args.threads} threads")
    if args.json:
        print(json.dumps(rows_to_json(rows), indent=2))
        return 0
    t = Table(title=f"{args.artifact}: original vs fffc, ONNX Runtime, {args.threads} threads")
    for col in ("tokens", "original ms", "fffc ms", "speed-up", "max rel err"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(str(r.tokens), f"{r.original_ms:.3f}", f"{r.fffc_ms:.3f}", f"{r.speedup:.2f}x",
                  f"{r.max_rel_err:.1e}")
    console.print(t)
    if args.plot:
        console.print(f"plot: [bold]{args.plot}[/]")
    return 0


def _bench_decode(args: argparse.Namespace) -> int:
    from .bench_decode import bench_decode

    if args.tokens is not None or args.plot is not None:
        raise UsageError("--tokens and --plot time a model artifact; a compiled GenAI folder "
                         "is timed by generation (--prompt, --generate)")
    with _stage("bench (generation)") if not args.json else contextlib.nullcontext():
        b = bench_decode(args.artifact, prompt=args.prompt or 128,
                         generate=args.generate or 128, threads=args.threads,
                         repeat=args.repeat or 5, original=args.original)
    if args.json:
        print(json.dumps(b.to_json(), indent=2))
        return 0
    t = Table(title=f"{args.artifact}: greedy generation in onnxruntime-genai, prompt "
                    f"{b.prompt} tokens, {b.generate} generated, {b.threads} threads, "
                    f"{len(b.fffc)} runs each")
    for col in ("model", "decode tokens/s", "min – max", "prefill ms", "min – max"):
        t.add_column(col, justify="right")
    for label, runs in b.sides():
        d, p = b.decode(runs), b.prefill(runs)
        t.add_row(label, f"{d.median:.1f}", f"{d.min:.1f} – {d.max:.1f}", f"{p.median:.1f}",
                  f"{p.min:.1f} – {p.max:.1f}")
    console.print(t)
    console.print(f"decode speed-up: [bold]{b.speedup:.2f}x[/] (ratio of medians); generated "
                  f"token ids identical: {'yes' if b.identical else '[yellow]no[/]'}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from . import calibrate
    from .plan import calibration

    out = args.output or (args.model.with_name(args.model.name + ".calib.json")
                          if args.model.is_dir() else args.model.with_suffix(".calib.json"))
    with err_console.status("calibrate…") as status:
        result = calibrate(
            args.model, args.data, synthetic=args.synthetic, prompts=args.prompts,
            generate=args.generate, tokenizer=args.tokenizer, rows=args.rows,
            seq=args.seq, samples=args.samples,
            predictor_rank=args.predictor_rank, predictor_sparsity=args.predictor_sparsity,
            center=args.center, token_mask=None if args.token_mask == "none" else args.token_mask,
            levels=calibration.parse_levels(args.levels) if args.levels else None,
            budget=args.budget, max_memory=args.max_memory,
            progress=lambda n: status.update(f"calibrate… {n} call(s)"))
    written = calibration.write(result, out, force=args.force)
    err_console.print(f"[green]✓[/] calibrate ({result['feeds']} call(s))")
    if (rows := result.get("rows")) is not None:
        g = result["generation"]
        console.print(f"{g['prompts']} prompt(s), up to {g['new_tokens']} new tokens each "
                      f"(greedy): {rows['prefill']} prefill and {rows['decode']} decode rows; "
                      f"the statistics are made of the {rows['used']} rows")
    what = "|value|" if args.center == "none" else f"|value - its channel's {args.center}|"
    t = Table(title=f"{len(result['sites'])} site(s): {what} at which a target sparsity falls")
    levels = result["sparsities"]  # shown: the calibrated levels nearest 40%, 50%, 90%
    shown = sorted({min(levels, key=lambda v: abs(v - q)) for q in (0.4, 0.5, 0.9)})
    for col in ("site", "family", "tokens", "exact zeros",
                *(f"{p} @{v:.0%}" for p in ("input", "hidden") for v in shown), "centered"):
        t.add_column(col)
    for name, st in result["sites"].items():
        th = st["thresholds"]
        t.add_row(name, st["family"], str(st["tokens"]), f"{st['exact_zeros_hidden']:.0%}",
                  *(f"{th[p][f'{v:g}']:.3g}" for p in ("input", "hidden") for v in shown),
                  ", ".join(sorted(st.get("centers", {}))) or "no")
    console.print(t)
    for name, st in result["sites"].items():
        if (p := st.get("predictor")) is not None:
            q = p["held_out"]
            console.print(f"{name}: rank-{p['rank']} predictor, held out: recall {q['recall']:.3f}"
                          f", precision {q['precision']:.3f}, selects {q['selected']:.1%} of "
                          f"neurons ({q['active']:.1%} active; random selection of as many: "
                          f"recall {p['random_baseline_recall']:.3f})")
    alloc = result.get("allocation")
    if alloc is not None and "sparsity" in alloc:
        console.print(f"allocation ({alloc['budget']}): {alloc['sparsity']:.0%} of the FFN "
                      f"weight bytes skipped, relative output error {alloc['error_held_out']:.3g}"
                      " on held-out feeds; fffc compile --calibration applies it")
    elif alloc is not None:
        console.print(f"budget {alloc['budget']}: fffc compile --calibration applies it")
    console.print("written: " + ", ".join(f"[bold]{p}[/]" for p in written))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .verify.artifact_files import verify_artifact

    checks = verify_artifact(args.artifact, load=not args.no_load)
    if args.json:
        print(json.dumps([{"check": c.what, "ok": c.ok, "detail": c.detail} for c in checks],
                         indent=2))
    else:
        t = Table(title=f"{args.artifact}: {len(checks)} checks")
        t.add_column("check")
        t.add_column("result")
        for c in checks:
            t.add_row(Text(c.what), Text("ok") if c.ok else Text(f"FAIL: {c.detail}",
                                                                 style="red"))
        console.print(t)
    failed = [c for c in checks if not c.ok]
    if failed:
        raise ArtifactCheckError(f"{len(failed)} of {len(checks)} checks failed; first: "
                                 f"{failed[0].detail}", path=args.artifact)
    return 0


def cmd_triton_repo(args: argparse.Namespace) -> int:
    from .package.triton import RepositoryOptions, write_repository

    out = write_repository(args.artifact, args.output, RepositoryOptions(
        name=args.name, instances=args.instances, max_batch=args.max_batch, mount=args.mount,
        force=args.force))
    console.print(f"written: [bold]{out}[/] (Triton ONNX Runtime backend; tritonserver "
                  f"--model-repository={args.mount or args.output.resolve()})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fffc", description=__doc__.split("\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compile", help="rewrite FFNs, build kernels and the shim into an artifact")
    c.add_argument("model", type=Path)
    c.add_argument("--target", default="x86", help="x86 (default), arm, cuda; jetson is "
                   "cuda --host aarch64")
    c.add_argument("--host", help="cuda: the CPU of the GPU's machine, x86 (default) or "
                   "aarch64 (Jetson: cubins for Orin sm_87 and Thor sm_110, NEON kernels for "
                   "its CPU's nodes, an aarch64 shim)")
    c.add_argument("-o", "--output", type=Path, help="artifact directory (default MODEL.fffc/)")
    c.add_argument("--force", action="store_true", help="overwrite an existing artifact")
    c.add_argument("--mcpu", help="CPU to compile for (default: this machine's; for cuda "
                   "artifacts, whose CPU kernels serve the CPU EP, x86-64-v3, or with --host "
                   "aarch64 a generic ARMv8.2-A)")
    c.add_argument("--mattr", help="extra LLVM CPU features for the CPU kernels, e.g. "
                   "+dotprod,+fullfp16 (arm) or +avx512f (x86)")
    c.add_argument("--arch", help="cuda: GPU architectures, e.g. sm_80,sm_90 (default; with "
                   "--host aarch64 sm_87 and sm_110 where the toolkit has it); a cubin "
                   "for each plus PTX of the newest")
    c.add_argument("--cuda-version", type=int, choices=[int(v) for v in CudaVersion],
                   help="cuda: build the fatbin with a CUDA 12 or 13 compiler, for drivers of "
                   "that CUDA version (default: the nvcc on PATH); 12 uses FFFC_NVCC_12, a "
                   "CUDA 12 nvcc on PATH, or the PyPI wheels of fffc[cuda12]")
    c.add_argument("--weight-dtype", choices=list(WEIGHT_DTYPES), default="fp32",
                   help="cuda: store the FFN weight matrices in 16 bits (fp16, bf16): half the "
                   "weight bytes, float32 arithmetic; x86/arm: int4 quantizes the float exact "
                   "sites' weights (ONNX Runtime's quantizer, symmetric, block 32: MatMulNBits "
                   "codes) for the int4 kernels; int8 the same with 8-bit codes. The "
                   "artifact is verified against the model "
                   "with rounded weights and its distance from the original reported")
    c.add_argument("--max-sparse-tokens", type=int, metavar="N",
                   help="SparseFFN sites: run fffc's kernels up to N tokens per call and the "
                   "original FFN beyond (default: the crossover, see --crossovers; 0: always "
                   "fffc)")
    c.add_argument("--crossovers", choices=[str(c) for c in (Crossover.MEASURED, Crossover.TABLE)],
                   help="where each site's crossover between its kernel and the original "
                   "subgraph comes from: timed on this machine (the default where the kernels "
                   "run here: x86) or the target's table (FFFC_CROSSOVERS sets the default)")
    c.add_argument("--timings", type=Path, metavar="FILE.json",
                   help="pinned crossover timings: the manifest.json of an earlier compile "
                   "(makes the artifact reproducible) or {site: [{tokens, kernel_ms, "
                   "original_ms}, ...]}")
    c.add_argument("--sparse-prefill", action="store_true",
                   help="calibrated modes: keep the thresholds or predictors at every token "
                   "count (the masked FFN in ONNX Runtime past the crossover) instead of running "
                   "the original FFN for many-token calls")
    c.add_argument("--merged-max-tokens", type=int, metavar="N",
                   help="structured FFNs: use the pre-merged dense weights up to N tokens per "
                   "call (default: measured at compile time on x86, 0 elsewhere; 0: never; "
                   "pinning it makes the artifact reproducible)")
    c.add_argument("--calibration", type=Path, metavar="CALIB.json",
                   help="statistics of `fffc calibrate`: GELU/SiLU sites get TEAL thresholds "
                   "(mode teal) under --budget")
    c.add_argument("--budget", metavar="KIND=V",
                   help="with --calibration: sparsity=S (skip S of the FFN weight bytes, "
                   "greedy per site), error=E (the most skipping whose relative output error "
                   "stays <= E on held-out feeds) or uniform=S (one calibrated level "
                   "everywhere), cats=S, predictor (default: the allocation stored by fffc "
                   "calibrate --budget)")
    c.add_argument("--data", type=Path, help="feeds (.npz of arrays named like the model's "
                   "inputs, or a folder of them): verification runs on them besides made-up "
                   "ones (a decoder's decode calls continue the last one's cache); with "
                   "--budget, the allocation measures errors on them (default: 8 made-up feeds)")
    c.add_argument("--rtol", type=float, default=RTOL,
                   help="relative tolerance of every verification (default %(default)g)")
    c.add_argument("--glibc", metavar="X.Y",
                   help="the oldest glibc the shim must load on, e.g. 2.28 (RHEL 8, Debian 10, "
                        "Ubuntu 20.04): built with zig (pip install 'fffc[glibc]'); without "
                        "zig, refused if g++'s shim needs a newer one (default: g++'s, reported "
                        "as requires.glibc)")
    c.add_argument("--sites", nargs="*", help="only lower these sites (names or node names)")
    c.add_argument("--dump", help="write every stage's artifact into this directory")
    c.add_argument("--max-memory", metavar="SIZE", help=MAX_MEMORY_HELP.format(
        stages="loading or verification"))
    c.set_defaults(func=cmd_compile)

    i = sub.add_parser("inspect", help="list FFN sites and unmatched FFN-like regions")
    i.add_argument("model", type=Path)
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_inspect)

    k = sub.add_parser("calibrate", help="activation statistics of every FFN site over "
                       "your inputs (threshold / predictor modes)")
    k.add_argument("model", type=Path, help="an .onnx file, or an ONNX Runtime GenAI folder "
                   "(its decoder is calibrated)")
    k.add_argument("--data", type=Path, help="an .npz of input arrays (one feed), or a folder "
                   "of them")
    k.add_argument("--synthetic", type=int, default=0, metavar="N",
                   help="instead of --data: N generated feeds (random floats, token ids)")
    k.add_argument("--prompts", type=Path, metavar="FILE",
                   help="instead of --data: a decoder with a KV cache (an .onnx or a GenAI "
                   "folder) generates greedily after each prompt of FILE (one per line, "
                   "tokenized with the model's tokenizer.json); its FFN inputs at decode — "
                   "one generated token at a time — make the statistics (see --rows)")
    k.add_argument("--generate", type=int, default=32, metavar="N",
                   help="with --prompts: new tokens per prompt (default %(default)s; fewer "
                   "where the model generates an end-of-sequence token)")
    k.add_argument("--tokenizer", type=Path, metavar="PATH",
                   help="with --prompts: a Hugging Face tokenizer.json, or a folder holding "
                   "one (default: the one next to the model)")
    k.add_argument("--rows", choices=("decode", "prefill", "all"), default="decode",
                   help="with --prompts: the calls whose FFN inputs make the statistics: the "
                   "decode steps (default), the prompts' prefill, or all; CALIB.json counts "
                   "both")
    k.add_argument("--seq", type=int, default=128, help="sequence length of synthetic feeds")
    k.add_argument("--samples", type=int, default=4096,
                   help="rows of each site's input kept for predictor training")
    k.add_argument("--predictor-rank", type=int, default=0, metavar="R",
                   help="also train a rank-R predictor of the active neurons per site")
    k.add_argument("--predictor-sparsity", type=float, default=0.9, metavar="S",
                   help="the predictor's labels: neurons outside the S-quantile of |a|")
    k.add_argument("--center", choices=("mode", "median", "none"), default="mode",
                   help="thresholds of |v - its channel's center| (an entry near it becomes "
                   "the center; a second pass over the feeds): mode = the mean of the "
                   "channel's densest window (default), median; or of |v| (none: TEAL's zero "
                   "center)")
    k.add_argument("--token-mask", default="attention_mask", metavar="INPUT",
                   help="the input marking real tokens (1) and padding (0): padding rows are "
                   "left out of the statistics (default attention_mask, where a feed has it; "
                   "none: every row counts)")
    k.add_argument("--levels", metavar="S,S,...",
                   help="the target sparsities thresholds are written for: what --budget "
                   "uniform=S and the greedy search can pick (default every 0.05 from 0.05 "
                   "to 0.95, TEAL's greedy step)")
    k.add_argument("--budget", metavar="KIND=V",
                   help="also choose the modes and levels per site now, on the same feeds "
                   "(as fffc compile --budget: sparsity=S, error=E, uniform=S, cats=S or "
                   "predictor), stored in CALIB.json: fffc compile --calibration without "
                   "--budget applies them")
    k.add_argument("--max-memory", metavar="SIZE", help=MAX_MEMORY_HELP.format(
        stages="loading or calibration"))
    k.add_argument("-o", "--output", type=Path, help="default MODEL.calib.json (+ .samples.npz)")
    k.add_argument("--force", action="store_true", help="overwrite existing outputs")
    k.set_defaults(func=cmd_calibrate)

    b = sub.add_parser("bench", help="time an artifact against its original model (a "
                       "compiled GenAI folder: decode tokens/s in onnxruntime-genai)")
    b.add_argument("artifact", type=Path)
    b.add_argument("--tokens", help="token counts per call (default 1,8,128)")
    b.add_argument("--prompt", type=int, metavar="N",
                   help="GenAI folder: prompt length in tokens (default 128)")
    b.add_argument("--generate", type=int, metavar="N",
                   help="GenAI folder: tokens generated per run, greedy (default 128)")
    b.add_argument("--threads", type=int, default=2,
                   help="intra-op threads of both sessions (default %(default)s)")
    b.add_argument("--repeat", type=int, help="timed calls per token count (default 30), or "
                   "generation runs per model for a GenAI folder (default 5)")
    b.add_argument("--original", type=Path, help="original model (or GenAI folder), if it "
                   "moved")
    b.add_argument("--json", action="store_true")
    b.add_argument("--plot", type=Path, metavar="PNG",
                   help="draw time per token vs token count (needs matplotlib: fffc[plot])")
    b.set_defaults(func=cmd_bench)

    v = sub.add_parser("verify", help="check an artifact's files against its manifest (paths "
                       "inside the folder, every file's sha256) and that ONNX Runtime opens it")
    v.add_argument("artifact", type=Path)
    v.add_argument("--no-load", action="store_true",
                   help="check the files only; do not load the shim and model in ONNX Runtime")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_verify)

    t = sub.add_parser("triton-repo", help="write a Triton Inference Server model repository "
                       "(ONNX Runtime backend) serving an artifact")
    t.add_argument("artifact", type=Path)
    t.add_argument("-o", "--output", type=Path, required=True, metavar="REPO",
                   help="the model repository: REPO/NAME/config.pbtxt and REPO/NAME/1/ (the "
                   "model, its external data, the shim); other models in REPO are left alone")
    t.add_argument("--name", help="the model's name in Triton (default: the artifact folder's "
                   "name up to its first dot)")
    t.add_argument("--instances", type=int, default=1, metavar="N",
                   help="ONNX Runtime sessions serving the model (instance_group count; "
                   "default %(default)s); on the GPU for a --target cuda artifact, else the CPU")
    t.add_argument("--max-batch", type=int, default=0, metavar="N",
                   help="let Triton's dynamic batcher merge up to N requests along the first "
                   "dimension (default 0: off, so each request keeps the token count it was "
                   "sent with, which is what fffc's few-token kernels serve)")
    t.add_argument("--mount", metavar="DIR",
                   help="absolute path of REPO inside the server, for the shim's path in the "
                   "config (default: REPO's absolute path here; /mnt/models under KServe)")
    t.add_argument("--force", action="store_true", help="replace an existing REPO/NAME")
    t.set_defaults(func=cmd_triton_repo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        try:
            return args.func(args)
        except ArtifactError as e:  # an artifact a command opens (bench, verify)
            raise ArtifactCheckError(str(e)) from e
    except FffcError as e:
        if config.debug():
            raise
        err_console.print(f"fffc: error: {e.one_line()}", markup=False, highlight=False)
        return e.exit_code
    except KeyboardInterrupt:
        err_console.print("fffc: interrupted")
        return 130
    except Exception as e:  # last resort: one line, not a traceback dump
        if config.debug():
            raise
        err_console.print(f"fffc: internal error: {type(e).__name__}: {e} "
                          "(set FFFC_DEBUG=1 for the traceback)", markup=False, highlight=False)
        return 1


if __name__ == "__main__":
    sys.exit(main())
