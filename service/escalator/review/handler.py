"""The review queues as a handler of the engine: :class:`ReviewHandler` implements both the
engine's ``Handler`` (and its ``Holder`` hook) and the page's ``ReviewQueues``.

The console's workers (``assemble.py``) consume the reviews and adjudications topics and
commit through the engine, like the tiers. For each review item, ``handle(record)`` puts the
item in its queue and waits until a person decides it, or until it is found already decided,
or until it has waited so long that it is parked; then it returns the outputs (a result for
the reviews queue, a human decision, or the parked copy), which the engine delivers and
commits. The engine's watermark never passes an undecided item, so a console that crashes or
loses a partition loses nothing: every undecided item comes back, to this console or another.

What comes back may include items decided after the last commit. Each decision names its
item (``review_id``), and the console recognises them: the first items of a newly assigned
partition are shown only after the decisions topic has been read from a little before the
oldest of them, and those already decided are passed without output (counted in
``escalator_review_duplicates_total``). A second decision for the same ``review_id`` at any
later time (a duplicate item, a second reviewer whose lease had expired) is ignored the same
way.

Leases: an item is shown to one reviewer at a time, for ``ESCALATOR_REVIEW_LEASE_S``; an
expired lease returns it to the queue. Leases live in this process's memory only: a restart
returns every leased item to its queue, which is what a reviewer who left would want anyway.
When a partition is revoked its undecided items leave the queue (``handle`` gives them up:
the next owner shows them).

A record on a review topic that is not a review item is a dead letter with its reason, in
the tiers' shape (``contract/messages.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from escalator.config import ParkingSettings, ReviewSettings, Topics
from escalator.contract.messages import propagated_headers
from escalator.contract.reviews import (
    QUEUES,
    Queue,
    ReviewItem,
    Verdict,
    human_decision_value,
    human_result_value,
    parse_review_item,
)
from escalator.engine.dead_letters import dead_letter
from escalator.engine.delivery import Output
from escalator.engine.worker import Record
from escalator.errors import InvalidRequest
from escalator.kafka.retention import TopicRetention
from escalator.observability.logs import log
from escalator.observability.metrics import Metrics
from escalator.observability.tracing import Tracing
from escalator.review import parking
from escalator.review.ledger import DECIDED_MEMORY, Duplicate, Entry, Outcome, Park, SeenIds
from escalator.review.queues import Lease, QueueStat
from escalator.review.queues import Outcome as Said

logger = logging.getLogger("escalator.review")
TIER = "review"
#: How far before the oldest fetched item the recovery scan of the decisions log starts: the
#: item's timestamp is the strong tier's clock, the decision's is this console's.
RECOVERY_SKEW_MS = 5 * 60 * 1000
#: The recovery scan waits this long after a new partition's first item, so that the rest of
#: the fetched batch joins the same scan.
RECOVERY_GATHER_S = 0.05
NOTE_MAX_CHARS = 2000
#: How long a decision waits for the broker's acknowledgement before the page is told it is
#: pending (the engine keeps delivering it: a second try says "duplicate").
DECIDE_WAIT_S = 30.0
#: How often leases expire and the queue metrics are refreshed.
TICK_S = 0.5
#: A partition's position can wait for an offset reset: the metrics do not wait longer.
BACKLOG_WAIT_S = 5.0

#: Review ids of human decisions on the decisions topic since an epoch-ms time, in order.
ReadDecided = Callable[[int], Awaitable[list[str]]]
#: Per owned partition: (records on the broker not fetched yet, the partition's end offset).
Backlog = Callable[[], Awaitable[dict[TopicPartition, tuple[int, int]]]]


@dataclass(slots=True)
class _Part:
    """An owned partition: until its first items are checked against the decisions log
    (``recovered``), none is shown."""

    recovered: bool = False
    first_ms: int | None = None
    scanning: bool = False
    entries: dict[int, Entry] = field(default_factory=dict)


class ReviewHandler:
    """The queues of one console, filled by its workers (one per queue topic)."""

    tier = TIER

    def __init__(
        self,
        *,
        topics: Topics,
        settings: ReviewSettings,
        parking_settings: ParkingSettings,
        metrics: Metrics,
        max_text_chars: int,
        read_decided: ReadDecided,
        retention: Callable[[str], TopicRetention | None] = lambda topic: None,
        tracing: Tracing | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        decide_wait_s: float = DECIDE_WAIT_S,
        tick_s: float = TICK_S,
    ) -> None:
        self._decide_wait_s = decide_wait_s
        self._tick_s = tick_s
        self._topics = topics
        self._settings = settings
        self._parking = parking_settings
        self._metrics = metrics
        self._max_text_chars = max_text_chars
        self._read_decided = read_decided
        self._retention = retention
        self._tracing = tracing or Tracing()
        self._clock = clock
        self._rng = rng or random.Random()
        self.queue_of: dict[str, Queue] = {
            topics.reviews: "review",
            topics.adjudications: "adjudication",
        }
        self._parts: dict[TopicPartition, _Part] = {}
        #: Items whose outcome is set, until the engine has their outputs (by partition and
        #: offset: a partition taken away and given back may hold the same offset twice).
        self._delivering: dict[tuple[TopicPartition, int], Entry] = {}
        self._leases: dict[str, Entry] = {}
        #: Leases whose verdict is being delivered: deciding again is a double submit.
        self._sent: dict[str, Entry] = {}
        self._decided = SeenIds(DECIDED_MEMORY)
        self._lag: dict[TopicPartition, int] = {}
        self._ends: dict[TopicPartition, int] = {}
        self._scan = asyncio.Event()
        self._stopped = False
        self._next_park_check = 0.0
        metrics.review_age_bound.set(settings.max_age_s)

    # -- the engine's side: Handler and Holder -------------------------------------------------
    def should_pause(self) -> bool:
        return False  # the in-flight and uncommitted limits bound what a console holds

    async def handle(self, record: Record) -> list[Output]:
        if self._stopped:
            raise asyncio.CancelledError  # fetched as the console stops: the next owner shows it
        tp = TopicPartition(record.topic, record.partition)
        queue = self.queue_of.get(record.topic, "review")
        headers = propagated_headers(record.headers)
        try:
            item = parse_review_item(record.value, self._max_text_chars)
        except InvalidRequest as exc:
            return self._dead_letter(record, exc, queue)
        part = self._parts.get(tp)
        if part is None:  # fetched before the assignment was heard of
            part = self._parts[tp] = _Part()
        loop = asyncio.get_running_loop()
        entry = Entry(
            item,
            tp,
            record.offset,
            outcome=loop.create_future(),
            delivered=loop.create_future(),
            key=record.key,
            headers=headers,
            timestamp_ms=getattr(record, "timestamp", 0),
            raw=record.value,
            raw_headers=list(record.headers or ()),
        )
        part.entries[record.offset] = entry
        if part.recovered:
            self._show(entry)
        else:
            part.first_ms = min(part.first_ms or entry.timestamp_ms, entry.timestamp_ms)
            self._scan.set()
        try:
            outcome = await entry.outcome
        finally:
            if part.entries.get(record.offset) is entry:
                del part.entries[record.offset]
            self._drop_lease(entry)
        return self._outputs(entry, outcome)

    def assigned(self, partitions: set[TopicPartition]) -> None:
        for tp in partitions:
            self._parts.setdefault(tp, _Part())

    def revoking(self, partitions: set[TopicPartition]) -> None:
        """Their undecided items leave the queue (their leases end, expired ones too: a stale
        lease must not decide an item that comes back as a new entry); decisions being
        delivered finish, and the revocation's commit counts them."""
        for tp in partitions:
            part = self._parts.pop(tp, None)
            if part is not None:
                self._give_up(part.entries.values())
            self._lag.pop(tp, None)
            self._ends.pop(tp, None)

    def delivered(self, tp: TopicPartition, offset: int) -> None:
        entry = self._delivering.pop((tp, offset), None)
        if entry is None:
            return
        outcome = entry.outcome.result()
        if entry.sent_as is not None:
            self._sent.pop(entry.sent_as, None)
        if isinstance(outcome, Verdict):
            self._decided.add(entry.item.review_id)
            # Here, not in decide(): a decision that was 'pending' there is logged when it lands.
            item = entry.item
            self._metrics.review_seconds.labels(item.queue).observe(outcome.seconds)
            log(logger, "review_decided", queue=item.queue, id=item.request.id,
                reviewer=outcome.reviewer, verdict=outcome.label or "neither",
                seconds=round(outcome.seconds, 3))  # fmt: skip
        elif isinstance(outcome, Park):
            self._metrics.parked.labels(TIER, tp.topic).inc()
            log(logger, "review_item_parked", logging.WARNING, queue=entry.item.queue,
                id=entry.item.request.id, partition=f"{tp.topic}-{tp.partition}",
                offset=offset, retention_used=round(outcome.share, 3))  # fmt: skip
        if entry.spans is not None:
            entry.spans.end()
        if not entry.delivered.done():
            entry.delivered.set_result(None)

    def stop(self) -> None:
        """The console stops: every undecided item is given up (it comes back to the next
        owner); decisions being delivered finish in the engine's drain."""
        self._stopped = True
        for part in self._parts.values():
            self._give_up(part.entries.values())

    def close(self) -> None:
        """The workers have stopped: a decision still waiting for its delivery never gets it."""
        for entry in self._delivering.values():
            if not entry.delivered.done():
                entry.delivered.cancel()
            if entry.spans is not None:
                entry.spans.end(asyncio.CancelledError())
        self._delivering.clear()
        self._sent.clear()

    def _give_up(self, entries: Iterable[Entry]) -> None:
        for entry in list(entries):
            if not entry.outcome.done():
                entry.outcome.cancel()
            self._drop_lease(entry)

    def _show(self, entry: Entry) -> None:
        """The item joins its queue, unless it was decided already."""
        if self._decided.seen(entry.item.review_id):
            self._settle(entry, Duplicate())
            self._metrics.review_duplicates.labels(entry.item.queue).inc()
        else:
            entry.shown = True

    def _settle(self, entry: Entry, outcome: Outcome) -> None:
        entry.outcome.set_result(outcome)
        self._delivering[entry.key_of] = entry
        self._drop_lease(entry)

    def _drop_lease(self, entry: Entry) -> None:
        if entry.lease is not None:
            self._leases.pop(entry.lease.id, None)
            entry.lease = None

    def _outputs(self, entry: Entry, outcome: Outcome) -> list[Output]:
        if isinstance(outcome, Duplicate):
            return []
        if isinstance(outcome, Park):
            return [
                parking.parked_copy(
                    entry, outcome.share, parked_topic=self._topics.parked, now_s=self._clock()
                )
            ]
        item = entry.item
        key = entry.key or item.request.id.encode()
        source = f"{entry.tp.topic}/{entry.tp.partition}/{entry.offset}"
        spans = entry.spans = self._tracing.decision(
            entry.headers,
            topic=entry.tp.topic,
            partition=entry.tp.partition,
            offset=entry.offset,
            group=self._settings.group,
            queue=item.queue,
        )
        outputs = []
        # The result first, then the decision (the recovery scan skips items with a decision).
        # Exactly-once they commit together; at-least-once the engine sends both and resends
        # each until acknowledged, so a decision can precede its result only while a failed
        # result is being resent; the scan then wants the result too (assemble.py,
        # read_decided; docs/CONTRACT.md, "Human decision").
        if item.queue == "review":
            topic = self._topics.results
            headers = spans.headers(topic, entry.headers)
            outputs.append(Output(topic, human_result_value(item, outcome), key, headers))
        topic = self._topics.decisions
        decision = human_decision_value(item, outcome, source)
        outputs.append(Output(topic, decision, key, spans.headers(topic, [])))
        return outputs

    def _dead_letter(self, record: Record, error: InvalidRequest, queue: str) -> list[Output]:
        """Like the tiers' (engine/dead_letters.py), counted per queue."""
        self._metrics.review_invalid_items.labels(queue).inc()
        return [
            dead_letter(record, error, tier=TIER, topic=self._topics.dead_letter, logger=logger)
        ]

    # -- beside the workers: recovery, leases, metrics, parking --------------------------------
    async def run(self, backlog: Backlog) -> None:
        """Until cancelled: recovery scans as partitions arrive; every tick, expire leases
        and refresh the queue metrics; every ESCALATOR_RETENTION_CHECK_S, park what must be."""
        scans = asyncio.create_task(self._recover_forever(), name="review-recovery")
        try:
            while True:
                await self.tick(backlog)
                await asyncio.sleep(self._tick_s)
        finally:
            scans.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await scans

    async def tick(self, backlog: Backlog) -> None:
        self._expire()
        try:
            async with asyncio.timeout(BACKLOG_WAIT_S):
                found = await backlog()
        except (KafkaError, OSError, TimeoutError) as exc:
            log(logger, "review_backlog_unknown", logging.WARNING, error=repr(exc))
            found = {}
        for tp, (lag, end) in found.items():
            if tp in self._parts:
                self._lag[tp], self._ends[tp] = lag, end
        for stat in self.stats():
            self._metrics.review_depth.labels(stat.queue).set(stat.depth)
            self._metrics.review_leased.labels(stat.queue).set(stat.leased)
            self._metrics.review_oldest_age.labels(stat.queue).set(stat.oldest_age_s or 0.0)
        if self._parking.enabled and self._clock() >= self._next_park_check:
            self._next_park_check = self._clock() + self._parking.check_s
            self._park_old()

    async def _recover_forever(self) -> None:
        while True:
            await self._scan.wait()
            await asyncio.sleep(RECOVERY_GATHER_S)
            self._scan.clear()
            try:
                await self.recover()
            except (KafkaError, OSError) as exc:
                log(logger, "review_recovery_failed", logging.WARNING, error=repr(exc))
                self._scan.set()
                await asyncio.sleep(1.0)

    async def recover(self) -> None:
        """Read the decisions log for the partitions whose first items wait to be shown;
        then show them, less those already decided."""
        waiting = [
            (tp, p)
            for tp, p in self._parts.items()
            if not p.recovered and not p.scanning and p.first_ms is not None
        ]
        if not waiting:
            return
        since = min(p.first_ms or 0 for _, p in waiting) - RECOVERY_SKEW_MS
        for _, p in waiting:
            p.scanning = True
        try:
            found = await self._read_decided(since)
        finally:
            for _, p in waiting:
                p.scanning = False
        for review_id in found:
            self._decided.add(review_id)
        for tp, part in waiting:
            if self._parts.get(tp) is not part:
                continue  # revoked meanwhile
            part.recovered = True
            for entry in sorted(part.entries.values(), key=lambda e: e.offset):
                if not entry.shown and not entry.deciding:
                    self._show(entry)
        log(logger, "review_recovered", partitions=len(waiting), decided=len(self._decided))

    def _park_old(self) -> None:
        """Undecided items past ESCALATOR_PARK_AT of their topic's retention: parked."""
        now_ms = self._clock() * 1000
        for tp, part in self._parts.items():
            retention = self._retention(tp.topic)
            end = self._ends.get(tp)
            if retention is None or end is None:
                continue
            per_record = parking.bytes_per_record(part.entries.values())
            for entry in sorted(part.entries.values(), key=lambda e: e.offset):
                if not entry.shown or entry.deciding:
                    continue
                share = parking.share_used(
                    entry, retention, end=end, per_record=per_record, now_ms=now_ms
                )
                if share >= self._parking.park_at:
                    self._settle(entry, Park(share))

    # -- the page's side: ReviewQueues ---------------------------------------------------------
    def _waiting(self, queue: Queue) -> list[Entry]:
        return [
            e
            for p in self._parts.values()
            for e in p.entries.values()
            if e.item.queue == queue and e.shown and not e.deciding
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
            lag = sum(n for tp, n in self._lag.items() if self.queue_of.get(tp.topic) == queue)
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
            if entry.lease is not None and entry.lease.reviewer == reviewer:
                return entry.lease
        free = [e for e in waiting if e.lease is None]
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
            if entry.deciding or (lease is not None and lease.id != lease_id):
                self._leases.pop(lease_id, None)  # decided or given up, or taken by another
            elif lease is not None and lease.expires_ms <= now_ms:
                # Back to the queue; the reviewer's decision still counts if nobody else has
                # taken the item meanwhile (decide checks). The lease id stays known for that.
                entry.lease = None
                self._metrics.review_leases_expired.labels(entry.item.queue).inc()

    def _entry_of(self, lease_id: str) -> Entry | None:
        """The entry a lease was given for, if it is still this console's (not revoked)."""
        entry = self._leases.get(lease_id)
        if entry is None:
            return None
        part = self._parts.get(entry.tp)
        if part is None or part.entries.get(entry.offset) is not entry:
            return None
        return entry

    async def decide(
        self, lease_id: str, reviewer: str, label: str | None, note: str | None
    ) -> Said:
        sent = self._sent.get(lease_id)
        if sent is not None:
            return self._count(sent.item.queue, reviewer, "duplicate")  # a double submit
        entry = self._entry_of(lease_id)
        if entry is None:
            return self._count("review", reviewer, "lost")  # its partition moved meanwhile
        item = entry.item
        if entry.deciding:
            outcome = entry.outcome.result()
            if isinstance(outcome, Park):
                return self._count(item.queue, reviewer, "lost")  # parked: near its retention
            return self._count(item.queue, reviewer, "duplicate")  # a double submit
        if self._decided.seen(item.review_id):
            # Decided already (another copy of the same item): this copy is done too, so
            # that it leaves the queue and the watermark passes it.
            self._settle(entry, Duplicate())
            self._metrics.review_duplicates.labels(item.queue).inc()
            return self._count(item.queue, reviewer, "duplicate")
        held = entry.lease
        if held is not None and held.id != lease_id:
            return self._count(item.queue, reviewer, "lost")  # expired and taken by another
        if label is not None and label not in item.labels:
            return self._count(item.queue, reviewer, "invalid")
        shown = held.shown_ms if held is not None else int(self._clock() * 1000)
        verdict = Verdict(
            reviewer=reviewer,
            label=label,
            note=(note or "").strip()[:NOTE_MAX_CHARS] or None,
            seconds=max(0.0, self._clock() - shown / 1000),
        )
        self._leases.pop(lease_id, None)
        self._settle(entry, verdict)
        self._sent[lease_id] = entry
        entry.sent_as = lease_id
        try:
            async with asyncio.timeout(self._decide_wait_s):
                await asyncio.shield(entry.delivered)
        except asyncio.CancelledError:
            if not entry.delivered.cancelled():
                raise
            return self._count(item.queue, reviewer, "lost")  # the console stopped first
        except TimeoutError:
            # Not lost: the engine keeps the verdict and delivers it once the broker answers
            # (review_decided is logged then). If the console stops first the item comes back,
            # and is shown again unless the broker had in fact recorded the decision.
            log(logger, "review_decision_pending", logging.WARNING, queue=item.queue,
                id=item.request.id, reviewer=reviewer, waited_s=self._decide_wait_s)  # fmt: skip
            return self._count(item.queue, reviewer, "pending")
        return self._count(item.queue, reviewer, "done")

    def _count(self, queue: str, reviewer: str, outcome: Said) -> Said:
        self._metrics.review_decisions.labels(queue, reviewer, outcome).inc()
        return outcome
