"""The delivery strategies, driven by the real TierWorker against fakes of the broker.

Parametrised over the guarantee the way quixstreams runs its checkpoint tests: the same
scenario must hold for ``at_least_once`` (every record's outputs acknowledged before its
offset commits; a repeat is allowed) and ``exactly_once`` (a reader with read_committed sees
each output exactly once). The fakes keep one "broker" per test: what a read_committed reader
can see, and the committed offset. The integration and reliability suites run the same
strategies against the real broker.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError, KafkaTimeoutError, ProducerFenced

from escalator.engine.at_least_once import AtLeastOnce
from escalator.engine.delivery import Delivery, PartitionTracker
from escalator.engine.transactional import Transactional
from escalator.engine.worker import Output, Record, TierWorker, WorkerOptions
from escalator.errors import ConfigError
from escalator.observability.metrics import Metrics
from tests.unit.batch_sends import BatchSends

TP = TopicPartition("requests", 0)
GUARANTEES = ["at_least_once", "exactly_once"]


@dataclass
class FakeRecord:
    offset: int
    topic: str = TP.topic
    partition: int = TP.partition
    key: bytes | None = None
    value: bytes | None = b"{}"
    headers: Any = ()


@dataclass
class Broker:
    """What a read_committed reader of the output topic sees, and the group's offset."""

    visible: list[int] = field(default_factory=list)
    committed: int = 0
    commit_s: float = 0.0
    committing: bool = False

    async def slow_commit(self) -> None:
        self.committing = True
        try:
            await asyncio.sleep(self.commit_s)
        finally:
            self.committing = False

    def counts(self) -> Counter[int]:
        return Counter(self.visible)


class FakeConsumer:
    def __init__(self, broker: Broker, n: int, *, leaky: bool = False) -> None:
        self.broker = broker
        self.n = n
        self.position = 0
        self.leaky = leaky  # hand out records of paused partitions (a fetch already in flight)
        self.listener: Any = None
        self.paused_set: set[TopicPartition] = set()
        self.owned = True
        self.redo_at_fetch: list[int] = []
        self.seeks = 0
        self.fetches_during_commit = 0

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.listener = listener

    async def start(self) -> None:
        await self.listener.on_partitions_assigned({TP})

    async def stop(self) -> None:
        pass

    def assignment(self) -> set[TopicPartition]:
        return {TP} if self.owned else set()

    def paused(self) -> set[TopicPartition]:
        return set(self.paused_set)

    def pause(self, *tps: TopicPartition) -> None:
        self.paused_set |= set(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused_set -= set(tps)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks += 1
        self.position = offset

    async def seek_to_committed(self, *tps: TopicPartition) -> None:
        self.position = self.broker.committed

    def highwater(self, tp: TopicPartition) -> int:
        return self.n

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0}

    async def getmany(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[FakeRecord]]:
        self.fetches_during_commit += self.broker.committing
        blocked = TP in self.paused_set and not self.leaky
        if not self.owned or blocked or self.position >= self.n:
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        await asyncio.sleep(0)
        end = min(self.n, self.position + (max_records or 500))
        batch = [FakeRecord(o) for o in range(self.position, end)]
        self.position = end
        self.redo_at_fetch.append(self.position - self.broker.committed)
        return {TP: batch}

    async def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        assert set(offsets) <= self.assignment(), "aiokafka refuses unassigned partitions"
        await self.broker.slow_commit()
        self.broker.committed = offsets[TP].offset

    async def rebalance(self) -> None:
        """The group takes the partition away and gives it back: resume from the commit."""
        await self.listener.on_partitions_revoked({TP})
        self.position = self.broker.committed
        await self.listener.on_partitions_assigned({TP})


class FakeFuture:
    pass


class AckingProducer(BatchSends):
    """ProducerHandle's surface. ``fail_sends`` sends raise first; acks land on the broker."""

    def __init__(self, broker: Broker, fail_sends: int = 0) -> None:
        self.broker = broker
        self.fail_sends = fail_sends
        self.repairs = 0

    def get(self) -> AckingProducer:
        return self

    def healthy(self) -> bool:
        return True

    async def repair(self, error: BaseException | None = None, failed: Any = None) -> bool:
        self.repairs += 1
        return True

    async def send(self, topic: str, value: bytes, **kwargs: Any) -> asyncio.Future[None]:
        if self.fail_sends:
            self.fail_sends -= 1
            raise KafkaTimeoutError()
        self.broker.visible.append(int(value))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


