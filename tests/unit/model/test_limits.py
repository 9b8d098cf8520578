"""The AIMD concurrency limit."""

from __future__ import annotations

from escalator.model.limits import AdaptiveLimit


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_limit_halves_on_rate_limit_once_per_cooldown_then_grows_back() -> None:
    clock = Clock()
    limit = AdaptiveLimit(64, cooldown_s=1.0, clock=clock)
    limit.on_rate_limited()
    assert limit.limit == 32
    limit.on_rate_limited()  # same burst: ignored
    assert limit.limit == 32
    clock.now = 1.5
    limit.on_rate_limited()
    assert limit.limit == 16
    # Additive increase: about one slot per `limit` successes.
    for _ in range(17):
        limit.on_success()
    assert limit.limit == 17
    for _ in range(10_000):
        limit.on_success()
    assert limit.limit == 64  # capped at the configured maximum


def test_limit_never_below_minimum_and_disabled_limit_is_fixed() -> None:
    clock = Clock()
    limit = AdaptiveLimit(4, minimum=2, cooldown_s=0.0, clock=clock)
    for _ in range(10):
        limit.on_rate_limited()
    assert limit.limit == 2
    fixed = AdaptiveLimit(8, enabled=False)
    fixed.on_rate_limited()
    assert fixed.limit == 8
