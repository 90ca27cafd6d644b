"""The one place that imports TVM (its module layout moved in 2026: tir→tirx, dlight→s_tir)."""

from __future__ import annotations

import tvm
import tvm.script
from tvm.script import tirx as T

Target = tvm.target.Target
IRModule = tvm.IRModule


def from_source(source: str):
    """Parse TVMScript text (``@T.prim_func def ...``) into a PrimFunc."""
    return tvm.script.from_source(source, extra_vars={"T": T})


def compile_module(funcs: dict, target: dict):
    """``tvm.compile`` of hand-written tirx PrimFuncs for a target given as a dict."""
    return tvm.compile(IRModule(funcs), target=Target(target))


def host_cpu() -> str:
    """LLVM's name for this machine's CPU (``-mcpu``)."""
    return str(tvm.target.codegen.llvm_get_system_cpu())


def is_valid_cpu(triple: str, cpu: str) -> bool:
    return bool(tvm.target.codegen.llvm_is_valid_cpu(cpu, triple))


def cpu_has_features(cpu: str, features: list[str], triple: str = "x86_64-linux-gnu") -> bool:
    target = Target({"kind": "llvm", "mtriple": triple, "mcpu": cpu})
    return bool(tvm.target.codegen.llvm_cpu_has_features(features, target))


def tensor(arr):
    return tvm.runtime.tensor(arr)


def empty(shape, dtype: str = "float32"):
    return tvm.runtime.empty(shape, dtype, tvm.cpu())


__all__ = ["IRModule", "T", "Target", "compile_module", "from_source", "host_cpu", "time_function",
           "tvm"]


def time_function(executable, name: str, args: list, number: int, repeat: int) -> list[float]:
    """Seconds per call of ``executable[name](*args)``, timed by TVM in C++ (no Python loop)."""
    f = executable.mod.time_evaluator(name, tvm.cpu(), number=number, repeat=repeat)
    return [float(r) for r in f(*args).results]


def cpu_features(cpu: str, triple: str = "x86_64-linux-gnu") -> set[str]:
    """LLVM's feature names of a CPU (e.g. {"avx2", "fma", ...})."""
    target = Target({"kind": "llvm", "mtriple": triple, "mcpu": cpu})
    return set(tvm.target.codegen.llvm_get_cpu_features(target))
