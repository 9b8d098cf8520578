"""The review console as assembled (``review/assemble.py``): built from its settings, and its
process (the ``Service``: the page entered first and left last, SIGTERM, a failing worker,
health), on fakes of the consumer and producer.

The fakes and ``running`` (a console on fakes, running) are shared: the queues' rules are
tested through them in ``test_handler.py``, parking in ``test_parking.py``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError

from escalator.config import ParkingSettings, ReviewSettings, Topics, load_settings
from escalator.contract.messages import Request
from escalator.contract.reviews import ReviewItem, review_item_value
from escalator.engine.at_least_once import AtLeastOnce
from escalator.engine.parking import Parking
from escalator.engine.worker import TierWorker, WorkerOptions
from escalator.kafka.retention import TopicRetention
from escalator.model.task import load_task
from escalator.observability.metrics import Metrics
from escalator.review.assemble import Console, build_console, console_service, handler_running
from escalator.review.handler import ReviewHandler
from tests.unit.batch_sends import BatchSends
from tests.unit.tiers.test_handlers import ok

TOPICS = Topics()
#: The console's process settings (its health port on any free port).
SETTINGS = {
    "KAFKA_BOOTSTRAP_SERVERS": "k:9092",
    "ESCALATOR_METRICS_PORT": "0",
    "ESCALATOR_METRICS_HOST": "127.0.0.1",
}
TP = TopicPartition(TOPICS.reviews, 0)
LABELS = load_task(None).labels


@dataclass
class Rec:
    offset: int
    value: bytes | None
    timestamp: int = 1_000_000
    headers: tuple[tuple[str, bytes], ...] = (("traceparent", b"00-abc-01"),)
    key: bytes | None = b"request-key"
    topic: str = TP.topic
    partition: int = TP.partition


@dataclass
class FakeConsumer:
    """The surface of AIOKafkaConsumer the engine's worker uses, for one partition."""

    tp: TopicPartition
    pending: list[Rec] = field(default_factory=list)
    commits: list[int] = field(default_factory=list)
    listener: Any = None
    paused_set: set[TopicPartition] = field(default_factory=set)
    high: int | None = None
    fetched: int = 0

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.listener = listener

    async def start(self) -> None:
        await self.listener.on_partitions_assigned({self.tp})

    async def stop(self) -> None:
        return None

    def assignment(self) -> set[TopicPartition]:
        return {self.tp}

    def paused(self) -> set[TopicPartition]:
        return set(self.paused_set)

    def pause(self, *tps: TopicPartition) -> None:
        self.paused_set |= set(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused_set -= set(tps)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        raise AssertionError("the console never seeks")

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0}

    async def getmany(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Rec]]:
        await asyncio.sleep(0.005)  # the real one waits for records: let others run
        if self.tp in self.paused_set:
            return {}
        n = len(self.pending) if max_records is None else max_records
        out, self.pending = self.pending[:n], self.pending[n:]
        if out:
            self.fetched = out[-1].offset + 1
        return {self.tp: out} if out else {}

    async def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        self.commits.append(offsets[self.tp].offset)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.high

    async def position(self, tp: TopicPartition) -> int:
        return self.fetched

    @property
    def committed(self) -> int | None:
        return self.commits[-1] if self.commits else None


class FakeProducer(BatchSends):
    """ProducerHandle's surface; with ``fail`` set nothing is acknowledged."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.keys: list[bytes | None] = []
        self.headers: dict[str, Any] = {}
        self.fail = False
        #: While set, acknowledgements wait for it to be cleared (a slow broker).
        self.slow: asyncio.Event | None = None

    async def start(self) -> None: ...
    async def stop(self, **_: float) -> None: ...

    def get(self) -> FakeProducer:
        return self

    def healthy(self) -> bool:
        return True

    async def repair(self, error: BaseException | None = None, failed: Any = None) -> bool:
        return True

    async def send(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None
    ) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.fail:
            future.set_exception(KafkaTimeoutError())
            return future
        self.sent.append((topic, value))
        self.keys.append(key)
        self.headers[topic] = headers
        if self.slow is None:
            future.set_result(None)
        else:
            slow = self.slow
            asyncio.get_running_loop().create_task(slow.wait()).add_done_callback(
                lambda _: future.done() or future.set_result(None)
            )
        return future


def item(rid: str, created_ms: int = 1_000, queue: str = "review") -> bytes:
    return review_item_value(
        ReviewItem(
            queue=queue,  # type: ignore[arg-type]
            request=Request(rid, f"text of {rid}"),
            reason="strong_low_confidence",
            cheap=ok("safe", 0.4),
            strong=ok("unsafe", 0.4, tier="strong"),
            labels=LABELS,
            escalation_reason="low_confidence",
            shadow=False,
            sample_rate=1.0,
            review_rate=1.0,
            threshold_version="v1",
            created_ms=created_ms,
        )
    )


class Clock:
    def __init__(self) -> None:
        self.now = 2_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Running:
    q: ReviewHandler
    consumer: FakeConsumer
    producer: FakeProducer
    clock: Clock
    metrics: Metrics
    consumers: dict[str, FakeConsumer]


async def eventually(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll ``condition`` until it holds (the test's assertion afterwards says what did not)."""
    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)


