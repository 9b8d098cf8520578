"""An upper confidence bound on a mean by betting (Waudby-Smith and Ramdas, 2023), for the
Horvitz-Thompson variables of a sampled window; numpy only.

Setting. A window holds ``N`` requests in strata ``s`` (threshold versions), independent, and
identically distributed within a stratum. Each request carries a variable ``X >= 0`` that takes
one of a few values: 0, or ``x[s, g]`` for category ``g`` (for the human objective: 1 / pi of
the adjudication cell the request fell in, when it was adjudicated and its routed answer was
wrong). Under stationarity ``E[X] = mu`` in every stratum; ``mu`` is what is bounded.

The test. To test ``H0: mu >= m``, bet against it: ``K(m) = prod_i (1 + lam_i (m - X_i))``
with bets ``lam_i >= 0`` fixed before ``X_i`` is seen and ``lam_i * max x < 1`` (so every
factor stays positive). Under ``H0`` each factor has conditional expectation
``1 + lam_i (m - mu) <= 1``, so ``K(m)`` is a nonnegative supermartingale that starts at 1, and
``P(K(m) >= 1/alpha) <= alpha`` (Ville's inequality). The bets here do not depend on ``m`` (they
are tuned for one value ``m0``, the boundary the search asks about), so ``K(m)`` increases with
``m`` and ``U = inf {m : K(m) >= 1/alpha}`` is exact: ``P(mu > U) <= alpha``.

The bets. Each stratum's requests are split, in time order, into blocks of growing size
(``BLOCKS``); a bet is constant within a block and chosen from that stratum's earlier blocks:
the Kelly bet against ``m0`` on their empirical distribution (capped at ``CAP / max x`` and
nothing in a stratum's first block). A bet that is constant within a block multiplies iid
factors, so the argument above holds block by block; because the factors depend only on how
many requests took each value, ``K`` is computed from counts, not from the N requests one by
one. The bet adapts to the variance of ``X`` (many zeros, rare large values), which is what
makes it tighter than a sum of per-cell Clopper-Pearson limits; and a stratum whose data are
sparse (a low shadow rate) gets small bets, so it cannot drag the bound down much.

Why block-constant and not per-request bets (the predictable plug-in of the paper): the search
needs this bound for about a thousand threshold pairs per calibration, and counts per block
make that a few array operations; the blocks are a fixed schedule, so nothing depends on the
data except through earlier blocks.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Cumulative share of a stratum's requests at the end of each block (time order).
BLOCKS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 3 / 4, 1.0)
#: The largest bet, as a share of the one that could bring a factor to zero.
CAP = 0.5
#: Newton steps for the Kelly bet.
_NEWTON = 8


def block_of(rank: FloatArray) -> IntArray:
    """The block of a request from its rank in its stratum, as a share in [0, 1)."""
    return np.asarray(np.searchsorted(np.asarray(BLOCKS), rank, side="right"), np.int64)


def block_sizes(n: int) -> IntArray:
    """How many of a stratum's ``n`` requests (in time order) fall in each block."""
    rank = np.arange(n) / max(n, 1)
    return np.bincount(block_of(rank), minlength=len(BLOCKS)).astype(np.int64)


def kelly(
    zeros: FloatArray, counts: FloatArray, x: FloatArray, m0: FloatArray | float
) -> FloatArray:
    """The bet maximising the mean of ``log(1 + lam (m0 - X))`` on an empirical distribution.

    ``zeros`` (...,) requests with X = 0; ``counts`` (..., G) requests with X = ``x`` (..., G)
    (broadcast). Capped at ``CAP / max x``; 0 where there is nothing to learn from."""
    xmax = np.max(x, axis=-1)
    cap = CAP / np.maximum(xmax, 1e-12)
    m0 = np.asarray(m0, dtype=np.float64)
    total = zeros + counts.sum(axis=-1)
    safe = np.maximum(total, 1.0)
    p0 = zeros / safe
    pg = counts / safe[..., None]
    d = m0[..., None] - x  # (..., G): the gain per unit bet of each nonzero value
    mean = p0 * m0 + (pg * d).sum(axis=-1)
    second = p0 * m0**2 + (pg * d**2).sum(axis=-1)
    lam = np.clip(mean / np.maximum(second, 1e-300), 0.0, cap)
    for _ in range(_NEWTON):
        f0 = 1.0 + lam * m0
        fg = 1.0 + lam[..., None] * d
        g1 = p0 * m0 / f0 + (pg * d / fg).sum(axis=-1)
        g2 = -(p0 * m0**2 / f0**2 + (pg * d**2 / fg**2).sum(axis=-1))
        step = np.where(g2 < 0, g1 / np.minimum(g2, -1e-300), 0.0)
        lam = np.clip(lam - step, 0.0, cap)
    return np.asarray(np.where((total > 0) & (mean > 0), lam, 0.0), np.float64)


