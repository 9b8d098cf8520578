"""The estimators stage: per candidate threshold, the counts both objectives are made of and
their Hájek point estimates (``bounds.py`` bounds the same counts).

Agreement with the strong model. The decisions log is a two-phase sample. For request ``i``
the cheap answer is always seen; the strong answer is *certain* when the request was escalated
(or shadowed with rate 1) and *sampled* with the shadow rate otherwise. Agreement of routed
answers with the strong model at a candidate threshold ``t`` is ``A(t) = 1 - D(t)`` with
``D(t) = P(conf >= t, cheap != strong)``. Within one stratum ``v`` (one threshold version: one
routing rule, iid requests)

    D_v(t) = C_v(t) + pi_v(t) * q_v(t)
    C_v  = P(strong answer certain, conf >= t, disagree)      all observed
    pi_v = P(strong answer uncertain, conf >= t)              all observed (the cheap side)
    q_v  = P(disagree | strong answer uncertain, conf >= t)   observed on the shadow sample

and ``D(t) = sum_v (N_v / N) D_v(t)``. The point estimate replaces each probability by its
sample proportion (``q_v`` by the disagreement rate among the shadowed answers: a Hájek,
self-normalised estimator), so every estimate lies in [0, 1]. The shadow rate never enters:
only the fact that sampling ignored the answers. A strong answer that was due (certain, or a
shadow call that was made) but is missing or invalid counts as a disagreement.

Accuracy against people, from the adjudication sample (``adjudications.py``). Routing model at
``(t_c, t_s)``: the cheap answer when its confidence is >= ``t_c``; else the strong answer when
it is valid, its confidence is >= ``t_s`` and its label is not a review label; else a person
decides, which counts as correct (and as one review item). A reviewer's "neither" makes every
model label wrong; so does "no decision yet" (a pending row). The Horvitz-Thompson variable of a
request is ``X = wrong / pi`` when it was adjudicated (0 otherwise): ``E[X]`` is the error of
routed answers, because adjudication's coin ignores the person's label. Accepted requests of a
stratum without shadow sampling (``pi = 0``) are counted as wrong (``X = 1``). The point
estimate is Hájek within strata (divides by the estimated stratum size ``sum 1 / pi``), in
[0, 1].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from escalator.calibration.adjudications import HumanSample
from escalator.calibration.dataset import Sample

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Counts:
    """Per stratum (rows) and threshold (columns): the counts both estimates are made of."""

    n: IntArray  # (S,) requests per stratum
    certain_disagree: IntArray | FloatArray  # (S, T) (expected counts are not integers)
    uncertain: IntArray  # (S, T) accepted at t with an uncertain strong answer
    sampled: IntArray  # (S, T) ... of which shadowed
    sampled_disagree: IntArray | FloatArray  # (S, T) ... of which disagree
    certain_possible: BoolArray  # (S, T) by design: can a certain answer have conf >= t?
    uncertain_possible: BoolArray  # (S,) by design: was any accepted answer left to sampling?
    #: (S, T) certain strong answers with conf >= t, agreeing or not (the cheap side only).
    certain: IntArray | None = None

    def stratum(self, v: int) -> Counts:
        """The counts of stratum ``v`` alone."""
        return Counts(
            n=self.n[v : v + 1],
            certain_disagree=self.certain_disagree[v : v + 1],
            uncertain=self.uncertain[v : v + 1],
            sampled=self.sampled[v : v + 1],
            sampled_disagree=self.sampled_disagree[v : v + 1],
            certain_possible=self.certain_possible[v : v + 1],
            uncertain_possible=self.uncertain_possible[v : v + 1],
            certain=None if self.certain is None else self.certain[v : v + 1],
        )


def at_least(values: FloatArray, thresholds: FloatArray) -> IntArray:
    """How many of ``values`` are >= each threshold."""
    ordered = np.sort(values)
    return np.asarray(len(ordered) - np.searchsorted(ordered, thresholds, side="left"), np.int64)


def counts(s: Sample, thresholds: FloatArray) -> Counts:
    strata = np.unique(s.stratum)
    t = np.asarray(thresholds, dtype=np.float64)
    rows: dict[str, list[IntArray]] = {k: [] for k in ("cd", "c", "u", "s", "sd")}
    n, cpos, upos = [], [], []
    for v in strata:
        m = s.stratum == v
        unc = m & ~s.certain & (s.conf >= 0)
        rows["cd"].append(at_least(s.conf[m & s.certain & s.disagree], t))
        rows["c"].append(at_least(s.conf[m & s.certain & (s.conf >= 0)], t))
        rows["u"].append(at_least(s.conf[unc], t))
        rows["s"].append(at_least(s.conf[unc & s.sampled], t))
        rows["sd"].append(at_least(s.conf[unc & s.sampled & s.disagree], t))
        n.append(int(m.sum()))
        tau = s.tau[m]
        full = bool(np.any(s.shadow_rate[m] >= 1.0))
        unknown = bool(np.any(np.isnan(tau)))
        top = float(np.nanmax(tau)) if not np.all(np.isnan(tau)) else -np.inf
        cpos.append(full | unknown | (t < top) | (rows["cd"][-1] > 0))
        upos.append(bool(np.any(~(s.shadow_rate[m] >= 1.0))))
    return Counts(
        n=np.asarray(n, np.int64),
        certain_disagree=np.vstack(rows["cd"]),
        uncertain=np.vstack(rows["u"]),
        sampled=np.vstack(rows["s"]),
        sampled_disagree=np.vstack(rows["sd"]),
        certain_possible=np.vstack(cpos),
        uncertain_possible=np.asarray(upos, dtype=bool),
        certain=np.vstack(rows["c"]),
    )


def point(c: Counts, choice: IntArray | None = None) -> FloatArray:
    """Hájek estimate of D(t), shape (T,), in [0, 1]; with ``choice``, from the estimator
    ``upper`` uses at each t (so that the best estimate and the bound agree on their data)."""
    return by_choice(c, choice, _point)


def _point(c: Counts) -> FloatArray:
    nsum = max(int(c.n.sum()), 1)
    q = _ratio(c)
    return np.asarray((c.certain_disagree + c.uncertain * q).sum(axis=0) / nsum, np.float64)


def _ratio(c: Counts) -> FloatArray:
    """Disagreement rate among shadowed answers, per stratum and threshold.

    Where a stratum has accepted answers but no shadow at ``t``, it borrows the rate of the
    other strata at ``t``, then its own rate over all thresholds, then counts them as
    disagreeing: the estimate stays in [0, 1] and errs on the safe side.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        own = c.sampled_disagree / c.sampled
        pooled = c.sampled_disagree.sum(axis=0) / c.sampled.sum(axis=0)
        whole = c.sampled_disagree[:, :1] / c.sampled[:, :1]
    q = np.where(c.sampled > 0, own, np.where(np.isfinite(pooled), pooled, whole))
    return np.asarray(np.where(np.isfinite(q), q, 1.0), np.float64)


