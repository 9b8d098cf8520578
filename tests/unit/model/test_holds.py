"""When a hold began and when the API says it ends (model/holds.py), as /readyz, doctor and
the parked records' headers report them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from escalator.model.breaker import CircuitBreaker
from escalator.model.holds import HoldClock, first_of_next_month, held_by, resumes_at


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


NOW = ts("2026-12-10T08:30:00")
CAP = (
    "spend cap reached (429 enforced_spend_limit_reached): You have reached your API usage "
    "limits: your organization has crossed its monthly API usage threshold, set based on your "
    "organization's API tier. You will regain access on 2027-01-01 at 00:00 UTC."
)


@pytest.mark.parametrize(
    ("reason", "message", "expected"),
    [
        # The API's own date wins (the rate-limits page's example message).
        ("spend_limit", CAP, ts("2027-01-01T00:00:00")),
        (
            "spend_limit",
            "spend limit reached (400): You have reached your specified API usage limits. "
            "You will regain access on 2026-12-15 at 00:00 UTC.",
            ts("2026-12-15T00:00:00"),
        ),
        # A monthly cap without a date: 00:00 UTC on the first day of the next month.
        ("spend_limit", "spend cap reached (429 contract_spend_limit_reached): ", ts("2027-01-01")),
        # A limit the organisation set, saying nothing: someone must act.
        ("spend_limit", "spend limit reached (400): usage limits", None),
        ("billing", "billing problem (402): You will regain access on 2027-01-01", None),
        ("credentials", "the API rejected the key (401)", None),
        ("outage", "the model API is failing (overloaded)", None),
        ("spend_limit", "regain access on 2026-13-45 at 00:00 UTC", None),
    ],
)
def test_the_end_of_a_hold_is_what_the_api_says(
    reason: str, message: str, expected: float | None
) -> None:
    """Table: a spend cap's end is read from the message, or the documented rule."""
    assert resumes_at(reason, message, NOW) == expected


@pytest.mark.parametrize(
    ("now", "first"),
    [
        ("2026-12-10T08:30:00", "2027-01-01T00:00:00"),
        ("2026-12-31T23:59:59", "2027-01-01T00:00:00"),
        ("2027-01-01T00:00:00", "2027-02-01T00:00:00"),
        ("2028-02-29T12:00:00", "2028-03-01T00:00:00"),
    ],
)
def test_the_first_of_next_month_is_computed_in_utc(now: str, first: str) -> None:
    """The documented cap resumes at 00:00 UTC on the 1st, across a year's end too."""
    assert first_of_next_month(ts(now)) == ts(first)


def test_the_clock_keeps_when_a_hold_began_until_it_ends() -> None:
    """The first reason starts the clock, a change of reason keeps it, none clears it."""
    now = [100.0]
    clock = HoldClock(lambda: now[0])
    assert clock.observe(None, None) is None
    first = clock.observe("outage", "failing")
    now[0] = 160.0
    second = clock.observe("spend_limit", CAP)
    assert first is not None and second is not None
    assert first.since_s == second.since_s == 100.0
    assert second.ends_at_s == ts("2027-01-01")
    assert clock.observe(None, None) is None
    now[0] = 200.0
    again = clock.observe("billing", "402")
    assert again is not None and again.since_s == 200.0 and again.ends_at_s is None


class Caller:
    def __init__(self, breaker: CircuitBreaker) -> None:
        self.breaker = breaker

    def hold(self) -> tuple[str | None, str | None]:
        reason = self.breaker.hold_reason
        return reason, self.breaker.blocked_message if reason else None


def test_a_hold_is_the_accounts_block_or_an_outage_and_none_when_calls_flow() -> None:
    """held_by: a blocked account gives its reason; an open breaker an outage; closed, none."""
    t = [0.0]
    breaker = CircuitBreaker(window=4, cooldown_s=10, clock=lambda: t[0])
    hold = held_by(Caller(breaker), HoldClock(lambda: 1000.0 + t[0]))
    assert hold() is None
    for _ in range(4):
        breaker.record(False, "overloaded")
    outage = hold()
    assert outage is not None and outage.reason == "outage" and "overloaded" in outage.message
    t[0] = 11.0  # half-open: still an outage until a probe succeeds
    assert hold() is not None
    breaker.block("spend_limit", CAP)
    blocked = hold()
    assert blocked is not None and blocked.reason == "spend_limit"
    assert blocked.since_s == outage.since_s and blocked.ends_at_s == ts("2027-01-01")
    breaker.record(True, probe=True)
    assert hold() is None
