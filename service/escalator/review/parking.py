"""The review console's retention watch: items that wait for people longer than their topic
keeps them are parked, with the tiers' rule (``engine/parking.py``) and the same alert.

Every ``ESCALATOR_RETENTION_CHECK_S`` the console (``consumer.py``) calls :meth:`check`. Per
partition it reads the log-start offset and counts a loss when it has passed the committed
offset (``escalator_retention_lost_total{tier="review"}``). Per undecided item it computes the
share of its topic's retention it has used (``kafka/retention.py``: its record's timestamp, and
the bytes after it). People have no "hold" that ends: an item that reaches ``ESCALATOR_PARK_AT``
is copied, byte for byte with key and headers plus why (reason ``awaiting_review``), to the
parked topic; once the broker has acknowledged the copy the item leaves the queue (a
reviewer still holding it gets ``lost``) and the commit watermark passes it. ``escalator parked
replay`` puts it back on its queue when people have caught up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from escalator.contract.parking import Why, parked_headers
from escalator.engine.parking import LogView
from escalator.errors import EscalatorError
from escalator.kafka.retention import TopicRetention, record_log_bytes
from escalator.observability.logs import log
from escalator.observability.metrics import Metrics
from escalator.review.ledger import Entry, PartitionLedger

logger = logging.getLogger("escalator.review")
TIER = "review"
REASON = "awaiting_review"
#: Produce one parked copy (topic, key, value, headers) and wait for its acknowledgement.
Send = Callable[[str, bytes | None, bytes | None, list[tuple[str, bytes | None]]], Awaitable[None]]


class ReviewParking:
    def __init__(
        self,
        *,
        topics: list[str],
        group: str,
        parked_topic: str,
        log_view: LogView,
        metrics: Metrics,
        park_at: float,
        check_s: float,
        enabled: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._topics = topics
        self._group = group
        self._parked_topic = parked_topic
        self._log = log_view
        self._metrics = metrics
        self.park_at = park_at
        self._check_s = check_s
        self.enabled = enabled
        self._clock = clock
        self.retention: dict[str, TopicRetention] = {}
        self._lost_upto: dict[TopicPartition, int] = {}
        #: Where the group began on a partition without a committed offset (the log start
        #: first seen).
        self._origin: dict[TopicPartition, int] = {}
        self._next = 0.0
        metrics.park_at.set(park_at)

    async def close(self) -> None:
        await self._log.close()

    def forget(self, tps: list[TopicPartition]) -> None:
        """Partitions revoked: their loss counts start again with the next owner."""
        for tp in tps:
            self._lost_upto.pop(tp, None)
            self._origin.pop(tp, None)

    def stale(self) -> None:
        """Partitions were assigned: read the topics' retention again at the next check."""
        self.retention.clear()
        self._next = 0.0

    async def maybe_check(
        self, parts: Mapping[TopicPartition, PartitionLedger], send: Send
    ) -> list[TopicPartition]:
        """:meth:`check` if it is due; the partitions where items were parked (to commit)."""
        if self._clock() < self._next:
            return []
        self._next = self._clock() + self._check_s
        try:
            return await self.check(parts, send)
        except (KafkaError, EscalatorError, OSError) as exc:
            log(logger, "retention_check_failed", logging.WARNING, tier=TIER, error=repr(exc))
            return []

    async def check(
        self, parts: Mapping[TopicPartition, PartitionLedger], send: Send
    ) -> list[TopicPartition]:
        for topic in self._topics:
            if topic not in self.retention:
                self.retention[topic] = await self._log.retention(topic)
        tps = list(parts)
        bounds = await self._log.bounds(tps) if tps else {}
        unknown = [tp for tp in tps if parts[tp].committed < 0]
        committed = await self._log.committed(self._group, unknown) if unknown else {}
        shares: dict[str, float] = dict.fromkeys(self._topics, 0.0)
        ages: dict[str, float] = dict.fromkeys(self._topics, 0.0)
        parked: list[TopicPartition] = []
        now_ms = self._clock() * 1000
        for tp in tps:
            part = parts.get(tp)
            if part is None or tp not in bounds:
                continue
            start, end = bounds[tp]
            done = part.committed if part.committed >= 0 else committed.get(tp)
            if done is None:
                done = self._origin.setdefault(tp, start)
            held = {*part.entries, *part.settled, *(e.offset for _, e in part.held)}
            self._count_loss(tp, start, done, held)
            retention = self.retention.get(tp.topic)
            waiting = [e for e in part.entries.values() if not e.done]
            if retention is None or not waiting:
                continue
            sizes = [_size(e) for e in part.entries.values()]
            per_record = max(sizes) if len(sizes) < 10 else sum(sizes) / len(sizes)
            for entry in sorted(waiting, key=lambda e: e.offset):
                age_ms = now_ms - entry.timestamp_ms
                share = retention.share_used(
                    age_ms=age_ms, bytes_after=(end - entry.offset) * per_record
                )
                if self.enabled and share >= self.park_at and not entry.deciding:
                    await self._park(entry, share, send)
                    parked.append(tp)
                    continue
                shares[tp.topic] = max(shares[tp.topic], share)
                ages[tp.topic] = max(ages[tp.topic], age_ms / 1000)
        for topic in self._topics:
            self._metrics.retention_used.labels(TIER, topic).set(shares[topic])
            self._metrics.held_oldest_age.labels(TIER, topic).set(max(0.0, ages[topic]))
        return sorted(set(parked), key=lambda tp: (tp.topic, tp.partition))

    async def _park(self, entry: Entry, share: float, send: Send) -> None:
        why = Why(
            reason=REASON,
            held_since_s=entry.timestamp_ms / 1000,
            ends_at_s=None,
            retention_used=share,
            tier=TIER,
        )
        headers = parked_headers(
            entry.raw_headers,
            why,
            topic=entry.tp.topic,
            partition=entry.tp.partition,
            offset=entry.offset,
            timestamp_ms=entry.timestamp_ms,
            now_s=self._clock(),
        )
        # Out of reach of a decision while the copy is in flight (decide() says "lost").
        entry.parked = entry.deciding = True
        try:
            await send(self._parked_topic, entry.key, entry.raw, headers)
        except BaseException:
            entry.parked = entry.deciding = False
            raise
        # Acknowledged: only now may the watermark pass it.
        entry.deciding = False
        entry.done = True
        entry.lease = None
        self._metrics.parked.labels(TIER, entry.tp.topic).inc()
        log(
            logger,
            "review_item_parked",
            logging.WARNING,
            queue=entry.item.queue,
            id=entry.item.request.id,
            partition=f"{entry.tp.topic}-{entry.tp.partition}",
            offset=entry.offset,
            retention_used=round(share, 3),
        )

    def _count_loss(
        self, tp: TopicPartition, start: int, done: int | None, in_memory: set[int]
    ) -> None:
        """Deleted before the commit passed them, and not held here (fetched items can still
        be decided): lost."""
        if done is None or start <= done:
            return
        counted = max(done, self._lost_upto.get(tp, done))
        lost = (start - counted) - sum(1 for o in in_memory if counted <= o < start)
        if lost > 0:
            self._metrics.retention_lost.labels(TIER, tp.topic).inc(lost)
            log(logger, "records_lost_to_retention", logging.ERROR, tier=TIER,
                partition=f"{tp.topic}-{tp.partition}", committed=done, log_start=start,
                lost=lost)  # fmt: skip
        self._lost_upto[tp] = start


def _size(entry: Entry) -> int:
    return record_log_bytes(len(entry.key or b""), len(entry.raw or b""), entry.raw_headers or ())
