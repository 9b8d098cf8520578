"""Point estimates for both objectives (calibration/estimators.py)."""

from __future__ import annotations

import numpy as np
import pytest

from escalator.calibration import adjudications, estimators
from escalator.calibration.dataset import (
    STRONG_ONLY,
    grids,
    pair_decisions,
)
from tests.unit.calibration import human_worlds
from tests.unit.calibration.logs import (
    read,
    tiny_log,
)


def test_horvitz_thompson_and_hajek_on_a_hand_computed_log() -> None:
    """The tiny log's errors weighted by 1/pi: HT = sum(wrong / pi) / N, Hájek divides by
    sum(1 / pi) instead; worked by hand for cheap-only, strong-only and t_c = 0.7 routing."""
    recs = tiny_log()
    d = pair_decisions(read(recs))
    h = adjudications.human_sample(read(recs), d)
    assert h is not None and h.m == 3 and h.neither == 1
    assert h.q_agree == 0.5 and h.q_disagree == 1.0
    # Cells: r1 certain-differ (pi 1), r2 certain-agree (pi 0.5), r3 shadow-agree (0.25).
    assert h.pi[0].tolist() == [0.5, 1.0, 0.25, 0.5]
    t_c = np.asarray([0.0, 0.7, STRONG_ONLY])
    one = np.asarray([0.0])
    # cheap-only: r1 wrong (1/1), r2 right, r3 wrong (neither: 1/0.25 = 4).
    # t_c = 0.7: r1, r2 take the strong answer (both right); r3 keeps the cheap one (wrong).
    # strong-only: r1 right, r2 right, r3 wrong (4).
    ht = estimators.error_ht(h, t_c, one, human_tier=False)[:, 0]
    assert ht == pytest.approx([(1 + 4) / 4, 4 / 4, 4 / 4])
    total = 1 / 1 + 1 / 0.5 + 1 / 0.25  # 7: the estimated number of requests
    hajek = estimators.error_point(h, t_c, one, human_tier=False)[:, 0]
    assert hajek == pytest.approx([5 / total, 4 / total, 4 / total])
    # The histogram counts agree with the (m, Tc, Ts) array they replace.
    e = estimators.wrong(h, t_c, one, human_tier=False)
    z, _ = estimators.cell_counts(h, t_c, one, human_tier=False)
    assert z.sum(axis=(0, 1))[:, 0].tolist() == e.sum(axis=0)[:, 0].tolist()
    # With the human tier at t_s = 0.85, r3's strong answer (0.8) goes to a person: right.
    assert estimators.error_point(h, np.asarray([STRONG_ONLY]), np.asarray([0.85]))[0, 0] == 0.0


def test_routed_wrong_counts_match_the_full_array_on_a_random_sample() -> None:
    """The two-histogram counts per cell equal the (m, Tc, Ts) routed-wrong array summed per
    cell, for every pair, with and without the human tier."""
    win = human_worlds.draw(
        human_worlds.moderation(),
        np.random.default_rng(2),
        3000,
        p=0.4,
        q_disagree=0.5,
        q_agree=0.3,
    )
    h = win.human
    tc, ts = grids(None, None)
    for tier in (True, False):
        strong = ts if tier else np.zeros(1)
        e = estimators.wrong(h, tc, strong, human_tier=tier)
        z, m = estimators.cell_counts(h, tc, strong, human_tier=tier)
        for g in range(4):
            mine = h.cell == g
            assert np.array_equal(z[0, g], e[mine].sum(axis=0)), g
            assert m[0, g] == mine.sum()
