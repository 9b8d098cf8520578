"""Consume, dispatch, produce, commit: the at-least-once engine shared by both tiers.

One :class:`TierWorker` owns one consumer in one group. It polls continuously (so it never
drifts past ``max_poll_interval_ms``), runs each record as a task under a global in-flight
limit, pauses partitions when that limit is reached or the breaker is open, and commits per
partition at the *watermark*: the highest offset below which every record's output has been
acknowledged by the broker (``acks=all``, idempotent producer). Nothing is committed early, so
a crash can repeat work (bounded by the in-flight window and counted) but never lose it.

What to do with a record is the job of a :class:`Handler` (``tiers.py``): it returns the
outputs to produce. The worker produces them, waits for the acknowledgements, then marks the
offset done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from escalator.logs import log
from escalator.messages import Headers
from escalator.metrics import Metrics

logger = logging.getLogger("escalator.pipeline")


@dataclass(frozen=True, slots=True)
class Output:
    topic: str
    value: bytes
    key: bytes | None
    headers: Headers = field(default_factory=list)


class Record(Protocol):
    """The parts of aiokafka's ConsumerRecord a handler reads."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Any


class Handler(Protocol):
    tier: str

    async def handle(self, record: Record) -> list[Output]:
        """Outputs for one record. Must not raise except CancelledError."""
        ...

    def should_pause(self) -> bool:
        """True while the tier must not take new work (the breaker is open)."""
        ...


class PartitionTracker:
    """Offsets dispatched on one partition, and the watermark below which all are done."""

    __slots__ = ("committable", "committed", "done", "idle", "pending")

    def __init__(self) -> None:
        self.pending: deque[int] = deque()
        self.done: set[int] = set()
        self.committable: int | None = None
        self.committed: int | None = None
        self.idle = asyncio.Event()
        self.idle.set()

    @property
    def in_flight(self) -> int:
        return len(self.pending) - len(self.done)

    def add(self, offset: int) -> None:
        self.pending.append(offset)
        self.idle.clear()

    def complete(self, offset: int) -> None:
        self.done.add(offset)
        while self.pending and self.pending[0] in self.done:
            first = self.pending.popleft()
            self.done.discard(first)
            self.committable = first + 1
        if not self.pending:
            self.idle.set()

    def to_commit(self) -> int | None:
        if self.committable is not None and self.committable != self.committed:
            return self.committable
        return None


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    max_in_flight: int = 64
    commit_interval_s: float = 2.0
    shutdown_grace_s: float = 25.0
    revoke_wait_s: float = 10.0
    poll_timeout_ms: int = 100
    max_poll_interval_ms: int = 300_000


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: TierWorker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._worker.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._worker.on_assigned(set(assigned))


