"""Parking (engine/parking.py) driven through the real TierWorker and both delivery strategies,
against the strict fakes of test_delivery.py and a fake broker view with a controlled clock.

A held tier's records must end on the parked topic (byte for byte, with why), the input
offsets commit only with (or after) the copies, a record is never both parked and answered,
and a loss (the log start past the committed offset) is counted once.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import TopicPartition

from escalator.contract.parking import PARKED_HEADERS, ParkedInfo
from escalator.engine.at_least_once import AtLeastOnce
from escalator.engine.delivery import Delivery
from escalator.engine.parking import Parking
from escalator.engine.transactional import Transactional
from escalator.engine.worker import Output, Record, TierWorker, WorkerOptions
from escalator.kafka.admin import Peek
from escalator.kafka.retention import TopicRetention
from escalator.model.holds import Hold
from escalator.observability.metrics import Metrics
from tests.integration.harness import validator
from tests.unit.engine.test_delivery import (
    GUARANTEES,
    TP,
    AckingProducer,
    Broker,
    FakeConsumer,
    TxnFactory,
    TxnProducer,
    sample,
    until,
)

T0_MS = 1_790_000_000_000
RETENTION_MS = 10_000
OPTIONS = WorkerOptions(max_in_flight=8, max_uncommitted=16, commit_interval_s=0.02)


@dataclass
class Rec:
    offset: int
    timestamp: int = T0_MS
    topic: str = TP.topic
    partition: int = TP.partition
    key: bytes | None = b"k"
    value: bytes | None = None
    headers: Any = (("traceparent", b"00-abc-01"), ("x-escalator-upstream", None))

    def __post_init__(self) -> None:
        if self.value is None:
            self.value = str(self.offset).encode()


class Consumer(FakeConsumer):
    """test_delivery's consumer, handing out records with timestamps, values and headers."""

    async def getmany(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Any]]:
        batch = await super().getmany(timeout_ms=timeout_ms, max_records=max_records)
        return {tp: [Rec(r.offset) for r in records] for tp, records in batch.items()}


class Topical(AckingProducer):
    """Records (topic, offset, headers) of every acknowledged output; parked sends take
    ``parked_s`` each."""

    def __init__(self, broker: Broker, parked_s: float = 0.0) -> None:
        super().__init__(broker)
        self.parked_s = parked_s
        self.headers: dict[int, Any] = {}

    async def send(self, topic: str, value: bytes, **kwargs: Any) -> asyncio.Future[None]:
        if topic == "parked" and self.parked_s:
            await asyncio.sleep(self.parked_s)
        self.broker.visible.append((topic, int(value)))  # type: ignore[arg-type]
        self.headers[int(value)] = kwargs.get("headers")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


class TopicalTxn(TxnProducer):
    async def send(self, topic: str, value: bytes, **kwargs: Any) -> asyncio.Future[None]:
        assert self.open and not self.stopped
        self.buffer.append((topic, int(value)))  # type: ignore[arg-type]
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


class TopicalTxnFactory(TxnFactory):
    def __call__(self, tp: TopicPartition) -> TxnProducer:
        producer = TopicalTxn(self, self.faults, self.start_s)
        self.made.append(producer)
        return producer


class HeldHandler:
    """Answers to ``results`` once released; while ``held``, the tier must take no new work."""

    tier = "cheap"

    def __init__(self) -> None:
        self.held = False
        self.released = asyncio.Event()
        self.calls = 0

    async def handle(self, record: Record) -> list[Output]:
        self.calls += 1
        await self.released.wait()
        return [Output("results", record.value, record.key)]

    def should_pause(self) -> bool:
        return self.held


class View:
    """The broker's view: retention, bounds, committed offsets and peeks, from the fakes."""

    def __init__(self, broker: Broker, consumer: FakeConsumer, retention: TopicRetention) -> None:
        self.broker = broker
        self.consumer = consumer
        self.r = retention
        self.log_start = 0
        self.peeks = 0
        self.closed = False

    async def retention(self, topic: str) -> TopicRetention:
        return self.r

    async def bounds(self, tps: list[TopicPartition]) -> dict[TopicPartition, tuple[int, int]]:
        return {tp: (self.log_start, self.consumer.n) for tp in tps}

    async def committed(self, group: str, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.broker.committed for tp in tps}

    async def peek(self, tp: TopicPartition, offset: int) -> Peek | None:
        self.peeks += 1
        return Peek(max(offset, self.log_start), T0_MS, 200.0)

    async def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = T0_MS / 1000 + 1

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    worker: TierWorker
    parking: Parking
    handler: HeldHandler
    broker: Broker
    consumer: FakeConsumer
    view: View
    clock: Clock
    metrics: Metrics
    producer: Any

    def outputs(self) -> Counter[tuple[str, int]]:
        return Counter(self.broker.visible)  # type: ignore[arg-type]


