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
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError, ProducerFenced
from aiokafka.structs import OffsetAndMetadata

from escalator.contract.messages import Headers
from escalator.kafka.clients import ProducerHandle
from escalator.model.limits import AdaptiveLimit
from escalator.observability.logs import log
from escalator.observability.metrics import Metrics

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

    __slots__ = ("committable", "committed", "done", "finished", "idle", "outputs", "pending")

    def __init__(self) -> None:
        self.pending: deque[int] = deque()
        self.done: set[int] = set()
        self.committable: int | None = None
        self.committed: int | None = None
        # At-least-once: records below the watermark whose offset is not committed yet.
        self.finished = 0
        # Exactly-once only: outputs held until their transaction commits, by input offset.
        self.outputs: dict[int, list[Output]] = {}
        self.idle = asyncio.Event()
        self.idle.set()

    @property
    def in_flight(self) -> int:
        return len(self.pending) - len(self.done)

    def add(self, offset: int) -> None:
        self.pending.append(offset)
        self.idle.clear()

    def complete(self, offset: int) -> int:
        """Mark ``offset`` done; return how many offsets became committable."""
        self.done.add(offset)
        popped = 0
        while self.pending and self.pending[0] in self.done:
            first = self.pending.popleft()
            self.done.discard(first)
            self.committable = first + 1
            popped += 1
        if not self.pending:
            self.idle.set()
        return popped

    def to_commit(self) -> int | None:
        if self.committable is not None and self.committable != self.committed:
            return self.committable
        return None


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    max_in_flight: int = 64
    #: Records dispatched but not yet committed, at most (the duplicate window of a crash).
    max_uncommitted: int = 256
    commit_interval_s: float = 2.0
    shutdown_grace_s: float = 25.0
    revoke_wait_s: float = 10.0
    poll_timeout_ms: int = 100
    max_poll_interval_ms: int = 300_000
    #: "exactly_once": outputs and input offsets commit in one transaction per partition.
    exactly_once: bool = False
    group_id: str = ""


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: TierWorker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._worker.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._worker.on_assigned(set(assigned))


