"""The worker's stop when the broker cannot help: a join that never completes (before the first
assignment, or no broker at all), and acknowledgements and commits that never come (a broker
outage). Either way the worker ends after ``stop()`` within the shutdown grace, and what it
did not commit stays uncommitted (redone by the next owner; nothing is dropped)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from escalator.engine.at_least_once import AtLeastOnce
from escalator.engine.worker import WorkerOptions, stop_reserve_s
from escalator.observability.metrics import Metrics
from tests.unit.engine.test_delivery import AckingProducer, Broker, FakeConsumer, make_worker


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
