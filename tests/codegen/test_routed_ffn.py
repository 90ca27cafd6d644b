"""RoutedFFN's route and combine kernels vs the NumPy reference (and end to end)."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from fffc.codegen import _tvm
from fffc.codegen.kernels.routed_ffn import combine_primfunc, route_primfunc, routed_variants
from fffc.codegen.schedules import MAX_TOKENS
from fffc.contract.errors import CodegenError
from fffc.contract.kernels import CombineSpec, RouteSpec, SparseSpec
from fffc.verify.reference import route, routed_ffn, sparse_ffn

D = 37  # two 16-lane pieces and a 5-wide tail


@functools.cache
def _compiled(spec: RouteSpec | CombineSpec):
    make = combine_primfunc if isinstance(spec, CombineSpec) else route_primfunc
    ex = _tvm.compile_module({"k": make(spec, "k")},
                             {"kind": "llvm", "mcpu": _tvm.host_cpu()})
    return ex["k"]


def run_route(spec: RouteSpec, x: np.ndarray, wr: np.ndarray, br: np.ndarray | None,
              kn: int | None = None):
    """(IDX[:CNT], WT[:CNT], CNT, XS[:CNT]) of the route kernel (``kn``: a "kvar" spec's
    per-call k)."""
    b, s, d = x.shape
    outs = [_tvm.empty((b * s,), "int32"), _tvm.empty((b * s,)), _tvm.empty((1,), "int32"),
            _tvm.empty((b * s, d))]
    ins = [x, wr, *([br] if spec.router_bias else []),
           *([np.array([kn], np.int32)] if kn is not None else [])]
    _compiled(spec)(*[_tvm.tensor(a) for a in ins], *outs)
    cnt = int(outs[2].numpy()[0])
    return outs[0].numpy()[:cnt], outs[1].numpy()[:cnt], cnt, outs[3].numpy()[:cnt]


def check_route(spec: RouteSpec, x: np.ndarray, wr: np.ndarray, br: np.ndarray | None,
                msg: str = "") -> int:
    ref_idx, ref_w = route(x, wr, br if spec.router_bias else None, selection=spec.selection,
                           k=spec.k, router=spec.router)
    idx, wt, cnt, xs = run_route(spec, x, wr, br)
    assert cnt == len(ref_idx), msg
    np.testing.assert_array_equal(idx, ref_idx, err_msg=msg)
    np.testing.assert_allclose(wt, ref_w, rtol=1e-5, atol=1e-6, err_msg=msg)
    np.testing.assert_array_equal(xs, x.reshape(-1, x.shape[-1])[ref_idx], err_msg=msg)
    return cnt


def data(b: int, s: int, d: int, kind: str, seed: int):
    """X, WR, BR. "int": small integers, so every score is exact in any summation order
    (many exact ties, zeros included); "float": normal values (distinct scores)."""
    rng = np.random.default_rng(seed)
    if kind == "int":
        x = rng.integers(-2, 3, (b, s, d)).astype(np.float32)
        wr = rng.integers(-2, 3, d).astype(np.float32)
        return x, wr, np.array([0.5], np.float32)
    x = rng.standard_normal((b, s, d)).astype(np.float32)
    wr = rng.standard_normal(d).astype(np.float32)
    return x, wr, np.array([0.3], np.float32)


@pytest.mark.parametrize("kind", ["float", "int"])
@pytest.mark.parametrize("router", ["raw", "sigmoid"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("k", [1, 3, "S"])
def test_topk_matches_reference(k, bias: bool, router: str, kind: str) -> None:
    for b in (1, 3):
        for s in (1, 7, 64):
            kk = s if k == "S" else k
            if kk > s:
                continue
            spec = RouteSpec(D, "topk", kk, router, bias)
            x, wr, br = data(b, s, D, kind, seed=b * 100 + s)
            cnt = check_route(spec, x, wr, br, f"B={b} S={s} k={kk}")
            assert cnt == b * kk


def test_topk_ties_lower_index_wins() -> None:
    d = 16  # no tail: the whole dot product in one vector piece
    spec = RouteSpec(d, "topk", 3, "raw", False)
    rng = np.random.default_rng(5)
    base = rng.standard_normal((4, d)).astype(np.float32)
    # sequence 0: every token equal -> the first k; sequence 1: duplicates of the best
    # rows interleaved; sequence 2: the k-th place shared by three equal tokens
    seq0 = np.repeat(base[:1], 9, axis=0)
    seq1 = base[[2, 0, 1, 0, 3, 1, 0, 2, 3]]
    wr = rng.standard_normal(d).astype(np.float32)
    order = np.argsort(-(base @ wr))  # best .. worst of the four rows
    seq2 = base[[order[3], order[1], order[0], order[1], order[2], order[1], order[3],
                 order[0], order[2]]]
    x = np.stack([seq0, seq1, seq2])
    idx, _, cnt, _ = run_route(spec, x, wr, None)
    assert cnt == 9
    assert list(idx[:3]) == [0, 1, 2]
    best = [t for t in range(9) if (seq1[t] == base[order[0]]).all()]
    second = [t for t in range(9) if (seq1[t] == base[order[1]]).all()]
    assert list(idx[3:6]) == sorted([9 + t for t in (best + second)[:3]])
    # seq2: two of order[0] (t=2, 7) then the first of the three order[1] (t=1)
    assert list(idx[6:]) == [18 + 1, 18 + 2, 18 + 7]
    check_route(spec, x, wr, None)
    # all scores tied at a large S: the selection is the first k of each sequence
    spec64 = RouteSpec(d, "topk", 64, "raw", True)
    x = np.repeat(base[None, :1], 2 * 1000, axis=1).reshape(2, 1000, d)
    idx, _, cnt, _ = run_route(spec64, x, wr, np.array([-1.0], np.float32))
    assert cnt == 128 and list(idx) == [*range(64), *range(1000, 1064)]


def test_topk_longer_sequences() -> None:
    """Radix select over many distinct and tied scores (S in the thousands)."""
    spec = RouteSpec(D, "topk", 50, "sigmoid", True)
    for kind in ("float", "int"):
        x, wr, br = data(2, 3000, D, kind, seed=7)
        check_route(spec, x, wr, br, kind)


def test_topk_more_than_s_selects_nothing() -> None:
    """S < k breaks the shim's contract: the kernel reports no rows (no stray writes)."""
    spec = RouteSpec(D, "topk", 5, "raw", False)
    x, wr, _ = data(2, 3, D, "float", seed=1)
    assert run_route(spec, x, wr, None)[2] == 0


