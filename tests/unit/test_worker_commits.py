"""TierWorker's commit loop against fakes: commits run beside dispatch, the window holds.

The consumer and producer here are fakes (the integration and reliability suites run the same
worker against the real broker). The fake consumer makes every commit slow, and records, at
every fetch, how many records handed out (this batch included) a crash would make the next
owner redo: those at or above the last committed offset.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition

from escalator.engine.at_least_once import AtLeastOnce
from escalator.engine.worker import Output, Record, TierWorker, WorkerOptions
from escalator.observability.metrics import Metrics

TP = TopicPartition("requests", 0)


@dataclass
class FakeRecord:
    offset: int
    topic: str = TP.topic
    partition: int = TP.partition
    key: bytes | None = None
    value: bytes | None = b"{}"
    headers: Any = ()


class SlowCommitConsumer:
    def __init__(self, n: int, commit_s: float) -> None:
        self.n = n
        self.commit_s = commit_s
        self.position = 0
        self.committed = 0
        self.committing = False
        self.fetches_during_commit = 0
        self.redo_at_fetch: list[int] = []
        self._listener: Any = None
        self._paused: set[TopicPartition] = set()

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self._listener = listener

    async def start(self) -> None:
        await self._listener.on_partitions_assigned({TP})

    async def stop(self) -> None:
        pass

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def pause(self, *tps: TopicPartition) -> None:
        self._paused |= set(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self._paused -= set(tps)

    def highwater(self, tp: TopicPartition) -> int:
        return self.n

    async def getmany(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[FakeRecord]]:
        self.fetches_during_commit += self.committing
        if TP in self._paused or self.position >= self.n:
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        await asyncio.sleep(0)
        end = min(self.n, self.position + (max_records or 500))
        batch = [FakeRecord(o) for o in range(self.position, end)]
        self.position = end
        # Counted with this batch: everything handed out at or above the committed offset.
        self.redo_at_fetch.append(self.position - self.committed)
        return {TP: batch}

    async def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        self.committing = True
        try:
            await asyncio.sleep(self.commit_s)
        finally:
            self.committing = False
        self.committed = offsets[TP].offset


class AckingProducer:
    """ProducerHandle's surface: every send is acknowledged at once."""

    def get(self) -> AckingProducer:
        return self

    def healthy(self) -> bool:
        return True

    async def send(self, topic: str, value: bytes, **kwargs: Any) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


class QuickHandler:
    tier = "cheap"

    async def handle(self, record: Record) -> list[Output]:
        await asyncio.sleep(0.001)
        return [Output("results", b"{}", None)]

    def should_pause(self) -> bool:
        return False


async def run_worker(n: int, commit_s: float, options: WorkerOptions) -> SlowCommitConsumer:
    consumer = SlowCommitConsumer(n, commit_s)
    worker = TierWorker(
        topic=TP.topic,
        consumer=consumer,  # type: ignore[arg-type]
        delivery=AtLeastOnce(AckingProducer()),  # type: ignore[arg-type]
        handler=QuickHandler(),
        metrics=Metrics(),
        options=options,
    )
    run = asyncio.create_task(worker.run())
    for _ in range(6000):  # up to a minute on a slow machine
        if consumer.position >= n and worker.in_flight == 0:
            break
        await asyncio.sleep(0.01)
    worker.stop()
    await asyncio.wait_for(run, 30)
    return consumer


async def test_dispatch_goes_on_while_a_slow_commit_is_in_flight() -> None:
    options = WorkerOptions(max_in_flight=8, max_uncommitted=32, commit_interval_s=0.05)
    consumer = await run_worker(2000, commit_s=0.05, options=options)
    assert consumer.committed == 2000, "shutdown commits everything that was done"
    # Commits were awaited inline before: the loop could not fetch while one was in flight.
    assert consumer.fetches_during_commit > 0


async def test_a_slow_commit_cannot_widen_the_duplicate_window() -> None:
    options = WorkerOptions(max_in_flight=8, max_uncommitted=32, commit_interval_s=0.05)
    window = options.max_uncommitted + options.max_in_flight
    consumer = await run_worker(1000, commit_s=0.2, options=options)
    assert consumer.committed == 1000
    assert max(consumer.redo_at_fetch) <= window, max(consumer.redo_at_fetch)
    # ...and the window was used, so the bound was what held it.
    assert max(consumer.redo_at_fetch) > options.max_uncommitted
