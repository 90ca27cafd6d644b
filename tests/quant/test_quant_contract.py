"""``QuantizedWeight`` survives its trip through a canonical node's attributes, and says
what it is in one phrase."""

from __future__ import annotations

import pytest

from fffc.contract.kinds import Granularity, QuantSource
from fffc.contract.quant import QuantizedWeight

RECORDS = [
    QuantizedWeight(QuantSource.MATMUL_NBITS, 4, 4096, 11008, Granularity.BLOCK, 32, 0,
                    symmetric=True, accuracy_level=4),
    QuantizedWeight(QuantSource.QDQ, 8, 512, 128, Granularity.CHANNEL, axis=1, symmetric=False,
                    signed=True),
    QuantizedWeight(QuantSource.DYNAMIC, 8, 128, 512, Granularity.TENSOR, signed=True),
]


@pytest.mark.parametrize("q", RECORDS, ids=lambda q: str(q.source))
def test_record_round_trips_through_attributes(q):
    attrs = q.to_attributes()
    assert all(isinstance(v, int | str) for v in attrs.values())
    assert QuantizedWeight.from_attributes(attrs.__getitem__) == q


def test_describe():
    assert [q.describe() for q in RECORDS] == [
        "int4 MatMulNBits weights (block 32, symmetric, accuracy_level 4)",
        "int8 QDQ weights (per channel, zero points)",
        "int8 MatMulInteger weights (per tensor, symmetric)",
    ]