@pytest.mark.parametrize("router", ["raw", "sigmoid"])
@pytest.mark.parametrize("bias", [False, True])
def test_threshold_matches_reference(bias: bool, router: str) -> None:
    spec = RouteSpec(D, "threshold", 0, router, bias)
    br = np.array([0.5], np.float32)
    for s in (1, 7, 64):
        x, wr, _ = data(4, s, D, "int", seed=s)
        wr = np.abs(wr) + 1  # all positive: sign(score) = sign of the row's sum
        x[0] = -np.abs(x[0]) - 1  # nothing selected
        x[1] = np.abs(x[1]) + 1  # everything selected
        cnt = check_route(spec, x, wr, br, f"S={s}")
        assert s <= cnt <= 3 * s
        if s >= 7:  # all-zero tokens: score exactly 0 (not selected: s > 0 is strict) or BR
            x[3, ::2] = 0
            cnt0 = check_route(spec, x, wr, br, f"S={s} zeros")
            assert cnt0 >= cnt if bias else cnt0 <= cnt
        xf, wrf, brf = data(2, s, D, "float", seed=s)
        check_route(spec, xf, wrf, brf, f"S={s} float")


def test_threshold_none_anywhere() -> None:
    spec = RouteSpec(D, "threshold", 0, "raw", False)
    x, wr, _ = data(3, 5, D, "int", seed=3)
    x = -np.abs(x) - 1
    assert run_route(spec, x, np.abs(wr) + 1, None)[2] == 0


def run_combine(x, idx, wt, delta, cnt, coef):
    n, d = x.shape
    pad_i = np.zeros(n, np.int32)
    pad_i[:len(idx)] = idx
    pad_w = np.zeros(n, np.float32)
    pad_w[:len(wt)] = wt
    pad_d = np.zeros((n, d), np.float32)
    pad_d[:len(delta)] = delta
    y = _tvm.empty((n, d))
    args = [x, pad_i, pad_w, pad_d, np.array([cnt], np.int32), np.asarray(coef, np.float32)]
    _compiled(CombineSpec(d))(*[_tvm.tensor(a) for a in args], y)
    return y.numpy()