class TxnProducer(BatchSends):
    """One transactional producer: sends are buffered and become visible only on commit.

    Like the broker, a newer producer with the same transactional id fences an older one:
    once a successor has started, the older one's commit fails with ProducerFenced.
    """

    def __init__(self, factory: TxnFactory, faults: list[type[KafkaError]], start_s: float) -> None:
        self.factory = factory
        self.broker = factory.broker
        self.faults = faults
        self.start_s = start_s
        self.epoch = -1
        self.buffer: list[int] = []
        self.offset: int | None = None
        self.started = False
        self.stopped = False
        self.open = False

    async def start(self) -> None:
        await asyncio.sleep(self.start_s)
        self.factory.epoch += 1  # init_transactions: bump the epoch, abort what was open
        self.epoch = self.factory.epoch
        self.started = True

    async def stop(self) -> None:
        self.stopped = True  # an open transaction can no longer commit

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        assert self.started and not self.stopped
        assert not self.open, "one transaction at a time per producer (aiokafka raises)"
        self.open = True
        self.buffer, self.offset = [], None
        try:
            yield  # an exception from the body aborts: nothing becomes visible
            await self.broker.slow_commit()
        finally:
            self.open = False
        if self.stopped:
            raise KafkaError("producer closed with its transaction open")
        if self.epoch < self.factory.epoch:
            raise ProducerFenced()
        if self.faults:
            raise self.faults.pop(0)()
        self.broker.visible.extend(self.buffer)
        assert self.offset is not None
        self.broker.committed = self.offset

    async def send(self, topic: str, value: bytes, **kwargs: Any) -> asyncio.Future[None]:
        assert self.open and not self.stopped
        self.buffer.append(int(value))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    async def send_offsets_to_transaction(self, offsets: dict[Any, Any], group: str) -> None:
        assert group == "group"
        self.offset = offsets[TP].offset


class TxnFactory:
    def __init__(
        self, broker: Broker, faults: list[type[KafkaError]] | None = None, start_s: float = 0.0
    ) -> None:
        self.broker = broker
        self.faults = faults if faults is not None else []
        self.start_s = start_s
        self.made: list[TxnProducer] = []
        self.epoch = -1

    def __call__(self, tp: TopicPartition) -> TxnProducer:
        producer = TxnProducer(self, self.faults, self.start_s)
        self.made.append(producer)
        return producer


class EchoHandler:
    """Answers each record with one output carrying its offset."""

    tier = "cheap"

    async def handle(self, record: Record) -> list[Output]:
        await asyncio.sleep(0.001)
        return [Output("results", str(record.offset).encode(), None)]

    def should_pause(self) -> bool:
        return False


def make_delivery(guarantee: str, broker: Broker, **kw: Any) -> tuple[Delivery, Any]:
    if guarantee == "at_least_once":
        producer = AckingProducer(broker, **kw)
        return AtLeastOnce(producer), producer  # type: ignore[arg-type]
    factory = TxnFactory(broker, **kw)
    return Transactional(factory, "group"), factory  # type: ignore[arg-type]


OPTIONS = WorkerOptions(max_in_flight=8, max_uncommitted=32, commit_interval_s=0.02)


def make_worker(
    consumer: FakeConsumer, delivery: Delivery, metrics: Metrics, options: WorkerOptions = OPTIONS
) -> TierWorker:
    return TierWorker(
        topic=TP.topic,
        consumer=consumer,  # type: ignore[arg-type]
        delivery=delivery,
        handler=EchoHandler(),
        metrics=metrics,
        options=options,
    )


async def run(
    consumer: FakeConsumer,
    delivery: Delivery,
    metrics: Metrics,
    options: WorkerOptions = OPTIONS,
    *,
    midway: Any = None,
) -> TierWorker:
    worker = make_worker(consumer, delivery, metrics, options)
    task = asyncio.create_task(worker.run())
    did_midway = midway is None
    for _ in range(6000):  # up to a minute on a slow machine
        if not did_midway and consumer.broker.committed >= consumer.n // 3:
            await midway()
            did_midway = True
        if did_midway and consumer.broker.committed >= consumer.n:
            break
        await asyncio.sleep(0.01)
    worker.stop()
    await asyncio.wait_for(task, 30)
    return worker


