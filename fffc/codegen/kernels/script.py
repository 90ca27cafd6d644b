"""Shared pieces of the kernels written as TVMScript generators.

A generator is a Python function that defines a ``@T.prim_func`` (or ``@T.jit``, where
inputs are optional) whose closure variables carry the shapes, tilings and weight dtype,
and returns its PrimFunc. TVMScript evaluates a Python ``if`` on a closure value while
parsing (only the taken branch becomes TIR), so variants are plain Python branches;
``T.meta_var`` names an index expression without a TIR binding, and ``@T.inline``
functions are statement-level pieces that several kernels share. By convention the
upper-case names in a generator are the constants its kernel bakes in.

The kernel modules do not use ``from __future__ import annotations``: ``@T.jit`` resolves
the parameter annotations (``T.Buffer((D, F), WDT)``) from the function's closure, which
string annotations would not keep.
"""

from collections.abc import Callable

from fffc.contract.errors import CodegenError

from .._tvm import T

# Activations on a float32 expression (exact GELU: erf; gelu_tanh: the tanh approximation).
ACTIVATIONS: dict[str, Callable] = {
    "none": lambda v: v,
    "relu": lambda v: T.max(v, T.float32(0)),
    "gelu": lambda v: T.float32(0.5) * v * (T.float32(1) + T.erf(v * T.float32(0.7071067811865476))),
    "gelu_tanh": lambda v: T.float32(0.5) * v * (T.float32(1) + T.tanh(
        T.float32(0.7978845608028654) * (v + T.float32(0.044715) * v * v * v))),
    "silu": lambda v: v * T.sigmoid(v),
}


def widen(load):
    """A weight load as float32: 16-bit weights (float16, bfloat16) are widened where they
    are read, so arithmetic and accumulation stay float32."""
    return load if load.ty.dtype == "float32" else T.Cast("float32", load)


def specialize(kernel, **present: bool):
    """The PrimFunc of a ``@T.jit`` kernel without its ``T.Optional`` parameters that are
    not ``present``."""
    return kernel.specialize(**{name: None for name, here in present.items() if not here})


def check_weight_dtype(dtype: str, allowed: tuple[str, ...]) -> None:
    """Raise CodegenError for a weight dtype a generator does not take."""
    if dtype not in allowed:
        raise CodegenError(f"weights stored as {dtype!r}: {' or '.join(allowed)} only here")
