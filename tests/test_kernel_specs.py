"""The per-op kernel specs: their rows and keys (kernel symbols, the shim's kernel tables and
manifests are keyed by them, so they must not change), arguments, and rows read back."""

from __future__ import annotations

import pytest

from fffc.contract.kernels import (
    CombineSpec,
    FffSpec,
    Projection,
    RouteSpec,
    Row,
    SparseSpec,
    StructuredSpec,
    dense_structured,
    from_row,
)
from fffc.contract.kinds import SparseMode

# (spec, its key, its kernel-table mode): the keys are the ones artifacts carry
CASES = [
    (SparseSpec("relu", "none", SparseMode.EXACT, 128, 512, 96, True, True, False),
     "81b9a1db65", "exact"),
    (SparseSpec("gelu", "none", SparseMode.TEAL, 128, 512, 128, True, True, False,
                centers="xh"), "f83a430c4e", "teal"),
    (SparseSpec("silu", "none", SparseMode.CATS, 128, 512, 128, False, False, True),
     "53c90aa2cf", "cats"),
    (SparseSpec("silu", "none", SparseMode.PREDICTOR, 128, 512, 128, False, False, True,
                rank=32).stored_as("bfloat16"), "6033d086d3", "predictor"),
    (SparseSpec("relu", "relu", SparseMode.EXACT, 2048, 5632, 2048, False, False, True,
                bits=4, block=32, zero_points=True, int8_x=True), "394948fade", "exact"),
    (FffSpec(32, 24, 2, 2, "ge").stored_as("float16"), "1072169a9b", "2x2ge"),
    (StructuredSpec("gelu", 40, 48, 40, Projection(2, 24, False, 4, 12),
                    Projection(2, 20, False, 4, 10), True, True), "8603a429b9",
     "b2r24s4x12_b2r20s4x10"),
    (dense_structured("gelu", 40, 48, 40, True, True), "6f90001588", "b1r48_b1r40"),
    (RouteSpec(40, "topk", 2, "raw", True, ln_epsilon=1e-5), "0defd5ddf2",
     "route_topk_k2_raw_ln1e-05"),
    (RouteSpec(40, "topk", None, "sigmoid", True), "bfbf5243c2", "route_topk_kvar_sigmoid"),
    (RouteSpec(40, "threshold", 0, "sigmoid", True, selection_score=True,
               selection_bias=True), "6d7efe9a64", "route_threshold_k0_sigmoid_auxb"),
    (CombineSpec(40), "7f2548f31a", "combine"),
]


@pytest.mark.parametrize("spec, key, mode", CASES, ids=[m for _, _, m in CASES])
def test_keys_and_rows_are_stable(spec, key, mode) -> None:
    assert spec.key == key
    assert spec.row.mode == mode and spec.row.op == spec.op
    assert from_row(spec.row) == spec
    assert from_row(Row(**spec.row.__dict__)).key == key


def test_arguments_follow_the_fields() -> None:
    teal = SparseSpec("gelu", "none", "teal", 8, 16, 8, True, False, True, centers="h")
    assert teal.mode is SparseMode.TEAL  # a mode given by name is the enum member
    assert teal.arg_names() == ["X", "W1", "B1", "W2", "WU", "TH", "HC", "Y"]
    assert teal.weight_args() == ["W1", "W2", "WU"]
    pred = SparseSpec("gelu", "none", "predictor", 8, 16, 8, False, False, False, rank=4)
    assert pred.arg_names() == ["X", "W1", "W2", "PA", "PB", "PC", "Y"]
    assert FffSpec(8, 8, 3, 2).d_ff == 21 and FffSpec(8, 8, 3, 2).arg_names()[1] == "W_in"
    shuffle = StructuredSpec("relu", 8, 16, 8, Projection(2, 8, True, 2, 6), Projection(1, 8, False),
                             False, True)
    assert shuffle.arg_names() == ["X", "A1", "S1", "U1", "A2", "B2", "Y"]
    route = RouteSpec(8, "topk", None, "raw", False, ln_epsilon=1e-6)
    assert route.arg_names() == ["X", "WR", "LS", "LB", "KN", "IDX", "WT", "CNT", "XS"]
    assert route.weight_args() == [] and route.stored_as("float16") is route
    assert RouteSpec(8, "threshold", 5, "raw", False).k == 0  # threshold selections have no k


def test_int4_specs_take_codes_scales_and_zero_points() -> None:
    s = SparseSpec("relu", "relu", "exact", 64, 128, 64, True, False, True, bits=4, block=32,
                   zero_points=True)
    assert s.arg_names() == ["X", "W1", "W1S", "W1Z", "B1", "W2", "W2S", "W2Z", "WU", "WUS",
                             "WUZ", "Y"]
    assert s.row.dtype == "int4" and dict(s.row.extra) == {"block": "32", "zero_points": "1"}
    assert s.weight_args() == [] and s.stored_as("float16") == s  # no 16-bit copy of codes
    with pytest.raises(ValueError, match="bits"):
        SparseSpec("relu", "relu", "exact", 64, 128, 64, True, False, True, bits=4)


def test_16_bit_weights_change_the_key_of_specs_with_weights_only() -> None:
    s = SparseSpec("relu", "none", "exact", 8, 16, 8, True, True, False)
    assert s.stored_as("float16").key != s.key and s.stored_as("float16").dtype == "float16"
    assert CombineSpec(8).stored_as("float16") == CombineSpec(8)


def test_invalid_specs_cannot_be_made() -> None:
    with pytest.raises(ValueError):
        SparseSpec("relu", "none", "threshold", 8, 16, 8, True, True, False)
    with pytest.raises(ValueError, match="tie_break"):
        FffSpec(8, 8, 1, 2, "lt")
    with pytest.raises(ValueError, match="selection score"):
        RouteSpec(8, "topk", 1, "raw", False, selection_score=True)
    with pytest.raises(ValueError, match="unknown"):
        RouteSpec(8, "topk", 1, "softmax", False)
