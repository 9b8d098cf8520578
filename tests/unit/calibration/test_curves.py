"""Estimates and bounds over a grid, and the baselines (calibration/curves.py)."""

from __future__ import annotations

import numpy as np

from escalator.calibration.curves import baselines, curve
from escalator.calibration.dataset import (
    STRONG_ONLY,
    pair_decisions,
)
from escalator.calibration.search import calibrate
from tests.unit.calibration import worlds
from tests.unit.calibration.logs import (
    read,
)


def test_estimates_stay_in_zero_one_and_are_consistent_at_p_0_2() -> None:
    """Hájek agreement at p = 0.2 is never outside [0, 1] and its mean is near the truth."""
    w = worlds.realistic()
    rng = np.random.default_rng(7)
    t = np.asarray([0.0, 0.5, 0.8, 0.9, 0.99, STRONG_ONLY])
    means = []
    for _ in range(100):
        c = curve(worlds.log(w, rng, 2000, p=0.2), t)
        for arr in (c.agreement, c.agreement_lower, c.escalation, c.accuracy):
            assert arr is not None and np.all((arr >= 0) & (arr <= 1))
        assert np.all(c.agreement_lower <= c.agreement + 1e-12)
        means.append(c.agreement[3])
    assert abs(np.mean(means) - w.agreement(0.9)[0]) < 0.002


def test_tiny_shadow_samples_cannot_push_agreement_above_one() -> None:
    """Ten requests at p = 0.05 (the old 1/p estimator gave > 1 here): still in [0, 1]."""
    for seed in range(50):
        d = worlds.log(worlds.realistic(), np.random.default_rng(seed), 10, p=0.05, tau=0.5)
        c = curve(d, np.asarray([0.0, 0.6, STRONG_ONLY]))
        assert np.all((c.agreement >= 0) & (c.agreement <= 1))


def test_mixed_threshold_versions_and_shadow_rates_are_estimated_per_stratum() -> None:
    """A log with a p = 1 window at threshold 0.5 and a p = 0.05 window at 0.8 estimates
    agreement as well as either design alone, and never outside [0, 1]."""
    w = worlds.realistic()
    rng = np.random.default_rng(11)
    recs = worlds.records(w, rng, 3000, p=1.0, tau=0.5, version="v1", prefix="a")
    recs += worlds.records(
        w, rng, 6000, p=0.05, tau=0.8, version="v2", prefix="b", start_ms=1_800_000_000_000
    )
    d = pair_decisions(read(recs))
    assert d.strata == ("v1", "v2")
    c = curve(d, np.asarray([0.6, 0.85, STRONG_ONLY]))
    assert np.all((c.agreement >= 0) & (c.agreement <= 1))
    assert abs(c.agreement[1] - w.agreement(0.85)[0]) < 0.01
    assert np.all(c.agreement_lower[:2] < w.agreement(np.asarray([0.6, 0.85])))


def test_baselines_bracket_the_routed_curve() -> None:
    """Cheap-only is cheapest; the oracle agrees fully for less than strong-only; random
    escalation at the chosen rate agrees less than the threshold."""
    d = worlds.log(worlds.realistic(), np.random.default_rng(4), 5000, p=1.0)
    cal = calibrate(d, target=0.97, margin=1.0)
    rate = float(cal.curve.escalation[cal.chosen])
    b = baselines(d, rate)
    assert b.cheap_only["cost_per_1k"] < b.oracle["cost_per_1k"] < b.strong_only["cost_per_1k"]
    assert b.oracle["agreement"] == 1.0 and b.strong_only["agreement"] == 1.0
    assert b.random_same_rate["agreement"] < cal.curve.agreement[cal.chosen]
