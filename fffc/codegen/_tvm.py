"""The one place that imports TVM (its module layout moved in 2026: tir→tirx, dlight→s_tir)."""

from __future__ import annotations

import tvm
from tvm.script import tirx as T

Target = tvm.target.Target
IRModule = tvm.IRModule


def compile_module(mod: IRModule, target: Target):
    """``tvm.compile`` for a module of hand-written tirx PrimFuncs."""
    return tvm.compile(mod, target=target)


__all__ = ["IRModule", "T", "Target", "compile_module", "tvm"]