class TierWorker:
    """One consumer-group member: poll -> dispatch -> produce -> ack -> commit."""

    def __init__(
        self,
        *,
        topic: str,
        consumer: AIOKafkaConsumer,
        producer: ProducerHandle,
        handler: Handler,
        metrics: Metrics,
        options: WorkerOptions,
        limit: AdaptiveLimit | None = None,
        transactional_producer: Callable[[TopicPartition], AIOKafkaProducer] | None = None,
    ) -> None:
        self.topic = topic
        self.tier = handler.tier
        self._consumer = consumer
        self._producer = producer
        self._handler = handler
        self._metrics = metrics
        self._series = metrics.tier(self.tier)
        self._opts = options
        self.limit = limit or AdaptiveLimit(options.max_in_flight, enabled=False)
        self._trackers: dict[TopicPartition, PartitionTracker] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight = 0
        self._stopping = asyncio.Event()
        self._joined = asyncio.Event()
        self._last_commit = time.monotonic()
        self._capacity = asyncio.Event()
        # A record holds a model slot until its answer is in, then waits for its outputs'
        # acknowledgements outside the slot: the limit protects the model API, and a slot that
        # idles through a produce round trip is lost throughput (B3). Every record dispatched
        # and not yet committable counts against max_uncommitted: in flight, awaiting acks,
        # or done above a slower record. With the records committable but not yet committed
        # (a commit is forced once there are max_in_flight of them), that bounds what a crash
        # can make the next owner redo.
        self._awaiting_ack = 0
        self._pending = 0
        # Exactly-once: answered records whose outputs wait for their transaction.
        self._held = 0
        self._uncommitted_done = 0
        # At-least-once: records done but not yet covered by a successful commit (the sum of
        # the trackers' `finished`). Commits run beside the poll loop, so records keep being
        # dispatched while one is in flight; this count keeps the duplicate window bounded.
        self._finished = 0
        self.max_pending = options.max_uncommitted
        self._paused = False
        self._keepalive_s = min(5.0, options.max_poll_interval_ms / 4000)
        self._eos = options.exactly_once
        self._txn_factory = transactional_producer
        self._txn_producers: dict[TopicPartition, AIOKafkaProducer] = {}
        self._txn_locks: dict[TopicPartition, asyncio.Lock] = {}
        self._fatal: BaseException | None = None
        self._commit_task: asyncio.Task[None] | None = None
        # Exactly-once: assigned partitions whose transactional producer is not started yet.
        self._not_ready: set[TopicPartition] = set()
        if self._eos and transactional_producer is None:
            raise ValueError("exactly_once needs a transactional producer factory")
        # Read at scrape time: no per-record cost on the hot path.
        self._series.in_flight.set_function(lambda: self._in_flight)
        self._series.awaiting_ack.set_function(lambda: self._awaiting_ack)
        self._series.uncommitted.set_function(
            lambda: self._pending + (self._held if self._eos else self._finished)
        )
        self._series.in_flight_limit.set_function(lambda: self.limit.limit)
        self._series.circuit_open.set_function(lambda: 1 if handler.should_pause() else 0)

    @property
    def duplicate_window(self) -> int:
        """The most records a crash of this worker can make the next owner redo."""
        return self.max_pending + self._opts.max_in_flight

    # -- state visible to health checks and tests ---------------------------------------------
    @property
    def joined(self) -> bool:
        return self._joined.is_set()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def partition_share(self) -> float:
        """This member's share of its topic's partitions (1.0 before it knows): how the
        admission controller splits a deployment-wide cap without talking to other pods."""
        owned = sum(1 for tp in self._trackers if tp.topic == self.topic)
        try:
            total = self._consumer.partitions_for_topic(self.topic)
        except (IllegalStateError, AssertionError):
            total = None
        if not owned or not total:
            return 1.0
        return min(1.0, owned / len(total))

    def stop(self) -> None:
        """Ask the worker to stop fetching and drain (idempotent; safe from a signal handler)."""
        self._stopping.set()
        self._capacity.set()

    async def wait_joined(self) -> None:
        await self._joined.wait()

    async def discard(self) -> None:
        """Close the consumer of a worker that will never run (start-up failed)."""
        await self._consumer.stop()

    # -- main loop ------------------------------------------------------------------------------
    async def run(self) -> None:
        self._consumer.subscribe([self.topic], listener=_Listener(self))
        await self._consumer.start()
        try:
            while not self._stopping.is_set():
                await self._poll_once()
                if self._commit_due() and self._commit_idle():
                    # A commit (a round trip, or a transaction's several) runs beside the poll
                    # loop, one at a time: awaited here it would leave freed model slots idle
                    # until it returned (B1, B3). aiokafka's commit lock keeps commits in order.
                    self._last_commit = time.monotonic()
                    self._uncommitted_done = 0
                    self._commit_task = asyncio.create_task(self._commit())
            await self._drain(self._opts.shutdown_grace_s)
            if self._commit_task is not None:
                await self._commit_task
            await self._commit()
        finally:
            await self._cancel_remaining()
            self._series.ready.set(0)
            await self._consumer.stop()  # leaves the group
            await self._close_transactional(set(self._txn_producers))
            log(logger, "worker_stopped", tier=self.tier)
        if self._fatal is not None:
            raise self._fatal

    def _commit_idle(self) -> bool:
        task = self._commit_task
        if task is None:
            return True
        if not task.done():
            return False
        task.result()  # a commit that raised (not a KafkaError: those are handled) stops us
        return True

    def _commit_due(self) -> bool:
        return (
            self._uncommitted_done >= self._opts.max_in_flight
            or time.monotonic() - self._last_commit >= self._opts.commit_interval_s
        )

    async def _poll_once(self) -> None:
        if self._handler.should_pause():
            # The breaker is open: take no new work, but keep polling so the group keeps us.
            self._set_paused(True)
            self._dispatch(await self._consumer.getmany(timeout_ms=self._opts.poll_timeout_ms))
            return
        # Done-but-uncommitted records beyond the max_in_flight that force a commit take
        # from the dispatch budget, so a slow commit cannot widen the duplicate window.
        excess = max(0, self._finished - self._opts.max_in_flight)
        free = min(
            self.limit.limit - self._in_flight,
            self.max_pending - self._pending - self._held - excess,
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
            if tracker is None or tp in self._not_ready:
                if records and tp in self._consumer.assignment():
                    # Ours, but not ready yet (its transactional producer is starting): fetch
                    # these again later rather than skip them.
                    self._consumer.seek(tp, records[0].offset)
                continue  # not (or no longer) ours: the new owner reads from the committed offset
            for record in records:
                tracker.add(record.offset)
                self._in_flight += 1
                self._pending += 1
                self._series.requests.inc()
                task = asyncio.create_task(self._process(tp, tracker, record))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _set_paused(self, pause: bool) -> None:
        assignment = self._consumer.assignment()
        paused = self._consumer.paused()
        if pause and assignment - paused:
            self._consumer.pause(*(assignment - paused))
        elif not pause and paused - self._not_ready:
            self._consumer.resume(*(paused - self._not_ready))
        if pause != self._paused:
            self._paused = pause
            self._series.paused_partitions.set(len(assignment) if pause else 0)

    async def _process(self, tp: TopicPartition, tracker: PartitionTracker, record: Any) -> None:
        started = time.perf_counter()
        holds_slot = True
        try:
            outputs = await self._handler.handle(record)
            self._release_slot()
            holds_slot = False
            if self._eos:
                # Produced and committed with the offsets, in the partition's next transaction.
                if self._trackers.get(tp) is tracker:  # not revoked meanwhile
                    tracker.outputs[record.offset] = outputs
                    self._held += 1
            else:
                self._awaiting_ack += 1
                try:
                    await self._produce_all(outputs)
                finally:
                    self._awaiting_ack -= 1
        except asyncio.CancelledError:
            # Not done: the offset stays uncommitted and the record is redone by whoever owns
            # the partition next. That is the duplicate window, and it is counted.
            self._series.abandoned.inc()
            raise
        finally:
            if holds_slot:
                self._release_slot()
        # Only here, after every output is acknowledged, does the offset count as done.
        if self._trackers.get(tp) is tracker:
            popped = tracker.complete(record.offset)
            self._pending -= popped
            self._uncommitted_done += popped
            if not self._eos:
                tracker.finished += popped
                self._finished += popped
        self._capacity.set()
        self._series.processing.observe(time.perf_counter() - started)

    def _release_slot(self) -> None:
        self._in_flight -= 1
        self._capacity.set()

    async def _produce_all(self, outputs: list[Output]) -> None:
        """Send every output, then wait for every acknowledgement. Retries until acknowledged."""
        producer = self._producer.get()
        pending: list[tuple[Output, Any]] = []
        for out in outputs:
            try:
                fut = await producer.send(out.topic, out.value, key=out.key, headers=out.headers)
            except KafkaError as exc:
                fut = None
                await self._produce_failed(exc, producer)
            pending.append((out, fut))
        for out, fut in pending:
            if fut is not None:
                try:
                    await fut
                    continue
                except KafkaError as exc:
                    # The idempotent producer retried internally and gave up.
                    await self._produce_failed(exc, producer)
            await self._resend(out)

    async def _produce_failed(self, exc: KafkaError, producer: AIOKafkaProducer) -> None:
        self._series.produce_errors.inc()
        log(logger, "produce_failed", logging.WARNING, tier=self.tier, error=repr(exc))
        with contextlib.suppress(KafkaError):
            await self._producer.repair(exc, failed=producer)

    async def _resend(self, out: Output) -> None:
        """The slow path: send one output again, with backoff, until it is acknowledged."""
        delay = 0.1
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            producer = self._producer.get()
            try:
                fut = await producer.send(out.topic, out.value, key=out.key, headers=out.headers)
                await fut
            except KafkaError as exc:
                await self._produce_failed(exc, producer)
            else:
                return

    # -- commits ----------------------------------------------------------------------------------
    async def _commit(self, only: set[TopicPartition] | None = None) -> None:
        self._last_commit = time.monotonic()
        self._uncommitted_done = 0
        if not self._producer.healthy():
            # The sender died between sends (aiokafka issue 1017): replace it now, not after
            # the next send times out.
            with contextlib.suppress(KafkaError):
                await self._producer.repair()
        if self._eos:
            await self._commit_transactions(only)
        else:
            await self._commit_offsets(only)
        self._update_lag()

    def _due(self, only: set[TopicPartition] | None) -> dict[TopicPartition, int]:
        due: dict[TopicPartition, int] = {}
        for tp, tracker in self._trackers.items():
            if only is not None and tp not in only:
                continue
            offset = tracker.to_commit()
            if offset is not None:
                due[tp] = offset
        return due

    async def _commit_offsets(self, only: set[TopicPartition] | None) -> None:
        offsets = {tp: OffsetAndMetadata(o, "") for tp, o in self._due(only).items()}
        if not offsets:
            return
        # What this commit covers, taken with the offsets, before the await.
        covered = [(tp, self._trackers[tp], self._trackers[tp].finished) for tp in offsets]
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
                logger, "commit_failed_will_retry", logging.WARNING, tier=self.tier, error=repr(exc)
            )
            return
        for tp, tracker, finished in covered:
            tracker.committed = offsets[tp].offset
            tracker.finished -= finished
            if self._trackers.get(tp) is tracker:  # not dropped (revoked) meanwhile
                self._finished -= finished
        self._capacity.set()
        self._metrics.commits.labels(self.tier, "ok").inc()

    async def _commit_transactions(self, only: set[TopicPartition] | None) -> None:
        due = self._due(only)
        if due:
            await asyncio.gather(*(self._commit_partition(tp) for tp in due))

    async def _commit_partition(self, tp: TopicPartition) -> None:
        """One transaction: the outputs of every record below the watermark, and the offset.

        The run loop and the rebalance listener can both commit: a lock per partition keeps
        them to one transaction at a time on its producer.
        """
        lock = self._txn_locks.setdefault(tp, asyncio.Lock())
        async with lock:
            tracker = self._trackers.get(tp)
            producer = self._txn_producers.get(tp)
            upto = tracker.to_commit() if tracker is not None else None
            if tracker is None or producer is None or upto is None:
                return
            offsets = sorted(o for o in tracker.outputs if o < upto)
            try:
                async with producer.transaction():
                    futures = []
                    for offset in offsets:
                        for out in tracker.outputs[offset]:
                            futures.append(
                                await producer.send(
                                    out.topic, out.value, key=out.key, headers=out.headers
                                )
                            )
                    await producer.send_offsets_to_transaction(
                        {tp: OffsetAndMetadata(upto, "")}, self._opts.group_id
                    )
                await asyncio.gather(*futures)
            except ProducerFenced:
                # Another member owns this partition now and has fenced our transactional
                # id: it will redo these records. Let go of them.
                self._metrics.transactions.labels(self.tier, "fenced").inc()
                self._drop_partition(tp, reason="fenced")
                return
            except KafkaError as exc:
                # The transaction was aborted (or could not complete): keep the outputs and
                # try again at the next commit, with a fresh producer.
                self._metrics.transactions.labels(self.tier, "aborted").inc()
                log(logger, "transaction_failed", logging.WARNING, tier=self.tier, error=repr(exc))
                await self._replace_transactional(tp)
                return
            for offset in offsets:
                del tracker.outputs[offset]
            self._held -= len(offsets)
            self._capacity.set()
            tracker.committed = upto
            self._metrics.transactions.labels(self.tier, "committed").inc()

    def _drop_partition(self, tp: TopicPartition, reason: str) -> None:
        """Let go of a partition; count what its next owner will redo."""
        tracker = self._trackers.pop(tp, None)
        if tracker is None:
            return
        redo = set(tracker.pending) | set(tracker.outputs)
        if redo:
            self._series.abandoned.inc(len(redo))
        if tracker.outputs:
            # Answers already paid for whose transaction never committed: the model will be
            # called again for these records.
            self._metrics.discarded_answers.labels(self.tier, reason).inc(len(tracker.outputs))
        self._pending -= len(tracker.pending)
        self._held -= len(tracker.outputs)
        self._finished -= tracker.finished
        tracker.finished = 0
        self._capacity.set()

    async def _open_transactional(self, assigned: set[TopicPartition]) -> None:
        assert self._txn_factory is not None
        fresh = {tp: self._txn_factory(tp) for tp in assigned if tp not in self._txn_producers}
        # init_transactions fences any previous owner of this partition's transactional id
        # and completes its open transaction before we read the committed offset.
        await asyncio.gather(*(p.start() for p in fresh.values()))
        self._txn_producers.update(fresh)
        # Read the committed offsets again now that no earlier transaction can still commit
        # (aiokafka sends TxnOffsetCommit v0: there is no KIP-447 fencing by generation).
        await self._consumer.seek_to_committed(*assigned)

    async def _replace_transactional(self, tp: TopicPartition) -> None:
        assert self._txn_factory is not None
        old = self._txn_producers.pop(tp, None)
        if old is not None:
            with contextlib.suppress(KafkaError, TimeoutError):
                await asyncio.wait_for(old.stop(), timeout=5)
        fresh = self._txn_factory(tp)
        try:
            await fresh.start()
        except KafkaError as exc:
            log(logger, "transactional_producer_failed", logging.WARNING, error=repr(exc))
            return
        self._txn_producers[tp] = fresh

    async def _close_transactional(self, partitions: set[TopicPartition]) -> None:
        for tp in partitions:
            producer = self._txn_producers.pop(tp, None)
            if producer is not None:
                with contextlib.suppress(KafkaError, TimeoutError):
                    await asyncio.wait_for(producer.stop(), timeout=10)

    def _update_lag(self) -> None:
        for tp, tracker in self._trackers.items():
            try:
                high = self._consumer.highwater(tp)
            except (IllegalStateError, AssertionError):
                continue  # unassigned meanwhile (aiokafka asserts)
            if high is not None and tracker.committed is not None:
                self._metrics.commit_lag.labels(self.tier, tp.topic, str(tp.partition)).set(
                    max(0, high - tracker.committed)
                )

    # -- rebalances -----------------------------------------------------------------------------
    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        # The consumer fetches for these partitions while this callback runs: trackers first,
        # before any await, so no fetched record finds itself without one.
        for tp in assigned:
            self._trackers.setdefault(tp, PartitionTracker())
        if self._eos and assigned:
            self._not_ready |= assigned
            self._consumer.pause(*assigned)
            try:
                await self._open_transactional(assigned)
            except (KafkaError, OSError) as exc:
                # Without its transactional producer a partition cannot make progress; a
                # silent stall is worse than a restart. Stop, and let the orchestrator restart.
                log(logger, "assignment_failed", logging.ERROR, tier=self.tier, error=repr(exc))
                self._fatal = exc
                self.stop()
                return
            self._not_ready -= assigned
            self._consumer.resume(*assigned)
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
        if not revoked:
            return  # aiokafka calls this with nothing on the first join
        self._not_ready -= revoked
        self._metrics.rebalances.labels(self.tier, "revoked").inc()
        trackers = [self._trackers[tp] for tp in revoked if tp in self._trackers]
        waits = [asyncio.create_task(t.idle.wait()) for t in trackers]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=self._opts.revoke_wait_s)
            for w in pending:
                w.cancel()
        if self._eos:
            await self._commit_transactions(revoked)
        else:
            await self._commit_offsets(revoked)
        for tp in revoked:
            self._drop_partition(tp, reason="revoked")
            with contextlib.suppress(KeyError):
                self._metrics.commit_lag.remove(self.tier, tp.topic, str(tp.partition))
        if self._eos:
            await self._close_transactional(revoked)
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
