"""Structured linear layers of Wei et al. 2024 ("Building on Efficient Foundations", the
CLAIRE-Labo/StructuredFFN release), in forms users can train and export to ONNX.

Parameter names and shapes follow the release so checkpoints map one to one:
``LowRankLinear`` (``lr1`` [r, d_in], ``lr2`` [d_out, r]), ``BlockDenseLinear`` (``blkdiag``
[k, r/k, d_in/k] then ``lr`` [d_out, r]) and ``BlockShuffleLinear`` (Monarch: ``blkdiag1``,
a shuffle, ``blkdiag2``). Forwards use ``reshape(-1, …)`` instead of the release's
``np.prod(batch_shape)`` so exports keep a dynamic token count; they are what fffc's passes
pattern-match. ``to_dense()`` gives the equivalent [d_out, d_in] weight (tests, conversion).

Self-guided training (the paper's §4): with ``guided=True`` a dense ``guide`` weight starts at
``to_dense()`` and the output is alpha·dense + (1−alpha)·structured, alpha going 1 → 0 by
``guide_schedule``; ``close_guide()`` then drops the guide so exports hold the structured
path only.
"""

from __future__ import annotations

import math

import torch
from torch import nn

_ACTIVATIONS = ("gelu", "relu", "silu", "gelu_tanh")
_KINDS = ("lowrank", "blockdense", "blockshuffle", "dense")


def guide_schedule(step: int, total_steps: int, kind: str = "cosine") -> float:
    """Guide weight alpha at ``step``: 1 at step 0, 0 from ``total_steps`` on (the release's
    ``CosineTempDecay``/``LinearTempDecay`` without warm-up)."""
    if kind not in ("cosine", "linear"):
        raise ValueError(f"kind must be 'cosine' or 'linear', got {kind!r}")
    t = 1.0 if total_steps <= 0 else min(max(step / total_steps, 0.0), 1.0)
    return 1.0 - t if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * t))


def _orthogonalize(w: torch.Tensor) -> torch.Tensor:
    """Closest matrix with orthonormal rows or columns (U·Vh of the SVD), the release's
    ``post_init="ortho"``."""
    u, _, vh = torch.linalg.svd(w, full_matrices=False)
    return u @ vh


