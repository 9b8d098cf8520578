"""Curves: the estimates and bounds the search walks, per point of a grid, for both objectives
(``estimators.py`` and ``bounds.py`` applied to a whole grid, with cost and escalation beside
them), and the four baselines a calibration is compared with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from escalator.calibration import binomial, bounds, estimators
from escalator.calibration.adjudications import HumanSample
from escalator.calibration.dataset import STRONG_ONLY, Dataset

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Curve:
    """Estimates per threshold. ``agreement_lower`` holds at level 1 - ``delta`` per point."""

    thresholds: FloatArray
    escalated: IntArray  # requests escalated at t in the window
    requests: int
    escalation: FloatArray  # observed share escalated at t (exact on the window)
    agreement: FloatArray  # Hájek point estimate
    agreement_lower: FloatArray
    cost_per_1k: FloatArray
    accuracy: FloatArray | None
    delta: float

    def escalation_interval(self, i: int) -> tuple[float, float, float]:
        """(low, point, high) at grid index i: a 95% Clopper-Pearson interval for the rate
        on traffic like the window's (what the drift alert compares the live rate with)."""
        lo, hi = interval95(int(self.escalated[i]), self.requests)
        return lo, float(self.escalation[i]), hi


def interval95(k: int, n: int) -> tuple[float, float]:
    """A 95% Clopper-Pearson interval for a rate of ``k`` in ``n``."""
    return float(binomial.lower(k, n, 0.025)[()]), float(binomial.upper(k, n, 0.025)[()])


def curve(
    d: Dataset,
    thresholds: Sequence[float] | FloatArray,
    *,
    delta: float = 0.05,
    target: float | None = None,
) -> Curve:
    """Estimates per threshold; with a ``target``, a window of several threshold versions
    bounds each t with the estimator the design favours (``bounds.upper``)."""
    t = np.asarray(thresholds, dtype=np.float64)
    c = estimators.counts(d.sample(), t)
    choice = None if target is None else bounds.choose(c, delta, 1.0 - target)
    n = max(d.n, 1)
    escalated = d.n - estimators.at_least(d.conf, t)
    return Curve(
        thresholds=t,
        escalated=escalated,
        requests=d.n,
        escalation=escalated / n,
        agreement=1.0 - estimators.point(c, choice),
        agreement_lower=1.0 - bounds.upper(c, delta, choice),
        cost_per_1k=cost_per_1k(d, t),
        accuracy=_accuracy(d, t),
        delta=delta,
    )


def cost_per_1k(d: Dataset, t: FloatArray) -> FloatArray:
    strong = estimators.escalated_sum(d.sample(), t, d.strong_cost, d.answered)
    return np.asarray(1000 * (d.cheap_cost.sum() + strong) / max(d.n, 1), np.float64)


def _accuracy(d: Dataset, t: FloatArray) -> FloatArray | None:
    g = d.gold >= 0
    if not g.any():
        return None
    strong_right = ((d.strong_label == d.gold) & g).astype(np.float64)
    # Escalated requests without a gold label must not count: estimate over gold ones only.
    dg = d.subset(g)
    escalated_right = estimators.escalated_sum(dg.sample(), t, strong_right[g], dg.observed)
    cheap_right = (d.cheap_label == d.gold) & g & (d.conf >= 0)
    accepted_right = estimators.at_least(d.conf[cheap_right], t)
    return np.asarray((escalated_right + accepted_right) / g.sum(), np.float64)


@dataclass(frozen=True)
class Baselines:
    cheap_only: dict[str, float | None]
    strong_only: dict[str, float | None]
    random_same_rate: dict[str, float | None]
    oracle: dict[str, float | None]


