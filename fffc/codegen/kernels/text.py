"""Helpers for kernels written as TVMScript text: indentation, vector loops, parsing."""

from __future__ import annotations

import re

from fffc.contract.errors import CodegenError

from .._tvm import from_source

# A CPU kernel's signature with token-major X [N, D] and Y [N, DO] (N: the token count);
# format fields params, symbol, D, DO.
TOKEN_MAJOR_HEAD = """
@T.prim_func
def kernel({params}):
    T.func_attr({{"global_symbol": "{symbol}", "tirx.noalias": True}})
    N = T.int32()
    X = T.match_buffer(x, (N, {D}), "float32", align=4)
    Y = T.match_buffer(y, (N, {DO}), "float32", align=4)
"""


def indent(text: str, n: int) -> str:
    """``text`` without surrounding blank lines, every non-blank line indented by n."""
    pad = " " * n
    return "\n".join(pad + line if line.strip() else "" for line in text.strip("\n").splitlines())


def vector_loop(var: str, n: int, stmt: str, lanes: int = 16) -> str:
    """``stmt`` (with ``{var}``: the element) for elements 0..n-1 as a loop of
    ``lanes``-wide vector steps plus a narrower tail (no n-lane LLVM vectors)."""
    out = []
    if n // lanes:
        out.append(f"for {var}o in range({n // lanes}):\n    for {var}i in T.vectorized({lanes}):\n"
                   + indent(stmt.replace(f"{{{var}}}", f"({var}o * {lanes} + {var}i)"), 8))
    if n % lanes:
        out.append(f"for {var}i in T.vectorized({n % lanes}):\n"
                   + indent(stmt.replace(f"{{{var}}}", f"({n // lanes * lanes} + {var}i)"), 4))
    return "\n".join(out)


def parse(source: str, symbol: str):
    """The PrimFunc of a kernel's TVMScript; TVMScript errors as CodegenError."""
    try:
        return from_source(source)
    except Exception as e:  # TVMScript errors carry the offending line; keep it typed
        raise CodegenError(f"TVMScript generation failed for {symbol}: {e}") from e


def _closing(text: str, start: int) -> int:
    """Index just past the bracket that closes ``text[start]`` ('[' or '(')."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] in "[(":
            depth += 1
        elif text[i] in "])":
            depth -= 1
            if depth == 0:
                return i + 1
    raise CodegenError("unbalanced brackets in kernel source")


def with_weight_dtype(source: str, names: list[str] | tuple[str, ...], dtype: str) -> str:
    """A float32 kernel's TVMScript with the weight buffers ``names`` stored as
    ``dtype`` (float16, bfloat16): each is declared with that dtype and every load widened
    to float32 where it is read, so the arithmetic (and accumulation) stays float32 and the
    weights cost half the memory traffic. A declared weight the text does not show in the
    ``NAME: T.Buffer(shape, "float32"[, align=N])`` form is an error, never a silently float32 kernel."""
    if dtype == "float32":
        return source
    for name in names:
        decl = re.compile(rf'(\b{name}: T\.Buffer\(\([^)]*\),\s*)"float32"((?:,\s*align=\d+)?\))')
        if not decl.search(source):
            if re.search(rf"(?<![\w.]){name}\[", source):
                raise CodegenError(f"weight {name}: no T.Buffer declaration to store as {dtype}")
            continue  # not a parameter of this kernel
        source = decl.sub(rf'\1"{dtype}"\2', source)
        out, pos = [], 0
        for m in re.finditer(rf"(?<![\w.]){name}\[", source):
            if m.start() < pos:
                continue
            end = _closing(source, m.end() - 1)
            out.append(source[pos:m.start()] + f'T.Cast("float32", {source[m.start():end]})')
            pos = end
        source = "".join(out) + source[pos:]
    return source
