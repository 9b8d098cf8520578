"""At-least-once delivery: produce, await every acknowledgement, commit at the watermark.

A record counts as done only once the broker has acknowledged all of its outputs
(``acks=all``, idempotent producer); a send that fails is retried until acknowledged, with
backoff, on a repaired producer if need be. Offsets are committed per partition at the
watermark, beside the poll loop. A crash repeats the records that were dispatched and not
committed (the duplicate window, bounded by the worker and counted), never loses one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from escalator.engine.delivery import Bound, Done, Output, PartitionTracker
from escalator.kafka.clients import ProducerHandle, send_batches
from escalator.observability.logs import log, log_repeating

logger = logging.getLogger("escalator.engine")

#: Below this many outputs, a delivery of records that waited for a model sends them one
#: ``send`` each. aiokafka queues a record batch only once the partition's previous batch has
#: left for the broker, so small deliveries running side by side (a model-bound tier under
#: moderate load) can each wait a request round trip as record batches, where ``send`` adds to
#: the batch being filled. On a busy machine B2 and B4 looked worse with record batches for
#: every delivery; alternated on a quiet one the difference was within the noise
#: (BENCHMARKS.md, 2026-12-07). Large deliveries, and every delivery of records answered at
#: once (tier 0, dead letters: a partition's share of a fetched batch, produced together), go
#: as record batches: the tier-0 path spent 12% of its time in one ``send`` per output.
_ONE_BY_ONE = 128


class _Partition:
    """Records of one partition below its watermark whose offset is not committed yet."""

    __slots__ = ("finished",)

    def __init__(self) -> None:
        self.finished = 0


class AtLeastOnce:
    not_ready: frozenset[TopicPartition] = frozenset()

    def __init__(self, producer: ProducerHandle) -> None:
        self._producer = producer
        self._parts: dict[TopicPartition, _Partition] = {}
        self._awaiting_ack = 0
        # Records done but not yet covered by a successful commit (the sum over partitions).
        # Commits run beside the poll loop, so records keep being dispatched while one is in
        # flight; beyond max_in_flight these take from the dispatch budget (``reserved``), so
        # a slow commit cannot widen the duplicate window.
        self.finished = 0

    def bind(self, worker: Bound) -> None:
        self._w = worker

    @property
    def awaiting_ack(self) -> int:
        return self._awaiting_ack

    def uncommitted(self) -> int:
        return self.finished

    def reserved(self) -> int:
        return max(0, self.finished - self._w.max_in_flight)

    async def deliver(
        self,
        tp: TopicPartition,
        tracker: PartitionTracker,
        done: Sequence[Done],
        *,
        at_once: bool = False,
    ) -> None:
        n = len(done)
        self._awaiting_ack += n
        try:
            if n == 1:
                await self._produce_all(done[0].outputs, at_once=at_once)
            else:
                await self._produce_all([out for d in done for out in d.outputs], at_once=at_once)
        finally:
            self._awaiting_ack -= n

    def advanced(self, tp: TopicPartition, popped: int) -> None:
        self._parts[tp].finished += popped
        self.finished += popped

    async def assigned(self, partitions: set[TopicPartition]) -> None:
        for tp in partitions:
            self._parts.setdefault(tp, _Partition())

    def revoking(self, partitions: set[TopicPartition]) -> None:
        pass

    def release(self, tp: TopicPartition, reason: str) -> set[int]:
        part = self._parts.pop(tp, None)
        if part is not None:
            self.finished -= part.finished
            part.finished = 0
        return set()

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        pass

    async def close(self) -> None:
        pass

    # -- producing ------------------------------------------------------------------------------
    async def _produce_all(self, outputs: list[Output], *, at_once: bool = False) -> None:
        """Send every output, then wait for every acknowledgement. Retries until acknowledged.

        A batch's outputs are grouped by topic and partition and handed to aiokafka as record
        batches (``send_batch``): one future per output partition rather than one per output,
        which is most of what a ``send`` costs. The partition is the one ``send`` would pick
        (the producer's partitioner, ``kafka/partitioning.py``: murmur2 of the key, as the Java
        client)."""
        producer = self._producer.get()
        if not at_once and len(outputs) <= _ONE_BY_ONE:
            await self._produce_each(outputs, producer)
            return
        try:
            batches = await send_batches(producer, outputs)
        except KafkaError as exc:  # no metadata for a topic: nothing was sent
            await self._produce_failed(exc, producer)
            await self._resend(outputs)  # one by one, after a pause, on the repaired producer
            return
        failed: list[Output] = []
        for members, fut, error in batches:
            if fut is not None:
                try:
                    await fut
                    continue
                except KafkaError as exc:
                    error = exc
            assert error is not None
            await self._produce_failed(error, producer)
            failed.extend(members)  # a record batch is appended whole or not at all
        if failed:
            await self._resend(failed)

    async def _produce_each(self, outputs: list[Output], producer: AIOKafkaProducer) -> None:
        failed = await self._send_each(outputs, producer)
        if failed:
            await self._resend(failed)

    async def _send_each(self, outputs: list[Output], producer: AIOKafkaProducer) -> list[Output]:
        """One ``send`` per output, then every acknowledgement; returns those that failed."""
        pending: list[tuple[Output, Any]] = []
        failed: list[Output] = []
        for out in outputs:
            try:
                fut = await producer.send(out.topic, out.value, key=out.key, headers=out.headers)
            except KafkaError as exc:
                await self._produce_failed(exc, producer)
                failed.append(out)
            else:
                pending.append((out, fut))
        for out, fut in pending:
            try:
                await fut
            except KafkaError as exc:
                # The idempotent producer retried internally and gave up.
                await self._produce_failed(exc, producer)
                failed.append(out)
        return failed

    async def _produce_failed(self, exc: KafkaError, producer: AIOKafkaProducer) -> None:
        self._w.series.produce_errors.inc()
        log_repeating(logger, "produce_failed", logging.WARNING, tier=self._w.tier, error=repr(exc))
        with contextlib.suppress(KafkaError):
            await self._producer.repair(exc, failed=producer)

    async def _resend(self, outputs: list[Output]) -> None:
        """The slow path: send the outputs that failed again, together, with backoff between
        rounds (not between outputs), until every one is acknowledged."""
        delay = 0.1
        while outputs:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            outputs = await self._send_each(outputs, self._producer.get())

    # -- commits --------------------------------------------------------------------------------
    async def commit(self, only: set[TopicPartition] | None = None) -> None:
        if not self._producer.healthy():
            # The sender died between sends (aiokafka issue 1017): replace it now, not after
            # the next send times out.
            with contextlib.suppress(KafkaError):
                await self._producer.repair()
        w = self._w
        offsets = {tp: OffsetAndMetadata(o, "") for tp, o in w.due(only).items()}
        if not offsets:
            return
        # What this commit covers, taken with the offsets, before the await.
        covered = [
            (tp, w.trackers[tp], self._parts[tp], self._parts[tp].finished) for tp in offsets
        ]
        try:
            await w.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # The group moved on: these partitions are lost to us. Their uncommitted
            # records will be redone by the new owner (at-least-once), not dropped.
            w.metrics.commits.labels(w.tier, "failed").inc()
            log(
                logger,
                "commit_failed_partition_lost",
                logging.WARNING,
                tier=w.tier,
                error=repr(exc),
            )
            return
        except KafkaError as exc:
            w.metrics.commits.labels(w.tier, "retry").inc()
            log_repeating(
                logger, "commit_failed_will_retry", logging.WARNING, tier=w.tier, error=repr(exc)
            )
            return
        for tp, tracker, part, finished in covered:
            tracker.committed = offsets[tp].offset
            part.finished -= finished
            if self._parts.get(tp) is part:  # not released (revoked) meanwhile
                self.finished -= finished
        w.wake()
        w.metrics.commits.labels(w.tier, "ok").inc()
