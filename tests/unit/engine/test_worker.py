"""The tier worker (engine/worker.py), against the fakes of test_delivery.py.

Its batch-shaped dispatch: records answered at once (a list from ``handle``) are delivered per
fetched batch, with no task each; records answered by a coroutine (a model call) run as tasks
under the in-flight limit, and those of a partition that finish in the same turn of the loop
are delivered together. Either way an offset commits only once its outputs are taken by the
strategy.

Its ``Holder`` hook, for a handler that holds records until something outside decides them
(the review console): it hears of assignments, revocations and deliveries, and a revocation
waits only for the records it did not give up.

Its stop when the broker cannot help: a join that never completes (before the first
assignment, or no broker at all), and acknowledgements and commits that never come (a broker
outage). Either way the worker ends after ``stop()`` within the shutdown grace, and what it
did not commit stays uncommitted (redone by the next owner; nothing is dropped).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import pytest
from aiokafka import TopicPartition

from escalator.engine.at_least_once import AtLeastOnce
from escalator.engine.delivery import Delivery, Done, PartitionTracker
from escalator.engine.worker import Output, Record, TierWorker, WorkerOptions, stop_reserve_s
from escalator.observability.metrics import Metrics
from tests.unit.batch_sends import BatchSends
from tests.unit.engine.test_delivery import (
    GUARANTEES,
    TP,
    AckingProducer,
    Broker,
    FakeConsumer,
    assert_delivered,
    make_delivery,
    make_worker,
    sample,
    until,
)


class Counting:
    """A strategy that records how many records each ``deliver`` call carried, and whether
    they were answered at once."""

    def __init__(self, inner: Delivery) -> None:
        self._inner = inner
        self.calls: list[int] = []
        self.at_once: list[bool] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @property
    def not_ready(self) -> Any:
        return self._inner.not_ready

    @property
    def awaiting_ack(self) -> int:
        return self._inner.awaiting_ack

    async def deliver(
        self,
        tp: TopicPartition,
        tracker: PartitionTracker,
        done: Sequence[Done],
        *,
        at_once: bool = False,
    ) -> None:
        self.calls.append(len(done))
        self.at_once.append(at_once)
        await self._inner.deliver(tp, tracker, done, at_once=at_once)


class AtOnce:
    """Answers every record at once (a list), as a dead letter or a local answer would."""

    tier = "cheap"

    def handle(self, record: Record) -> list[Output]:
        return [Output("results", str(record.offset).encode(), None)]

    def should_pause(self) -> bool:
        return False


class Gated:
    """Odd offsets are bad input (answered at once); even ones wait for a model, which
    answers them all together when ``gate`` opens."""

    tier = "cheap"

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.waiting = 0

    def handle(self, record: Record) -> Any:
        if record.offset % 2:
            return [Output("results", str(record.offset).encode(), None)]
        return self._model(record)

    async def _model(self, record: Record) -> list[Output]:
        self.waiting += 1
        await self.gate.wait()
        return [Output("results", str(record.offset).encode(), None)]

    def should_pause(self) -> bool:
        return False


def worker(
    consumer: FakeConsumer, delivery: Any, handler: Any, metrics: Metrics, **options: Any
) -> TierWorker:
    opts = {"max_in_flight": 8, "max_uncommitted": 32, "commit_interval_s": 0.02, **options}
    return TierWorker(
        topic=TP.topic,
        consumer=consumer,  # type: ignore[arg-type]
        delivery=delivery,
        handler=handler,
        metrics=metrics,
        options=WorkerOptions(**opts),
    )


@pytest.mark.parametrize("guarantee", GUARANTEES)
async def test_records_answered_at_once_are_delivered_per_fetched_batch(guarantee: str) -> None:
    broker = Broker()
    inner, _ = make_delivery(guarantee, broker)
    delivery = Counting(inner)
    consumer = FakeConsumer(broker, 200)
    metrics = Metrics()
    w = worker(consumer, delivery, AtOnce(), metrics)
    task = asyncio.create_task(w.run())
    await until(lambda: broker.committed >= 200)
    w.stop()
    await asyncio.wait_for(task, 30)
    assert_delivered(broker, 200, guarantee)
    fetches = len(consumer.redo_at_fetch)
    assert len(delivery.calls) == fetches, "one delivery per fetched batch, not per record"
    assert delivery.calls[0] == 8, "the first poll is sized by the free model slots"
    # By the budget (32 uncommitted) less what is still being delivered: the next poll can
    # come before the last batch's acknowledgements (record batches take a turn longer).
    assert 8 < max(delivery.calls) <= 32, "once a batch was answered at once, by the budget"
    assert sample(metrics, "escalator_processing_seconds_count", tier="cheap") == 200
    assert sample(metrics, "escalator_requests_total", tier="cheap") == 200


class AtOnceThenModel:
    """Answers the first ``local`` records at once (tier 0, say), then every record waits for
    a model: counts how many model calls run at the same time."""

    tier = "cheap"

    def __init__(self, local: int) -> None:
        self.local = local
        self.running = 0
        self.most = 0

    def handle(self, record: Record) -> Any:
        if record.offset < self.local:
            return [Output("results", str(record.offset).encode(), None)]
        return self._model(record)

    async def _model(self, record: Record) -> list[Output]:
        self.running += 1
        self.most = max(self.most, self.running)
        await asyncio.sleep(0.001)
        self.running -= 1
        return [Output("results", str(record.offset).encode(), None)]

    def should_pause(self) -> bool:
        return False


@pytest.mark.parametrize("guarantee", GUARANTEES)
async def test_a_fetch_sized_for_answers_at_once_never_passes_the_in_flight_limit(
    guarantee: str,
) -> None:
    """After batches answered at once, a poll is sized by the uncommitted budget (32), not
    by the model slots (8). When such a batch turns out to need the model, its records wait
    for slots: never more than 8 model calls at once, and every record is delivered."""
    broker = Broker()
    inner, _ = make_delivery(guarantee, broker)
    delivery = Counting(inner)
    consumer = FakeConsumer(broker, 300)
    handler = AtOnceThenModel(local=100)
    w = worker(consumer, delivery, handler, Metrics())
    task = asyncio.create_task(w.run())
    await until(lambda: broker.committed >= 300)
    w.stop()
    await asyncio.wait_for(task, 30)
    assert_delivered(broker, 300, guarantee)
    assert 8 < max(delivery.calls[:5]) <= 32, "the at-once batches were fetched to the budget"
    assert handler.most == 8, "queued records started as slots freed, never past the limit"
    assert w.in_flight == 0


@pytest.mark.parametrize("guarantee", GUARANTEES)
async def test_records_a_model_answers_together_are_delivered_together(guarantee: str) -> None:
    """A mixed batch: the bad input is delivered at once, while the model-bound records of
    the same batch hold the watermark below them; once the model answers them all in one
    turn, they go out as one delivery and everything commits."""
    broker = Broker()
    inner, _ = make_delivery(guarantee, broker)
    delivery = Counting(inner)
    consumer = FakeConsumer(broker, 8)
    handler = Gated()
    metrics = Metrics()
    w = worker(consumer, delivery, handler, metrics, max_in_flight=8)
    task = asyncio.create_task(w.run())
    await until(lambda: handler.waiting == 4 and 4 in [c for c in delivery.calls])
    await asyncio.sleep(0.1)
    assert delivery.calls == [4], "the four bad records of the batch, in one delivery"
    assert w.in_flight == 4, "only the records that wait for a model hold a slot"
    assert broker.committed == 0, "offset 0 waits for the model: nothing commits above it"
    handler.gate.set()
    await until(lambda: broker.committed >= 8)
    w.stop()
    await asyncio.wait_for(task, 30)
    assert delivery.calls == [4, 4], "the four answered in one turn, in one delivery"
    assert delivery.at_once == [True, False], "the strategy is told which were answered at once"
    assert_delivered(broker, 8, guarantee)
    assert w.in_flight == 0


async def test_a_stop_abandons_a_collected_batch_whole_and_counts_it() -> None:
    """Records that finished and wait in a batch for their delivery are not done: a stop
    that cancels the delivery leaves all of them to be redone, and counts each."""
    broker = Broker()

    class NeverAcked(BatchSends):
        def get(self) -> NeverAcked:
            return self

        def healthy(self) -> bool:
            return True

        async def send(self, topic: str, value: bytes, **kwargs: Any) -> asyncio.Future[None]:
            return asyncio.get_running_loop().create_future()

    delivery = Counting(AtLeastOnce(NeverAcked()))  # type: ignore[arg-type]
    consumer = FakeConsumer(broker, 8)
    handler = Gated()
    metrics = Metrics()
    w = worker(consumer, delivery, handler, metrics, max_in_flight=4, shutdown_grace_s=0.2)
    task = asyncio.create_task(w.run())
    await until(lambda: handler.waiting == 4)
    handler.gate.set()
    await until(lambda: delivery.calls == [4, 4])
    w.stop()
    await asyncio.wait_for(task, 30)
    assert broker.committed == 0
    assert sample(metrics, "escalator_abandoned_in_flight_total", tier="cheap") == 8


class Batched(Gated):
    """Gated, with ``handle_batch``: the worker must call it once per fetched batch (and
    never ``handle``), and use its answers in order."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[int]] = []

    def handle(self, record: Record) -> Any:
        raise AssertionError("handle_batch is there: handle must not be called")

    def handle_batch(self, records: Sequence[Record]) -> list[Any]:
        self.batches.append([r.offset for r in records])
        return [Gated.handle(self, r) for r in records]


