"""When a hold began, and when the API says it ends.

The rate-limits page (platform.claude.com/docs/en/api/rate-limits, "Spend limits"): once an
organisation reaches its tier's monthly spend cap, "API usage pauses until 00:00 UTC on the
first day of the next month, unless you request a higher limit sooner", and the 429 says so:
"You will regain access on 2026-09-01 at 00:00 UTC." A spend limit the organisation set itself
answers a 400 with the same sentence. :func:`resumes_at` reads that date from the API's message;
for a monthly cap (429 ``enforced_spend_limit_reached`` and its kin) whose message names none,
it takes the documented rule. Other holds (billing, a key, a retired model) end when someone
acts: they have no end date.

:class:`HoldClock` remembers when each tier's hold began, for ``/readyz``, ``escalator doctor``
(through ``/readyz``) and the parked records' headers.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from escalator.model.breaker import CircuitBreaker

#: 429 ``error.details.error_code`` values of a monthly cap (model/adapter.py's SPEND_CAP_CODES).
MONTHLY_CAP_CODES = (
    "enforced_spend_limit_reached",
    "contract_spend_limit_reached",
    "linked_organization_spend_limit_reached",
)
_REGAIN = re.compile(
    r"regain access on (\d{4}-\d{2}-\d{2})(?:\s+at\s+(\d{1,2}):(\d{2})(?::(\d{2}))?\s*UTC)?",
    re.IGNORECASE,
)


def first_of_next_month(now_s: float) -> float:
    """00:00 UTC on the first day of the month after ``now_s`` (epoch seconds)."""
    now = datetime.fromtimestamp(now_s, UTC)
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return datetime(year, month, 1, tzinfo=UTC).timestamp()


def resumes_at(reason: str | None, message: str | None, now_s: float) -> float | None:
    """When the API says a hold ends (epoch seconds), or None when it does not say.

    The date in the API's own message wins ("regain access on YYYY-MM-DD at 00:00 UTC"); a
    monthly cap without one ends at the start of next month, as the rate-limits page says.
    """
    if reason != "spend_limit" or not message:
        return None
    found = _REGAIN.search(message)
    if found is not None:
        day, hour, minute, second = found.groups()
        try:
            when = datetime.fromisoformat(day).replace(
                hour=int(hour or 0), minute=int(minute or 0), second=int(second or 0), tzinfo=UTC
            )
        except ValueError:
            when = None
        if when is not None:
            return when.timestamp()
    if any(code in message for code in MONTHLY_CAP_CODES):
        return first_of_next_month(now_s)
    return None


@dataclass(frozen=True, slots=True)
class Hold:
    """A tier's traffic is held: why, since when, and until when the API says (if it does)."""

    reason: str
    message: str
    since_s: float
    ends_at_s: float | None = None


class HoldClock:
    """When the current hold of one tier began. ``observe`` is called with the hold as the
    caller sees it now (reason, message; None when not held); the first reason after none
    starts the clock, and a change of reason within a hold keeps it."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._since: float | None = None

    def observe(self, reason: str | None, message: str | None) -> Hold | None:
        if reason is None:
            self._since = None
            return None
        now = self._clock()
        if self._since is None:
            self._since = now
        return Hold(reason, message or "", self._since, resumes_at(reason, message, now))


class _Caller(Protocol):
    """What :func:`held_by` reads of a ModelCaller (model/caller.py)."""

    def hold(self) -> tuple[str | None, str | None]: ...

    @property
    def breaker(self) -> CircuitBreaker: ...


def held_by(caller: _Caller, clock: HoldClock) -> Callable[[], Hold | None]:
    """The hold of one tier's traffic, as its caller sees it now: the account's (spend limit,
    billing, key...), or an outage (the breaker is open or probing: every call waits). None
    while calls flow."""

    def hold() -> Hold | None:
        reason, message = caller.hold()
        if reason is None and caller.breaker.state != "closed":
            failing = caller.breaker.open_reason or "errors"
            reason, message = "outage", f"the model API is failing ({failing})"
        return clock.observe(reason, message)

    return hold