async def until(condition: Any, timeout_s: float = 30.0) -> None:
    """Poll ``condition`` every 10 ms until it holds or ``timeout_s`` has passed; the test's
    assertions afterwards say what did not happen."""
    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    """A series' value; 0 for a counter child never incremented; an unknown name fails."""
    known = {s.name for m in metrics.registry.collect() for s in m.samples} | {
        m.name + "_total" for m in metrics.registry.collect()
    }
    assert name in known, f"no series {name}"
    return metrics.registry.get_sample_value(name, labels) or 0.0


def assert_delivered(broker: Broker, n: int, guarantee: str) -> None:
    counts = broker.counts()
    assert set(counts) == set(range(n)), "every record's output reached the broker"
    assert broker.committed == n
    if guarantee == "exactly_once":
        assert max(counts.values()) == 1, "read_committed sees each output once"


@pytest.mark.parametrize("guarantee", GUARANTEES)
async def test_every_record_is_delivered_then_committed(guarantee: str) -> None:
    broker = Broker()
    delivery, _ = make_delivery(guarantee, broker)
    consumer = FakeConsumer(broker, 600)
    metrics = Metrics()
    await run(consumer, delivery, metrics)
    assert_delivered(broker, 600, guarantee)
    assert max(broker.counts().values()) == 1  # no fault, no repeat, in either mode
    assert delivery.uncommitted() == 0 and delivery.reserved() == 0
    assert sample(metrics, "escalator_uncommitted", tier="cheap") == 0


@pytest.mark.parametrize("guarantee", GUARANTEES)
async def test_dispatch_goes_on_while_a_slow_commit_is_in_flight(guarantee: str) -> None:
    """Commits run beside the poll loop (awaited inline, they left freed slots idle)."""
    broker = Broker(commit_s=0.05)
    delivery, _ = make_delivery(guarantee, broker)
    consumer = FakeConsumer(broker, 2000)
    await run(consumer, delivery, Metrics())
    assert_delivered(broker, 2000, guarantee)
    assert consumer.fetches_during_commit > 0


@pytest.mark.parametrize("guarantee", GUARANTEES)
async def test_a_slow_commit_cannot_widen_the_duplicate_window(guarantee: str) -> None:
    broker = Broker(commit_s=0.1)
    delivery, _ = make_delivery(guarantee, broker)
    consumer = FakeConsumer(broker, 800)
    worker = await run(consumer, delivery, Metrics())
    assert_delivered(broker, 800, guarantee)
    redo = max(consumer.redo_at_fetch)
    assert redo <= worker.duplicate_window, redo
    assert redo > OPTIONS.max_in_flight, "the window was used, so the bound is what held it"


@pytest.mark.parametrize("guarantee", GUARANTEES)
async def test_a_rebalance_commits_what_is_done_and_the_rest_is_redone(guarantee: str) -> None:
    broker = Broker(commit_s=0.01)
    delivery, _ = make_delivery(guarantee, broker)
    consumer = FakeConsumer(broker, 900)
    metrics = Metrics()
    await run(consumer, delivery, metrics, midway=consumer.rebalance)
    assert_delivered(broker, 900, guarantee)
    assert sample(metrics, "escalator_rebalances_total", tier="cheap", event="revoked") == 1
    assert delivery.uncommitted() == 0


async def test_exactly_once_a_fenced_partition_lets_go_of_its_held_answers() -> None:
    broker = Broker()
    factory = TxnFactory(broker, faults=[ProducerFenced])
    delivery = Transactional(factory, "group")  # type: ignore[arg-type]
    consumer = FakeConsumer(broker, 300)
    metrics = Metrics()
    worker = make_worker(consumer, delivery, metrics, OPTIONS)
    task = asyncio.create_task(worker.run())
    await until(
        lambda: sample(metrics, "escalator_transactions_total", tier="cheap", result="fenced")
    )
    discarded = sample(metrics, "escalator_discarded_answers_total", tier="cheap", reason="fenced")
    assert discarded > 0, "the answers held for the fenced transaction are counted as lost work"
    assert broker.visible == [], "nothing of the fenced transaction became visible"
    assert delivery.held == 0
    # The group gives the partition to a member again (here: us): it resumes from the commit.
    await consumer.rebalance()
    await until(lambda: broker.committed >= 300)
    worker.stop()
    await asyncio.wait_for(task, 30)
    assert_delivered(broker, 300, "exactly_once")


