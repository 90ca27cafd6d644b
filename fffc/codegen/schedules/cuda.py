"""CUDA schedule family: tunables, the variant tables and the TVM target for NVIDIA GPUs."""

from __future__ import annotations

from dataclasses import dataclass

from fffc.contract.errors import CodegenError
from fffc.contract.int4 import Int4Weights
from fffc.contract.kernels import FffSpec, SparseSpec, StructuredSpec
from fffc.contract.kinds import SparseMode
from fffc.contract.modes import sparse

from ..cuda_toolkit import arch_number
from ..kernels.exact_q4_cuda import q4_cuda_tiling
from ..kernels.fff_cuda import FffTiling
from ..kernels.pieces import ceil_div
from ..kernels.sparse_ffn_cuda import CudaTiling
from ..kernels.structured_ffn_cuda import StructuredTiling
from .base import MAX_TOKENS, Crossovers, Family, Variant

INT4_TOKENS = (1, 2, 4, 8)  # int4 exact: tokens per block of each variant (8: the most
# whose down sums stay in registers)


@dataclass(frozen=True)
class Config(Crossovers):
    """Tunables of the CUDA SparseFFN and FastFeedForward kernels
    (kernels/sparse_ffn_cuda.py, kernels/fff_cuda.py have the loops).

    The crossovers (never measured at compile time: the build machine has no GPU): past 16
    tokens (8 gated) ONNX Runtime's dense FFN on cuBLAS is faster than exact skipping
    (bench/bench_cuda.py); the masked modes take one token per block, re-reading the
    surviving rows per token, so from 2 tokens ONNX Runtime's FFN runs, as on CPUs; the
    other ops' kernels serve every count (the base's 0)."""

    sparse_max_tokens: int = 16
    sparse_max_tokens_gated: int = 8
    masked_max_tokens: int = 1
    decode_tokens: tuple[int, ...] = (1, 4, 8, 16)  # decode variants: up to this many tokens
    decode_max_tokens: int = 256  # the last decode variant (16-token tiles) serves up to
    decode_max_tokens_gated: int = 48  # here; beyond, the dlight GEMMs (bench/bench_cuda.py)
    proj_threads: int = 256  # neurons × d_in slices per proj block
    down_threads: int = 256  # output columns per down block
    target_blocks: int = 528  # about 4 blocks per SM of a 132-SM H100: enough to hide latency
    min_chunk: int = 32  # neurons per down block at least (fewer: launch cost dominates)
    min_k_slice: int = 128  # d_in per proj block at least
    proj_neurons_per_thread: int = 4  # > 1 token: each X value feeds 4 neurons
    up_neurons_per_warp: int = 2  # > 1 token: one staging of X serves 16 neurons
    shared_bytes: int = 32 << 10  # per-block reduction buffers (48 KiB static at most)
    default_arch: str = "sm_90"
    archs: tuple[str, ...] = ("sm_80", "sm_90")  # cubins without --arch (+ PTX of the newest)
    archs_if_compiled: tuple[str, ...] = ()  # ... and these where the toolkit compiles them
    gemm: tuple[tuple[str, int], ...] = ()  # dlight Matmul overrides for the many-token GEMMs
    fff_threads: int = 128  # FastFeedForward: threads per block (one block per token) ...
    fff_threads_wide: int = 256  # ... and for d_in of at least fff_wide_d
    fff_wide_d: int = 1024


@dataclass(frozen=True)
class StructuredConfig:
    """Tunables of the CUDA StructuredFFN kernels (kernels/structured_ffn_cuda.py has the
    loops); sizes follow the SparseFFN kernels' choices."""

    gemv_tokens: tuple[int, ...] = (1, 4, 16)  # gemv variants' tokens per block; each serves
    # the counts above the previous one up to its own (16: the last gemv count)
    gemv_threads: int = 256  # per gemv block: columns × warp rows of the reduction
    gemv_columns: int = 32  # output columns per gemv block: one 128-byte segment per warp
    gemv_stage_floats: int = 4096  # tokens × inputs staged in shared memory (16 KiB)
    target_blocks: int = 528  # split-K up to about 4 blocks per SM of a 132-SM H100
    min_k_slice: int = 64  # inputs per split at least (fewer: the partial sums dominate)
    max_splits: int = 16  # partial sums per value that the next stage adds up
    tile_small_max_tokens: int = 64  # tile32 (32-token tiles) up to here, then tile64
    tile_small_split: bool = True  # tile32 splits K like gemv (1-2 token tiles: a narrow
    # stage, e.g. LowRank's r = 256 columns, would otherwise run on 4 blocks)
    tile_cols: int = 64  # columns per tile (narrower for narrow blocks)
    tile_k: int = 16  # reduction step of the tiles
    thread_cols: int = 4  # outputs per thread: thread_cols columns × 2 (tile32) or 4 rows


