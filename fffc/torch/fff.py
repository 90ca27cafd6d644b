"""UltraFastBERT's Fast Feedforward layer (arXiv 2311.10770), parameterized as its release.

K trees of depth D, n = 2^(D+1) - 1 nodes each in heap order; ``linear_in`` [K·n ← H] with
bias, ``linear_out`` [H_out ← K·n] without. ``forward`` is the training form of the release
(every node computed, GELU, a 0/1 mask of the visited path, dense ``linear_out``) — what
exported models contain and what fffc detects; ``forward_walk`` is the conditional form
(D+1 nodes per tree per token), the same function (checked in tests). With
``eval_form="walk"`` an eval-mode module runs (and exports) the walk; fffc detects both.
"""

from __future__ import annotations

import math
from enum import Enum

import torch
from torch import nn


class EvalForm(str, Enum):
    """What ``FastFeedForward.forward`` computes in eval mode (and so what an export holds)."""

    MASKED = "masked"  # every node, times each tree's 0/1 path mask (UltraFastBERT's form)
    WALK = "walk"  # the hard walk: one row per level and tree (``forward_walk``)


class FastFeedForward(nn.Module):
    def __init__(self, input_width: int, output_width: int, depth: int, trees: int = 1,
                 eval_form: str = "masked"):
        super().__init__()
        try:
            self.eval_form = EvalForm(eval_form)
        except ValueError:
            raise ValueError(f"eval_form must be 'masked' or 'walk', got {eval_form!r}") from None
        self.input_width, self.output_width = input_width, output_width
        self.depth, self.trees = depth, trees
        self.n_nodes = 2 ** (depth + 1) - 1
        self.linear_in = nn.Linear(input_width, trees * self.n_nodes, bias=True)
        self.linear_out = nn.Linear(trees * self.n_nodes, output_width, bias=False)
        k_in = math.sqrt(1.0 / input_width)
        k_out = math.sqrt(1.0 / ((depth + 1) * trees))
        nn.init.uniform_(self.linear_in.weight, -k_in, k_in)
        nn.init.uniform_(self.linear_in.bias, -k_in, k_in)
        nn.init.uniform_(self.linear_out.weight, -k_out, k_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training form: all nodes, GELU, times the 0/1 mask of each tree's path (in eval
        mode with ``eval_form="walk"``: ``forward_walk``)."""
        if not self.training and self.eval_form is EvalForm.WALK:
            return self.forward_walk(x)
        shape = x.shape
        x = x.reshape(-1, self.input_width)
        logits = self.linear_in(x)  # [B, K·n]
        decisions = (logits > 0).long().view(-1, self.trees, self.n_nodes)
        activations = nn.functional.gelu(logits).view(-1, self.trees, self.n_nodes)
        with torch.no_grad():
            current = torch.zeros(x.shape[0], self.trees, dtype=torch.long, device=x.device)
            mask = torch.zeros_like(activations)
            mask.scatter_(2, current.unsqueeze(-1), 1.0)
            for _ in range(self.depth):
                moves = torch.gather(decisions, 2, current.unsqueeze(2)).squeeze(2)
                current = current * 2 + 1 + moves
                mask.scatter_(2, current.unsqueeze(-1), 1.0)
        y = self.linear_out((activations * mask).flatten(1, 2))
        return y.reshape(*shape[:-1], self.output_width)

    @torch.no_grad()
    def forward_walk(self, x: torch.Tensor) -> torch.Tensor:
        """Inference form: per tree, D+1 dot products and axpys along the taken path."""
        shape = x.shape
        x = x.reshape(-1, self.input_width)
        w_in, b_in = self.linear_in.weight, self.linear_in.bias
        w_out = self.linear_out.weight.t()  # row per node
        y = torch.zeros(x.shape[0], self.output_width, dtype=x.dtype, device=x.device)
        for k in range(self.trees):
            node = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
            for _ in range(self.depth + 1):
                r = k * self.n_nodes + node
                z = (x * w_in[r]).sum(-1) + b_in[r]
                y += nn.functional.gelu(z).unsqueeze(-1) * w_out[r]
                node = node * 2 + 1 + (z > 0).long()
        return y.reshape(*shape[:-1], self.output_width)


def swap_ffn(module: nn.Module, attr: str, depth: int, trees: int = 1,
             eval_form: str = "masked") -> FastFeedForward:
    """Replace ``module.<attr>`` (a dense FFN taking and returning [..., H]) by an FFF of the
    same width in and out; returns the new layer (to be trained or distilled)."""
    old = getattr(module, attr)
    first = next(m for m in old.modules() if isinstance(m, nn.Linear))
    last = [m for m in old.modules() if isinstance(m, nn.Linear)][-1]
    fff = FastFeedForward(first.in_features, last.out_features, depth, trees, eval_form)
    setattr(module, attr, fff)
    return fff
