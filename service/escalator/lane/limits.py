"""The Message Batches API's own rate limits, counted before they are met (issue 24,
docs/OPERATIONS.md "The batch lane: its rate limits").

The Rate limits page ("Message Batches API") gives the Batches API its own limits, shared
across all models and apart from the per-model ones: requests per minute to all of its
endpoints, and batch requests in the processing queue ("A batch request is considered part of
the processing queue when it has yet to be successfully processed by the model"). The lane
meets both before the API says no:

- **the processing queue**: the runner counts the members of its batches not yet ended (its
  own, and every other lane worker's it read on the state topic) and submits a batch only if
  that count plus the batch stays within ESCALATOR_LANE_QUEUE_LIMIT (``runner.py``); a batch
  that does not fit waits, first in line (:class:`Line`), and a member whose deadline the wait
  would miss leaves it for the real-time path (:func:`too_late`);
- **requests per minute**: every call to a batch endpoint (create, retrieve, results, list)
  goes through one :class:`Pacer`, one call every ``60 / ESCALATOR_LANE_RPM`` seconds at most
  (the page: "a limit of 60 RPM may effectively be enforced as approximately 1 request per
  second", so no burst is taken), so that polling many batches never bursts past it.

A 429 from a batch endpoint all the same (other clients of the organisation, or several lane
workers that count only what they have read) holds every batch call for its ``retry-after``
(:meth:`Pacer.hold`) and fails no item: the round is tried again after it
(:class:`PacedBatches`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

from escalator.errors import ApiBlocked, ModelUnavailable
from escalator.lane.assembly import ENVELOPE_BYTES, Batch, Member
from escalator.lane.batches import BatchApi, ItemResult, Listed

T = TypeVar("T")

#: How long a 429 without a ``retry-after`` holds the batch calls (s), and an account hold
#: (``ApiBlocked``) between two tries.
DEFAULT_HOLD_S = 60.0
#: How long a 529 (overloaded) without a ``retry-after`` holds them.
OVERLOADED_HOLD_S = 10.0


class Pacer:
    """Spaces calls at least ``60 / rpm`` seconds apart, and holds them all until a 429's
    ``retry-after`` has passed."""

    def __init__(
        self,
        rpm: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        if rpm < 1:
            raise ValueError("rpm must be at least 1")
        self.interval_s = 60.0 / rpm
        self._clock = clock
        self._sleep = sleep
        #: When the next call may go (the clock's time).
        self._next = 0.0
        self._held_until = 0.0

    async def wait(self) -> None:
        """Return when a call may go now (that call is then counted)."""
        while True:
            now = self._clock()
            at = max(self._next, self._held_until)
            if at <= now:
                self._next = now + self.interval_s
                return
            await self._sleep(at - now)

    def hold(self, seconds: float) -> None:
        """No call before ``seconds`` from now (a 429's ``retry-after``)."""
        self._held_until = max(self._held_until, self._clock() + seconds)

    def held_s(self) -> float:
        """How long calls are still held (0: not held)."""
        return max(0.0, self._held_until - self._clock())


class PacedBatches:
    """:class:`~escalator.lane.batches.BatchApi` whose every call waits for the pacer; a 429
    (``ModelUnavailable`` of kind ``rate_limit``) holds the pacer for its ``retry-after``
    (``on_limited`` is told) and is raised on, to fail the round, never an item."""

    def __init__(
        self, api: BatchApi, pacer: Pacer, on_limited: Callable[[], None] = lambda: None
    ) -> None:
        self._api = api
        self.pacer = pacer
        self._on_limited = on_limited
        #: The pacer was waited for already, for the next ``create`` (:meth:`reserve`).
        self._reserved = False

    def _limited(self, exc: ModelUnavailable) -> None:
        if exc.kind == "rate_limit":
            self.pacer.hold(DEFAULT_HOLD_S if exc.retry_after_s is None else exc.retry_after_s)
            self._on_limited()
        elif isinstance(exc, ApiBlocked):
            # Account trouble (spend limit, billing, key...): nothing goes until someone
            # acts; one try a minute, not an intent and its tombstone every round.
            self.pacer.hold(DEFAULT_HOLD_S)
        elif exc.kind == "overloaded":
            self.pacer.hold(OVERLOADED_HOLD_S if exc.retry_after_s is None else exc.retry_after_s)

    async def _paced(self, call: Callable[[], Awaitable[T]]) -> T:
        await self.pacer.wait()
        return await self._called(call)

    async def _called(self, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except ModelUnavailable as exc:
            self._limited(exc)
            raise

    async def reserve(self) -> None:
        """Wait for the pacer now, for the next :meth:`create`, which then goes at once: the
        runner writes a batch's intent only when its create may go, so that the create's
        timeout, counted from the intent, never spends itself in a hold of the pacer."""
        await self.pacer.wait()
        self._reserved = True

    def unreserve(self) -> None:
        """No create followed the reservation (the batch was put back)."""
        self._reserved = False

    async def create(self, entries: list[bytes]) -> str:
        if self._reserved:
            self._reserved = False
            return await self._called(lambda: self._api.create(entries))
        return await self._paced(lambda: self._api.create(entries))

    async def ended(self, batch_id: str) -> bool:
        return await self._paced(lambda: self._api.ended(batch_id))

    async def listed(self, since_ms: int) -> list[Listed]:
        # One wait per call: the SDK's paginator may fetch more than one page (100 batches
        # each), which only a lane that created more than 100 batches since an intent needs.
        return await self._paced(lambda: self._api.listed(since_ms))

    async def results(self, batch_id: str) -> AsyncIterator[ItemResult]:
        await self.pacer.wait()
        try:
            async for result in self._api.results(batch_id):
                yield result
        except ModelUnavailable as exc:
            self._limited(exc)
            raise


def too_late(
    members: Iterable[str],
    deadlines_ms: dict[str, int],
    *,
    now_s: float,
    expected_s: float,
    fallback_s: float,
) -> list[str]:
    """The members of a batch held back by the queue limit whose deadline, less the fallback
    margin, comes before a batch submitted now would be expected to end: waiting longer for
    the queue cannot help them, so the real-time path answers them now (the deadline
    fallback's path, taken early). Members without a deadline (measurement) wait."""
    due_s = now_s + expected_s + fallback_s
    return [m for m in members if m in deadlines_ms and deadlines_ms[m] / 1000 < due_s]


class Line:
    """The batches cut and not sent yet, first in line first (the runner sends the first once
    the queue has room). The one being sent (``sending``, from its intent's write to its
    create's answer) is out of every drop: its intent, on the state topic, names its
    members."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.sending: Batch | None = None
        self._held: Batch | None = None

    def __bool__(self) -> bool:
        return bool(self.batches)

    def first(self) -> Batch:
        return self.batches[0]

    def members(self) -> Iterable[Member]:
        """The members of the batches in line (not the one being sent)."""
        return (m for b in self.batches if b is not self.sending for m in b.members)

    def held(self, batch: Batch) -> bool:
        """``batch`` waits for room: True the first time (it is counted once)."""
        first, self._held = batch is not self._held, batch
        return first

    def put_back(self, batch: Batch, keep: Callable[[Member], bool]) -> None:
        """``batch`` was not sent after all: first in line again, with the members ``keep``
        says (the others were withdrawn or revoked while it was being sent)."""
        self._shrink(batch, keep)
        if batch.members:
            self.batches.insert(0, batch)

    def drop(self, gone: Callable[[Member], bool]) -> list[str]:
        """Take the members ``gone`` says out of the batches in line but the one being sent
        (a batch left empty leaves the line); their custom ids."""
        dropped: list[str] = []
        for b in self.batches:
            if b is not self.sending:
                dropped += [m.custom_id for m in b.members if gone(m)]
                self._shrink(b, lambda m: not gone(m))
        self.batches = [b for b in self.batches if b.members]
        return dropped

    @staticmethod
    def _shrink(batch: Batch, keep: Callable[[Member], bool]) -> None:
        batch.members = [m for m in batch.members if keep(m)]
        batch.size_bytes = ENVELOPE_BYTES + sum(m.size_bytes for m in batch.members)
