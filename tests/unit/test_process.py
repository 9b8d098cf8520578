"""The service's lifecycle (process.Service) over fake workers, producer and models: start, wait,
and the one close path, whichever way the service ends."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from escalator.config import Settings, load_settings
from escalator.errors import ConfigError
from escalator.model.check import ModelFacts
from escalator.model.stack import ModelStacks
from escalator.observability.metrics import Metrics
from escalator.process import Service


class FakeWorker:
    def __init__(self, tier: str, fail: bool = False) -> None:
        self.tier = tier
        self.fail = fail
        self._joined = asyncio.Event()
        self.ran = self.discarded = 0
        self._stop = asyncio.Event()

    @property
    def joined(self) -> bool:
        return self._joined.is_set()

    async def run(self) -> None:
        self.ran += 1
        self._joined.set()
        if self.fail:
            raise RuntimeError("tier failed")
        await self._stop.wait()

    def stop(self) -> None:
        self._stop.set()

    async def wait_joined(self) -> None:
        await self._joined.wait()

    async def discard(self) -> None:
        self.discarded += 1


class FakeProducer:
    def __init__(self) -> None:
        self.started = self.stopped = 0

    async def start(self) -> None:
        self.started += 1

    async def stop(self, flush_timeout_s: float = 10.0, stop_timeout_s: float = 10.0) -> None:
        self.stopped += 1


class FakeModels(ModelStacks):
    closed = 0

    async def aclose(self) -> None:
        self.closed += 1


ENV = {
    "KAFKA_BOOTSTRAP_SERVERS": "k:9092",
    "ESCALATOR_METRICS_PORT": "0",
    "ESCALATOR_METRICS_HOST": "127.0.0.1",
}


def settings() -> Settings:
    return load_settings(ENV)


def service(
    workers: list[FakeWorker], checks: list[Callable[[], Awaitable[ModelFacts]]] | None = None
) -> tuple[Service, FakeProducer, FakeModels]:
    producer, models = FakeProducer(), FakeModels({}, checks or [])
    built = Service(settings(), Metrics(), workers, producer, models)  # type: ignore[arg-type]
    return built, producer, models


async def test_a_failed_model_check_closes_what_was_built_and_raises() -> None:
    """Nothing started: the consumers are discarded, the producer and the model clients are
    closed, once each, and the check's error comes out."""

    async def bad() -> ModelFacts:
        raise ConfigError("ESCALATOR_CHEAP_MODEL='x': unknown model")

    worker = FakeWorker("cheap")
    svc, producer, models = service([worker], [bad])
    with pytest.raises(ConfigError, match="ESCALATOR_CHEAP_MODEL"):
        await svc.run(install_signals=False)
    assert (worker.ran, worker.discarded) == (0, 1)
    assert (producer.started, producer.stopped, models.closed) == (0, 1, 1)


async def test_as_a_context_manager_it_runs_the_tiers_until_closed() -> None:
    """``async with``: the tiers run and the health port listens inside the block; leaving
    it stops the producer and closes the models once, and a second close does nothing."""
    worker = FakeWorker("cheap")
    svc, producer, models = service([worker])
    async with svc:
        await worker.wait_joined()
        assert worker.ran == 1 and svc.health_port > 0 and svc.ready()
        svc.stop()
        await svc.wait()
    await svc.close()
    assert worker.discarded == 0  # it ran: its own run closed its consumer
    assert (producer.started, producer.stopped, models.closed) == (1, 1, 1)


async def test_a_failing_tier_stops_the_others_and_its_error_comes_out_of_run() -> None:
    """One tier raises: the other is stopped, run raises that error, and the close path
    runs once."""
    ok, bad = FakeWorker("cheap"), FakeWorker("strong", fail=True)
    svc, producer, models = service([ok, bad])
    with pytest.raises(RuntimeError, match="tier failed"):
        await asyncio.wait_for(svc.run(install_signals=False), 10)
    assert ok._stop.is_set()
    assert (producer.stopped, models.closed) == (1, 1)


