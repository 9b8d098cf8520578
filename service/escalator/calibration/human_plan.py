"""``calibrate --objective human --plan``: the adjudication rates that make the bound tightest
for the same people's time, and the window they need.

The bound is on the mean of the Horvitz-Thompson variable ``X = wrong / pi`` per request
(``human.py``), and how fast the bets grow is governed by ``E[X^2] = sum_g m_g / pi_g``, where
``m_g`` is the share of traffic that lies in cell ``g`` with its routed answer wrong and
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

from escalator.calibration.adjudications import HumanSample
from escalator.calibration.certify import Dataset
from escalator.calibration.human import cell_counts
from escalator.calibration.human_certify import HumanCalibration, needed, requests_needed

FloatArray = npt.NDArray[np.float64]
#: Cells of each class: agreeing answers (certain, shadow) and differing ones.
CLASSES = {"agree": (0, 2), "differ": (1, 3)}
#: No class is planned below this rate: every answered request must keep a known chance.
MIN_RATE = 0.01


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
    certify (``needed``'s goal; else the cheapest by estimate), and what each set of rates
    needs for it (module docstring)."""
    now = {"agree": h.q_agree, "differ": h.q_disagree}
    pair = needed(d, h, result, delta, power).goal or result.best
    if pair is None:
        inf = {"now": math.inf, "neyman": math.inf, "best": math.inf}
        return AdjudicationPlan(None, {}, 0.0, now, now, inf, inf, now, d.n, h.decided)
    i, j = pair
    tc, ts = result.cheap_grid[i : i + 1], result.strong_grid[j : j + 1]
    z, m = cell_counts(h, tc, ts)
    latest = int(d.stratum[int(np.argmax(d.ts_ms))]) if d.n else 0
    sampled = np.zeros_like(m)
    np.add.at(sampled, (h.stratum, h.cell), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        size = np.where(h.pi > 0, sampled / np.where(h.pi > 0, h.pi, 1.0), 0.0).sum(axis=0)
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


def render_plan(plan: AdjudicationPlan, result: HumanCalibration) -> str:
    """The plan as the CLI prints it."""
    head = (
        f"Adjudication plan from a pilot of {plan.pilot_requests:,} requests ({plan.decided} "
        f"decided adjudications), target accuracy {result.target} within {result.budget:.1%} "
        "of traffic to people"
    )
    if plan.pair is None:
        return (
            f"{head}\n  no pair's estimated accuracy reaches the target within the budget on "
            "this pilot: nothing to plan for"
        )
    i, j = plan.pair
    lines = [
        head,
        f"  at t_c={result.cheap_grid[i]:.2f}, t_s={result.strong_grid[j]:.2f} (the pair a "
        "fresh window certifies soonest): a routed answer is wrong for "
        f"{plan.error['agree']:.1%} of agreeing and {plan.error['differ']:.1%} of differing "
        "answers",
        f"  people's time: {plan.per_1k:.1f} adjudications per 1,000 requests, kept as is",
        "",
        "                   ADJUDICATE_AGREE  ADJUDICATE_DISAGREE  E[X^2]   fresh window needed",
    ]
    rates = {"now": plan.now, "neyman": plan.suggested, "best": plan.best}
    for name, label in (("now", "now"), ("neyman", "Neyman"), ("best", "fewest requests")):
        q = rates[name]
        need = plan.requests[name]
        size = (
            "cannot be sized" if not math.isfinite(need) else f"about {math.ceil(need):,} requests"
        )
        moment = plan.second_moment[name]
        lines.append(
            f"  {label:<15}  {q['agree']:>16.3f}  {q['differ']:>19.3f}  {moment:>6.3f}   {size}"
        )
    lines.append(
        "  (Neyman: each class sampled in proportion to the square root of its error rate, the "
        "least variance; fewest requests: the split the bound needs least data with, its bets "
        "being capped by the largest 1/pi. Set ESCALATOR_ADJUDICATE_AGREE / _DISAGREE, then "
        "measure a fresh window)"
    )
    return "\n".join(lines)
