"""The bounds stage: upper bounds on the error of routed answers per candidate threshold, from
the counts of ``estimators.py``, each at a stated level.

Agreement with the strong model: each probability of the estimator's decomposition is replaced
by its exact Clopper-Pearson upper limit, with ``delta`` split over the parts and strata by a
rule fixed before looking at any answer (``allocation``), so ``1 - U(t)`` is a lower bound on
``A(t)`` with probability at least ``1 - delta``.

Accuracy against people: the betting bound (``betting.upper``) on the mean of the
Horvitz-Thompson variable ``X = wrong / pi``, from counts per stratum, time block and cell;
pending adjudications count as wrong.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from escalator.calibration import betting, binomial
from escalator.calibration.adjudications import HumanSample
from escalator.calibration.dataset import STRONG_ONLY
from escalator.calibration.estimators import Counts, by_choice, routed_wrong_counts

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: How a stratum's share of delta is split over its parts, fixed in advance. The shadow part
#: carries the least information, so it gets most of the error budget.
PART_WEIGHTS = {"certain": 1.0, "accepted": 1.0, "disagree": 4.0}


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


def upper(c: Counts, delta: float, choice: IntArray | None = None) -> FloatArray:
    """Upper bound on D(t), shape (T,): P(D(t) > upper) <= delta at each t.

    ``choice`` (from ``choose``): per t, 0 for the whole window (strata weighted by their
    requests), v + 1 for stratum v alone. Under the promise's own assumption (requests alike
    across the window's threshold versions) every stratum has the same D(t), so a stratum
    alone bounds it; and the choice looks at the cheap side and the design only, never a
    strong answer, so each t is still one test at ``delta``."""
    return by_choice(c, choice, lambda part: _upper(part, delta))


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
    bound = betting.upper(n, counts, x, alpha, aim)
    return np.asarray(bound.reshape(len(t_c), len(t_s)), np.float64)


def lower_bounds(
    h: HumanSample, tc: FloatArray, ts: FloatArray, alpha: float, target: float
) -> FloatArray:
    """(Tc, Ts) lower bounds on accuracy at level ``alpha`` each, tuned against ``target``;
    the pair that sends everything to people is exact (1)."""
    lower = 1.0 - error_upper(h, tc, ts, alpha, aim=1.0 - target)
    exact = (tc[:, None] >= STRONG_ONLY) & (ts[None, :] >= STRONG_ONLY)
    return np.asarray(np.where(exact, 1.0, lower), np.float64)
