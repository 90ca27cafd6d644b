"""The CPU kernel variant tables shared by the x86 and arm families (only vector width and
register budget differ between them)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from fffc.contract.kernels import FffSpec, SparseSpec
from fffc.contract.modes import sparse

from ..kernels.exact_screened import SCREENED, screenable
from ..kernels.fff import WalkTiling
from ..kernels.pieces import largest_divisor
from ..kernels.sparse_ffn import Tiling
from .base import MAX_TOKENS, Crossovers, Family, Variant


@dataclass(frozen=True)
class CpuConfig(Crossovers):
    """Tunables of the CPU kernels (kernels/sparse_ffn.py and kernels/fff.py have the loops).

    The crossovers (where the compile does not time the kernels itself: ``--crossovers
    table``, or kernels for another CPU): exact skipping beats ONNX Runtime's dense FFN up
    to 2 tokens, dense or gated (bench/bench_kernels.py); the masked modes skip per token,
    re-reading the surviving rows for every token, so from 2 tokens ONNX Runtime's FFN runs
    (bench/bench_teal.py: its masked dense FFN was already faster there, and the original
    has fewer ops); the other ops' kernels serve every count (the base's 0)."""

    sparse_max_tokens: int = 2
    sparse_max_tokens_gated: int = 2
    masked_max_tokens: int = 1
    gemv_max_tokens: int = 2  # variants decode (1 token), gemv2..gemvN: exactly that many
    gemv_nr1_vectors: int = 8  # 8 independent FMA chains over one token
    gemv_nr3_vectors: int = 8
    gemv_tasks: int = 4  # neuron blocks of phase 1: long contiguous W1 row segments
    decode_vectors: int = 4  # split-K decode kernels (kernels/decode.py): vectors per step
    # over d_ff and d_out
    gemm_mr: int = 6  # tokens per tile in the blocked GEMM kernel
    gemm_nb: int = 64  # neurons per phase-1 task (packed panel ≤ pack_bytes)
    pack_bytes: int = 256 << 10  # on the stack, and in L2
    vl_vectors: int = 4  # up-projection dot: 4 independent chains per token
    gated_stream_max_tokens: int = 24  # gated, up to here: the gate-first up projection
    # beats the packed dense one (bench/bench_kernels.py)
    pack_w2_min_tokens: int = 48  # from here most W2 rows are read anyway: pack panels once
    serial_max_macs: int = 1 << 16  # d_in·d_ff below this: no threads (wake-up > work)
    screen_exact: bool = True  # exact, 1 token: the float16-screened kernel
    # (kernels/exact_screened.py; the shim keeps a float16 and a transposed copy of W1)
    fff_lanes: int = 16  # FastFeedForward: lanes of the row dot products and axpys
    fff_serial_max_tokens: int = 8  # one thread up to here: a walk costs less than waking
    # threads (bench/bench_fff.py)
    fff_level_block: int = 32  # level-synchronous blocks of this many tokens, from two blocks
    # (both cores busy) ...
    fff_level_min_walk_bytes: int = 1 << 20  # ... where the rows one token walks exceed a
    # core's L2, so token-by-token walks would refetch every tree's upper rows
    # (bench/bench_fff_variants.py)


def cpu_variants(spec: SparseSpec, c: CpuConfig, lanes: int, gemm_nr_vectors: int,
                 half_conversions: bool = True) -> list[Variant]:
    """SparseFFN's variants covering 1..MAX_TOKENS for a CPU with ``lanes`` fp32 per vector
    register (``half_conversions``: float16 loads widen in one instruction: x86 F16C, every
    aarch64)."""
    parallel = spec.d_in * spec.d_ff >= c.serial_max_macs
    vl = largest_divisor(spec.d_in, lanes * c.vl_vectors)
    gemv_nb = largest_divisor(spec.d_ff, max(lanes, spec.d_ff // c.gemv_tasks))
    nr1 = largest_divisor(gemv_nb, lanes * c.gemv_nr1_vectors)
    nr3 = largest_divisor(spec.d_out, lanes * c.gemv_nr3_vectors)
    decode = Tiling(mr=1, nr1=largest_divisor(gemv_nb, lanes * c.decode_vectors), nb=gemv_nb,
                    nr3=largest_divisor(spec.d_out, lanes * c.decode_vectors), vl=vl,
                    parallel=parallel)
    if sparse(spec.mode).masked:  # one token at a time; the If past the crossover runs
        return [Variant(str(spec.mode), 1, MAX_TOKENS, decode)]  # ORT's original FFN
    # exact, 1 token: the decode kernel with thresholds "exactly zero" (kernels/exact_decode.py:
    # whole rows of W1 streamed), and preferably its variant that screens the neurons on a
    # float16 copy of W1 (kernels/exact_screened.py; the shim runs "decode" when W1 or B1 is
    # not a constant initializer); 2+ tokens: one kernel per token count, W1 streamed once
    # for all tokens of a tile
    screened = ([Variant(SCREENED, 1, 1, decode, alternative=True)]
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


def fff_variants(spec: FffSpec, c: CpuConfig) -> list[Variant]:
    """FastFeedForward's variants on CPUs: one thread for a few tokens, parallel walks
    beyond, and level-synchronous blocks for many tokens of forests too big to stay
    cached."""
    walked = spec.trees * (spec.depth + 1) * (spec.d_in + spec.d_out) * 4
    serial = Variant("walk_serial", 1, c.fff_serial_max_tokens,
                     WalkTiling(c.fff_lanes, parallel=False))
    walk = WalkTiling(c.fff_lanes)
    if walked <= c.fff_level_min_walk_bytes:
        return [serial, Variant("walk", c.fff_serial_max_tokens + 1, MAX_TOKENS, walk)]
    level_min = 2 * c.fff_level_block
    return [serial, Variant("walk", c.fff_serial_max_tokens + 1, level_min - 1, walk),
            Variant("level", level_min, MAX_TOKENS,
                    WalkTiling(c.fff_lanes, tokens=c.fff_level_block, level=True))]


class CpuFamily(Family):
    """A CPU family: its SparseFFN variants from ``cpu_variants``, its FastFeedForward
    variants from ``fff_variants``."""

    config: CpuConfig

    def fff_variants(self, spec: FffSpec) -> list[Variant]:
        return fff_variants(spec, self.config)
