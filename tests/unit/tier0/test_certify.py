"""Tier 0's certification (tier0/certify.py): the walk, the bound it uses, and its refusals."""

from __future__ import annotations

import numpy as np

from escalator.calibration import betting
from escalator.tier0.certify import NOTHING, bound, certify_scores, needed, walk


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
