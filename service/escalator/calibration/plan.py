"""The plan stage: what ``calibrate --plan`` prints, for either objective, from the sizes of
``sizing.py``. Agreement: per shadow rate, the window and the shadow cost that certify the
goal. Human truth: the adjudication rates that make the bound tightest for the same people's
time, and the window they need.

The human bound is on the mean of the Horvitz-Thompson variable ``X = wrong / pi`` per request
(``estimators.py``), and how fast the bets grow is governed by ``E[X^2] = sum_g m_g / pi_g``,
where ``m_g`` is the share of traffic that lies in cell ``g`` with its routed answer wrong and
``pi_g = s_g q_c`` (``s_g`` the chance of a strong answer, ``q_c`` the adjudication rate of the
cell's class, agreeing or differing answers). People's time is the expected adjudications per
request, ``sum_g n_g s_g q_c`` (``n_g`` the cell's share of traffic). Minimising the first for a
fixed second (a Lagrange multiplier) gives, per class,

    q_c proportional to sqrt(A_c / B_c),  A_c = sum_{g in c} m_g / s_g,  B_c = sum_{g in c} n_g s_g

which is Neyman allocation for Bernoulli sampling: sample each class in proportion to the
square root of its error rate (for the fixed-size samples of the textbook it is the standard
deviation; with Bernoulli sampling the second moment replaces the variance). A rate that would
exceed 1 is capped and the rest given to the other class.

The bound's bets are also capped at ``CAP / max X``, and ``max X = 1 / min pi``: lowering the
agree rate to cut the variance raises the largest value, and once the cap binds the window
needed can grow although the variance fell. So the plan also searches the rates, for the same
people's time, for the smallest fresh window the bound actually needs, and prints both. Both
are computed at the pair a fresh window would certify soonest, from the pilot's decided
adjudications (add-one smoothed, so that a class with no error seen yet keeps a rate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from escalator.calibration import estimators
from escalator.calibration.adjudications import HumanSample
from escalator.calibration.dataset import Dataset
from escalator.calibration.search import HumanCalibration
from escalator.calibration.sizing import (
    Design,
    Profile,
    cell_sizes,
    latest_stratum,
    needed_human,
    requests_needed,
    required_requests,
)

FloatArray = npt.NDArray[np.float64]
SHADOW_RATES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
#: Cells of each class: agreeing answers (certain, shadow) and differing ones.
CLASSES = {"agree": (0, 2), "differ": (1, 3)}
#: No class is planned below this rate: every answered request must keep a known chance.
MIN_RATE = 0.01


@dataclass(frozen=True)
class Row:
    """One line of a plan: a shadow rate and what certifying at it takes (None: more than
    ``sizing.MAX_REQUESTS`` requests)."""

    p: float
    requests: int | None
    shadowed: int | None
    hours: float | None
    shadow_usd: float | None


def rows(
    cautious: Profile,
    prof: Profile,
    tau: float,
    target: float,
    delta: float,
    goal: int,
    *,
    per_hour: float | None,
    strong_call_usd: float | None,
    power: float = 0.8,
) -> list[Row]:
    """One row per shadow rate: ``cautious`` sizes it; ``prof`` is the fallback when the
    cautious profile cannot reach the goal at all."""
    out: list[Row] = []
    accepted = float(prof.at(np.asarray([tau]))[0][0])
    for p in SHADOW_RATES:
        n = required_requests(cautious, Design(tau, p), target, delta, goal, power)
        if n is None:
            n = required_requests(prof, Design(tau, p), target, delta, goal, power)
        if n is None:
            out.append(Row(p, None, None, None, None))
            continue
        shadowed = math.ceil(n * accepted * p)
        out.append(
            Row(
                p=p,
                requests=n,
                shadowed=shadowed,
                hours=None if not per_hour else n / per_hour,
                shadow_usd=None if strong_call_usd is None else shadowed * strong_call_usd,
            )
        )
    return out


@dataclass(frozen=True)
class AdjudicationPlan:
    pair: tuple[int, int] | None
    error: dict[str, float]  # P(routed answer wrong | class), at the pair
    per_1k: float  # adjudications per 1,000 requests (the budget, as now)
    now: dict[str, float]  # the rates in force
    suggested: dict[str, float]
    second_moment: dict[str, float]  # E[X^2]: now, neyman, best
    requests: dict[str, float]  # the fresh window each needs (inf: cannot be sized)
    best: dict[str, float]  # the rates that need the smallest window, same people's time
    pilot_requests: int
    decided: int


def _allocate(a: dict[str, float], b: dict[str, float], budget: float) -> dict[str, float]:
    """Minimise sum_c a_c / q_c subject to sum_c b_c q_c = budget, 0 < q_c <= 1."""
    root = {c: math.sqrt(max(a[c], 1e-12) / max(b[c], 1e-12)) for c in a}
    scale = budget / sum(b[c] * root[c] for c in a)
    q = {c: scale * root[c] for c in a}
    for c in a:
        if q[c] > 1.0:
            (other,) = (x for x in a if x != c)
            q = {c: 1.0, other: (budget - b[c]) / max(b[other], 1e-12)}
    return {c: float(min(max(v, MIN_RATE), 1.0)) for c, v in q.items()}


def plan_adjudication(
    d: Dataset, h: HumanSample, result: HumanCalibration, delta: float, power: float = 0.8
) -> AdjudicationPlan:
    """The variance-minimising adjudication rates at the pair a fresh window would most easily
    certify (``sizing.needed_human``'s goal; else the cheapest by estimate), and what each set
    of rates needs for it (module docstring)."""
    now = {"agree": h.q_agree, "differ": h.q_disagree}
    pair = needed_human(d, h, result, delta, power).goal or result.best
    if pair is None:
        inf = {"now": math.inf, "neyman": math.inf, "best": math.inf}
        return AdjudicationPlan(None, {}, 0.0, now, now, inf, inf, now, d.n, h.decided)
    i, j = pair
    tc, ts = result.cheap_grid[i : i + 1], result.strong_grid[j : j + 1]
    z, m = estimators.cell_counts(h, tc, ts)
    latest = latest_stratum(d)
    size = cell_sizes(h).sum(axis=0)
    total = max(int(h.n.sum()), 1)
    share = size / total  # (4,) share of traffic per cell
    rate = (z[:, :, 0, 0].sum(axis=0) + 1.0) / (m.sum(axis=0) + 2.0)  # add-one smoothed
    pi = h.pi[latest]
    q_of = np.asarray([now["agree"], now["differ"], now["agree"], now["differ"]])
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(q_of > 0, pi / q_of, 0.0)  # chance of a strong answer per cell
    mass = share * rate  # m_g
    a = {c: float(sum(mass[g] / s[g] for g in cells if s[g] > 0)) for c, cells in CLASSES.items()}
    b = {c: float(sum(share[g] * s[g] for g in cells)) for c, cells in CLASSES.items()}
    per_request = sum(b[c] * now[c] for c in CLASSES)
    suggested = _allocate(a, b, per_request)
    level = math.log(len(result.strong_grid) / delta)
    unc = float(h.uncovered[latest] / max(int(h.n[latest]), 1))

    def evaluate(q: dict[str, float]) -> tuple[float, float]:
        rates = np.asarray([q["agree"], q["differ"], q["agree"], q["differ"]])
        p = s * rates
        values = np.where(p > 0, 1.0 / np.where(p > 0, p, 1.0), 0.0)
        probs = np.where(p > 0, mass * p, 0.0)[:, None]
        moment = float(np.sum(np.where(p > 0, mass / np.where(p > 0, p, 1.0), 0.0)))
        need = requests_needed(probs, values, unc, 1.0 - result.target, level, power)[0]
        return moment, float(need)

    # The same people's time, every split of it: q_agree on a grid, q_differ what is left.
    best, best_need = now, math.inf
    for qa in np.linspace(MIN_RATE, 1.0, 100):
        qd = (per_request - b["agree"] * qa) / max(b["differ"], 1e-12)
        if not MIN_RATE <= qd <= 1.0:
            continue
        need = evaluate({"agree": float(qa), "differ": float(qd)})[1]
        if need < best_need:
            best, best_need = {"agree": float(qa), "differ": float(qd)}, need
    moments, needs = {}, {}
    for name, q in (("now", now), ("neyman", suggested), ("best", best)):
        moments[name], needs[name] = evaluate(q)
    return AdjudicationPlan(
        pair=pair,
        error={
            c: float(np.average(rate[list(g)], weights=share[list(g)] + 1e-12))
            for c, g in CLASSES.items()
        },
        per_1k=1000.0 * per_request,
        now=now,
        suggested=suggested,
        second_moment=moments,
        requests=needs,
        best=best,
        pilot_requests=d.n,
        decided=h.decided,
    )
