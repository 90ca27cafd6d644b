"""x86 schedule family: tunables, the variant table and the LLVM target for x86-64 CPUs."""

from __future__ import annotations

from dataclasses import dataclass, replace

from fffc.ops import KernelSpec

from .. import _tvm
from ..kernels.sparse_ffn import Tiling
from .base import MAX_TOKENS, Family, Variant, largest_divisor


@dataclass(frozen=True)
class Config:
    """Tunables of the x86 SparseFFN kernels (kernels/sparse_ffn.py has the loops).

    Register budget: AVX2 has 16 ymm, AVX-512 32 zmm; a micro-tile of mr × vectors
    accumulators plus a few loads must fit. Measured on a 2-core AVX2 VM (bench_kernels.py).
    """

    gemv_max_tokens: int = 2  # variants gemv1..gemvN: exactly that many tokens
    gemv_nr1_vectors: int = 8  # 8 independent FMA chains over one token
    gemv_nr3_vectors: int = 8
    gemv_tasks: int = 4  # neuron blocks of phase 1: long contiguous W1 row segments
    gemm_mr: int = 6  # tokens per tile in the blocked GEMM kernel
    gemm_nr_vectors: int = 2  # 6 × 2 = 12 of 16 ymm accumulators
    gemm_nr_vectors_avx512: int = 4  # 6 × 4 = 24 of 32 zmm
    gemm_nb: int = 64  # neurons per phase-1 task (packed panel ≤ pack_bytes)
    pack_bytes: int = 256 << 10  # on the stack, and in L2
    vl_vectors: int = 4  # up-projection dot: 4 independent chains per token
    gated_stream_max_tokens: int = 24  # gated, up to here: gate-first up projection (measured
    # crossover with the packed dense up projection on a 2-core AVX-512 VM, d 1024 / d_ff 4096)
    pack_w2_min_tokens: int = 48  # from here most W2 rows are read anyway: pack panels once
    serial_max_macs: int = 1 << 16  # d_in·d_ff below this: no threads (wake-up > work)
    sparse_max_tokens: int = 2  # past this ONNX Runtime's dense FFN runs: bench_kernels.py,
    sparse_max_tokens_gated: int = 2  # 90% zeros, 2-core AVX-512 VM: gemv1/gemv2 1.3x–2.7x
    # faster than ORT (ReLU 768/3072, dReLU 1024/4096), the 3+-token variants 0.35x–0.6x


class X86(Family):
    name = "x86"
    triple = "x86_64-linux-gnu"

    def __init__(self, config: Config | None = None):
        self.config = config or Config()

    def target(self, mcpu: str | None) -> dict:
        cpu = mcpu or _tvm.host_cpu()
        return {"kind": "llvm", "mtriple": self.triple, "mcpu": cpu}

    def sparse_max_tokens(self, spec: KernelSpec) -> int:
        c = self.config
        return c.sparse_max_tokens_gated if spec.gated else c.sparse_max_tokens

    def variants(self, spec: KernelSpec, target: dict) -> list[Variant]:
        c = self.config
        wide = _tvm.cpu_has_features(target.get("mcpu") or _tvm.host_cpu(), ["avx512f"], self.triple)
        lanes = 16 if wide else 8
        parallel = spec.d_in * spec.d_ff >= c.serial_max_macs
        vl = largest_divisor(spec.d_in, lanes * c.vl_vectors)
        gemv_nb = largest_divisor(spec.d_ff, max(lanes, spec.d_ff // c.gemv_tasks))
        nr1 = largest_divisor(gemv_nb, lanes * c.gemv_nr1_vectors)
        nr3 = largest_divisor(spec.d_out, lanes * c.gemv_nr3_vectors)
        # one kernel per decode token count: W1 is streamed once for all tokens of a tile
        gemv = [Variant(f"gemv{m}", m, m, Tiling(mr=m, nr1=nr1, nb=gemv_nb, nr3=nr3, vl=vl,
                                                  parallel=parallel))
                for m in range(1, c.gemv_max_tokens + 1)]
        nr = lanes * (c.gemm_nr_vectors_avx512 if wide else c.gemm_nr_vectors)
        gemm_nb = largest_divisor(spec.d_ff, max(nr, min(c.gemm_nb, c.pack_bytes // (4 * spec.d_in))))
        gemm = Tiling(mr=c.gemm_mr, nr1=largest_divisor(gemm_nb, nr), nb=gemm_nb,
                      nr3=largest_divisor(spec.d_out, nr), vl=vl, parallel=parallel, packed=True)
        gemm_packed = replace(gemm, pack_w2=True)
        first = c.gemv_max_tokens + 1
        variants = list(gemv)
        if spec.gated:
            # few tokens: gate first, WU rows read only for neurons some token of a tile needs
            stream = Tiling(mr=c.gemm_mr, nr1=nr1, nb=gemv_nb, nr3=gemm.nr3, vl=vl,
                            parallel=parallel)
            variants.append(Variant("gemm_stream", first, c.gated_stream_max_tokens, stream))
            first = c.gated_stream_max_tokens + 1
        return [*variants, Variant("gemm", first, c.pack_w2_min_tokens - 1, gemm),
                Variant("gemm_packed", c.pack_w2_min_tokens, MAX_TOKENS, gemm_packed)]
