"""The human objective when reviewers lag, measured against a world whose truth is known
exactly (tests/unit/calibration/human_worlds.py): undecided adjudications counted as wrong keep the
promise in every cell; the bound the objective used before (v1: undecided ones invisible)
breaks it; and the fresh window a refusal asks for is enough.

Cells: n = 10,000 requests at p = 1 (q_disagree 0.5, q_agree 0.2), target 0.94 with at most 15%
to people, delta 0.05; 0, 5, 10, 20, 30 and 50% of the sampled adjudications undecided,
either at random or by decisions arriving after an exponential delay (mean 1 h, twice that
for differing answers) with calibration run while that share is still undecided (the latest
and hardest missing). CI runs 20 repetitions per cell; the full scale (``make
calibration-stats``) 200, and prints the tables docs/CALIBRATION.md shows:
    ESCALATOR_CALIBRATION_SCALE=full .venv/bin/python -m pytest \\
        tests/unit/calibration/test_human_backlog.py -q -s
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import pytest

from escalator.calibration import binomial, search, sizing
from escalator.calibration.dataset import grids
from tests.unit.calibration.human_worlds import (
    HumanWorld,
    Window,
    draw,
    moderation,
    v1_lower,
    without_pending,
)

FULL = os.environ.get("ESCALATOR_CALIBRATION_SCALE") == "full"
DELTA = 0.05
REPS = 200 if FULL else 20
V1_REPS = 200 if FULL else 30
NEED_TRIES = 50 if FULL else 10
FRACTIONS = (0.0, 0.05, 0.10, 0.20, 0.30, 0.50)
MECHANISMS = ("random", "delay")
N, P, Q_DISAGREE, Q_AGREE = 10_000, 1.0, 0.5, 0.2
DELAY_S = 3600.0


def allowed_failures(reps: int) -> int:
    """Full scale: the plain ``delta x reps`` of the issue. CI: the failures a procedure with
    error delta shows in 99% of runs (a few repetitions scatter)."""
    if FULL:
        return int(np.floor(DELTA * reps))
    k = 0
    while binomial.cdf(k, reps, DELTA)[()] < 0.99:
        k += 1
    return k


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
        f"\n{REPS} repetitions per cell; n={N}, p={P:g}, q_disagree={Q_DISAGREE}, q_agree={Q_AGREE}"
    )
    print("undecided  mechanism  below target  refused  median t_c  v1 below  v1 refused  s")
    rows = []
    for k, (how, share) in enumerate((h, s) for h in MECHANISMS for s in FRACTIONS):
        if how == "delay" and share == 0.0:
            continue  # the same as at random
        rng = np.random.default_rng(9000 + k)
        started = time.monotonic()
        news, olds = [], []
        for _ in range(REPS):
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
        assert fails <= allowed_failures(REPS), (share, how, fails)
    assert rows[0][3] < REPS  # nothing undecided: it certifies


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
