"""CUDA schedule family: tunables, the variant table and the TVM target for NVIDIA GPUs."""

from __future__ import annotations

from dataclasses import dataclass

from fffc.errors import CodegenError
from fffc.ops import KernelSpec

from ..kernels.sparse_ffn_cuda import CudaTiling, ceil_div
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


class Cuda(Family):
    name = "cuda"

    def __init__(self, config: Config | None = None):
        self.config = config or Config()

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

    def sparse_max_tokens(self, spec: KernelSpec) -> int:
        c = self.config
        return c.sparse_max_tokens_gated if spec.gated else c.sparse_max_tokens

    def variants(self, spec: KernelSpec, target: dict) -> list[Variant]:
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