class TierWorker:
    """One consumer-group member: poll -> dispatch -> produce -> ack -> commit."""

    def __init__(
        self,
        *,
        topic: str,
        consumer: AIOKafkaConsumer,
        producer: Callable[[], AIOKafkaProducer],
        handler: Handler,
        metrics: Metrics,
        options: WorkerOptions,
    ) -> None:
        self.topic = topic
        self.tier = handler.tier
        self._consumer = consumer
        self._producer = producer
        self._handler = handler
        self._metrics = metrics
        self._series = metrics.tier(self.tier)
        self._opts = options
        self.max_in_flight = options.max_in_flight
        self._trackers: dict[TopicPartition, PartitionTracker] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight = 0
        self._stopping = asyncio.Event()
        self._joined = asyncio.Event()
        self._last_commit = time.monotonic()
        self._capacity = asyncio.Event()
        # A record holds a model slot until its answer is in, then waits for its outputs'
        # acknowledgements outside the slot: the limit protects the model API, and a slot that
        # idles through a produce round trip is lost throughput (B3). Records awaiting acks
        # are bounded too, at four times the limit; both count towards the duplicate window.
        self._awaiting_ack = 0
        self.max_pending = 4 * self.max_in_flight
        self._paused = False
        self._keepalive_s = min(5.0, options.max_poll_interval_ms / 4000)
        # Read at scrape time: no per-record cost on the hot path.
        self._series.in_flight.set_function(lambda: self._in_flight)
        self._series.awaiting_ack.set_function(lambda: self._awaiting_ack)
        self._series.in_flight_limit.set(self.max_in_flight)

    # -- state visible to health checks and tests ---------------------------------------------
    @property
    def joined(self) -> bool:
        return self._joined.is_set()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def stop(self) -> None:
        """Ask the worker to stop fetching and drain (idempotent; safe from a signal handler)."""
        self._stopping.set()
        self._capacity.set()

    async def wait_joined(self) -> None:
        await self._joined.wait()

    # -- main loop ------------------------------------------------------------------------------
    async def run(self) -> None:
        self._consumer.subscribe([self.topic], listener=_Listener(self))
        await self._consumer.start()
        try:
            while not self._stopping.is_set():
                await self._poll_once()
                if time.monotonic() - self._last_commit >= self._opts.commit_interval_s:
                    await self._commit()
            await self._drain(self._opts.shutdown_grace_s)
            await self._commit()
        finally:
            await self._cancel_remaining()
            self._series.ready.set(0)
            await self._consumer.stop()  # leaves the group
            log(logger, "worker_stopped", tier=self.tier)

    async def _poll_once(self) -> None:
        if self._handler.should_pause():
            # The breaker is open: take no new work, but keep polling so the group keeps us.
            self._set_paused(True)
            self._dispatch(await self._consumer.getmany(timeout_ms=self._opts.poll_timeout_ms))
            return
        free = min(
            self.max_in_flight - self._in_flight,
            self.max_pending - self._in_flight - self._awaiting_ack,
        )
        if free <= 0:
            # Full. Wait for a slot without pausing: pausing makes aiokafka drop the records it
            # has prefetched. Only if no slot frees up for a while (a slow model), pause and
            # poll empty-handed, so the member never drifts past max_poll_interval_ms.
            self._capacity.clear()
            try:
                await asyncio.wait_for(self._capacity.wait(), self._keepalive_s)
            except TimeoutError:
                self._set_paused(True)
                self._dispatch(await self._consumer.getmany(timeout_ms=0))
            return
        self._set_paused(False)
        self._dispatch(
            await self._consumer.getmany(timeout_ms=self._opts.poll_timeout_ms, max_records=free)
        )

    def _dispatch(self, batch: dict[TopicPartition, list[Any]]) -> None:
        for tp, records in batch.items():
            tracker = self._trackers.get(tp)
            if tracker is None:
                continue  # not (or no longer) ours: the new owner reads from the committed offset
            for record in records:
                tracker.add(record.offset)
                self._in_flight += 1
                self._series.requests.inc()
                task = asyncio.create_task(self._process(tp, tracker, record))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _set_paused(self, pause: bool) -> None:
        assignment = self._consumer.assignment()
        paused = self._consumer.paused()
        if pause and assignment - paused:
            self._consumer.pause(*(assignment - paused))
        elif not pause and paused:
            self._consumer.resume(*paused)
        if pause != self._paused:
            self._paused = pause
            self._series.paused_partitions.set(len(assignment) if pause else 0)
            self._series.circuit_open.set(1 if self._handler.should_pause() else 0)

    async def _process(self, tp: TopicPartition, tracker: PartitionTracker, record: Any) -> None:
        started = time.perf_counter()
        holds_slot = True
        try:
            outputs = await self._handler.handle(record)
            self._release_slot()
            holds_slot = False
            self._awaiting_ack += 1
            try:
                await self._produce_all(outputs)
            finally:
                self._awaiting_ack -= 1
                self._capacity.set()
        except asyncio.CancelledError:
            # Not done: the offset stays uncommitted and the record is redone by whoever owns
            # the partition next. That is the duplicate window, and it is counted.
            self._series.abandoned.inc()
            raise
        finally:
            if holds_slot:
                self._release_slot()
        # Only here, after every output is acknowledged, does the offset count as done.
        tracker.complete(record.offset)
        self._series.processing.observe(time.perf_counter() - started)

    def _release_slot(self) -> None:
        self._in_flight -= 1
        self._capacity.set()

    async def _produce_all(self, outputs: list[Output]) -> None:
        """Send every output, then wait for every acknowledgement. Retries until acknowledged."""
        producer = self._producer()
        pending: list[tuple[Output, Any]] = []
        for out in outputs:
            try:
                fut = await producer.send(out.topic, out.value, key=out.key, headers=out.headers)
            except KafkaError as exc:
                fut = None
                self._produce_failed(exc)
            pending.append((out, fut))
        for out, fut in pending:
            if fut is not None:
                try:
                    await fut
                    continue
                except KafkaError as exc:
                    # The idempotent producer retried internally and gave up.
                    self._produce_failed(exc)
            await self._resend(out)

    def _produce_failed(self, exc: KafkaError) -> None:
        self._series.produce_errors.inc()
        log(logger, "produce_failed", logging.WARNING, tier=self.tier, error=repr(exc))

    async def _resend(self, out: Output) -> None:
        """The slow path: send one output again, with backoff, until it is acknowledged."""
        delay = 0.1
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            try:
                fut = await self._producer().send(
                    out.topic, out.value, key=out.key, headers=out.headers
                )
                await fut
            except KafkaError as exc:
                self._produce_failed(exc)
            else:
                return

    # -- commits ----------------------------------------------------------------------------------
    async def _commit(self, only: set[TopicPartition] | None = None) -> None:
        self._last_commit = time.monotonic()
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for tp, tracker in self._trackers.items():
            if only is not None and tp not in only:
                continue
            offset = tracker.to_commit()
            if offset is not None:
                offsets[tp] = OffsetAndMetadata(offset, "")
        if offsets:
            try:
                await self._consumer.commit(offsets)
            except (CommitFailedError, IllegalStateError) as exc:
                # The group moved on: these partitions are lost to us. Their uncommitted
                # records will be redone by the new owner (at-least-once), not dropped.
                self._metrics.commits.labels(self.tier, "failed").inc()
                log(
                    logger,
                    "commit_failed_partition_lost",
                    logging.WARNING,
                    tier=self.tier,
                    error=repr(exc),
                )
                return
            except KafkaError as exc:
                self._metrics.commits.labels(self.tier, "retry").inc()
                log(
                    logger,
                    "commit_failed_will_retry",
                    logging.WARNING,
                    tier=self.tier,
                    error=repr(exc),
                )
                return
            for tp, meta in offsets.items():
                owned = self._trackers.get(tp)
                if owned is not None:
                    owned.committed = meta.offset
            self._metrics.commits.labels(self.tier, "ok").inc()
        self._update_lag()

    def _update_lag(self) -> None:
        for tp, tracker in self._trackers.items():
            try:
                high = self._consumer.highwater(tp)
            except IllegalStateError:
                continue
            if high is not None and tracker.committed is not None:
                self._metrics.commit_lag.labels(self.tier, tp.topic, str(tp.partition)).set(
                    max(0, high - tracker.committed)
                )

    # -- rebalances -----------------------------------------------------------------------------
    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        for tp in assigned:
            self._trackers.setdefault(tp, PartitionTracker())
        self._metrics.rebalances.labels(self.tier, "assigned").inc()
        self._series.ready.set(1)
        self._joined.set()
        log(
            logger,
            "partitions_assigned",
            tier=self.tier,
            partitions=sorted(f"{tp.topic}-{tp.partition}" for tp in assigned),
        )

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Wait (bounded) for in-flight work on the revoked partitions, commit, let go."""
        self._metrics.rebalances.labels(self.tier, "revoked").inc()
        trackers = [self._trackers[tp] for tp in revoked if tp in self._trackers]
        waits = [asyncio.create_task(t.idle.wait()) for t in trackers]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=self._opts.revoke_wait_s)
            for w in pending:
                w.cancel()
        await self._commit(only=revoked)
        for tp in revoked:
            tracker = self._trackers.pop(tp, None)
            if tracker is not None and tracker.in_flight:
                self._series.abandoned.inc(tracker.in_flight)
            with contextlib.suppress(KeyError):
                self._metrics.commit_lag.remove(self.tier, tp.topic, str(tp.partition))
        log(
            logger,
            "partitions_revoked",
            tier=self.tier,
            partitions=sorted(f"{tp.topic}-{tp.partition}" for tp in revoked),
        )

    # -- shutdown -------------------------------------------------------------------------------
    async def _drain(self, grace_s: float) -> None:
        if self._tasks:
            log(logger, "draining", tier=self.tier, in_flight=len(self._tasks), grace_s=grace_s)
            await asyncio.wait(set(self._tasks), timeout=grace_s)

    async def _cancel_remaining(self) -> None:
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
