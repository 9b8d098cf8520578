"""The betting bound (calibration/betting.py): computed from counts it is the product over the
requests themselves; the decision at m0 is exactly "upper < m0"; and in a world whose mean is
known, the bound is below the mean in at most alpha of many repetitions."""

from __future__ import annotations

import numpy as np
import pytest

from escalator.calibration import betting


def _one_stratum(values: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(S, B) sizes and (S, B, G, 1) counts of one stratum's requests, ``values`` per request
    being 0 or an index + 1 into ``x``."""
    n = len(values)
    block = betting.block_of(np.arange(n) / n)
    sizes = np.bincount(block, minlength=len(betting.BLOCKS))[None, :]
    counts = np.zeros((1, len(betting.BLOCKS), len(x), 1))
    for b in range(len(betting.BLOCKS)):
        for g in range(len(x)):
            counts[0, b, g, 0] = np.sum((block == b) & (values == g + 1))
    return sizes, counts


def test_the_wealth_from_counts_is_the_product_over_the_requests() -> None:
    """log K(m) from counts per block equals the sum of log(1 + lam_b (m - X_i)) over every
    request, with the bets of its block."""
    rng = np.random.default_rng(1)
    x = np.asarray([5.0, 2.0])
    values = rng.choice(3, size=3000, p=[0.97, 0.02, 0.01])
    sizes, counts = _one_stratum(values, x)
    lam = betting.bets(sizes, counts, x[None, :], 0.06, 0.05)
    m = np.asarray([0.04])
    fast = betting.log_wealth(m, sizes, counts, x[None, :], lam)[0]
    block = betting.block_of(np.arange(3000) / 3000)
    xs = np.where(values == 0, 0.0, x[np.maximum(values - 1, 0)])
    slow = np.sum(np.log1p(lam[0, block, 0] * (0.04 - xs)))
    assert fast == pytest.approx(slow, rel=1e-12)
    assert lam[0, 0, 0] == 0.0 and np.all(lam[0, 1:, 0] <= betting.CAP / 5.0)


def test_the_decision_at_m0_is_exactly_the_bound_below_m0() -> None:
    """With bets tuned to m0, 'upper < m0' holds exactly when K(m0) >= 1/alpha."""
    rng = np.random.default_rng(2)
    x = np.asarray([[4.0]])
    sizes = np.asarray([[40, 40, 80, 160, 320, 320, 320]])
    counts = rng.binomial(sizes[:, :, None, None], 0.01, size=(1, 7, 1, 400)).astype(float)
    lam = betting.bets(sizes, counts, x, 0.05, 0.05)
    at = betting.log_wealth(np.full(400, 0.05), sizes, counts, x, lam) >= np.log(20)
    upper = betting.upper(sizes, counts, x, 0.05, 0.05)
    assert np.array_equal(upper < 0.05, at)
    assert 0 < at.sum() < 400  # both outcomes occur, so the check checks something


@pytest.mark.parametrize("mean", [0.02, 0.06])
def test_the_bound_covers_a_known_mean_in_at_least_1_minus_alpha(mean: float) -> None:
    """A Horvitz-Thompson variable (0, or 1/pi with pi = 0.25) with a known mean, 2,000
    windows of 2,000 requests at alpha = 0.1: the bound is below the mean in at most alpha of
    them (with room for sampling noise), and it is not trivially loose."""
    rng = np.random.default_rng(int(mean * 1000))
    reps, n, pi, alpha = 2000, 2000, 0.25, 0.1
    sizes = np.diff(np.round(np.asarray([0, *betting.BLOCKS]) * n)).astype(np.int64)[None, :]
    hits = rng.binomial(sizes[:, :, None, None], mean * pi, size=(1, len(sizes[0]), 1, reps))
    upper = betting.upper(sizes, hits.astype(float), np.asarray([[1 / pi]]), alpha, mean * 1.5)
    misses = int(np.sum(upper < mean))
    print(f"\nmean {mean}: the bound missed it in {misses}/{reps} windows; median bound "
          f"{np.median(upper):.4f}")  # fmt: skip
    assert misses <= alpha * reps + 3 * np.sqrt(alpha * (1 - alpha) * reps)
    assert np.median(upper) < mean * 2.5
