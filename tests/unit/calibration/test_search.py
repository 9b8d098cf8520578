"""The search stage (calibration/search.py): the fixed sequence, certification and refusal for
the agreement objectives, and the human objective's promise measured against a world whose
truth is known exactly.

The human statistical test runs 100 repetitions of two cells at the CI scale (p = 1 and
p = 0.3); the full scale (``ESCALATOR_CALIBRATION_SCALE=full``, ``make calibration-stats``) runs
1,000 per cell and prints the table docs/CALIBRATION.md shows:
    ESCALATOR_CALIBRATION_SCALE=full .venv/bin/python -m pytest \
        tests/unit/calibration/test_search.py -q -s -k promise
The quality objective's promise is tested in test_statistics.py, the backlog (undecided
adjudications) in test_human_backlog.py.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import pytest

from escalator.calibration import search, sizing
from escalator.calibration.dataset import (
    DEFAULT_STRONG_GRID,
    STRONG_ONLY,
    default_grid,
)
from escalator.calibration.search import calibrate, fixed_sequence
from tests.unit.calibration import human_worlds, worlds

FULL = os.environ.get("ESCALATOR_CALIBRATION_SCALE") == "full"
DELTA = 0.05
REPS = 1000 if FULL else 100
#: (requests, shadow rate, q_disagree, q_agree) per cell.
CELLS = [(10_000, 1.0, 0.5, 0.2), (20_000, 0.3, 0.6, 0.3)]


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


def run_cell(
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


def allowed_failures(reps: int) -> int:
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
    for k, cell in enumerate(CELLS):
        fails, refused, chosen, secs = run_cell(world, cell, REPS, seed=77 + k)
        med = f"{np.median(chosen):.2f}" if chosen else "-"
        print(
            f"{cell[0]:>6} {cell[1]:>5g} {cell[2]:>6g} {cell[3]:>6g} {REPS:>5} {fails:>6} "
            f"{refused:>8} {med:>11} {secs:>8.1f}"
        )
        assert fails <= allowed_failures(REPS), (cell, fails)
        assert refused < REPS  # the test has power: it certifies, so it could fail


def test_the_check_fails_a_point_estimate_posing_as_a_bound() -> None:
    """The same check, with the point estimate in place of the lower bound, fails: the test
    can tell a bound from a guess."""
    reps = 200
    fails, refused, _, _ = run_cell(human_worlds.moderation(), CELLS[0], reps, seed=5, broken=True)
    print(f"\nbroken bound: {fails}/{reps} below the target, {refused} refused")
    assert fails > allowed_failures(reps)
