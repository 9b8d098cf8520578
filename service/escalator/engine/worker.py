"""Consume, dispatch, hand over to the delivery strategy: the engine shared by both tiers.

One :class:`TierWorker` owns one consumer in one group. It polls continuously (so it never
drifts past ``max_poll_interval_ms``), dispatches what each poll returns, pauses partitions
when its limits are reached or the breaker is open, follows rebalances, and drains on stop.

Dispatch is batch-shaped. A :class:`Handler` answers a record either at once (a list of
outputs: bad input, a local answer) or with a coroutine (a call to a model). Per partition of
a fetched batch, the records answered at once are delivered together by one task, with no
task of their own; each record that waits for a model runs as a task under the in-flight
limit, and the records of a partition that finish in the same turn of the event loop are
delivered together. Acknowledgements are awaited, and the watermark moved, per delivered
batch, not per record.

What happens to the outputs and offsets (produce and await acknowledgements, or hold them
for a transaction; when and how to commit) belongs to the
:class:`~escalator.engine.delivery.Delivery`: ``at_least_once.py`` or ``transactional.py``,
chosen once by the service. The worker has no
branch on the guarantee. Only once the strategy has taken a record's outputs (for
at-least-once: every acknowledgement is in) does its offset count as done; the watermark
below which all are done is what commits.

A held record that nears its topic's retention is parked instead (``parking.py``): its held
call is cancelled, or it is fetched although the tier is held, and its output is a copy of it
on the parked topic, delivered and committed through the same strategy.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
import traceback
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError

from escalator.config import PipelineSettings, default_of
from escalator.engine.delivery import Bound, Delivery, Done, Output, PartitionTracker
from escalator.engine.parking import Parking, watching
from escalator.kafka.clients import stop_consumer
from escalator.model.limits import AdaptiveLimit
from escalator.observability.logs import log
from escalator.observability.metrics import Metrics

__all__ = [
    "Handler",
    "Holder",
    "Output",
    "PartitionTracker",
    "Record",
    "TierWorker",
    "WorkerOptions",
]

logger = logging.getLogger("escalator.engine")
#: Of ESCALATOR_SHUTDOWN_GRACE_S (at most half of it), what the drain leaves for the final
#: commit (3/8), leaving the group (1/4) and, in app.py, the producer's flush and stop (1/8
#: each): 7/8 of it at most, the rest for the process's own exit. Each is a bound that only a
#: broker outage reaches; a commit that misses it leaves its records to be redone.
STOP_RESERVE_S = 6.0
MIN_FINAL_COMMIT_S = 1.0
#: How often a revocation looks whether the revoked partitions' records are finished.
REVOKE_POLL_S = 0.02


#: A model-bound record waiting for a slot: its partition, tracker, record, handler coroutine
#: and when it was dispatched.
_Queued = tuple[TopicPartition, PartitionTracker, Any, Coroutine[Any, Any, list[Output]], float]


def stop_reserve_s(grace_s: float) -> float:
    """The part of the shutdown grace kept for what follows the drain (see STOP_RESERVE_S)."""
    return min(STOP_RESERVE_S, grace_s / 2)


class Record(Protocol):
    """The parts of aiokafka's ConsumerRecord a handler reads."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Any
    #: Epoch milliseconds (the producer's or the broker's, per the topic's timestamp type).
    timestamp: int


class Handler(Protocol):
    tier: str

    def handle(self, record: Record) -> list[Output] | Coroutine[Any, Any, list[Output]]:
        """Outputs for one record: the list itself when they are known at once (bad input, a
        local answer), else an awaitable (a coroutine: a call to a model), which the worker
        runs as a task under the in-flight limit. Must not raise except CancelledError.

        A handler may also have ``handle_batch(records)``: the records of one partition of a
        fetched batch in one call, answered in order, each as ``handle`` would answer it (the
        cheap tier's tier 0 predicts the whole batch at once). The worker calls it when it is
        there, and ``handle`` otherwise."""
        ...

    def should_pause(self) -> bool:
        """True while the tier must not take new work (the breaker is open)."""
        ...


