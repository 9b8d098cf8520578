"""The circuit breaker tells outages from single failures."""

from __future__ import annotations

from escalator.model.breaker import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_on_an_outage_and_half_opens_after_cooldown() -> None:
    """Most calls failing opens it; after the cooldown one success closes it."""
    clock = Clock()
    b = CircuitBreaker(window=10, failure_ratio=0.5, cooldown_s=2, cooldown_max_s=8, clock=clock)
    for _ in range(5):
        b.record(False)
    assert b.state == "open"
    clock.now = 2.0
    assert b.state == "half_open"
    b.record(False)  # the probe failed: open again, cooldown doubled
    assert b.state == "open"
    clock.now = 5.9
    assert b.state == "open"
    clock.now = 6.0
    b.record(True)
    assert b.state == "closed"


def test_one_failing_record_among_successes_does_not_open_it() -> None:
    """A poison record failing 4 times while 16 others succeed leaves it closed."""
    b = CircuitBreaker(window=20, failure_ratio=0.5, clock=Clock())
    for i in range(20):
        b.record(i % 5 != 0)
    assert b.state == "closed"
