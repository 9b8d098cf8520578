"""The human objective: the cheapest pair of thresholds (cheap ``t_c``, strong ``t_s``) whose
accuracy against people is certified to reach a target, within a budget of traffic sent to
people; what a refusal says; and what the guarantee assumes.

Search. The strong grid has ``K`` points (default 9); each gets ``delta / K`` (Bonferroni), and
within it the cheap grid is walked in a fixed sequence from escalate-all down (t_c = 1.01, 1.00,
..., 0.00), stopping at the first pair whose betting bound (``human.error_upper``, tuned against
the target) does not reach the target. The pair that sends everything to people
(t_c = t_s = 1.01) is right by construction and passes without a test. The orders are fixed
before the data are seen, so with probability at least ``1 - delta`` *every* pair passed, on
every strong threshold at once, is truly at or above the target; choosing the cheapest of them
within the human budget (estimated from the cheap and strong answers, never the human labels)
keeps that.

Undecided adjudications. A request sampled for adjudication without a decision yet counts as
wrong at every pair that does not send it to people. That can only lower each request's
contribution to the bets (a factor ``1 + lam (m - X)`` falls as ``X`` rises), so the bound stays
valid whatever made the decision late (a hard case, a busy reviewer, an expired item), provided
a decision's timing does not depend on the labels of requests that came *after* it. The CLI can
instead refuse before reading any label (``--undecided refuse``), which spends nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from escalator.calibration import betting, binomial, estimates
from escalator.calibration.adjudications import HumanSample
from escalator.calibration.certify import (
    STRONG_ONLY,
    CalibrationError,
    Dataset,
    _cost,
    default_grid,
)
from escalator.calibration.human import (
    cell_counts,
    error_upper,
    hajek,
    human_share,
)

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

PROCEDURE = "Bonferroni over strong thresholds x fixed-sequence over cheap thresholds, "
PROCEDURE += "betting bound (Waudby-Smith-Ramdas) on Horvitz-Thompson adjudications, v2"
#: The strong thresholds tried by default: few, because each costs delta / K.
DEFAULT_STRONG_GRID = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, STRONG_ONLY)
#: Sizing a fresh window: the bets learn from earlier blocks and the first block bets nothing,
#: so a window needs this much more than the Kelly growth of a known distribution would say
#: (checked against worlds with known truth: tests/unit/calibration/test_human_backlog.py).
LEARNING = 1.5
#: Sizing takes each cell's error rate at this one-sided upper confidence level.
PILOT_LEVEL = 0.5
#: Windows larger than this many times the pilot are not sized further.
MAX_FACTOR = 1e6

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


def grids(
    grid: Sequence[float] | FloatArray | None, strong_grid: Sequence[float] | None
) -> tuple[FloatArray, FloatArray]:
    """The cheap grid (ending at escalate-all) and the strong grid, as searched."""
    tc = np.asarray(grid, dtype=np.float64) if grid is not None else default_grid()
    if tc[-1] < STRONG_ONLY:
        tc = np.append(tc, STRONG_ONLY)
    ts = np.asarray(strong_grid if strong_grid is not None else DEFAULT_STRONG_GRID, np.float64)
    return tc, ts


def lower_bounds(
    h: HumanSample, tc: FloatArray, ts: FloatArray, alpha: float, target: float
) -> FloatArray:
    """(Tc, Ts) lower bounds on accuracy at level ``alpha`` each, tuned against ``target``;
    the pair that sends everything to people is exact (1)."""
    lower = 1.0 - error_upper(h, tc, ts, alpha, aim=1.0 - target)
    exact = (tc[:, None] >= STRONG_ONLY) & (ts[None, :] >= STRONG_ONLY)
    return np.asarray(np.where(exact, 1.0, lower), np.float64)


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
    tc, ts = grids(grid, strong_grid)
    k = len(ts)
    lower = lower_bounds(h, tc, ts, delta / k, target) if lower_override is None else lower_override
    z, m = cell_counts(h, tc, ts)
    point = 1.0 - hajek(h, z, m)
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


@dataclass(frozen=True)
class HumanNeed:
    """A fresh window that would certify a pair within the budget.

    ``factor`` None with ``why``: it cannot be sized from this window (or, when ``proven``, no
    window at this design can certify); ``beyond`` set: more than that many times this one."""

    factor: float | None
    requests: int | None
    adjudicated: int | None
    hours: float | None
    goal: tuple[int, int] | None = None
    beyond: float | None = None
    why: str = ""
    proven: bool = False


def _z(power: float) -> float:
    """Standard normal quantile, by bisection on erf."""
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < power else (lo, mid)
    return (lo + hi) / 2


def _fresh_distribution(
    h: HumanSample, tc: FloatArray, ts: FloatArray, latest: int
) -> tuple[FloatArray, FloatArray, float]:
    """The Horvitz-Thompson variable of one request of a fresh window at the design of
    stratum ``latest``, per pair: (4, P) probabilities of the nonzero values, (4,) the values
    1/pi, and the uncovered share (a value of 1). The error per cell is estimated from every
    stratum: its error rate among decided adjudications, times its size (every sampled one,
    pending included, over pi)."""
    z, m = cell_counts(h, tc, ts)  # (S, 4, Tc, Ts), (S, 4) decided
    flat = z.reshape(z.shape[0], 4, -1).astype(np.float64)
    sampled = np.zeros_like(m)
    np.add.at(sampled, (h.stratum, h.cell), 1)
    # Each cell's error rate at its PILOT_LEVEL upper limit, not its point estimate: a small
    # window that looked lucky must not promise too much (as plan.py does for agreement).
    mm = np.broadcast_to(m[:, :, None], flat.shape)
    cautious = binomial.upper(flat, mm, 1.0 - PILOT_LEVEL)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(mm > 0, cautious, 0.0)
        size = np.where(h.pi > 0, sampled / np.where(h.pi > 0, h.pi, 1.0), 0.0)
    mu = (rate * size[:, :, None]).sum(axis=0) / max(int(h.n.sum()), 1)  # (4, P)
    pi = h.pi[latest]
    probs = np.where(pi[:, None] > 0, mu * pi[:, None], 0.0)
    values = np.where(pi > 0, 1.0 / np.where(pi > 0, pi, 1.0), 0.0)
    uncovered = float(h.uncovered[latest] / max(int(h.n[latest]), 1))
    return probs, values, uncovered


def _growth(
    probs: FloatArray, values: FloatArray, uncovered: float, m0: float
) -> tuple[FloatArray, FloatArray]:
    """Per pair: the mean and variance of ``log(1 + lam (m0 - X))`` at the Kelly bet."""
    x = np.append(values, 1.0)  # (5,)
    p = np.vstack([probs, np.full((1, probs.shape[1]), uncovered)]).T  # (P, 5)
    zeros = np.maximum(1.0 - p.sum(axis=1), 0.0)
    lam = betting.kelly(zeros, p, np.broadcast_to(x, p.shape), m0)
    f0 = np.log1p(lam * m0)
    fg = np.log1p(np.clip(lam[:, None] * (m0 - x[None, :]), -0.999999, None))
    mean = zeros * f0 + (p * fg).sum(axis=1)
    second = zeros * f0**2 + (p * fg**2).sum(axis=1)
    return mean, np.maximum(second - mean**2, 0.0)


def requests_needed(
    probs: FloatArray, values: FloatArray, uncovered: float, m0: float, level: float, power: float
) -> FloatArray:
    """Per pair: the requests a window needs for the bets against ``m0`` to reach ``level``
    (log 1/alpha) with probability about ``power``, for the Horvitz-Thompson variable with
    nonzero ``values`` (4,) at ``probs`` (4, P) and ``uncovered`` share of 1s (inf: never)."""
    g, v = _growth(probs, values, uncovered, m0)
    z = _z(power)
    with np.errstate(divide="ignore", invalid="ignore"):
        root = (z * np.sqrt(v) + np.sqrt(z * z * v + 4.0 * g * level)) / (2.0 * g)
        n = np.where(g > 0, root**2, np.inf) * LEARNING / (1.0 - betting.BLOCKS[0])
    return np.asarray(n, np.float64)


def needed(
    d: Dataset, h: HumanSample, result: HumanCalibration, delta_next: float, power: float = 0.8
) -> HumanNeed:
    """The smallest fresh window (at the latest design and the same adjudication rates) that
    would certify some pair within the budget with probability about ``power``, over every such
    pair (each ranked by what it needs, the walk above it included).

    From the window's estimated error per cell, each pair's bets grow by ``g`` per request on
    average, with variance ``v``; the walk passes the pair when ``n g - z sqrt(n v)`` reaches
    ``log(K / delta_next)``, the first block (which bets nothing) and the learning of the bets
    (``LEARNING``) added."""
    tc, ts = result.cheap_grid, result.strong_grid
    k = len(ts)
    m0 = 1.0 - result.target
    if h.decided == 0:
        return HumanNeed(
            None,
            None,
            None,
            None,
            why="no adjudication has been decided yet, so the size of a window that would "
            "certify cannot be estimated",
        )
    latest = int(d.stratum[int(np.argmax(d.ts_ms))]) if d.n else 0
    probs, values, uncovered = _fresh_distribution(h, tc, ts, latest)
    if uncovered >= m0:
        return HumanNeed(
            None,
            None,
            None,
            None,
            why=f"{uncovered:.1%} of traffic is accepted with no shadow sampling (no person ever "
            "sees it, so it counts as wrong): no amount of data at this design can certify a "
            "pair that accepts it; set ESCALATOR_SHADOW_RATE > 0",
            proven=True,
        )
    n = requests_needed(probs, values, uncovered, m0, math.log(k / delta_next), power)
    n = n.reshape(len(tc), k)
    n[-1, -1] = 0.0  # everything to people: exact
    # The walk must pass every pair above on its column.
    path = np.maximum.accumulate(n[::-1], axis=0)[::-1]
    fits = result.human <= result.budget + 1e-12
    need = np.where(fits, path, np.inf)
    need[-1, -1] = np.inf if not fits[-1, -1] else 0.0
    if not np.isfinite(need).any():
        return HumanNeed(
            None,
            None,
            None,
            None,
            why="no pair within the budget has an estimated accuracy above the target on this "
            "window, so the size of a window that would certify one cannot be estimated from it",
        )
    i, j = (int(x) for x in np.unravel_index(int(np.argmin(need)), need.shape))
    factor = max(float(need[i, j]) / max(d.n, 1), 1.0)
    if factor > MAX_FACTOR:
        return HumanNeed(None, None, None, None, goal=(i, j), beyond=MAX_FACTOR)
    span_h = (int(d.ts_ms.max()) - int(d.ts_ms.min())) / 3.6e6 if d.n > 1 else 0.0
    sampled = h.m if h.backlog is None else h.backlog.sampled
    return HumanNeed(
        factor,
        math.ceil(d.n * factor),
        math.ceil(sampled * factor),
        factor * span_h if span_h > 0 else None,
        (i, j),
    )


def assumptions(h: HumanSample | None, undecided: int) -> list[str]:
    """What the human guarantee assumes, in the words the file and the CLI print."""
    out = [
        "requests independent and identically distributed over the window, every threshold "
        "version alike (traffic like the window's)",
        "people's labels are the truth (disagreement between reviewers is not modelled)",
        "adjudication sampled every request with a strong answer at the recorded rates, "
        "independently of its label",
    ]
    if h is not None and not h.draws_recorded:
        out.append("every sampled adjudication was decided (the log records no draws)")
    else:
        out.append(
            f"{undecided} sampled adjudication(s) without a decision counted as wrong; a "
            "decision's timing does not depend on the labels of later requests"
        )
    return out


def guarantee(result: HumanCalibration, h: HumanSample | None = None) -> str:
    """The sentence a certified human calibration promises (stored in the threshold file)."""
    if result.status != "certified":
        return "none: refused"
    return (
        f"with probability at least {1 - result.delta:.6g} over the measurement window, the "
        f"accuracy against people of routed answers at the chosen cheap and strong thresholds "
        f"(a request sent to people counted as right), on traffic like the window's, is at "
        f"least {result.target}; assuming " + "; ".join(assumptions(h, result.pending))
    )


def refusal(result: HumanCalibration, need: HumanNeed) -> str:
    """One line: why the target cannot be certified, and how much more adjudication would."""
    from escalator.calibration.plan import duration

    head = (
        f"calibrate: cannot certify accuracy against people >= {result.target} at delta "
        f"{result.delta:.3g} within a human budget of {result.budget:.1%}: {result.reason}"
    )
    if result.pending:
        head += (
            f" ({result.pending} undecided adjudication(s) counted as wrong; deciding them "
            "first would help)"
        )
    tail = "; wrote no thresholds file (--fallback escalate-all writes one that escalates "
    tail += "everything)"
    if need.beyond is not None:
        return f"{head}; needs a fresh window more than {need.beyond:,.0f} times this one's{tail}"
    if need.requests is None:
        return f"{head}; {need.why}{tail}"
    assert need.goal is not None
    i, j = need.goal
    return (
        f"{head}; needs a fresh window of about {need.requests:,} requests with "
        f"{need.adjudicated:,} adjudicated answers (about {need.factor:.1f} times this one's, "
        f"at the same adjudication rates; {duration(need.hours)}) to certify "
        f"t_c={result.cheap_grid[i]:.2f}, t_s={result.strong_grid[j]:.2f}{tail}"
    )


def pending_refusal(h: HumanSample) -> str:
    """One line for ``--undecided refuse``: how many sampled adjudications are undecided, and
    when to try again. Written before any person's label is read: nothing is spent."""
    from datetime import UTC, datetime

    b = h.backlog
    assert b is not None

    def iso(ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    when = b.retry_after_ms()
    if when is not None:
        again = (
            f"at the recent pace ({b.per_hour:,.1f} decisions/h) they should be decided by "
            f"about {iso(when)}; try again then"
        )
    else:
        again = "no recent adjudication decisions to measure the pace by: is anyone reviewing?"
    oldest = (
        "" if b.oldest_pending_ms is None else f", the oldest sampled at {iso(b.oldest_pending_ms)}"
    )
    return (
        f"calibrate: {b.pending} of the window's {b.sampled} sampled adjudications have no "
        f"decision yet{oldest}; {again} (nothing was read from people's labels and no attempt "
        "was spent; --undecided wrong certifies now, counting them as wrong)"
    )
