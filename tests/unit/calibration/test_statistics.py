"""The calibrator's promises, measured against worlds whose truth is known exactly.

For each world (realistic, overconfident), log size n in {2,000, 10,000} and shadow rate p in
{1, 0.2, 0.05}: draw a log, calibrate at delta = 0.05, and compare with the truth.
- the guarantee: true agreement at the chosen threshold >= target (a refusal holds);
- every estimate the calibrator prints or stores lies in [0, 1];
- realistic, n = 10,000, p = 0.2: the median chosen escalation rate is within 0.10 of the
  optimum's (refusals count as escalating everything) and fewer than 10% are refusals;
- after a refusal, a fresh log of the size it asked for calibrates without refusing in most
  repetitions.

Reduced by default (a few dozen repetitions: CI's budget). The full run, 200 repetitions per
cell, prints the table that docs/CALIBRATION.md shows:
    ESCALATOR_CALIBRATION_SCALE=full .venv/bin/python -m pytest \
        tests/unit/calibration/test_statistics.py -q -s
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from escalator.calibration import binomial, sizing
from escalator.calibration.search import calibrate
from escalator.calibration.threshold_file import estimates_at
from tests.unit.calibration.worlds import World, log, overconfident, realistic

FULL = os.environ.get("ESCALATOR_CALIBRATION_SCALE") == "full"
DELTA = 0.05
REPS = 200 if FULL else 30
NEED_CHECKS = 20 if FULL else 2  # refusals per cell whose 'needed' figure is tried out
CELLS = [(n, p) for n in (2000, 10_000) for p in (1.0, 0.2, 0.05)]


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


def run_cell(world: World, n: int, p: float, reps: int, need_checks: int, seed: int) -> Cell:
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
    """At the reduced scale, the failures a procedure with error delta shows in 99% of runs
    (the full scale asserts the plain 1 - delta of the issue)."""
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
    for k, (n, p) in enumerate(CELLS):
        if not FULL and n == 10_000 and p != 0.2:
            continue  # the reduced run keeps the large cell that has a power requirement
        cells.append(run_cell(world, n, p, REPS, NEED_CHECKS, seed=1000 * k + len(world.name)))
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
