"""Tier 0's certificate, measured against worlds whose truth is known.

Per world (tests/unit/tier0/worlds.py: near-repeats, hard texts, label noise), a model is
trained on 5,000 pairs, and a pool drawn from the world afterwards is the population: its
agreement curve is the truth. Each repetition draws a certification window from the pool
(with replacement) and certifies at delta = 0.05 and a target T a quarter of the way from the
true agreement at the grid threshold t0 where tier 0 answers about 65% of the traffic to that
at t0 + 0.01: every threshold up to t0 misses T, narrowly, which is where a threshold chosen
without a bound fails. Over the repetitions:
- the certified threshold misses T in at most delta of them (a refusal holds);
- the point-estimate threshold (the same walk on the window's point estimates, what
  certifying without the bound would choose) misses T far more often than delta;
- after a refusal, a fresh window of the size it asked for certifies in most tries.

Reduced by default; the full run prints the table in docs/CALIBRATION.md ("Tier 0"):
    ESCALATOR_CALIBRATION_SCALE=full .venv/bin/python -m pytest \
        tests/unit/tier0/test_statistics.py -q -s
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest

from escalator.tier0.certify import certify_scores, default_grid, needed
from escalator.tier0.train import fit
from tests.unit.tier0.worlds import WORLDS, World

FULL = os.environ.get("ESCALATOR_CALIBRATION_SCALE") == "full"
DELTA = 0.05
#: Aim at the grid threshold where tier 0 answers about this share of the traffic.
ANSWERED = 0.65
REPS = 1000 if FULL else 150
POOL = 100_000 if FULL else 30_000
SIZES = (2000, 10_000)
#: Refusals per cell whose 'needed' figure is tried out on a fresh window of that size.
NEED_CHECKS = 20 if FULL else 3


@dataclass(frozen=True)
class Truth:
    conf: npt.NDArray[np.float64]
    disagree: npt.NDArray[np.bool_]

    def agreement(self, t: float) -> float:
        return 1.0 - float(((self.conf >= t) & self.disagree).mean())

    def answered(self, t: float) -> float:
        return float((self.conf >= t).mean())

    def target(self) -> float:
        grid = default_grid()
        t = next(float(x) for x in grid if self.answered(float(x)) <= ANSWERED)
        below, above = self.agreement(t), self.agreement(t + 0.01)
        assert above > below  # else the target would not sit between them
        return below + 0.25 * (above - below)


_TRUTHS: dict[str, Truth] = {}


def truth_of(world: World) -> Truth:
    if world.name not in _TRUTHS:
        rng = np.random.default_rng(world.seed + 100)
        texts, labels = world.draw(5000, rng)
        model = fit(texts, labels)
        pool_texts, pool_labels = world.draw(POOL, rng)  # drawn after training: unseen
        best, conf = model.scores(pool_texts)
        disagree = np.asarray(model.classes, dtype=object)[best] != np.asarray(
            pool_labels, dtype=object
        )
        _TRUTHS[world.name] = Truth(conf, np.asarray(disagree, bool))
    return _TRUTHS[world.name]


def optimum(truth: Truth, target: float) -> float:
    """The lowest grid threshold whose true agreement, and that of every one above, is >= T."""
    grid = default_grid()
    best = grid[-1]
    for t in grid[::-1]:
        if truth.agreement(float(t)) < target:
            break
        best = t
    return float(best)


@pytest.mark.timeout(900 if FULL else 120)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("world", WORLDS, ids=[w.name for w in WORLDS])
def test_the_certified_threshold_holds_and_the_point_estimate_does_not(
    world: World, n: int
) -> None:
    """The certified guarantee fails in at most delta of the windows (with room for sampling
    noise); the point-estimate threshold fails in more than 3 delta of them."""
    truth = truth_of(world)
    target = truth.target()
    rng = np.random.default_rng(world.seed + n)
    certified = refused = certified_missed = point_missed = 0
    answered = []
    need_tried = need_ok = 0
    for _ in range(REPS):
        idx = rng.integers(0, len(truth.conf), size=n)
        c = certify_scores(truth.conf[idx], truth.disagree[idx], target=target, delta=DELTA)
        if c.status == "certified":
            certified += 1
            certified_missed += truth.agreement(c.threshold) < target
            answered.append(truth.answered(c.threshold))
        else:
            refused += 1
            need = needed(c, DELTA)
            if need is not None and need_tried < NEED_CHECKS:
                need_tried += 1
                fresh = rng.integers(0, len(truth.conf), size=need)
                again = certify_scores(
                    truth.conf[fresh], truth.disagree[fresh], target=target, delta=DELTA
                )
                need_ok += again.status == "certified"
        point = float(c.thresholds[c.best_index])
        point_missed += truth.agreement(point) < target
    t_opt = optimum(truth, target)
    slack = 3 * np.sqrt(DELTA * (1 - DELTA) / REPS)
    print(
        f"\n  {world.name:15s} n={n:6d} T={target:.4f} delta={DELTA}: optimum t={t_opt:.2f} "
        f"answers "
        f"{truth.answered(t_opt):.1%}; certified {certified}/{REPS} (refused {refused}), "
        f"missed T {certified_missed / REPS:.1%}; median share answered "
        f"{np.median(answered) if answered else 0:.1%}; point-estimate threshold missed T "
        f"{point_missed / REPS:.1%}; needed enough {need_ok}/{need_tried}"
    )
    assert certified_missed / REPS <= DELTA + slack
    assert point_missed / REPS > 3 * DELTA
    assert certified > 0  # the test would pass vacuously if everything were refused
    assert need_ok >= need_tried / 2
    if n == max(SIZES):  # and on a large window the certificate is worth having
        assert certified >= 0.9 * REPS
        assert float(np.median(answered)) >= 0.8 * truth.answered(t_opt)
