"""Shared pieces of the kernel generators: weight loads, activations, halving folds, and the
specialization of a kernel's optional parameters.

Expression helpers return TIR expressions and are called from kernel bodies like any
function. Statement helpers (``folds``) emit their loops into the kernel being parsed at
the point of the call (TVMScript parses through an IR builder; these use it directly),
which is how a kernel unrolls a variable number of statements at the Python level.
"""

from fffc.contract.errors import CodegenError

from .._tvm import T

# Weight storage dtypes a kernel generator takes: loads are widened to float32, so the
# arithmetic and the accumulation stay float32 whatever the storage.
WEIGHT_DTYPES = ("float32", "float16", "bfloat16")

# Each activation as a function of a float32 TIR expression.
ACTIVATIONS = {
    "none": lambda v: v,
    "relu": lambda v: T.max(v, T.float32(0)),
    "gelu": lambda v: T.float32(0.5) * v * (
        T.float32(1) + T.erf(v * T.float32(0.7071067811865476))),
    "gelu_tanh": lambda v: T.float32(0.5) * v * (T.float32(1) + T.tanh(
        T.float32(0.7978845608028654) * (v + T.float32(0.044715) * v * v * v))),
    "silu": lambda v: v * T.sigmoid(v),
}


def check_dtype(dtype: str) -> None:
    if dtype not in WEIGHT_DTYPES:
        raise CodegenError(f"weight dtype {dtype!r}: one of {', '.join(WEIGHT_DTYPES)}")


def widen(load):
    """A weight load as float32 (a cast where the weights are stored in 16 bits)."""
    return load if str(load.ty.dtype) == "float32" else T.Cast("float32", load)


def bias(buf, index):
    """``buf[index]``, or 0 where the kernel has no such bias (an absent parameter)."""
    return T.float32(0) if buf is None else buf[index]


def folds(bufs, lanes: int, rows: int = 0) -> None:
    """Halving sums of ``lanes``-wide partial dot products into element 0 of each buffer of
    ``bufs``: one vector loop per halving step over all of them. ``rows`` > 0: the buffers
    are [rows, lanes] (one dot product per row), each step unrolled over the rows."""
    half = lanes // 2
    while half >= 1:
        if rows:
            with T.unroll(rows) as r, T.vectorized(half) as v:
                for b in bufs:
                    T.buffer_store(b, b[r, v] + b[r, v + half], [r, v])
        else:
            with T.vectorized(half) as v:
                for b in bufs:
                    T.buffer_store(b, b[v] + b[v + half], [v])
        half //= 2


def specialize(kernel, names: list[str]):
    """The PrimFunc of a ``T.jit`` kernel with its ``T.Optional`` parameters absent that are
    not in ``names`` (``spec.arg_names()``: the kernel ABI); its parameters must then be
    ``names`` in order (X and Y are handles named x and y)."""
    func = kernel.specialize(**{n: None for n in kernel.optional_names if n not in names})
    params = [str(p.name).upper() for p in func.params]
    if params != [n.upper() for n in names]:
        raise CodegenError(f"kernel parameters {params} are not the arguments {names}")
    return func
