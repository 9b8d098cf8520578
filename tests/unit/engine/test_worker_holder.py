"""The worker's ``Holder`` hook (engine/worker.py), for a handler that holds records until
something outside decides them (the review console): it hears of assignments, revocations
and deliveries, and a revocation waits only for the records it did not give up."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import TopicPartition

from escalator.engine.worker import Output, Record, TierWorker, WorkerOptions
from escalator.observability.metrics import Metrics
from tests.unit.engine.test_delivery import TP, Broker, FakeConsumer, make_delivery, until


class HoldingHandler:
    """Holds every record until released (or given up on a revocation)."""

    tier = "review"

    def __init__(self) -> None:
        self.held: dict[int, asyncio.Future[None]] = {}
        self.events: list[tuple[str, object]] = []
        self.delivered_offsets: list[int] = []

    async def handle(self, record: Record) -> list[Output]:
        future = self.held[record.offset] = asyncio.get_running_loop().create_future()
        await future  # cancelled by revoking(): the CancelledError leaves handle()
        return [Output("results", str(record.offset).encode(), None)]

    def should_pause(self) -> bool:
        return False

    def release(self, offset: int) -> None:
        self.held[offset].set_result(None)

    def assigned(self, partitions: set[TopicPartition]) -> None:
        self.events.append(("assigned", frozenset(partitions)))

    def revoking(self, partitions: set[TopicPartition]) -> None:
        self.events.append(("revoking", frozenset(partitions)))
        for future in self.held.values():
            if not future.done():
                future.cancel()

    def delivered(self, tp: TopicPartition, offset: int) -> None:
        self.delivered_offsets.append(offset)


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_a_holder_hears_of_partitions_and_deliveries(guarantee: str) -> None:
    """Deliveries are reported once the strategy has the outputs; the commit never passes a
    held record; a revocation does not wait out its bound for records given up, and they are
    counted as abandoned (redone by the next owner)."""
    broker = Broker()
    delivery, _ = make_delivery(guarantee, broker)
    consumer = FakeConsumer(broker, 3)
    handler = HoldingHandler()
    metrics = Metrics()
    worker = TierWorker(
        topic=TP.topic,
        consumer=consumer,  # type: ignore[arg-type]
        delivery=delivery,
        handler=handler,
        metrics=metrics,
        options=WorkerOptions(max_in_flight=8, max_uncommitted=8, commit_interval_s=0.02),
        holder=handler,
    )
    task = asyncio.create_task(worker.run())
    await until(lambda: len(handler.held) == 3)
    assert handler.events == [("assigned", frozenset({TP}))]
    handler.release(0)
    handler.release(2)
    await until(lambda: broker.committed == 1 and len(handler.delivered_offsets) == 2)
    assert sorted(handler.delivered_offsets) == [0, 2]
    await asyncio.sleep(0.1)
    assert broker.committed == 1, "never past the held record 1"
    started = time.monotonic()
    await consumer.listener.on_partitions_revoked({TP})
    assert time.monotonic() - started < 2, "the revocation waited for a record given up"
    assert handler.events[-1] == ("revoking", frozenset({TP}))
    assert broker.committed == 1
    abandoned = metrics.registry.get_sample_value(
        "escalator_abandoned_in_flight_total", {"tier": "review"}
    )
    assert abandoned is not None and abandoned >= 1
    worker.stop()
    await asyncio.wait_for(task, 30)
