"""Holds that outlast retention lose nothing: the retention watch and parking of one worker.

While a tier holds its traffic (the account is blocked, or the model is down: the breaker is
open), its records wait uncommitted on the input topic, and the broker deletes them when they
pass the topic's retention. :class:`Parking` watches for that, beside the worker's poll loop,
every ``ESCALATOR_RETENTION_CHECK_S``:

1. **Know the deadline.** At start-up and on each assignment it reads the topic's effective
   retention from the broker (``kafka/admin.py``). Per owned partition it reads the log-start
   and end offsets and the committed offset, and peeks at the oldest uncommitted record for its
   timestamp; ``kafka/retention.py`` turns that into the share of retention it has used (by time
   and by bytes). Exported per topic as ``escalator_retention_used_ratio`` and
   ``escalator_held_oldest_age_seconds``.
2. **Count a loss.** A log start past the committed offset means the broker deleted records
   the group never finished: the moment of loss. Counted once per record in
   ``escalator_retention_lost_total`` and logged at ERROR.
3. **Park before the broker deletes.** When the tier is held and a partition's oldest record
   has used ``ESCALATOR_PARK_AT`` (0.5) of its retention, the partition parks every record up
   to its end offset at that moment: the worker cancels the held calls of those records and
   fetches the rest, and each one's output is a copy of it (key, value, headers, byte for byte,
   plus why: ``contract/parking.py``) to the parked topic. That output goes through the
   worker's delivery strategy like any other: at-least-once, the offset commits only after the
   copy is acknowledged; exactly-once, the copy and the offset commit in one transaction. There
   is one commit path. Parking stops when the partition's committed offset reaches that end,
   or when the hold ends (what is left is then answered as usual).

A tier that is merely slow is never parked (its records are being answered); the metrics and
the alert before parking still show how close it is to its retention.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from escalator.contract.parking import Why, parked_headers
from escalator.engine.delivery import Output, PartitionTracker
from escalator.errors import EscalatorError
from escalator.kafka.admin import Peek
from escalator.kafka.retention import RecordSizes, TopicRetention
from escalator.model.holds import Hold
from escalator.observability.logs import log
from escalator.observability.metrics import Metrics

logger = logging.getLogger("escalator.parking")


class LogView(Protocol):
    """The broker's view of the partitions (``kafka/admin.py``'s KafkaLogView; fakes in tests)."""

    async def retention(self, topic: str) -> TopicRetention: ...

    async def bounds(self, tps: list[TopicPartition]) -> dict[TopicPartition, tuple[int, int]]: ...

    async def committed(
        self, group: str, tps: list[TopicPartition]
    ) -> dict[TopicPartition, int]: ...

    async def peek(self, tp: TopicPartition, offset: int) -> Peek | None: ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class _Part:
    #: While set, every record below this offset is parked.
    until: int | None = None
    #: Every record below ``until`` has been fetched (the partition is paused again).
    fetched: bool = False
    #: (offset, timestamp ms) of the oldest uncommitted record last peeked.
    oldest: tuple[int, int] | None = None
    #: The log start up to which deleted records were counted as lost.
    lost_upto: int | None = None
    #: Where the group began on this partition when it had no committed offset yet (the log
    #: start first seen: ``auto_offset_reset=earliest``).
    origin: int | None = None
    share: float = 0.0
    age_s: float = 0.0


class Parking:
    """One worker's retention watch and parking state. The worker calls :meth:`until` per
    fetched batch, :meth:`outputs` for a record it parks, and :meth:`parked` once that copy is
    delivered; :meth:`run` is the watch loop."""

    def __init__(
        self,
        *,
        tier: str,
        topic: str,
        group: str,
        parked_topic: str,
        log: LogView,
        metrics: Metrics,
        hold: Callable[[], Hold | None],
        park_at: float,
        check_s: float,
        enabled: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.tier = tier
        self.topic = topic
        self._group = group
        self._parked_topic = parked_topic
        self._log = log
        self._metrics = metrics
        self._hold = hold
        self.park_at = park_at
        self._check_s = check_s
        self.enabled = enabled
        self._clock = clock
        self.retention: TopicRetention | None = None
        self._parts: dict[TopicPartition, _Part] = {}
        self._sizes = RecordSizes()
        self._stale = True
        self._wake = asyncio.Event()
        self._trackers: Mapping[TopicPartition, PartitionTracker] = {}
        self._cancel: Callable[[TopicPartition, int], None] = lambda tp, until: None
        self._share = metrics.retention_used.labels(tier, topic)
        self._age = metrics.held_oldest_age.labels(tier, topic)
        self._lost = metrics.retention_lost.labels(tier, topic)
        self._parked = metrics.parked.labels(tier, topic)
        metrics.park_at.set(park_at)

    def bind(
        self,
        trackers: Mapping[TopicPartition, PartitionTracker],
        cancel: Callable[[TopicPartition, int], None],
    ) -> None:
        """The worker's trackers (read for committed offsets), and how to cancel the held
        calls of a partition's records below an offset (they are parked instead)."""
        self._trackers = trackers
        self._cancel = cancel

    # -- what the worker asks -------------------------------------------------------------------
    def until(self, tp: TopicPartition) -> int | None:
        """Park this partition's records below the offset returned; None: do not park."""
        part = self._parts.get(tp)
        if part is None or part.until is None:
            return None
        if self._hold() is None:
            log(logger, "parking_stopped", tier=self.tier, partition=_name(tp), why="hold_ended")
            part.until = None
            return None
        return part.until

    def parking(self) -> set[TopicPartition]:
        """The partitions to fetch although the tier is held: being parked, not all fetched."""
        return {tp for tp, p in self._parts.items() if p.until is not None and not p.fetched}

    def reached(self, tp: TopicPartition) -> None:
        """Every record of ``tp`` below its end mark is fetched (or the worker hit the mark)."""
        part = self._parts.get(tp)
        if part is not None:
            part.fetched = True

    def takes(self, tp: TopicPartition, offset: int) -> bool:
        found = self.until(tp)
        return found is not None and offset < found

    def outputs(self, record: Any) -> list[Output]:
        """The parked copy of one record: itself, byte for byte, plus why."""
        hold = self._hold()
        now = self._clock()
        part = self._parts.get(TopicPartition(record.topic, record.partition))
        why = Why(
            reason=hold.reason if hold is not None else "held",
            held_since_s=hold.since_s if hold is not None else now,
            ends_at_s=hold.ends_at_s if hold is not None else None,
            retention_used=part.share if part is not None else 0.0,
            tier=self.tier,
        )
        headers = parked_headers(
            record.headers,
            why,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp_ms=record.timestamp,
            now_s=now,
        )
        return [Output(self._parked_topic, record.value, record.key, headers)]

    def parked(self, n: int = 1) -> None:
        """``n`` parked copies were delivered (their offsets count as done)."""
        self._parked.inc(n)

    async def close(self) -> None:
        await self._log.close()

    # -- partitions -------------------------------------------------------------------------------
    def assigned(self, tps: set[TopicPartition]) -> None:
        """Start watching ``tps``; the watch reads the topic's retention again at once (it may
        have changed), beside the rebalance rather than inside it."""
        for tp in tps:
            self._parts.setdefault(tp, _Part())
        self._stale = True
        self._wake.set()

    def revoked(self, tps: set[TopicPartition]) -> None:
        for tp in tps:
            self._parts.pop(tp, None)

    async def _refresh_retention(self) -> None:
        try:
            found = await self._log.retention(self.topic)
        except (KafkaError, EscalatorError, OSError) as exc:
            log(logger, "retention_unknown", logging.WARNING, topic=self.topic, error=repr(exc))
            return
        self._stale = False
        if found != self.retention:
            self.retention = found
            self._metrics.retention_ms.labels(self.topic).set(
                -1 if found.retention_ms is None or not found.deletes else found.retention_ms
            )
            self._metrics.retention_bytes.labels(self.topic).set(
                -1 if found.retention_bytes is None or not found.deletes else found.retention_bytes
            )
            level = logging.WARNING if found.compacted else logging.INFO
            log(logger, "retention_read", level, tier=self.tier, topic=self.topic,
                retention=found.describe())  # fmt: skip

    # -- the watch --------------------------------------------------------------------------------
    async def run(self) -> None:
        """Check every ``check_s`` (and at once after an assignment) until cancelled; a failed
        check is logged and retried."""
        while True:
            self._wake.clear()
            try:
                await self.check()
            except (KafkaError, EscalatorError, OSError) as exc:
                log(logger, "retention_check_failed", logging.WARNING, tier=self.tier,
                    error=repr(exc))  # fmt: skip
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._check_s):
                    await self._wake.wait()

    async def check(self) -> None:
        """One pass over the owned partitions: losses, oldest held record, parking."""
        tps = [tp for tp in self._trackers if tp in self._parts]
        if not tps:
            self._share.set(0)
            self._age.set(0)
            return
        if self._stale or self.retention is None:
            await self._refresh_retention()
        bounds = await self._log.bounds(tps)
        committed = {
            tp: self._trackers[tp].committed
            for tp in tps
            if tp in self._trackers and self._trackers[tp].committed is not None
        }
        unknown = [tp for tp in tps if tp not in committed]
        if unknown:
            committed.update(await self._log.committed(self._group, unknown))
        hold = self._hold()
        for tp in tps:
            part = self._parts.get(tp)
            if part is None or tp not in bounds:
                continue  # revoked meanwhile
            start, end = bounds[tp]
            done = committed.get(tp)
            if done is None:
                part.origin = start if part.origin is None else part.origin
                done = part.origin
            self._count_loss(tp, part, start, done)
            await self._measure(tp, part, max(start, done if done is not None else start), end)
            if part.until is not None and done is not None and done >= part.until:
                log(logger, "parking_done", tier=self.tier, partition=_name(tp), upto=part.until)
                part.until = None
            elif part.until is not None and hold is not None:
                self._cancel(tp, part.until)  # held calls dispatched since the last pass
            if (
                self.enabled
                and hold is not None
                and part.until is None
                and part.share >= self.park_at
                and end > (done if done is not None else start)
            ):
                part.until, part.fetched = end, False
                log(
                    logger,
                    "parking_started",
                    logging.WARNING,
                    tier=self.tier,
                    partition=_name(tp),
                    upto=end,
                    records=end - (done if done is not None else start),
                    retention_used=round(part.share, 3),
                    reason=hold.reason,
                )
                self._cancel(tp, end)
        parts = [p for tp, p in self._parts.items() if tp in bounds]
        self._share.set(max((p.share for p in parts), default=0.0))
        self._age.set(max((p.age_s for p in parts), default=0.0))

    def _count_loss(self, tp: TopicPartition, part: _Part, start: int, done: int | None) -> None:
        """The log start past the committed offset: the broker deleted records the group never
        finished. Those this worker holds in memory (dispatched) can still be answered; the
        others are lost."""
        if done is None or start <= done:
            return
        counted = max(done, part.lost_upto if part.lost_upto is not None else done)
        tracker = self._trackers.get(tp)
        held = tracker.pending if tracker is not None else ()
        lost = (start - counted) - sum(1 for o in held if counted <= o < start)
        if lost > 0:
            self._lost.inc(lost)
            log(
                logger,
                "records_lost_to_retention",
                logging.ERROR,
                tier=self.tier,
                partition=_name(tp),
                committed=done,
                log_start=start,
                lost=lost,
            )
        part.lost_upto = start

    async def _measure(self, tp: TopicPartition, part: _Part, oldest: int, end: int) -> None:
        """The share of retention the oldest uncommitted record of ``tp`` has used."""
        retention = self.retention
        if oldest >= end or retention is None:
            part.share, part.age_s, part.oldest = 0.0, 0.0, None
            return
        if part.oldest is None or part.oldest[0] != oldest:
            peeked = await self._log.peek(tp, oldest)
            if peeked is None:
                return  # nothing readable there yet (an open transaction): keep the last figures
            part.oldest = (oldest, peeked.timestamp_ms)
            self._sizes.observe(peeked.bytes_per_record)
        age_ms = self._clock() * 1000 - part.oldest[1]
        part.age_s = max(0.0, age_ms / 1000)
        part.share = retention.share_used(
            age_ms=age_ms, bytes_after=(end - oldest) * self._sizes.per_record
        )


def _name(tp: TopicPartition) -> str:
    return f"{tp.topic}-{tp.partition}"


@contextlib.asynccontextmanager
async def watching(parking: Parking | None) -> Any:
    """Run ``parking``'s watch for the block (nothing when parking is None)."""
    if parking is None:
        yield
        return
    task = asyncio.create_task(parking.run(), name=f"retention-watch-{parking.tier}")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await parking.close()