@pytest.mark.parametrize("d", [D, 64, 5])
def test_combine_matches_formula(d: int) -> None:
    rng = np.random.default_rng(d)
    for n in (1, 7, 64):
        for cnt in sorted({0, 1, n // 2, n}):
            x = rng.standard_normal((n, d)).astype(np.float32)
            idx = np.sort(rng.permutation(n)[:cnt]).astype(np.int32)
            wt = rng.standard_normal(cnt).astype(np.float32)
            delta = rng.standard_normal((cnt, d)).astype(np.float32)
            coef = rng.standard_normal(4).astype(np.float32)
            y = run_combine(x, idx, wt, delta, cnt, coef)
            expected = x.astype(np.float64).copy()
            expected[idx] = ((coef[0] + coef[1] * wt)[:, None] * x[idx]
                             + (coef[2] + coef[3] * wt)[:, None] * delta)
            np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6,
                                       err_msg=f"n={n} cnt={cnt}")


@pytest.mark.parametrize("coefs", [((1, 0), (0, 1)), ((1, 1), (0, 1))])
@pytest.mark.parametrize(("selection", "k", "router"),
                         [("topk", 3, "raw"), ("topk", 3, "sigmoid"),
                          ("threshold", 0, "sigmoid")])
def test_end_to_end_matches_routed_ffn(selection: str, k: int, router: str, coefs) -> None:
    d, f, b, s = 32, 64, 2, 9
    rng = np.random.default_rng(11)
    x = rng.standard_normal((b, s, d)).astype(np.float32)
    wr = (rng.standard_normal(d) / np.sqrt(d)).astype(np.float32)
    br = np.array([0.1], np.float32)
    w1 = (rng.standard_normal((d, f)) / np.sqrt(d)).astype(np.float32)
    b1 = (rng.standard_normal(f) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((f, d)) / np.sqrt(f)).astype(np.float32)
    b2 = (rng.standard_normal(d) * 0.1).astype(np.float32)
    spec = RouteSpec(d, selection, k, router, True)
    idx, wt, cnt, xs = run_route(spec, x, wr, br)
    delta = sparse_ffn(xs, w1, b1, w2, b2, activation_name="gelu").astype(np.float32)
    (xa, xb), (da, db) = coefs
    y = run_combine(x.reshape(-1, d), idx, wt, delta, cnt, [xa, xb, da, db])
    expected = routed_ffn(x, wr, br, w1, b1, w2, b2, activation_name="gelu",
                          selection=selection, k=k, router=router, x_coef=coefs[0],
                          delta_coef=coefs[1])
    assert 0 < cnt < b * s
    np.testing.assert_allclose(y.reshape(x.shape), expected, rtol=1e-4, atol=1e-5)


def test_variants_primfuncs_and_errors() -> None:
    route_spec = RouteSpec(D, "topk", 2, "raw", True)
    assert routed_variants(route_spec) == [("all", 1, MAX_TOKENS)]
    assert routed_variants(CombineSpec(D)) == [("all", 1, MAX_TOKENS)]
    route = route_primfunc(route_spec, "sym_route")
    assert route.attrs["global_symbol"] == "sym_route"
    assert [p.name for p in route.params] == ["X", "WR", "BR", "IDX", "WT", "CNT", "XS"]
    assert "T.parallel" in route.script()
    assert "T.vectorized" in combine_primfunc(CombineSpec(D), "sym_combine").script()
    with pytest.raises(CodegenError):
        route_primfunc(CombineSpec(D), "x")
    with pytest.raises(CodegenError):
        combine_primfunc(route_spec, "x")
    with pytest.raises(CodegenError):
        routed_variants(SparseSpec("relu", "none", "exact", 8, 8, 8, 0, 0, 0))
    bad = RouteSpec(D, "topk", 0, "raw", False)
    with pytest.raises(CodegenError):
        route_primfunc(bad, "x")


def test_route_parameters_follow_arg_names() -> None:
    """Every optional input is a parameter exactly when the spec reads it, in its order."""
    for spec in (RouteSpec(D, "topk", None, "sigmoid", False, ln_epsilon=1e-5),
                 RouteSpec(D, "threshold", 0, "raw", True, selection_score=True, selection_bias=True)):
        assert [p.name for p in route_primfunc(spec, "k").params] == spec.arg_names()


def test_route_checks_output_lengths() -> None:
    """IDX/WT/XS are declared [B·S]: a wrong length is refused, not written past."""
    spec = RouteSpec(8, "topk", 1, "raw", False)
    x = np.ones((2, 3, 8), np.float32)
    with pytest.raises(ValueError, match="IDX"):
        _compiled(spec)(_tvm.tensor(x), _tvm.tensor(np.ones(8, np.float32)),
                        _tvm.empty((5,), "int32"), _tvm.empty((6,)), _tvm.empty((1,), "int32"),
                        _tvm.empty((6, 8)))


@pytest.mark.parametrize("aux_bias", [False, True])
@pytest.mark.parametrize("router", ["raw", "sigmoid"])
def test_threshold_with_a_separate_selection_score(aux_bias: bool, router: str) -> None:
    """MoD's causal predictor: tokens are selected by X·WA (+ BA) > 0, weighted by the router
    score X·WR: the kernel reads the two projections for what each decides."""
    spec = RouteSpec(D, "threshold", 0, router, True, selection_score=True, selection_bias=aux_bias)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, 20, D)).astype(np.float32)
    wr, wa = (rng.standard_normal(D).astype(np.float32) for _ in range(2))
    br, ba = np.array([0.3], np.float32), np.array([-0.2], np.float32)
    b, s, d = x.shape
    outs = [_tvm.empty((b * s,), "int32"), _tvm.empty((b * s,)), _tvm.empty((1,), "int32"),
            _tvm.empty((b * s, d))]
    ins = [x, wr, br, wa, *([ba] if aux_bias else [])]
    _compiled(spec)(*[_tvm.tensor(a) for a in ins], *outs)
    cnt = int(outs[2].numpy()[0])
    ref_idx, ref_w = route(x, wr, br, selection="threshold", k=0, router=router, wa=wa,
                           ba=ba if aux_bias else None)
    by_router, _ = route(x, wr, br, selection="threshold", k=0, router=router)
    assert not np.array_equal(ref_idx, by_router)  # the two scores choose differently here
    assert cnt == len(ref_idx)
    np.testing.assert_array_equal(outs[0].numpy()[:cnt], ref_idx)
    np.testing.assert_allclose(outs[1].numpy()[:cnt], ref_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(outs[3].numpy()[:cnt], x.reshape(-1, d)[ref_idx])



def test_route_normalizes_the_gathered_rows_for_a_prenorm_block() -> None:
    """With a LayerNorm epsilon in the spec, XS holds LayerNorm(X) of the selected rows (the
    routed block's pre-norm); the selection and weights are unchanged."""
    from fffc.verify.reference import layer_norm

    spec = RouteSpec(D, "topk", 3, "sigmoid", True, ln_epsilon=1e-5)
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 9, D)).astype(np.float32) * 3 + 1
    wr, ls, lb = (rng.standard_normal(D).astype(np.float32) for _ in range(3))
    br = np.array([0.1], np.float32)
    outs = [_tvm.empty((18,), "int32"), _tvm.empty((18,)), _tvm.empty((1,), "int32"),
            _tvm.empty((18, D))]
    _compiled(spec)(*[_tvm.tensor(a) for a in (x, wr, br, ls, lb)], *outs)
    idx, w = route(x, wr, br, selection="topk", k=3, router="sigmoid")
    cnt = int(outs[2].numpy()[0])
    np.testing.assert_array_equal(outs[0].numpy()[:cnt], idx)
    np.testing.assert_allclose(outs[1].numpy()[:cnt], w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outs[3].numpy()[:cnt], layer_norm(x.reshape(-1, D)[idx], ls, lb,
                                                                  1e-5), rtol=1e-4, atol=1e-5)


def test_topk_k_per_call() -> None:
    """A "kvar" spec (k from the sequence length, computed by the shim) selects the top
    KN[0]; KN < 1 or KN > S selects nothing (the op refuses those before the kernel)."""
    spec = RouteSpec(D, "topk", None, "raw", True)
    assert "KN" in spec.arg_names() and spec.row.mode == "route_topk_kvar_raw"
    for s, kn in ((7, 1), (7, 3), (7, 7), (64, 16), (64, 5)):
        x, wr, br = data(2, s, D, "float", seed=s + kn)
        ref_idx, ref_w = route(x, wr, br, selection="topk", k=kn, router="raw")
        idx, wt, cnt, xs = run_route(spec, x, wr, br, kn)
        assert cnt == 2 * kn
        np.testing.assert_array_equal(idx, ref_idx)
        np.testing.assert_allclose(wt, ref_w, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(xs, x.reshape(-1, D)[ref_idx])
    x, wr, br = data(2, 7, D, "float", seed=3)
    for kn in (0, 8):
        assert run_route(spec, x, wr, br, kn)[2] == 0
