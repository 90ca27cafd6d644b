"""Check 3, after codegen: every kernel alone equals its site's captured output, and the
artifact with the shim (compiled kernels) and without it (fallback functions) equals the
reference model. CUDA kernels run in the CPU emulator of their emitted source."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import onnx

from ..contract.dispatch import TokenDispatch
from ..contract.errors import VerificationError
from ..contract.kinds import Decision
from ..contract.modes import MODES, Behaviour, kernel_spec, kernel_specs, mode, register
from ..contract.ops import capacity_k
from ..contract.sites import Site
from .capture import Probes
from .compare import Comparison, compare, compare_runs, run, session, worse
from .cuda_emu import Emulator
from .in_place import all_nodes, quantizes_activations, run_in_place
from .sites import Inputs, site_slack

STACKED_PROBE_TOKENS = 301  # structured kernels' check: past every variant's first bound


def single_node_model(model: onnx.ModelProto, node_name: str) -> onnx.ModelProto:
    """The named ``ai.fffc`` node alone, with its initializers, input ``X``, output ``Y``.

    Used to compare one compiled kernel with the activations captured for its site; the
    model carries no fallback functions, so only a registered kernel can run it.
    """
    node = next(n for n in all_nodes(model.graph) if n.name == node_name)
    inits = {i.name: i for i in model.graph.initializer}
    new = onnx.NodeProto()
    new.CopyFrom(node)
    new.input[0] = "X"
    del new.output[:]
    new.output.append("Y")
    graph = onnx.helper.make_graph(
        [new], f"check_{node_name}",
        [onnx.helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, None)],
        [onnx.helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, None)],
        [inits[n] for n in node.input[1:] if n],
    )
    # no fallback functions: a kernel the shim does not provide must fail here, not be
    # replaced silently by the function body
    out = onnx.helper.make_model(graph, opset_imports=list(model.opset_import))
    out.ir_version = model.ir_version
    return out


def without_merged_path(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a single-node StructuredFFN model whose node never takes the pre-merged
    path (``merged_max_tokens`` = 0), to check its structured kernels on the same probes."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for attr in out.graph.node[0].attribute:
        if attr.name == "merged_max_tokens":
            attr.i = 0
    return out


def _kernel_sites(sites: list[Site]) -> list[Site]:
    return [s for s in sites if mode(s.decision).kernels]


def check_artifact(sites: list[Site], final_proto: onnx.ModelProto, model_file: Path,
                   shim: Path | None, feeds, want, captured: dict[str, Probes],
                   inputs: Callable[[Site], Inputs], tokens: Mapping[str, TokenDispatch],
                   rtol: float, path: Path) -> tuple[dict, dict[str, str]]:
    """Kernels alone vs captured site outputs; the whole model without the shim vs ``want``,
    with it vs ``want`` or, where sites are masked or the model quantizes activations, each
    site in place (``in_place``).
    Returns (report, {site: why} of the sites whose kernels failed)."""
    failed: dict[str, str] = {}
    report: dict = {"rtol": rtol}
    fallback = compare_runs(run(session(str(model_file)), feeds), want, rtol)
    report["model_without_shim"] = fallback.__dict__
    if shim is None:
        return report, failed
    kernels = {}
    for site in _kernel_sites(sites):
        xs, ys = captured[site.name]
        weights = inputs(site)
        single = single_node_model(final_proto, site.name)
        paths = [single]
        if mode(site.decision).merged_path:
            # every kernel of the site: the structured path too where probes are within the
            # merged path's range, and the many-token variants (an FFN is per token: the
            # probes' tokens stacked are a valid probe with the stacked outputs)
            paths.append(without_merged_path(single))
            xs, ys = stacked(xs, ys, STACKED_PROBE_TOKENS)
        c = Comparison(0.0, 0.0, True)
        try:
            sessions = [session(m, register=str(shim)) for m in paths]
        except Exception as e:  # ORT raises one type for everything: keep its first line
            failed[site.name] = f"kernel could not be loaded: {str(e).splitlines()[0][:200]}"
            continue
        for sess in sessions:
            for x, y in zip(xs, ys, strict=True):
                # a 16-bit model's x is widened (exactly) before its node, as in the model
                c = worse(c, compare(sess.run(None, {"X": x.astype(np.float32)})[0], y, rtol,
                                     site_slack(site, x, weights)))
        kernels[site.name] = c.__dict__
        site.max_abs_err = max(site.max_abs_err or 0.0, c.max_abs)
        site.max_rel_err = max(site.max_rel_err or 0.0, c.max_rel)
        if not c.ok:
            failed[site.name] = f"rel err {c.max_rel:.2e} > {rtol:g}"
    report["kernels"] = kernels
    if any(mode(s.decision).masked for s in sites) or quantizes_activations(final_proto):
        # a discontinuous artifact's outputs may leave the reference while every site
        # computes its function (``in_place``): the sites are checked in place, the outputs
        # reported
        checked = run_in_place(_kernel_sites(sites), model_file, shim, feeds, inputs, tokens,
                               rtol)
        outputs = compare_runs(checked.outputs, want, rtol)
        report["model_with_shim_outputs"] = outputs.__dict__
        report["sites_in_place"] = checked.report()
        for name, c in checked.sites.items():
            if not c.ok and name not in failed:
                failed[name] = (f"in the compiled model, on the input it receives there: rel err "
                                f"{c.max_rel:.2e} > {rtol:g}")
        with_shim = checked.worst()
        with_shim.ok = checked.ok or outputs.ok
        report["model_with_shim"] = with_shim.__dict__ | {"basis": "sites in place"}
    else:
        with_shim = compare_runs(run(session(str(model_file), register=str(shim)), feeds), want,
                                 rtol)
        report["model_with_shim"] = with_shim.__dict__
    if not with_shim.ok and not failed:
        raise VerificationError(f"compiled model differs from the original (rel err "
                                f"{with_shim.max_rel:.2e}) although every kernel matched",
                                path=path)
    if not fallback.ok:
        raise VerificationError(f"fallback functions differ from the original (rel err "
                                f"{fallback.max_rel:.2e})", path=path)
    return report, failed


def deviation(model_file: Path, shim: Path | None, feeds, want, rtol: float) -> dict:
    """The compiled model vs the original: what masked modes and rounded weights cost."""
    got = run(session(str(model_file), register=str(shim) if shim else None), feeds)
    c = compare_runs(got, want, rtol)
    return {"max_abs": c.max_abs, "max_rel": c.max_rel}


def stacked(xs: list[np.ndarray], ys: list[np.ndarray],
            tokens: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The probes plus one of at least ``tokens`` tokens: every probe's tokens, repeated."""
    x2 = np.concatenate([x.reshape(-1, x.shape[-1]) for x in xs])
    y2 = np.concatenate([y.reshape(-1, y.shape[-1]) for y in ys])
    reps = -(-tokens // len(x2))
    return [*xs, np.tile(x2, (reps, 1))], [*ys, np.tile(y2, (reps, 1))]


def check_cuda(sites: list[Site], cuda, captured: dict[str, Probes],
               inputs: Callable[[Site], Inputs], rtol: float, failed: dict[str, str],
               weight_dtype: str = "float32") -> dict:
    """Every CUDA variant of every site with kernels (``cuda``: the library's CUDA part), run
    by the CPU emulator of the generated CUDA source, against the captured site outputs."""
    emu = Emulator(cuda.source_path.read_text(), cuda.variants)
    out: dict = {"checked_on": "CPU emulation of the emitted CUDA source (one host thread per "
                               "CUDA thread, barriers for __syncthreads)"}
    for site in _kernel_sites(sites):
        check = mode(site.decision).behaviour(Behaviour.EMULATE)
        out[site.name] = check(emu, cuda.variants, site, inputs(site), captured[site.name],
                               rtol, failed, weight_dtype)
    return out


def _note(site: Site, c: Comparison) -> None:
    site.max_abs_err = max(site.max_abs_err or 0.0, c.max_abs)
    site.max_rel_err = max(site.max_rel_err or 0.0, c.max_rel)


def _emulate_one(emu, variants, site: Site, weights: Inputs, captured: Probes, rtol: float,
                 failed: dict[str, str], weight_dtype: str) -> dict:
    """A site whose op is one kernel: every CUDA variant on the stacked probes (also below
    its token range)."""
    spec = kernel_spec(site)  # --weight-dtype's rounding, or the site's own 16-bit weights
    spec = spec.stored_as(weight_dtype) if site.float32 else spec
    xs, ys = captured
    x = np.concatenate([v.reshape(-1, spec.d_in) for v in xs]).astype(np.float32)
    y = np.concatenate([v.reshape(-1, spec.d_out) for v in ys])
    results = {}
    for v in variants:
        if v.spec != spec or v.variant.startswith("counted_"):
            continue
        n = min(v.max_tokens, len(x))
        got = emu.run(v, {"X": x[:n], **weights}, any_tokens=True)
        c = compare_runs([[got]], [[y[:n]]], rtol)
        results[v.variant] = c.__dict__ | {"tokens": n}
        _note(site, c)
        if not c.ok:
            failed[site.name] = f"CUDA {v.variant}: rel err {c.max_rel:.2e} > {rtol:g}"
    if not results:  # never an unchecked kernel
        failed[site.name] = "no CUDA variant of this site was found to check"
    return results


for _d in MODES:
    if MODES[_d].kernels and _d is not Decision.ROUTED:
        register(_d, Behaviour.EMULATE)(_emulate_one)


@register(Decision.ROUTED, Behaviour.EMULATE)
def _emulate_routed(emu, variants, site: Site, weights: Inputs, captured: Probes, rtol: float,
                    failed: dict[str, str], weight_dtype: str) -> dict:
    """A RoutedFFN site's CUDA launches as the shim chains them (route → the counted FFN
    variant for the selected rows → combine), per captured probe, against its output."""
    r = site.routing
    route, ffn_spec, combine = kernel_specs(site)
    ffn_spec = ffn_spec.stored_as(weight_dtype)
    by_spec: dict = {}
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
        c = compare_runs([[out]], [[y.reshape(n, d)]], rtol)
        results[f"B{b}xS{s}"] = c.__dict__ | {"tokens": n, "ffn_variant": used}
        _note(site, c)
        if not c.ok:
            failed[site.name] = f"CUDA routing chain (B={b}, S={s}): rel err {c.max_rel:.2e}"
    return results