def fake_console(
    *,
    tick_s: float = 60,
    decide_wait_s: float = 30.0,
    grace_s: float = 25.0,
    buffer: int = 10,
    lease_s: float = 60,
    read_decided: Callable[[int], Awaitable[list[str]]] | None = None,
    parking: ParkingSettings | None = None,
    parked: Callable[[str], Parking | None] = lambda topic: None,
    retention: TopicRetention | None = None,
    clock: Callable[[], float] = time.time,
    metrics: Metrics | None = None,
) -> tuple[Console, FakeProducer, dict[str, FakeConsumer]]:
    """A console's Service over fakes, built as ``build_console`` builds it, not started."""
    metrics, producer = metrics or Metrics(), FakeProducer()
    consumers = {
        t: FakeConsumer(TopicPartition(t, 0)) for t in (TOPICS.reviews, TOPICS.adjudications)
    }

    async def nothing_decided(since_ms: int) -> list[str]:
        return []

    handler = ReviewHandler(
        topics=TOPICS,
        settings=replace(ReviewSettings(), lease_s=lease_s, buffer=buffer),
        parking_settings=parking or ParkingSettings(check_s=0.01),
        metrics=metrics,
        max_text_chars=1000,
        read_decided=read_decided or nothing_decided,
        retention=lambda topic: retention,
        clock=clock,
        decide_wait_s=decide_wait_s,
        tick_s=tick_s,
    )
    options = WorkerOptions(
        max_in_flight=buffer,
        max_uncommitted=buffer,
        commit_interval_s=0.01,
        shutdown_grace_s=grace_s,
    )
    workers = [
        TierWorker(
            topic=t,
            consumer=c,  # type: ignore[arg-type]
            delivery=AtLeastOnce(producer),  # type: ignore[arg-type]
            handler=handler,
            metrics=metrics,
            options=options,
            parking=parked(t),
            holder=handler,
        )
        for t, c in consumers.items()
    ]
    settings = load_settings({**SETTINGS, "ESCALATOR_SHUTDOWN_GRACE_S": str(grace_s)})
    service = console_service(
        settings,
        metrics,
        handler=handler,
        workers=workers,
        consumers=list(consumers.values()),
        producer=producer,
    )
    return Console(service, handler), producer, consumers


@contextlib.asynccontextmanager
async def running(
    values: list[bytes | None] | list[Rec],
    decided: set[str] | None = None,
    lease_s: float = 60,
    *,
    parking: ParkingSettings | None = None,
    watch: Callable[[str, Metrics, Clock], Parking | None] = lambda topic, m, c: None,
    buffer: int = 100,
    retention: TopicRetention | None = None,
    high: int | None = None,
) -> AsyncIterator[Running]:
    """A console on fakes (``fake_console``), running; the values arrive on partition 0 of the
    reviews topic, whose high watermark is ``high`` from the start (None: unknown, until a test
    sets it)."""
    clock, metrics = Clock(), Metrics()
    scanned = asyncio.Event()

    async def read_decided(since_ms: int) -> list[str]:
        # The scan goes on without a pause once this returns: its items are shown (or settled
        # as decided) before the set-up, woken by the event, runs again.
        scanned.set()
        return sorted(decided or ())

    console, producer, consumers = fake_console(
        tick_s=0.01,
        decide_wait_s=0.3,
        buffer=buffer,
        lease_s=lease_s,
        read_decided=read_decided,
        parking=parking,
        parked=lambda topic: watch(topic, metrics, clock),
        retention=retention,
        clock=clock,
        metrics=metrics,
    )
    service = console.service
    records = [v if isinstance(v, Rec) else Rec(i, v) for i, v in enumerate(values)]
    consumers[TOPICS.reviews].pending = records
    consumers[TOPICS.reviews].high = high
    async with service:
        await asyncio.wait_for(service.wait_joined(), 5)
        left = max(0, len(records) - buffer)
        await eventually(lambda: len(consumers[TOPICS.reviews].pending) <= left)
        if records:  # they hold a review item: the recovery scan shows them, however slow
            await asyncio.wait_for(scanned.wait(), 10)
        try:
            yield Running(
                console.queues, consumers[TOPICS.reviews], producer, clock, metrics, consumers
            )
        finally:
            service.stop()
            await asyncio.wait_for(service.wait(), 10)


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_the_console_is_built_from_its_settings(guarantee: str) -> None:
    """One worker per queue topic in ESCALATOR_REVIEW_GROUP, each holding at most
    ESCALATOR_REVIEW_BUFFER items (its in-flight and uncommitted limits), delivering with the
    strategy ESCALATOR_PROCESSING_GUARANTEE picks, and watching its topic's retention."""
    from escalator.config import load_settings
    from escalator.engine.transactional import Transactional

    settings = load_settings(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
            "ESCALATOR_REVIEW_BUFFER": "7",
            "ESCALATOR_PROCESSING_GUARANTEE": guarantee,
        }
    )
    console = build_console(settings, Metrics())
    workers = console.service.workers
    assert [w.topic for w in workers] == [TOPICS.reviews, TOPICS.adjudications]
    for worker in workers:
        assert (worker.limit.limit, worker.max_pending) == (7, 7)
        assert worker.tier == "review"
        assert isinstance(worker._delivery, Transactional) == (guarantee == "exactly_once")
        assert worker._parking is not None and worker._parking.topic == worker.topic
        assert worker._consumer._group_id == settings.review.group
        assert worker._handler is console.queues
    # The handler gives back its undecided items before the workers stop.
    assert console.service.on_stop == [console.queues.stop]
    await console.service.close()  # never ran: closes the consumers and the producer


