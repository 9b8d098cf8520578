"""The search stage (calibration/search.py): the fixed sequence, certification and refusal for
the agreement objectives; and the calibrator's promises, measured against worlds whose truth
is known exactly (tests/unit/calibration/worlds.py, human_worlds.py).

The quality objective. For each world (realistic, overconfident), log size n in {2,000,
10,000} and shadow rate p in {1, 0.2, 0.05}: draw a log, calibrate at delta = 0.05, and
compare with the truth.
- the guarantee: true agreement at the chosen threshold >= target (a refusal holds);
- every estimate the calibrator prints or stores lies in [0, 1];
- realistic, n = 10,000, p = 0.2: the median chosen escalation rate is within 0.10 of the
  optimum's (refusals count as escalating everything) and fewer than 10% are refusals;
- after a refusal, a fresh log of the size it asked for calibrates without refusing in most
  repetitions.
Reduced by default (a few dozen repetitions: CI's budget); the full run, 200 repetitions per
cell, prints the table that docs/CALIBRATION.md shows:
    ESCALATOR_CALIBRATION_SCALE=full .venv/bin/python -m pytest \
        tests/unit/calibration/test_search.py -q -s -k "guarantee_refusals or sparsely"

The human objective's promise: 100 repetitions of two cells at the CI scale (p = 1 and
p = 0.3); the full scale (``ESCALATOR_CALIBRATION_SCALE=full``, ``make calibration-stats``) runs
1,000 per cell and prints the table docs/CALIBRATION.md shows:
    ESCALATOR_CALIBRATION_SCALE=full .venv/bin/python -m pytest \
        tests/unit/calibration/test_search.py -q -s -k promise_holds

The human objective when reviewers lag: undecided adjudications counted as wrong keep the
promise in every cell; the bound the objective used before (v1: undecided ones invisible)
breaks it; and the fresh window a refusal asks for is enough. Cells: n = 10,000 requests at
p = 1 (q_disagree 0.5, q_agree 0.2), target 0.94 with at most 15% to people, delta 0.05; 0,
5, 10, 20, 30 and 50% of the sampled adjudications undecided, either at random or by
decisions arriving after an exponential delay (mean 1 h, twice that for differing answers)
with calibration run while that share is still undecided (the latest and hardest missing).
CI runs 20 repetitions per cell; the full scale (``make calibration-stats``) 200, and prints
the tables docs/CALIBRATION.md shows:
    ESCALATOR_CALIBRATION_SCALE=full .venv/bin/python -m pytest \
        tests/unit/calibration/test_search.py -q -s -k "undecided or v1_bound or refusal_asks"
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from escalator.calibration import binomial, search, sizing
from escalator.calibration.dataset import (
    DEFAULT_STRONG_GRID,
    STRONG_ONLY,
    default_grid,
    grids,
)
from escalator.calibration.search import calibrate, fixed_sequence
from escalator.calibration.threshold_file import estimates_at
from tests.unit.calibration import human_worlds, worlds
from tests.unit.calibration.human_worlds import (
    HumanWorld,
    Window,
    draw,
    moderation,
    v1_lower,
    without_pending,
)
from tests.unit.calibration.worlds import World, log, overconfident, realistic

FULL = os.environ.get("ESCALATOR_CALIBRATION_SCALE") == "full"
DELTA = 0.05
HUMAN_REPS = 1000 if FULL else 100
#: (requests, shadow rate, q_disagree, q_agree) per cell.
HUMAN_CELLS = [(10_000, 1.0, 0.5, 0.2), (20_000, 0.3, 0.6, 0.3)]


def test_fixed_sequence_stops_at_the_first_failure_from_the_top() -> None:
    """A failure in the middle stops the walk, even if lower thresholds would pass again."""
    lower = np.asarray([0.99, 0.99, 0.90, 0.99, 0.99, 1.0])
    assert fixed_sequence(lower, 0.98) == 3
    assert fixed_sequence(np.asarray([0.5, 0.5, 1.0]), 0.98) == 2


def test_certified_threshold_meets_the_target_and_says_what_it_promises() -> None:
    """At n = 10,000, p = 1 the calibrator certifies, near the optimum, a threshold whose true
    agreement reaches the target."""
    w = worlds.realistic()
    cal = calibrate(worlds.log(w, np.random.default_rng(1), 10_000, p=1.0), target=w.target)
    assert cal.status == "certified"
    assert w.agreement(cal.threshold)[0] >= w.target
    _, e_opt = w.optimum()
    assert w.escalation(cal.threshold)[0] - e_opt < 0.1
    assert cal.curve.agreement_lower[cal.chosen] >= w.target


def test_refuses_when_the_data_are_too_few_and_says_how_much_more() -> None:
    """2,000 requests at p = 0.05 cannot certify 0.98: refused, with a finite 'needed'."""
    w = worlds.realistic()
    d = worlds.log(w, np.random.default_rng(2), 2000, p=0.05)
    cal = calibrate(d, target=w.target)
    assert cal.status == "refused" and cal.threshold == STRONG_ONLY and cal.reason
    need = sizing.needed(d, cal, cal.delta)
    assert need.requests is not None and need.requests > d.n
    assert need.shadowed is not None and 0 < need.shadowed < need.requests


def test_overconfident_world_is_refused_or_certified_high() -> None:
    """Where agreement stays low at high confidence, the chosen threshold escalates most."""
    w = worlds.overconfident()
    cal = calibrate(worlds.log(w, np.random.default_rng(3), 10_000, p=1.0), target=w.target)
    assert w.agreement(cal.threshold)[0] >= w.target
    assert w.escalation(cal.threshold)[0] > 0.75


def test_rate_and_budget_objectives_hit_their_constraints() -> None:
    """rate stays at or under the escalation target; budget stays within its cost, agreement max."""
    d = worlds.log(worlds.realistic(), np.random.default_rng(3), 3000, p=0.5)
    rate = calibrate(d, objective="rate", target=0.3)
    assert 0.25 < rate.curve.escalation[rate.chosen] <= 0.3
    budget = calibrate(d, objective="budget", target=0.05)
    c = budget.curve
    assert c.cost_per_1k[budget.chosen] <= 0.05
    assert c.agreement[budget.chosen] == pytest.approx(c.agreement[c.cost_per_1k <= 0.05].max())


def test_per_label_thresholds_report_a_label_with_too_few_answers() -> None:
    """A label with a handful of answers is reported as not certified and escalates all;
    the others get certified thresholds of their own."""
    d = worlds.log(worlds.realistic(), np.random.default_rng(5), 12_000, p=1.0)
    rare = worlds.LABELS.index("review-needed")
    keep = (d.cheap_label != rare) | (np.arange(d.n) % 200 == 0)
    cal = calibrate(d.subset(keep), target=0.97, per_label=True)
    by = {r.label: r for r in cal.labels}
    assert not by["review-needed"].certified
    assert cal.label_thresholds["review-needed"] == STRONG_ONLY
    assert by["safe"].certified and by["safe"].threshold < 1
    assert cal.status == "certified"


def _optimum(world: human_worlds.HumanWorld) -> tuple[float, float, float]:
    best = (STRONG_ONLY, STRONG_ONLY, 1.0)
    for ts in DEFAULT_STRONG_GRID:
        for tc in default_grid():
            if world.accuracy(tc, ts) >= world.target and world.human_share(tc, ts) <= world.budget:
                if tc < best[0]:
                    best = (float(tc), float(ts), world.human_share(tc, ts))
    return best


def run_human_cell(
    world: human_worlds.HumanWorld,
    cell: tuple[int, float, float, float],
    reps: int,
    seed: int,
    *,
    broken: bool = False,
) -> tuple[int, int, list[float], float]:
    """(failures, refusals, chosen cheap thresholds, seconds) over ``reps`` windows.

    ``broken``: certify with the point estimate in place of the lower bound (not a bound)."""
    n, p, qd, qa = cell
    rng = np.random.default_rng(seed)
    fails = refused = 0
    chosen: list[float] = []
    started = time.monotonic()
    for _ in range(reps):
        w = human_worlds.draw(world, rng, n, p=p, q_disagree=qd, q_agree=qa)
        kw: dict[str, Any] = {"target": world.target, "budget": world.budget, "delta": DELTA}
        res = search.calibrate_human(w.data, w.human, w.strong_conf, w.strong_review, **kw)
        if broken:
            res = search.calibrate_human(
                w.data, w.human, w.strong_conf, w.strong_review, lower_override=res.accuracy, **kw
            )
        assert np.all((res.accuracy >= 0) & (res.accuracy <= 1))
        if res.status == "refused":
            refused += 1  # a refusal holds: it promises nothing
            continue
        fails += world.accuracy(res.cheap_threshold, res.strong_threshold) < world.target
        chosen.append(res.cheap_threshold)
    return fails, refused, chosen, time.monotonic() - started


def allowed_failures_at_every_scale(reps: int) -> int:
    """The issue's requirement as it stands, at every scale: the target is met in at least
    1 - delta (95%) of the repetitions, so at most floor(delta x reps) fail (10 of 200). (The
    bound is conservative enough that no slack for sampling noise is needed here.)"""
    return int(np.floor(DELTA * reps))


@pytest.mark.timeout(3600 if FULL else 300)
def test_the_promise_holds_in_a_world_whose_truth_is_known() -> None:
    """The pair chosen by --objective human meets the accuracy target (computed exactly from
    the world) in >= 1 - delta of repetitions, in each cell; and some repetitions certify."""
    world = human_worlds.moderation()
    tc, ts, share = _optimum(world)
    print(f"\noptimum: t_c={tc:.2f} t_s={ts:.2f}, {share:.3f} to people")
    print("     n     p   q_dis  q_agr  reps  fails  refused  median t_c  seconds")
    for k, cell in enumerate(HUMAN_CELLS):
        fails, refused, chosen, secs = run_human_cell(world, cell, HUMAN_REPS, seed=77 + k)
        med = f"{np.median(chosen):.2f}" if chosen else "-"
        print(
            f"{cell[0]:>6} {cell[1]:>5g} {cell[2]:>6g} {cell[3]:>6g} {HUMAN_REPS:>5} {fails:>6} "
            f"{refused:>8} {med:>11} {secs:>8.1f}"
        )
        assert fails <= allowed_failures_at_every_scale(HUMAN_REPS), (cell, fails)
        assert refused < HUMAN_REPS  # the test has power: it certifies, so it could fail


def test_the_check_fails_a_point_estimate_posing_as_a_bound() -> None:
    """The same check, with the point estimate in place of the lower bound, fails: the test
    can tell a bound from a guess."""
    reps = 200
    fails, refused, _, _ = run_human_cell(
        human_worlds.moderation(), HUMAN_CELLS[0], reps, seed=5, broken=True
    )
    print(f"\nbroken bound: {fails}/{reps} below the target, {refused} refused")
    assert fails > allowed_failures_at_every_scale(reps)


# -- the quality objective's promise ---------------------------------------------------------------
QUALITY_REPS = 200 if FULL else 30
NEED_CHECKS = 20 if FULL else 2  # refusals per cell whose 'needed' figure is tried out
QUALITY_CELLS = [(n, p) for n in (2000, 10_000) for p in (1.0, 0.2, 0.05)]


@dataclass(frozen=True)
class Cell:
    world: str
    n: int
    p: float
    reps: int
    held: int
    refused: int
    median_escalation: float
    optimum_escalation: float
    need_tried: int
    need_enough: int
    seconds: float


def _in_unit(values: list[float]) -> bool:
    return all(0.0 <= v <= 1.0 for v in values)


def run_quality_cell(
    world: World, n: int, p: float, reps: int, need_checks: int, seed: int
) -> Cell:
    rng = np.random.default_rng(seed)
    held = refused = tried = enough = 0
    escalation: list[float] = []
    started = time.monotonic()
    for _ in range(reps):
        d = log(world, rng, n, p=p)
        cal = calibrate(d, target=world.target, delta=DELTA)
        c = cal.curve
        stored = estimates_at(d, cal)
        numbers = [
            *stored["escalation_rate"],
            stored["agreement_with_strong"]["point"],
            stored["agreement_with_strong"]["lower_bound"],
            stored["accuracy_vs_gold"],
        ]
        assert _in_unit(numbers)
        for arr in (c.agreement, c.agreement_lower, c.escalation, c.accuracy):
            assert arr is not None and np.all((arr >= 0) & (arr <= 1))
        if cal.status == "refused":
            refused += 1
            held += 1
            escalation.append(1.0)
            if tried < need_checks:
                need = sizing.needed(d, cal, DELTA)
                if need.requests is not None and need.requests <= 2_000_000:
                    tried += 1
                    again = calibrate(log(world, rng, need.requests, p=p), target=world.target)
                    enough += again.status != "refused"
            continue
        held += bool(world.agreement(cal.threshold)[0] >= world.target)
        escalation.append(float(world.escalation(cal.threshold)[0]))
    return Cell(
        world=world.name,
        n=n,
        p=p,
        reps=reps,
        held=held,
        refused=refused,
        median_escalation=float(np.median(escalation)),
        optimum_escalation=world.optimum()[1],
        need_tried=tried,
        need_enough=enough,
        seconds=time.monotonic() - started,
    )


def allowed_failures(reps: int) -> int:
    """Full scale: the plain ``delta x reps`` of the issue. CI: the failures a procedure with
    error delta shows in 99% of runs (a few repetitions scatter)."""
    if FULL:
        return int(np.floor(DELTA * reps))
    k = 0
    while binomial.cdf(k, reps, DELTA)[()] < 0.99:
        k += 1
    return k


def _report(cells: list[Cell]) -> None:
    print("\nworld          n      p   reps  held    refused  median esc  optimum  needed ok")
    for c in cells:
        need = f"{c.need_enough}/{c.need_tried}" if c.need_tried else "-"
        print(
            f"{c.world:<13} {c.n:>6} {c.p:>5g} {c.reps:>5}  {c.held / c.reps:>6.3f}  "
            f"{c.refused / c.reps:>7.3f}  {c.median_escalation:>10.3f}  "
            f"{c.optimum_escalation:>7.3f}  {need:>9}   ({c.seconds:.0f} s)"
        )


@pytest.mark.timeout(3600 if FULL else 300)
@pytest.mark.parametrize("world", [realistic(), overconfident()], ids=lambda w: w.name)
def test_guarantee_refusals_and_needed_figures(world: World) -> None:
    """Every cell: the guarantee holds in >= 1 - delta of repetitions, estimates stay in
    [0, 1], and a 'needed' figure is enough in most of the repetitions that tried it."""
    cells = []
    for k, (n, p) in enumerate(QUALITY_CELLS):
        if not FULL and n == 10_000 and p != 0.2:
            continue  # the reduced run keeps the large cell that has a power requirement
        cells.append(
            run_quality_cell(
                world, n, p, QUALITY_REPS, NEED_CHECKS, seed=1000 * k + len(world.name)
            )
        )
    _report(cells)
    for c in cells:
        assert c.reps - c.held <= allowed_failures(c.reps), c
    tried = sum(c.need_tried for c in cells)
    assert tried > 0
    assert sum(c.need_enough for c in cells) > tried / 2
    for c in cells:
        if c.need_tried >= 5:
            assert c.need_enough > c.need_tried / 2, c
    if world.name == "realistic":
        big = next(c for c in cells if c.n == 10_000 and c.p == 0.2)
        assert big.median_escalation - big.optimum_escalation <= 0.10, big
        assert big.refused / big.reps < 0.10, big


@pytest.mark.timeout(3600 if FULL else 300)
def test_old_sparsely_shadowed_data_does_not_turn_a_certifiable_window_into_a_refusal() -> None:
    """The audit's window: 8,000 requests of an old version at p = 0.05, then 3,000 of a new one
    at p = 1 (realistic world). Each threshold is bounded by the estimator the design favours
    (here the new version alone), so adding the old data refuses no more often than the new
    data alone, and the guarantee still holds; weighting the strata by their requests, as
    before, refused most of the time."""
    from tests.unit.calibration.worlds import versions

    world = realistic()
    reps = 200 if FULL else 40
    rng = np.random.default_rng(8)
    refused = {"both": 0, "new only": 0, "both, weighted by requests": 0}
    failed = {k: 0 for k in refused}
    for _ in range(reps):
        d = versions(world, rng, (8000, 0.05, 0.7), (3000, 1.0, 0.7))
        runs: dict[str, Any] = {
            "both": calibrate(d, target=world.target, delta=DELTA),
            "new only": calibrate(d.subset(d.stratum == 1), target=world.target, delta=DELTA),
            "both, weighted by requests": _weighted_by_requests(d, world.target),
        }
        for name, cal in runs.items():
            if cal.status == "refused":
                refused[name] += 1
            else:
                failed[name] += bool(world.agreement(cal.threshold)[0] < world.target)
    print(f"\ntwo versions ({reps} repetitions): refused {refused}, below target {failed}")
    assert refused["both"] <= refused["new only"] + max(2, reps // 20)
    assert refused["both, weighted by requests"] > reps / 2  # the check can tell
    # The realistic world has a grid point just under the target (t = 0.73, 0.97986), where
    # an exact test errs at close to its nominal rate: the failures of a procedure with error
    # delta scatter around delta x reps, so at every scale the check is that they stay within
    # what such a procedure shows in 99% of runs (the new version alone is the reference).
    k = 0
    while binomial.cdf(k, reps, DELTA)[()] < 0.99:
        k += 1
    for name in refused:
        assert failed[name] <= k, name


@dataclass(frozen=True)
class _Verdict:
    status: str
    threshold: float


def _weighted_by_requests(d: Any, target: float) -> _Verdict:
    """The rule before the stratum choice, rebuilt from public pieces: the curve without a
    target bounds every threshold with the strata weighted by their requests; then the same
    fixed sequence and refusal rules as ``calibrate`` (margin 0.10)."""
    from escalator.calibration.curves import curve
    from escalator.calibration.dataset import default_grid
    from escalator.calibration.search import best_by_point, fixed_sequence

    c = curve(d, default_grid(), delta=DELTA)
    top = len(c.thresholds) - 1
    cert, best = fixed_sequence(c.agreement_lower, target), best_by_point(c, target)
    useless = best == top or cert == top or c.escalation[cert] >= 1.0
    if useless or c.escalation[cert] > c.escalation[best] + 0.10 + 1e-12:
        return _Verdict("refused", 1.01)
    return _Verdict("certified", float(c.thresholds[cert]))


# -- the human objective when reviewers lag --------------------------------------------------------
BACKLOG_REPS = 200 if FULL else 20
V1_REPS = 200 if FULL else 30
NEED_TRIES = 50 if FULL else 10
FRACTIONS = (0.0, 0.05, 0.10, 0.20, 0.30, 0.50)
MECHANISMS = ("random", "delay")
N, P, Q_DISAGREE, Q_AGREE = 10_000, 1.0, 0.5, 0.2
DELAY_S = 3600.0


def window(world: HumanWorld, rng: np.random.Generator, share: float, how: str) -> Window:
    delay = DELAY_S if how == "delay" else None
    return draw(
        world, rng, N, p=P, q_disagree=Q_DISAGREE, q_agree=Q_AGREE, undecided=share, delay_s=delay
    )


def _kw(world: HumanWorld) -> dict[str, Any]:
    return {"target": world.target, "budget": world.budget, "delta": DELTA}


def certify(world: HumanWorld, w: Window, *, v1: bool = False) -> search.HumanCalibration:
    """Today's procedure (undecided counted wrong), or v1's (the decided ones alone, their
    per-cell Clopper-Pearson sum)."""
    if not v1:
        return search.calibrate_human(w.data, w.human, w.strong_conf, w.strong_review, **_kw(world))
    h = without_pending(w)
    tc, ts = grids(None, None)
    lower = v1_lower(h, tc, ts, DELTA / len(ts))
    return search.calibrate_human(
        w.data, h, w.strong_conf, w.strong_review, lower_override=lower, **_kw(world)
    )


def tally(world: HumanWorld, results: list[search.HumanCalibration]) -> tuple[int, int, str]:
    """(below the target, refused, median t_c chosen) over certified repetitions."""
    fails = refused = 0
    chosen = []
    for r in results:
        assert np.all((r.accuracy >= 0) & (r.accuracy <= 1))
        if r.status == "refused":
            refused += 1
            continue
        fails += world.accuracy(r.cheap_threshold, r.strong_threshold) < world.target
        chosen.append(r.cheap_threshold)
    return fails, refused, f"{np.median(chosen):.2f}" if chosen else "-"


@pytest.mark.timeout(3600 if FULL else 300)
def test_undecided_adjudications_counted_wrong_keep_the_promise_in_every_cell() -> None:
    """In every cell (share undecided x mechanism), the pairs certified with undecided
    adjudications counted as wrong are below the target in at most delta of the repetitions;
    with nothing undecided it still certifies (the test has power)."""
    world = moderation()
    print(
        f"\n{BACKLOG_REPS} repetitions per cell; n={N}, p={P:g}, "
        f"q_disagree={Q_DISAGREE}, q_agree={Q_AGREE}"
    )
    print("undecided  mechanism  below target  refused  median t_c  v1 below  v1 refused  s")
    rows = []
    for k, (how, share) in enumerate((h, s) for h in MECHANISMS for s in FRACTIONS):
        if how == "delay" and share == 0.0:
            continue  # the same as at random
        rng = np.random.default_rng(9000 + k)
        started = time.monotonic()
        news, olds = [], []
        for _ in range(BACKLOG_REPS):
            w = window(world, rng, share, how)
            news.append(certify(world, w))
            if FULL:
                olds.append(certify(world, w, v1=True))
        fails, refused, med = tally(world, news)
        v1 = tally(world, olds) if olds else None
        rows.append((share, how, fails, refused))
        old = f"{v1[0]:>8}  {v1[1]:>10}" if v1 else f"{'-':>8}  {'-':>10}"
        print(
            f"{share:>9.0%}  {how:>9}  {fails:>12}  {refused:>7}  {med:>10}  {old}  "
            f"{time.monotonic() - started:.0f}"
        )
    for share, how, fails, _ in rows:
        assert fails <= allowed_failures(BACKLOG_REPS), (share, how, fails)
    assert rows[0][3] < BACKLOG_REPS  # nothing undecided: it certifies


@pytest.mark.timeout(3600 if FULL else 300)
@pytest.mark.parametrize("how", MECHANISMS)
def test_the_v1_bound_breaks_the_promise_when_reviewers_lag(how: str) -> None:
    """With 30% of the sampled adjudications undecided, the bound the human objective used
    before (undecided ones invisible, the design's pi unchanged) certifies pairs below the
    target far more often than delta: the check above can tell."""
    world = moderation()
    rng = np.random.default_rng(31 if how == "random" else 32)
    results = [certify(world, window(world, rng, 0.30, how), v1=True) for _ in range(V1_REPS)]
    fails, refused, _ = tally(world, results)
    print(f"\nv1, 30% undecided ({how}): {fails}/{V1_REPS} below the target, {refused} refused")
    assert fails > allowed_failures(V1_REPS)


@pytest.mark.timeout(3600 if FULL else 300)
def test_a_window_of_the_size_a_refusal_asks_for_certifies_in_most_repetitions() -> None:
    """Refused windows of 2,000 requests say how large a fresh window must be; a fresh window
    of that size, drawn from the same world, certifies in most tries (the sizing aims at 80%)."""
    world = moderation()
    rng = np.random.default_rng(77)
    tried = enough = 0
    factors = []
    while tried < NEED_TRIES:
        w = draw(world, rng, 2000, p=P, q_disagree=Q_DISAGREE, q_agree=Q_AGREE)
        first = certify(world, w)
        if first.status != "refused":
            continue
        need = sizing.needed_human(w.data, w.human, first, DELTA)
        assert need.requests is not None, need
        factors.append(need.factor)
        tried += 1
        fresh = draw(world, rng, need.requests, p=P, q_disagree=Q_DISAGREE, q_agree=Q_AGREE)
        again = certify(world, fresh)
        enough += again.status == "certified"
    print(
        f"\nneeded: {enough}/{tried} fresh windows of the stated size certified; factors "
        f"{np.percentile(factors, 10):.1f}..{np.percentile(factors, 90):.1f} (median "
        f"{np.median(factors):.1f})"
    )
    assert enough > tried / 2
