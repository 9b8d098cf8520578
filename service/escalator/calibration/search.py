"""The search stage: which thresholds the data certify, for either objective, and when to
refuse. Both walk a grid in a fixed sequence from the safest point down, stopping at the first
point whose bound (``curves.py``) misses the target (``walk``).

The quality objective (agreement with the strong model). The grid is tested from escalate-all
(agreement 1), then 1.00, 0.99, ... Each test asks whether the lower bound on agreement at level
``delta`` reaches the target; the lowest threshold passed is the one chosen. Because the order
is fixed before the data are seen, this controls the chance of passing *any* threshold whose
true agreement is below the target at ``delta`` (fixed-sequence testing, as in
Learn-then-Test), so:

    with probability at least 1 - delta over the measurement window, the agreement with the
    strong model of routed answers at the chosen threshold, on traffic like the window's, is
    at least the target.

It refuses (``status == "refused"``) when the walk stops at escalate-all, or at a threshold
whose escalation rate is more than ``margin`` above that of the best threshold by point
estimate: the data are then not enough, and ``sizing.needed`` says how much more would be.
Per-label thresholds do the same within each cheap label's answers, with delta split over
the labels; a label that cannot be certified escalates everything, and says so. The rate and
budget objectives choose by point estimate and promise nothing.

The human objective (accuracy against people): the cheapest pair of thresholds (cheap ``t_c``,
strong ``t_s``) certified within a budget of traffic sent to people. The strong grid has ``K``
points (default 9); each gets ``delta / K`` (Bonferroni), and within it the cheap grid is walked
as above, with the betting bound (``bounds.error_upper``, tuned against the target). The pair
that sends everything to people (t_c = t_s = 1.01) is right by construction and passes without
a test. With probability at least ``1 - delta`` *every* pair passed, on every strong threshold at
once, is truly at or above the target; choosing the cheapest of them within the human budget
(estimated from the cheap and strong answers, never the human labels) keeps that.

Undecided adjudications. A request sampled for adjudication without a decision yet counts as
wrong at every pair that does not send it to people. That can only lower each request's
contribution to the bets (a factor ``1 + lam (m - X)`` falls as ``X`` rises), so the bound stays
valid whatever made the decision late (a hard case, a busy reviewer, an expired item), provided
a decision's timing does not depend on the labels of requests that came *after* it. The CLI can
instead refuse before reading any label (``--undecided refuse``), which spends nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from escalator.calibration import bounds, curves, estimators
from escalator.calibration.adjudications import HumanSample
from escalator.calibration.curves import Curve
from escalator.calibration.dataset import (
    STRONG_ONLY,
    CalibrationError,
    Dataset,
    cheap_grid,
    grids,
)

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
Objective = Literal["quality", "rate", "budget"]
PROCEDURE = "fixed-sequence Clopper-Pearson (Hajek strata), v1"
HUMAN_PROCEDURE = "Bonferroni over strong thresholds x fixed-sequence over cheap thresholds, "
HUMAN_PROCEDURE += "betting bound (Waudby-Smith-Ramdas) on Horvitz-Thompson adjudications, v2"


def walk(lower: FloatArray, target: float) -> BoolArray:
    """Fixed sequence along an ascending grid, from the top down: True for each point passed
    before the first failure (possibly none)."""
    passed = np.zeros(len(lower), dtype=bool)
    for j in range(len(lower) - 1, -1, -1):
        if lower[j] < target:
            break
        passed[j] = True
    return passed


def fixed_sequence(lower: FloatArray, target: float) -> int:
    """Walk down from the top of the grid; the lowest index passed before the first failure.

    The grid's last point is escalate-all, which always passes. ``lower`` is indexed like the
    (ascending) grid."""
    passed = walk(lower[:-1], target)
    return int(np.argmax(passed)) if passed.any() else len(lower) - 1


def best_by_point(c: Curve, target: float) -> int:
    """The cheapest threshold whose point estimate, and that of every threshold above it,
    reaches the target: what a calibration with unlimited data would approach."""
    return fixed_sequence(c.agreement, target)


def _check(delta: float) -> None:
    if not 0 < delta < 1:
        raise CalibrationError(f"delta must be in (0, 1), not {delta}")


@dataclass(frozen=True)
class LabelResult:
    """One cheap label's certification, within the answers that carry it."""

    label: str
    threshold: float
    certified: bool
    answers: int
    shadowed: int
    escalation: float
    agreement_lower: float
    best_threshold: float
    best_escalation: float


@dataclass(frozen=True)
class Calibration:
    objective: Objective
    target: float
    delta: float
    margin: float
    curve: Curve
    chosen: int  # index on the grid (escalate-all when refused)
    certified: int  # where the fixed sequence stopped
    best: int  # the point-estimate optimum
    status: Literal["certified", "refused", "chosen"]
    reason: str = ""
    labels: tuple[LabelResult, ...] = ()
    label_thresholds: dict[str, float] = field(default_factory=dict)

    @property
    def threshold(self) -> float:
        return float(self.curve.thresholds[self.chosen])


