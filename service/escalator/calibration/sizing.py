"""Sizing: how large a fresh window must be for a calibration to pass, for either objective.
The refusal line says it, and the plans (``plan.py``) tabulate it over designs.

Agreement. A *profile* of the traffic gives, for each threshold ``t``, the share of requests
the cheap tier would accept, ``F(t)``, and the disagreement ``D(t) = P(conf >= t, cheap !=
strong)``. It comes from a pilot log (the Hájek estimates of ``estimators``) or from stated
assumptions (one accepted share and one disagreement rate). Under a measurement *design* (the
threshold in force while measuring, ``tau``, and the shadow rate ``p``) a log of ``n`` requests
has, in expectation, the counts that ``bounds.upper`` turns into a bound. Sizing takes each
count at its ``power`` quantile on the unfavourable side (more disagreements, fewer shadowed
answers; normal approximation), computes the bound the calibrator would compute, and finds the
smallest ``n`` at which the fixed sequence would reach the goal: the highest threshold whose
escalation rate is within ``margin`` of the best achievable one. That is a calibration that
passes with probability about ``power`` if the profile is right.

Accuracy against people. From the window's estimated error per cell, each pair's bets grow by
``g`` per request on average, with variance ``v``; the walk passes the pair when
``n g - z sqrt(n v)`` reaches ``log(K / delta_next)``, the first block (which bets nothing) and
the learning of the bets (``LEARNING``) added.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from escalator.calibration import betting, binomial, bounds, estimators
from escalator.calibration.adjudications import HumanSample
from escalator.calibration.dataset import Dataset
from escalator.calibration.search import Calibration, HumanCalibration, fixed_sequence

FloatArray = npt.NDArray[np.float64]
MAX_REQUESTS = 10**9
#: The share of the margin a plan aims at (see ``goal_index``).
GOAL_SHARE = 0.75
#: A pilot's disagreement is taken at this one-sided upper confidence level, not at its
#: point estimate: a small pilot that happened to look good must not promise too much.
PILOT_LEVEL = 0.4
#: Sizing a fresh window on human truth takes each cell's error rate at this one-sided upper
#: confidence level.
HUMAN_PILOT_LEVEL = 0.5
#: Sizing a fresh window on human truth: the bets learn from earlier blocks and the first
#: block bets nothing, so a window needs this much more than the Kelly growth of a known
#: distribution would say (checked against worlds with known truth:
#: tests/unit/calibration/test_search.py).
LEARNING = 1.5
#: Windows larger than this many times the pilot are not sized further (human truth).
MAX_FACTOR = 1e6


@dataclass(frozen=True)
class Profile:
    """Population curves on an ascending grid (the last point escalates everything)."""

    thresholds: FloatArray
    accepted: FloatArray  # F(t)
    disagree: FloatArray  # D(t)

    def at(self, t: FloatArray) -> tuple[FloatArray, FloatArray]:
        """(F, D) at any thresholds, interpolated between grid points."""
        grid = self.thresholds[:-1]
        f = np.interp(t, grid, self.accepted[:-1], right=0.0)
        d = np.interp(t, grid, self.disagree[:-1], right=0.0)
        return np.asarray(f, np.float64), np.asarray(np.minimum(d, f), np.float64)

    def escalation(self) -> FloatArray:
        return np.asarray(1.0 - self.accepted, np.float64)


@dataclass(frozen=True)
class Design:
    tau: float  # threshold in force while measuring
    p: float  # shadow rate


def assumed(accepted: float, disagreement: float) -> Profile:
    """A profile from stated assumptions: at the threshold to certify, ``accepted`` of the
    traffic is accepted and ``disagreement`` of those answers differ from the strong model."""
    if not (0 < accepted <= 1 and 0 <= disagreement <= 1):
        raise ValueError("need 0 < accepted <= 1 and 0 <= disagreement <= 1")
    return Profile(
        thresholds=np.asarray([0.0, 1.01]),
        accepted=np.asarray([accepted, 0.0]),
        disagree=np.asarray([accepted * disagreement, 0.0]),
    )


def _z(power: float) -> float:
    """Standard normal quantile (Acklam-free: bisection on erf is plenty here)."""
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < power:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def predicted_lower(
    prof: Profile, design: Design, n: int, delta: float, power: float
) -> FloatArray:
    """The lower bound on agreement a log of ``n`` requests would give, per grid threshold."""
    z = _z(power)
    t = prof.thresholds[:-1]
    _, d_t = prof.at(t)
    w = bounds.PART_WEIGHTS

    def hi(trials: FloatArray | float, r: FloatArray) -> FloatArray:
        spread = z * np.sqrt(np.maximum(trials * r * (1 - r), 0.0))
        return np.minimum(np.ceil(trials * r + spread), trials)

    def lo(trials: float, r: FloatArray) -> FloatArray:
        spread = z * np.sqrt(np.maximum(trials * r * (1 - r), 0.0))
        return np.maximum(np.floor(trials * r - spread), 0.0)

    if design.p >= 1.0:
        u = binomial.upper(hi(n, d_t), n, np.full(len(t), delta))
    else:
        f_z, d_z = prof.at(np.maximum(t, design.tau))
        certain = t < design.tau
        wc = np.where(certain, w["certain"], 0.0)
        total = wc + w["accepted"] + w["disagree"]
        m = lo(n, design.p * f_z)
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.where(f_z > 0, d_z / f_z, 0.0)
        limits = binomial.upper(
            np.concatenate([hi(n, np.maximum(d_t - d_z, 0.0)), hi(n, f_z), hi(m, q)]),
            np.concatenate([np.full(len(t), n), np.full(len(t), n), m]),
            np.concatenate(
                [
                    np.where(certain, delta * wc / total, 1.0),
                    delta * w["accepted"] / total,
                    delta * w["disagree"] / total,
                ]
            ),
        ).reshape(3, len(t))
        u = np.where(certain, limits[0], 0.0) + limits[1] * limits[2]
    out = np.ones(len(prof.thresholds))
    out[:-1] = 1.0 - np.minimum(u, 1.0)
    return out


def goal_index(prof: Profile, target: float, margin: float) -> int | None:
    """The highest threshold within ``margin`` of the best achievable escalation rate.

    It aims at ``GOAL_SHARE`` of the margin: the calibrator measures its own best from data
    as noisy as the rest, and a plan that aimed at the edge would pass only half the time."""
    top = len(prof.thresholds) - 1
    best = fixed_sequence(1.0 - prof.disagree, target)
    if best == top:
        return None
    esc = prof.escalation()
    within = np.flatnonzero(esc[:top] <= esc[best] + GOAL_SHARE * margin + 1e-12)
    return int(within.max())


def required_requests(
    prof: Profile,
    design: Design,
    target: float,
    delta: float,
    goal: int,
    power: float = 0.8,
) -> int | None:
    """Smallest n whose predicted fixed sequence passes every threshold from the top down to
    ``goal``; None if even ``MAX_REQUESTS`` would not."""

    def passes(n: int) -> bool:
        lower = predicted_lower(prof, design, n, delta, power)
        return bool(np.all(lower[goal:-1] >= target))

    return smallest_passing(passes, MAX_REQUESTS)


def smallest_passing(passes: Callable[[int], bool], most: int) -> int | None:
    """The smallest n (from 100, doubling, then bisected to within 0.5%) for which
    ``passes(n)`` holds, assumed monotone in n; None if not even ``most`` passes."""
    lo, n = 50, 100
    while not passes(n):
        if n >= most:
            return None
        lo, n = n, min(n * 2, most)  # the last step tries ``most`` itself
    hi = n
    while hi - lo > max(1, hi // 200):
        mid = (lo + hi) // 2
        if passes(mid):
            hi = mid
        else:
            lo = mid
    return hi


def duration(hours: float | None) -> str:
    if hours is None:
        return "n/a"
    if hours < 1:
        return f"{hours * 60:.0f} min"
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours / 24:.1f} days"


@dataclass(frozen=True)
class Need:
    """How much measurement a refused calibration lacks, at the design in force."""

    requests: int | None  # a fresh window of this many requests would certify (None: never)
    shadowed: int | None  # ... with this many shadowed answers in it
    hours: float | None  # ... which takes this long at the window's traffic
    per_hour: float | None
    tau: float
    p: float
    goal_threshold: float | None
    goal_escalation: float | None


def pilot(d: Dataset, t: FloatArray, counts: estimators.Counts) -> tuple[Profile, Profile]:
    """(point profile, cautious profile) from a pilot log: the first places the goal, the
    second, with disagreement at its ``PILOT_LEVEL`` upper limit, sizes the measurement."""
    accepted = estimators.at_least(d.conf, t) / max(d.n, 1)
    point = Profile(thresholds=t, accepted=accepted, disagree=estimators.point(counts))
    upper = np.maximum(bounds.upper(counts, 1.0 - PILOT_LEVEL), point.disagree)
    return point, Profile(thresholds=t, accepted=accepted, disagree=np.minimum(upper, accepted))


def latest_stratum(d: Dataset) -> int:
    """The stratum of the window's most recent request (the design a fresh window gets)."""
    return int(d.stratum[int(np.argmax(d.ts_ms))]) if d.n else 0


