"""At-least-once delivery: a failed send is resent until acknowledged, an offset never commits
before its outputs are acknowledged, large deliveries go as record batches.

Driven by the real TierWorker against the fakes of ``test_delivery.py`` (where the scenarios
both guarantees must pass live, parametrised over the guarantee).
"""

from __future__ import annotations

import asyncio
from typing import Any

from escalator.engine.at_least_once import AtLeastOnce
from escalator.engine.worker import Output, WorkerOptions
from escalator.observability.metrics import Metrics
from tests.unit.engine.test_delivery import (
    AckingProducer,
    Broker,
    FakeConsumer,
    assert_delivered,
    make_worker,
    run,
    sample,
)


async def test_at_least_once_a_failed_send_is_resent_until_acknowledged() -> None:
    broker = Broker()
    producer = AckingProducer(broker, fail_sends=5)
    delivery = AtLeastOnce(producer)  # type: ignore[arg-type]
    consumer = FakeConsumer(broker, 100)
    metrics = Metrics()
    await run(consumer, delivery, metrics)
    assert_delivered(broker, 100, "at_least_once")
    assert producer.repairs >= 5
    assert sample(metrics, "escalator_produce_errors_total", tier="cheap") >= 5


async def test_at_least_once_an_offset_never_commits_before_its_outputs_are_acknowledged() -> None:
    """Acks that never come hold the watermark: nothing from the first unacked record on
    commits. (Records are delivered in batches, so the watermark may stop lower, at the first
    record of the unacked one's batch; never above it.)"""

    class Silent(AckingProducer):
        async def send(self, topic: str, value: bytes, **kwargs: Any) -> asyncio.Future[None]:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if int(value) != 7:
                self.broker.visible.append(int(value))
                fut.set_result(None)
            return fut  # offset 7's acknowledgement never arrives

    broker = Broker()
    delivery = AtLeastOnce(Silent(broker))  # type: ignore[arg-type]
    consumer = FakeConsumer(broker, 50)
    worker = make_worker(
        consumer,
        delivery,
        Metrics(),
        WorkerOptions(
            max_in_flight=8, max_uncommitted=64, commit_interval_s=0.02, shutdown_grace_s=0.2
        ),
    )
    task = asyncio.create_task(worker.run())
    for _ in range(500):
        if len(broker.visible) >= 49:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    assert broker.committed is not None
    assert broker.committed <= 7, "the watermark stops below the unacknowledged record"
    worker.stop()
    await asyncio.wait_for(task, 30)
    assert broker.committed <= 7


async def test_at_least_once_large_deliveries_go_as_record_batches_a_failed_one_resent() -> None:
    """A delivery above the one-by-one bound is produced as record batches; a batch that
    fails is appended by the broker whole or not at all, so every one of its outputs is sent
    again (together, one backoff for all), until acknowledged. Nothing is lost."""
    from escalator.engine.at_least_once import _ONE_BY_ONE

    class Counted(AckingProducer):
        batches = 0

        async def send_batch(self, batch: Any, topic: str, *, partition: int) -> Any:
            self.batches += 1
            return await super().send_batch(batch, topic, partition=partition)

    broker = Broker()
    producer = Counted(broker, fail_sends=1)
    delivery = AtLeastOnce(producer)  # type: ignore[arg-type]
    metrics = Metrics()
    make_worker(FakeConsumer(broker, 0), delivery, metrics)  # binds the strategy
    n = _ONE_BY_ONE + 172
    outputs = [Output("results", str(i).encode(), f"k{i}".encode()) for i in range(n)]
    await asyncio.wait_for(delivery._produce_all(outputs), 30)
    assert producer.batches >= 1, "the batch path was taken"
    assert sorted(broker.visible) == list(range(n)), "every output once: none lost"
    assert sample(metrics, "escalator_produce_errors_total", tier="cheap") == 1


async def test_at_least_once_records_answered_at_once_go_as_record_batches_however_few() -> None:
    """A delivery of records answered at once (tier 0, dead letters: one per partition of a
    fetched batch) goes as record batches even below the one-by-one bound; the same outputs
    from records that waited for a model go one ``send`` each. Both deliver every output."""
    from escalator.engine.at_least_once import _ONE_BY_ONE
    from escalator.engine.delivery import Done, PartitionTracker

    class Counted(AckingProducer):
        batches = 0
        sends = 0  # the strategy's own ``send`` calls (the fake's batches send through it too)
        batching = False

        async def send_batch(self, batch: Any, topic: str, *, partition: int) -> Any:
            self.batches += 1
            self.batching = True
            try:
                return await super().send_batch(batch, topic, partition=partition)
            finally:
                self.batching = False

        async def send(self, topic: str, value: bytes, **kwargs: Any) -> asyncio.Future[None]:
            self.sends += not self.batching
            return await super().send(topic, value, **kwargs)

    n = 6
    assert 2 * n <= _ONE_BY_ONE
    done = [
        Done(i, [Output("results", str(2 * i + j).encode(), b"k") for j in range(2)])
        for i in range(n)
    ]
    for at_once, batches, sends in ((True, 1, 0), (False, 0, 2 * n)):
        broker = Broker()
        producer = Counted(broker)
        delivery = AtLeastOnce(producer)  # type: ignore[arg-type]
        make_worker(FakeConsumer(broker, 0), delivery, Metrics())  # binds the strategy
        deliver = delivery.deliver(None, PartitionTracker(), done, at_once=at_once)  # type: ignore[arg-type]
        await asyncio.wait_for(deliver, 30)
        assert (producer.batches, producer.sends) == (batches, sends), at_once
        assert sorted(broker.visible) == list(range(2 * n)), "every output once"


async def test_at_least_once_a_batch_without_metadata_is_resent_one_by_one_after_a_pause() -> None:
    """No metadata for a topic (``send_batches`` raises before anything is sent): counted as a
    produce error, the producer repaired, and every output sent again one by one after a
    pause, on the producer the handle holds then. Nothing lost, nothing twice."""
    from aiokafka.errors import KafkaTimeoutError

    from escalator.engine.delivery import Done, PartitionTracker

    class NoMetadataOnce(AckingProducer):
        asked = 0

        async def partitions_for(self, topic: str) -> set[int]:
            self.asked += 1
            if self.asked == 1:
                raise KafkaTimeoutError()
            return {0}

    broker = Broker()
    producer = NoMetadataOnce(broker)
    delivery = AtLeastOnce(producer)  # type: ignore[arg-type]
    metrics = Metrics()
    make_worker(FakeConsumer(broker, 0), delivery, metrics)  # binds the strategy
    done = [Done(i, [Output("results", str(i).encode(), b"k")]) for i in range(4)]
    started = asyncio.get_running_loop().time()
    deliver = delivery.deliver(None, PartitionTracker(), done, at_once=True)  # type: ignore[arg-type]
    await asyncio.wait_for(deliver, 30)
    assert sorted(broker.visible) == [0, 1, 2, 3], "every output once"
    assert sample(metrics, "escalator_produce_errors_total", tier="cheap") == 1
    assert producer.repairs == 1
    assert asyncio.get_running_loop().time() - started >= 0.1, "after the resend's pause"
