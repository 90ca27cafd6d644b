"""RoutedFFN's CUDA route and combine kernels, run by the CPU emulator, vs the NumPy reference.

nvcc builds the kernels (the fatbin must compile); the emulator runs the emitted source.
"int" data (small integers) makes every score exact in any summation order: many exact
ties, zeros and duplicate rows, so the selection is compared exactly with ONNX TopK's rule.
"""

from __future__ import annotations

import numpy as np
import pytest

from fffc.codegen.cuda_build import CudaVariant, build_cuda_library
from fffc.codegen.kernels.routed_ffn_cuda import LAUNCH_PARAMS
from fffc.codegen.schedules import MAX_TOKENS, family
from fffc.contract.kernels import CombineSpec, KernelSpec, RouteSpec
from fffc.contract.tolerances import RTOL
from fffc.verify.cuda_emu import Emulator
from fffc.verify.reference import layer_norm, route, routed_ffn, sparse_ffn

EPS = 1e-5
TOPK1 = RouteSpec(40, "topk", 1, "raw", False)
TOPK2 = RouteSpec(33, "topk", 2, "sigmoid", True)
TOPK3 = RouteSpec(40, "topk", 3, "raw", True)
TOPKV = RouteSpec(40, "topk", None, "sigmoid", True)  # k per call (KN)
TOPK_LN = RouteSpec(33, "topk", 2, "raw", True, ln_epsilon=EPS)
THR = RouteSpec(40, "threshold", 0, "raw", True)
THR_AUX = RouteSpec(33, "threshold", 0, "sigmoid", True, selection_score=True,
                    selection_bias=True)
THR_AUX_LN = RouteSpec(40, "threshold", 0, "raw", False, selection_score=True, ln_epsilon=EPS)
COMBINE = {d: CombineSpec(d) for d in (33, 40)}
ROUTES = [TOPK1, TOPK2, TOPK3, TOPKV, TOPK_LN, THR, THR_AUX, THR_AUX_LN]


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return build_cuda_library([*ROUTES, *COMBINE.values()], family("cuda"),
                              tmp_path_factory.mktemp("routed"))


@pytest.fixture(scope="module")
def emulator(library):
    return Emulator(library.source_path.read_text(), library.variants)


def _variant(library, spec: KernelSpec) -> CudaVariant:
    (v,) = [v for v in library.variants if v.spec == spec]
    return v


def _data(spec: RouteSpec, b: int, s: int, kind: str, seed: int) -> dict[str, np.ndarray]:
    """X [B, S, d] and every route weight (a spec reads those in its arg_names)."""
    rng = np.random.default_rng(seed)
    d = spec.d_in
    if kind == "int":
        def draw(*shape):
            return rng.integers(-2, 3, shape).astype(np.float32)
    else:
        def draw(*shape):
            return rng.standard_normal(shape).astype(np.float32)
    bias = 1.0 if kind == "int" else 0.5  # int: scores of exactly 0 occur (not selected)
    return {"X": draw(b, s, d), "WR": draw(d), "BR": np.array([bias], np.float32),
         "WA": draw(d), "BA": np.array([-bias], np.float32),
         "LS": rng.standard_normal(d).astype(np.float32) * 0.5 + 1,
         "LB": rng.standard_normal(d).astype(np.float32)}


def run_route(emulator, library, spec: RouteSpec, w: dict[str, np.ndarray],
              k: int | None = None) -> tuple[np.ndarray, np.ndarray, int, np.ndarray, np.ndarray]:
    """IDX, WT, CNT, XS [N, d], POS of the route launches (``k``: a per-call k, KN)."""
    b, s, d = w["X"].shape
    n = b * s
    names = {"WR", "BR", "WA", "BA", "LS", "LB"} & set(spec.arg_names())
    ins = {"X": w["X"].reshape(n, d), **{k_: w[k_] for k_ in names}}
    out = emulator.run(_variant(library, spec), ins, any_tokens=True,
                       scalars={"S": s, "KN": -1 if k is None else k},
                       outputs={"IDX": n, "WT": n, "CNT": 1, "XS": n * d, "POS": n})
    return out["IDX"], out["WT"], int(out["CNT"][0]), out["XS"].reshape(n, d), out["POS"]


