"""x86 schedule family: tunables and the LLVM target for x86-64 CPUs (variants: cpu.py)."""

from __future__ import annotations

from dataclasses import dataclass

from fffc.contract.ops import KernelSpec

from .. import _tvm
from .base import Family, Variant
from .cpu import CpuConfig, cpu_variants


@dataclass(frozen=True)
class Config(CpuConfig):
    """x86 tunables. Register budget: AVX2 has 16 ymm, AVX-512 32 zmm; a micro-tile of
    mr × vectors accumulators plus a few loads must fit (bench_kernels.py)."""

    gemm_nr_vectors: int = 2  # 6 × 2 = 12 of 16 ymm accumulators
    gemm_nr_vectors_avx512: int = 4  # 6 × 4 = 24 of 32 zmm
    sparse_max_tokens: int = 2  # past this ONNX Runtime's dense FFN runs: bench_kernels.py,
    sparse_max_tokens_gated: int = 2  # 90% zeros, 2-core AVX-512 VM: gemv1/gemv2 1.3x–2.7x
    # faster than ORT (ReLU 768/3072, dReLU 1024/4096), the 3+-token variants 0.35x–0.6x


class X86(Family):
    name = "x86"
    timed_here = True
    triple = "x86_64-linux-gnu"

    def __init__(self, config: Config | None = None):
        self.config = config or Config()

    def target(self, mcpu: str | None, mattr: tuple[str, ...] = ()) -> dict:
        cpu = mcpu or _tvm.host_cpu()
        target = {"kind": "llvm", "mtriple": self.triple, "mcpu": cpu}
        if mattr:
            target["mattr"] = list(mattr)
        return target

    def sparse_max_tokens(self, spec: KernelSpec) -> int:
        c = self.config
        if spec.mode in ("teal", "cats", "predictor"):
            return c.teal_max_tokens
        return c.sparse_max_tokens_gated if spec.gated else c.sparse_max_tokens

    def variants(self, spec: KernelSpec, target: dict) -> list[Variant]:
        c = self.config
        cpu = target.get("mcpu") or _tvm.host_cpu()
        wide = _tvm.cpu_has_features(cpu, ["avx512f"], self.triple)
        return cpu_variants(spec, c, lanes=16 if wide else 8,
                            gemm_nr_vectors=c.gemm_nr_vectors_avx512 if wide else c.gemm_nr_vectors,
                            half_conversions=_tvm.cpu_has_features(cpu, ["f16c"], self.triple))