async def test_exactly_once_an_aborted_transaction_is_retried_on_a_fresh_producer() -> None:
    broker = Broker()
    factory = TxnFactory(broker, faults=[KafkaTimeoutError])
    delivery = Transactional(factory, "group")  # type: ignore[arg-type]
    consumer = FakeConsumer(broker, 300)
    metrics = Metrics()
    await run(consumer, delivery, metrics)
    assert_delivered(broker, 300, "exactly_once")
    assert sample(metrics, "escalator_transactions_total", tier="cheap", result="aborted") == 1
    assert len(factory.made) == 2 and factory.made[0].stopped
    assert all(p.stopped for p in factory.made), "closed on shutdown"


async def test_exactly_once_records_fetched_before_the_producer_is_ready_are_fetched_again() -> (
    None
):
    broker = Broker()
    factory = TxnFactory(broker, start_s=0.2)
    delivery = Transactional(factory, "group")  # type: ignore[arg-type]
    consumer = FakeConsumer(broker, 200, leaky=True)
    consumer.position = 0
    worker = make_worker(consumer, delivery, Metrics(), OPTIONS)
    # While init_transactions runs, a fetch already in flight returns records: they must be
    # fetched again once the partition is ready, not processed without a producer or skipped.
    assign = asyncio.create_task(worker.on_assigned({TP}))
    await asyncio.sleep(0.05)
    assert TP in delivery.not_ready
    worker._dispatch(await consumer.getmany(max_records=50))
    assert consumer.seeks == 1 and consumer.position == 0 and worker.in_flight == 0
    await assign
    assert not delivery.not_ready and TP not in consumer.paused()
    consumer.subscribe = lambda topics, listener: None  # type: ignore[method-assign]
    consumer.start = _noop  # type: ignore[method-assign]
    task = asyncio.create_task(worker.run())
    await until(lambda: broker.committed >= 200)
    worker.stop()
    await asyncio.wait_for(task, 30)
    assert_delivered(broker, 200, "exactly_once")


async def _noop() -> None:
    pass


async def test_exactly_once_a_producer_that_cannot_start_stops_the_worker() -> None:
    class Broken(TxnFactory):
        def __call__(self, tp: TopicPartition) -> TxnProducer:
            producer = super().__call__(tp)

            async def fail() -> None:
                raise KafkaTimeoutError()

            producer.start = fail  # type: ignore[method-assign]
            return producer

    broker = Broker()
    delivery = Transactional(Broken(broker), "group")  # type: ignore[arg-type]
    worker = make_worker(FakeConsumer(broker, 10), delivery, Metrics())
    with pytest.raises(KafkaTimeoutError):
        await asyncio.wait_for(worker.run(), 30)
    assert broker.visible == [] and broker.committed == 0


async def test_a_revocation_whose_commit_fails_still_lets_the_partitions_go() -> None:
    """aiokafka logs and swallows a rebalance listener's error: a partition kept after it was
    revoked would make every later commit fail. Here the producer repair (run before an
    at-least-once commit when the sender died) raises something that is not a KafkaError."""

    class Unrepairable(AckingProducer):
        def healthy(self) -> bool:
            return False

        async def repair(self, error: BaseException | None = None, failed: Any = None) -> bool:
            raise ConfigError("ESCALATOR_KAFKA_SSL_CAFILE: unreadable")

    broker = Broker()
    delivery = AtLeastOnce(Unrepairable(broker))  # type: ignore[arg-type]
    consumer = FakeConsumer(broker, 10)
    metrics = Metrics()
    worker = make_worker(consumer, delivery, metrics)
    await worker.on_assigned({TP})
    assert worker.partition_share == 1.0 and TP in worker._trackers
    with pytest.raises(ConfigError):
        await worker.on_revoked({TP})
    assert TP not in worker._trackers, "let go although the commit failed"
    assert sample(metrics, "escalator_rebalances_total", tier="cheap", event="revoked") == 1


def test_watermark_waits_for_the_lowest_unfinished_offset() -> None:
    """Out-of-order completion commits only below the first gap."""
    t = PartitionTracker()
    for offset in (10, 11, 12, 13):
        t.add(offset)
    t.complete(12)
    t.complete(13)
    assert t.to_commit() is None and t.in_flight == 2
    t.complete(10)
    assert t.to_commit() == 11
    t.committed = 11
    assert t.to_commit() is None
    t.complete(11)
    assert t.to_commit() == 14 and t.in_flight == 0 and not t.pending
