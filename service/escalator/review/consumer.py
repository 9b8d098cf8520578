"""The review queues over Kafka: :class:`ReviewConsumer` implements ``ReviewQueues``.

The console is a member of its own consumer group (``ESCALATOR_REVIEW_GROUP``) on the reviews
and adjudications topics, with the tiers' commit rule: an item's offset is committed only
after its decision has been acknowledged by the broker, and never past an undecided item (the
watermark). So a console that crashes or loses a partition loses nothing: every undecided
item comes back, to this console or another.

What comes back may include items that were decided after the last commit. Each decision
names its item (``review_id``), and the console recognises them: when a partition is
assigned, before any of its items is shown, it reads the decisions topic from a little before
the oldest item it fetched and marks the items already decided as done (counted in
``escalator_review_duplicates_total``). A second decision for the same ``review_id`` at any
later time (a duplicate item, a second reviewer whose lease had expired) is ignored the same
way.

Leases: an item is shown to one reviewer at a time, for ``ESCALATOR_REVIEW_LEASE_S``; an
expired lease returns it to the queue. Leases live in this process's memory only: a restart
returns every leased item to its queue, which is what a reviewer who left would want anyway.

A record on a review topic that is not a review item goes to the dead-letter topic with its
reason, like bad input at the tiers.

An item that waits so long that its topic's retention would delete it is parked instead
(``parking.py``): copied to the parked topic, acknowledged, then passed by the watermark.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError

from escalator.config import KafkaSettings, ReviewSettings, Settings, Topics
from escalator.contract.messages import (
    Headers,
    dead_letter_headers,
    propagated_headers,
)
from escalator.contract.reviews import (
    QUEUES,
    Queue,
    ReviewItem,
    Verdict,
    human_decision_value,
    human_result_value,
    parse_review_item,
)
from escalator.errors import InvalidRequest
from escalator.kafka.admin import KafkaLogView
from escalator.kafka.clients import make_consumer, make_producer, read_to_end, stop_consumer
from escalator.observability import tracing as tracing_
from escalator.observability.logs import log, log_repeating
from escalator.observability.metrics import Metrics
from escalator.observability.tracing import Tracing
from escalator.review.ledger import (
    DECIDED_MEMORY,
    Entry,
    PartitionLedger,
    SeenIds,
    review_id_of,
    watermark,
)
from escalator.review.parking import ReviewParking
from escalator.review.queues import Lease, Outcome, QueueStat

logger = logging.getLogger("escalator.review")
#: On shutdown, the final commit and leaving the group are each bounded by this (an outage).
STOP_COMMIT_S = 5.0
#: How far before the oldest fetched item the recovery scan of the decisions log starts: the
#: item's timestamp is the strong tier's clock, the decision's is this console's.
RECOVERY_SKEW_MS = 5 * 60 * 1000
NOTE_MAX_CHARS = 2000
#: On a revocation, how long a decision being published may take to finish.
REVOKE_WAIT_S = 10.0


class ReviewConsumer:
    """The Kafka-backed review queues. ``async with`` it, then ``await run()``."""

    def __init__(
        self,
        *,
        kafka: KafkaSettings,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        topics: Topics,
        settings: ReviewSettings,
        metrics: Metrics,
        max_text_chars: int,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        read_decided: Callable[[int], Awaitable[list[str]]] | None = None,
        parking: ReviewParking | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self._kafka = kafka
        self._consumer = consumer
        self._producer = producer
        self._topics = topics
        self._settings = settings
        self._metrics = metrics
        self._max_text_chars = max_text_chars
        self._clock = clock
        self._rng = rng or random.Random()
        self._queue_of = {topics.reviews: "review", topics.adjudications: "adjudication"}
        self._parts: dict[TopicPartition, PartitionLedger] = {}
        self._leases: dict[str, Entry] = {}
        self._decided = SeenIds(DECIDED_MEMORY)
        self._stop = asyncio.Event()
        self._joined = asyncio.Event()
        self._lock = asyncio.Lock()  # commits and partition moves, one at a time
        self._publishing = 0  # decisions being published now; _idle is set when none is
        self._idle = asyncio.Event()
        self._idle.set()
        self._lag: dict[TopicPartition, int] = {}
        self._read_decided = read_decided or self._decided_since
        self._parking = parking
        self._tracing = tracing or Tracing()  # spans of each decision (observability/tracing.py)
        metrics.review_age_bound.set(settings.max_age_s)

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics) -> ReviewConsumer:
        rv = settings.review
        return cls(
            kafka=settings.kafka,
            consumer=make_consumer(
                settings.kafka,
                rv.group,
                isolation_level="read_committed",
                max_poll_interval_ms=settings.pipeline.max_poll_interval_ms,
                session_timeout_ms=settings.pipeline.session_timeout_ms,
            ),
            producer=make_producer(settings.kafka),
            topics=settings.topics,
            settings=rv,
            metrics=metrics,
            max_text_chars=settings.pipeline.max_text_chars,
            parking=ReviewParking(
                topics=[settings.topics.reviews, settings.topics.adjudications],
                group=rv.group,
                parked_topic=settings.topics.parked,
                log_view=KafkaLogView(
                    settings.kafka, client_id=f"{settings.kafka.client_id}-retention"
                ),
                metrics=metrics,
                park_at=settings.parking.park_at,
                check_s=settings.parking.check_s,
                enabled=settings.parking.enabled,
            ),
            tracing=tracing_.start(settings.tracing),
        )

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> ReviewConsumer:
        await self._producer.start()
        self._consumer.subscribe(
            [self._topics.reviews, self._topics.adjudications], listener=_Listener(self)
        )
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(KafkaError, TimeoutError):
            async with asyncio.timeout(STOP_COMMIT_S):  # no broker: the items come back later
                await self._commit(list(self._parts))
        await stop_consumer(self._consumer, timeout_s=STOP_COMMIT_S)
        await self._producer.stop()
        if self._parking is not None:
            await self._parking.close()
        await self._tracing.shutdown()

    def stop(self) -> None:
        self._stop.set()

    @property
    def joined(self) -> bool:
        return self._joined.is_set()

    async def wait_joined(self) -> None:
        await self._joined.wait()

    async def run(self) -> None:
        """Fetch items, recover assigned partitions, expire leases, commit, until stop()."""
        while not self._stop.is_set():
            batch = await self._consumer.getmany(timeout_ms=500, max_records=200)
            for tp, records in batch.items():
                part = self._parts.get(tp)
                if part is None:
                    continue  # revoked meanwhile: the next owner fetches these again
                for record in records:
                    await self._take(tp, part, record)
            await self._recover()
            self._expire()
            await self._refresh()
            if self._parking is not None:
                parked = await self._parking.maybe_check(self._parts, self._send_parked)
                if parked:
                    await self._commit(parked)

    # -- partitions --------------------------------------------------------------------

    def _assigned(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            self._parts.setdefault(tp, PartitionLedger())
        if self._parking is not None:
            self._parking.stale()
        self._joined.set()

    async def _revoked(self, tps: Iterable[TopicPartition]) -> None:
        gone = [tp for tp in tps if tp in self._parts]
        # A decision being published now finishes first (bounded), so that its commit goes
        # with this revocation and the next owner does not show the item again.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), REVOKE_WAIT_S)
        async with self._lock:
            with contextlib.suppress(KafkaError):
                await self._commit_unlocked(gone)
            for tp in gone:
                self._parts.pop(tp)
            if self._parking is not None:
                self._parking.forget(gone)
            # Every lease into those partitions ends, expired ones too: a stale lease id must
            # not decide an item that has come back as a new entry.
            for lease_id, entry in list(self._leases.items()):
                if entry.tp in gone:
                    del self._leases[lease_id]

    async def _take(self, tp: TopicPartition, part: PartitionLedger, record: Any) -> None:
        queue = self._queue_of.get(tp.topic, "review")
        headers = propagated_headers(record.headers)
        try:
            item = parse_review_item(record.value, self._max_text_chars)
        except InvalidRequest as exc:
            await self._dead_letter(tp, record, headers, exc, queue)
            part.settled.add(record.offset)
            return
        entry = Entry(
            item,
            tp,
            record.offset,
            record.key,
            headers,
            timestamp_ms=record.timestamp,
            raw=record.value,
            raw_headers=list(record.headers or ()),
        )
        if part.recovering:
            part.held.append((record.timestamp, entry))
            return
        self._add(part, entry)

    def _add(self, part: PartitionLedger, entry: Entry) -> None:
        if self._decided.seen(entry.item.review_id):
            entry.done = True
            self._metrics.review_duplicates.labels(entry.item.queue).inc()
        part.entries[entry.offset] = entry

    async def _recover(self) -> None:
        """Mark items of newly assigned partitions that were decided before they came back."""
        waiting = [(tp, p) for tp, p in self._parts.items() if p.recovering and p.held]
        if not waiting:
            return
        since = min(ts for _, p in waiting for ts, _ in p.held) - RECOVERY_SKEW_MS
        for review_id in await self._read_decided(since):
            self._decided.add(review_id)
        for tp, part in waiting:
            if self._parts.get(tp) is not part:
                continue
            part.recovering = False
            held, part.held = part.held, []
            for _, entry in held:
                self._add(part, entry)
        log(logger, "review_recovered", partitions=len(waiting), decided=len(self._decided))
        await self._commit(list(self._parts))

    async def _decided_since(self, since_ms: int) -> list[str]:
        """The review ids of every human decision on the decisions topic since then, in the
        order read (so that the bounded memory forgets the oldest first)."""
        found: list[str] = []
        async for record in read_to_end(self._kafka, self._topics.decisions, since_ms=since_ms):
            review_id = review_id_of(record.value)
            if review_id is not None:
                found.append(review_id)
        return found

    async def _dead_letter(
        self, tp: TopicPartition, record: Any, headers: Headers, error: InvalidRequest, queue: str
    ) -> None:
        """Like the tiers': the original key, value and headers, plus why and where from."""
        offset = record.offset
        self._metrics.review_invalid_items.labels(queue).inc()
        out = dead_letter_headers(
            headers,
            reason=error.reason,
            error=error,
            topic=tp.topic,
            partition=tp.partition,
            offset=offset,
            tier="review",
        )
        topic = self._topics.dead_letter
        await (await self._producer.send(topic, record.value or b"", key=record.key, headers=out))
        log(
            logger,
            "dead_letter",
            logging.WARNING,
            tier="review",
            reason=error.reason,
            topic=tp.topic,
            partition=tp.partition,
            offset=offset,
        )

    # -- commits -----------------------------------------------------------------------

    async def _commit(self, tps: list[TopicPartition]) -> None:
        async with self._lock:
            await self._commit_unlocked(tps)

    async def _commit_unlocked(self, tps: list[TopicPartition]) -> None:
        offsets: dict[TopicPartition, int] = {}
        for tp in tps:
            part = self._parts.get(tp)
            if part is None:
                continue
            mark = watermark(part)
            if mark is not None and mark > part.committed:
                offsets[tp] = mark
        if not offsets:
            return
        await self._consumer.commit(offsets)
        for tp, mark in offsets.items():
            part = self._parts[tp]
            part.committed = mark
            for offset in [o for o in part.entries if o < mark]:
                del part.entries[offset]
            part.settled = {o for o in part.settled if o >= mark}

    # -- the queues (ReviewQueues) -------------------------------------------------------

    def _waiting(self, queue: Queue) -> list[Entry]:
        return [
            e
            for p in self._parts.values()
            for e in p.entries.values()
            if e.item.queue == queue and not e.done
        ]

    def waiting(self, queue: Queue) -> list[ReviewItem]:
        """The items of ``queue`` this console holds undecided, oldest first (leased too)."""
        entries = sorted(self._waiting(queue), key=lambda e: (e.item.created_ms, e.offset))
        return [e.item for e in entries]

    def stats(self) -> list[QueueStat]:
        now_ms = self._clock() * 1000
        out = []
        for queue in QUEUES:
            waiting = self._waiting(queue)
            lag = sum(n for tp, n in self._lag.items() if self._queue_of.get(tp.topic) == queue)
            oldest = min((e.item.created_ms for e in waiting), default=None)
            out.append(
                QueueStat(
                    queue=queue,
                    depth=len(waiting) + lag,
                    leased=sum(1 for e in waiting if self._live(e)),
                    oldest_age_s=None if oldest is None else max(0.0, (now_ms - oldest) / 1000),
                )
            )
        return out

    def _live(self, entry: Entry) -> bool:
        return entry.lease is not None and entry.lease.expires_ms > self._clock() * 1000

    def lease(self, queue: Queue, reviewer: str) -> Lease | None:
        self._expire()
        waiting = self._waiting(queue)
        for entry in waiting:
            if entry.lease is not None and entry.lease.reviewer == reviewer and not entry.deciding:
                return entry.lease
        free = [e for e in waiting if e.lease is None and not e.deciding]
        if not free:
            return None
        # The oldest first; an item this reviewer skipped only when nothing else is left.
        entry = min(free, key=lambda e: (reviewer in e.skipped, e.item.created_ms, e.offset))
        now_ms = int(self._clock() * 1000)
        lease = Lease(
            id=secrets.token_urlsafe(16),
            queue=queue,
            reviewer=reviewer,
            item=entry.item,
            shown_ms=now_ms,
            expires_ms=now_ms + int(self._settings.lease_s * 1000),
            order=(0, 1) if self._rng.random() < 0.5 else (1, 0),
        )
        entry.lease = lease
        self._leases[lease.id] = entry
        return lease

    def lease_of(self, lease_id: str, reviewer: str) -> Lease | None:
        entry = self._leases.get(lease_id)
        if entry is None or entry.lease is None or entry.lease.reviewer != reviewer:
            return None
        return entry.lease if self._live(entry) else None

    def release(self, lease_id: str, reviewer: str) -> None:
        entry = self._leases.get(lease_id)
        if entry is not None and entry.lease is not None and entry.lease.reviewer == reviewer:
            self._leases.pop(lease_id, None)
            entry.lease = None
            entry.skipped.add(reviewer)

    def _expire(self) -> None:
        now_ms = self._clock() * 1000
        for lease_id, entry in list(self._leases.items()):
            lease = entry.lease
            if entry.done or (lease is not None and lease.id != lease_id):
                self._leases.pop(lease_id, None)  # decided, or taken by another reviewer
            elif lease is not None and lease.expires_ms <= now_ms and not entry.deciding:
                # Back to the queue; the reviewer's decision still counts if nobody else has
                # taken the item meanwhile (decide checks).
                entry.lease = None
                self._metrics.review_leases_expired.labels(entry.item.queue).inc()

    async def decide(
        self, lease_id: str, reviewer: str, label: str | None, note: str | None
    ) -> Outcome:
        entry = self._leases.get(lease_id)
        part = self._parts.get(entry.tp) if entry is not None else None
        if entry is None or part is None or part.entries.get(entry.offset) is not entry:
            return self._count("review", reviewer, "lost")  # its partition moved meanwhile
        item = entry.item
        if entry.parked:
            return self._count(item.queue, reviewer, "lost")  # parked: near its retention
        if entry.deciding:
            return self._count(item.queue, reviewer, "duplicate")  # a double submit
        if entry.done or self._decided.seen(item.review_id):
            # Decided already (this entry, or another copy of the same item): this copy is
            # done too, so that it leaves the queue and the watermark passes it.
            await self._settle_duplicate(entry)
            return self._count(item.queue, reviewer, "duplicate")
        held = entry.lease
        if held is not None and held.id != lease_id:
            return self._count(item.queue, reviewer, "lost")  # expired and taken by another
        if label is not None and label not in item.labels:
            return self._count(item.queue, reviewer, "invalid")
        shown = self._leases_shown(lease_id, entry)
        verdict = Verdict(
            reviewer=reviewer,
            label=label,
            note=(note or "").strip()[:NOTE_MAX_CHARS] or None,
            seconds=max(0.0, self._clock() - shown / 1000),
        )
        entry.deciding = True
        self._publishing += 1
        self._idle.clear()
        try:
            await self._publish(entry, verdict)
            # Done before a waiting revocation resumes (finally), so that its commit counts it.
            entry.done = True
            entry.lease = None
            self._leases.pop(lease_id, None)
            self._decided.add(item.review_id)
        finally:
            entry.deciding = False
            self._publishing -= 1
            if self._publishing == 0:
                self._idle.set()
        self._metrics.review_seconds.labels(item.queue).observe(verdict.seconds)
        log(
            logger,
            "review_decided",
            queue=item.queue,
            id=item.request.id,
            reviewer=reviewer,
            verdict=label or "neither",
            seconds=round(verdict.seconds, 3),
        )
        try:
            await self._commit([entry.tp])
        except KafkaError as exc:  # the next decision or the shutdown commits it
            log_repeating(logger, "review_commit_failed", logging.WARNING, error=str(exc))
        return self._count(item.queue, reviewer, "done")

    async def _settle_duplicate(self, entry: Entry) -> None:
        self._metrics.review_duplicates.labels(entry.item.queue).inc()
        entry.done = True
        if entry.lease is not None:
            self._leases.pop(entry.lease.id, None)
            entry.lease = None
        try:
            await self._commit([entry.tp])
        except KafkaError as exc:
            log_repeating(logger, "review_commit_failed", logging.WARNING, error=str(exc))

    def _leases_shown(self, lease_id: str, entry: Entry) -> int:
        lease = entry.lease
        if lease is not None and lease.id == lease_id:
            return lease.shown_ms
        return int(self._clock() * 1000)

    async def _publish(self, entry: Entry, verdict: Verdict) -> None:
        """The result (reviews queue) and then the decision; returns once both are
        acknowledged. In this order, a decision on the log means its result is on the results
        topic: the recovery scan, which skips items with a decision, never skips one whose
        result was lost."""
        item = entry.item
        key = entry.key or item.request.id.encode()
        source = f"{entry.tp.topic}/{entry.tp.partition}/{entry.offset}"
        spans = self._tracing.decision(
            entry.headers,
            topic=entry.tp.topic,
            partition=entry.tp.partition,
            offset=entry.offset,
            group=self._settings.group,
            queue=item.queue,
        )
        try:
            if item.queue == "review":
                result = human_result_value(item, verdict)
                headers = spans.headers(self._topics.results, entry.headers) or None
                await (
                    await self._producer.send(
                        self._topics.results, result, key=key, headers=headers
                    )
                )
            decision = human_decision_value(item, verdict, source)
            headers = spans.headers(self._topics.decisions, []) or None
            await (
                await self._producer.send(
                    self._topics.decisions, decision, key=key, headers=headers
                )
            )
        except BaseException as exc:
            spans.end(exc)
            raise
        spans.end()

    async def _send_parked(
        self, topic: str, key: bytes | None, value: bytes | None, headers: list[Any]
    ) -> None:
        """One parked copy, acknowledged (``parking.py``)."""
        await (await self._producer.send(topic, value, key=key, headers=headers))

    def _count(self, queue: str, reviewer: str, outcome: Outcome) -> Outcome:
        self._metrics.review_decisions.labels(queue, reviewer, outcome).inc()
        return outcome

    async def _refresh(self) -> None:
        """Metrics, the consumer lag beyond what is held here, and back-pressure."""
        for tp in list(self._parts):
            try:
                high = self._consumer.highwater(tp)
                if high is not None:
                    self._lag[tp] = max(0, high - await self._consumer.position(tp))
            except (AssertionError, IllegalStateError):
                continue  # unassigned meanwhile (aiokafka raises either; README, development)
        self._lag = {tp: n for tp, n in self._lag.items() if tp in self._parts}
        for stat in self.stats():
            self._metrics.review_depth.labels(stat.queue).set(stat.depth)
            self._metrics.review_leased.labels(stat.queue).set(stat.leased)
            self._metrics.review_oldest_age.labels(stat.queue).set(stat.oldest_age_s or 0.0)
        # Back-pressure per queue: a backlog of adjudications never stops the reviews topic
        # (whose requests wait for their results). Applied on every pass, so partitions
        # assigned meanwhile follow it too.
        for topic in self._queue_of:
            tps = [tp for tp in self._parts if tp.topic == topic]
            held = sum(len(self._parts[tp].entries) for tp in tps)
            if held >= self._settings.buffer:
                self._consumer.pause(*tps)
            else:
                self._consumer.resume(*tps)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: ReviewConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._owner._revoked(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._owner._assigned(assigned)
