"""Exactly-once delivery: outputs and the input offset commit in one transaction per partition.

A record's outputs are held, not sent. At each commit, one transaction per input partition
sends the outputs of every record below the watermark and the offset (``sendOffsetsToTransaction``
for the consumer group), then commits. Readers with ``isolation.level=read_committed`` see each
output once, however often a tier crashes.

Each input partition has its own transactional producer, with an id stable across restarts and
owners (``{prefix}-{group}-{topic}-{partition}``): a new owner's ``init_transactions`` fences
the previous one and aborts its open transaction. aiokafka sends TxnOffsetCommit v0 (no KIP-447
fencing by generation), which is why the id is per partition, not per process.

A transaction that aborts (a broker error) keeps its outputs for the next commit, on a fresh
producer. Until one starts the partition cannot commit: its held answers fill
``max_uncommitted`` and the worker takes no new work. So the replacement runs in a task of
its own (never under a commit: the other partitions' commits and a revocation do not wait for
it), its start is bounded, a failed one is tried again at the partition's next commits with
backoff, and past a bound (at once for an error that waiting cannot cure, e.g. an
authorisation) the worker stops, as a failed assignment does, for the orchestrator to restart
it: a loud stop, never a silent stall.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, KafkaTimeoutError, ProducerFenced
from aiokafka.structs import OffsetAndMetadata

from escalator.engine.delivery import Bound, Done, Output, PartitionTracker
from escalator.kafka.clients import send_batches
from escalator.observability.logs import log, log_repeating

logger = logging.getLogger("escalator.engine")

#: One start of a replacement producer (``init_transactions``) waits at most this long.
START_TIMEOUT_S = 10.0
#: A start that failed is tried again at the partition's next commit this long after, doubling
#: up to RETRY_MAX_S...
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 15.0
#: ...until the partition has been without a producer this long: then the worker stops. Longer
#: than a broker's failover (its session timeout and a leader election, seconds); an outage
#: that outlasts it restarts the process, which then waits to join the group until a broker
#: answers.
GIVE_UP_S = 120.0


class _Partition:
    """Outputs held until their transaction commits, by input offset, for one tracker; and,
    while its producer is being replaced, since when and how often its start failed."""

    __slots__ = ("down_since", "failures", "outputs", "retry_at", "tracker")

    def __init__(self, tracker: PartitionTracker) -> None:
        self.tracker = tracker
        self.outputs: dict[int, list[Output]] = {}
        #: Loop time when its producer was let go after an aborted transaction (None: it has one
        #: or is being assigned one).
        self.down_since: float | None = None
        self.failures = 0
        #: No start before this loop time (infinity: given up, the worker is stopping).
        self.retry_at = 0.0


class Transactional:
    def __init__(
        self,
        producer_for: Callable[[TopicPartition], AIOKafkaProducer],
        group_id: str,
        *,
        start_timeout_s: float = START_TIMEOUT_S,
        give_up_s: float = GIVE_UP_S,
    ) -> None:
        self._factory = producer_for
        self._group_id = group_id
        self._start_timeout_s = start_timeout_s
        self._give_up_s = give_up_s
        self._producers: dict[TopicPartition, AIOKafkaProducer] = {}
        self._locks: dict[TopicPartition, asyncio.Lock] = {}
        self._parts: dict[TopicPartition, _Partition] = {}
        #: Answered records whose outputs wait for their transaction.
        self.held = 0
        self.not_ready: set[TopicPartition] = set()
        # Being revoked: only the revocation's own commit may open a transaction on these.
        self._closing: set[TopicPartition] = set()
        #: Replacements under way (``_replace``), one task per partition.
        self._starting: dict[TopicPartition, asyncio.Task[None]] = {}
        #: Closing down: no more replacements, and a failed one no longer stops the worker.
        self._stopping = False

    def bind(self, worker: Bound) -> None:
        self._w = worker

    @property
    def awaiting_ack(self) -> int:
        return 0  # outputs are acknowledged inside the commit's transaction

    def uncommitted(self) -> int:
        return self.held

    def reserved(self) -> int:
        return self.held

    async def deliver(
        self,
        tp: TopicPartition,
        tracker: PartitionTracker,
        done: Sequence[Done],
        *,
        at_once: bool = False,
    ) -> None:
        # Produced and committed with the offsets, in the partition's next transaction (always
        # as record batches: ``at_once`` changes nothing here).
        part = self._parts.get(tp)
        if part is not None and part.tracker is tracker:  # not revoked meanwhile
            for d in done:
                part.outputs[d.offset] = d.outputs
            self.held += len(done)

    def advanced(self, tp: TopicPartition, popped: int) -> None:
        pass

    # -- commits --------------------------------------------------------------------------------
    async def commit(self, only: set[TopicPartition] | None = None) -> None:
        due = self._w.due(only)
        if due:
            await asyncio.gather(*(self._commit_partition(tp, only is not None) for tp in due))

    async def _commit_partition(self, tp: TopicPartition, explicit: bool) -> None:
        """One transaction: the outputs of every record below the watermark, and the offset.

        The run loop and the rebalance listener can both commit: a lock per partition keeps
        them to one transaction at a time on its producer. Once a partition is being revoked,
        the periodic commit leaves it alone: a transaction it opened after the revocation's
        own would still be open when the partition is let go and its producer closed. A
        partition whose producer was let go after an aborted transaction waits for its fresh
        one (``_replace``), and asks for another if the last start failed.
        """
        w = self._w
        lock = self._locks.setdefault(tp, asyncio.Lock())
        async with lock:
            if tp in self._closing and not explicit:
                return
            tracker = w.trackers.get(tp)
            part = self._parts.get(tp)
            upto = tracker.to_commit() if tracker is not None else None
            if tracker is None or part is None or upto is None:
                return
            if part.tracker is not tracker:
                return  # let go and taken again since: the new ownership commits its own
            producer = self._producers.get(tp)
            if producer is None:
                if part.down_since is not None and tp not in self._closing:
                    self._replace(tp, part, None)  # the last start failed: try again, later
                return  # else being assigned; or revoked: the next owner redoes these
            offsets = sorted(o for o in part.outputs if o < upto)
            try:
                async with producer.transaction():
                    batches = await send_batches(
                        producer, [out for offset in offsets for out in part.outputs[offset]]
                    )
                    for _, _, error in batches:
                        if error is not None:
                            raise error  # aborts the transaction: nothing becomes visible
                    await producer.send_offsets_to_transaction(
                        {tp: OffsetAndMetadata(upto, "")}, self._group_id
                    )
                await asyncio.gather(*(fut for _, fut, _ in batches if fut is not None))
            except ProducerFenced:
                # Another member owns this partition now and has fenced our transactional
                # id: it will redo these records. Let go of them.
                w.metrics.transactions.labels(w.tier, "fenced").inc()
                if self._parts.get(tp) is part:  # not a later ownership of the partition
                    w.drop(tp, "fenced")
                return
            except KafkaError as exc:
                # The transaction was aborted (or could not complete): keep the outputs and
                # try again at the next commits, on a fresh producer.
                w.metrics.transactions.labels(w.tier, "aborted").inc()
                log_repeating(
                    logger, "transaction_failed", logging.WARNING, tier=w.tier, error=repr(exc)
                )
                if self._producers.get(tp) is producer:
                    self._replace(tp, part, self._producers.pop(tp))
                return
            for offset in offsets:
                del part.outputs[offset]
            self.held -= len(offsets)
            w.wake()
            tracker.committed = upto
            w.metrics.transactions.labels(w.tier, "committed").inc()

    # -- partitions -----------------------------------------------------------------------------
    async def assigned(self, partitions: set[TopicPartition]) -> None:
        w = self._w
        self._closing -= partitions
        for tp in partitions:
            self._parts.setdefault(tp, _Partition(w.trackers[tp]))
        if not partitions:
            return
        # Not fetched until its producer is ready: the worker seeks back what arrives meanwhile.
        self.not_ready |= partitions
        w.consumer.pause(*partitions)
        fresh = {tp: self._factory(tp) for tp in partitions if tp not in self._producers}
        # init_transactions fences any previous owner of this partition's transactional id
        # and completes its open transaction before we read the committed offset.
        await asyncio.gather(*(p.start() for p in fresh.values()))
        self._producers.update(fresh)
        # Read the committed offsets again now that no earlier transaction can still commit
        # (aiokafka sends TxnOffsetCommit v0: there is no KIP-447 fencing by generation).
        await w.consumer.seek_to_committed(*partitions)
        self.not_ready -= partitions
        w.consumer.resume(*partitions)

    def revoking(self, partitions: set[TopicPartition]) -> None:
        self.not_ready -= partitions
        self._closing |= partitions

    def release(self, tp: TopicPartition, reason: str) -> set[int]:
        part = self._parts.pop(tp, None)
        if part is None or not part.outputs:
            return set()
        # Answers already paid for whose transaction never committed: the model will be
        # called again for these records.
        self._w.metrics.discarded_answers.labels(self._w.tier, reason).inc(len(part.outputs))
        self.held -= len(part.outputs)
        return set(part.outputs)

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        await self._close(partitions)
        self._closing -= partitions

    async def close(self) -> None:
        self._stopping = True
        await self._close(set(self._producers) | set(self._starting))

    # -- replacing a producer after an aborted transaction ----------------------------------------
    def _replace(self, tp: TopicPartition, part: _Partition, old: AIOKafkaProducer | None) -> None:
        """Let ``old`` go (the producer of an aborted transaction) and start a fresh producer
        for ``tp``, in a task of its own; nothing if one is under way, or it is too early
        after a failed start."""
        loop = asyncio.get_running_loop()
        if part.down_since is None:
            part.down_since = loop.time()
        if tp in self._starting or (old is None and loop.time() < part.retry_at):
            return
        self._starting[tp] = asyncio.create_task(self._restart(tp, part, old), name=f"restart-{tp}")

    async def _restart(
        self, tp: TopicPartition, part: _Partition, old: AIOKafkaProducer | None
    ) -> None:
        try:
            await self._start_fresh(tp, part, old)
        finally:
            # Here, not in a done callback: a commit on the producer just installed must find
            # no replacement under way if it aborts at once.
            if self._starting.get(tp) is asyncio.current_task():
                del self._starting[tp]

    async def _start_fresh(
        self, tp: TopicPartition, part: _Partition, old: AIOKafkaProducer | None
    ) -> None:
        assert part.down_since is not None
        if old is not None:
            await _stop(old)
        loop = asyncio.get_running_loop()
        if not self._wanted(tp, part) or loop.time() < part.retry_at:
            return
        fresh: AIOKafkaProducer | None = None
        try:
            fresh = self._factory(tp)
            async with asyncio.timeout(self._start_timeout_s):
                await fresh.start()
        except (KafkaError, OSError) as exc:  # OSError: TimeoutError, ours
            if fresh is not None:
                await _stop(fresh)  # a start cut short may hold connections
            self._start_failed(tp, part, exc, loop.time())
            return
        except asyncio.CancelledError:  # revoked, or closing
            if fresh is not None:
                await _stop(fresh, timeout_s=1)
            raise
        except Exception as exc:  # not Kafka's: a defect; stop loudly, never a silent stall
            if fresh is not None:
                await _stop(fresh, timeout_s=1)
            logger.exception("transactional_producer_failed")
            self._w.fail(exc)
            return
        if not self._wanted(tp, part):  # revoked while it started: the next owner's now
            await _stop(fresh)
            return
        self._producers[tp] = fresh
        if part.failures:
            log(
                logger,
                "transactional_producer_restarted",
                tier=self._w.tier,
                partition=f"{tp.topic}-{tp.partition}",
                failures=part.failures,
                down_s=round(loop.time() - part.down_since, 3),
            )
        part.down_since, part.failures, part.retry_at = None, 0, 0.0

    def _wanted(self, tp: TopicPartition, part: _Partition) -> bool:
        """Whether ``tp`` still needs a producer for this ownership."""
        return not self._stopping and tp not in self._closing and self._parts.get(tp) is part

    def _start_failed(
        self, tp: TopicPartition, part: _Partition, exc: BaseException, now: float
    ) -> None:
        """Try again later with backoff; past the bound, or for an error that waiting cannot
        cure, stop the worker."""
        assert part.down_since is not None
        w = self._w
        w.metrics.transactions.labels(w.tier, "producer_failed").inc()
        part.failures += 1
        down_s = now - part.down_since
        fields = {
            "tier": w.tier,
            "partition": f"{tp.topic}-{tp.partition}",
            "failures": part.failures,
            "down_s": round(down_s, 3),
            "error": repr(exc),
        }
        if self._stopping or (_transient(exc) and down_s < self._give_up_s):
            delay = min(RETRY_FIRST_S * 2 ** (part.failures - 1), RETRY_MAX_S)
            part.retry_at = now + delay
            log_repeating(
                logger, "transactional_producer_failed", logging.WARNING, **fields, retry_s=delay
            )
            return
        # Its held answers can never commit: stop, as a failed assignment does (worker.py),
        # and let the orchestrator restart the process. Nothing past them was committed.
        part.retry_at = math.inf
        log(logger, "transactional_producer_gave_up", logging.ERROR, **fields)
        w.fail(exc)

    async def _close(self, partitions: set[TopicPartition]) -> None:
        """Stop the partitions' producers, side by side: one by one, in a broker outage (each
        waits for its bound), they would take longer than the shutdown grace. A replacement
        under way is cancelled (it stops what it started)."""
        starting = [t for tp in partitions if (t := self._starting.get(tp)) is not None]
        for task in starting:
            task.cancel()
        found = [self._producers.pop(tp, None) for tp in partitions]
        await asyncio.gather(
            *starting,
            *(_stop(p, timeout_s=10) for p in found if p is not None),
            return_exceptions=True,
        )


async def _stop(producer: AIOKafkaProducer, timeout_s: float = 5) -> None:
    """Stop ``producer`` within ``timeout_s``, finished even if the caller is cancelled
    meanwhile (then re-raised): a stop cut short can leave connections and aiokafka's sender
    task behind."""

    async def stop() -> None:
        with contextlib.suppress(KafkaError, TimeoutError):
            async with asyncio.timeout(timeout_s):
                await producer.stop()

    stopping = asyncio.ensure_future(stop())
    try:
        await asyncio.shield(stopping)
    except asyncio.CancelledError:
        await stopping  # bounded by timeout_s
        raise


def _transient(exc: BaseException) -> bool:
    """Whether waiting may cure a failed start: a timeout, no broker reachable, a coordinator
    moving (aiokafka's ``retriable``); not an authorisation or a protocol error."""
    if isinstance(exc, OSError | KafkaTimeoutError):
        return True
    return isinstance(exc, KafkaError) and bool(exc.retriable)