# Jetson (an aarch64 host): Orin is sm_87 (CUDA 11.4+); Thor is sm_110 from CUDA 13 (CUDA
# 12.8/12.9 called it sm_101, and Thor's JetPack 7 ships a CUDA 13 driver, so a CUDA 12
# fatbin reaches Thor through its compute_87 PTX instead). AGX Orin has 16 SMs, Thor 20:
# about 4 blocks per SM, as the H100 figure above (not measured on a Jetson).
JETSON = Config(default_arch="sm_87", archs=("sm_87",), archs_if_compiled=("sm_110",),
                target_blocks=80)
JETSON_STRUCTURED = StructuredConfig(target_blocks=80)


class Cuda(Family):
    name = "cuda"
    narrow_weights = True
    int4_weights = True
    int8_weights = True
    merged_path = False
    device = True

    def __init__(self, cpu: Family, config: Config | None = None,
                 structured: StructuredConfig | None = None, cpu_mcpu: str | None = None):
        """``cpu``: the family of the kernels for nodes ONNX Runtime places on the CPU;
        ``cpu_mcpu``: the LLVM CPU they are built for without --mcpu (None: ``cpu``'s
        default)."""
        super().__init__(config or Config(), cpu)
        self.structured = structured or StructuredConfig()
        self.cpu_mcpu = cpu_mcpu

    def default_archs(self, compiled: frozenset[int]) -> tuple[str, ...]:
        """The cubins built without --arch: ``config.archs``, and ``archs_if_compiled`` of
        them whose number is in ``compiled`` (the toolkit's arch numbers)."""
        extra = (a for a in self.config.archs_if_compiled if arch_number(a) in compiled)
        return (*self.config.archs, *extra)

    def target(self, mcpu: str | None, mattr: tuple[str, ...] = ()) -> dict:
        return {"kind": "cuda", "arch": mcpu or self.config.default_arch}

    def tiling(self, spec: SparseSpec, mr: int) -> CudaTiling:
        c = self.config
        nt = 32
        vn = 1 if mr == 1 else c.proj_neurons_per_thread  # many tokens: reuse X across neurons
        col_blocks = ceil_div(spec.d_ff, nt * vn)
        kb = max(1, min(ceil_div(c.target_blocks, col_blocks), spec.d_in // c.min_k_slice))
        kb = ceil_div(spec.d_in, ceil_div(spec.d_in, kb))  # no empty slice
        no = min(c.down_threads, 32 * ceil_div(spec.d_out, 32))
        out_blocks = ceil_div(spec.d_out, no)
        splits = max(1, min(ceil_div(c.target_blocks, out_blocks), spec.d_ff // c.min_chunk))
        splits = ceil_div(spec.d_ff, ceil_div(spec.d_ff, splits))  # no empty chunk
        # shared memory of the proj reduction (ks·vn·mr·nt floats) within the budget
        ks = max(1, min(c.proj_threads // nt, c.shared_bytes // (4 * vn * mr * nt)))
        npw = 1 if mr == 1 else max(1, min(c.up_neurons_per_warp,
                                           c.shared_bytes // (2 * 4 * 8 * mr * 32)))
        return CudaTiling(mr=mr, nt=nt, ks=ks, kb=kb, vn=vn, wpb=8, npw=npw, no=no,
                          splits=splits)

    def masked_tiling(self, spec: SparseSpec) -> CudaTiling:
        """Modes teal, cats, predictor (kernels/sparse_ffn_cuda_masked.py): one token per
        block; ``kb`` splits d_in of the predictor's ``x·PA`` (only rank/32 column blocks)."""
        c = self.config
        base = self.tiling(spec, 1)
        kb = 1
        if spec.mode is SparseMode.PREDICTOR:
            kb = max(1, min(ceil_div(c.target_blocks, max(1, ceil_div(spec.rank, 32))),
                            spec.d_in // c.min_k_slice, 8))  # the score kernel adds the kb
            # partials for every z it reads: more would cost more than the PB reads
            kb = ceil_div(spec.d_in, ceil_div(spec.d_in, kb))  # no empty slice
        return CudaTiling(mr=1, nt=32, ks=c.proj_threads // 32, kb=kb, wpb=8, no=base.no,
                          splits=base.splits)

    def sparse_variants(self, spec: SparseSpec, target: dict) -> list[Variant]:
        if spec.bits:  # int4 or int8 codes: a block of mr tokens reads each weight once;
            # the last tiles every count (the If past the crossover runs ONNX Runtime's
            # MatMulNBits) (int8_x: x rounded to int8 per block in the rows kernel, integer
            # gate/up dots)
            fmt = Int4Weights(spec.block, spec.zero_points, spec.int8_x, spec.bits)
            out, first = [], 1
            for i, m in enumerate(INT4_TOKENS):
                last = MAX_TOKENS if i == len(INT4_TOKENS) - 1 else m
                out.append(Variant(f"int{int(spec.bits)}_{m}", first, last,
                                   q4_cuda_tiling(spec, fmt, m)))
                first = last + 1
            return out
        if sparse(spec.mode).masked:  # grids over tokens: any count is correct; the
            # artifact's If runs ORT's original FFN past masked_max_tokens
            return [Variant(str(spec.mode), 1, MAX_TOKENS, self.masked_tiling(spec))]
        if spec.mode is not SparseMode.EXACT:
            raise CodegenError(f"no CUDA kernels for SparseFFN mode {str(spec.mode)!r}")
        out, first = [], 1
        tiles = self.config.decode_tokens
        for m in tiles:
            top = (self.config.decode_max_tokens_gated if spec.gated
                   else self.config.decode_max_tokens)
            last = max(m, top) if m == tiles[-1] else m
            out.append(Variant(f"decode{m}", first, last, self.tiling(spec, m)))
            first = last + 1
        return [*out, Variant("gemm", first, MAX_TOKENS,
                                  CudaTiling(gemm=True, gemm_config=self.config.gemm))]

    def fff_variants(self, spec: FffSpec) -> list[Variant]:
        """One kernel, a block per token, for every token count."""
        c = self.config
        threads = c.fff_threads_wide if spec.d_in >= c.fff_wide_d else c.fff_threads
        return [Variant("walk", 1, MAX_TOKENS, FffTiling(threads=threads))]

    def structured_variants(self, spec: StructuredSpec, counted: bool = False) -> list[Variant]:
        """StructuredFFN's CUDA variants, covering 1..MAX_TOKENS without gaps or overlaps:
        gemv<mr> for few tokens, then tiled GEMM stages (tile32, tile64). ``counted``: the
        "counted_" variants (rows ≥ CNT[0] untouched: a RoutedFFN's FFN on its gathered rows)."""
        c = self.structured
        prefix = "counted_" if counted else ""
        out, first = [], 1
        for mr in c.gemv_tokens:
            tiling = StructuredTiling(counted=counted, mr=mr, nt=c.gemv_columns,
                                      threads=c.gemv_threads, stage_floats=c.gemv_stage_floats,
                                      target_blocks=c.target_blocks, min_k_slice=c.min_k_slice,
                                      max_splits=c.max_splits)
            out.append(Variant(f"{prefix}gemv{mr}", first, mr, tiling))
            first = mr + 1
        for bm, tm, last, split in ((32, 2, c.tile_small_max_tokens, c.tile_small_split),
                                    (64, 4, MAX_TOKENS, False)):
            tiling = StructuredTiling(tile=True, counted=counted, bm=bm, bn=c.tile_cols,
                                      bk=c.tile_k, tm=tm, tn=c.thread_cols, tile_split=split,
                                      target_blocks=c.target_blocks, min_k_slice=c.min_k_slice,
                                      max_splits=c.max_splits)
            out.append(Variant(f"{prefix}tile{bm}", first, last, tiling))
            first = last + 1
        return out