@pytest.mark.parametrize("guarantee", GUARANTEES)
async def test_a_handler_with_handle_batch_gets_each_fetched_batch_in_one_call(
    guarantee: str,
) -> None:
    broker = Broker()
    inner, _ = make_delivery(guarantee, broker)
    consumer = FakeConsumer(broker, 40)
    handler = Batched()
    handler.gate.set()
    w = worker(consumer, inner, handler, Metrics(), max_in_flight=8)
    task = asyncio.create_task(w.run())
    await until(lambda: broker.committed >= 40)
    w.stop()
    await asyncio.wait_for(task, 30)
    assert_delivered(broker, 40, guarantee)
    assert sorted(o for b in handler.batches for o in b) == list(range(40))
    assert len(handler.batches) == len(consumer.redo_at_fetch), "one call per fetched batch"
    assert max(len(b) for b in handler.batches) > 1


class Buggy:
    """A handler with a bug: its coroutine raises for one record."""

    tier = "cheap"

    def __init__(self, bad: int) -> None:
        self.bad = bad

    def handle(self, record: Record) -> Any:
        return self._model(record)

    async def _model(self, record: Record) -> list[Output]:
        await asyncio.sleep(0)
        if record.offset == self.bad:
            raise RuntimeError("a bug, quoting the request text")
        return [Output("results", str(record.offset).encode(), None)]

    def should_pause(self) -> bool:
        return False