def baselines(d: Dataset, rate: float) -> Baselines:
    """Point estimates for the four comparisons, with the same (Hájek) estimators."""
    c = curve(d, np.asarray([0.0, STRONG_ONLY]))
    cheap_cost = float(d.cheap_cost.mean())
    strong_cost = float(c.cost_per_1k[1]) / 1000 - cheap_cost  # the strong call alone
    agree_cheap = float(c.agreement[0])
    acc_cheap = acc_strong = None
    if c.accuracy is not None:
        acc_cheap, acc_strong = float(c.accuracy[0]), float(c.accuracy[1])
    invalid = float(np.mean(d.conf < 0))
    disagree = 1.0 - agree_cheap  # the valid answers that differ

    def mix(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else (1 - rate) * a + rate * b

    return Baselines(
        cheap_only={
            "escalation": invalid,
            "agreement": agree_cheap,
            "cost_per_1k": float(c.cost_per_1k[0]),
            "accuracy": acc_cheap,
        },
        strong_only={
            "escalation": 1.0,
            "agreement": 1.0,
            "cost_per_1k": 1000 * strong_cost,
            "accuracy": acc_strong,
        },
        random_same_rate={
            "escalation": rate,
            "agreement": rate + (1 - rate) * agree_cheap,
            "cost_per_1k": 1000 * (cheap_cost + rate * strong_cost),
            "accuracy": mix(acc_cheap, acc_strong),
        },
        oracle={
            "escalation": min(1.0, invalid + disagree),
            "agreement": 1.0,
            "cost_per_1k": 1000 * (cheap_cost + min(1.0, invalid + disagree) * strong_cost),
            "accuracy": acc_strong,
        },
    )


@dataclass(frozen=True)
class PeopleCurve:
    """Against people, per cheap threshold, routed as today (the strong answer below t)."""

    thresholds: FloatArray
    accuracy: FloatArray  # Hájek, over the decided rows
    accuracy_lower: FloatArray  # at level 1 - delta per point, pending rows counted wrong
    strong_wrong: FloatArray  # among requests escalated at t (nan: none)
    cheap_wrong_confident: FloatArray  # among requests with cheap conf >= t (nan: none)
    adjudicated: int
    pending: int
    delta: float


def people_curve(h: HumanSample, thresholds: FloatArray, delta: float) -> PeopleCurve:
    t = np.asarray(thresholds, dtype=np.float64)
    one = np.zeros(1)
    z, m = estimators.cell_counts(h, t, one, human_tier=False)
    w = estimators.weights(h)
    esc = h.cheap_conf[:, None] < t[None, :]
    cheap_wrong, strong_wrong = estimators.answers_wrong(h)

    def share(num: BoolArray, den: BoolArray) -> FloatArray:
        top = w @ (num & den).astype(np.float64)
        bottom = w @ den.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.asarray(np.where(bottom > 0, top / bottom, np.nan), np.float64)

    return PeopleCurve(
        thresholds=t,
        accuracy=1.0 - estimators.hajek(h, z, m)[:, 0],
        accuracy_lower=1.0 - bounds.error_upper(h, t, one, delta, human_tier=False)[:, 0],
        strong_wrong=share(strong_wrong[:, None], esc),
        cheap_wrong_confident=share(cheap_wrong[:, None], ~esc),
        adjudicated=h.decided,
        pending=int(h.pending.sum()),
        delta=delta,
    )


def human_share(
    d: Dataset, strong_conf: FloatArray, strong_review: BoolArray, t_c: FloatArray, t_s: FloatArray
) -> FloatArray:
    """(Tc, Ts) estimated share of traffic sent to people: conf < t_c and the strong answer
    does not settle it. From the cheap and strong answers only (Hájek within strata, as for
    cost), never from the human labels: the search may use it freely."""
    out = np.zeros((len(t_c), len(t_s)))
    s = d.sample()
    for k, ts in enumerate(t_s):
        to_people = ~((strong_conf >= ts) & (strong_conf >= 0) & ~strong_review)
        out[:, k] = estimators.escalated_sum(s, t_c, to_people.astype(np.float64), d.answered)
    return np.asarray(out / max(d.n, 1), np.float64)
