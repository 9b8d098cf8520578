"""Threshold calibration from the decisions log: certified thresholds, and when to refuse.

Data. Decisions are paired per request id (``pair_decisions``): the cheap answer (every request
has one), the strong answer where one was due or sampled, the gold label where the request
carried one, the threshold version and shadow rate in force. ``estimates`` turns them into a
Hájek point estimate and an exact lower bound on agreement per threshold (see its docstring).

Certification (the quality objective). The grid is tested in a fixed sequence from the safest
threshold down: escalate-all (agreement 1), then 1.00, 0.99, ... Each test asks whether the
lower bound on agreement at level ``delta`` reaches the target; the first failure stops the
walk, and the lowest threshold passed is the one chosen. Because the order is fixed before the
data are seen, this controls the chance of passing *any* threshold whose true agreement is
below the target at ``delta`` (fixed-sequence testing, as in Learn-then-Test), so:

    with probability at least 1 - delta over the measurement window, the agreement with the
    strong model of routed answers at the chosen threshold, on traffic like the window's, is
    at least the target.

It refuses (``status == "refused"``) when the walk stops at escalate-all, or at a threshold
whose escalation rate is more than ``margin`` above that of the best threshold by point
estimate: the data are then not enough, and ``plan.needed`` says how much more would be.
Per-label thresholds do the same within each cheap label's answers, with delta split over
the labels; a label that cannot be certified escalates everything, and says so.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from escalator.calibration import binomial, estimates
from escalator.contract.decisions import Decision
from escalator.errors import EscalatorError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
Objective = Literal["quality", "rate", "budget"]
STRONG_ONLY = 1.01  # a threshold above every confidence: everything escalates
PROCEDURE = "fixed-sequence Clopper-Pearson (Hajek strata), v1"


class CalibrationError(EscalatorError):
    """The decisions cannot support a calibration (no pairs, no strong answers, ...)."""


@dataclass(frozen=True)
class Dataset:
    """Per request: the cheap answer, the strong answer where observed, the design, gold."""

    ids: list[str]
    labels: list[str]
    conf: FloatArray  # -1: invalid or refused cheap answer (escalated at every threshold)
    cheap_label: IntArray  # -1: invalid
    cheap_cost: FloatArray
    strong_label: IntArray  # -1: no valid strong answer
    strong_cost: FloatArray  # 0 where no strong call was made
    answered: BoolArray  # a strong call was made (its answer may be invalid)
    accepted: BoolArray  # the cheap answer was accepted as routed
    certain: BoolArray  # the strong answer was due with probability 1
    stratum: IntArray  # index into ``strata``
    tau: FloatArray  # threshold routed by (nan: not recorded)
    shadow_rate: FloatArray  # shadow rate in force (nan: not recorded)
    gold: IntArray  # -1: none
    ts_ms: IntArray
    strata: tuple[str, ...] = ("default",)
    cheap_model: str = ""
    strong_model: str = ""

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def observed(self) -> BoolArray:
        return self.strong_label >= 0

    @property
    def sampled(self) -> BoolArray:
        """Strong calls made by the shadow sample at p < 1 (what estimation conditions on)."""
        return self.answered & ~self.certain

    @property
    def shadowed(self) -> BoolArray:
        """Accepted requests that also got a strong call (at any p, 1 included)."""
        return self.answered & self.accepted

    def sample(self) -> estimates.Sample:
        disagree = (self.strong_label < 0) | (self.strong_label != self.cheap_label)
        return estimates.Sample(
            conf=self.conf,
            certain=self.certain,
            sampled=self.sampled,
            disagree=disagree,
            stratum=self.stratum,
            tau=self.tau,
            shadow_rate=self.shadow_rate,
        )

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for array in (self.conf, self.cheap_label, self.strong_label, self.certain, self.gold):
            h.update(np.ascontiguousarray(array).tobytes())
        h.update("\n".join(self.ids).encode())
        return h.hexdigest()

    def subset(self, mask: BoolArray) -> Dataset:
        idx = np.flatnonzero(mask)
        arrays = {
            k: getattr(self, k)[idx]
            for k in (
                "conf",
                "cheap_label",
                "cheap_cost",
                "strong_label",
                "strong_cost",
                "answered",
                "accepted",
                "certain",
                "stratum",
                "tau",
                "shadow_rate",
                "gold",
                "ts_ms",
            )
        }
        return Dataset(
            ids=[self.ids[i] for i in idx],
            labels=self.labels,
            strata=self.strata,
            cheap_model=self.cheap_model,
            strong_model=self.strong_model,
            **arrays,
        )


def _rate(value: object) -> float:
    return (
        float(value) if isinstance(value, int | float) and not isinstance(value, bool) else np.nan
    )


def pair_decisions(records: Iterable[Decision]) -> Dataset:
    """Pair decisions-log records per id. Requests without a cheap answer are left out.

    A cheap record's ``outcome`` says whether the strong answer was certain (escalated) or
    left to the shadow sample (accepted). Its ``shadow_rate`` (older logs: the ``sample_rate``
    of that version's shadow records, where they agree) marks p = 1 as certain too.
    """
    cheap: dict[str, Decision] = {}
    strong: dict[str, Decision] = {}
    called: set[str] = set()
    gold: dict[str, str] = {}
    shadow_rates: dict[str, set[float]] = {}
    for rec in records:
        attempt, rid = rec.attempt, rec.id
        # A person's label (tier "human") is another source, read by calibration/human.py.
        if rec.gold_label is not None and attempt.tier != "human":
            gold[rid] = rec.gold_label
        if attempt.tier == "cheap":
            cheap[rid] = rec
        elif attempt.tier == "strong":
            called.add(rid)
            if rec.shadow:
                rate = _rate(rec.sample_rate)
                shadow_rates.setdefault(rec.threshold_version, set()).add(rate)
            if attempt.valid and attempt.label is not None:
                strong[rid] = rec
    if not cheap:
        raise CalibrationError("no cheap-tier decisions to calibrate on")
    if not strong:
        raise CalibrationError(
            "no strong-tier answers: run with ESCALATOR_SHADOW_RATE > 0 to measure first"
        )
    ids = sorted(cheap, key=lambda r: (cheap[r].ts_ms, r))
    labels = sorted(
        {
            r.attempt.label
            for r in (*cheap.values(), *strong.values())
            if r.attempt.label is not None
        }
        | set(gold.values())
    )
    code = {label: i for i, label in enumerate(labels)}
    versions = sorted({cheap[r].threshold_version for r in ids})
    vcode = {v: i for i, v in enumerate(versions)}
    n = len(ids)
    conf, ccost, scost = np.zeros(n), np.zeros(n), np.zeros(n)
    tau, srate = np.full(n, np.nan), np.full(n, np.nan)
    clab, slab, glab = (np.full(n, -1, dtype=np.int64) for _ in range(3))
    answered, certain = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    accepted = np.zeros(n, dtype=bool)
    stratum, ts = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    for i, rid in enumerate(ids):
        rec = cheap[rid]
        ca = rec.attempt
        valid = ca.valid and ca.label in code
        conf[i] = ca.confidence if valid else -1.0
        clab[i] = code[ca.label] if valid and ca.label is not None else -1
        ccost[i] = ca.cost_usd
        version = rec.threshold_version
        stratum[i] = vcode[version]
        tau[i] = _rate(rec.threshold)
        srate[i] = _rate(rec.shadow_rate)
        if np.isnan(srate[i]) and len(shadow_rates.get(version, ())) == 1:
            srate[i] = next(iter(shadow_rates[version]))
        accepted[i] = rec.outcome == "accepted"
        certain[i] = not accepted[i] or srate[i] >= 1.0
        ts[i] = rec.ts_ms
        answered[i] = rid in called
        if rid in strong:
            sa = strong[rid].attempt
            slab[i] = code[str(sa.label)]
            scost[i] = sa.cost_usd
        if rid in gold:
            glab[i] = code[gold[rid]]
    first_strong = next(iter(strong.values())).attempt.model
    return Dataset(
        ids=ids,
        labels=labels,
        conf=conf,
        cheap_label=clab,
        cheap_cost=ccost,
        strong_label=slab,
        strong_cost=scost,
        answered=answered,
        accepted=accepted,
        certain=certain,
        stratum=stratum,
        tau=tau,
        shadow_rate=srate,
        gold=glab,
        ts_ms=ts,
        strata=tuple(versions),
        cheap_model=cheap[ids[0]].attempt.model,
        strong_model=first_strong,
    )


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
        k, n = int(self.escalated[i]), self.requests
        lo = float(binomial.lower(k, n, 0.025)[()])
        hi = float(binomial.upper(k, n, 0.025)[()])
        return lo, float(self.escalation[i]), hi


def curve(
    d: Dataset,
    thresholds: Sequence[float] | FloatArray,
    *,
    delta: float = 0.05,
    target: float | None = None,
) -> Curve:
    """Estimates per threshold; with a ``target``, a window of several threshold versions
    bounds each t with the estimator the design favours (``estimates.upper``)."""
    t = np.asarray(thresholds, dtype=np.float64)
    c = estimates.counts(d.sample(), t)
    choice = None if target is None else estimates.choose(c, delta, 1.0 - target)
    n = max(d.n, 1)
    escalated = d.n - estimates._at_least(d.conf, t)
    return Curve(
        thresholds=t,
        escalated=escalated,
        requests=d.n,
        escalation=escalated / n,
        agreement=1.0 - estimates.point(c, choice),
        agreement_lower=1.0 - estimates.upper(c, delta, choice),
        cost_per_1k=_cost(d, t),
        accuracy=_accuracy(d, t),
        delta=delta,
    )


def _cost(d: Dataset, t: FloatArray) -> FloatArray:
    strong = estimates.escalated_sum(d.sample(), t, d.strong_cost, d.answered)
    return np.asarray(1000 * (d.cheap_cost.sum() + strong) / max(d.n, 1), np.float64)


def _accuracy(d: Dataset, t: FloatArray) -> FloatArray | None:
    g = d.gold >= 0
    if not g.any():
        return None
    strong_right = ((d.strong_label == d.gold) & g).astype(np.float64)
    # Escalated requests without a gold label must not count: estimate over gold ones only.
    dg = d.subset(g)
    escalated_right = estimates.escalated_sum(dg.sample(), t, strong_right[g], dg.observed)
    cheap_right = (d.cheap_label == d.gold) & g & (d.conf >= 0)
    accepted_right = estimates._at_least(d.conf[cheap_right], t)
    return np.asarray((escalated_right + accepted_right) / g.sum(), np.float64)


def fixed_sequence(lower: FloatArray, target: float) -> int:
    """Walk down from the top of the grid; the lowest index passed before the first failure.

    The grid's last point is escalate-all, which always passes. ``lower`` is indexed like the
    (ascending) grid."""
    chosen = len(lower) - 1
    for j in range(len(lower) - 2, -1, -1):
        if lower[j] < target:
            break
        chosen = j
    return chosen


def best_by_point(c: Curve, target: float) -> int:
    """The cheapest threshold whose point estimate, and that of every threshold above it,
    reaches the target: what a calibration with unlimited data would approach."""
    ok = c.agreement >= target
    best = len(ok) - 1
    for j in range(len(ok) - 2, -1, -1):
        if not ok[j]:
            break
        best = j
    return best


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


def default_grid() -> FloatArray:
    return np.asarray([*np.round(np.arange(0, 1.0001, 0.01), 4), STRONG_ONLY])


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
    if not 0 < delta < 1:
        raise CalibrationError(f"delta must be in (0, 1), not {delta}")
    thresholds = np.asarray(grid, dtype=np.float64) if grid is not None else default_grid()
    if thresholds[-1] < STRONG_ONLY:
        thresholds = np.append(thresholds, STRONG_ONLY)
    c = curve(d, thresholds, delta=delta, target=target if objective == "quality" else None)
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
        lc = curve(sub, thresholds, delta=share, target=target)
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
    lo = float(binomial.lower(k, d.n, 0.025)[()])
    hi = float(binomial.upper(k, d.n, 0.025)[()])
    return lo, k / max(d.n, 1), hi


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


def grid_arg(spec: str) -> list[float]:
    """``START:STOP:STEP`` (inclusive) -> thresholds, plus the strong-only point."""
    try:
        start, stop, step = (float(x) for x in spec.split(":"))
    except ValueError as exc:
        raise CalibrationError(f"--grid {spec!r} is not START:STOP:STEP") from exc
    if not (0 <= start <= stop <= 1 and step > 0):
        raise CalibrationError(f"--grid {spec!r}: need 0 <= START <= STOP <= 1 and STEP > 0")
    return [*np.round(np.arange(start, stop + step / 2, step), 6), STRONG_ONLY]
