"""The bounds stage (calibration/bounds.py)."""

from __future__ import annotations

import numpy as np

from escalator.calibration import bounds, estimators
from tests.unit.calibration import worlds


def test_allocation_never_exceeds_delta_and_follows_the_design() -> None:
    """The parts' error budgets sum to delta; no certain part is paid for where none can be."""
    d = worlds.log(worlds.realistic(), np.random.default_rng(6), 2000, p=0.2, tau=0.7)
    t = np.asarray([0.5, 0.8])
    c = estimators.counts(d.sample(), t)
    dc, da, dd = bounds.allocation(c, 0.05)
    assert np.allclose((dc + da + dd).sum(axis=0), 0.05)
    assert dc[0, 0] > 0 and dc[0, 1] == 0  # below tau escalated answers are certain