def bets(
    n: IntArray, counts: FloatArray, x: FloatArray, m0: float | None, alpha: float
) -> FloatArray:
    """The bet of every (stratum, block), from the stratum's earlier blocks.

    ``n`` (S, B) requests; ``counts`` (S, B, G, P) nonzero values per category and pair;
    ``x`` (S, G) the values. ``m0``: the mean to bet against; None aims each block at where
    the earlier blocks suggest the bound will land (their mean plus the expected width at
    level ``alpha`` over the whole stratum). Returns (S, B, P)."""
    s_count, b_count = n.shape
    p_count = counts.shape[-1]
    out = np.zeros((s_count, b_count, p_count))
    seen_n = np.cumsum(n, axis=1) - n  # requests in earlier blocks of the same stratum
    seen_c = np.cumsum(counts, axis=1) - counts  # (S, B, G, P)
    level = np.log(1.0 / alpha)
    for s in range(s_count):
        for b in range(1, b_count):
            if seen_n[s, b] <= 0:
                continue
            c = np.moveaxis(seen_c[s, b], 0, -1)  # (P, G)
            zeros = seen_n[s, b] - c.sum(axis=-1)
            aim: FloatArray | float
            if m0 is None:
                mean = (c * x[s]).sum(axis=-1) / seen_n[s, b]
                second = (c * x[s] ** 2).sum(axis=-1) / seen_n[s, b]
                aim = mean + np.sqrt(2.0 * second * level / max(int(n[s].sum()), 1))
            else:
                aim = m0
            out[s, b] = kelly(zeros, c, np.broadcast_to(x[s], c.shape), aim)
    return out


def log_wealth(
    m: FloatArray, n: IntArray, counts: FloatArray, x: FloatArray, lam: FloatArray
) -> FloatArray:
    """log K(m) per pair, shape (P,), for bounds ``m`` of shape (P,)."""
    zeros = n[:, :, None] - counts.sum(axis=2)  # (S, B, P)
    total = (zeros * np.log1p(lam * m)).sum(axis=(0, 1))
    step = lam[:, :, None, :] * (m - x[:, None, :, None])  # (S, B, G, P)
    return np.asarray(total + (counts * np.log1p(step)).sum(axis=(0, 1, 2)), np.float64)


def upper(
    n: IntArray, counts: FloatArray, x: FloatArray, alpha: float, m0: float | None = None
) -> FloatArray:
    """The upper confidence bound on the mean, per pair: ``P(mu > upper) <= alpha``.

    ``n`` (S, B) requests per stratum and block; ``counts`` (S, B, G, P) requests per
    category whose variable is ``x[s, g]`` (the rest are 0); ``m0`` the mean the bets are
    tuned against (the target's boundary, when one value is tested; see ``bets``). 1 where even
    ``m = 1`` is not rejected. Since the bets do not depend on ``m``, ``upper < m0`` exactly when
    ``H0: mu >= m0`` is rejected at level ``alpha``."""
    lam = bets(n, counts, x, m0, alpha)
    level = np.log(1.0 / alpha)
    p_count = counts.shape[-1]
    lo, hi = np.zeros(p_count), np.ones(p_count)
    top = log_wealth(hi, n, counts, x, lam) >= level
    for _ in range(26):  # to 1.5e-8, for display; the decision at m0 is exact below
        mid = (lo + hi) / 2
        ok = log_wealth(mid, n, counts, x, lam) >= level
        hi = np.where(ok, mid, hi)
        lo = np.where(ok, lo, mid)
    if m0 is not None:
        # The decision at m0 itself, exactly.
        at = log_wealth(np.full(p_count, m0), n, counts, x, lam) >= level
        hi = np.where(at, np.minimum(hi, m0), np.maximum(hi, np.nextafter(m0, 1.0)))
    return np.asarray(np.where(top, hi, 1.0), np.float64)