def rig(guarantee: str, n: int = 100, *, enabled: bool = True, parked_s: float = 0.0) -> Rig:
    broker = Broker()
    producer: Any
    delivery: Delivery
    if guarantee == "at_least_once":
        producer = Topical(broker, parked_s)
        delivery = AtLeastOnce(producer)
    else:
        producer = TopicalTxnFactory(broker)
        delivery = Transactional(producer, "group")
    consumer = Consumer(broker, n)
    handler = HeldHandler()
    view = View(broker, consumer, TopicRetention("requests", RETENTION_MS, None))
    clock = Clock()
    metrics = Metrics()

    def hold() -> Hold | None:
        return (
            Hold("spend_limit", "capped", T0_MS / 1000, T0_MS / 1000 + 86_400)
            if (handler.held)
            else None
        )

    parking = Parking(
        tier="cheap",
        topic=TP.topic,
        group="group",
        parked_topic="parked",
        log=view,
        metrics=metrics,
        hold=hold,
        park_at=0.5,
        check_s=3600,  # the test runs each check itself
        enabled=enabled,
        clock=clock,
    )
    worker = TierWorker(
        topic=TP.topic,
        consumer=consumer,  # type: ignore[arg-type]
        delivery=delivery,
        handler=handler,
        metrics=metrics,
        options=OPTIONS,
        parking=parking,
    )
    return Rig(worker, parking, handler, broker, consumer, view, clock, metrics, producer)


async def hold_with_calls_in_flight(r: Rig) -> asyncio.Task[None]:
    """Start the worker, let it fill its in-flight limit with calls that wait, then hold."""
    task = asyncio.create_task(r.worker.run())
    await until(lambda: r.worker.in_flight == OPTIONS.max_in_flight)
    r.handler.held = True
    await asyncio.sleep(0.05)
    return task


async def stop(r: Rig, task: asyncio.Task[None]) -> None:
    r.worker.stop()
    r.handler.released.set()
    await asyncio.wait_for(task, 30)


@pytest.mark.parametrize("guarantee", GUARANTEES)
async def test_a_held_partition_past_the_mark_is_parked_and_committed(guarantee: str) -> None:
    """Calls in flight are cancelled and parked, the rest fetched and parked; the offset
    commits past every copy; nothing is answered, nothing abandoned."""
    r = rig(guarantee)
    task = await hold_with_calls_in_flight(r)
    await r.parking.check()
    assert r.broker.committed == 0, "below the mark (0.1 of retention): nothing parked"
    r.clock.now = T0_MS / 1000 + 6  # 0.6 of retention.ms
    await r.parking.check()
    await until(lambda: r.broker.committed >= 100)
    await r.parking.check()  # sees the commit: parking is done
    await stop(r, task)
    assert r.broker.committed == 100
    assert r.outputs() == Counter({("parked", o): 1 for o in range(100)})
    assert sample(r.metrics, "escalator_parked_total", tier="cheap", topic=TP.topic) == 100
    assert sample(r.metrics, "escalator_abandoned_in_flight_total", tier="cheap") == 0
    assert sample(r.metrics, "escalator_retention_lost_total", tier="cheap", topic=TP.topic) == 0
    assert r.handler.calls == OPTIONS.max_in_flight, "parked records never reach the model"
    assert r.parking.parking() == set() and r.view.closed


async def test_a_parked_copy_is_the_record_byte_for_byte_plus_why() -> None:
    """Key, value and every header (a null one and an upstream x-escalator-* one too) are
    kept in order; ours follow and say the hold, when it began and ends, and the source."""
    r = rig("at_least_once", n=10)
    task = await hold_with_calls_in_flight(r)
    r.clock.now = T0_MS / 1000 + 6
    await r.parking.check()
    await until(lambda: r.broker.committed >= 10)
    await stop(r, task)
    headers = r.producer.headers[3]
    assert headers[:2] == [("traceparent", b"00-abc-01"), ("x-escalator-upstream", None)]
    info = ParkedInfo.from_headers(headers)
    assert info.reason == "spend_limit"
    assert (info.source_topic, info.source_partition, info.source_offset) == (TP.topic, 0, 3)
    assert info.source_timestamp_ms == T0_MS and info.held_since_ms == T0_MS
    assert info.hold_ends_at == "2026-09-22T14:13:20.000Z"
    assert info.original == [("traceparent", b"00-abc-01"), ("x-escalator-upstream", None)]
    replay = info.replay_headers("parked/0/3")
    assert replay == [
        ("traceparent", b"00-abc-01"),
        ("x-escalator-upstream", b""),
        ("x-escalator-replay-of", b"parked/0/3"),
    ]
    ours = {k: v.decode() for k, v in headers if k in PARKED_HEADERS}
    validator("parked-headers.v1.json").validate(ours)


