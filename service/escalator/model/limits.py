"""Adaptive concurrency: additive increase, multiplicative decrease (AIMD), as TCP does.

A 429 from the API means we are sending faster than our rate limit allows. Retrying after
``retry-after`` alone keeps the same pressure on the limit; halving the number of calls in
flight removes it. The limit then grows back by one slot per ``limit`` successful answers
(about one per round of calls), up to the configured maximum.

A burst of 429s from one round of calls is one signal, not many: after a decrease, further
rate-limit signals are ignored for ``cooldown_s``.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class AdaptiveLimit:
    def __init__(
        self,
        maximum: int,
        *,
        minimum: int = 1,
        factor: float = 0.5,
        cooldown_s: float = 1.0,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= minimum <= maximum:
            raise ValueError("need 1 <= minimum <= maximum")
        self.maximum = maximum
        self.minimum = minimum
        self.enabled = enabled
        self._factor = factor
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._limit = float(maximum)
        self._quiet_until = 0.0
        self.decreases = 0

    @property
    def limit(self) -> int:
        return int(self._limit)

    def on_rate_limited(self) -> None:
        if not self.enabled:
            return
        now = self._clock()
        if now < self._quiet_until:
            return
        self._limit = max(float(self.minimum), int(self._limit * self._factor))
        self._quiet_until = now + self._cooldown_s
        self.decreases += 1

    def on_success(self) -> None:
        if self._limit < self.maximum:
            self._limit = min(float(self.maximum), self._limit + 1.0 / self._limit)