class _StructuredLinear(nn.Module):
    """Bias and self-guided training shared by the structured layers; subclasses define
    ``_structured`` (no bias) and ``to_dense``."""

    def __init__(self, d_in: int, d_out: int, bias: bool) -> None:
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        if bias:
            bound = 1.0 / math.sqrt(d_in)  # nn.Linear's; non-zero so exports keep the Add
            self.bias = nn.Parameter(torch.empty(d_out).uniform_(-bound, bound))
        else:
            self.register_parameter("bias", None)
        self.register_parameter("guide", None)
        self.register_buffer("alpha", None)
        self._alpha = 0.0  # Python mirror of ``alpha``: branches stay out of traced graphs
        self.register_load_state_dict_post_hook(_sync_alpha)

    def _structured(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def to_dense(self) -> torch.Tensor:
        """The equivalent dense weight [d_out, d_in] of the structured path."""
        raise NotImplementedError

    def _init_guide(self, guided: bool) -> None:
        if guided:
            self.guide = nn.Parameter(self.to_dense().detach().clone())
            self.register_buffer("alpha", torch.tensor(1.0))
            self._alpha = 1.0

    @property
    def guided(self) -> bool:
        """Whether the dense guide is still present."""
        return self.guide is not None

    @torch.no_grad()
    def set_guide(self, alpha: float) -> None:
        """Set the guide's share alpha ∈ [0, 1] (e.g. ``guide_schedule(step, total)``)."""
        if self.guide is None:
            raise RuntimeError("no guide: construct with guided=True (or it was closed)")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha.fill_(alpha)
        self._alpha = float(alpha)

    def close_guide(self) -> None:
        """Drop the guide weight and alpha (rebuild optimizers that held it)."""
        self.guide = None
        self.alpha = None
        self._alpha = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Structured path (+ bias); while guided, alpha·x·guideᵀ + (1−alpha)·structured."""
        out = self._structured(x)
        if self.guide is not None and self._alpha != 0.0:
            out = self.alpha * torch.matmul(x, self.guide.t()) + (1.0 - self.alpha) * out
        return out if self.bias is None else out + self.bias


def _sync_alpha(module: nn.Module, _incompatible: object) -> None:
    if isinstance(module, _StructuredLinear) and module.alpha is not None:
        module._alpha = float(module.alpha)


class LowRankLinear(_StructuredLinear):
    """y = (x·Vᵀ)·Uᵀ + b with V = ``lr1`` [rank, d_in], U = ``lr2`` [d_out, rank]; initialised
    from the rank-r SVD of a random dense matrix (the release's ``post_init="svd"``)."""

    def __init__(self, d_in: int, d_out: int, rank: int, bias: bool = True,
                 guided: bool = False) -> None:
        super().__init__(d_in, d_out, bias)
        if not 0 < rank <= min(d_in, d_out):
            raise ValueError(f"rank must be in [1, {min(d_in, d_out)}], got {rank}")
        self.rank = rank
        with torch.no_grad():
            dense = torch.randn(d_out, d_in) / math.sqrt(d_in)
            u, s, vh = torch.linalg.svd(dense, full_matrices=False)
            sqrt_s = s[:rank].sqrt()
            self.lr1 = nn.Parameter(sqrt_s[:, None] * vh[:rank])
            self.lr2 = nn.Parameter(u[:, :rank] * sqrt_s)
        self._init_guide(guided)

    def _structured(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(torch.matmul(x, self.lr1.t()), self.lr2.t())

    def to_dense(self) -> torch.Tensor:
        return self.lr2 @ self.lr1

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_out={self.d_out}, rank={self.rank}, bias={self.bias is not None}"


class BlockDenseLinear(_StructuredLinear):
    """Block-diagonal ``blkdiag`` [blocks, rank/blocks, d_in/blocks] then dense ``lr``
    [d_out, rank]; ``form`` picks the exported block product: ``"bmm"`` (the release's
    ``block_dense_bmm``) or ``"einsum"``. Orthogonal init per block."""

    def __init__(self, d_in: int, d_out: int, rank: int, blocks: int, bias: bool = True,
                 form: str = "bmm", guided: bool = False) -> None:
        super().__init__(d_in, d_out, bias)
        if d_in % blocks or rank % blocks:
            raise ValueError(f"d_in ({d_in}) and rank ({rank}) must be multiples of blocks ({blocks})")
        if form not in ("bmm", "einsum"):
            raise ValueError(f"form must be 'bmm' or 'einsum', got {form!r}")
        self.rank, self.blocks, self.form = rank, blocks, form
        p, q = d_in // blocks, rank // blocks
        with torch.no_grad():
            blk = torch.randn(blocks, q, p) / math.sqrt(p)
            self.blkdiag = nn.Parameter(torch.stack([_orthogonalize(b) for b in blk]))
            self.lr = nn.Parameter(_orthogonalize(torch.randn(d_out, rank) / math.sqrt(rank)))
        self._init_guide(guided)

    def _structured(self, x: torch.Tensor) -> torch.Tensor:
        shape, p = x.shape, self.d_in // self.blocks
        if self.form == "bmm":
            h = x.reshape(-1, self.blocks, p).transpose(0, 1)  # [k, N, p]
            h = torch.bmm(h, self.blkdiag.transpose(-1, -2))  # [k, N, q]
            h = h.transpose(0, 1).reshape(-1, self.rank)
        else:
            h = torch.einsum("bkp,kqp->bkq", x.reshape(-1, self.blocks, p), self.blkdiag)
            h = h.reshape(-1, self.rank)
        return torch.matmul(h, self.lr.t()).reshape(*shape[:-1], self.d_out)

    def to_dense(self) -> torch.Tensor:
        return self.lr @ torch.block_diag(*self.blkdiag.unbind(0))

    def extra_repr(self) -> str:
        return (f"d_in={self.d_in}, d_out={self.d_out}, rank={self.rank}, blocks={self.blocks}, "
                f"form={self.form}, bias={self.bias is not None}")


class BlockShuffleLinear(_StructuredLinear):
    """Monarch: block-diagonal ``blkdiag1`` [k, q, p], the (r, m) → (m, r) shuffle,
    block-diagonal ``blkdiag2`` [m, s, r], output in (s, m) order — the release's
    ``block_shuffle_bmm`` with k = m = ``blocks``; ``form="einsum"`` writes both block
    products (and the shuffle, by the letter order) as ``torch.einsum``. Orthogonal init per
    block."""

    def __init__(self, d_in: int, d_out: int, blocks: int, bias: bool = True,
                 guided: bool = False, form: str = "bmm") -> None:
        super().__init__(d_in, d_out, bias)
        if d_in % blocks or d_out % blocks:
            raise ValueError(f"d_in ({d_in}) and d_out ({d_out}) must be multiples of blocks ({blocks})")
        if form not in ("bmm", "einsum"):
            raise ValueError(f"form must be 'bmm' or 'einsum', got {form!r}")
        self.blocks, self.form = blocks, form
        b_in, b_out = d_in // blocks, d_out // blocks
        s1, s2 = ((b_in, b_in), (b_out, b_in)) if d_in < d_out else ((b_out, b_in), (b_out, b_out))
        with torch.no_grad():
            self.blkdiag1 = nn.Parameter(torch.stack(
                [_orthogonalize(torch.randn(*s1)) for _ in range(blocks)]))
            self.blkdiag2 = nn.Parameter(torch.stack(
                [_orthogonalize(torch.randn(*s2)) for _ in range(blocks)]))
        self._init_guide(guided)

    def _structured(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        k, _, p = self.blkdiag1.shape
        m, s, r = self.blkdiag2.shape
        if self.form == "einsum":
            h = torch.einsum("nkp,kqp->nkq", x.reshape(-1, k, p), self.blkdiag1)
            h = torch.einsum("nrm,msr->nsm", h.reshape(-1, r, m), self.blkdiag2)
            return h.reshape(*shape[:-1], s * m)
        h = x.reshape(-1, k, p).transpose(0, 1)
        h = torch.bmm(h, self.blkdiag1.transpose(-1, -2))  # [k, N, q]
        h = h.transpose(0, 1).reshape(-1, r, m).transpose(-1, -2).transpose(0, 1)  # [m, N, r]
        h = torch.bmm(h, self.blkdiag2.transpose(-1, -2))  # [m, N, s]
        return h.permute(1, 2, 0).reshape(*shape[:-1], s * m)

    def to_dense(self) -> torch.Tensor:
        m, s, r = self.blkdiag2.shape
        w1 = torch.block_diag(*self.blkdiag1.unbind(0))  # [k·q, d_in], rows j = r_i·m + m_i
        w1 = w1.reshape(r, m, self.d_in).transpose(0, 1).reshape(m * r, self.d_in)
        w2 = torch.block_diag(*self.blkdiag2.unbind(0)) @ w1  # rows m_i·s + s_i
        return w2.reshape(m, s, self.d_in).transpose(0, 1).reshape(s * m, self.d_in)

    def extra_repr(self) -> str:
        return (f"d_in={self.d_in}, d_out={self.d_out}, blocks={self.blocks}, "
                f"form={self.form}, bias={self.bias is not None}")


class StructuredMLP(nn.Module):
    """fc1 → activation → fc2 with structured (or dense) linears, the release's MLP.

    ``rank`` (lowrank, blockdense) defaults to min(d_model, d_ff)/4 (a multiple of
    ``blocks`` for blockdense); ``guided`` makes both linears self-guided (not for dense)."""

    def __init__(self, d_model: int, d_ff: int, kind: str = "lowrank", rank: int | None = None,
                 blocks: int = 4, activation: str = "gelu", bias: bool = True,
                 guided: bool = False, form: str = "bmm") -> None:
        super().__init__()
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")
        if rank is None:
            rank = min(d_model, d_ff) // 4
            if kind == "blockdense":
                rank = max(blocks, rank // blocks * blocks)
        self.d_model, self.d_ff, self.kind, self.activation = d_model, d_ff, kind, activation
        self.rank = rank if kind in ("lowrank", "blockdense") else None
        self.fc1 = self._linear(d_model, d_ff, rank, blocks, bias, guided, form)
        self.fc2 = self._linear(d_ff, d_model, rank, blocks, bias, guided, form)

    def _linear(self, d_in: int, d_out: int, rank: int, blocks: int, bias: bool, guided: bool,
                form: str) -> nn.Module:
        if self.kind == "lowrank":
            return LowRankLinear(d_in, d_out, rank, bias, guided=guided)
        if self.kind == "blockdense":
            return BlockDenseLinear(d_in, d_out, rank, blocks, bias, form=form, guided=guided)
        if self.kind == "blockshuffle":
            return BlockShuffleLinear(d_in, d_out, blocks, bias, guided=guided, form=form)
        if guided:
            raise ValueError("guided=True needs a structured kind")
        return nn.Linear(d_in, d_out, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if self.activation == "gelu":
            h = nn.functional.gelu(h)
        elif self.activation == "gelu_tanh":
            h = nn.functional.gelu(h, approximate="tanh")
        elif self.activation == "relu":
            h = nn.functional.relu(h)
        else:
            h = nn.functional.silu(h)
        return self.fc2(h)

    def set_guide(self, alpha: float) -> None:
        """``set_guide`` on both linears."""
        self.fc1.set_guide(alpha)
        self.fc2.set_guide(alpha)

    def close_guide(self) -> None:
        """``close_guide`` on both linears."""
        self.fc1.close_guide()
        self.fc2.close_guide()

    def params_fraction(self) -> float:
        """Parameters of fc1 and fc2 (guides excluded) over those of the dense MLP."""
        n = sum(p.numel() for name, p in self.named_parameters()
                if not name.endswith("guide"))
        n_bias = (self.d_ff + self.d_model) if self.fc1.bias is not None else 0
        return n / (2 * self.d_model * self.d_ff + n_bias)
