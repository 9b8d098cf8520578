"""Certifying tier 0's threshold on a window that training never saw.

The statement, the same kind as ``escalator calibrate``'s:

    with probability at least 1 - delta over the certification window, on traffic like that
    window's, the routed answers with tier 0 in front (tier 0's label where its confidence is
    at least t, the models' routed label elsewhere) agree with the models' routed labels at
    least T of the time.

Equivalently, ``D(t) = P(conf >= t, tier 0's label != the routed label) <= 1 - T``: the share
of all traffic that tier 0 answers differently from the models. Composed with a calibrated
cheap tier (agreement with the strong model >= T1 at level delta1), tier 0 in front keeps
agreement with the strong model >= T1 - (1 - T) at level delta + delta1 (a union bound).

The machinery is calibrate's: ``D(t)`` is bounded per threshold by the betting bound of
``calibration/betting.py`` (one stratum, the window's pairs in time order in its blocks, the
variable ``1{conf >= t, disagree}``, bets tuned against the boundary ``1 - T``); the grid is
walked from the top (1.01: tier 0 answers nothing, agreement 1) down, and the first threshold
whose bound misses the target stops the walk (fixed-sequence testing: the order is fixed before
the data are seen, so the chance of passing any threshold whose true agreement is below T is at
most delta). The certified threshold is the highest threshold passed that answers as much of
the window as the walk's last pass (``settle``): every threshold passed is certified, and those
below it differ from it only on confidences the window never showed, about which it says
nothing. (On the emulator's keyword world every pair of a window had confidence >= 0.99 and
the walk reached 0.00: tier 0 then answered *any* text, however unsure; now it stops at 0.99.)
It refuses when that threshold
answers nothing, or answers more than ``margin`` less of the traffic than the best threshold by
point estimate would: the data are not enough, and ``needed`` says how many pairs a fresh
window should hold. The ledger of ``calibration/threshold_file.py`` (objective ``tier0``)
makes a window certify once, spending ``delta * 6 / (pi^2 k^2)`` at attempt k.

Assumptions: the window's pairs are independent and identically distributed (traffic like the
window's), and the model was fixed before the window was seen (trained on earlier pairs).
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import numpy as np
import numpy.typing as npt

from escalator.calibration import betting
from escalator.calibration.sizing import smallest_passing
from escalator.tier0.model import Tier0Model
from escalator.tier0.pairs import Window

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
PROCEDURE = "fixed-sequence betting bound (one stratum), tier 0, v1"
#: A threshold above every confidence: tier 0 answers nothing.
NOTHING = 1.01
#: Plans aim at this share of the margin (as calibration's plans do).
GOAL_SHARE = 0.75
MAX_PAIRS = 10**9


def default_grid() -> FloatArray:
    return np.asarray([*np.round(np.arange(0, 1.0001, 0.01), 4), NOTHING])


@dataclass(frozen=True)
class Certification:
    target: float
    delta: float  # the share of the error budget this attempt spent
    margin: float
    thresholds: FloatArray  # ascending, the last is NOTHING
    answered: FloatArray  # share of the window tier 0 answers at t
    agreement: FloatArray  # point estimate of 1 - D(t)
    agreement_lower: FloatArray  # 1 - the betting bound on D(t), at level delta
    answered_agreement: FloatArray  # point: agreement among tier 0's own answers at t
    pairs: int
    certified_index: int  # where the fixed sequence stopped
    best_index: int  # the same walk on point estimates
    status: Literal["certified", "refused"]
    reason: str = ""

    @property
    def chosen(self) -> int:
        return self.certified_index if self.status == "certified" else len(self.thresholds) - 1

    @property
    def threshold(self) -> float:
        return float(self.thresholds[self.chosen])


def walk(values: FloatArray, target: float) -> int:
    """From the top of the grid down, the lowest index passed before the first failure (the
    top always passes)."""
    chosen = len(values) - 1
    for j in range(len(values) - 2, -1, -1):
        if values[j] < target:
            break
        chosen = j
    return chosen


def settle(answered: FloatArray, passed: int) -> int:
    """The highest index at or above ``passed`` (below the top, NOTHING) answering the same
    share of the window as ``passed``: the walk passed all of them, so it may be chosen."""
    j = passed
    while j + 1 < len(answered) - 1 and answered[j + 1] == answered[passed]:
        j += 1
    return j


def _counts(
    conf: FloatArray, disagree: BoolArray, thresholds: FloatArray
) -> tuple[IntArray, FloatArray]:
    """Betting's (1, B) block sizes and (1, B, 1, P) counts of ``1{conf >= t, disagree}``."""
    n = len(conf)
    block = betting.block_of(np.arange(n) / max(n, 1))
    b_count = len(betting.BLOCKS)
    sizes = np.bincount(block, minlength=b_count).astype(np.int64)[None, :]
    hits = (conf[:, None] >= thresholds[None, :]) & disagree[:, None]  # (n, P)
    counts = np.zeros((1, b_count, 1, len(thresholds)))
    for b in range(b_count):
        counts[0, b, 0] = hits[block == b].sum(axis=0)
    return sizes, counts