def span_hours(d: Dataset) -> float:
    """Hours from the window's first request to its last (0 for fewer than two)."""
    return (int(d.ts_ms.max()) - int(d.ts_ms.min())) / 3_600_000 if d.n > 1 else 0.0


def cell_sizes(h: HumanSample) -> FloatArray:
    """(S, 4) estimated requests per stratum and cell: every sampled one (pending included)
    over its inclusion probability."""
    sampled = np.zeros(h.pi.shape, dtype=np.int64)
    np.add.at(sampled, (h.stratum, h.cell), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(np.where(h.pi > 0, sampled / np.where(h.pi > 0, h.pi, 1.0), 0.0))


def design_in_force(d: Dataset) -> tuple[float, float, float | None]:
    """(threshold, shadow rate, requests per hour) of the most recent stratum in the window."""
    m = d.stratum == latest_stratum(d)
    taus = d.tau[m][~np.isnan(d.tau[m])]
    tau = float(np.median(taus)) if len(taus) else 0.7
    rates = d.shadow_rate[m][~np.isnan(d.shadow_rate[m])]
    p = float(np.median(rates)) if len(rates) else 0.0
    span_h = span_hours(d)
    return tau, p, (d.n / span_h if span_h > 0 else None)


def needed(
    d: Dataset, cal: Calibration, delta: float, power: float = 0.8, label: str | None = None
) -> Need:
    """What a fresh window must hold for a calibration at ``delta`` to pass (``plan``)."""
    sub = d if label is None else d.subset(d.cheap_label == d.labels.index(label))
    share = 1.0 if label is None else sub.n / max(d.n, 1)
    level = delta if label is None else delta / max(len(d.labels), 1)
    t = cal.curve.thresholds
    counts = estimators.counts(sub.sample(), t)
    prof, cautious = pilot(sub, t, counts)
    tau, p, per_hour = design_in_force(d)
    goal = goal_index(prof, cal.target, cal.margin)
    n = None
    if goal is not None and p > 0:
        n = required_requests(cautious, Design(tau, p), cal.target, level, goal, power)
        if n is None:  # the cautious profile cannot reach the goal at all: fall back
            n = required_requests(prof, Design(tau, p), cal.target, level, goal, power)
    total = None if n is None else math.ceil(n / max(share, 1e-12))
    accepted_at_tau = float(prof.at(np.asarray([tau]))[0][0])
    shadowed = None if n is None else math.ceil(n * accepted_at_tau * p)
    return Need(
        requests=total,
        shadowed=shadowed,
        hours=None if total is None or per_hour is None else total / per_hour,
        per_hour=per_hour,
        tau=tau,
        p=p,
        goal_threshold=None if goal is None else float(t[goal]),
        goal_escalation=None if goal is None else float(prof.escalation()[goal]),
    )


@dataclass(frozen=True)
class HumanNeed:
    """A fresh window that would certify a pair within the budget.

    ``factor`` None with ``why``: it cannot be sized from this window (or, when ``proven``, no
    window at this design can certify); ``beyond`` set: more than that many times this one."""

    factor: float | None
    requests: int | None
    adjudicated: int | None
    hours: float | None
    goal: tuple[int, int] | None = None
    beyond: float | None = None
    why: str = ""
    proven: bool = False


def _fresh_distribution(
    h: HumanSample, tc: FloatArray, ts: FloatArray, latest: int
) -> tuple[FloatArray, FloatArray, float]:
    """The Horvitz-Thompson variable of one request of a fresh window at the design of
    stratum ``latest``, per pair: (4, P) probabilities of the nonzero values, (4,) the values
    1/pi, and the uncovered share (a value of 1). The error per cell is estimated from every
    stratum: its error rate among decided adjudications, times its size (every sampled one,
    pending included, over pi)."""
    z, m = estimators.cell_counts(h, tc, ts)  # (S, 4, Tc, Ts), (S, 4) decided
    flat = z.reshape(z.shape[0], 4, -1).astype(np.float64)
    # Each cell's error rate at its HUMAN_PILOT_LEVEL upper limit, not its point estimate: a small
    # window that looked lucky must not promise too much (as ``pilot`` does for agreement).
    mm = np.broadcast_to(m[:, :, None], flat.shape)
    cautious = binomial.upper(flat, mm, 1.0 - HUMAN_PILOT_LEVEL)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(mm > 0, cautious, 0.0)
    mu = (rate * cell_sizes(h)[:, :, None]).sum(axis=0) / max(int(h.n.sum()), 1)  # (4, P)
    pi = h.pi[latest]
    probs = np.where(pi[:, None] > 0, mu * pi[:, None], 0.0)
    values = np.where(pi > 0, 1.0 / np.where(pi > 0, pi, 1.0), 0.0)
    uncovered = float(h.uncovered[latest] / max(int(h.n[latest]), 1))
    return probs, values, uncovered


def _growth(
    probs: FloatArray, values: FloatArray, uncovered: float, m0: float
) -> tuple[FloatArray, FloatArray]:
    """Per pair: the mean and variance of ``log(1 + lam (m0 - X))`` at the Kelly bet."""
    x = np.append(values, 1.0)  # (5,)
    p = np.vstack([probs, np.full((1, probs.shape[1]), uncovered)]).T  # (P, 5)
    zeros = np.maximum(1.0 - p.sum(axis=1), 0.0)
    lam = betting.kelly(zeros, p, np.broadcast_to(x, p.shape), m0)
    f0 = np.log1p(lam * m0)
    fg = np.log1p(np.clip(lam[:, None] * (m0 - x[None, :]), -0.999999, None))
    mean = zeros * f0 + (p * fg).sum(axis=1)
    second = zeros * f0**2 + (p * fg**2).sum(axis=1)
    return mean, np.maximum(second - mean**2, 0.0)


def requests_needed(
    probs: FloatArray, values: FloatArray, uncovered: float, m0: float, level: float, power: float
) -> FloatArray:
    """Per pair: the requests a window needs for the bets against ``m0`` to reach ``level``
    (log 1/alpha) with probability about ``power``, for the Horvitz-Thompson variable with
    nonzero ``values`` (4,) at ``probs`` (4, P) and ``uncovered`` share of 1s (inf: never)."""
    g, v = _growth(probs, values, uncovered, m0)
    z = _z(power)
    with np.errstate(divide="ignore", invalid="ignore"):
        root = (z * np.sqrt(v) + np.sqrt(z * z * v + 4.0 * g * level)) / (2.0 * g)
        n = np.where(g > 0, root**2, np.inf) * LEARNING / (1.0 - betting.BLOCKS[0])
    return np.asarray(n, np.float64)


def needed_human(
    d: Dataset, h: HumanSample, result: HumanCalibration, delta_next: float, power: float = 0.8
) -> HumanNeed:
    """The smallest fresh window (at the latest design and the same adjudication rates) that
    would certify some pair within the budget with probability about ``power``, over every such
    pair (each ranked by what it needs, the walk above it included).

    From the window's estimated error per cell, each pair's bets grow by ``g`` per request on
    average, with variance ``v``; the walk passes the pair when ``n g - z sqrt(n v)`` reaches
    ``log(K / delta_next)``, the first block (which bets nothing) and the learning of the bets
    (``LEARNING``) added."""
    tc, ts = result.cheap_grid, result.strong_grid
    k = len(ts)
    m0 = 1.0 - result.target
    if h.decided == 0:
        return HumanNeed(
            None,
            None,
            None,
            None,
            why="no adjudication has been decided yet, so the size of a window that would "
            "certify cannot be estimated",
        )
    probs, values, uncovered = _fresh_distribution(h, tc, ts, latest_stratum(d))
    if uncovered >= m0:
        return HumanNeed(
            None,
            None,
            None,
            None,
            why=f"{uncovered:.1%} of traffic is accepted with no shadow sampling (no person ever "
            "sees it, so it counts as wrong): no amount of data at this design can certify a "
            "pair that accepts it; set ESCALATOR_SHADOW_RATE > 0",
            proven=True,
        )
    n = requests_needed(probs, values, uncovered, m0, math.log(k / delta_next), power)
    n = n.reshape(len(tc), k)
    n[-1, -1] = 0.0  # everything to people: exact
    # The walk must pass every pair above on its column.
    path = np.maximum.accumulate(n[::-1], axis=0)[::-1]
    fits = result.human <= result.budget + 1e-12
    need = np.where(fits, path, np.inf)
    need[-1, -1] = np.inf if not fits[-1, -1] else 0.0
    if not np.isfinite(need).any():
        return HumanNeed(
            None,
            None,
            None,
            None,
            why="no pair within the budget has an estimated accuracy above the target on this "
            "window, so the size of a window that would certify one cannot be estimated from it",
        )
    i, j = (int(x) for x in np.unravel_index(int(np.argmin(need)), need.shape))
    factor = max(float(need[i, j]) / max(d.n, 1), 1.0)
    if factor > MAX_FACTOR:
        return HumanNeed(None, None, None, None, goal=(i, j), beyond=MAX_FACTOR)
    span_h = span_hours(d)
    sampled = h.m if h.backlog is None else h.backlog.sampled
    return HumanNeed(
        factor,
        math.ceil(d.n * factor),
        math.ceil(sampled * factor),
        factor * span_h if span_h > 0 else None,
        (i, j),
    )
