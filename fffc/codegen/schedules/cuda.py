"""CUDA schedule family: tunables, the variant table and the TVM target for NVIDIA GPUs."""

from __future__ import annotations

from dataclasses import dataclass

from fffc.contract.errors import CodegenError
from fffc.contract.ops import KernelSpec

from ..kernels.sparse_ffn_cuda import CudaTiling, ceil_div
from ..kernels.structured_ffn_cuda import StructuredTiling
from .base import MAX_TOKENS, Family, Variant


@dataclass(frozen=True)
class Config:
    """Tunables of the CUDA SparseFFN kernels (kernels/sparse_ffn_cuda.py has the loops)."""

    decode_tokens: tuple[int, ...] = (1, 4, 8, 16)  # decode variants: up to this many tokens
    decode_max_tokens: int = 256  # the last decode variant (16-token tiles) serves up to here
    decode_max_tokens_gated: int = 48  # (bench_cuda.py --also decode16,gemm on an H100: the
    # dlight GEMMs win from 512 tokens for ReLU 768/3072, from 64 for dReLU 4096/11008)
    sparse_max_tokens: int = 16  # past this cuBLAS (ORT's dense FFN) wins: H100, fp32, ReLU
    sparse_max_tokens_gated: int = 8  # 768/3072 1.13x at 16 tokens, 0.88x at 32; dReLU
    # 4096/11008 1.18x at 8, 0.88x at 16
    masked_max_tokens: int = 1  # modes teal, cats, predictor: one token per block re-reads
    # the surviving rows per token, so from 2 tokens ORT's masked dense FFN runs (as on CPUs;
    # not measured on a GPU)
    proj_threads: int = 256  # neurons × d_in slices per proj block
    down_threads: int = 256  # output columns per down block
    target_blocks: int = 528  # about 4 blocks per SM of a 132-SM H100: enough to hide latency
    min_chunk: int = 32  # neurons per down block at least (fewer: launch cost dominates)
    min_k_slice: int = 128  # d_in per proj block at least
    proj_neurons_per_thread: int = 4  # > 1 token: each X value feeds 4 neurons
    up_neurons_per_warp: int = 2  # > 1 token: one staging of X serves 16 neurons
    shared_bytes: int = 32 << 10  # per-block reduction buffers (48 KiB static at most)
    default_arch: str = "sm_90"
    gemm: tuple[tuple[str, int], ...] = ()  # dlight Matmul overrides for the many-token GEMMs


@dataclass(frozen=True)
class StructuredConfig:
    """Tunables of the CUDA StructuredFFN kernels (kernels/structured_ffn_cuda.py has the
    loops). Not measured on a GPU yet: sizes follow the SparseFFN kernels' H100 choices."""

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


class Cuda(Family):
    name = "cuda"
    narrow_weights = True
    merged_path = False
    cpu_family = "x86"  # CPU-placed nodes of a GPU server run x86 kernels

    def __init__(self, config: Config | None = None,
                 structured: StructuredConfig | None = None):
        self.config = config or Config()
        self.structured = structured or StructuredConfig()

    def target(self, mcpu: str | None, mattr: tuple[str, ...] = ()) -> dict:
        return {"kind": "cuda", "arch": mcpu or self.config.default_arch}

    def tiling(self, spec: KernelSpec, mr: int) -> CudaTiling:
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

    def masked_tiling(self, spec: KernelSpec) -> CudaTiling:
        """Modes teal, cats, predictor (kernels/sparse_ffn_cuda_masked.py): one token per
        block; ``kb`` splits d_in of the predictor's ``x·PA`` (only rank/32 column blocks)."""
        c = self.config
        base = self.tiling(spec, 1)
        kb = 1
        if spec.mode == "predictor":
            kb = max(1, min(ceil_div(c.target_blocks, max(1, ceil_div(spec.rank, 32))),
                            spec.d_in // c.min_k_slice, 8))  # the score kernel adds the kb
            # partials for every z it reads: more would cost more than the PB reads
            kb = ceil_div(spec.d_in, ceil_div(spec.d_in, kb))  # no empty slice
        return CudaTiling(mr=1, nt=32, ks=c.proj_threads // 32, kb=kb, wpb=8, no=base.no,
                          splits=base.splits)

    def sparse_max_tokens(self, spec: KernelSpec) -> int:
        c = self.config
        if spec.mode in ("teal", "cats", "predictor"):
            return c.masked_max_tokens
        return c.sparse_max_tokens_gated if spec.gated else c.sparse_max_tokens

    def variants(self, spec: KernelSpec, target: dict) -> list[Variant]:
        if spec.mode in ("teal", "cats", "predictor"):  # grids over tokens: any count is
            # correct; the artifact's If runs ORT's masked FFN past sparse_max_tokens
            return [Variant(spec.mode, 1, MAX_TOKENS, self.masked_tiling(spec))]
        if spec.mode != "exact":
            raise CodegenError(f"no CUDA kernels for SparseFFN mode {spec.mode!r} yet")
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

    def structured_variants(self, spec: KernelSpec, counted: bool = False) -> list[Variant]:
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
