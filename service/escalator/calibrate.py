"""Threshold calibration from the decisions log: weighted estimates with bootstrap intervals.

Data. Decisions are paired per request id: the cheap answer (every request has one), the
strong answer where one exists, and the gold label where the request carried one. A strong
answer exists with probability 1 for an escalated request and with the shadow rate ``p`` for
an accepted one, so each observed strong answer is weighted by ``1 / sample_rate``
(Horvitz-Thompson): the estimates are unbiased for the whole traffic, not just the sample.

Estimates per threshold ``t`` (accept when cheap confidence >= t), over all N requests:
    escalation rate  = #(conf < t) / N                                   (exact)
    agreement        = [#(conf < t) + sum_{conf >= t} w * 1(cheap == strong)] / N
    cost per request = [sum cheap_cost + sum_{conf < t} w * strong_cost] / N
    accuracy         = the same construction against gold labels, over requests that have one
An escalated request's routed answer *is* the strong answer, so it agrees by definition.

Intervals: percentile bootstrap over requests (95%: 2.5th and 97.5th percentiles).
Objectives: (a) quality: the cheapest threshold whose *lower* bound on agreement reaches the
target; (b) rate: the highest threshold whose escalation rate stays at or below a target;
(c) budget: the best agreement whose cost per 1,000 requests stays within a budget.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from escalator.errors import EscalatorError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Objective = Literal["quality", "rate", "budget"]
STRONG_ONLY = 1.01  # a threshold above every confidence: everything escalates


class CalibrationError(EscalatorError):
    """The decisions cannot support a calibration (no pairs, no strong answers, ...)."""


@dataclass(frozen=True)
class Dataset:
    """Per request: cheap answer, strong answer where observed (weight 1/p), gold label."""

    ids: list[str]
    labels: list[str]
    conf: FloatArray
    cheap_label: IntArray  # -1: invalid answer
    cheap_cost: FloatArray
    strong_label: IntArray  # -1: not observed
    strong_cost: FloatArray
    weight: FloatArray  # 1/sample_rate where observed, else 0
    gold: IntArray  # -1: none
    cheap_model: str = ""
    strong_model: str = ""
    threshold_versions: tuple[str, ...] = ()

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def observed(self) -> npt.NDArray[np.bool_]:
        return self.strong_label >= 0

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for array in (self.conf, self.cheap_label, self.strong_label, self.weight, self.gold):
            h.update(np.ascontiguousarray(array).tobytes())
        h.update("\n".join(self.ids).encode())
        return h.hexdigest()

    def subset(self, mask: npt.NDArray[np.bool_]) -> Dataset:
        idx = np.flatnonzero(mask)
        return Dataset(
            ids=[self.ids[i] for i in idx],
            labels=self.labels,
            conf=self.conf[idx],
            cheap_label=self.cheap_label[idx],
            cheap_cost=self.cheap_cost[idx],
            strong_label=self.strong_label[idx],
            strong_cost=self.strong_cost[idx],
            weight=self.weight[idx],
            gold=self.gold[idx],
            cheap_model=self.cheap_model,
            strong_model=self.strong_model,
            threshold_versions=self.threshold_versions,
        )


def pair_decisions(records: Iterable[dict[str, Any]]) -> Dataset:
    """Pair decisions-log records per id. Requests without a cheap answer are left out."""
    cheap: dict[str, dict[str, Any]] = {}
    strong: dict[str, dict[str, Any]] = {}
    gold: dict[str, str] = {}
    versions: set[str] = set()
    for rec in records:
        attempt = rec.get("attempt") or {}
        rid = rec.get("id")
        if not isinstance(rid, str):
            continue
        if isinstance(rec.get("gold_label"), str):
            gold[rid] = rec["gold_label"]
        versions.add(str(rec.get("threshold_version")))
        if attempt.get("tier") == "cheap":
            cheap[rid] = rec
        elif attempt.get("tier") == "strong" and attempt.get("valid"):
            strong[rid] = rec
    if not cheap:
        raise CalibrationError("no cheap-tier decisions to calibrate on")
    if not strong:
        raise CalibrationError(
            "no strong-tier answers: run with ESCALATOR_SHADOW_RATE > 0 to measure first"
        )
    ids = sorted(cheap)
    labels = sorted(
        {
            str(r["attempt"]["label"])
            for r in (*cheap.values(), *strong.values())
            if r["attempt"].get("label") is not None
        }
        | set(gold.values())
    )
    code = {label: i for i, label in enumerate(labels)}
    n = len(ids)
    data = {
        "conf": np.zeros(n),
        "cheap_cost": np.zeros(n),
        "strong_cost": np.zeros(n),
        "weight": np.zeros(n),
    }
    cheap_label = np.full(n, -1, dtype=np.int64)
    strong_label = np.full(n, -1, dtype=np.int64)
    gold_label = np.full(n, -1, dtype=np.int64)
    for i, rid in enumerate(ids):
        ca = cheap[rid]["attempt"]
        valid = bool(ca.get("valid")) and ca.get("label") in code
        data["conf"][i] = float(ca.get("confidence", 0.0)) if valid else 0.0
        cheap_label[i] = code[ca["label"]] if valid else -1
        data["cheap_cost"][i] = float(ca.get("cost_usd", 0.0))
        if rid in strong:
            sa = strong[rid]["attempt"]
            rate = strong[rid].get("sample_rate") or 1.0
            strong_label[i] = code[sa["label"]]
            data["strong_cost"][i] = float(sa.get("cost_usd", 0.0))
            data["weight"][i] = 1.0 / float(rate)
        if rid in gold:
            gold_label[i] = code[gold[rid]]
    first_cheap = next(iter(cheap.values()))["attempt"]["model"]
    first_strong = next(iter(strong.values()))["attempt"]["model"]
    return Dataset(
        ids=ids,
        labels=labels,
        cheap_label=cheap_label,
        strong_label=strong_label,
        gold=gold_label,
        cheap_model=str(first_cheap),
        strong_model=str(first_strong),
        threshold_versions=tuple(sorted(versions)),
        **data,
    )


@dataclass(frozen=True)
class Curve:
    """Estimates per threshold: point values and 95% bootstrap bounds (lo, hi)."""

    thresholds: FloatArray
    escalation: FloatArray
    agreement: FloatArray
    cost_per_1k: FloatArray
    accuracy: FloatArray | None
    escalation_ci: FloatArray  # shape (2, T)
    agreement_ci: FloatArray
    cost_ci: FloatArray
    accuracy_ci: FloatArray | None


def _stats(
    d: Dataset, mult: FloatArray, thresholds: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray | None]:
    """Estimates for every row of multiplicities ``mult`` (shape R x N) at every threshold."""
    order = np.argsort(d.conf, kind="stable")
    conf = d.conf[order]
    m = mult[:, order]
    k = np.searchsorted(conf, thresholds, side="left")  # escalated: the first k, conf < t
    n = m.sum(axis=1, keepdims=True)

    def prefix(x: FloatArray) -> FloatArray:
        out = np.zeros((m.shape[0], m.shape[1] + 1))
        np.cumsum(m * x[order], axis=1, out=out[:, 1:])
        return out

    ones = np.ones(d.n)
    w = d.weight
    agree = (d.cheap_label == d.strong_label) & d.observed
    count = prefix(ones)
    esc = count[:, k] / n
    wa = prefix(w * agree)
    agreement = (count[:, k] + wa[:, -1:] - wa[:, k]) / n
    cheap_total = prefix(d.cheap_cost)[:, -1:]
    strong_wc = prefix(w * d.strong_cost)
    cost = 1000 * (cheap_total + strong_wc[:, k]) / n
    accuracy = None
    has_gold = d.gold >= 0
    if has_gold.any():
        g = prefix(has_gold.astype(float))[:, -1:]
        strong_right = prefix(w * ((d.strong_label == d.gold) & has_gold))
        cheap_right = prefix(((d.cheap_label == d.gold) & has_gold).astype(float))
        accuracy = (strong_right[:, k] + cheap_right[:, -1:] - cheap_right[:, k]) / np.maximum(g, 1)
    return esc, agreement, cost, accuracy


def curve(
    d: Dataset,
    thresholds: Sequence[float] | FloatArray,
    *,
    bootstrap: int = 1000,
    seed: int = 0,
    chunk: int = 100,
) -> Curve:
    t = np.asarray(thresholds, dtype=float)
    point = _stats(d, np.ones((1, d.n)), t)
    rng = np.random.default_rng(seed)
    draws: list[list[FloatArray]] = [[], [], [], []]
    for start in range(0, bootstrap, chunk):
        rows = min(chunk, bootstrap - start)
        mult = rng.multinomial(d.n, np.full(d.n, 1.0 / d.n), size=rows).astype(float)
        for bucket, stat in zip(draws, _stats(d, mult, t), strict=True):
            if stat is not None:
                bucket.append(stat)

    def ci(bucket: list[FloatArray]) -> FloatArray:
        return np.percentile(np.vstack(bucket), [2.5, 97.5], axis=0)

    acc_point = point[3][0] if point[3] is not None else None
    return Curve(
        thresholds=t,
        escalation=point[0][0],
        agreement=point[1][0],
        cost_per_1k=point[2][0],
        accuracy=acc_point,
        escalation_ci=ci(draws[0]),
        agreement_ci=ci(draws[1]),
        cost_ci=ci(draws[2]),
        accuracy_ci=ci(draws[3]) if draws[3] else None,
    )


def choose(c: Curve, objective: Objective, target: float) -> int:
    """Index of the chosen threshold on the curve's grid."""
    idx = np.arange(len(c.thresholds))
    if objective == "quality":
        ok = idx[c.agreement_ci[0] >= target]
        if len(ok) == 0:
            return int(np.argmax(c.thresholds))  # only strong-only can promise it
        return int(ok[np.lexsort((c.thresholds[ok], c.cost_per_1k[ok]))[0]])
    if objective == "rate":
        ok = idx[c.escalation <= target + 1e-12]
        return int(ok[np.argmax(c.thresholds[ok])]) if len(ok) else 0
    ok = idx[c.cost_per_1k <= target + 1e-12]
    if len(ok) == 0:
        return 0  # nothing fits: cheap-only is the cheapest there is
    best = ok[np.lexsort((c.cost_per_1k[ok], -c.agreement[ok]))[0]]
    return int(best)