def by_choice(
    c: Counts, choice: IntArray | None, per: Callable[[Counts], FloatArray]
) -> FloatArray:
    if choice is None or len(c.n) < 2:
        return per(c)
    options = np.vstack([per(c), *(per(c.stratum(v)) for v in range(len(c.n)))])
    return np.asarray(np.take_along_axis(options, choice[None, :], axis=0)[0], np.float64)


def escalated_sum(d: Sample, t: FloatArray, value: FloatArray, has: BoolArray) -> FloatArray:
    """Sum over requests escalated at t (conf < t) of ``value``, estimated where unobserved.

    Certain requests count what was observed; the others, per stratum, the count of them
    times the mean of ``value`` over the shadowed ones (Hájek), where ``has`` says a shadowed
    request has a value at all."""
    total = np.zeros(len(t))
    fallback = float(value[has].mean()) if has.any() else 0.0

    def below(mask: BoolArray, x: FloatArray) -> FloatArray:
        order = np.argsort(d.conf[mask], kind="stable")
        sc = d.conf[mask][order]
        cum = np.concatenate([[0.0], np.cumsum(x[mask][order])])
        return np.asarray(cum[np.searchsorted(sc, t, side="left")], np.float64)

    total += below(d.certain & has, value)
    for v in np.unique(d.stratum):
        unc = (d.stratum == v) & ~d.certain
        shadow = unc & d.sampled & has
        k = below(unc, np.ones(d.n))
        m = below(shadow, np.ones(d.n))
        s = below(shadow, value)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = np.where(m > 0, s / m, fallback)
        total += k * mean
    return total


# Accuracy against people.


