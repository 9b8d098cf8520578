"""Accuracy of routed answers against people, from the adjudication sample
(``adjudications.py``): Hájek point estimates, and upper bounds on the error by betting
(``betting.py``). ``human_certify.py`` searches the threshold pairs with them.

Routing model at ``(t_c, t_s)``: the cheap answer when its confidence is >= ``t_c``; else the
strong answer when it is valid, its confidence is >= ``t_s`` and its label is not a review label;
else a person decides, which counts as correct (and as one review item). A reviewer's "neither"
makes every model label wrong; so does "no decision yet" (a pending row).

Estimator. The Horvitz-Thompson variable of a request is ``X = wrong / pi`` when it was
adjudicated (0 otherwise): ``E[X]`` is the error of routed answers, because adjudication's coin
ignores the person's label. Accepted requests of a stratum without shadow sampling (``pi = 0``)
are counted as wrong (``X = 1``). The point estimate is Hájek within strata (divides by the
estimated stratum size ``sum 1 / pi``), in [0, 1]; the bound is the betting bound on ``E[X]``
(``betting.upper``), from counts per stratum, time block and cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from escalator.calibration import betting, estimates
from escalator.calibration.adjudications import HumanSample
from escalator.calibration.certify import STRONG_ONLY, CalibrationError, Dataset, default_grid

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

__all__ = ["STRONG_ONLY", "CalibrationError", "HumanSample", "default_grid"]


def wrong(
    h: HumanSample, t_c: FloatArray, t_s: FloatArray, *, human_tier: bool = True
) -> BoolArray:
    """(m, Tc, Ts): is the routed answer wrong against the person, at each pair?

    A pending row (no label yet) is wrong unless the pair sends it to people. Without the
    human tier the strong answer is used whatever it is (invalid counts wrong)."""
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


def routed_wrong_counts(
    h: HumanSample,
    t_c: FloatArray,
    t_s: FloatArray,
    group: IntArray,
    groups: int,
    *,
    human_tier: bool = True,
) -> FloatArray:
    """(groups, Tc, Ts): per group of rows (``group``, -1: left out), how many routed answers
    are wrong at each pair: ``wrong`` summed, from two histograms instead of an (m, Tc, Ts)
    array. A row is routed to the cheap answer at t_c index i when i < ci (ci: how many grid
    points are <= its confidence), else to the strong answer at t_s index j when j < si."""
    cheap_wrong = (h.cheap_label < 0) | (h.gold < 0) | (h.cheap_label != h.gold)
    strong_wrong = (h.strong_label < 0) | (h.gold < 0) | (h.strong_label != h.gold)
    tc_n, ts_n = len(t_c), len(t_s)
    ci = np.searchsorted(t_c, h.cheap_conf, side="right")
    if human_tier:
        settles = (h.strong_label >= 0) & ~h.strong_review
        si = np.where(settles, np.searchsorted(t_s, h.strong_conf, side="right"), 0)
    else:
        si = np.full(h.m, ts_n)
    keep = group >= 0
    g, ci, si = group[keep], ci[keep], si[keep]
    by_cheap = np.zeros((groups, tc_n + 1))
    np.add.at(by_cheap, (g, ci), cheap_wrong[keep].astype(np.float64))
    # Routed to the cheap answer at i < ci: rows whose ci exceeds i.
    cheap_part = np.cumsum(by_cheap[:, ::-1], axis=1)[:, ::-1][:, 1:]  # (G, Tc)
    by_strong = np.zeros((groups, tc_n + 1, ts_n + 1))
    np.add.at(by_strong, (g, ci, si), strong_wrong[keep].astype(np.float64))
    upto = np.cumsum(by_strong, axis=1)[:, :tc_n, :]  # rows with ci <= i
    strong_part = np.cumsum(upto[:, :, ::-1], axis=2)[:, :, ::-1][:, :, 1:]  # si > j
    return np.asarray(cheap_part[:, :, None] + strong_part, np.float64)


def _decided(h: HumanSample) -> BoolArray:
    return ~h.pending if len(h.pending) == h.m else np.ones(h.m, dtype=bool)


def cell_counts(
    h: HumanSample, t_c: FloatArray, t_s: FloatArray, *, human_tier: bool = True
) -> tuple[FloatArray, IntArray]:
    """(S, 4, Tc, Ts) wrong routed answers per cell, and (S, 4) adjudications per cell, of the
    decided rows (the point estimates' counts; pending rows have no label)."""
    s_count = len(h.n)
    decided = _decided(h)
    group = np.where(decided, h.stratum * 4 + h.cell, -1)
    z = routed_wrong_counts(h, t_c, t_s, group, s_count * 4, human_tier=human_tier)
    m = np.bincount(group[decided], minlength=s_count * 4).reshape(s_count, 4)
    return z.reshape(s_count, 4, len(t_c), len(t_s)), m.astype(np.int64)


def bet_counts(
    h: HumanSample, t_c: FloatArray, t_s: FloatArray, *, human_tier: bool = True
) -> tuple[IntArray, FloatArray, FloatArray]:
    """What the betting bound needs, for every pair flattened to P = Tc * Ts: (S, B) requests,
    (S, B, 5, P) nonzero variables (four cells, then the uncovered ones) and (S, 5) their
    values (1/pi per cell; 1 for an uncovered request, counted wrong). Pending rows count
    as wrong (they have no label)."""
    s_count, b_count = h.block_n.shape
    pairs = len(t_c) * len(t_s)
    group = (h.stratum * b_count + h.block) * 4 + h.cell
    z = routed_wrong_counts(h, t_c, t_s, group, s_count * b_count * 4, human_tier=human_tier)
    counts = np.zeros((s_count, b_count, 5, pairs))
    counts[:, :, :4, :] = z.reshape(s_count, b_count, 4, pairs)
    counts[:, :, 4, :] = h.block_uncovered[:, :, None]
    with np.errstate(divide="ignore"):
        x = np.where(h.pi > 0, 1.0 / np.maximum(h.pi, 1e-300), 0.0)
    x = np.concatenate([x, (h.uncovered > 0).astype(np.float64)[:, None]], axis=1)
    return h.block_n, counts, x


def error_upper(
    h: HumanSample,
    t_c: FloatArray,
    t_s: FloatArray,
    alpha: float,
    aim: float | None = None,
    *,
    human_tier: bool = True,
) -> FloatArray:
    """(Tc, Ts) upper bounds on P(routed answer wrong), each at level ``alpha``: the betting
    bound on the Horvitz-Thompson variable, pending rows counted wrong.

    ``aim``: the error the bets are tuned against (the target's boundary when testing one);
    None tunes each block against what the earlier blocks suggest the bound will be."""
    n, counts, x = bet_counts(h, t_c, t_s, human_tier=human_tier)
    upper = betting.upper(n, counts, x, alpha, aim)
    return np.asarray(upper.reshape(len(t_c), len(t_s)), np.float64)


def weights(h: HumanSample) -> FloatArray:
    """Hájek weight per decided adjudication: 1/pi, rescaled so each stratum's weights sum to
    N_v (pending rows get 0).

    Strata with no adjudication are spread over the others (their share of traffic is then
    represented by the pooled sample), so the weights always sum to N."""
    inv = np.where(_decided(h), 1.0 / h.pi[h.stratum, h.cell], 0.0)
    est = np.bincount(h.stratum, weights=inv, minlength=len(h.n))
    seen = est > 0
    n_eff = np.where(seen, h.n, 0).astype(np.float64)
    n_eff *= h.n.sum() / max(n_eff.sum(), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(seen, n_eff / est, 0.0)
    return np.asarray(inv * scale[h.stratum], np.float64)


def error_point(h: HumanSample, t_c: FloatArray, t_s: FloatArray, **kw: bool) -> FloatArray:
    """(Tc, Ts) Hájek estimates of P(routed answer wrong) over the decided rows, in [0, 1]:
    the weights of ``weights`` (1/pi per cell)."""
    z, m = cell_counts(h, t_c, t_s, **kw)
    return hajek(h, z, m)


def hajek(h: HumanSample, z: FloatArray, m: IntArray) -> FloatArray:
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


def error_ht(h: HumanSample, t_c: FloatArray, t_s: FloatArray, **kw: bool) -> FloatArray:
    """Horvitz-Thompson estimate (sum of wrong / pi over N): unbiased, not bounded by 1."""
    z, m = cell_counts(h, t_c, t_s, **kw)
    return ht(h, z, m)


def ht(h: HumanSample, z: FloatArray, m: IntArray) -> FloatArray:
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(m > 0, 1.0 / h.pi, 0.0)[:, :, None, None]
    return np.asarray((z * inv).sum(axis=(0, 1)) / h.n.sum(), np.float64)


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
    z, m = cell_counts(h, t, one, human_tier=False)
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
        accuracy=1.0 - hajek(h, z, m)[:, 0],
        accuracy_lower=1.0 - error_upper(h, t, one, delta, human_tier=False)[:, 0],
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
        out[:, k] = estimates.escalated_sum(s, t_c, to_people.astype(np.float64), d.answered)
    return np.asarray(out / max(d.n, 1), np.float64)