@dataclass(frozen=True)
class Baselines:
    cheap_only: dict[str, float | None]
    strong_only: dict[str, float | None]
    random_same_rate: dict[str, float | None]
    oracle: dict[str, float | None]


def baselines(d: Dataset, rate: float) -> Baselines:
    """Point estimates for the four comparisons, on the same data and weights."""
    n = d.n
    w = d.weight
    agree = ((d.cheap_label == d.strong_label) & d.observed).astype(float)
    cheap_cost = float(d.cheap_cost.mean())
    strong_cost = float((w * d.strong_cost).sum() / n)
    agree_cheap = float((w * agree).sum() / n)
    has_gold = d.gold >= 0
    g = max(int(has_gold.sum()), 1)
    acc_cheap = acc_strong = None
    if has_gold.any():
        acc_cheap = float(((d.cheap_label == d.gold) & has_gold).sum() / g)
        acc_strong = float((w * ((d.strong_label == d.gold) & has_gold)).sum() / g)
    disagree_rate = 1.0 - agree_cheap
    strong_cost_disagree = float((w * (1 - agree) * d.strong_cost * d.observed).sum() / n)

    def mix(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else (1 - rate) * a + rate * b

    return Baselines(
        cheap_only={
            "escalation": 0.0,
            "agreement": agree_cheap,
            "cost_per_1k": 1000 * cheap_cost,
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
            "escalation": disagree_rate,
            "agreement": 1.0,
            "cost_per_1k": 1000 * (cheap_cost + strong_cost_disagree),
            "accuracy": acc_strong,
        },
    )


@dataclass
class Calibration:
    objective: Objective
    target: float
    curve: Curve
    chosen: int
    label_thresholds: dict[str, float] = field(default_factory=dict)

    @property
    def threshold(self) -> float:
        return float(self.curve.thresholds[self.chosen])


def calibrate(
    d: Dataset,
    *,
    objective: Objective = "quality",
    target: float = 0.98,
    grid: Sequence[float] | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    per_label: bool = False,
) -> Calibration:
    thresholds = np.asarray(
        grid if grid is not None else [*np.round(np.arange(0, 1.0001, 0.01), 4), STRONG_ONLY]
    )
    c = curve(d, thresholds, bootstrap=bootstrap, seed=seed)
    result = Calibration(objective, target, c, choose(c, objective, target))
    if per_label:
        if objective != "quality":
            raise CalibrationError("per-label thresholds are supported for the quality objective")
        for code, label in enumerate(d.labels):
            mask = d.cheap_label == code
            if mask.sum() < 20:
                continue  # too few answers with this label to bound anything
            sub = curve(d.subset(mask), thresholds, bootstrap=bootstrap, seed=seed + code + 1)
            result.label_thresholds[label] = float(thresholds[choose(sub, "quality", target)])
    return result


def grid_arg(spec: str) -> list[float]:
    """``START:STOP:STEP`` (inclusive) -> thresholds, plus the strong-only point."""
    try:
        start, stop, step = (float(x) for x in spec.split(":"))
    except ValueError as exc:
        raise CalibrationError(f"--grid {spec!r} is not START:STOP:STEP") from exc
    if not (0 <= start <= stop <= 1 and step > 0):
        raise CalibrationError(f"--grid {spec!r}: need 0 <= START <= STOP <= 1 and STEP > 0")
    return [*np.round(np.arange(start, stop + step / 2, step), 6), STRONG_ONLY]
