"""Mixture-of-Depths around an FFN (Raposo et al. 2024, arXiv 2404.02258), static export form.

A linear router scores every token; the top k = max(1, int(``capacity``·S)) tokens of each
sequence go through the FFN, in causal order, and their update is scaled by the router weight
and scattered back:
TopK → sort indices → Gather → FFN → Mul → ScatterElements(add) — the graph fffc's passes
match. Top-k over the sequence is not causal, so decoding uses the paper's auxiliary
predictor: ``aux`` (trained by ``aux_loss`` with BCE on top-k membership, inputs detached)
decides per token in ``forward_causal``.

k is computed with ``torch.sym_int``/``sym_max``, so the dynamo exporter with a dynamic
sequence axis exports the computation (Shape → Cast → Mul → Cast → Max → TopK) and the model
stays right at every length; with ``int()`` it would bake the k of the example input into
the graph. The TorchScript exporter always bakes k: export with it at a fixed length only.
"""

from __future__ import annotations

import torch
from torch import nn


class MoDFFN(nn.Module):
    """Route the top ``capacity`` share of tokens of x [B, S, d] through ``ffn``.

    ``combine="paper"``: selected tokens get x + r·ffn(x), others stay x. ``"residual_block"``
    is what wrapping a block that adds its own residual gives: r·(x + ffn(x)) added to x, i.e.
    (1+r)·x + r·ffn(x) on selected tokens. ``ffn`` is always residual-free here.
    """

    def __init__(self, ffn: nn.Module, d_model: int, capacity: float = 0.125,
                 combine: str = "paper") -> None:
        super().__init__()
        if combine not in ("paper", "residual_block"):
            raise ValueError(f"combine must be 'paper' or 'residual_block', got {combine!r}")
        if not 0.0 < capacity <= 1.0:
            raise ValueError(f"capacity must be in (0, 1], got {capacity}")
        self.ffn, self.d_model, self.capacity, self.combine = ffn, d_model, capacity, combine
        self.router = nn.Linear(d_model, 1, bias=False)
        self.aux = nn.Linear(d_model, 1)

    def k(self, seq_len: int | torch.SymInt) -> int | torch.SymInt:
        """Tokens routed per sequence of ``seq_len`` tokens (symbolic under torch.export)."""
        return torch.sym_max(1, torch.sym_int(self.capacity * seq_len))

    def _update(self, xs: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """What the selected tokens ``xs`` (router weights ``w`` [..., 1]) add to x."""
        delta = self.ffn(xs)
        return w * (delta if self.combine == "paper" else xs + delta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Top-k routing per sequence (training and prefill; not causal)."""
        seq_len, d = x.shape[1], x.shape[2]
        r = self.router(x).squeeze(-1)  # [B, S]
        _, index = torch.topk(r, self.k(seq_len), dim=1, sorted=False)
        index, _ = torch.sort(index, dim=1)  # causal order
        index_d = index.unsqueeze(-1).expand(-1, -1, d)
        xs = torch.gather(x, 1, index_d)
        w = torch.gather(r, 1, index).unsqueeze(-1)
        return torch.scatter_add(x, 1, index_d, self._update(xs, w))

    @torch.no_grad()
    def topk_mask(self, x: torch.Tensor) -> torch.Tensor:
        """Bool [B, S]: the tokens ``forward`` routes."""
        r = self.router(x).squeeze(-1)
        index = torch.topk(r, self.k(x.shape[1]), dim=1).indices
        return torch.zeros_like(r, dtype=torch.bool).scatter_(1, index, True)

    def aux_loss(self, x: torch.Tensor) -> torch.Tensor:
        """BCE of the causal predictor against top-k membership (no gradient to x or the
        router)."""
        target = self.topk_mask(x).to(x.dtype)
        logits = self.aux(x.detach()).squeeze(-1)
        return nn.functional.binary_cross_entropy_with_logits(logits, target)

    def forward_causal(self, x: torch.Tensor) -> torch.Tensor:
        """Decode form: route a token iff sigmoid(aux(x)) > 0.5; the FFN runs on routed tokens
        only, combined as in ``forward``."""
        route = torch.sigmoid(self.aux(x).squeeze(-1)) > 0.5
        y = x.clone()
        xs = x[route]  # [n, d]; n may be 0 (no branch on it: the graph exports as is)
        w = self.router(xs)  # [n, 1]
        y[route] = xs + self._update(xs, w)
        return y

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, capacity={self.capacity}, combine={self.combine}"
