"""Exactly-once: the fresh producer after an aborted transaction, when it will not start.

Driven by the real TierWorker against the fakes of ``test_delivery.py``. Without a producer a
partition cannot commit, its held answers fill ``max_uncommitted`` and the worker stops taking
work: the start is bounded and retried, and past a bound the worker stops with the error (the
orchestrator restarts it), never a silent stall.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    TransactionalIdAuthorizationFailed,
)

from escalator.engine.delivery import Bound, Done, PartitionTracker
from escalator.engine.transactional import Transactional
from escalator.observability.metrics import Metrics
from tests.unit.engine.test_delivery import (
    TP,
    Broker,
    FakeConsumer,
    TxnFactory,
    TxnProducer,
    assert_delivered,
    make_worker,
    run,
    sample,
    until,
)


class StartFaults(TxnFactory):
    """The first producer starts; the next ``failing`` ones do not (``init_transactions``):
    their start raises ``error``, or with no error never returns (a broker that does not
    answer). The first producer's next transaction aborts when a test adds to ``faults``."""

    def __init__(self, broker: Broker, error: KafkaError | None, failing: float) -> None:
        super().__init__(broker)
        self.error = error
        self.failing = failing

    def __call__(self, tp: TopicPartition) -> TxnProducer:
        producer = super().__call__(tp)
        if len(self.made) > 1 and self.failing > 0:
            self.failing -= 1
            producer.start = self._start  # type: ignore[method-assign]
        return producer

    async def _start(self) -> None:
        if self.error is None:
            await asyncio.Event().wait()
        raise self.error  # type: ignore[misc]


def failed_starts(metrics: Metrics) -> float:
    return sample(metrics, "escalator_transactions_total", tier="cheap", result="producer_failed")


@pytest.mark.parametrize(
    "error", [KafkaConnectionError("broker away for a moment"), None], ids=["raises", "hangs"]
)
async def test_a_replacement_that_does_not_start_is_tried_again_and_nothing_is_lost(
    error: KafkaError | None,
) -> None:
    """The transaction aborts and its fresh producer fails to start (or its start hangs, cut
    at the bound): the next commits start another, and every record commits exactly once."""
    broker = Broker()
    factory = StartFaults(broker, error, failing=1)
    factory.faults.append(KafkaTimeoutError)  # the first transaction aborts
    delivery = Transactional(factory, "group", start_timeout_s=0.2)  # type: ignore[arg-type]
    consumer = FakeConsumer(broker, 300)
    metrics = Metrics()
    await run(consumer, delivery, metrics)  # returns: the worker stopped when asked, no error
    assert_delivered(broker, 300, "exactly_once")
    assert sample(metrics, "escalator_transactions_total", tier="cheap", result="aborted") == 1
    assert failed_starts(metrics) == 1
    assert len(factory.made) == 3, "the first, the one that did not start, the one that did"
    assert factory.made[1].stopped, "a start cut short is closed (its connections)"
    assert delivery.held == 0


