"""Shared pieces of the kernel generators: activations, weight loads, halving folds, the
specialization of a kernel's optional parameters, small integer helpers.

A generator is a Python function that defines a ``@T.prim_func`` (or ``@T.jit``, where
inputs are optional) whose closure variables carry the shapes, tilings and weight dtype,
and returns its PrimFunc. TVMScript evaluates a Python ``if`` on a closure value while
parsing (only the taken branch becomes TIR), so variants are plain Python branches;
``T.meta_var`` names an index expression without a TIR binding, and ``@T.inline`` / macro
functions are statement-level pieces that several kernels share. By convention the
upper-case names in a generator are the constants its kernel bakes in.

Expression helpers here return TIR expressions and are called from kernel bodies like any
function. Statement helpers (``folds``) emit their loops into the kernel being parsed at
the point of the call (TVMScript parses through an IR builder; these use it directly),
which is how a kernel unrolls a variable number of statements at the Python level.

The kernel modules do not use ``from __future__ import annotations``: ``@T.jit`` resolves
the parameter annotations (``T.Buffer((D, F), WDT)``) from the function's closure, which
string annotations would not keep.
"""

from collections.abc import Callable
from dataclasses import dataclass

from fffc.contract.errors import CodegenError
from fffc.contract.kinds import WeightDtype
from fffc.contract.ops import ACTIVATIONS as OP_ACTIVATIONS
from fffc.contract.ops import UP_ACTIVATIONS

from .._tvm import T

# Weight storage dtypes a kernel generator takes: loads are widened to float32, so the
# arithmetic and the accumulation stay float32 whatever the storage.
WEIGHT_DTYPES = tuple(str(d) for d in WeightDtype if d.floating)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def largest_divisor(n: int, cap: int) -> int:
    """The largest power of two ≤ cap dividing n (1 at worst): tiles without remainders."""
    d = 1
    while d * 2 <= cap and n % (d * 2) == 0:
        d *= 2
    return d


# --- activations of one float32 expression ---

def _horner(x, coefs: list[float]):
    e = T.float32(coefs[0])
    for c in coefs[1:]:
        e = e * x + T.float32(c)
    return e


_ERF_P = [-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
          -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
          -1.60960333262415e-02]
_ERF_Q = [-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
          -7.37332916720468e-03, -1.42647390514189e-02]
_EXP_P = [1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
          1.6666665459e-1, 5.0000001201e-1]


def _erf_poly(v):
    """erf: Eigen's rational approximation on [-4, 4] (abs error 4e-7)."""
    x = T.max(T.min(v, T.float32(4)), T.float32(-4))
    x2 = x * x
    return x * _horner(x2, _ERF_P) / _horner(x2, _ERF_Q)


def _exp_poly(v):
    """exp: Cephes' degree-6 polynomial times 2^n built from the exponent bits."""
    x = T.max(T.min(v, T.float32(88)), T.float32(-87))
    n = T.floor(x * T.float32(1.4426950408889634) + T.float32(0.5))
    r = x - n * T.float32(0.693359375) + n * T.float32(2.12194440e-4)
    poly = _horner(r, _EXP_P) * (r * r) + r + T.float32(1)
    return poly * T.reinterpret("float32", T.shift_left(T.Cast("int32", n) + 127, 23))


def _relu(v):
    return T.max(v, T.float32(0))


@dataclass(frozen=True)
class Activation:
    """One activation in two forms. ``exact``: T.erf / T.tanh / T.sigmoid, which TVM lowers
    on CPUs to a scalar libm call per element (cheap on GPUs, fine for one token);
    ``vector``: polynomial forms that vectorize, for CPU kernels that activate whole rows
    of many tokens (gelu_tanh as 1 / (1 + exp(-2u)), silu as z / (1 + exp(-z)))."""

    exact: Callable
    vector: Callable
    zeros: bool = False  # exactly 0 wherever the input is not positive: exact skipping


ACTIVATIONS: dict[str, Activation] = {
    "none": Activation(lambda v: v, lambda v: v),
    "relu": Activation(_relu, _relu, zeros=True),
    "gelu": Activation(
        lambda v: T.float32(0.5) * v * (T.float32(1) + T.erf(v * T.float32(0.7071067811865476))),
        lambda v: T.float32(0.5) * v * (T.float32(1) + _erf_poly(v * T.float32(0.7071067811865476)))),
    "gelu_tanh": Activation(
        lambda v: T.float32(0.5) * v * (T.float32(1) + T.tanh(
            T.float32(0.7978845608028654) * (v + T.float32(0.044715) * v * v * v))),
        lambda v: v / (T.float32(1) + _exp_poly(
            T.float32(-1.5957691216057308) * (v + T.float32(0.044715) * v * v * v)))),
    "silu": Activation(lambda v: v * T.sigmoid(v),
                       lambda v: v / (T.float32(1) + _exp_poly(T.float32(0) - v))),
}


def activation(name: str, vector: bool = False) -> Callable:
    """The activation ``name`` (an op's ``activation`` or ``up_activation``) as a function of
    a float32 expression, in its exact or its vectorizable form."""
    try:
        act = ACTIVATIONS[name]
    except KeyError:
        raise CodegenError(f"activation {name!r} has no kernel") from None
    return act.vector if vector else act.exact


def has_zeros(name: str) -> bool:
    """Whether the activation ``name`` is exactly 0 for every input ≤ 0 (so a neuron can be
    skipped exactly)."""
    return name in ACTIVATIONS and ACTIVATIONS[name].zeros


def check_activations(op: str, act: str, up: str = "none") -> None:
    """Raise CodegenError unless ``act`` is one of the op's activations and ``up`` one of the
    up projection's."""
    if act not in OP_ACTIVATIONS:
        raise CodegenError(f"{op}: activation {act!r} has no kernel")
    if up not in UP_ACTIVATIONS:
        raise CodegenError(f"{op} up_activation {up!r} is not supported")


# --- loads, biases, folds ---

def check_weight_dtype(dtype: str, allowed: tuple[str, ...] = WEIGHT_DTYPES) -> None:
    """Raise CodegenError for a weight dtype a generator does not take."""
    if dtype not in allowed:
        raise CodegenError(f"weights stored as {dtype!r}: {' or '.join(allowed)} only here")


def widen(load):
    """A weight load as float32: 16-bit weights (float16, bfloat16) are widened where they
    are read, so arithmetic and accumulation stay float32."""
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


# --- optional parameters ---

def specialize(kernel, **present: bool):
    """The PrimFunc of a ``@T.jit`` kernel without its ``T.Optional`` parameters that are
    not ``present``."""
    return kernel.specialize(**{name: None for name, here in present.items() if not here})


def with_args(kernel, names: list[str]):
    """The PrimFunc of a ``@T.jit`` kernel with its ``T.Optional`` parameters absent that are
    not in ``names`` (``spec.arg_names()``: the kernel ABI); its parameters must then be
    ``names`` in order (X and Y are handles named x and y)."""
    func = kernel.specialize(**{n: None for n in kernel.optional_names if n not in names})
    params = [str(p.name).upper() for p in func.params]
    if params != [n.upper() for n in names]:
        raise CodegenError(f"kernel parameters {params} are not the arguments {names}")
    return func
