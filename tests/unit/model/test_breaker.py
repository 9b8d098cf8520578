"""The circuit breaker (model/breaker.py) tells outages from single failures: half-open it lets
exactly one probe through, while blocked only the probe's answer counts, and the reasons it
gives name what holds the traffic."""

from __future__ import annotations

import asyncio

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


def test_a_success_sent_before_a_block_does_not_clear_it() -> None:
    """While blocked, only the probe's answer counts."""
    breaker = CircuitBreaker()
    breaker.block("billing", "402")
    breaker.record(True)  # a call that was already in flight
    assert breaker.blocked_reason == "billing" and breaker.state == "open"
    breaker.record(True, probe=True)
    assert breaker.blocked_reason is None and breaker.state == "closed"


def test_the_open_reason_is_the_commonest_failure_in_the_window() -> None:
    """An outage tipped over by one 400 is an outage, not a rejected account."""
    breaker = CircuitBreaker(window=10)
    for _ in range(4):
        breaker.record(False, "overloaded")
    breaker.record(False, "api_400")
    assert breaker.state == "open" and breaker.open_reason == "overloaded"
    assert breaker.hold_reason is None


def test_the_breaker_lets_exactly_one_probe_through_when_half_open() -> None:
    """Half-open means one call: is_open stays true for the others while the probe is out."""
    now = [0.0]
    breaker = CircuitBreaker(window=4, cooldown_s=1.0, clock=lambda: now[0])
    for _ in range(4):
        breaker.record(False, "overloaded")
    assert breaker.state == "open" and breaker.open_reason == "overloaded"
    now[0] = 1.5
    assert breaker.state == "half_open" and not breaker.is_open

    async def two() -> tuple[bool, bool]:
        first = await breaker.acquire()
        waiting = asyncio.create_task(breaker.acquire())
        await asyncio.sleep(0.1)
        assert not waiting.done() and breaker.is_open
        breaker.record(True, probe=True)
        return first, await asyncio.wait_for(waiting, 2)

    first, second = asyncio.run(two())
    assert first is True and second is False and breaker.state == "closed"


def test_hold_reason_names_blocks_and_rejections_but_not_outages() -> None:
    """Readiness and api_blocked report account trouble; an outage is not account trouble."""
    changes: list[str | None] = []
    breaker = CircuitBreaker(window=4, on_hold_change=changes.append)
    for _ in range(4):
        breaker.record(False, "overloaded")
    assert breaker.state == "open" and breaker.hold_reason is None
    breaker.block("spend_limit", "cap reached")
    assert breaker.hold_reason == "spend_limit"
    breaker.record(True, probe=True)
    assert breaker.hold_reason is None
    for _ in range(4):
        breaker.record(False, "api_400")
    assert breaker.hold_reason == "request_rejected"
    assert changes == ["spend_limit", None, "request_rejected"]
