"""The deadline in force and the lane rule (lane/deadlines.py), table-driven."""

from __future__ import annotations

import pytest

from escalator.config import LaneSettings
from escalator.contract.messages import Request
from escalator.lane.deadlines import (
    LANE_OFF,
    NO_DEADLINE,
    SLACK_AMPLE,
    SLACK_SHORT,
    CompletionTimes,
    LaneRule,
)

ON = LaneRule(enabled=True, slack_factor=2.0, fallback_s=300.0, max_age_s=60.0)


def req(deadline_s: float | None = None) -> Request:
    return Request("r1", "text", deadline_s=deadline_s)


@pytest.mark.parametrize(
    ("own", "default", "expected"),
    [(None, None, None), (None, 3600.0, 3600.0), (60.0, 3600.0, 60.0), (86400.0, None, 86400.0)],
)
def test_the_deadline_in_force_is_the_requests_own_else_the_topic_default(
    own: float | None, default: float | None, expected: float | None
) -> None:
    """A request's own deadline wins over the topic default; with neither, none."""
    assert LaneRule(default_deadline_s=default).deadline_s(req(own)) == expected


# required slack with expected 600 s: 2 x (60 + 600) + 300 = 1620 s
@pytest.mark.parametrize(
    ("rule", "deadline", "waited", "lane", "reason"),
    [
        (LaneRule(), 86400.0, 0.0, "realtime", LANE_OFF),
        (ON, None, 0.0, "realtime", NO_DEADLINE),
        (ON, 1620.0, 0.0, "batch", SLACK_AMPLE),
        (ON, 1619.0, 0.0, "realtime", SLACK_SHORT),
        (ON, 1720.0, 100.0, "batch", SLACK_AMPLE),
        (ON, 1720.0, 101.0, "realtime", SLACK_SHORT),
        (ON, 86400.0, 86000.0, "realtime", SLACK_SHORT),
        (ON, 1620.0, -50.0, "batch", SLACK_AMPLE),  # a record stamped in the future: no credit
        (ON, 1619.0, -50.0, "realtime", SLACK_SHORT),
    ],
)
def test_the_lane_takes_a_request_only_when_its_slack_covers_the_margin(
    rule: LaneRule, deadline: float | None, waited: float, lane: str, reason: str
) -> None:
    """slack = deadline - waited must be at least factor x (max_age + expected) + fallback."""
    choice = rule.choose(req(deadline), waited_s=waited, expected_s=600.0)
    assert (choice.lane, choice.reason) == (lane, reason)
    assert choice.deadline_s == deadline
    if reason in (SLACK_AMPLE, SLACK_SHORT):
        assert choice.required_s == 1620.0


def test_the_rule_is_built_from_its_settings() -> None:
    """Every margin comes from LaneSettings."""
    settings = LaneSettings(deadline_s=7200.0, slack_factor=3.0, fallback_s=10.0, max_age_s=5.0)
    rule = LaneRule.of(settings)
    assert rule == LaneRule(False, 7200.0, 3.0, 10.0, 5.0)
    assert rule.required_slack_s(100.0) == 3.0 * 105.0 + 10.0


def test_completion_time_is_the_prior_until_enough_batches_ended() -> None:
    """Fewer than min_observed ended batches: never below the prior; then the slowest of
    the window, so one slow batch raises it and ages out after ``window`` others."""
    times = CompletionTimes(3600.0, window=3, min_observed=2)
    assert times.expected_s() == 3600.0
    times.observe(30.0)
    assert times.expected_s() == 3600.0
    times.observe(50.0)
    assert times.expected_s() == 50.0
    times.observe(7000.0)
    assert times.expected_s() == 7000.0
    for _ in range(3):
        times.observe(40.0)
    assert times.expected_s() == 40.0 and times.observed == 3


def test_a_running_batch_older_than_the_estimate_raises_it() -> None:
    """A stalled batch counts with its age, so the lane stops taking work before it ends;
    the estimate never exceeds the documented 24-hour expiry."""
    times = CompletionTimes(60.0, min_observed=0)
    times.observe(20.0)
    assert times.expected_s([5.0]) == 20.0
    assert times.expected_s([900.0, 5.0]) == 900.0
    assert times.expected_s([200_000.0]) == 86400.0


@pytest.mark.parametrize(
    ("prior", "window", "least"), [(0.0, 5, 1), (10.0, 0, 0), (10.0, 3, 4), (10.0, 3, -1)]
)
def test_nonsense_estimator_parameters_are_refused(prior: float, window: int, least: int) -> None:
    """A non-positive prior, an empty window, or min_observed outside [0, window]."""
    with pytest.raises(ValueError, match="prior_s"):
        CompletionTimes(prior, window=window, min_observed=least)
