"""A circuit breaker that tells an outage (most calls failing) from one bad record, and holds
traffic while the account is blocked.

It watches the outcomes of the last ``window`` model calls. When at least half the window has
been seen and the failure ratio reaches ``failure_ratio``, it opens for ``cooldown_s``; while
open, the tier pauses its partitions and every call waits. After the cooldown exactly one call
goes through (half-open, the probe): success closes the breaker, failure re-opens it with a
doubled cooldown (capped). A single record that keeps failing while others succeed never
opens it.

An account-level failure (spend limit, billing, credentials, an unknown or retired model)
opens it at once with a *blocked reason* and the longer ``blocked_cooldown_s``: every call
would fail the same way, so nothing is spent, escalated or dead-lettered while it lasts. The
probe finds out when it has cleared. :attr:`successes` counts answered calls, so a caller can
tell "this request is rejected while others succeed" from "everything is rejected".
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Literal

from escalator.config import PipelineSettings, default_of

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(
        self,
        *,
        window: int = default_of(PipelineSettings, "breaker_window"),
        failure_ratio: float = default_of(PipelineSettings, "breaker_failure_ratio"),
        cooldown_s: float = default_of(PipelineSettings, "breaker_cooldown_s"),
        cooldown_max_s: float = default_of(PipelineSettings, "breaker_cooldown_max_s"),
        blocked_cooldown_s: float = default_of(PipelineSettings, "blocked_probe_s"),
        clock: Callable[[], float] = time.monotonic,
        on_hold_change: Callable[[str | None], None] = lambda reason: None,
    ) -> None:
        self._on_hold_change = on_hold_change
        self._hold: str | None = None
        self._outcomes: deque[bool] = deque(maxlen=window)
        self._kinds: deque[str | None] = deque(maxlen=window)
        self._ratio = failure_ratio
        self._initial = cooldown_s
        self._cooldown = cooldown_s
        self._max = cooldown_max_s
        self._blocked_cooldown = blocked_cooldown_s
        self._clock = clock
        self._open_until: float | None = None
        self._probing = False
        self._changed = asyncio.Event()
        self.opened_count = 0
        self.successes = 0
        #: Why the breaker is open: the last failure's kind (``overloaded``, ``api_400``...).
        self.open_reason: str | None = None
        #: Set while the account is blocked (``spend_limit``, ``credentials``...); with
        #: :attr:`blocked_message`, the line readiness reports.
        self.blocked_reason: str | None = None
        self.blocked_message: str | None = None

    @property
    def state(self) -> State:
        if self._open_until is None:
            return "closed"
        if self._clock() < self._open_until:
            return "open"
        return "half_open"

    @property
    def hold_reason(self) -> str | None:
        """Why traffic is held for the *account*, not an outage: the blocked reason, or
        ``request_rejected`` while the breaker is open because every call got a 4xx."""
        if self._open_until is None:
            return None
        if self.blocked_reason is not None:
            return self.blocked_reason
        if self.open_reason is not None and self.open_reason.startswith("api_4"):
            return "request_rejected"
        return None

    def _notify(self) -> None:
        reason = self.hold_reason
        if reason != self._hold:
            self._hold = reason
            self._on_hold_change(reason)

    @property
    def is_open(self) -> bool:
        """True while the tier must take no new work: open, half-open with a probe out, or
        blocked until a probe succeeds."""
        state = self.state
        if state == "closed":
            return False
        return state == "open" or self._probing or self.blocked_reason is not None

    def record(self, success: bool, kind: str = "other", *, probe: bool = False) -> None:
        """One call's outcome. ``probe`` is True for the call that :meth:`acquire` let through."""
        if probe:
            self._probing = False
        state = self.state
        self._outcomes.append(success)
        self._kinds.append(None if success else kind)
        if success:
            self.successes += 1
            if state != "closed" and (probe or self.blocked_reason is None):
                # While blocked only the probe's answer counts: a call sent before the block
                # that happens to succeed says nothing about the account now.
                self._close()
            return
        if state == "half_open":
            if probe or not self._probing:
                self._open(kind)
            return
        seen = len(self._outcomes)
        failures = seen - sum(self._outcomes)
        if state == "closed" and seen >= max(2, self._outcomes.maxlen or 2) // 2:
            if failures / seen >= self._ratio:
                self._open(kind)

    def block(self, reason: str, message: str, *, probe: bool = False) -> None:
        """The account cannot call the model: open now, probe every ``blocked_cooldown_s``."""
        if probe:
            self._probing = False
        self._outcomes.append(False)
        self._kinds.append(reason)
        self.blocked_reason = reason
        self.blocked_message = message
        self.open_reason = reason
        if self._open_until is None:
            self.opened_count += 1
        self._open_until = self._clock() + self._blocked_cooldown
        self._changed.set()
        self._notify()

    def abandon_probe(self) -> None:
        """The probe call ended without an outcome (cancelled): let another call probe."""
        self._probing = False
        self._changed.set()

    def _open(self, kind: str) -> None:
        if self._open_until is not None:
            self._cooldown = min(self._cooldown * 2, self._max)
        self._open_until = self._clock() + self._cooldown
        # The reason is the most common failure in the window, not whichever tipped it.
        failures = Counter(k for k in self._kinds if k is not None)
        self.open_reason = failures.most_common(1)[0][0] if failures else kind
        self.opened_count += 1
        self._changed.set()
        self._notify()

    def _close(self) -> None:
        self._open_until = None
        self._cooldown = self._initial
        self._outcomes.clear()
        self._kinds.clear()
        self._probing = False
        self.open_reason = None
        self.blocked_reason = None
        self.blocked_message = None
        self._changed.set()
        self._notify()

    async def acquire(self) -> bool:
        """Wait until a call may be made. True when this call is the half-open probe, which
        must then be reported with ``record(..., probe=True)`` or :meth:`abandon_probe`."""
        while True:
            state = self.state
            if state == "closed":
                return False
            if state == "half_open" and not self._probing:
                self._probing = True
                return True
            remaining = (self._open_until or 0.0) - self._clock()
            self._changed.clear()
            try:
                async with asyncio.timeout(max(0.05, min(remaining, 1.0))):
                    await self._changed.wait()
            except TimeoutError:
                pass
