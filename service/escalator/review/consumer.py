"""The review queues over Kafka: :class:`ReviewConsumer` runs the console's consumers on the
engine and is the page's ``ReviewQueues``.

The console is a member of its own consumer group (``ESCALATOR_REVIEW_GROUP``) with one
engine worker (``engine/worker.py``) per queue topic, reviews and adjudications, so that a
backlog of adjudications never stops the reviews topic (whose requests wait for their
results). They consume and commit exactly as the tiers do, through the delivery strategy
``ESCALATOR_PROCESSING_GUARANTEE`` picks (``engine/guarantee.py``): an item's offset is
committed only once its outputs are delivered, and never past an undecided item. What to do
with an item (queue it, lease it, wait for a person, recognise a repeat, park it) is the
handler's, ``handler.py``.

How much one console holds undecided is the workers' in-flight and uncommitted limits, both
``ESCALATOR_REVIEW_BUFFER`` per queue: beyond it the worker stops fetching that topic. The
engine's retention watch (``engine/parking.py``) runs per topic; the handler parks the items
that wait too long (``parking.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from types import TracebackType
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import IllegalStateError

from escalator.config import Settings
from escalator.contract.reviews import Queue, ReviewItem
from escalator.engine.delivery import Delivery
from escalator.engine.guarantee import delivery_for
from escalator.engine.parking import Parking
from escalator.engine.worker import TierWorker, WorkerOptions, stop_reserve_s
from escalator.kafka.admin import KafkaLogView
from escalator.kafka.clients import ProducerHandle, make_consumer, make_producer, read_to_end
from escalator.kafka.retention import TopicRetention
from escalator.observability import tracing as tracing_
from escalator.observability.metrics import Metrics
from escalator.review.handler import TIER, ReviewHandler
from escalator.review.ledger import human_decision_of, human_result_id
from escalator.review.queues import Lease, Outcome, QueueStat


class ReviewConsumer:
    """The console's workers and its queues. ``async with`` it, then ``await run()``."""

    def __init__(
        self,
        *,
        handler: ReviewHandler,
        workers: list[TierWorker],
        consumers: list[Any],
        producer: Any,
        tracing: tracing_.Tracing | None = None,
        stop_bound_s: float = 1.0,
    ) -> None:
        self.handler = handler
        self.workers = workers
        self._consumers = consumers
        self._producer = producer
        self._tracing = tracing or tracing_.Tracing()
        self._stop_bound_s = stop_bound_s
        self._ran = False

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        metrics: Metrics,
        *,
        strategy: Callable[[Settings, str, ProducerHandle], Delivery] = delivery_for,
    ) -> ReviewConsumer:
        """The console the settings describe; ``strategy`` picks each worker's delivery
        (``engine/guarantee.py``; tests give one that never commits, to play a crash)."""
        rv, p, k = settings.review, settings.pipeline, settings.parking
        topics = settings.topics
        producer = ProducerHandle(
            lambda: make_producer(settings.kafka),
            on_recreate=lambda reason: metrics.producer_recreated.labels(reason).inc(),
        )
        tracing = tracing_.start(settings.tracing)
        parkings = {
            topic: Parking(
                tier=TIER,
                topic=topic,
                group=rv.group,
                parked_topic=topics.parked,
                log=KafkaLogView(settings.kafka, client_id=f"{settings.kafka.client_id}-retention"),
                metrics=metrics,
                hold=lambda: None,  # people have no hold that ends: the handler parks per item
                park_at=k.park_at,
                check_s=k.check_s,
                enabled=k.enabled,
            )
            for topic in (topics.reviews, topics.adjudications)
        }

        async def read_decided(since_ms: int) -> list[str]:
            """The review ids of every human decision on the decisions topic since then, in
            the order read (so that the bounded memory forgets the oldest first); on the
            reviews queue, only those whose human result is on the results topic too (at
            least once, a console that crashed could have had its decision acknowledged and
            not yet its result: that item is shown again, not skipped)."""
            found: list[tuple[str, str | None]] = []
            async for record in read_to_end(settings.kafka, topics.decisions, since_ms=since_ms):
                decided = human_decision_of(record.value)
                if decided is not None:
                    found.append(decided)
            if not any(needs is not None for _, needs in found):
                return [review_id for review_id, _ in found]
            results = set()
            async for record in read_to_end(settings.kafka, topics.results, since_ms=since_ms):
                results.add(human_result_id(record.value))
            return [rid for rid, needs in found if needs is None or needs in results]

        def retention(topic: str) -> TopicRetention | None:
            parking = parkings.get(topic)
            return parking.retention if parking is not None else None

        handler = ReviewHandler(
            topics=topics,
            settings=rv,
            parking_settings=k,
            metrics=metrics,
            max_text_chars=p.max_text_chars,
            read_decided=read_decided,
            retention=retention,
            tracing=tracing,
        )
        # An undecided item is in flight (in the handler) until a person decides it: both
        # limits are the console's buffer per queue.
        options = replace(
            WorkerOptions.from_settings(p), max_in_flight=rv.buffer, max_uncommitted=rv.buffer
        )
        consumers, workers = [], []
        for topic, parking in parkings.items():
            consumer = make_consumer(
                settings.kafka,
                rv.group,
                isolation_level="read_committed",
                max_poll_interval_ms=p.max_poll_interval_ms,
                session_timeout_ms=p.session_timeout_ms,
            )
            consumers.append(consumer)
            workers.append(
                TierWorker(
                    topic=topic,
                    consumer=consumer,
                    delivery=strategy(settings, rv.group, producer),
                    handler=handler,
                    metrics=metrics,
                    options=options,
                    parking=parking,
                    holder=handler,
                )
            )
        # Both workers report as tier "review": the in-flight gauge is the console's sum.
        metrics.tier(TIER).in_flight.set_function(lambda: sum(w.in_flight for w in workers))
        return cls(
            handler=handler,
            workers=workers,
            consumers=consumers,
            producer=producer,
            tracing=tracing,
            stop_bound_s=stop_reserve_s(p.shutdown_grace_s) / 8,
        )

    # -- lifecycle -----------------------------------------------------------------------
    async def __aenter__(self) -> ReviewConsumer:
        await self._producer.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._ran:
            for worker in self.workers:
                await worker.discard()
        try:
            bound = self._stop_bound_s
            await self._producer.stop(flush_timeout_s=bound, stop_timeout_s=max(bound, 0.5))
        finally:
            await self._tracing.shutdown()

    def stop(self) -> None:
        """Stop taking items, give back the undecided ones, let decisions being delivered
        finish, commit, leave the group (the workers' shutdown). Safe from a signal handler."""
        self.handler.stop()
        for worker in self.workers:
            worker.stop()

    @property
    def joined(self) -> bool:
        return all(w.joined for w in self.workers)

    async def wait_joined(self) -> None:
        await asyncio.gather(*(w.wait_joined() for w in self.workers))

    async def run(self) -> None:
        """The workers, and beside them the handler's recovery, leases, metrics and parking,
        until :meth:`stop` (or a worker fails: then the others stop, and its error is raised)."""
        self._ran = True
        beside = asyncio.create_task(self.handler.run(self._backlog), name="review-queues")
        tasks = [asyncio.create_task(w.run(), name=f"review-{w.topic}") for w in self.workers]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            if any(t.exception() is not None for t in done):
                self.stop()
            await asyncio.gather(*tasks, return_exceptions=True)
            for t in tasks:
                if t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
        finally:
            for t in tasks:
                t.cancel()
            beside.cancel()
            await asyncio.gather(*tasks, beside, return_exceptions=True)
            self.handler.close()

    async def _backlog(self) -> dict[TopicPartition, tuple[int, int]]:
        """Per owned partition: records not fetched yet, and the end offset."""
        found = {}
        for consumer in self._consumers:
            for tp in consumer.assignment():
                try:
                    high = consumer.highwater(tp)
                    if high is not None:
                        found[tp] = (max(0, high - await consumer.position(tp)), high)
                except (AssertionError, IllegalStateError):
                    continue  # unassigned meanwhile (aiokafka raises either; README)
        return found

    # -- the queues (ReviewQueues) -------------------------------------------------------
    def waiting(self, queue: Queue) -> list[ReviewItem]:
        return self.handler.waiting(queue)

    def stats(self) -> list[QueueStat]:
        return self.handler.stats()

    def lease(self, queue: Queue, reviewer: str) -> Lease | None:
        return self.handler.lease(queue, reviewer)

    def lease_of(self, lease_id: str, reviewer: str) -> Lease | None:
        return self.handler.lease_of(lease_id, reviewer)

    def release(self, lease_id: str, reviewer: str) -> None:
        self.handler.release(lease_id, reviewer)

    async def decide(
        self, lease_id: str, reviewer: str, label: str | None, note: str | None
    ) -> Outcome:
        return await self.handler.decide(lease_id, reviewer, label, note)