async def test_stopped_before_the_tiers_start_no_tier_runs() -> None:
    """Stopped while waiting for the topics: run returns, the consumers are discarded."""

    waiting = asyncio.Event()

    class Topics:
        missing: list[str] = ["req"]

        async def wait(self, stop: asyncio.Event) -> bool:
            waiting.set()
            await stop.wait()
            return False

    worker = FakeWorker("cheap")
    svc, producer, models = service([worker])
    svc.topics = Topics()  # type: ignore[assignment]
    run = asyncio.create_task(svc.run(install_signals=False))
    await asyncio.wait_for(waiting.wait(), 10)
    assert svc.health_port > 0
    assert [h.held for h in svc.health()] == ["topics_missing"]
    svc.stop()
    await asyncio.wait_for(run, 10)
    assert (worker.ran, worker.discarded) == (0, 1)
    assert (producer.stopped, models.closed) == (1, 1)


async def test_leaving_the_block_without_stopping_drains_the_tiers_before_the_producer() -> None:
    """``async with`` left while the tiers run: close stops them and waits for their drain
    (their run returns, not cancelled) before it stops the producer and closes the models."""
    order: list[str] = []

    class DrainingWorker(FakeWorker):
        async def run(self) -> None:
            try:
                await super().run()
                order.append("tier drained")
            except asyncio.CancelledError:
                order.append("tier cancelled")
                raise

    class OrderedProducer(FakeProducer):
        async def stop(self, flush_timeout_s: float = 10.0, stop_timeout_s: float = 10.0) -> None:
            order.append("producer stopped")

    class OrderedModels(FakeModels):
        async def aclose(self) -> None:
            order.append("models closed")

    worker = DrainingWorker("cheap")
    svc = Service(
        settings(),
        Metrics(),
        [worker],
        OrderedProducer(),
        OrderedModels({}, []),  # type: ignore[list-item, arg-type]
    )
    async with svc:
        await worker.wait_joined()
    assert order == ["tier drained", "producer stopped", "models closed"]


@pytest.mark.parametrize("tuning", ["true", "false"])
async def test_the_collector_is_tuned_while_the_tiers_run_and_left_as_found(tuning: str) -> None:
    """ESCALATOR_GC_TUNING (engine/collector.py): once started, what start-up built is frozen
    and young collections are rarer; closing restores both. Off: the collector is untouched."""
    import gc

    from escalator.engine import collector

    before = gc.get_threshold()
    gc.unfreeze()
    worker = FakeWorker("cheap")
    producer, models = FakeProducer(), FakeModels({}, [])
    tuned = load_settings({**ENV, "ESCALATOR_GC_TUNING": tuning})
    svc = Service(tuned, Metrics(), [worker], producer, models)  # type: ignore[arg-type]
    try:
        async with svc:
            await worker.wait_joined()
            if tuning == "true":
                assert gc.get_threshold() == (collector.YOUNG, collector.OLDER, collector.OLDER)
                assert gc.get_freeze_count() > 0
            else:
                assert gc.get_threshold() == before and gc.get_freeze_count() == 0
            svc.stop()
            await svc.wait()
        assert gc.get_threshold() == before and gc.get_freeze_count() == 0
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def test_workers_of_one_tier_are_one_tier_in_health_and_joined_when_all_are() -> None:
    """The review console runs two workers as tier ``review``: /readyz shows the tier once,
    joined only when both have joined; tiers of one worker each are listed as they are."""
    first, second, strong = FakeWorker("review"), FakeWorker("review"), FakeWorker("strong")
    svc, _, _ = service([first, second, strong])
    assert [(h.tier, h.joined) for h in svc.health()] == [("review", False), ("strong", False)]
    first._joined.set()
    strong._joined.set()
    assert [(h.tier, h.joined) for h in svc.health()] == [("review", False), ("strong", True)]
    assert not svc.ready()
    second._joined.set()
    assert [(h.tier, h.joined) for h in svc.health()] == [("review", True), ("strong", True)]
    assert svc.ready()


async def test_stop_tells_its_hooks_before_the_workers() -> None:
    """``on_stop`` (the review console giving back its undecided items) runs before any
    worker is told to stop, so that no worker's drain waits for an item a person holds."""
    told: list[str] = []

    class Recording(FakeWorker):
        def stop(self) -> None:
            told.append(self.tier)
            super().stop()

    worker = Recording("review")
    svc, _, _ = service([worker])
    svc.on_stop.append(lambda: told.append("hook"))
    async with svc:
        await worker.wait_joined()
        svc.stop()
        await svc.wait()
    assert told == ["hook", "review"]
