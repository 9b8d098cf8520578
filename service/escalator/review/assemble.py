"""The review console's process, assembled from settings: a :class:`~escalator.process.Service`
(the same lifecycle and close path as the tiers') whose workers are the console's queues.

The console is a member of its own consumer group (``ESCALATOR_REVIEW_GROUP``) with one
engine worker (``engine/worker.py``) per queue topic, reviews and adjudications, so that a
backlog of adjudications never stops the reviews topic (whose requests wait for their
results). They consume and commit exactly as the tiers do, through the delivery strategy
``ESCALATOR_PROCESSING_GUARANTEE`` picks (``engine/guarantee.py``): an item's offset is
committed only once its outputs are delivered, and never past an undecided item. What to do
with an item (queue it, lease it, wait for a person, recognise a repeat, park it) is the
handler's, ``handler.py``; the handler is also the page's ``ReviewQueues``.

Beside the workers the handler runs its recovery, leases, metrics and parking
(:func:`handler_running`); when the service stops, the handler first gives back its
undecided items (``Service.on_stop``).

How much one console holds undecided is the workers' in-flight and uncommitted limits, both
``ESCALATOR_REVIEW_BUFFER`` per queue: beyond it the worker stops fetching that topic. The
engine's retention watch (``engine/parking.py``) runs per topic; the handler parks the items
that wait too long (``parking.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import IllegalStateError

from escalator.config import Settings
from escalator.engine.delivery import Delivery
from escalator.engine.guarantee import delivery_for
from escalator.engine.parking import Parking
from escalator.engine.worker import TierWorker, WorkerOptions
from escalator.kafka.admin import KafkaLogView
from escalator.kafka.clients import ProducerHandle, make_consumer, make_producer, read_to_end
from escalator.kafka.retention import TopicRetention
from escalator.model.stack import ModelStacks
from escalator.observability import tracing as tracing_
from escalator.observability.metrics import Metrics
from escalator.process import Service
from escalator.review.handler import TIER, Backlog, ReviewHandler
from escalator.review.ledger import human_decision_of, human_result_id


@dataclass(frozen=True, slots=True)
class Console:
    """The console's process and its queues (the handler, which the page and tests ask)."""

    service: Service
    queues: ReviewHandler

    def serve_page(self, page: contextlib.AbstractAsyncContextManager[Any]) -> None:
        """Run ``page`` beside the workers, entered first and so left last: after the
        handler's close, which answers the decisions still waiting for the broker (a page
        waits for its requests in progress as it closes, up to a minute for aiohttp)."""
        self.service.beside.insert(0, page)


def build_console(
    settings: Settings,
    metrics: Metrics,
    *,
    strategy: Callable[[Settings, str, ProducerHandle], Delivery] = delivery_for,
) -> Console:
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
    service = console_service(
        settings,
        metrics,
        handler=handler,
        workers=workers,
        consumers=consumers,
        producer=producer,
        tracing=tracing,
    )
    return Console(service, handler)


def console_service(
    settings: Settings,
    metrics: Metrics,
    *,
    handler: ReviewHandler,
    workers: list[TierWorker],
    consumers: Sequence[Any],
    producer: Any,
    tracing: tracing_.Tracing | None = None,
) -> Service:
    """The console's workers in a :class:`Service`, with the handler running beside them and
    told first when the service stops. No model, so no model check and no API hold; and no
    broker watch: readiness is "joined", so that the page stays reachable through a Kafka
    outage (reviewers go on deciding, their decisions ``pending``: docs/OPERATIONS.md)."""
    # Both workers report as tier "review": the in-flight gauge is the console's sum.
    metrics.tier(TIER).in_flight.set_function(lambda: sum(w.in_flight for w in workers))
    return Service(
        settings,
        metrics,
        workers,
        producer,
        ModelStacks({}),
        tracing=tracing or tracing_.Tracing(),
        beside=[handler_running(handler, backlog_of(consumers))],
        on_stop=[handler.stop],
    )


@contextlib.asynccontextmanager
async def handler_running(handler: ReviewHandler, backlog: Backlog) -> AsyncIterator[None]:
    """The handler's recovery, leases, metrics and parking while the workers run; once they
    have stopped, a decision still waiting for its delivery never gets it (``close``)."""
    task = asyncio.create_task(handler.run(backlog), name="review-queues")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        handler.close()


def backlog_of(consumers: Sequence[Any]) -> Backlog:
    async def backlog() -> dict[TopicPartition, tuple[int, int]]:
        """Per owned partition: records not fetched yet, and the end offset."""
        found = {}
        for consumer in consumers:
            for tp in consumer.assignment():
                try:
                    high = consumer.highwater(tp)
                    if high is not None:
                        found[tp] = (max(0, high - await consumer.position(tp)), high)
                except (AssertionError, IllegalStateError):
                    continue  # unassigned meanwhile (aiokafka raises either; README)
        return found

    return backlog
