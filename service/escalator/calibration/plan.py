"""Measurement planning: how many requests, at which shadow rate, certify a target.

A plan starts from a *profile* of the traffic: for each threshold ``t``, the share of requests
the cheap tier would accept, ``F(t)``, and the disagreement ``D(t) = P(conf >= t, cheap !=
strong)``. It comes from a pilot log (the Hájek estimates of ``estimates``) or from stated
assumptions (one accepted share and one disagreement rate). Under a measurement *design* (the
threshold in force while measuring, ``tau``, and the shadow rate ``p``) a log of ``n`` requests
has, in expectation, the counts that ``estimates.upper`` turns into a bound. The plan takes each
count at its ``power`` quantile on the unfavourable side (more disagreements, fewer shadowed
answers; normal approximation), computes the bound the calibrator would compute, and finds the
smallest ``n`` at which the fixed sequence would reach the goal: the highest threshold whose
escalation rate is within ``margin`` of the best achievable one. That is a calibration that
passes with probability about ``power`` if the profile is right.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from escalator.calibration import binomial, estimates
from escalator.calibration.certify import Calibration, Dataset

FloatArray = npt.NDArray[np.float64]
SHADOW_RATES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
MAX_REQUESTS = 10**9
#: The share of the margin a plan aims at (see ``goal_index``).
GOAL_SHARE = 0.75
#: A pilot's disagreement is taken at this one-sided upper confidence level, not at its
#: point estimate: a small pilot that happened to look good must not promise too much.
PILOT_LEVEL = 0.4


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
    w = estimates.PART_WEIGHTS

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
    agreement = 1.0 - prof.disagree
    ok = agreement >= target
    top = len(ok) - 1
    best = top
    for j in range(top - 1, -1, -1):
        if not ok[j]:
            break
        best = j
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

    n = 100
    while not passes(n):
        n *= 2
        if n > MAX_REQUESTS:
            return None
    lo, hi = n // 2, n
    while hi - lo > max(1, hi // 200):
        mid = (lo + hi) // 2
        if passes(mid):
            hi = mid
        else:
            lo = mid
    return hi


@dataclass(frozen=True)
class Row:
    """One line of a plan: a shadow rate and what certifying at it takes."""

    p: float
    requests: int | None
    shadowed: int | None
    hours: float | None
    shadow_usd: float | None


def rows(
    prof: Profile,
    tau: float,
    target: float,
    delta: float,
    margin: float,
    *,
    per_hour: float | None,
    strong_call_usd: float | None,
    rates: tuple[float, ...] = SHADOW_RATES,
    power: float = 0.8,
) -> tuple[int | None, list[Row]]:
    """(goal index, one row per shadow rate)."""
    goal = goal_index(prof, target, margin)
    out: list[Row] = []
    accepted_at_tau = float(prof.at(np.asarray([tau]))[0][0])
    for p in rates:
        n = (
            None
            if goal is None
            else required_requests(prof, Design(tau, p), target, delta, goal, power)
        )
        shadowed = None if n is None else math.ceil(n * accepted_at_tau * p)
        out.append(
            Row(
                p=p,
                requests=n,
                shadowed=shadowed,
                hours=None if n is None or not per_hour else n / per_hour,
                shadow_usd=None
                if shadowed is None or strong_call_usd is None
                else shadowed * strong_call_usd,
            )
        )
    return goal, out


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


def pilot(d: Dataset, t: FloatArray, counts: estimates.Counts) -> tuple[Profile, Profile]:
    """(point profile, cautious profile) from a pilot log: the first places the goal, the
    second, with disagreement at its ``PILOT_LEVEL`` upper limit, sizes the measurement."""
    accepted = estimates._at_least(d.conf, t) / max(d.n, 1)
    point = Profile(thresholds=t, accepted=accepted, disagree=estimates.point(counts))
    upper = np.maximum(estimates.upper(counts, 1.0 - PILOT_LEVEL), point.disagree)
    return point, Profile(thresholds=t, accepted=accepted, disagree=np.minimum(upper, accepted))


def design_in_force(d: Dataset) -> tuple[float, float, float | None]:
    """(threshold, shadow rate, requests per hour) of the most recent stratum in the window."""
    last = d.stratum[int(np.argmax(d.ts_ms))] if d.n else 0
    m = d.stratum == last
    taus = d.tau[m][~np.isnan(d.tau[m])]
    tau = float(np.median(taus)) if len(taus) else 0.7
    rates = d.shadow_rate[m][~np.isnan(d.shadow_rate[m])]
    p = float(np.median(rates)) if len(rates) else 0.0
    span_h = (int(d.ts_ms.max()) - int(d.ts_ms.min())) / 3_600_000 if d.n > 1 else 0.0
    return tau, p, (d.n / span_h if span_h > 0 else None)


def needed(
    d: Dataset, cal: Calibration, delta: float, power: float = 0.8, label: str | None = None
) -> Need:
    """What a fresh window must hold for a calibration at ``delta`` to pass (``plan``)."""
    sub = d if label is None else d.subset(d.cheap_label == d.labels.index(label))
    share = 1.0 if label is None else sub.n / max(d.n, 1)
    level = delta if label is None else delta / max(len(d.labels), 1)
    t = cal.curve.thresholds
    counts = estimates.counts(sub.sample(), t)
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