def _verdict(c: Curve, target: float, margin: float) -> tuple[int, int, bool, str]:
    """(certified index, best index, useful?, why not) for one curve."""
    top = len(c.thresholds) - 1
    cert = fixed_sequence(c.agreement_lower, target)
    best = best_by_point(c, target)
    if best == top:
        return cert, best, False, "no threshold's estimated agreement reaches the target"
    if cert == top or c.escalation[cert] >= 1.0:
        return cert, best, False, "no threshold that accepts anything can be certified"
    if c.escalation[cert] > c.escalation[best] + margin + 1e-12:
        return (
            cert,
            best,
            False,
            f"the lowest certifiable threshold escalates {c.escalation[cert]:.1%}, more than "
            f"{margin:.0%} above the best estimate ({c.escalation[best]:.1%} at "
            f"t={c.thresholds[best]:.2f})",
        )
    return cert, best, True, ""


def calibrate(
    d: Dataset,
    *,
    objective: Objective = "quality",
    target: float = 0.98,
    delta: float = 0.05,
    margin: float = 0.10,
    grid: Sequence[float] | None = None,
    per_label: bool = False,
) -> Calibration:
    """Choose a threshold (see the module docstring for what is guaranteed, and when)."""
    _check(delta)
    thresholds = cheap_grid(grid)
    c = curves.curve(d, thresholds, delta=delta, target=target if objective == "quality" else None)
    top = len(thresholds) - 1
    if objective == "rate":
        ok = np.flatnonzero(c.escalation <= target + 1e-12)
        i = int(ok[np.argmax(thresholds[ok])]) if len(ok) else 0
        return Calibration(objective, target, delta, margin, c, i, i, i, "chosen")
    if objective == "budget":
        ok = np.flatnonzero(c.cost_per_1k <= target + 1e-12)
        if len(ok) == 0:
            i = 0  # nothing fits: cheap-only is the cheapest there is
        else:
            i = int(ok[np.lexsort((c.cost_per_1k[ok], -c.agreement[ok]))[0]])
        return Calibration(objective, target, delta, margin, c, i, i, i, "chosen")
    if not per_label:
        cert, best, useful, why = _verdict(c, target, margin)
        status: Literal["certified", "refused"] = "certified" if useful else "refused"
        return Calibration(
            objective, target, delta, margin, c, cert if useful else top, cert, best, status, why
        )
    results = []
    share = delta / max(len(d.labels), 1)
    for code, label in enumerate(d.labels):
        sub = d.subset(d.cheap_label == code)
        if sub.n == 0:
            continue
        lc = curves.curve(sub, thresholds, delta=share, target=target)
        cert, best, useful, _ = _verdict(lc, target, margin)
        results.append(
            LabelResult(
                label=label,
                threshold=float(thresholds[cert]) if useful else STRONG_ONLY,
                certified=useful,
                answers=sub.n,
                shadowed=int(sub.shadowed.sum()),
                escalation=float(lc.escalation[cert]) if useful else 1.0,
                agreement_lower=float(lc.agreement_lower[cert]),
                best_threshold=float(thresholds[best]),
                best_escalation=float(lc.escalation[best]),
            )
        )
    any_ok = any(r.certified for r in results)
    return Calibration(
        objective,
        target,
        delta,
        margin,
        c,
        top,
        top,
        best_by_point(c, target),
        "certified" if any_ok else "refused",
        "" if any_ok else "no label can be certified",
        labels=tuple(results),
        label_thresholds={r.label: r.threshold for r in results},
    )


def routed_escalation(d: Dataset, cal: Calibration) -> tuple[float, float, float]:
    """Escalation rate (95% interval, point) at the chosen thresholds, per-label ones too."""
    if not cal.label_thresholds:
        return cal.curve.escalation_interval(cal.chosen)
    t = np.full(d.n, cal.threshold)
    for code, label in enumerate(d.labels):
        if label in cal.label_thresholds:
            t[d.cheap_label == code] = cal.label_thresholds[label]
    k = int(((d.conf < t) | (d.conf < 0)).sum())
    lo, hi = curves.interval95(k, d.n)
    return lo, k / max(d.n, 1), hi


Status = Literal["certified", "refused"]