def answers_wrong(h: HumanSample) -> tuple[BoolArray, BoolArray]:
    """Per row: is the cheap answer wrong against the person, is the strong one? An invalid
    answer, a reviewer's "neither" and a pending row (no label) are wrong."""
    cheap_wrong = (h.cheap_label < 0) | (h.gold < 0) | (h.cheap_label != h.gold)
    strong_wrong = (h.strong_label < 0) | (h.gold < 0) | (h.strong_label != h.gold)
    return cheap_wrong, strong_wrong


def strong_settles(h: HumanSample) -> BoolArray:
    """Per row: may the strong answer be routed at all (valid, not a review label)?"""
    return np.asarray((h.strong_label >= 0) & ~h.strong_review, dtype=bool)


def wrong(
    h: HumanSample, t_c: FloatArray, t_s: FloatArray, *, human_tier: bool = True
) -> BoolArray:
    """(m, Tc, Ts): is the routed answer wrong against the person, at each pair?

    A pending row (no label yet) is wrong unless the pair sends it to people. Without the
    human tier the strong answer is used whatever it is (invalid counts wrong)."""
    cheap_wrong, strong_wrong = answers_wrong(h)
    by_cheap = h.cheap_conf[:, None, None] >= t_c[None, :, None]
    if human_tier:
        settles = strong_settles(h)
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
    cheap_wrong, strong_wrong = answers_wrong(h)
    tc_n, ts_n = len(t_c), len(t_s)
    ci = np.searchsorted(t_c, h.cheap_conf, side="right")
    if human_tier:
        si = np.where(strong_settles(h), np.searchsorted(t_s, h.strong_conf, side="right"), 0)
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


def decided(h: HumanSample) -> BoolArray:
    """Per row: has a person decided it (not pending)?"""
    return ~h.pending if len(h.pending) == h.m else np.ones(h.m, dtype=bool)


def cell_counts(
    h: HumanSample, t_c: FloatArray, t_s: FloatArray, *, human_tier: bool = True
) -> tuple[FloatArray, IntArray]:
    """(S, 4, Tc, Ts) wrong routed answers per cell, and (S, 4) adjudications per cell, of the
    decided rows (the point estimates' counts; pending rows have no label)."""
    s_count = len(h.n)
    done = decided(h)
    group = np.where(done, h.stratum * 4 + h.cell, -1)
    z = routed_wrong_counts(h, t_c, t_s, group, s_count * 4, human_tier=human_tier)
    m = np.bincount(group[done], minlength=s_count * 4).reshape(s_count, 4)
    return z.reshape(s_count, 4, len(t_c), len(t_s)), m.astype(np.int64)


def _stratum_scale(h: HumanSample, est: FloatArray | IntArray) -> FloatArray:
    """(S,) from estimated stratum sizes to N_v; strata with no adjudication are spread over
    the others (their share of traffic is then represented by the pooled sample)."""
    seen = est > 0
    n_eff = np.where(seen, h.n, 0).astype(np.float64)
    n_eff *= h.n.sum() / max(n_eff.sum(), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(np.where(seen, n_eff / est, 0.0), np.float64)


def weights(h: HumanSample) -> FloatArray:
    """Hájek weight per decided adjudication: 1/pi, rescaled so each stratum's weights sum to
    N_v (pending rows get 0); the weights always sum to N (``_stratum_scale``)."""
    inv = np.where(decided(h), 1.0 / h.pi[h.stratum, h.cell], 0.0)
    est = np.bincount(h.stratum, weights=inv, minlength=len(h.n))
    return np.asarray(inv * _stratum_scale(h, est)[h.stratum], np.float64)


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
    w = (inv * _stratum_scale(h, est)[:, None])[:, :, None, None]
    return np.asarray((z * w).sum(axis=(0, 1)) / h.n.sum(), np.float64)


def error_ht(h: HumanSample, t_c: FloatArray, t_s: FloatArray, **kw: bool) -> FloatArray:
    """Horvitz-Thompson estimate (sum of wrong / pi over N): unbiased, not bounded by 1."""
    z, m = cell_counts(h, t_c, t_s, **kw)
    return ht(h, z, m)


def ht(h: HumanSample, z: FloatArray, m: IntArray) -> FloatArray:
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(m > 0, 1.0 / h.pi, 0.0)[:, :, None, None]
    return np.asarray((z * inv).sum(axis=(0, 1)) / h.n.sum(), np.float64)