def reference_route(spec: RouteSpec, w: dict[str, np.ndarray],
                    k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    kk = k if spec.per_call_k else spec.k
    return route(w["X"], w["WR"], w["BR"] if spec.router_bias else None,
                 selection=spec.selection, k=kk or 0, router=spec.router,
                 wa=w["WA"] if spec.selection_score else None,
                 ba=w["BA"] if spec.selection_bias else None)


def check_route(emulator, library, spec: RouteSpec, w: dict[str, np.ndarray],
                k: int | None = None, msg: str = "") -> tuple:
    """Every route output vs the reference; returns (IDX, WT, CNT, XS, POS)."""
    idx, wt, cnt, xs, pos = run_route(emulator, library, spec, w, k)
    ref_idx, ref_w = reference_route(spec, w, k)
    flat = w["X"].reshape(-1, w["X"].shape[-1])
    assert cnt == len(ref_idx), msg
    np.testing.assert_array_equal(idx[:cnt], ref_idx, err_msg=msg)
    # scores: float32 in another summation order than NumPy's (sigmoid's slope is ≤ 1/4)
    bound = 4e-6 * (np.abs(flat[ref_idx]) @ np.abs(w["WR"]) + 1)
    assert (np.abs(wt[:cnt] - ref_w) <= bound).all(), msg
    if spec.ln_epsilon is not None:
        want = layer_norm(flat[ref_idx], w["LS"], w["LB"], EPS)
        np.testing.assert_allclose(xs[:cnt], want, rtol=1e-4, atol=1e-4, err_msg=msg)
    else:
        np.testing.assert_array_equal(xs[:cnt], flat[ref_idx], err_msg=msg)
    want_pos = np.full(flat.shape[0], -1, np.int32)
    want_pos[ref_idx] = np.arange(len(ref_idx))
    np.testing.assert_array_equal(pos, want_pos, err_msg=msg)
    return idx, wt, cnt, xs, pos


@pytest.mark.parametrize("kind", ["int", "float"])
@pytest.mark.parametrize("spec", [TOPK1, TOPK2, TOPK3], ids=["k1", "k2_sigmoid", "k3"])
def test_topk_matches_reference(library, emulator, spec: RouteSpec, kind: str) -> None:
    k = spec.k
    for seed, (b, s) in enumerate([(1, k), (1, 7), (3, 5), (2, 37), (5, 3)]):
        if s < k:
            continue
        w = _data(spec, b, s, kind, seed)
        check_route(emulator, library, spec, w, msg=f"{kind} B={b} S={s}")


def test_topk_ties_take_the_lower_index(library, emulator) -> None:
    """Duplicate rows tie exactly; ONNX TopK keeps the earlier ones, in ascending order."""
    w = _data(TOPK3, 2, 9, "int", 7)
    top = np.where(w["WR"] >= 0, 1, -1).astype(np.float32)  # the largest score there is
    w["X"][0] = -top
    w["X"][0, [2, 4, 5, 8]] = top  # four tie for three places: 2, 4 and 5 win
    w["X"][1] = w["X"][1, 3]  # every token of sequence 1 ties: the first three win
    idx, _, cnt, _, _ = check_route(emulator, library, TOPK3, w)
    assert cnt == 6 and list(idx[:cnt]) == [2, 4, 5, 9, 10, 11]


def test_topk_k_per_call(library, emulator) -> None:
    """KN: any k ≤ S, including k = S (every token); S < k selects nothing (CNT 0)."""
    for k, (b, s) in [(1, (2, 6)), (4, (3, 6)), (6, (2, 6)), (1, (3, 1))]:
        w = _data(TOPKV, b, s, "int", k)
        check_route(emulator, library, TOPKV, w, k=k, msg=f"k={k} B={b} S={s}")
    w = _data(TOPKV, 2, 3, "int", 0)
    _, _, cnt, _, pos = run_route(emulator, library, TOPKV, w, k=4)
    assert cnt == 0 and (pos == -1).all()


@pytest.mark.parametrize("kind", ["int", "float"])
@pytest.mark.parametrize("spec", [THR, THR_AUX], ids=["raw", "aux_sigmoid"])
def test_threshold_matches_reference(library, emulator, spec: RouteSpec, kind: str) -> None:
    for seed, (b, s) in enumerate([(1, 1), (1, 9), (4, 5), (2, 40)]):
        w = _data(spec, b, s, kind, seed + 10)
        check_route(emulator, library, spec, w, msg=f"{kind} B={b} S={s}")


def test_threshold_over_several_scan_chunks(library, emulator) -> None:
    """More tokens than one chunk of the single-block scan (2048): offsets carry over."""
    w = _data(THR, 3, 1000, "int", 3)
    _, _, cnt, _, _ = check_route(emulator, library, THR, w)
    assert 0 < cnt < 3000


def test_layer_norm_gather(library, emulator) -> None:
    for spec, (b, s) in [(TOPK_LN, (3, 7)), (THR_AUX_LN, (2, 20)), (THR_AUX_LN, (1, 1))]:
        w = _data(spec, b, s, "float", 5)
        check_route(emulator, library, spec, w, msg=f"{spec.row.mode} B={b} S={s}")


def run_combine(emulator, library, x: np.ndarray, pos: np.ndarray, wt: np.ndarray,
                delta: np.ndarray, coef) -> np.ndarray:
    v = _variant(library, COMBINE[x.shape[1]])
    return emulator.run(v, {"X": x, "POS": pos.astype(np.int32), "WT": wt, "D": delta,
                            "COEF": np.asarray(coef, np.float32)}, any_tokens=True)


def test_combine_matches_the_formula(library, emulator) -> None:
    """Selected rows mix X and D with the router weight; the rest is X bit for bit. Slots
    past CNT hold NaN (D rows, WT): a read of them would show in Y."""
    rng = np.random.default_rng(0)
    for d, n, cnt in [(40, 9, 4), (33, 17, 17), (40, 1, 1), (33, 5, 0)]:
        x = rng.standard_normal((n, d)).astype(np.float32)
        chosen = np.sort(rng.choice(n, cnt, replace=False))
        pos = np.full(n, -1, np.int32)
        pos[chosen] = np.arange(cnt)
        wt = np.full(n, np.nan, np.float32)
        wt[:cnt] = rng.standard_normal(cnt)
        delta = np.full((n, d), np.nan, np.float32)
        delta[:cnt] = rng.standard_normal((cnt, d))
        coef = (0.5, 0.25, -1.0, 2.0)
        y = run_combine(emulator, library, x, pos, wt, delta, coef)
        want = x.astype(np.float64).copy()
        wd = wt[:cnt, None].astype(np.float64)
        want[chosen] = ((coef[0] + coef[1] * wd) * x[chosen] + (coef[2] + coef[3] * wd)
                        * delta[:cnt])
        assert np.isfinite(y).all()
        rest = np.setdiff1d(np.arange(n), chosen)
        np.testing.assert_array_equal(y[rest], x[rest])
        if cnt:
            err = np.abs(y - want).max() / np.abs(want).max()
            assert err < RTOL, (d, n, cnt, err)


@pytest.mark.parametrize("spec", [TOPK2, THR_AUX, THR_AUX_LN], ids=["topk", "aux", "aux_ln"])
def test_route_ffn_combine_matches_routed_ffn(library, emulator, spec: RouteSpec) -> None:
    """route → the FFN on XS[:CNT] (NumPy, standing in for the FFN kernels) → combine equals
    ``fffc.verify.reference.routed_ffn``."""
    d, f = spec.d_in, 24
    rng = np.random.default_rng(4)
    w1 = (rng.standard_normal((d, f)) / np.sqrt(d)).astype(np.float32)
    w2 = (rng.standard_normal((f, d)) / np.sqrt(f)).astype(np.float32)
    b1, b2 = rng.standard_normal(f).astype(np.float32), rng.standard_normal(d).astype(np.float32)
    coef = (1.0, 0.5, 0.0, 1.0)
    for b, s in [(2, 11), (1, 3 if spec.topk else 1)]:
        w = _data(spec, b, s, "float", b)
        _, wt, cnt, xs, pos = run_route(emulator, library, spec, w)
        delta = np.full_like(xs, np.nan)
        delta[:cnt] = sparse_ffn(xs[:cnt], w1, b1, w2, b2, activation_name="gelu")
        y = run_combine(emulator, library, w["X"].reshape(b * s, d), pos, wt, delta, coef)
        want = routed_ffn(w["X"], w["WR"], w["BR"] if spec.router_bias else None, w1, b1, w2,
                          b2, activation_name="gelu", selection=spec.selection,
                          k=spec.k, router=spec.router, x_coef=coef[:2],
                          delta_coef=coef[2:], wa=w["WA"] if spec.selection_score else None,
                          ba=w["BA"] if spec.selection_bias else None,
                          ln=(w["LS"], w["LB"], EPS) if spec.ln_epsilon is not None else None)
        assert cnt == len(reference_route(spec, w)[0])
        err = np.abs(y - want.reshape(b * s, d)).max() / np.abs(want).max()
        assert err < RTOL, (spec.row.mode, b, s, err)


def test_decode_one_token(library, emulator) -> None:
    """N = 1, threshold: selected, then not selected (CNT 0: Y = X exactly)."""
    w = _data(THR, 1, 1, "float", 0)
    d = THR.d_in
    for sign in (1.0, -1.0):
        w["X"] = (np.abs(w["X"]) * np.sign(w["WR"]) * sign).astype(np.float32)
        w["BR"] = np.array([0.0], np.float32)
        _, wt, cnt, _, pos = check_route(emulator, library, THR, w)
        assert cnt == (1 if sign > 0 else 0)
        delta = np.full((1, d), np.nan if not cnt else 1.0, np.float32)
        y = run_combine(emulator, library, w["X"].reshape(1, d), pos, wt, delta,
                        (1.0, 0.0, 1.0, 0.0))
        want = w["X"].reshape(1, d) + (1.0 if cnt else 0.0)
        np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)
        if not cnt:
            np.testing.assert_array_equal(y, w["X"].reshape(1, d))


