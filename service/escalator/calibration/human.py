"""Calibration on human truth: accuracy of routed answers against people, and the cheapest pair
of thresholds (cheap ``t_c``, strong ``t_s``) whose accuracy is certified to reach a target.

Data. Human decisions (``attempt.tier == "human"``, contract/reviews.py) come from two queues.
Only the **adjudication** queue is a random sample: the strong tier puts a request that has
both model answers before a person with probability ``q_agree`` or ``q_disagree`` (by whether
the answers agree), so a request's inclusion probability is ``pi = s * q`` where ``s`` is the
probability that it got a strong answer at all (1 when escalated, the shadow rate ``p`` when
accepted). **Review** items are chosen by rule (low strong confidence, a review label, ...): they
are counted (cost, items) and never used as a sample. A decision's ``review_id`` may repeat
(at-least-once delivery); the first one counts.

Routing model at ``(t_c, t_s)``: the cheap answer when its confidence is >= ``t_c``; else the
strong answer when it is valid, its confidence is >= ``t_s`` and its label is not a review label;
else a person decides, which counts as correct (and as one review item). A reviewer's "neither"
makes every model label wrong.

Estimator. Within a stratum ``v`` (threshold version, ``N_v`` requests, iid) the design has four
cells ``g``: (escalated or p = 1, shadowed) x (answers agree, differ), each with one inclusion
probability ``pi_vg`` fixed by the design (``q`` from the adjudication records' ``review_rate``,
``p`` from the cheap records' ``shadow_rate``). For the indicator ``Z_i`` = "request i was
adjudicated, lies in cell g, and its routed answer is wrong", ``P(Z_i = 1) = pi_vg * mu_vg``
where ``mu_vg = P(cell g, routed answer wrong)``: adjudication's coin ignores the human label.
So ``sum_i Z_i ~ Binomial(N_v, pi_vg * mu_vg)`` exactly (iid requests, independent coins), and
an exact Clopper-Pearson upper limit on it, divided by ``pi_vg``, bounds ``mu_vg``: this is the
Horvitz-Thompson estimator with an exact bound. The error is ``sum_v (N_v/N) sum_g mu_vg``;
``delta`` is split over strata by their share of requests and equally over the cells the
design makes possible (fixed before any human label is read). Accepted requests of a stratum
without shadow sampling (``pi = 0``) are counted as wrong. The point estimate is Hájek within
strata (divides by the estimated stratum size ``sum 1 / pi``), so it lies in [0, 1].

Search. The strong grid has ``K`` points (default 9); each gets ``delta / K`` (Bonferroni), and
within it the cheap grid is walked in a fixed sequence from escalate-all down (t_c = 1.01, 1.00,
..., 0.00), stopping at the first failure. Every pair passed is, with probability at least
``1 - delta`` jointly, truly at or above the target; choosing the cheapest of them within the
human budget (estimated from the cheap and strong answers, never the human labels) keeps that.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from escalator.calibration import estimates
from escalator.calibration.certify import (
    STRONG_ONLY,
    CalibrationError,
    Dataset,
    _cost,
    default_grid,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

PROCEDURE = "Bonferroni over strong thresholds x fixed-sequence over cheap thresholds, "
PROCEDURE += "Horvitz-Thompson Clopper-Pearson on adjudications, v1"
#: The strong thresholds tried by default: few, because each costs delta / K.
DEFAULT_STRONG_GRID = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, STRONG_ONLY)
#: Labels a strong answer cannot settle (the moderation task's); matched only if in the log.
DEFAULT_REVIEW_LABELS = ("review-needed",)
CELLS = ("certain-agree", "certain-differ", "shadow-agree", "shadow-differ")


def human_decisions(records: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """The human decisions of the log, first one per ``review_id``; and how many repeats."""
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    repeats = 0
    for rec in records:
        if (rec.get("attempt") or {}).get("tier") != "human":
            continue
        review = rec.get("review") or {}
        key = review.get("review_id") or f"{review.get('queue')}:{rec.get('id')}"
        if key in seen:
            repeats += 1
            continue
        seen.add(str(key))
        out.append(rec)
    return out, repeats


@dataclass(frozen=True)
class HumanSample:
    """The adjudicated requests (one row each), and the design that drew them."""

    stratum: IntArray  # index into the Dataset's strata
    cell: IntArray  # index into CELLS
    cheap_conf: FloatArray  # -1: invalid cheap answer
    cheap_label: IntArray  # -1: invalid
    strong_conf: FloatArray
    strong_label: IntArray  # -1: invalid or refused
    strong_review: BoolArray  # the strong label is a review label
    gold: IntArray  # the person's label; -1: "neither" (or a label no model can give)
    n: IntArray  # (S,) requests per stratum (all traffic, from the cheap records)
    pi: FloatArray  # (S, 4) inclusion probability per cell; 0: not covered by the design
    possible: BoolArray  # (S, 4) the cell can hold requests (by the design in force)
    uncovered: IntArray  # (S,) accepted requests no adjudication could reach (p = 0)
    q_agree: float
    q_disagree: float
    neither: int = 0  # adjudications whose verdict was "neither"
    review_items: dict[str, int] = field(default_factory=dict)  # review queue, per reason
    repeats: int = 0  # repeated review_ids ignored
    unmatched: int = 0  # adjudications of requests with no cheap record in the window

    @property
    def m(self) -> int:
        return len(self.cell)


def _num(value: object, default: float = math.nan) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return default


def human_sample(
    records: Sequence[dict[str, Any]],
    d: Dataset,
    review_labels: Sequence[str] = DEFAULT_REVIEW_LABELS,
) -> HumanSample | None:
    """The adjudication sample of ``records``, against the paired cheap/strong ``d``; None when
    the log has no human decisions. CalibrationError when the design cannot be known."""
    humans, repeats = human_decisions(records)
    if not humans:
        return None
    index = {rid: i for i, rid in enumerate(d.ids)}
    code = {label: i for i, label in enumerate(d.labels)}
    review = {code[x] for x in review_labels if x in code}
    review_items: dict[str, int] = {}
    rows: list[tuple[int, bool, dict[str, Any], dict[str, Any], int, float]] = []
    rates: dict[bool, list[float]] = {True: [], False: []}
    unmatched = neither = 0
    for rec in humans:
        block = rec.get("review") or {}
        if block.get("queue") != "adjudication":
            reason = str(block.get("reason"))
            review_items[reason] = review_items.get(reason, 0) + 1
            continue
        i = index.get(str(rec.get("id")))
        if i is None:
            unmatched += 1
            continue
        agree = bool(block.get("agree"))
        rates[agree].append(_num(block.get("review_rate")))
        gold = rec.get("gold_label")
        neither += gold is None
        g = code.get(gold, -1) if isinstance(gold, str) else -1
        answers = (block.get("cheap") or {}, block.get("strong") or {})
        rows.append((i, agree, *answers, g, _num(rec.get("sample_rate"))))
    if not rows:
        if unmatched:
            raise CalibrationError(
                f"{unmatched} adjudication(s), none of a request in the window's cheap records"
            )
        return _empty(d, review_items, repeats)
    for agree, name in ((True, "AGREE"), (False, "DISAGREE")):
        if not rates[agree] or not all(0 < r <= 1 for r in rates[agree]):
            raise CalibrationError(
                f"no adjudicated {'agreeing' if agree else 'differing'} answers with a review "
                f"rate in (0, 1]: the design is unknown (set ESCALATOR_ADJUDICATE_{name} > 0)"
            )
    for agree, name in ((True, "AGREE"), (False, "DISAGREE")):
        if max(rates[agree]) != min(rates[agree]):
            # One rate per window: with a changed rate the requests seen before the change
            # would be weighted by the wrong probability. Fail closed.
            raise CalibrationError(
                f"ESCALATOR_ADJUDICATE_{name} changed within the window (review rates "
                f"{min(rates[agree]):g} to {max(rates[agree]):g}): calibrate on a window with "
                "one rate (--since after the change)"
            )
    q_a, q_d = min(rates[True]), min(rates[False])

    def answer(a: dict[str, Any]) -> tuple[float, int]:
        ok = bool(a.get("valid")) and a.get("label") in code
        return (_num(a.get("confidence"), 0.0), code[a["label"]]) if ok else (-1.0, -1)

    m = len(rows)
    stratum, cell, gold = (np.zeros(m, np.int64) for _ in range(3))
    cc, sc, recorded = np.zeros(m), np.zeros(m), np.zeros(m)
    cl, sl = np.zeros(m, np.int64), np.zeros(m, np.int64)
    for k, (i, agree, cheap, strong, g, rate) in enumerate(rows):
        stratum[k] = d.stratum[i]
        cell[k] = (0 if d.certain[i] else 2) + (0 if agree else 1)
        cc[k], cl[k] = answer(cheap)
        sc[k], sl[k] = answer(strong)
        gold[k] = g
        recorded[k] = rate
    n, pi, possible, uncovered = design(d, q_a, q_d, stratum, cell, recorded)
    return HumanSample(
        stratum=stratum,
        cell=cell,
        cheap_conf=cc,
        cheap_label=cl,
        strong_conf=sc,
        strong_label=sl,
        strong_review=np.isin(sl, sorted(review)),
        gold=gold,
        n=n,
        pi=pi,
        possible=possible,
        uncovered=uncovered,
        q_agree=q_a,
        q_disagree=q_d,
        neither=neither,
        review_items=review_items,
        repeats=repeats,
        unmatched=unmatched,
    )


def _empty(d: Dataset, review_items: dict[str, int], repeats: int) -> HumanSample:
    """Human decisions, but none from adjudication: counts for the report, no estimates."""
    z, f = np.zeros(0, np.int64), np.zeros(0)
    return HumanSample(
        stratum=z,
        cell=z,
        cheap_conf=f,
        cheap_label=z,
        strong_conf=f,
        strong_label=z,
        strong_review=np.zeros(0, bool),
        gold=z,
        n=np.bincount(d.stratum, minlength=len(d.strata)),
        pi=np.zeros((len(d.strata), 4)),
        possible=np.zeros((len(d.strata), 4), bool),
        uncovered=np.zeros(len(d.strata), np.int64),
        q_agree=0.0,
        q_disagree=0.0,
        review_items=review_items,
        repeats=repeats,
    )


def design(
    d: Dataset,
    q_agree: float,
    q_disagree: float,
    stratum: IntArray,
    cell: IntArray,
    recorded: FloatArray,
) -> tuple[IntArray, FloatArray, BoolArray, IntArray]:
    """Per stratum: requests, inclusion probability and possibility per cell, uncovered count.

    The probabilities come from the design (p from the cheap records, q from the review
    rates), never from which requests happened to be adjudicated; a cell's smallest recorded
    ``sample_rate`` lowers it (shadows shed under rate-limit pressure were kept at p * k < p),
    which only makes the bound more cautious."""
    s_count = len(d.strata)
    n = np.bincount(d.stratum, minlength=s_count).astype(np.int64)
    pi = np.zeros((s_count, 4))
    possible = np.zeros((s_count, 4), dtype=bool)
    uncovered = np.zeros(s_count, dtype=np.int64)
    for v in range(s_count):
        inv = d.stratum == v
        unc = inv & ~d.certain
        rates = d.shadow_rate[unc]
        p = float(np.nanmin(rates)) if unc.any() and not np.all(np.isnan(rates)) else math.nan
        if math.isnan(p):  # no shadow rate recorded: treat the accepted ones as uncovered
            p = 0.0
        possible[v] = [bool((inv & d.certain).any())] * 2 + [bool(unc.any())] * 2
        pi[v] = [q_agree, q_disagree, p * q_agree, p * q_disagree]
        for g in range(4):
            mine = recorded[(stratum == v) & (cell == g)]
            if len(mine) and np.all(np.isfinite(mine)):
                pi[v, g] = min(pi[v, g], float(mine.min()))
        if possible[v, 2] and p <= 0:
            uncovered[v] = int(unc.sum())
            possible[v, 2:] = False
    pi = np.where(possible, np.clip(pi, 0.0, 1.0), 0.0)
    return n, pi, possible, uncovered


def wrong(
    h: HumanSample, t_c: FloatArray, t_s: FloatArray, *, human_tier: bool = True
) -> BoolArray:
    """(m, Tc, Ts): is the routed answer wrong against the person, at each pair?

    Without the human tier the strong answer is used whatever it is (invalid counts wrong)."""
    cheap_wrong = (h.cheap_label < 0) | (h.gold < 0) | (h.cheap_label != h.gold)
    strong_wrong = (h.strong_label < 0) | (h.gold < 0) | (h.strong_label != h.gold)
    by_cheap = h.cheap_conf[:, None, None] >= t_c[None, :, None]
    if human_tier:
        settles = (h.strong_label >= 0) & ~h.strong_review
        by_strong = settles[:, None, None] & (h.strong_conf[:, None, None] >= t_s[None, None, :])
    else:
        by_strong = np.ones((h.m, 1, len(t_s)), dtype=bool)
    out = np.where(by_cheap, cheap_wrong[:, None, None], by_strong & strong_wrong[:, None, None])
    return np.asarray(out, dtype=bool)


def cell_counts(h: HumanSample, e: BoolArray) -> tuple[IntArray, IntArray]:
    """(S, 4, Tc, Ts) wrong routed answers per cell, and (S, 4) adjudications per cell."""
    s_count = len(h.n)
    z = np.zeros((s_count, 4, *e.shape[1:]), dtype=np.int64)
    m = np.zeros((s_count, 4), dtype=np.int64)
    for v in range(s_count):
        for g in range(4):
            mine = (h.stratum == v) & (h.cell == g)
            m[v, g] = int(mine.sum())
            if m[v, g]:
                z[v, g] = e[mine].sum(axis=0)
    return z, m


def allocation(h: HumanSample, delta: float) -> tuple[FloatArray, FloatArray]:
    """delta per cell (S, 4) and per stratum's uncovered part (S,); they sum to ``delta``.

    Fixed by the design alone: a stratum's share of requests, split equally over its parts."""
    share = h.n / max(int(h.n.sum()), 1) * delta
    parts = h.possible.sum(axis=1) + (h.uncovered > 0)
    per = np.where(parts > 0, share / np.maximum(parts, 1), 0.0)
    return np.where(h.possible, per[:, None], 0.0), np.where(h.uncovered > 0, per, 0.0)