def bound(
    conf: FloatArray, disagree: BoolArray, thresholds: FloatArray, delta: float, target: float
) -> FloatArray:
    """Lower bounds on agreement ``1 - D(t)`` per threshold, each at level ``delta``."""
    sizes, counts = _counts(conf, disagree, thresholds)
    upper = betting.upper(sizes, counts, np.ones((1, 1)), delta, 1.0 - target)
    return np.asarray(1.0 - upper, np.float64)


def certify_scores(
    conf: FloatArray,
    disagree: BoolArray,
    *,
    target: float,
    delta: float,
    margin: float = 0.10,
    thresholds: FloatArray | None = None,
) -> Certification:
    """Certify from tier 0's confidences on the window's pairs (in time order) and whether
    its label differs from the routed one."""
    t = default_grid() if thresholds is None else np.asarray(thresholds, np.float64)
    if t[-1] < NOTHING:
        t = np.append(t, NOTHING)
    n = len(conf)
    at = conf[:, None] >= t[None, :]
    answered = at.sum(axis=0) / max(n, 1)
    wrong = (at & disagree[:, None]).sum(axis=0)
    agreement = 1.0 - wrong / max(n, 1)
    among = np.where(at.sum(axis=0) > 0, 1.0 - wrong / np.maximum(at.sum(axis=0), 1), 1.0)
    lower = bound(conf, disagree, t, delta, target) if n else np.zeros(len(t))
    lower[-1] = 1.0  # answering nothing agrees always
    cert, best = settle(answered, walk(lower, target)), walk(agreement, target)
    top = len(t) - 1
    status: Literal["certified", "refused"] = "refused"
    reason = ""
    if best == top or answered[best] <= 0:
        reason = "no threshold at which tier 0 answers anything reaches the target by estimate"
    elif cert == top or answered[cert] <= 0:
        reason = "no threshold at which tier 0 answers anything can be certified"
    elif answered[cert] < answered[best] - margin - 1e-12:
        reason = (
            f"the lowest certifiable threshold answers {answered[cert]:.1%}, more than "
            f"{margin:.0%} below the best estimate ({answered[best]:.1%} at t={t[best]:.2f})"
        )
    else:
        status = "certified"
    return Certification(
        target=target,
        delta=delta,
        margin=margin,
        thresholds=t,
        answered=np.asarray(answered, np.float64),
        agreement=np.asarray(agreement, np.float64),
        agreement_lower=lower,
        answered_agreement=np.asarray(among, np.float64),
        pairs=n,
        certified_index=cert,
        best_index=best,
        status=status,
        reason=reason,
    )


def scores_on(model: Tier0Model, w: Window) -> tuple[FloatArray, BoolArray]:
    """Tier 0's confidence per pair of the window, and whether its label differs."""
    best, conf = model.scores(w.texts())
    predicted = np.asarray(model.classes, dtype=object)[best]
    disagree = predicted != np.asarray(w.labels(), dtype=object)
    return conf, np.asarray(disagree, bool)


def certify(
    model: Tier0Model, w: Window, *, target: float, delta: float, margin: float = 0.10
) -> tuple[Certification, FloatArray, BoolArray]:
    conf, disagree = scores_on(model, w)
    return certify_scores(conf, disagree, target=target, delta=delta, margin=margin), conf, disagree


def guarantee(c: Certification) -> str:
    return (
        f"with probability >= {1 - c.delta:.4g} over the certification window, on traffic "
        f"like that window's, routed answers with tier 0 answering at confidence >= "
        f"{c.threshold:.2f} agree with the models' routed answers at least {c.target:.2%} "
        "of the time"
    )


def needed(c: Certification, delta: float, power: float = 0.8) -> int | None:
    """About how many pairs a fresh window needs to certify at ``delta`` with probability
    ``power``, if traffic is like this window's: the threshold aimed at is the highest one
    answering within ``GOAL_SHARE`` of the margin of the best by point estimate; each
    block's disagreements are taken at their ``power`` quantile (normal approximation) and
    every threshold from the top down to the goal must pass. None: not even ``MAX_PAIRS``,
    or no threshold to aim at."""
    top = len(c.thresholds) - 1
    if c.best_index == top or c.answered[c.best_index] <= 0:
        return None
    within = np.flatnonzero(c.answered[:top] >= c.answered[c.best_index] - GOAL_SHARE * c.margin)
    goal = int(within.max())
    disagree = np.clip(1.0 - c.agreement[goal:], 0.0, 1.0)
    z = NormalDist().inv_cdf(power)
    m0 = 1.0 - c.target

    def passes(n: int) -> bool:
        sizes = betting.block_sizes(n)[None, :]
        mean = sizes[0, :, None] * disagree[None, :]
        k = np.minimum(mean + z * np.sqrt(mean * (1 - disagree[None, :])), sizes[0, :, None])
        counts = k[None, :, None, :]
        upper = betting.upper(sizes, counts, np.ones((1, 1)), delta, m0)
        return bool(np.all(upper[:-1] < m0)) if len(upper) > 1 else True

    return smallest_passing(passes, MAX_PAIRS)
