"""Exactly-once delivery: outputs and the input offset commit in one transaction per partition.

A record's outputs are held, not sent. At each commit, one transaction per input partition
sends the outputs of every record below the watermark and the offset (``sendOffsetsToTransaction``
for the consumer group), then commits. Readers with ``isolation.level=read_committed`` see each
output once, however often a tier crashes.

Each input partition has its own transactional producer, with an id stable across restarts and
owners (``{prefix}-{group}-{topic}-{partition}``): a new owner's ``init_transactions`` fences
the previous one and aborts its open transaction. aiokafka sends TxnOffsetCommit v0 (no KIP-447
fencing by generation), which is why the id is per partition, not per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, ProducerFenced
from aiokafka.structs import OffsetAndMetadata

from escalator.engine.delivery import Bound, Done, Output, PartitionTracker
from escalator.kafka.clients import send_batches
from escalator.observability.logs import log_repeating

logger = logging.getLogger("escalator.engine")


class _Partition:
    """Outputs held until their transaction commits, by input offset, for one tracker."""

    __slots__ = ("outputs", "tracker")

    def __init__(self, tracker: PartitionTracker) -> None:
        self.tracker = tracker
        self.outputs: dict[int, list[Output]] = {}


class Transactional:
    def __init__(
        self, producer_for: Callable[[TopicPartition], AIOKafkaProducer], group_id: str
    ) -> None:
        self._factory = producer_for
        self._group_id = group_id
        self._producers: dict[TopicPartition, AIOKafkaProducer] = {}
        self._locks: dict[TopicPartition, asyncio.Lock] = {}
        self._parts: dict[TopicPartition, _Partition] = {}
        #: Answered records whose outputs wait for their transaction.
        self.held = 0
        self.not_ready: set[TopicPartition] = set()
        # Being revoked: only the revocation's own commit may open a transaction on these.
        self._closing: set[TopicPartition] = set()

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
        self, tp: TopicPartition, tracker: PartitionTracker, done: Sequence[Done]
    ) -> None:
        # Produced and committed with the offsets, in the partition's next transaction.
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
        own would still be open when the partition is let go and its producer closed.
        """
        w = self._w
        lock = self._locks.setdefault(tp, asyncio.Lock())
        async with lock:
            if tp in self._closing and not explicit:
                return
            tracker = w.trackers.get(tp)
            part = self._parts.get(tp)
            producer = self._producers.get(tp)
            upto = tracker.to_commit() if tracker is not None else None
            if tracker is None or part is None or producer is None or upto is None:
                return
            if part.tracker is not tracker:
                return  # let go and taken again since: the new ownership commits its own
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
                # try again at the next commit, with a fresh producer.
                w.metrics.transactions.labels(w.tier, "aborted").inc()
                log_repeating(
                    logger, "transaction_failed", logging.WARNING, tier=w.tier, error=repr(exc)
                )
                if self._producers.get(tp) is producer:
                    await self._replace(tp)
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
        await self._close(set(self._producers))

    async def _replace(self, tp: TopicPartition) -> None:
        old = self._producers.pop(tp, None)
        if old is not None:
            with contextlib.suppress(KafkaError, TimeoutError):
                await asyncio.wait_for(old.stop(), timeout=5)
        fresh = self._factory(tp)
        try:
            await fresh.start()
        except KafkaError as exc:
            log_repeating(logger, "transactional_producer_failed", logging.WARNING, error=repr(exc))
            return
        self._producers[tp] = fresh

    async def _close(self, partitions: set[TopicPartition]) -> None:
        """Stop the partitions' producers, side by side: one by one, in a broker outage (each
        waits for its bound), they would take longer than the shutdown grace."""
        found = [self._producers.pop(tp, None) for tp in partitions]

        async def stop(producer: AIOKafkaProducer) -> None:
            with contextlib.suppress(KafkaError, TimeoutError):
                await asyncio.wait_for(producer.stop(), timeout=10)

        await asyncio.gather(*(stop(p) for p in found if p is not None))
