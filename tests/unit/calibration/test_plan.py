"""The plan stage (calibration/plan.py): one row per shadow rate and what it costs, the
fallback to the point profile, and the Neyman split of people's time between agreeing and
differing answers. The whole plan from a pilot log, through ``calibrate --plan``:
``test_workflow.py``."""

from __future__ import annotations

import math

import pytest

from escalator.calibration import plan, sizing

FITS = sizing.assumed(0.8, 0.01)  # true agreement 0.9875 among accepted: 0.97 certifiable
NEVER = sizing.assumed(0.8, 0.05)  # 0.9375: 0.97 is never certified


def test_one_row_per_shadow_rate_with_its_shadowed_answers_duration_and_cost() -> None:
    """Each rate in SHADOW_RATES, in order: the requests ``sizing`` asks for, the shadowed
    answers among them (accepted share times rate, rounded up), hours at the traffic given,
    and their strong calls' price; more shadowing needs fewer requests."""
    rows = plan.rows(FITS, FITS, 0.0, 0.97, 0.05, 0, per_hour=1000.0, strong_call_usd=0.002)
    assert [r.p for r in rows] == list(plan.SHADOW_RATES)
    for r in rows:
        want = sizing.required_requests(FITS, sizing.Design(0.0, r.p), 0.97, 0.05, 0, 0.8)
        assert r.requests == want and r.requests is not None
        assert r.shadowed == math.ceil(r.requests * 0.8 * r.p)
        assert r.hours == pytest.approx(r.requests / 1000.0)
        assert r.shadow_usd == pytest.approx(r.shadowed * 0.002)
    sizes = [r.requests for r in rows]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]  # type: ignore[type-var]


def test_without_traffic_or_a_price_the_row_says_neither() -> None:
    """No observed rate: no duration; no strong-call price: no shadow cost; the sizes stay."""
    rows = plan.rows(FITS, FITS, 0.0, 0.97, 0.05, 0, per_hour=None, strong_call_usd=None)
    assert all(r.requests is not None for r in rows)
    assert all(r.hours is None and r.shadow_usd is None for r in rows)


def test_the_point_profile_sizes_a_rate_the_cautious_one_cannot_and_neither_is_none() -> None:
    """A cautious profile that never reaches the target falls back to the point profile's
    size; when neither reaches it, the row has no size at all."""
    fallback = plan.rows(NEVER, FITS, 0.0, 0.97, 0.05, 0, per_hour=None, strong_call_usd=None)
    direct = plan.rows(FITS, FITS, 0.0, 0.97, 0.05, 0, per_hour=None, strong_call_usd=None)
    assert fallback == direct
    none = plan.rows(NEVER, NEVER, 0.0, 0.97, 0.05, 0, per_hour=None, strong_call_usd=None)
    assert none == [plan.Row(p, None, None, None, None) for p in plan.SHADOW_RATES]


def test_neyman_rates_spend_the_same_people_time_in_proportion_to_sqrt_a_over_b() -> None:
    """Each class's rate is proportional to sqrt(A_c / B_c), scaled so that the expected
    adjudications (sum B_c q_c) are the budget given."""
    a = {"agree": 0.001, "differ": 0.04}
    b = {"agree": 0.7, "differ": 0.1}
    q = plan._allocate(a, b, 0.05)
    assert q["agree"] > plan.MIN_RATE and q["differ"] < 1.0
    assert sum(b[c] * q[c] for c in a) == pytest.approx(0.05)
    ratio = math.sqrt(a["agree"] / b["agree"]) / math.sqrt(a["differ"] / b["differ"])
    assert q["agree"] / q["differ"] == pytest.approx(ratio)


def test_a_rate_past_one_is_capped_and_the_rest_goes_to_the_other_class() -> None:
    """A class that would need more than every one of its answers gets 1, the other class
    what is left of the budget; no class goes below MIN_RATE."""
    a = {"agree": 0.0001, "differ": 0.5}
    b = {"agree": 0.9, "differ": 0.1}
    q = plan._allocate(a, b, 0.2)
    assert q["differ"] == 1.0
    assert q["agree"] == pytest.approx((0.2 - 0.1) / 0.9)
    tiny = plan._allocate({"agree": 1e-9, "differ": 0.5}, b, 0.01)
    assert tiny["agree"] == plan.MIN_RATE