@pytest.mark.parametrize("guarantee", GUARANTEES)
async def test_when_the_hold_ends_midway_the_rest_is_answered_and_none_twice(
    guarantee: str,
) -> None:
    """Every record ends with exactly one output: parked before the hold ended, answered
    after it."""
    r = rig(guarantee, n=200, parked_s=0.01)
    task = await hold_with_calls_in_flight(r)
    r.clock.now = T0_MS / 1000 + 6
    await r.parking.check()
    await until(lambda: r.broker.committed >= 30)
    r.handler.held = False
    r.handler.released.set()
    await until(lambda: r.broker.committed >= 200)
    await stop(r, task)
    outputs = r.outputs()
    parked = {o for (topic, o) in outputs if topic == "parked"}
    answered = {o for (topic, o) in outputs if topic == "results"}
    assert parked and answered, "both happened"
    assert parked | answered == set(range(200)) and not parked & answered
    assert max(outputs.values()) == 1


async def test_with_parking_off_nothing_is_parked_but_the_share_is_exported() -> None:
    """ESCALATOR_PARKING=false: the watch reports and counts, and never parks."""
    r = rig("at_least_once", enabled=False)
    task = await hold_with_calls_in_flight(r)
    r.clock.now = T0_MS / 1000 + 8
    await r.parking.check()
    await asyncio.sleep(0.2)
    used = sample(r.metrics, "escalator_retention_used_ratio", tier="cheap", topic=TP.topic)
    age = sample(r.metrics, "escalator_held_oldest_age_seconds", tier="cheap", topic=TP.topic)
    await stop(r, task)
    assert used == pytest.approx(0.8) and age == pytest.approx(8.0)
    assert not any(topic == "parked" for topic, _ in r.outputs())


async def test_a_loss_is_counted_once_and_records_held_in_memory_are_not_lost() -> None:
    """The log start passing the committed offset is the moment of loss; records this worker
    holds (in flight) can still be answered and are not counted; nothing counts twice."""
    r = rig("at_least_once", enabled=False)
    task = await hold_with_calls_in_flight(r)
    r.view.log_start = 30  # the broker deleted 0..29; 0..7 are in flight here
    await r.parking.check()
    await r.parking.check()
    lost = sample(r.metrics, "escalator_retention_lost_total", tier="cheap", topic=TP.topic)
    assert lost == 30 - OPTIONS.max_in_flight
    r.view.log_start = 40
    await r.parking.check()
    lost = sample(r.metrics, "escalator_retention_lost_total", tier="cheap", topic=TP.topic)
    await stop(r, task)
    assert lost == 30 - OPTIONS.max_in_flight + 10


async def test_parking_stops_when_the_hold_ends() -> None:
    """A mark set during a hold no longer applies once the tier's calls flow again."""
    r = rig("at_least_once")
    r.handler.held = True
    await r.worker.on_assigned({TP})  # the worker's tracker, and the watch starts on TP
    r.clock.now = T0_MS / 1000 + 6
    await r.parking.check()
    assert r.parking.until(TP) == 100 and r.parking.takes(TP, 99)
    r.handler.held = False
    assert r.parking.until(TP) is None and not r.parking.takes(TP, 0)


async def test_once_everything_held_is_parked_one_new_record_is_taken_to_probe_with() -> None:
    """Without a call waiting, the breaker would never probe and the hold never end: a held
    tier with nothing in flight takes exactly one record into its handler."""
    r = rig("at_least_once", n=20)
    task = await hold_with_calls_in_flight(r)
    r.clock.now = T0_MS / 1000 + 6
    await r.parking.check()
    await until(lambda: r.broker.committed >= 20)
    await r.parking.check()
    calls = r.handler.calls
    r.consumer.n = 30  # new requests arrive while the account is still capped
    await until(lambda: r.handler.calls > calls)
    await asyncio.sleep(0.2)
    assert r.handler.calls == calls + 1 and r.worker.in_flight == 1
    r.handler.held = False
    r.handler.released.set()
    await until(lambda: r.broker.committed >= 30)
    await stop(r, task)
    assert Counter(o for (topic, o) in r.outputs() if topic == "results") == Counter(range(20, 30))