def test_launch_table(library) -> None:
    """One variant "all" per spec; launches in order; parameters the shim can bind."""
    names = {}
    for v in library.variants:
        assert (v.variant, v.min_tokens, v.max_tokens) == ("all", 1, MAX_TOKENS)
        assert v.symbol == f"fffc_routed_ffn_{v.spec.key}_all"
        allowed = set(v.spec.arg_names()) | {b for b, _ in v.workspace} | set(LAUNCH_PARAMS)
        for ln in v.launches:
            assert set(ln.params) <= allowed | {"N"}, ln
            assert ln.block[0] * ln.block[1] * ln.block[2] == 256
            assert all(g(1) >= 1 for g in ln.grid)
        names[v.spec] = [ln.kernel.split("_all_")[1] for ln in v.launches]
    assert names[TOPK1] == ["score_kernel", "rank_kernel", "scan_kernel", "gather_kernel"]
    assert names[THR] == ["score_kernel", "scan_kernel", "gather_kernel"]
    assert names[COMBINE[40]] == ["combine_kernel"]
    assert dict(_variant(library, THR).workspace) == {"SC": 1, "FL": 1}
    (rank,) = [ln for ln in _variant(library, TOPKV).launches if "rank" in ln.kernel]
    assert {"S", "KN"} <= set(rank.params)
