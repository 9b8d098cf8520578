"""Wiring: settings -> parts (task, prices, model profiles, thresholds), the model stacks
(``model/stack.py``), one worker per row of the tier table (``tiers/table.py``), the health
port; plus the lifecycle (signals, drain, commit, flush, leave the group).

On SIGTERM or SIGINT: stop fetching; drain in-flight work within the grace period; commit;
flush the producer; leave the group; return (exit 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

from escalator.calibration.live import TierWatches
from escalator.calibration.threshold_file import Promise, load_promise, load_threshold_file
from escalator.config import UNCOMMITTED_PER_IN_FLIGHT, Settings, redacted_url
from escalator.engine import collector
from escalator.engine.guarantee import delivery_for
from escalator.engine.parking import Parking
from escalator.engine.worker import Handler, Holder, TierWorker, WorkerOptions, stop_reserve_s
from escalator.errors import ConfigError, ModelUnavailable
from escalator.kafka.admin import KafkaLogView
from escalator.kafka.clients import ProducerHandle, make_consumer, make_producer
from escalator.kafka.watch import BrokerWatch, TopicWatch
from escalator.model.prices import PriceTable, load_prices
from escalator.model.profiles import ModelProfile
from escalator.model.stack import (
    ModelFactory,
    ModelStack,
    ModelStacks,
    build_model_stacks,
    check_prices,
    model_profiles,
)
from escalator.model.task import Task, load_task
from escalator.observability import tracing as tracing_
from escalator.observability.health import HealthServer, TierHealth
from escalator.observability.logs import log
from escalator.observability.metrics import Metrics
from escalator.tiers.routing import Thresholds, escalation_note, thresholds_in_force
from escalator.tiers.table import (
    HandlerParts,
    Process,
    TierSpec,
    models_of,
    tier_table,
    topics_needed,
)

if TYPE_CHECKING:
    from escalator.tier0.artefact import Loaded as Tier0

logger = logging.getLogger("escalator.app")


@dataclass
class Service:
    """Everything one process runs. Build with :func:`build_service`, then ``await run()``,
    or ``async with service: await service.wait()`` (the signals are then the caller's).

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
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _helpers: list[asyncio.Task[None]] = field(default_factory=list)
    _exits: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    _signals: bool = False
    _checked: bool = False
    _closed: bool = False

    def stop(self) -> None:
        self._stop.set()
        for w in self.workers:
            w.stop()

    def ready(self) -> bool:
        return bool(self.workers) and all(h.ready for h in self.health())

    def health(self) -> list[TierHealth]:
        """Per tier: joined its group, and whether its traffic is held (and why): by the
        account (``api_blocked``), by topics that do not exist yet (``topics_missing``), or
        by a broker that has not answered for ESCALATOR_KAFKA_UNREACHABLE_S
        (``kafka_unreachable``)."""
        outage = self.broker.outage() if self.broker is not None else None
        out = []
        for w in self.workers:
            stack = self.models.by_tier.get(w.tier)
            reason, message = stack.caller.hold() if stack is not None else (None, None)
            hold = stack.hold() if stack is not None and reason is not None else None
            since = hold.since_s if hold is not None else None
            ends = hold.ends_at_s if hold is not None else None
            missing = self.topics.missing if self.topics is not None else []
            if reason is None and missing:
                reason = "topics_missing"
                message = f"waiting for topics {', '.join(missing)}: escalator topics create"
            if reason is None and outage is not None:
                reason, message = "kafka_unreachable", outage
            out.append(TierHealth(w.tier, w.joined, reason, message, since, ends))
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
                tiers=[w.tier for w in self.workers],
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

    async def _notify_ready(self, callback: Callable[[], None]) -> None:
        await asyncio.gather(*(w.wait_joined() for w in self.workers))
        callback()


@dataclass(frozen=True, slots=True)
class Parts:
    """What the service is built from, once validated: everything checked before a socket
    opens (``escalator config`` runs this too)."""

    #: The tier table's rows of the tiers this process runs, in their order.
    rows: tuple[TierSpec, ...]
    task: Task
    prices: PriceTable
    profiles: dict[str, ModelProfile]
    thresholds: Thresholds
    #: What is valid but probably not meant (logged once at start, printed by config).
    notes: tuple[str, ...] = ()
    #: What the thresholds file promises, for the live monitors (None without a file).
    promise: Promise | None = None
    #: Tier 0's certified artefact (ESCALATOR_TIER0_FILE), for the cheap tier; None: off.
    tier0: Tier0 | None = None


def load_parts(settings: Settings, tiers: list[str]) -> Parts:
    """Load and validate the task, prices, model profiles and thresholds for ``tiers``; a
    ConfigError names the variable (or file) at fault."""
    tracing_.check(settings.tracing)  # the otel extra, when tracing is on
    table = tier_table(settings)
    rows = tuple(table[tier] for tier in tiers)
    choices = models_of(rows)
    task = load_task(settings.routing.task_file)
    prices = load_prices(settings.routing.prices_file)
    profiles = model_profiles(settings, choices)
    check_prices(prices, choices)
    file, from_file, promise = settings.routing.thresholds_file, None, None
    if file is not None:
        from_file = load_threshold_file(
            file,
            labels=task.labels,
            cheap_model=table["cheap"].model.model,
            strong_model=table["strong"].model.model,
        )
        promise = load_promise(file)
    thresholds = thresholds_in_force(settings, task.labels, from_file)
    note = escalation_note(thresholds, file) if "cheap" in tiers else None
    tier0 = None
    if settings.routing.tier0_file is not None and "cheap" in tiers:
        # Imported only when tier 0 is on: it needs numpy, which `run` does not load otherwise.
        from escalator.tier0.artefact import load as load_tier0

        tier0 = load_tier0(
            settings.routing.tier0_file,
            task_fingerprint=task.fingerprint,
            labels=task.labels,
            cheap_model=table["cheap"].model.model,
            strong_model=table["strong"].model.model,
        )
        from escalator.tier0.running import beside

        # Tier 0 runs beside the cheap row's worker (its live test, its withdrawals).
        rows = tuple(
            dataclasses.replace(row, beside=beside(tier0)) if row.name == "cheap" else row
            for row in rows
        )
    notes = (note,) if note else ()
    return Parts(rows, task, prices, profiles, thresholds, notes, promise, tier0)


def build_service(
    settings: Settings,
    tiers: list[str],
    *,
    metrics: Metrics | None = None,
    model_factory: ModelFactory | None = None,
) -> Service:
    """Validate everything that can be validated before connecting, then build the workers:
    one per row of the tier table, over its model stack."""
    parts = load_parts(settings, tiers)
    rows = parts.rows
    # One model stack per model tier: the lane answers in real time on the cheap tier's, and
    # measures shadows on the strong tier's.
    choices = models_of(rows)
    metrics = metrics or Metrics()
    _set_static_metrics(settings, metrics, parts.thresholds)
    tracing = tracing_.start(settings.tracing)  # a no-op unless ESCALATOR_TRACING / OTEL_*
    tracing.link(metrics)
    models = build_model_stacks(
        settings,
        choices,
        task=parts.task,
        prices=parts.prices,
        profiles=parts.profiles,
        metrics=metrics,
        model_factory=model_factory,
        traced=tracing.model_client,
    )
    producer = ProducerHandle(
        lambda: make_producer(settings.kafka),
        on_recreate=lambda reason: metrics.producer_recreated.labels(reason).inc(),
    )
    r = settings.routing
    watches = TierWatches(parts.promise, r.monitor_alpha, r.shadow_rate, metrics)
    handler_parts = HandlerParts.of(
        settings, task=parts.task, thresholds=parts.thresholds, metrics=metrics, watches=watches
    )
    # What the rows run beside their workers (the lane's batches, tier 0's withdrawals), and
    # what that adds to the parts every handler is built from.
    beside: list[contextlib.AbstractAsyncContextManager[Any]] = []
    process = Process(settings, models, producer)
    for row in rows:
        if row.beside is not None:
            handler_parts, more = row.beside(process, handler_parts)
            beside += more
    workers = []
    for row in rows:
        stack = models[row.model.tier]
        handler = row.handler(handler_parts, stack.caller)
        worker = _worker(
            settings,
            row,
            tracing.handler(handler, group=row.group),
            stack,
            producer,
            metrics,
            tracing,
            holder=cast(Holder, handler) if row.holds else None,
        )
        stack.follow(worker)
        workers.append(worker)
    return Service(
        settings,
        metrics,
        workers,
        producer,
        models,
        tracing=tracing,
        broker=BrokerWatch(settings.kafka),
        topics=TopicWatch(settings.kafka, topics_needed(settings, rows)),
        notes=list(parts.notes),
        beside=beside,
    )


def _set_static_metrics(settings: Settings, metrics: Metrics, thresholds: Thresholds) -> None:
    """What the configuration says, once: the spend cap and the calibrated escalation."""
    metrics.spend_cap.set(settings.model.monthly_spend_cap_usd)
    if thresholds.expected_escalation is not None:
        for bound, value in zip(
            ("low", "expected", "high"), thresholds.expected_escalation, strict=True
        ):
            metrics.calibrated_escalation.labels(bound, thresholds.version).set(value)


def _worker(
    settings: Settings,
    row: TierSpec,
    handler: Handler,
    stack: ModelStack,
    producer: ProducerHandle,
    metrics: Metrics,
    tracing: tracing_.Tracing,
    holder: Holder | None = None,
) -> TierWorker:
    """The worker of one row: its consumer, its delivery strategy, its parking."""
    p = settings.pipeline
    options = WorkerOptions.from_settings(p)
    limit = stack.limit if row.max_in_flight is None else None
    if row.max_in_flight is not None:
        # The lane's records wait for their batch, not for a model slot: their own bound (a
        # fixed limit of that size, the engine's default), not the model's adaptive one.
        n = row.max_in_flight
        options = dataclasses.replace(
            options, max_in_flight=n, max_uncommitted=UNCOMMITTED_PER_IN_FLIGHT * n
        )
    consumer_kwargs: dict[str, object] = {
        "max_poll_interval_ms": p.max_poll_interval_ms,
        "session_timeout_ms": p.session_timeout_ms,
        # Never act on records of aborted transactions (ours in exactly-once mode, or a
        # transactional upstream producer's).
        "isolation_level": "read_committed",
    }
    if p.group_instance_id:
        consumer_kwargs["group_instance_id"] = f"{p.group_instance_id}-{row.name}"
    delivery = delivery_for(settings, row.group, producer)
    return TierWorker(
        topic=row.topic,
        consumer=make_consumer(settings.kafka, row.group, **consumer_kwargs),
        delivery=tracing.delivery(delivery),
        handler=handler,
        metrics=metrics,
        options=options,
        limit=limit,
        parking=_parking(settings, metrics, row, stack),
        holder=holder,
    )


def _parking(settings: Settings, metrics: Metrics, row: TierSpec, stack: ModelStack) -> Parking:
    """The tier's retention watch, and its parking when ESCALATOR_PARKING is on (the watch
    runs either way: the metrics, and the count of records lost, are wanted regardless)."""
    k = settings.parking
    return Parking(
        tier=row.name,
        topic=row.topic,
        group=row.group,
        parked_topic=settings.topics.parked,
        log=KafkaLogView(settings.kafka, client_id=f"{settings.kafka.client_id}-retention"),
        metrics=metrics,
        hold=stack.hold,
        park_at=k.park_at,
        check_s=k.check_s,
        enabled=k.enabled,
    )
