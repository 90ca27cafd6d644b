"""The math of structured projections (NumPy, float64), shared by the StructuredFFN
reference, the lowering (pre-merged dense weights) and the crossover timing.

A structured projection is ``blockdiag(v, A)`` (A [k, p, q]), then optionally BlockShuffle's
second factor S, then optionally a dense factor U (``fffc.contract.ops.STRUCTURED_FFN``).
"""

from __future__ import annotations

import numpy as np


def blockdiag(v: np.ndarray, a: np.ndarray) -> np.ndarray:
    """``v [.., k·p]`` times the block-diagonal matrix of ``a [k, p, q]`` → ``[.., k·q]``."""
    k, p, q = a.shape
    v = np.asarray(v, dtype=np.float64)
    blocks = v.reshape(*v.shape[:-1], k, p)
    out = np.einsum("...kp,kpq->...kq", blocks, np.asarray(a, dtype=np.float64))
    return out.reshape(*v.shape[:-1], k * q)


def shuffled(h: np.ndarray, s: np.ndarray) -> np.ndarray:
    """BlockShuffle's second factor: ``h [.., m·r]`` read as an (r, m) grid, its columns
    through the blocks of ``s [m, r, t]``, the result written as a (t, m) grid."""
    m, r, t = s.shape
    h = np.asarray(h, dtype=np.float64)
    grid = h.reshape(*h.shape[:-1], r, m)
    g = np.einsum("...jm,mjt->...tm", grid, np.asarray(s, dtype=np.float64))
    return g.reshape(*h.shape[:-1], t * m)


def projection(v: np.ndarray, a: np.ndarray, u: np.ndarray | None = None,
               s: np.ndarray | None = None) -> np.ndarray:
    """One structured projection of v (float64): blockdiag(v, A) [→ shuffled(·, S)] [· U]."""
    h = blockdiag(v, a)
    if s is not None:
        h = shuffled(h, s)
    return h if u is None else h @ np.asarray(u, dtype=np.float64)


def merged_weight(a: np.ndarray, u: np.ndarray | None, s: np.ndarray | None = None) -> np.ndarray:
    """The dense matrix of one structured projection (float64): blockdiag(A) [→ S] [· U]."""
    k, p, _ = a.shape
    return projection(np.eye(k * p), a, u, s)
