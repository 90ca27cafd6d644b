"""The CPU kernel variant table shared by the x86 and arm families (only vector width and
register budget differ between them)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from fffc.contract.ops import KernelSpec

from ..kernels.exact_screened import screenable
from ..kernels.sparse_ffn import Tiling
from .base import MAX_TOKENS, Variant, largest_divisor


@dataclass(frozen=True)
class CpuConfig:
    """Tunables of the CPU SparseFFN kernels (kernels/sparse_ffn.py has the loops)."""

    gemv_max_tokens: int = 2  # variants decode (1 token), gemv2..gemvN: exactly that many
    gemv_nr1_vectors: int = 8  # 8 independent FMA chains over one token
    gemv_nr3_vectors: int = 8
    gemv_tasks: int = 4  # neuron blocks of phase 1: long contiguous W1 row segments
    gemm_mr: int = 6  # tokens per tile in the blocked GEMM kernel
    gemm_nb: int = 64  # neurons per phase-1 task (packed panel ≤ pack_bytes)
    pack_bytes: int = 256 << 10  # on the stack, and in L2
    vl_vectors: int = 4  # up-projection dot: 4 independent chains per token
    gated_stream_max_tokens: int = 24  # gated, up to here: gate-first up projection (measured
    # crossover with the packed dense up projection on a 2-core AVX-512 VM, d 1024 / d_ff 4096)
    pack_w2_min_tokens: int = 48  # from here most W2 rows are read anyway: pack panels once
    serial_max_macs: int = 1 << 16  # d_in·d_ff below this: no threads (wake-up > work)
    screen_exact: bool = True  # exact, 1 token: the float16-screened kernel
    # (kernels/exact_screened.py; the shim keeps a float16 and a transposed copy of W1)
    teal_max_tokens: int = 1  # modes teal, predictor: per-token skipping re-reads the surviving
    # rows for every token, so from 2 tokens ONNX Runtime's masked dense FFN runs (bench_teal.py)


def cpu_variants(spec: KernelSpec, c: CpuConfig, lanes: int, gemm_nr_vectors: int,
                 half_conversions: bool = True) -> list[Variant]:
    """Variants covering 1..MAX_TOKENS for a CPU with ``lanes`` fp32 per vector register
    (``half_conversions``: float16 loads widen in one instruction: x86 F16C, every aarch64)."""
    parallel = spec.d_in * spec.d_ff >= c.serial_max_macs
    vl = largest_divisor(spec.d_in, lanes * c.vl_vectors)
    gemv_nb = largest_divisor(spec.d_ff, max(lanes, spec.d_ff // c.gemv_tasks))
    nr1 = largest_divisor(gemv_nb, lanes * c.gemv_nr1_vectors)
    nr3 = largest_divisor(spec.d_out, lanes * c.gemv_nr3_vectors)
    # the split-K decode kernels (kernels/decode.py): nr1/nr3 4 vectors per step over d_ff /
    # d_out (picked in an unscripted probe of 2/4/8 parts × 64/128 lanes on this 2-core VM)
    decode = Tiling(mr=1, nr1=largest_divisor(gemv_nb, lanes * 4), nb=gemv_nb,
                    nr3=largest_divisor(spec.d_out, lanes * 4), vl=vl, parallel=parallel)
    if spec.mode in ("teal", "cats"):  # one token at a time; the If past sparse_max_tokens
        return [Variant(spec.mode, 1, MAX_TOKENS, decode)]  # runs ORT's thresholded FFN
    if spec.mode == "predictor":  # one token at a time, like teal; vl: lanes of the row dots
        return [Variant("predictor", 1, MAX_TOKENS, decode)]
    # exact, 1 token: the decode kernel with thresholds "exactly zero" (kernels/exact_decode.py:
    # whole rows of W1 streamed; faster than the row-block gemv1 it replaced, most for gated
    # FFNs: bench/bench_call_overhead.py, BENCHMARKS.md), or preferably its variant
    # that screens the neurons on a float16 copy of W1 (kernels/exact_screened.py); 2+ tokens: one kernel per token
    # count, W1 streamed once for all tokens of a tile
    # (first: preferred; the shim runs "decode" when W1 or B1 is not a constant initializer)
    screened = ([Variant("screened", 1, 1, decode)]
                if c.screen_exact and half_conversions and screenable(spec) else [])
    gemv = [*screened, Variant("decode", 1, 1, decode)] + [
        Variant(f"gemv{m}", m, m, Tiling(mr=m, nr1=nr1, nb=gemv_nb, nr3=nr3, vl=vl,
                                         parallel=parallel))
        for m in range(2, c.gemv_max_tokens + 1)]
    nr = lanes * gemm_nr_vectors
    gemm_nb = largest_divisor(spec.d_ff, max(nr, min(c.gemm_nb, c.pack_bytes // (4 * spec.d_in))))
    gemm = Tiling(mr=c.gemm_mr, nr1=largest_divisor(gemm_nb, nr), nb=gemm_nb,
                  nr3=largest_divisor(spec.d_out, nr), vl=vl, parallel=parallel, packed=True)
    gemm_packed = replace(gemm, pack_w2=True)
    first = c.gemv_max_tokens + 1
    variants = list(gemv)
    if spec.gated:
        # few tokens: gate first, WU rows read only for neurons some token of a tile needs
        stream = Tiling(mr=c.gemm_mr, nr1=nr1, nb=gemv_nb, nr3=gemm.nr3, vl=vl, parallel=parallel)
        variants.append(Variant("gemm_stream", first, c.gated_stream_max_tokens, stream))
        first = c.gated_stream_max_tokens + 1
    return [*variants, Variant("gemm", first, c.pack_w2_min_tokens - 1, gemm),
            Variant("gemm_packed", c.pack_w2_min_tokens, MAX_TOKENS, gemm_packed)]
