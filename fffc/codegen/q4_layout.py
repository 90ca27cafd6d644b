"""The int4 layout records the kernels take (``fffc.contract.int4``), under codegen's names."""

from fffc.contract.int4 import (  # noqa: F401
    BLOCKS,
    CHUNK,
    SYMMETRIC_ZERO_POINT,
    Int4Weights,
    Q4Columns,
    Q4Matrix,
    codes,
    columns,
    dequantize,
    dequantize_columns,
    unchunk,
    zero_points,
)

Q4Format = Int4Weights
