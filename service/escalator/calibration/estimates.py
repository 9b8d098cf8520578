"""Design-based estimates per threshold: Hájek point estimates and exact lower bounds.

The decisions log is a two-phase sample. For request ``i`` the cheap answer is always seen;
the strong answer is *certain* when the request was escalated (or shadowed with rate 1) and
*sampled* with the shadow rate otherwise. Agreement of routed answers with the strong model
at a candidate threshold ``t`` is ``A(t) = 1 - D(t)`` with ``D(t) = P(conf >= t, cheap !=
strong)``. Within one stratum ``v`` (one threshold version: one routing rule, iid requests)

    D_v(t) = C_v(t) + pi_v(t) * q_v(t)
    C_v  = P(strong answer certain, conf >= t, disagree)      all observed
    pi_v = P(strong answer uncertain, conf >= t)              all observed (the cheap side)
    q_v  = P(disagree | strong answer uncertain, conf >= t)   observed on the shadow sample

and ``D(t) = sum_v (N_v / N) D_v(t)``. The point estimate replaces each probability by its
sample proportion (``q_v`` by the disagreement rate among the shadowed answers: a Hájek,
self-normalised estimator), so every estimate lies in [0, 1]. The bound replaces each by its
exact Clopper-Pearson upper limit, with ``delta`` split over the parts and strata by a rule
fixed before looking at any answer (``allocation``), so ``1 - U(t)`` is a lower bound on
``A(t)`` with probability at least ``1 - delta``. The shadow rate never enters either: only the
fact that sampling ignored the answers. A strong answer that was due (certain, or a shadow
call that was made) but is missing or invalid counts as a disagreement.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from escalator.calibration import binomial

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

#: How a stratum's share of delta is split over its parts, fixed in advance. The shadow part
#: carries the least information, so it gets most of the error budget.
PART_WEIGHTS = {"certain": 1.0, "accepted": 1.0, "disagree": 4.0}


@dataclass(frozen=True)
class Sample:
    """What the estimators need per request (one row each), already paired."""

    conf: FloatArray  # cheap confidence; -1 for an invalid or refused cheap answer
    certain: BoolArray  # the strong answer was due with probability 1
    sampled: BoolArray  # not certain, and a strong call was made (shadow)
    disagree: BoolArray  # where a strong answer was due: it differs, is invalid or missing
    stratum: IntArray  # index of the threshold version
    tau: FloatArray  # the threshold this request was routed by (nan: not recorded)
    shadow_rate: FloatArray  # the shadow rate in force (nan: not recorded)

    @property
    def n(self) -> int:
        return len(self.conf)


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


def _at_least(values: FloatArray, thresholds: FloatArray) -> IntArray:
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
        rows["cd"].append(_at_least(s.conf[m & s.certain & s.disagree], t))
        rows["c"].append(_at_least(s.conf[m & s.certain & (s.conf >= 0)], t))
        rows["u"].append(_at_least(s.conf[unc], t))
        rows["s"].append(_at_least(s.conf[unc & s.sampled], t))
        rows["sd"].append(_at_least(s.conf[unc & s.sampled & s.disagree], t))
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


def allocation(c: Counts, delta: float) -> tuple[FloatArray, FloatArray, FloatArray]:
    """delta for each part (certain, accepted, disagree), shape (S, T) each; they sum to delta.

    A stratum's share is its share of the requests (a design quantity); within a stratum the
    parts that the design makes possible share it by ``PART_WEIGHTS``. Nothing here depends on
    a strong answer, so the split is fixed before the answers are looked at.
    """
    share = (c.n / max(int(c.n.sum()), 1))[:, None] * delta
    wc = np.where(c.certain_possible, PART_WEIGHTS["certain"], 0.0)
    wu = np.where(c.uncertain_possible, 1.0, 0.0)[:, None] * np.ones_like(wc)
    wa, wd = wu * PART_WEIGHTS["accepted"], wu * PART_WEIGHTS["disagree"]
    total = np.maximum(wc + wa + wd, 1e-300)
    return share * wc / total, share * wa / total, share * wd / total


def point(c: Counts, choice: IntArray | None = None) -> FloatArray:
    """Hájek estimate of D(t), shape (T,), in [0, 1]; with ``choice``, from the estimator
    ``upper`` uses at each t (so that the best estimate and the bound agree on their data)."""
    return _by_choice(c, choice, _point)


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


def upper(c: Counts, delta: float, choice: IntArray | None = None) -> FloatArray:
    """Upper bound on D(t), shape (T,): P(D(t) > upper) <= delta at each t.

    ``choice`` (from ``choose``): per t, 0 for the whole window (strata weighted by their
    requests), v + 1 for stratum v alone. Under the promise's own assumption (requests alike
    across the window's threshold versions) every stratum has the same D(t), so a stratum
    alone bounds it; and the choice looks at the cheap side and the design only, never a
    strong answer, so each t is still one test at ``delta``."""
    return _by_choice(c, choice, lambda part: _upper(part, delta))


def _by_choice(
    c: Counts, choice: IntArray | None, per: Callable[[Counts], FloatArray]
) -> FloatArray:
    if choice is None or len(c.n) < 2:
        return per(c)
    options = np.vstack([per(c), *(per(c.stratum(v)) for v in range(len(c.n)))])
    return np.asarray(np.take_along_axis(options, choice[None, :], axis=0)[0], np.float64)


def choose(c: Counts, delta: float, aim: float) -> IntArray | None:
    """Per t: 0 for the whole window, v + 1 for stratum v alone, whichever bound is predicted
    smallest if the disagreement were ``aim`` (1 - target) everywhere, spread evenly over the
    accepted answers: the counts a window would have then, from its cheap side and design
    alone (no strong answer). A sparsely shadowed old version then cannot drag a well-measured
    new one down. None for a window of one stratum."""
    if len(c.n) < 2 or c.certain is None:
        return None
    accepted = (c.certain + c.uncertain).sum(axis=0) / max(int(c.n.sum()), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(accepted > 0, np.minimum(aim / accepted, 1.0), 0.0)
    expected = Counts(
        n=c.n,
        certain_disagree=c.certain * rate,
        uncertain=c.uncertain,
        sampled=c.sampled,
        sampled_disagree=c.sampled * rate,
        certain_possible=c.certain_possible,
        uncertain_possible=c.uncertain_possible,
        certain=c.certain,
    )
    predicted = np.vstack(
        [_upper(expected, delta), *(_upper(expected.stratum(v), delta) for v in range(len(c.n)))]
    )
    return np.asarray(np.argmin(predicted, axis=0), np.int64)


def _upper(c: Counts, delta: float) -> FloatArray:
    """The bound of the whole window: strata weighted by their requests (``allocation``)."""
    dc, da, dd = allocation(c, delta)
    nn = np.broadcast_to(c.n[:, None], c.uncertain.shape)
    ks = np.concatenate(
        [c.certain_disagree.ravel(), c.uncertain.ravel(), c.sampled_disagree.ravel()]
    )
    ns = np.concatenate([nn.ravel(), nn.ravel(), c.sampled.ravel()])
    als = np.concatenate([dc.ravel(), da.ravel(), dd.ravel()])
    limits = exact_upper(ks, ns, als).reshape(3, *c.uncertain.shape)
    u_c = np.where(dc > 0, limits[0], 0.0)
    u_u = np.where(da > 0, limits[1] * limits[2], 0.0)
    nsum = max(int(c.n.sum()), 1)
    total = ((u_c + u_u) * c.n[:, None]).sum(axis=0) / nsum
    return np.asarray(np.minimum(total, 1.0), np.float64)


def exact_upper(k: IntArray | FloatArray, n: IntArray, alpha: FloatArray) -> FloatArray:
    """Clopper-Pearson upper limits, computed once per distinct (k, n, alpha)."""
    alpha = np.where(alpha > 0, alpha, 1.0)  # a part with no budget is never used
    keys = np.stack([k.astype(np.float64), n.astype(np.float64), alpha])
    uniq, inverse = np.unique(keys, axis=1, return_inverse=True)
    return binomial.upper(uniq[0], uniq[1], uniq[2])[inverse.ravel()]


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