class Holder(Protocol):
    """What a handler that holds records for long needs to hear from its worker (optional:
    ``TierWorker(holder=...)``). The review console's handler holds each item until a person
    decides it: it shows only items of partitions it owns, gives them up when the partition
    goes, and tells the reviewer "done" once the decision is delivered."""

    def assigned(self, partitions: set[TopicPartition]) -> None:
        """These partitions are ours now (called before the delivery strategy sets them up;
        their records may already be in ``handle``)."""
        ...

    def revoking(self, partitions: set[TopicPartition]) -> None:
        """These partitions are being taken away. The handler gives up the records it holds
        for them and will not finish soon (their ``handle`` raises CancelledError: the next
        owner redoes them); the worker then waits (bounded) only for the others. Called
        again when the worker lets each go (then also for a partition lost otherwise, e.g.
        fenced): it must be idempotent."""
        ...

    def delivered(self, tp: TopicPartition, offset: int) -> None:
        """The strategy has taken this record's outputs (at-least-once: acknowledged) and the
        partition is still ours: the offset counts as done."""
        ...


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """The worker's knobs; defaults are PipelineSettings' (config.py), written once there."""

    max_in_flight: int = default_of(PipelineSettings, "max_in_flight")
    #: Records dispatched but not yet committed, at most (the duplicate window of a crash).
    max_uncommitted: int = default_of(PipelineSettings, "max_uncommitted")
    commit_interval_s: float = default_of(PipelineSettings, "commit_interval_s")
    shutdown_grace_s: float = default_of(PipelineSettings, "shutdown_grace_s")
    revoke_wait_s: float = default_of(PipelineSettings, "revoke_wait_s")
    max_poll_interval_ms: int = default_of(PipelineSettings, "max_poll_interval_ms")
    #: How long one fetch waits for records (not a setting).
    poll_timeout_ms: int = 100

    @classmethod
    def from_settings(cls, p: PipelineSettings) -> WorkerOptions:
        return cls(
            max_in_flight=p.max_in_flight,
            max_uncommitted=p.max_uncommitted,
            commit_interval_s=p.commit_interval_s,
            shutdown_grace_s=p.shutdown_grace_s,
            revoke_wait_s=p.revoke_wait_s,
            max_poll_interval_ms=p.max_poll_interval_ms,
        )


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: TierWorker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._worker.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._worker.on_assigned(set(assigned))


