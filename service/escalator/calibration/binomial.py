"""Exact binomial confidence limits (Clopper-Pearson), vectorised with numpy, without scipy.

This module owns the one piece of numerical analysis calibration needs: the regularized
incomplete beta function ``I_x(a, b)`` and its inverse in ``x``, from which the exact
(Clopper-Pearson) limits follow:

    upper(k, n, alpha) = the p with P(Bin(n, p) <= k) = alpha   = BetaInv(1 - alpha; k + 1, n - k)
    lower(k, n, alpha) = the p with P(Bin(n, p) >= k) = alpha   = BetaInv(alpha; k, n - k + 1)

so that P(p > upper) <= alpha and P(p < lower) <= alpha for every true p. ``I_x(a, b)`` is
evaluated by its continued fraction (modified Lentz), in the half of [0, 1] where it converges
fast, and inverted by Newton steps kept inside a shrinking bracket, so a poor step falls back
to bisection. ``tests/unit/calibration/test_binomial.py`` checks the limits against exact
binomial sums.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
_TINY = 1e-300
_EPS = 1e-15
_lgamma = np.vectorize(math.lgamma, otypes=[np.float64])


def _lbeta(a: FloatArray, b: FloatArray) -> FloatArray:
    return np.asarray(_lgamma(a) + _lgamma(b) - _lgamma(a + b), dtype=np.float64)


def _betacf(a: FloatArray, b: FloatArray, x: FloatArray) -> FloatArray:
    """The continued fraction of I_x(a, b), for x < (a + 1) / (a + b + 2) (Lentz's method)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = np.ones_like(x)
    d = 1.0 - qab * x / qap
    d = np.where(np.abs(d) < _TINY, _TINY, d)
    d = 1.0 / d
    h = d.copy()
    active = np.ones(x.shape, dtype=bool)
    for m in range(1, 20_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = np.where(np.abs(d) < _TINY, _TINY, d)
        c = 1.0 + aa / c
        c = np.where(np.abs(c) < _TINY, _TINY, c)
        d = 1.0 / d
        h = np.where(active, h * d * c, h)
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = np.where(np.abs(d) < _TINY, _TINY, d)
        c = 1.0 + aa / c
        c = np.where(np.abs(c) < _TINY, _TINY, c)
        d = 1.0 / d
        delta = d * c
        h = np.where(active, h * delta, h)
        active &= np.abs(delta - 1.0) > _EPS
        if not active.any():
            return h
    raise ArithmeticError("incomplete beta: continued fraction did not converge")


def betainc(a: FloatArray, b: FloatArray, x: FloatArray) -> FloatArray:
    """Regularized incomplete beta I_x(a, b), elementwise, for a, b > 0 and 0 <= x <= 1."""
    a, b, x = np.broadcast_arrays(
        np.asarray(a, dtype=np.float64),
        np.asarray(b, dtype=np.float64),
        np.asarray(x, dtype=np.float64),
    )
    out = np.where(x <= 0.0, 0.0, 1.0)
    inner = (x > 0.0) & (x < 1.0)
    if not inner.any():
        return out
    a, b, x = a[inner], b[inner], x[inner]
    lfront = a * np.log(x) + b * np.log1p(-x) - _lbeta(a, b)
    direct = x < (a + 1.0) / (a + b + 2.0)
    # In the other half, I_x(a, b) = 1 - I_{1-x}(b, a) converges fast instead.
    aa, bb, xx = np.where(direct, a, b), np.where(direct, b, a), np.where(direct, x, 1.0 - x)
    front = np.exp(lfront_safe(lfront)) / aa
    value = front * _betacf(aa, bb, xx)
    out[inner] = np.where(direct, value, 1.0 - value)
    return out


def lfront_safe(lfront: FloatArray) -> FloatArray:
    """Clip a log prefactor so that exp() underflows to 0 instead of warning."""
    return np.maximum(lfront, -745.0)


def _beta_quantile(q: FloatArray, a: FloatArray, b: FloatArray) -> FloatArray:
    """x with I_x(a, b) = q, elementwise (0 < q < 1): safeguarded Newton on [0, 1]."""
    lo, hi = np.zeros_like(q), np.ones_like(q)
    # A start from the normal approximation of the beta distribution.
    mean = a / (a + b)
    sd = np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1.0)))
    z = np.sqrt(2.0) * _erfinv(2.0 * q - 1.0)
    x = np.clip(mean + z * sd, 1e-12, 1 - 1e-12)
    lb = _lbeta(a, b)
    for _ in range(200):
        f = betainc(a, b, x) - q
        lo = np.where(f < 0, x, lo)
        hi = np.where(f >= 0, x, hi)
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            logpdf = (a - 1.0) * np.log(x) + (b - 1.0) * np.log1p(-x) - lb
            step = f / np.exp(logpdf)
            nxt = x - step
        bad = ~np.isfinite(nxt) | (nxt <= lo) | (nxt >= hi)
        nxt = np.where(bad, 0.5 * (lo + hi), nxt)
        done = (np.abs(nxt - x) <= 1e-11 * np.maximum(x, 1e-300)) | (hi - lo <= 1e-15)
        x = nxt
        if done.all():
            break
    return np.asarray(x, np.float64)


