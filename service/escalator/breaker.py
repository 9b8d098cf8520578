"""A circuit breaker that tells an outage (most calls failing) from one bad record.

It watches the outcomes of the last ``window`` model calls. When at least half the window has
been seen and the failure ratio reaches ``failure_ratio``, it opens for ``cooldown_s``; while
open, the tier pauses its partitions and every call waits. After the cooldown one call may go
through (half-open): success closes the breaker, failure re-opens it with a doubled cooldown
(capped). A single record that keeps failing while others succeed never opens it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Literal

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(
        self,
        *,
        window: int = 20,
        failure_ratio: float = 0.5,
        cooldown_s: float = 2.0,
        cooldown_max_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._outcomes: deque[bool] = deque(maxlen=window)
        self._ratio = failure_ratio
        self._initial = cooldown_s
        self._cooldown = cooldown_s
        self._max = cooldown_max_s
        self._clock = clock
        self._open_until: float | None = None
        self._probing = False
        self.opened_count = 0

    @property
    def state(self) -> State:
        if self._open_until is None:
            return "closed"
        if self._clock() < self._open_until:
            return "open"
        return "half_open"

    @property
    def is_open(self) -> bool:
        return self.state == "open"

    def record(self, success: bool) -> None:
        state = self.state
        self._outcomes.append(success)
        if success:
            if state != "closed":
                self._close()
            return
        if state == "half_open":
            self._open()
            return
        seen = len(self._outcomes)
        failures = seen - sum(self._outcomes)
        if state == "closed" and seen >= max(2, self._outcomes.maxlen or 2) // 2:
            if failures / seen >= self._ratio:
                self._open()

    def _open(self) -> None:
        if self._open_until is not None:
            self._cooldown = min(self._cooldown * 2, self._max)
        self._open_until = self._clock() + self._cooldown
        self.opened_count += 1

    def _close(self) -> None:
        self._open_until = None
        self._cooldown = self._initial
        self._outcomes.clear()

    async def wait_closed(self) -> None:
        """Return when calls may be made (closed or half-open)."""
        while self._open_until is not None:
            remaining = self._open_until - self._clock()
            if remaining <= 0:
                return
            await asyncio.sleep(min(remaining, 1.0))
