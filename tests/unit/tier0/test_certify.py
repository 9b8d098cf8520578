"""Tier 0's certification (tier0/certify.py): the walk, the bound it uses, and its refusals;
and its certificate, measured against worlds whose truth is known.

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
        tests/unit/tier0/test_certify.py -q -s
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest

from escalator.calibration import betting
from escalator.tier0.certify import (
    NOTHING,
    bound,
    certify_scores,
    default_grid,
    needed,
    walk,
)
from escalator.tier0.train import fit
from tests.unit.tier0.worlds import WORLDS, World


def test_the_walk_stops_at_the_first_failure_from_the_top() -> None:
    """A pass below a failure does not count (fixed sequence); the top always passes."""
    assert walk(np.asarray([0.99, 0.90, 0.99, 0.99, 1.0]), 0.98) == 2
    assert walk(np.asarray([0.5, 0.5, 0.5]), 0.98) == 2


def test_the_bound_is_the_betting_bound_on_one_stratum_of_indicators() -> None:
    """bound() equals betting.upper on the same counts made by hand, and covers the truth:
    in a world with known D(t), 1 - bound <= 1 - D(t) in at least 1 - delta of windows."""
    rng = np.random.default_rng(3)
    t = np.asarray([0.5, 0.8, NOTHING])
    conf = rng.uniform(0, 1, 4000)
    disagree = rng.random(4000) < 0.1
    n = len(conf)
    block = betting.block_of(np.arange(n) / n)
    sizes = np.bincount(block, minlength=len(betting.BLOCKS))[None, :]
    counts = np.zeros((1, len(betting.BLOCKS), 1, len(t)))
    for b in range(len(betting.BLOCKS)):
        for j, tj in enumerate(t):
            counts[0, b, 0, j] = np.sum((block == b) & (conf >= tj) & disagree)
    by_hand = 1 - betting.upper(sizes, counts, np.ones((1, 1)), 0.05, 0.02)
    np.testing.assert_allclose(bound(conf, disagree, t, 0.05, 0.98), by_hand)
    truth = 1 - 0.1 * 0.5  # D(0.5) = P(conf >= 0.5) * P(disagree)
    misses = sum(
        bound(rng.uniform(0, 1, 2000), rng.random(2000) < 0.1, t[:1], 0.1, truth)[0] > truth
        for _ in range(300)
    )
    assert misses <= 0.1 * 300 + 3 * np.sqrt(0.1 * 0.9 * 300)


def test_refusals_say_why_and_what_would_do() -> None:
    """Nothing reaches the target: refused, no window size would do. A small window of a
    world that could pass: refused, with a 'needed' size that does pass. The margin rule:
    a certified threshold answering far less than the best by estimate is refused."""
    rng = np.random.default_rng(4)
    sure_and_wrong = np.full(3000, 0.995)  # answered from t = 0.99 down, half of it wrong
    hopeless = certify_scores(sure_and_wrong, rng.random(3000) < 0.5, target=0.99, delta=0.05)
    assert hopeless.status == "refused" and "reaches the target by estimate" in hopeless.reason
    assert needed(hopeless, 0.05) is None
    conf = rng.uniform(0, 1, 3000)
    disagree = rng.random(300) < 0.01 * (1 - conf[:300])
    small = certify_scores(conf[:300], disagree, target=0.98, delta=0.05)
    assert small.status == "refused" and small.threshold == NOTHING
    need = needed(small, 0.05)
    assert need is not None and need > 300
    big_conf = rng.uniform(0, 1, need)
    big = certify_scores(
        big_conf, rng.random(need) < 0.01 * (1 - big_conf), target=0.98, delta=0.05
    )
    assert big.status == "certified" and big.answered[big.chosen] > 0.5
    # Wrong answers only below 0.5, 6% of them: the point estimate passes down to about
    # t = 0.17, the bound stops higher; with no margin that is a refusal, with 0.10 it is not.
    edge_conf = rng.uniform(0, 1, 20_000)
    edge_wrong = (edge_conf < 0.5) & (rng.random(20_000) < 0.06)
    strict = certify_scores(edge_conf, edge_wrong, target=0.98, delta=0.05, margin=0.0)
    assert strict.status == "refused" and "below the best estimate" in strict.reason
    loose = certify_scores(edge_conf, edge_wrong, target=0.98, delta=0.05, margin=0.10)
    assert loose.status == "certified" and loose.threshold > strict.thresholds[strict.best_index]


def test_the_threshold_stops_where_the_window_stops_answering_more() -> None:
    """A window whose confidences are all at least 0.995, never wrong (the emulator's keyword
    world): every threshold down to 0 passes, but below 0.99 the window answers nothing more,
    so the certified threshold is 0.99, answering the whole window, not 0.00 (which would
    answer any text, however unsure). The walk's own last pass is still 0.00."""
    conf = np.random.default_rng(5).uniform(0.995, 1.0, 400)
    c = certify_scores(conf, np.zeros(400, bool), target=0.95, delta=0.05)
    assert walk(c.agreement_lower, 0.95) == 0
    assert c.status == "certified" and c.threshold == 0.99 and c.answered[c.chosen] == 1.0
    # Where lower thresholds do answer more of the window, the walk's last pass is kept.
    spread = np.linspace(0.0, 1.0, 400)
    d = certify_scores(spread, np.zeros(400, bool), target=0.95, delta=0.05)
    assert d.threshold == 0.0


# -- the certificate against known truth -----------------------------------------------------------
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