def _erfinv(y: FloatArray) -> FloatArray:
    """Inverse error function, to a few digits: only a starting point for Newton."""
    y = np.clip(y, -1 + 1e-15, 1 - 1e-15)
    w = -np.log((1.0 - y) * (1.0 + y))
    a = 0.147
    t = 2.0 / (np.pi * a) - w / 2.0
    return np.asarray(np.sign(y) * np.sqrt(np.sqrt(t * t + w / a) - t), dtype=np.float64)


def _floats(*xs: npt.ArrayLike) -> list[FloatArray]:
    """The arguments as float64 arrays of one broadcast shape."""
    return list(np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in xs)))


def upper(k: npt.ArrayLike, n: npt.ArrayLike, alpha: npt.ArrayLike) -> FloatArray:
    """One-sided exact upper limits: P(true p > upper) <= alpha. ``upper`` is 1 when n = 0."""
    k_, n_, al = _floats(k, n, alpha)
    out = np.ones(k_.shape)
    zero = (k_ == 0) & (n_ > 0)
    out[zero] = -np.expm1(np.log(al[zero]) / n_[zero])  # 1 - alpha^(1/n), in closed form
    inner = (k_ > 0) & (k_ < n_)
    if inner.any():
        out[inner] = _beta_quantile(1.0 - al[inner], k_[inner] + 1.0, n_[inner] - k_[inner])
    return out


def lower(k: npt.ArrayLike, n: npt.ArrayLike, alpha: npt.ArrayLike) -> FloatArray:
    """One-sided exact lower limits: P(true p < lower) <= alpha. ``lower`` is 0 when k = 0."""
    k_, n_, al = _floats(k, n, alpha)
    out = np.zeros(k_.shape)
    full = (k_ == n_) & (n_ > 0)
    out[full] = np.exp(np.log(al[full]) / n_[full])  # alpha^(1/n)
    inner = (k_ > 0) & (k_ < n_)
    if inner.any():
        out[inner] = _beta_quantile(al[inner], k_[inner], n_[inner] - k_[inner] + 1.0)
    return out


def cdf(k: npt.ArrayLike, n: npt.ArrayLike, p: npt.ArrayLike) -> FloatArray:
    """P(Bin(n, p) <= k), elementwise."""
    k_, n_, p_ = np.broadcast_arrays(
        np.floor(np.asarray(k, dtype=np.float64)),
        np.asarray(n, dtype=np.float64),
        np.asarray(p, dtype=np.float64),
    )
    out = np.where(k_ < 0, 0.0, 1.0)
    inner = (k_ >= 0) & (k_ < n_)
    if inner.any():
        out[inner] = betainc(n_[inner] - k_[inner], k_[inner] + 1.0, 1.0 - p_[inner])
    return out