async def test_a_replacement_that_keeps_failing_stops_the_worker_with_its_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Past the bound the worker stops and ``run`` raises the start's error; nothing past the
    last committed transaction was committed or became visible."""
    broker = Broker(commit_s=0.05)  # slow commits: the fault lands mid-run
    factory = StartFaults(broker, KafkaConnectionError("no broker"), failing=math.inf)
    delivery = Transactional(factory, "group", give_up_s=0.5)  # type: ignore[arg-type]
    consumer = FakeConsumer(broker, 2000)
    metrics = Metrics()
    worker = make_worker(consumer, delivery, metrics)
    task = asyncio.create_task(worker.run())
    await until(lambda: broker.committed >= 100)
    factory.faults.append(KafkaTimeoutError)
    with pytest.raises(KafkaConnectionError, match="no broker"):
        await asyncio.wait_for(task, 10)
    committed = broker.committed
    assert 100 <= committed < 2000
    assert sorted(broker.visible) == list(range(committed)), "outputs below the commit, once"
    assert delivery.held > 0, "the answers held for the aborted transaction never committed"
    assert failed_starts(metrics) == 2, "tried again once (1 s later), then past the bound"
    gave_up = [r for r in caplog.records if r.getMessage() == "transactional_producer_gave_up"]
    assert len(gave_up) == 1 and gave_up[0].levelno == logging.ERROR


async def test_a_replacement_refused_for_good_stops_the_worker_at_once() -> None:
    """An error that waiting cannot cure (authorisation) stops the worker at the first try."""
    broker = Broker()
    error = TransactionalIdAuthorizationFailed("escalator-group-requests-0")
    factory = StartFaults(broker, error, failing=math.inf)
    factory.faults.append(KafkaTimeoutError)
    delivery = Transactional(factory, "group")  # type: ignore[arg-type]
    metrics = Metrics()
    worker = make_worker(FakeConsumer(broker, 300), delivery, metrics)
    with pytest.raises(TransactionalIdAuthorizationFailed):
        await asyncio.wait_for(worker.run(), 10)
    assert broker.committed == 0 and broker.visible == []
    assert failed_starts(metrics) == 1


async def test_a_revocation_whose_transaction_aborts_lets_go_without_a_new_producer() -> None:
    """The revoked partition's producer is closed right after its commit: starting a fresh one
    there (here one that never answers) would only hold the revocation up."""
    broker = Broker()
    factory = StartFaults(broker, None, failing=math.inf)
    delivery = Transactional(factory, "group")  # type: ignore[arg-type]
    consumer = FakeConsumer(broker, 10)
    metrics = Metrics()
    worker = make_worker(consumer, delivery, metrics)
    await worker.on_assigned({TP})
    worker._dispatch(await consumer.getmany(max_records=10))
    await until(lambda: delivery.held == 10)
    factory.faults.append(KafkaTimeoutError)  # the revocation's transaction aborts
    await asyncio.wait_for(worker.on_revoked({TP}), 5)
    assert len(factory.made) == 1 and factory.made[0].stopped
    assert broker.committed == 0 and broker.visible == []
    discarded = sample(metrics, "escalator_discarded_answers_total", tier="cheap", reason="revoked")
    assert discarded == 10 and delivery.held == 0


class _HangingProducer:
    """Partition 0's first producer aborts its first transaction; every later one of partition 0
    never finishes ``init_transactions``. Partition 1's are healthy."""

    def __init__(self, tp: TopicPartition, hang: bool, abort: bool) -> None:
        self.tp, self.hang, self.abort, self.stopped = tp, hang, abort, False

    async def start(self) -> None:
        if self.hang:
            await asyncio.Event().wait()

    async def stop(self) -> None:
        self.stopped = True

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        if self.abort:
            self.abort = False
            raise KafkaTimeoutError()
        yield

    async def send_offsets_to_transaction(self, *args: object) -> None:
        pass


class _Paused:
    def pause(self, *args: object) -> None:
        pass

    def resume(self, *args: object) -> None:
        pass

    async def seek_to_committed(self, *args: object) -> None:
        pass


def bind(
    delivery: Transactional, trackers: dict[TopicPartition, PartitionTracker]
) -> list[BaseException]:
    """Bind ``delivery`` to a worker of ``trackers`` without a consumer: the test drives the
    commits; returns the errors the strategy fails the worker with."""
    metrics = Metrics()
    failed: list[BaseException] = []
    delivery.bind(
        Bound(
            "cheap",
            _Paused(),  # type: ignore[arg-type]
            trackers,
            metrics,
            metrics.tier("cheap"),
            4,
            wake=lambda: None,
            drop=lambda tp, reason: None,
            fail=failed.append,
        )
    )
    return failed


