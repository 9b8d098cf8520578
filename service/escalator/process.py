"""The lifecycle of one process: :class:`Service` runs the engine's workers (one per row of
the tier table, or the review console's two queues), the health port and what runs beside
them, and closes them by one path.

On SIGTERM or SIGINT: stop fetching; drain in-flight work within the grace period; commit;
flush the producer; leave the group; return (exit 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from escalator.config import Settings, redacted_url
from escalator.engine import collector
from escalator.engine.worker import TierWorker, stop_reserve_s
from escalator.errors import ConfigError, ModelUnavailable
from escalator.kafka.clients import ProducerHandle
from escalator.kafka.watch import BrokerWatch, TopicWatch
from escalator.model.stack import ModelStacks
from escalator.observability import tracing as tracing_
from escalator.observability.health import HealthServer, TierHealth
from escalator.observability.logs import log
from escalator.observability.metrics import Metrics

# The logger the lifecycle's lines (service_started, service_stopped) have always had.
logger = logging.getLogger("escalator.app")


@dataclass
class Service:
    """Everything one process runs. Built by ``app.build_service`` (the tiers) or
    ``review.assemble.build_console`` (the review console); then ``await run()``, or
    ``async with service: await service.wait()`` (the signals are then the caller's).

    :meth:`start` checks the models, starts the producer and the health port, waits for the
    topics and starts the tiers; :meth:`wait` returns when they stop; :meth:`close` is the one
    way out, whatever was started (it runs once; a failed start runs it too)."""

    settings: Settings
    metrics: Metrics
    workers: list[TierWorker]
    producer: ProducerHandle
    models: ModelStacks
    #: Spans, or a no-op (observability/tracing.py); flushed on close.
    tracing: tracing_.Tracing = field(default_factory=tracing_.Tracing)
    health_port: int = 0
    #: Whether a broker answers (readiness in an outage); None: not watched (tests).
    broker: BrokerWatch | None = None
    #: The topics this process reads or writes: the tiers start once they all exist.
    topics: TopicWatch | None = None
    #: Warnings about the configuration, logged once at start (e.g. everything escalates).
    notes: list[str] = field(default_factory=list)
    #: What runs beside the tiers, entered once the producer runs and before the tiers
    #: start, exited after they stop (the batch lane's runner).
    beside: list[contextlib.AbstractAsyncContextManager[Any]] = field(default_factory=list)
    #: Told first when the service stops (the review console gives back undecided items).
    on_stop: list[Callable[[], None]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _helpers: list[asyncio.Task[None]] = field(default_factory=list)
    _exits: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    _signals: bool = False
    _checked: bool = False
    _closed: bool = False

    def stop(self) -> None:
        """Stop taking work (safe from a signal handler): what asked first (``on_stop``),
        then every worker."""
        self._stop.set()
        for hook in self.on_stop:
            hook()
        for w in self.workers:
            w.stop()

    def ready(self) -> bool:
        return bool(self.workers) and all(h.ready for h in self.health())

    def health(self) -> list[TierHealth]:
        """Per tier (the review console's two queue workers are one tier, ``review``, joined
        when both are): joined its group, and whether its traffic is held (and why): by the
        account (``api_blocked``), by topics that do not exist yet (``topics_missing``), or
        by a broker that has not answered for ESCALATOR_KAFKA_UNREACHABLE_S
        (``kafka_unreachable``)."""
        outage = self.broker.outage() if self.broker is not None else None
        missing = self.topics.missing if self.topics is not None else []
        joined: dict[str, bool] = {}
        for w in self.workers:
            joined[w.tier] = joined.get(w.tier, True) and w.joined
        out = []
        for tier, all_joined in joined.items():
            stack = self.models.by_tier.get(tier)
            reason, message = stack.caller.hold() if stack is not None else (None, None)
            hold = stack.hold() if stack is not None and reason is not None else None
            since = hold.since_s if hold is not None else None
            ends = hold.ends_at_s if hold is not None else None
            if reason is None and missing:
                reason = "topics_missing"
                message = f"waiting for topics {', '.join(missing)}: escalator topics create"
            if reason is None and outage is not None:
                reason, message = "kafka_unreachable", outage
            out.append(TierHealth(tier, all_joined, reason, message, since, ends))
        return out

    async def check_models(self) -> None:
        """Ask the API about each model; ConfigError names the variable. An API that cannot
        be reached is logged and tolerated (the tiers hold traffic through an outage anyway),
        unless ANTHROPIC_BASE_URL names it: then nothing listens where it points (a typo, a
        proxy or emulator not started), which is a configuration error."""
        base_url = self.settings.model.base_url
        for check in self.models.checks:
            try:
                facts = await check()
            except ModelUnavailable as exc:
                if base_url is not None and exc.kind == "connection":
                    raise ConfigError(
                        f"ANTHROPIC_BASE_URL={redacted_url(base_url)}: nothing answers there "
                        "(cannot connect): is the proxy or emulator running?"
                    ) from exc
                log(logger, "model_check_skipped", logging.WARNING, error=str(exc))
                continue
            for warning in facts.warnings:
                log(logger, "model_deprecated", logging.WARNING, model=facts.model, note=warning)
            log(logger, "model_checked", model=facts.model, summary=facts.summary())

    async def __aenter__(self) -> Service:
        await self.start(install_signals=False)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def run(
        self, *, install_signals: bool = True, on_ready: Callable[[], None] | None = None
    ) -> None:
        """Start, wait until the tiers stop (a signal, :meth:`stop`, or one fails), close."""
        try:
            await self.start(install_signals=install_signals, on_ready=on_ready)
            await self.wait()
        finally:
            await self.close()

    async def start(
        self, *, install_signals: bool = False, on_ready: Callable[[], None] | None = None
    ) -> None:
        """Check the models, start the producer and the health port, wait for the topics
        (returns early if stopped meanwhile: no tier ever runs), start the tiers. A failure
        closes what was built, then raises."""
        try:
            if install_signals:
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(sig, self.stop)
                self._signals = True
            await self.check_models()
            self._checked = True
            for note in self.notes:
                log(logger, "configuration_note", logging.WARNING, note=note)
            await self.producer.start()
            if self.broker is not None:
                self._helpers.append(asyncio.create_task(self.broker.run(), name="broker-watch"))
            health = await self._exits.enter_async_context(
                HealthServer(
                    self.metrics,
                    host=self.settings.metrics_host,
                    port=self.settings.metrics_port,
                    live=lambda: all(not t.done() for t in self._tasks),
                    ready=self.health,
                )
            )
            self.health_port = health.port
            if self.topics is not None and not await self.topics.wait(self._stop):
                return  # stopped while waiting: no tier ever runs
            for beside in self.beside:
                await self._exits.enter_async_context(beside)
            self._exits.enter_context(collector.tuned(self.settings.pipeline.gc_tuning))
            self._tasks = [
                asyncio.create_task(w.run(), name=f"tier-{w.tier}") for w in self.workers
            ]
            log(
                logger,
                "service_started",
                tiers=list(dict.fromkeys(w.tier for w in self.workers)),
                metrics_port=health.port,
                simulated=self.settings.model.simulated,
                # What turned spans on (a variable's name), or off: a span per record costs.
                tracing=self.settings.tracing.on_by or "off",
            )
            if on_ready is not None:
                self._helpers.append(asyncio.create_task(self._notify_ready(on_ready)))
        except BaseException:
            await self.close()
            raise

    async def wait(self) -> None:
        """Until every tier has stopped; when one fails, stop the others and raise its error."""
        tasks = self._tasks
        if not tasks:
            return
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in done:
            if t.exception() is not None:
                self.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        for t in tasks:
            if t.exception() is not None:
                raise t.exception()  # type: ignore[misc]

    async def close(self) -> None:
        """The one close path: stop the tiers that still run and wait for their drain and
        final commit (within ESCALATOR_SHUTDOWN_GRACE_S, then cancel them), close the health
        port, close the consumers of tiers that never ran, flush and stop the producer
        (bounded), close the model clients, flush the spans. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            running = [t for t in self._tasks if not t.done()]
            if running:  # e.g. `async with service:` left without stop() and wait()
                self.stop()
                await asyncio.wait(running, timeout=self.settings.pipeline.shutdown_grace_s)
            for t in [*self._tasks, *self._helpers]:
                if not t.done():
                    t.cancel()
            await asyncio.gather(*self._tasks, *self._helpers, return_exceptions=True)
            await self._exits.aclose()
            if not self._tasks:  # never started (stopped early, or the start failed)
                for w in self.workers:
                    await w.discard()
            # An eighth of the shutdown reserve each to flush and to stop (engine/worker.py).
            bound = stop_reserve_s(self.settings.pipeline.shutdown_grace_s) / 8
            try:
                await self.producer.stop(flush_timeout_s=bound, stop_timeout_s=max(bound, 0.5))
            finally:
                try:
                    await self.models.aclose()
                finally:
                    await self.tracing.shutdown()
        finally:
            if self._signals:
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            if self._checked:
                log(logger, "service_stopped")

    async def wait_joined(self) -> None:
        """Until every worker has joined its group (once started)."""
        await asyncio.gather(*(w.wait_joined() for w in self.workers))

    async def _notify_ready(self, callback: Callable[[], None]) -> None:
        await self.wait_joined()
        callback()
