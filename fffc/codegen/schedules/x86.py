"""x86 schedule family: tunables and the LLVM target for x86-64 CPUs (variants: cpu.py)."""

from __future__ import annotations

from dataclasses import dataclass

from fffc.contract.kernels import SparseSpec
from fffc.contract.kinds import SparseMode

from .. import _tvm
from ..kernels.exact_q4 import INT4, X86_ISA, Q4Plan, int4_tiling, plan_dot
from .base import MAX_TOKENS, Variant
from .cpu import CpuConfig, CpuFamily, cpu_variants


@dataclass(frozen=True)
class Config(CpuConfig):
    """x86 tunables. Register budget: AVX2 has 16 ymm, AVX-512 32 zmm; a micro-tile of
    mr × vectors accumulators plus a few loads must fit (bench/bench_kernels.py)."""

    gemm_nr_vectors: int = 2  # 6 × 2 = 12 of 16 ymm accumulators
    gemm_nr_vectors_avx512: int = 4  # 6 × 4 = 24 of 32 zmm


class X86(CpuFamily):
    name = "x86"
    timed_here = True
    int4_weights = True
    int8_weights = True
    int8_act_quant = True
    int4_modes = frozenset(SparseMode)  # exact, teal, cats, predictor (kernels/*_q4.py)
    triple = "x86_64-linux-gnu"

    def __init__(self, config: Config | None = None):
        super().__init__(config or Config())

    def target(self, mcpu: str | None, mattr: tuple[str, ...] = ()) -> dict:
        cpu = mcpu or _tvm.host_cpu()
        target = {"kind": "llvm", "mtriple": self.triple, "mcpu": cpu}
        if mattr:
            target["mattr"] = list(mattr)
        return target

    def sparse_variants(self, spec: SparseSpec, target: dict) -> list[Variant]:
        c = self.config
        cpu = target.get("mcpu") or _tvm.host_cpu()
        wide = _tvm.cpu_has_features(cpu, ["avx512f"], self.triple)
        if spec.bits:  # one kernel for every count, a token at a time (the If past the
            # crossover runs ONNX Runtime's MatMulNBits)
            dots = _tvm.target_has_features(target, list(X86_ISA.dot_features))
            return [Variant(INT4, 1, MAX_TOKENS, Q4Plan(int4_tiling(spec, 16 if wide else 8),
                                                        X86_ISA, plan_dot(spec, dots)))]
        return cpu_variants(spec, c, lanes=16 if wide else 8,
                            gemm_nr_vectors=c.gemm_nr_vectors_avx512 if wide else c.gemm_nr_vectors,
                            half_conversions=_tvm.cpu_has_features(cpu, ["f16c"], self.triple))
