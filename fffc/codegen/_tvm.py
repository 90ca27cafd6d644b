"""The one place that imports TVM (its module layout moved in 2026: tir→tirx, dlight→s_tir)."""

from __future__ import annotations

import sys

import tvm
from tvm import te
from tvm.script import tirx as T
from tvm.script.ir_builder import IRBuilder
from tvm.script.parser._core import scan_macro, utils
from tvm.script.parser.core.parser import ScriptMacro
from tvm.tirx.script.parser.entry import TIRMacro

Target = tvm.target.Target
IRModule = tvm.IRModule


def named(name: str, node):
    """``node`` (a Buffer or Var made while a PrimFunc is being built) named ``name``, as
    the TVMScript parser names the target of an assignment."""
    IRBuilder.name(name, node)
    return node


class _Macro(TIRMacro):
    """TVM's hygienic TIR macro, expanded with less work per call: the parser is found by
    following ``f_back`` (TVM builds an ``inspect`` record of every frame on the stack,
    reading each one's source: about a millisecond a frame) and the definition's syntax tree
    is converted once (expanding a body leaves its tree unchanged; only a function defined
    inside one, which kernel macros never do, would be rewritten)."""

    _definition = None

    def get_macro_def(self):
        if self._definition is None:
            self._definition = super().get_macro_def()
        return self._definition

    def _find_parser_def(self):
        frame = sys._getframe(1)
        while frame is not None:
            parser = frame.f_globals.get(ScriptMacro.parser_object_name)
            if parser is not None:
                return parser
            frame = frame.f_back
        raise RuntimeError(f"{ScriptMacro.parser_object_name} not available")


def macro(func):
    """``@T.macro`` (hygienic: names resolve where the macro is defined) for kernel pieces
    shared by Python functions that build PrimFuncs; expanded where a TVMScript body calls it."""
    source, closure_vars = scan_macro(func, utils.inspect_function_capture(func))
    expansion = _Macro(source, closure_vars, func, True)

    def wrapper(*args, **kwargs):
        return expansion(*args, **kwargs)

    return wrapper


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


def target_has_features(target: dict, features: list[str]) -> bool:
    """Whether the LLVM CPU target ``target`` (its ``mcpu`` and ``mattr``) has every feature."""
    return bool(tvm.target.codegen.llvm_cpu_has_features(features, Target(target)))


def tensor(arr):
    return tvm.runtime.tensor(arr)


def empty(shape, dtype: str = "float32"):
    return tvm.runtime.empty(shape, dtype, tvm.cpu())


__all__ = [
    "IRModule",
    "T",
    "Target",
    "compile_module",
    "host_cpu",
    "macro",
    "named",
    "te",
    "time_function",
    "tvm",
]


def time_function(executable, name: str, args: list, number: int, repeat: int) -> list[float]:
    """Seconds per call of ``executable[name](*args)``, timed by TVM in C++ (no Python loop)."""
    f = executable.mod.time_evaluator(name, tvm.cpu(), number=number, repeat=repeat)
    return [float(r) for r in f(*args).results]


def cpu_features(cpu: str, triple: str = "x86_64-linux-gnu") -> set[str]:
    """LLVM's feature names of a CPU (e.g. {"avx2", "fma", ...})."""
    target = Target({"kind": "llvm", "mtriple": triple, "mcpu": cpu})
    return set(tvm.target.codegen.llvm_get_cpu_features(target))


def cuda_target(arch: str) -> Target:
    """A CUDA target for ``arch`` (e.g. sm_90) with an LLVM host (for the host stubs)."""
    return Target({"kind": "cuda", "arch": arch}, host={"kind": "llvm"})


def dlight_matmul(func, target: Target, config: dict | None = None):
    """Schedule a TE matmul PrimFunc with dlight's GPU Matmul rule (Fallback if it declines).

    ``config`` overrides fields of the rule's CUDA config (block/micro tile sizes).
    """
    import dataclasses

    from tvm.s_tir import dlight as dl

    class Tuned(dl.gpu.Matmul):
        def get_configs(self, target):
            return dataclasses.replace(super().get_configs(target), **(config or {}))

    mod = IRModule({"main": func})
    with target:
        mod = dl.ApplyDefaultSchedule(Tuned(), dl.gpu.Fallback())(mod)
    return mod["main"]


def cuda_source(funcs: dict, target: Target) -> str:
    """The CUDA C++ TVM emits for ``funcs`` (it compiles nothing: nvcc does that later)."""
    ex = tvm.compile(IRModule(funcs), target=target)
    return ex.mod.imports[0].inspect_source()