class TierWorker:
    """One consumer-group member: poll -> dispatch -> handle -> deliver -> commit."""

    def __init__(
        self,
        *,
        topic: str,
        consumer: AIOKafkaConsumer,
        delivery: Delivery,
        handler: Handler,
        metrics: Metrics,
        options: WorkerOptions,
        limit: AdaptiveLimit | None = None,
        parking: Parking | None = None,
        holder: Holder | None = None,
    ) -> None:
        self.topic = topic
        self.tier = handler.tier
        self._consumer = consumer
        self._delivery = delivery
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
        # A record holds a model slot until its answer is in, then is delivered outside it (a
        # slot idling through a produce round trip is lost throughput: B3 in BENCHMARKS.md).
        # Records dispatched and not yet committable (``_pending``) and what the strategy
        # reserves count against max_uncommitted: the most a crash can make others redo.
        self._pending = 0
        self._uncommitted_done = 0
        self.max_pending = options.max_uncommitted
        self._paused = False
        self._keepalive_s = min(5.0, options.max_poll_interval_ms / 4000)
        self._fatal: BaseException | None = None
        self._commit_task: asyncio.Task[None] | None = None
        # Parking: the tasks whose records are in the handler now (by partition and offset),
        # and those cancelled to be parked instead.
        self._parking = parking
        self._handling: dict[TopicPartition, dict[int, asyncio.Task[None]]] = {}
        # Per partition, the records that finished in this turn of the loop, collecting for one
        # delivery (``_finished``), with the tracker they were dispatched under.
        self._ready: dict[TopicPartition, tuple[PartitionTracker, list[Done]]] = {}
        # The handler's coroutines whose task has not run yet: closed if it is cancelled first
        # (on stop), so none is left un-awaited.
        self._unstarted: set[Coroutine[Any, Any, list[Output]]] = set()
        # Records that wait for a model slot: a fetch sized for records answered at once
        # (``_at_once``) may bring more model-bound ones than there are free slots. They start,
        # in order, as slots free up (``_release_slot``); the in-flight limit is never passed.
        self._queued: deque[_Queued] = deque()
        # The last fetched batch was answered at once, every record (tier 0, say): the next
        # fetch is sized by the uncommitted budget rather than by the free model slots.
        self._at_once = False
        self._park_cancels: set[asyncio.Task[None]] = set()
        self._holder = holder
        #: Per partition (its tracker), records whose handler gave them up (CancelledError):
        #: a revocation does not wait for them.
        self._given_up: dict[PartitionTracker, int] = {}
        if parking is not None:
            parking.bind(self._trackers, self._park_in_flight)
        delivery.bind(
            Bound(
                tier=self.tier,
                consumer=consumer,
                trackers=self._trackers,
                metrics=metrics,
                series=self._series,
                max_in_flight=options.max_in_flight,
                wake=self._capacity.set,
                drop=self._drop_partition,
                fail=self._fail,
            )
        )
        # Read at scrape time: no per-record cost on the hot path.
        self._series.in_flight.set_function(lambda: self._in_flight)
        self._series.awaiting_ack.set_function(lambda: delivery.awaiting_ack)
        self._series.uncommitted.set_function(lambda: self._pending + delivery.uncommitted())
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
        return _share(
            self._consumer, self.topic, sum(tp.topic == self.topic for tp in self._trackers)
        )

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
        try:
            await self._start_consumer()
            async with watching(self._parking):
                while not self._stopping.is_set():
                    await self._poll_once()
                    if self._commit_due() and self._commit_idle():
                        # A commit (a round trip, or a transaction's several) runs beside the
                        # poll loop, one at a time: awaited here it would leave freed model
                        # slots idle until it returned (B1, B3 in BENCHMARKS.md). aiokafka's
                        # commit lock keeps commits in order.
                        self._last_commit = time.monotonic()
                        self._uncommitted_done = 0
                        self._commit_task = asyncio.create_task(self._commit())
            # The whole shutdown fits in the grace: the drain leaves a reserve for the final
            # commit and leaving the group, which cannot finish in a broker outage (then they
            # give up at their bound: uncommitted work is redone by the next owner).
            reserve = stop_reserve_s(self._opts.shutdown_grace_s)
            await self._drain(self._opts.shutdown_grace_s - reserve)
            await self._final_commit(reserve * 3 / 8)
        finally:
            await self._cancel_remaining()
            self._series.ready.set(0)
            reserve = stop_reserve_s(self._opts.shutdown_grace_s)
            await stop_consumer(self._consumer, timeout_s=reserve / 4)  # leaves the group
            await self._delivery.close()
            log(logger, "worker_stopped", tier=self.tier)
        if self._fatal is not None:
            raise self._fatal

    async def _start_consumer(self) -> None:
        """``consumer.start()``, which waits for the first assignment (a join that can take a
        session timeout, or forever without a broker), abandoned if we are stopped first."""
        start = asyncio.ensure_future(self._consumer.start())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({start, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not start.done():
                start.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await start
        if not start.cancelled():
            start.result()

    async def _final_commit(self, timeout_s: float) -> None:
        try:
            async with asyncio.timeout(max(timeout_s, MIN_FINAL_COMMIT_S)):
                if self._commit_task is not None:
                    await self._commit_task
                await self._commit()
        except TimeoutError:
            log(
                logger,
                "final_commit_timed_out",
                logging.WARNING,
                tier=self.tier,
                uncommitted=self._pending + self._delivery.uncommitted(),
            )

    def _commit_idle(self) -> bool:
        task = self._commit_task
        if task is not None and task.done():
            task.result()  # a commit that raised (not a KafkaError: those are handled) stops us
        return task is None or task.done()

    def _commit_due(self) -> bool:
        return (
            self._uncommitted_done >= self._opts.max_in_flight
            or time.monotonic() - self._last_commit >= self._opts.commit_interval_s
        )

    async def _poll_once(self) -> None:
        if self._handler.should_pause():
            # The breaker is open: take no new work, but keep polling so the group keeps us.
            # Partitions being parked are fetched still, within the uncommitted budget.
            free = self.max_pending - self._pending - self._delivery.reserved()
            parking = self._parking.parking() if self._parking is not None and free > 0 else set()
            if not parking and self._parking is not None and self._in_flight == 0 and free > 0:
                # Everything held was parked: without a call waiting, the breaker would have
                # nothing to probe with and the hold would never end. Take one record.
                self._set_paused(True, keep=self._consumer.assignment())
                self._dispatch(
                    await self._consumer.getmany(
                        timeout_ms=self._opts.poll_timeout_ms, max_records=1
                    )
                )
                return
            self._set_paused(True, keep=parking)
            self._dispatch(
                await self._consumer.getmany(
                    timeout_ms=self._opts.poll_timeout_ms, max_records=free if parking else None
                )
            )
            return
        budget = self.max_pending - self._pending - self._delivery.reserved()
        slots = self.limit.limit - self._in_flight - len(self._queued)
        free = budget if self._at_once and slots > 0 else min(slots, budget)
        if free <= 0:
            # Full. Wait for a slot without pausing: pausing makes aiokafka drop the records it
            # has prefetched. Only if no slot frees up for a while (a slow model), pause and
            # poll empty-handed, so the member never drifts past max_poll_interval_ms.
            self._capacity.clear()
            try:
                async with asyncio.timeout(self._keepalive_s):
                    await self._capacity.wait()
            except TimeoutError:
                self._set_paused(True)
                self._dispatch(await self._consumer.getmany(timeout_ms=0))
            return
        self._set_paused(False)
        self._dispatch(
            await self._consumer.getmany(timeout_ms=self._opts.poll_timeout_ms, max_records=free)
        )

    def _dispatch(self, batch: dict[TopicPartition, list[Any]]) -> None:
        """One fetched batch: per partition, the records answered at once (a dead letter,
        say) are delivered together by one task; each record that waits for a model runs as
        a task of its own, holding a model slot, and is delivered with the others of its
        partition that finish in the same turn of the event loop (``_finished``)."""
        not_ready = self._delivery.not_ready
        parking = self._parking
        handle = self._handler.handle
        # Optional: all the records of a partition's batch in one call (tier 0 predicts them
        # together), answered in order, each as ``handle`` would.
        handle_batch = getattr(self._handler, "handle_batch", None)
        at_once = True
        for tp, records in batch.items():
            tracker = self._trackers.get(tp)
            if tracker is None or tp in not_ready:
                if records and tp in self._consumer.assignment():
                    # Ours, but not ready yet (its transactional producer is starting): fetch
                    # these again later rather than skip them.
                    self._consumer.seek(tp, records[0].offset)
                continue  # not (or no longer) ours: the new owner reads from the committed offset
            if parking is not None and parking.until(tp) is not None:
                self._dispatch_parked(parking, tp, tracker, records)
                continue
            n = len(records)
            tracker.extend([r.offset for r in records])
            self._pending += n
            self._series.requests.inc(n)
            started = time.perf_counter()
            ready: list[Done] = []
            works = handle_batch(records) if handle_batch is not None else map(handle, records)
            for record, work in zip(records, works, strict=True):
                if isinstance(work, list):
                    ready.append(Done(record.offset, work, started))
                    continue
                self._unstarted.add(work)
                if self._in_flight < self.limit.limit and not self._queued:
                    self._in_flight += 1
                    self._spawn(self._answer(tp, tracker, record, work, started))
                else:
                    self._queued.append((tp, tracker, record, work, started))
            if ready:
                self._spawn(self._deliver_done(tp, tracker, ready, at_once=True))
            at_once = at_once and len(ready) == n
        self._at_once = at_once and bool(batch)

    def _dispatch_parked(
        self, parking: Parking, tp: TopicPartition, tracker: PartitionTracker, records: list[Any]
    ) -> None:
        """Records of a partition being parked: below its end mark each is parked (no model
        slot); from the mark on they wait, unfetched, for the hold to end."""
        until = parking.until(tp)
        copies: list[Done] = []
        for record in records:
            if until is None or record.offset >= until:
                self._consumer.seek(tp, record.offset)
                parking.reached(tp)
                break
            tracker.add(record.offset)
            self._pending += 1
            copies.append(Done(record.offset, parking.outputs(record)))
            if record.offset + 1 >= until:
                parking.reached(tp)
        if copies:
            self._spawn(self._deliver_done(tp, tracker, copies, at_once=True))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        """A handler answers every record (bad input with a dead letter), and a delivery
        strategy retries until acknowledged: a task that raises is a bug. Its record stays
        uncommitted (redone by the next owner); the worker stops and the service exits saying
        why, rather than leave the partition stalled behind it with a line from asyncio."""
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        where = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
        log(
            logger,
            "handler_failed",
            logging.ERROR,
            tier=self.tier,
            error=type(exc).__name__,  # not its message: it may quote the record's text
            at=f"{where[0].filename}:{where[0].lineno}" if where else None,
        )
        if self._fatal is None:
            self._fatal = exc
        self.stop()

    def _set_paused(self, pause: bool, keep: set[TopicPartition] | None = None) -> None:
        assignment = self._consumer.assignment()
        paused = self._consumer.paused()
        if keep:
            # Held, but these partitions are being parked: fetch them.
            if assignment - paused - keep:
                self._consumer.pause(*(assignment - paused - keep))
            if (keep & paused) - self._delivery.not_ready:
                self._consumer.resume(*((keep & paused) - self._delivery.not_ready))
            self._paused = True
            self._series.paused_partitions.set(len(assignment - keep))
            return
        if pause and assignment - paused:
            self._consumer.pause(*(assignment - paused))
        elif not pause and paused - self._delivery.not_ready:
            self._consumer.resume(*(paused - self._delivery.not_ready))
        if pause != self._paused or pause:
            self._paused = pause
            self._series.paused_partitions.set(len(assignment) if pause else 0)

    async def _answer(
        self,
        tp: TopicPartition,
        tracker: PartitionTracker,
        record: Any,
        work: Coroutine[Any, Any, list[Output]],
        started: float,
    ) -> None:
        """A record that waits for a model: its answer, holding a slot, then its delivery."""
        self._unstarted.discard(work)
        try:
            if self._parking is None:
                done = Done(record.offset, await work, started, contextvars.copy_context())
            else:
                done = await self._answer_or_park(tp, record, work, started)
        except asyncio.CancelledError:
            # Not done: the offset stays uncommitted and the record is redone by whoever owns
            # the partition next. That is the duplicate window, and it is counted.
            self._series.abandoned.inc()
            self._given_up[tracker] = self._given_up.get(tracker, 0) + 1
            raise
        finally:
            self._release_slot()
        await self._finished(tp, tracker, done)

    async def _finished(self, tp: TopicPartition, tracker: PartitionTracker, done: Done) -> None:
        """Deliver ``done`` with the others of ``tp`` that finish in this turn of the loop: the
        first to finish waits one turn for the rest, then delivers them all (one set of
        acknowledgements awaited, one move of the watermark)."""
        ready = self._ready.get(tp)
        if ready is not None and ready[0] is tracker:
            ready[1].append(done)
            return
        batch = [done]
        self._ready[tp] = (tracker, batch)
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            self._series.abandoned.inc(len(batch))
            raise
        finally:
            if self._ready.get(tp, (None, None))[1] is batch:
                del self._ready[tp]
        await self._deliver_done(tp, tracker, batch)

    async def _deliver_done(
        self, tp: TopicPartition, tracker: PartitionTracker, done: list[Done], at_once: bool = False
    ) -> None:
        try:
            await self._delivery.deliver(tp, tracker, done, at_once=at_once)
        except asyncio.CancelledError:
            self._series.abandoned.inc(len(done))
            raise
        # Only here, once the strategy has the outputs, do the offsets count as done.
        if self._trackers.get(tp) is tracker:
            popped = tracker.complete_many([d.offset for d in done])
            self._pending -= popped
            self._uncommitted_done += popped
            self._delivery.advanced(tp, popped)
            if self._holder is not None:
                for d in done:
                    self._holder.delivered(tp, d.offset)
        self._capacity.set()
        now = time.perf_counter()
        processing = self._series.processing
        for d in done:
            if d.started is None:
                if self._parking is not None:
                    self._parking.parked()
            elif d.context is None:
                processing.observe(now - d.started)
            else:
                d.context.run(processing.observe, now - d.started)  # its trace's exemplar

    # -- parking -------------------------------------------------------------------------------
    async def _answer_or_park(
        self,
        tp: TopicPartition,
        record: Any,
        work: Coroutine[Any, Any, list[Output]],
        started: float,
    ) -> Done:
        """The handler's answer, or (if parking cancels the held call) the parked copy."""
        assert self._parking is not None
        if self._parking.takes(tp, record.offset):
            # Parking began between its dispatch and now: its copy is its output.
            work.close()
            return Done(record.offset, self._parking.outputs(record))
        task = asyncio.current_task()
        assert task is not None
        handling = self._handling.get(tp)
        if handling is None:
            handling = self._handling[tp] = {}
        handling[record.offset] = task
        try:
            return Done(record.offset, await work, started, contextvars.copy_context())
        except asyncio.CancelledError:
            if task not in self._park_cancels:
                raise
            self._park_cancels.discard(task)
            if task.uncancel() > 0:
                raise  # stopped as well
            return Done(record.offset, self._parking.outputs(record))
        finally:
            handling.pop(record.offset, None)

    def _park_in_flight(self, tp: TopicPartition, until: int) -> None:
        """Parking starts on ``tp``: the held calls of its records below ``until`` end, and
        those records are parked instead (``_answer_or_park``)."""
        for offset, task in list(self._handling.get(tp, {}).items()):
            if offset < until and not task.done():
                self._park_cancels.add(task)
                task.cancel()
        self._capacity.set()

    def _release_slot(self) -> None:
        self._in_flight -= 1
        self._capacity.set()
        queued = self._queued
        while queued and self._in_flight < self.limit.limit and not self._stopping.is_set():
            tp, tracker, record, work, started = queued.popleft()
            self._in_flight += 1
            self._spawn(self._answer(tp, tracker, record, work, started))

    def _unqueue(self, tracker: PartitionTracker | None) -> None:
        """Close the queued records of ``tracker``'s partition (None: every one). They hold no
        slot; their offsets stay pending, to be redone by the partition's next owner."""
        kept: deque[_Queued] = deque()
        for item in self._queued:
            if tracker is None or item[1] is tracker:
                item[3].close()
                self._unstarted.discard(item[3])
            else:
                kept.append(item)
        self._queued = kept

    # -- commits ----------------------------------------------------------------------------------
    async def _commit(self) -> None:
        self._last_commit = time.monotonic()
        self._uncommitted_done = 0
        await self._delivery.commit()
        _update_lag(self._metrics, self.tier, self._consumer, self._trackers)

    def _fail(self, exc: BaseException) -> None:
        """The strategy cannot go on: stop, and let ``run`` raise ``exc`` (the first error).
        Already stopping (asked to, or by an earlier error): nothing more to do; the strategy
        logged the error."""
        if self._stopping.is_set():
            return
        if self._fatal is None:
            self._fatal = exc
        self.stop()

    def _drop_partition(self, tp: TopicPartition, reason: str) -> None:
        """Let go of a partition; count what its next owner will redo."""
        tracker = self._trackers.pop(tp, None)
        if tracker is None:
            return
        self._handling.pop(tp, None)
        self._given_up.pop(tracker, None)
        if self._queued:
            self._unqueue(tracker)
        if self._holder is not None:
            self._holder.revoking({tp})  # again after a revocation; first news if fenced
        if self._parking is not None:
            self._parking.revoked({tp})
        redo = set(tracker.pending) | self._delivery.release(tp, reason)
        if redo:
            self._series.abandoned.inc(len(redo))
        self._pending -= len(tracker.pending)
        self._capacity.set()

    # -- rebalances -----------------------------------------------------------------------------
    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        # The consumer fetches for these partitions while this callback runs: trackers first,
        # before any await, so no fetched record finds itself without one.
        for tp in assigned:
            self._trackers.setdefault(tp, PartitionTracker())
        if self._holder is not None:
            self._holder.assigned(assigned)
        try:
            await self._delivery.assigned(assigned)
        except (KafkaError, OSError) as exc:
            # Without its transactional producer a partition cannot make progress; a
            # silent stall is worse than a restart. Stop, and let the orchestrator restart.
            log(logger, "assignment_failed", logging.ERROR, tier=self.tier, error=repr(exc))
            self._fatal = exc
            self.stop()
            return
        if self._parking is not None:
            self._parking.assigned(assigned)
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
        self._delivery.revoking(revoked)
        if self._holder is not None:
            self._holder.revoking(revoked)
        self._metrics.rebalances.labels(self.tier, "revoked").inc()
        trackers = [self._trackers[tp] for tp in revoked if tp in self._trackers]
        await self._settle(trackers, self._opts.revoke_wait_s)
        try:
            await self._delivery.commit(revoked)
        finally:  # aiokafka swallows a listener's error: a partition kept would fail commits
            for tp in revoked:
                self._drop_partition(tp, reason="revoked")
                with contextlib.suppress(KeyError):
                    self._metrics.commit_lag.remove(self.tier, tp.topic, str(tp.partition))
            await self._delivery.revoked(revoked)
        log(
            logger,
            "partitions_revoked",
            tier=self.tier,
            partitions=sorted(f"{tp.topic}-{tp.partition}" for tp in revoked),
        )

    async def _settle(self, trackers: list[PartitionTracker], timeout_s: float) -> None:
        """Until every record of these partitions is done or given up by its handler (at
        most ``timeout_s``): what finishes now is committed with the revocation."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while any(t.in_flight > self._given_up.get(t, 0) for t in trackers):
            if loop.time() >= deadline:
                return
            await asyncio.sleep(REVOKE_POLL_S)

    # -- shutdown -------------------------------------------------------------------------------
    async def _drain(self, grace_s: float) -> None:
        if self._tasks:
            log(logger, "draining", tier=self.tier, in_flight=len(self._tasks), grace_s=grace_s)
            await asyncio.wait(set(self._tasks), timeout=grace_s)

    async def _cancel_remaining(self) -> None:
        self._unqueue(None)
        await _cancel_all(set(self._tasks))
        for work in self._unstarted:
            work.close()
            self._release_slot()
        self._unstarted.clear()


async def _cancel_all(tasks: set[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _share(consumer: AIOKafkaConsumer, topic: str, owned: int) -> float:
    try:
        total = consumer.partitions_for_topic(topic)
    except (IllegalStateError, AssertionError):
        total = None
    return min(1.0, owned / len(total)) if owned and total else 1.0


def _update_lag(
    metrics: Metrics,
    tier: str,
    consumer: AIOKafkaConsumer,
    trackers: dict[TopicPartition, PartitionTracker],
) -> None:
    """``commit_lag``: the high watermark less the committed offset, per owned partition."""
    for tp, tracker in trackers.items():
        try:
            high = consumer.highwater(tp)
        except (IllegalStateError, AssertionError):
            continue  # unassigned meanwhile (aiokafka asserts)
        if high is not None and tracker.committed is not None:
            metrics.commit_lag.labels(tier, tp.topic, str(tp.partition)).set(
                max(0, high - tracker.committed)
            )