@dataclass(frozen=True)
class HumanCalibration:
    target: float
    budget: float
    delta: float  # the whole share this attempt spent (each strong threshold: delta / K)
    review_cost: float
    cheap_grid: FloatArray
    strong_grid: FloatArray
    accuracy: FloatArray  # (Tc, Ts) Hájek point estimates (decided adjudications)
    accuracy_lower: FloatArray  # (Tc, Ts) at delta / K each (pending ones counted wrong)
    human: FloatArray  # (Tc, Ts) estimated share to people
    escalation: FloatArray  # (Tc,) observed share escalated by the cheap tier
    cost_per_1k: FloatArray  # (Tc, Ts) models + people (at review_cost per item)
    passed: BoolArray  # (Tc, Ts) passed by the fixed sequences
    status: Status
    chosen: tuple[int, int] | None
    best: tuple[int, int] | None  # the cheapest pair by point estimate within the budget
    reason: str = ""
    adjudicated: int = 0  # decided adjudications
    pending: int = 0  # sampled adjudications without a decision, counted as wrong

    @property
    def cheap_threshold(self) -> float:
        return float(self.cheap_grid[self.chosen[0]]) if self.chosen else STRONG_ONLY

    @property
    def strong_threshold(self) -> float:
        return float(self.strong_grid[self.chosen[1]]) if self.chosen else STRONG_ONLY


def _by_cost(
    mask: BoolArray, ts: FloatArray, share: FloatArray, cost: FloatArray
) -> list[tuple[int, int]]:
    """The pairs in ``mask``, cheapest first (then fewest to people, then lowest t_s)."""
    idx = np.argwhere(mask)
    keys = (ts[idx[:, 1]], share[idx[:, 0], idx[:, 1]], cost[idx[:, 0], idx[:, 1]])
    return [(int(i), int(j)) for i, j in idx[np.lexsort(keys)]] if len(idx) else []


def calibrate_human(
    d: Dataset,
    h: HumanSample,
    strong_conf: FloatArray,
    strong_review: BoolArray,
    *,
    target: float,
    budget: float,
    delta: float = 0.05,
    review_cost: float = 0.0,
    grid: Sequence[float] | FloatArray | None = None,
    strong_grid: Sequence[float] | None = None,
    lower_override: FloatArray | None = None,
) -> HumanCalibration:
    """The cheapest certified pair within the human budget (module docstring: the promise).

    ``lower_override`` replaces the lower bounds (tests use it to show that the statistical
    check fails with a bound that is not one)."""
    _check(delta)
    if not 0 < target <= 1:
        raise CalibrationError(f"--target {target}: accuracy must be in (0, 1]")
    if not 0 <= budget <= 1:
        raise CalibrationError(f"--human-budget {budget}: a share of traffic, in [0, 1]")
    if review_cost < 0:
        raise CalibrationError(f"--review-cost {review_cost}: must be >= 0")
    if h.m == 0:
        raise CalibrationError(
            "no adjudicated human decisions in the window: set ESCALATOR_ADJUDICATE_DISAGREE "
            "and ESCALATOR_ADJUDICATE_AGREE > 0 and measure first"
        )
    tc, ts = grids(grid, strong_grid)
    k = len(ts)
    lower = (
        bounds.lower_bounds(h, tc, ts, delta / k, target)
        if lower_override is None
        else lower_override
    )
    z, m = estimators.cell_counts(h, tc, ts)
    point = 1.0 - estimators.hajek(h, z, m)
    passed = np.stack([walk(lower[:, j], target) for j in range(k)], axis=1)
    share = curves.human_share(d, strong_conf, strong_review, tc, ts)
    cost = curves.cost_per_1k(d, tc)[:, None] + 1000.0 * review_cost * share
    esc = (d.n - estimators.at_least(d.conf, tc)) / max(d.n, 1)
    fits = share <= budget + 1e-12

    def cheapest(mask: BoolArray) -> tuple[int, int] | None:
        ordered = _by_cost(mask, ts, share, cost)
        return ordered[0] if ordered else None

    chosen = cheapest(passed & fits)
    best = cheapest((point >= target) & fits)
    reason = ""
    if chosen is None:
        if best is None:
            reason = f"no pair's estimated accuracy reaches the target within {budget:.1%}"
            reason += " of traffic to people"
        else:
            reason = (
                f"no pair that sends at most {budget:.1%} of traffic to people can be "
                f"certified (best estimate: t_c={tc[best[0]]:.2f}, t_s={ts[best[1]]:.2f}, "
                f"accuracy {point[best]:.4f})"
            )
    return HumanCalibration(
        target=target,
        budget=budget,
        delta=delta,
        review_cost=review_cost,
        cheap_grid=tc,
        strong_grid=ts,
        accuracy=point,
        accuracy_lower=lower,
        human=share,
        escalation=np.asarray(esc, np.float64),
        cost_per_1k=cost,
        passed=passed,
        status="certified" if chosen is not None else "refused",
        chosen=chosen,
        best=best,
        reason=reason,
        adjudicated=h.decided,
        pending=int(h.pending.sum()),
    )
