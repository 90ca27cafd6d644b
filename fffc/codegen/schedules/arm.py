"""arm schedule family: aarch64 (NEON, 4 fp32 lanes, 32 vector registers), cross-compiled.

The kernels are the same TVMScript as on x86 (kernels/sparse_ffn.py); only the vector
width and the register tiling differ. LLVM emits NEON ``fmla v.4s`` for the vectorized
loops (a test reads the disassembly). The tunables are x86's scaled to 128-bit vectors,
and the crossovers are the CPU defaults (cpu.py): nothing here is measured on ARM.
"""

from __future__ import annotations

from dataclasses import dataclass

from fffc.contract.errors import UnsupportedTargetError
from fffc.contract.kernels import SparseSpec
from fffc.contract.kinds import SparseMode

from .. import _tvm
from ..kernels.exact_q4 import ARM_ISA, INT4, Q4Plan, int4_tiling, plan_dot
from .base import MAX_TOKENS, Variant
from .cpu import CpuConfig, CpuFamily, cpu_variants

PRESETS = {  # --mcpu value → LLVM CPU
    "generic": "generic", "cortex-a55": "cortex-a55", "cortex-a72": "cortex-a72",
    "cortex-a76": "cortex-a76", "neoverse-n1": "neoverse-n1", "neoverse-v1": "neoverse-v1",
    "neoverse-v2": "neoverse-v2", "apple-m1": "apple-m1",
}


@dataclass(frozen=True)
class Config(CpuConfig):
    lanes: int = 4  # 128-bit NEON
    gemm_nr_vectors: int = 4  # 6 × 4 = 24 of 32 v-register accumulators
    gemv_nr1_vectors: int = 8  # 8 independent fmla chains
    fff_lanes: int = 4
    base_mattr: tuple[str, ...] = ("+v8.2a", "+neon")  # generic ARMv8.2-A (Pi 5, Jetson Orin,
    # Graviton 2+); --mcpu cortex-a72 (Pi 4) etc. for older or specific cores


class Arm(CpuFamily):
    name = "arm"
    triple = "aarch64-linux-gnu"
    int4_weights = True
    int8_weights = True
    int8_act_quant = True
    int4_modes = frozenset(SparseMode)  # exact, teal, cats, predictor (kernels/*_q4.py)

    def __init__(self, config: Config | None = None):
        super().__init__(config or Config())

    def target(self, mcpu: str | None, mattr: tuple[str, ...] = ()) -> dict:
        cpu = PRESETS.get(mcpu or "generic", mcpu or "generic")
        if not _tvm.is_valid_cpu(self.triple, cpu):
            raise UnsupportedTargetError(f"--mcpu {mcpu!r} is not an aarch64 CPU LLVM knows "
                                         f"(e.g. {', '.join(sorted(PRESETS))})")
        target = {"kind": "llvm", "mtriple": self.triple, "mcpu": cpu}
        features = [*(self.config.base_mattr if cpu == "generic" else ()), *mattr]
        if features:
            target["mattr"] = features
        return target

    def sparse_variants(self, spec: SparseSpec, target: dict) -> list[Variant]:
        if spec.bits:  # one kernel for every count, a token at a time (the If past the
            # crossover runs ONNX Runtime's MatMulNBits)
            dots = _tvm.target_has_features(target, list(ARM_ISA.dot_features))
            return [Variant(INT4, 1, MAX_TOKENS, Q4Plan(int4_tiling(spec, self.config.lanes),
                                                        ARM_ISA, plan_dot(spec, dots)))]
        return cpu_variants(spec, self.config, lanes=self.config.lanes,
                            gemm_nr_vectors=self.config.gemm_nr_vectors)