def error_upper(h: HumanSample, z: IntArray, delta: float) -> FloatArray:
    """Upper bound on P(routed answer wrong), shape z.shape[2:]: holds with prob >= 1 - delta."""
    a_cell, a_unc = allocation(h, delta)
    nn = np.broadcast_to(h.n[:, None, None, None], z.shape)
    al = np.broadcast_to(a_cell[:, :, None, None], z.shape)
    limits = estimates.exact_upper(z.ravel(), nn.ravel(), al.ravel()).reshape(z.shape)
    pi = h.pi[:, :, None, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        per_cell = np.where(al > 0, np.minimum(limits / pi, 1.0), 0.0)
    unc = estimates.exact_upper(h.uncovered, h.n, a_unc)
    unc = np.where(a_unc > 0, unc, 0.0)
    # mu_vg is a share of the stratum's requests; the stratum's error is their sum.
    stratum_err = np.minimum(per_cell.sum(axis=1) + unc[:, None, None], 1.0)
    total = (stratum_err * h.n[:, None, None]).sum(axis=0) / max(int(h.n.sum()), 1)
    return np.asarray(np.minimum(total, 1.0), np.float64)


def weights(h: HumanSample) -> FloatArray:
    """Hájek weight per adjudication: 1/pi, rescaled so each stratum's weights sum to N_v.

    Strata with no adjudication are spread over the others (their share of traffic is then
    represented by the pooled sample), so the weights always sum to N."""
    inv = 1.0 / h.pi[h.stratum, h.cell]
    est = np.bincount(h.stratum, weights=inv, minlength=len(h.n))
    seen = est > 0
    n_eff = np.where(seen, h.n, 0).astype(np.float64)
    n_eff *= h.n.sum() / max(n_eff.sum(), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(seen, n_eff / est, 0.0)
    return np.asarray(inv * scale[h.stratum], np.float64)


def error_point(h: HumanSample, e: BoolArray) -> FloatArray:
    """Hájek estimate of P(routed answer wrong), shape e.shape[1:], in [0, 1]: the weights of
    ``weights`` (1/pi per cell), so it is a function of the cell counts alone."""
    z, m = cell_counts(h, e)
    return _hajek(h, z, m)


def _hajek(h: HumanSample, z: IntArray, m: IntArray) -> FloatArray:
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(m > 0, 1.0 / h.pi, 0.0)
    est = (m * inv).sum(axis=1)  # (S,) estimated stratum sizes
    if not (est > 0).any():
        return np.ones(z.shape[2:])
    seen = est > 0
    n_eff = np.where(seen, h.n, 0).astype(np.float64)
    n_eff *= h.n.sum() / max(n_eff.sum(), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(seen, n_eff / est, 0.0)  # (S,)
    w = (inv * scale[:, None])[:, :, None, None]
    return np.asarray((z * w).sum(axis=(0, 1)) / h.n.sum(), np.float64)


def error_ht(h: HumanSample, e: BoolArray) -> FloatArray:
    """Horvitz-Thompson estimate (sum of wrong / pi over N): unbiased, not bounded by 1."""
    z, m = cell_counts(h, e)
    return _ht(h, z, m)


def _ht(h: HumanSample, z: IntArray, m: IntArray) -> FloatArray:
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(m > 0, 1.0 / h.pi, 0.0)[:, :, None, None]
    return np.asarray((z * inv).sum(axis=(0, 1)) / h.n.sum(), np.float64)


@dataclass(frozen=True)
class PeopleCurve:
    """Against people, per cheap threshold, routed as today (the strong answer below t)."""

    thresholds: FloatArray
    accuracy: FloatArray  # Hájek
    accuracy_lower: FloatArray  # at level 1 - delta per point
    strong_wrong: FloatArray  # among requests escalated at t (nan: none)
    cheap_wrong_confident: FloatArray  # among requests with cheap conf >= t (nan: none)
    adjudicated: int
    delta: float


def people_curve(h: HumanSample, thresholds: FloatArray, delta: float) -> PeopleCurve:
    t = np.asarray(thresholds, dtype=np.float64)
    e = wrong(h, t, np.zeros(1), human_tier=False)
    z, m = cell_counts(h, e)
    w = weights(h)
    esc = h.cheap_conf[:, None] < t[None, :]
    strong_wrong = (h.strong_label < 0) | (h.gold < 0) | (h.strong_label != h.gold)
    cheap_wrong = (h.cheap_label != h.gold) | (h.gold < 0)

    def share(num: BoolArray, den: BoolArray) -> FloatArray:
        top = w @ (num & den).astype(np.float64)
        bottom = w @ den.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.asarray(np.where(bottom > 0, top / bottom, np.nan), np.float64)

    return PeopleCurve(
        thresholds=t,
        accuracy=1.0 - _hajek(h, z, m)[:, 0],
        accuracy_lower=1.0 - error_upper(h, z, delta)[:, 0],
        strong_wrong=share(strong_wrong[:, None], esc),
        cheap_wrong_confident=share(cheap_wrong[:, None], ~esc),
        adjudicated=h.m,
        delta=delta,
    )


def strong_confidences(
    records: Iterable[dict[str, Any]], d: Dataset, review_labels: Sequence[str]
) -> tuple[FloatArray, BoolArray]:
    """Per request of ``d``: the strong answer's confidence (-1: none valid) and whether its
    label is a review label."""
    index = {rid: i for i, rid in enumerate(d.ids)}
    conf = np.full(d.n, -1.0)
    review = np.zeros(d.n, dtype=bool)
    for rec in records:
        a = rec.get("attempt") or {}
        i = index.get(str(rec.get("id")))
        if a.get("tier") != "strong" or i is None or not a.get("valid"):
            continue
        if a.get("label") is None:
            continue
        conf[i] = _num(a.get("confidence"), 0.0)
        review[i] = a["label"] in review_labels
    return conf, review


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
        out[:, k] = estimates.escalated_sum(s, t_c, to_people.astype(np.float64), d.answered)
    return np.asarray(out / max(d.n, 1), np.float64)


Status = Literal["certified", "refused"]


@dataclass(frozen=True)
class HumanCalibration:
    target: float
    budget: float
    delta: float  # the whole share this attempt spent (each strong threshold: delta / K)
    review_cost: float
    cheap_grid: FloatArray
    strong_grid: FloatArray
    accuracy: FloatArray  # (Tc, Ts) Hájek point estimates
    accuracy_lower: FloatArray  # (Tc, Ts) at delta / K each
    human: FloatArray  # (Tc, Ts) estimated share to people
    escalation: FloatArray  # (Tc,) observed share escalated by the cheap tier
    cost_per_1k: FloatArray  # (Tc, Ts) models + people (at review_cost per item)
    passed: BoolArray  # (Tc, Ts) passed by the fixed sequences
    status: Status
    chosen: tuple[int, int] | None
    best: tuple[int, int] | None  # the cheapest pair by point estimate within the budget
    reason: str = ""
    adjudicated: int = 0
    #: The cheapest pairs (at most 5) that a larger window could certify, for the refusal.
    goals: tuple[tuple[int, int], ...] = ()

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


def walk(lower: FloatArray, target: float) -> BoolArray:
    """Fixed sequence along the cheap grid, from the top (escalate-all) down: True for each
    point passed before the first failure (possibly none: escalate-all need not pass here)."""
    passed = np.zeros(len(lower), dtype=bool)
    for j in range(len(lower) - 1, -1, -1):
        if lower[j] < target:
            break
        passed[j] = True
    return passed


def strong_grid_arg(spec: str) -> list[float]:
    """``0,0.5,0.9`` -> strong thresholds (1.01 sends every strong answer to people)."""
    try:
        values = sorted({float(x) for x in spec.split(",") if x.strip()})
    except ValueError as exc:
        raise CalibrationError(f"--strong-grid {spec!r} is not a comma-separated list") from exc
    if not values or not all(0 <= v <= STRONG_ONLY for v in values):
        raise CalibrationError(f"--strong-grid {spec!r}: need values in [0, 1.01]")
    return values


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
    if not 0 < delta < 1:
        raise CalibrationError(f"delta must be in (0, 1), not {delta}")
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
    tc = np.asarray(grid, dtype=np.float64) if grid is not None else default_grid()
    if tc[-1] < STRONG_ONLY:
        tc = np.append(tc, STRONG_ONLY)
    ts = np.asarray(strong_grid if strong_grid is not None else DEFAULT_STRONG_GRID, np.float64)
    e = wrong(h, tc, ts)
    z, m = cell_counts(h, e)
    k = len(ts)
    lower = 1.0 - error_upper(h, z, delta / k) if lower_override is None else lower_override
    point = 1.0 - _hajek(h, z, m)
    ht = 1.0 - _ht(h, z, m)
    passed = np.stack([walk(lower[:, j], target) for j in range(k)], axis=1)
    share = human_share(d, strong_conf, strong_review, tc, ts)
    cost = _cost(d, tc)[:, None] + 1000.0 * review_cost * share
    esc = (d.n - estimates._at_least(d.conf, tc)) / max(d.n, 1)
    fits = share <= budget + 1e-12

    def cheapest(mask: BoolArray) -> tuple[int, int] | None:
        ordered = _by_cost(mask, ts, share, cost)
        return ordered[0] if ordered else None

    chosen = cheapest(passed & fits)
    best = cheapest((point >= target) & fits)
    # What the bound approaches with more data is the Horvitz-Thompson estimate: the pairs
    # whose HT estimate clears the target are the ones a larger window can certify.
    goals = [p for p in _by_cost((ht >= target) & fits, ts, share, cost)]
    reason = ""
    if chosen is None:
        if best is None:
            reason = f"no pair's estimated accuracy reaches the target within {budget:.1%}"
            reason += " of traffic to people"
        else:
            reason = (
                f"no pair that sends at most {budget:.1%} of traffic to people can be "
                f"certified (best estimate: t_c={tc[best[0]]:.2f}, t_s={ts[best[1]]:.2f}, "
                f"accuracy {point[best]:.4f}, lower bound {lower[best]:.4f})"
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
        adjudicated=h.m,
        goals=tuple(goals[:5]),
    )


@dataclass(frozen=True)
class HumanNeed:
    """A fresh window that would certify the best-by-estimate pair (None: cannot)."""

    factor: float | None
    requests: int | None
    adjudicated: int | None
    hours: float | None
    goal: tuple[int, int] | None = None


def needed(d: Dataset, h: HumanSample, result: HumanCalibration, delta_next: float) -> HumanNeed:
    """Scale the window (every count by the same factor) until the bound of one of the
    cheapest pairs whose estimate clears the target, at the next attempt's delta, reaches it: a
    rough size, at the point estimates (the counts are scaled, not drawn)."""
    for goal in result.goals:
        need = _needed_at(d, h, result, delta_next, goal)
        if need.factor is not None:
            return need
    return HumanNeed(None, None, None, None)


def _needed_at(
    d: Dataset, h: HumanSample, result: HumanCalibration, delta_next: float, goal: tuple[int, int]
) -> HumanNeed:
    i, j = goal
    e = wrong(h, result.cheap_grid[i : i + 1], result.strong_grid[j : j + 1])
    z, _ = cell_counts(h, e)
    k = len(result.strong_grid)

    def passes(f: float) -> bool:
        scaled = replace(
            h,
            n=np.ceil(h.n * f).astype(np.int64),
            uncovered=np.ceil(h.uncovered * f).astype(np.int64),
        )
        zz = np.floor(z * f).astype(np.int64)
        return bool(1.0 - error_upper(scaled, zz, delta_next / k)[0, 0] >= result.target)

    lo, hi = 1.0, 2.0
    while not passes(hi):
        lo, hi = hi, hi * 2
        if hi > 1e4:
            return HumanNeed(None, None, None, None)
    for _ in range(30):
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if passes(mid) else (mid, hi)
        if hi / lo < 1.02:
            break
    span_h = (int(d.ts_ms.max()) - int(d.ts_ms.min())) / 3.6e6 if d.n > 1 else 0.0
    hours = hi * span_h if span_h > 0 else None
    return HumanNeed(hi, math.ceil(d.n * hi), math.ceil(h.m * hi), hours, goal)


def guarantee(result: HumanCalibration) -> str:
    """The sentence a certified human calibration promises (stored in the threshold file)."""
    if result.status != "certified":
        return "none: refused"
    return (
        f"with probability at least {1 - result.delta:.6g} over the measurement window, the "
        f"accuracy against people of routed answers at the chosen cheap and strong thresholds "
        f"(a request sent to people counted as right), on traffic like the window's, is at "
        f"least {result.target}"
    )


def refusal(result: HumanCalibration, need: HumanNeed) -> str:
    """One line: why the target cannot be certified, and how much more adjudication would."""
    from escalator.calibration.plan import duration

    head = (
        f"calibrate: cannot certify accuracy against people >= {result.target} at delta "
        f"{result.delta:.3g} within a human budget of {result.budget:.1%}: {result.reason}"
    )
    if need.requests is None:
        return f"{head}; more data would not help; wrote no thresholds file"
    assert need.goal is not None
    i, j = need.goal
    return (
        f"{head}; needs a fresh window of about {need.requests:,} requests with "
        f"{need.adjudicated:,} adjudicated answers (about {need.factor:.1f} times this one's, "
        f"at the same adjudication rates; {duration(need.hours)}) to certify "
        f"t_c={result.cheap_grid[i]:.2f}, t_s={result.strong_grid[j]:.2f}; wrote no "
        "thresholds file"
    )
