"""Exact binomial limits (Clopper-Pearson) checked against exact binomial sums."""

from __future__ import annotations

import math

import numpy as np
import pytest

from escalator.calibration import binomial


def _pmf_terms(js: range, n: int, p: float) -> list[float]:
    return [
        math.exp(
            math.lgamma(n + 1)
            - math.lgamma(j + 1)
            - math.lgamma(n - j + 1)
            + j * math.log(p)
            + (n - j) * math.log1p(-p)
        )
        for j in js
    ]


def exact_cdf(k: int, n: int, p: float) -> float:
    """P(Bin(n, p) <= k) as a sum of exact terms (log-space, fsum)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return math.fsum(_pmf_terms(range(k + 1), n, p))


def exact_sf(k: int, n: int, p: float) -> float:
    """P(Bin(n, p) >= k), summed directly: 1 - cdf would cancel when the tail is small."""
    if k <= 0:
        return 1.0
    return math.fsum(_pmf_terms(range(k, n + 1), n, p))


CASES = [(0, 10), (1, 10), (3, 50), (30, 2000), (40, 1400), (500, 10_000), (7000, 10_000)]


@pytest.mark.parametrize(("k", "n"), CASES)
@pytest.mark.parametrize("alpha", [0.001, 0.025, 0.05, 0.3])
def test_upper_limit_puts_exactly_alpha_in_the_lower_tail(k: int, n: int, alpha: float) -> None:
    """At the upper limit U, P(X <= k | n, U) = alpha, to 1e-9 relative."""
    u = float(binomial.upper(k, n, alpha)[()])
    assert exact_cdf(k, n, u) == pytest.approx(alpha, rel=1e-9)


@pytest.mark.parametrize(("k", "n"), [c for c in CASES if c[0] > 0])
@pytest.mark.parametrize("alpha", [0.001, 0.025, 0.05])
def test_lower_limit_puts_exactly_alpha_in_the_upper_tail(k: int, n: int, alpha: float) -> None:
    """At the lower limit L, P(X >= k | n, L) = alpha, to 1e-7 relative."""
    lo = float(binomial.lower(k, n, alpha)[()])
    assert exact_sf(k, n, lo) == pytest.approx(alpha, rel=1e-7)
    # ...and it is the smallest such p: a little lower, the upper tail is already below alpha.
    assert exact_sf(k, n, lo * (1 - 1e-4)) < alpha


def test_edge_cases_have_their_closed_forms() -> None:
    """No trials: upper 1, lower 0; all successes: upper 1; k = 0: 1 - alpha^(1/n)."""
    assert binomial.upper(0, 0, 0.05)[()] == 1.0
    assert binomial.lower(0, 0, 0.05)[()] == 0.0
    assert binomial.upper(5, 5, 0.05)[()] == 1.0
    assert binomial.upper(0, 100, 0.05)[()] == pytest.approx(1 - 0.05 ** (1 / 100))


def test_coverage_is_at_least_one_minus_alpha_for_every_p() -> None:
    """Exhaustively, for n = 40 and a fine grid of true p, P(upper < p) <= alpha exactly."""
    n, alpha = 40, 0.05
    limits = binomial.upper(np.arange(n + 1), np.full(n + 1, n), np.full(n + 1, alpha))
    for p in np.linspace(0.001, 0.999, 400):
        miss = sum(
            math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1) if limits[k] < p
        )
        assert miss <= alpha + 1e-12


def test_cdf_matches_exact_sums() -> None:
    """The incomplete-beta CDF agrees with exact sums (to 1e-9, their own rounding)."""
    for k, n in CASES:
        for p in (0.001, 0.02, 0.5, 0.7):
            assert binomial.cdf(k, n, p)[()] == pytest.approx(exact_cdf(k, n, p), abs=1e-9)