# -- the console's process: its Service, on fakes ----------------------------------------------
async def test_a_decision_waiting_at_shutdown_does_not_hold_the_page_open() -> None:
    """A decision waiting for an acknowledgement that never comes as the console stops: the
    handler's close answers it ("lost") before the page closes, since a page waits for its
    requests in progress as it closes (review of 981b1cf: the page closed first, and the
    close waited for the decision's own timeout)."""
    console, producer, consumers = fake_console(decide_wait_s=10.0, grace_s=1.0)
    handler, service = console.queues, console.service
    requests: list[asyncio.Task[str]] = []

    @contextlib.asynccontextmanager
    async def page() -> AsyncIterator[None]:
        """Like aiohttp's AppRunner.cleanup: waits for the requests in progress."""
        yield
        await asyncio.gather(*requests, return_exceptions=True)

    console.serve_page(page())
    consumers[TOPICS.reviews].pending = [Rec(0, item("a"))]
    async with service:
        await asyncio.wait_for(service.wait_joined(), 5)
        await eventually(lambda: handler.lease("review", "alice") is not None)
        lease = handler.lease("review", "alice")
        assert lease is not None
        producer.slow = asyncio.Event()  # never acknowledged
        requests.append(asyncio.create_task(handler.decide(lease.id, "alice", "safe", None)))
        await eventually(lambda: len(producer.sent) == 2)
        service.stop()
        await service.wait()
        started = asyncio.get_running_loop().time()
    assert asyncio.get_running_loop().time() - started < 3, "the close waited for the decision"
    assert requests[0].result() == "lost"


async def test_the_handler_stops_when_cancelled_as_a_backlog_read_ends() -> None:
    """The handler's loop is cancelled by the console's close just as a backlog read returns:
    it ends (Python 3.11's ``asyncio.wait_for`` lost that cancellation, and the close waited
    for ever; review of 981b1cf)."""
    console, _, _ = fake_console(tick_s=0.01)
    inside = asyncio.Event()
    calls = 0

    async def backlog() -> dict[TopicPartition, tuple[int, int]]:
        nonlocal calls
        calls += 1
        if calls == 3:
            inside.set()
        return {}

    async def body() -> None:
        async with handler_running(console.queues, backlog):
            await inside.wait()  # wakes as backlog() returns: the exit cancels then

    await asyncio.wait_for(body(), 3)


async def test_sigterm_stops_the_console_and_removes_its_signal_handlers() -> None:
    import os
    import signal

    console, _, _ = fake_console()
    service = console.service
    await service.start(install_signals=True)
    try:
        await asyncio.wait_for(service.wait_joined(), 5)
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(service.wait(), 10)
        assert console.queues._stopped
    finally:
        await service.close()
    assert not asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)


async def test_a_failing_worker_stops_the_console_and_its_error_comes_out() -> None:
    console, _, consumers = fake_console()

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("fetch broke")

    async with console.service as service:
        await asyncio.wait_for(service.wait_joined(), 5)
        consumers[TOPICS.adjudications].getmany = broken  # type: ignore[method-assign]
        with pytest.raises(RuntimeError, match="fetch broke"):
            await asyncio.wait_for(service.wait(), 10)
        assert console.queues._stopped
        assert all(t.done() for t in service._tasks)


async def test_the_console_is_one_review_tier_in_health_and_never_held() -> None:
    """No model and no broker watch: ready once both queue workers have joined (the page
    stays reachable through a Kafka outage)."""
    console, _, _ = fake_console()
    assert console.service.broker is None
    async with console.service as service:
        await asyncio.wait_for(service.wait_joined(), 5)
        assert [(h.tier, h.joined, h.held) for h in service.health()] == [("review", True, None)]
        assert service.ready()