@pytest.mark.parametrize("guarantee", GUARANTEES)
async def test_a_handler_that_raises_stops_the_worker_and_its_record_stays_uncommitted(
    guarantee: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler coroutine that raises (a bug, not bad input) must not leave its partition
    stalled behind it with only asyncio's "exception never retrieved": the worker stops and
    raises it, having committed nothing at or past its record (redone by the next owner).
    The log line names the error's type, never its message (it may quote the text)."""
    broker = Broker()
    inner, _ = make_delivery(guarantee, broker)
    consumer = FakeConsumer(broker, 40)
    w = worker(consumer, inner, Buggy(bad=13), Metrics())
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(w.run(), 30)
    assert broker.committed <= 13
    [line] = [r for r in caplog.records if r.getMessage() == "handler_failed"]
    fields = line.fields  # type: ignore[attr-defined]
    assert fields["error"] == "RuntimeError" and "test_worker.py:" in fields["at"]
    assert "quoting the request text" not in caplog.text + repr(fields)


# -- the Holder hook ----------------------------------------------------------------------------
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


# -- stop when the broker cannot help ----------------------------------------------------------
class NeverJoins(FakeConsumer):
    """aiokafka's start() waits for the first assignment: here it never comes."""

    async def start(self) -> None:
        await asyncio.Event().wait()


class BrokerGone(FakeConsumer):
    """Fetches work once, then the broker is gone: commits never return."""

    async def commit(self, offsets: dict[Any, Any]) -> None:
        await asyncio.Event().wait()


class NoAcks(AckingProducer):
    """Sends are accepted; their acknowledgements never come."""

    async def send(self, topic: str, value: bytes, **kwargs: Any) -> asyncio.Future[None]:
        return asyncio.get_running_loop().create_future()


async def test_stop_before_the_first_assignment_ends_the_worker() -> None:
    """A worker stopped while its consumer still waits to join ends, and never ran a record."""
    broker = Broker()
    consumer = NeverJoins(broker, 10)
    worker = make_worker(consumer, AtLeastOnce(AckingProducer(broker)), Metrics())  # type: ignore[arg-type]
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(0.2)
    assert not task.done()
    worker.stop()
    await asyncio.wait_for(task, 10)  # a bound against a hang, not a timing
    assert broker.visible == [] and broker.committed == 0


async def test_stop_in_an_outage_ends_within_the_grace_and_commits_nothing_unacknowledged() -> None:
    """No acknowledgement and no commit ever returns: the drain waits the grace less its
    reserve, the final commit gives up at its bound, the worker ends, nothing is committed."""
    broker = Broker()
    grace = 1.2
    options = WorkerOptions(
        max_in_flight=8, max_uncommitted=32, commit_interval_s=0.02, shutdown_grace_s=grace
    )
    consumer = BrokerGone(broker, 50)
    metrics = Metrics()
    worker = make_worker(consumer, AtLeastOnce(NoAcks(broker)), metrics, options)  # type: ignore[arg-type]
    task = asyncio.create_task(worker.run())
    for _ in range(500):
        if worker.in_flight == 0 and consumer.position > 0:
            break
        await asyncio.sleep(0.01)
    started = time.monotonic()
    worker.stop()
    await asyncio.wait_for(task, 30)  # a bound against a hang
    took = time.monotonic() - started
    assert broker.committed == 0 and broker.visible == []
    # The drain's share of the grace was spent waiting: the stop was not cut short.
    assert took >= grace - stop_reserve_s(grace)
    abandoned = metrics.registry.get_sample_value(
        "escalator_abandoned_in_flight_total", {"tier": "cheap"}
    )
    assert abandoned is not None and abandoned > 0