async def test_a_replacement_that_hangs_holds_up_no_other_commit() -> None:
    """Partition 0's transaction aborts and its fresh producer's start hangs (bounded at 30 s
    here): partition 1 keeps committing at once, and a revocation of partition 0 takes its
    commit and lets go at once, closing what the replacement started. Before, the replacement
    ran under the commit: every partition's next commit, and the revocation, waited for it."""
    tp0, tp1 = TopicPartition("t", 0), TopicPartition("t", 1)
    made: list[_HangingProducer] = []

    def factory(tp: TopicPartition) -> _HangingProducer:
        earlier = sum(1 for p in made if p.tp == tp)
        made.append(_HangingProducer(tp, hang=tp == tp0 and earlier > 0, abort=tp == tp0))
        return made[-1]

    trackers = {tp0: PartitionTracker(), tp1: PartitionTracker()}
    delivery = Transactional(factory, "g", start_timeout_s=30)  # type: ignore[arg-type]
    failed = bind(delivery, trackers)
    await delivery.assigned({tp0, tp1})

    async def commit_offset(offset: int, only: set[TopicPartition] | None = None) -> None:
        for tp, tracker in trackers.items():
            tracker.add(offset)
            tracker.complete(offset)
            await delivery.deliver(tp, tracker, [Done(offset, [])])
        await asyncio.wait_for(delivery.commit(only), 2)

    await commit_offset(0)  # partition 0 aborts: its replacement starts, and hangs
    assert (trackers[tp0].committed, trackers[tp1].committed) == (None, 1)
    await commit_offset(1)
    assert (trackers[tp0].committed, trackers[tp1].committed) == (None, 2)
    delivery.revoking({tp0})
    await commit_offset(2, {tp0})  # the revocation's commit: no producer, nothing to wait for
    await asyncio.wait_for(delivery.revoked({tp0}), 2)
    assert [p.stopped for p in made if p.tp == tp0] == [True, True], "the hanging start closed"
    assert not failed
    await delivery.close()


class _SlowStop(_HangingProducer):
    """Partition 0's first producer aborts its first transaction; the next one starts when
    ``gate`` is set; every stop takes 0.3 s."""

    gate = asyncio.Event()

    def __init__(self, tp: TopicPartition, first: bool) -> None:
        super().__init__(tp, hang=False, abort=first)
        self.first, self.stop_done = first, False

    async def start(self) -> None:
        if not self.first:
            await self.gate.wait()

    async def stop(self) -> None:
        self.stopped = True
        await asyncio.sleep(0.3)
        self.stop_done = True


async def test_a_revocation_never_cuts_a_replacements_stop_short() -> None:
    """The replacement starts just after its partition began to be revoked: it is not wanted
    and is stopped, and the revocation, which cancels the replacement's task, lets that stop
    finish (one cut short can leave connections and aiokafka's sender task behind)."""
    tp0 = TopicPartition("t", 0)
    made: list[_SlowStop] = []
    _SlowStop.gate = asyncio.Event()

    def factory(tp: TopicPartition) -> _SlowStop:
        made.append(_SlowStop(tp, first=not made))
        return made[-1]

    trackers = {tp0: PartitionTracker()}
    delivery = Transactional(factory, "g", start_timeout_s=30)  # type: ignore[arg-type]
    failed = bind(delivery, trackers)
    await delivery.assigned({tp0})
    trackers[tp0].add(0)
    trackers[tp0].complete(0)
    await delivery.deliver(tp0, trackers[tp0], [Done(0, [])])
    await delivery.commit()  # aborts: the replacement stops the first producer, then starts
    await until(lambda: len(made) == 2)
    delivery.revoking({tp0})
    _SlowStop.gate.set()  # the start completes: not wanted, its stop begins
    await until(lambda: made[1].stopped)
    await asyncio.wait_for(delivery.revoked({tp0}), 5)
    assert made[1].stop_done, "the replacement's stop was cut short"
    assert made[0].stop_done and not failed
