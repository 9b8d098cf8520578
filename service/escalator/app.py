"""Wiring: settings -> parts (task, prices, model profiles, thresholds), the model stacks
(``model/stack.py``), one worker per row of the tier table (``tiers/table.py``), in a
:class:`~escalator.process.Service` (the lifecycle: signals, drain, commit, flush, leave the
group).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from escalator.calibration.live import TierWatches
from escalator.calibration.threshold_file import Promise, load_promise, load_threshold_file
from escalator.config import UNCOMMITTED_PER_IN_FLIGHT, Settings
from escalator.engine.guarantee import delivery_for
from escalator.engine.parking import Parking
from escalator.engine.worker import Handler, Holder, TierWorker, WorkerOptions
from escalator.kafka.admin import KafkaLogView
from escalator.kafka.clients import ProducerHandle, make_consumer, make_producer
from escalator.kafka.watch import BrokerWatch, TopicWatch
from escalator.model.prices import PriceTable, load_prices
from escalator.model.profiles import ModelProfile
from escalator.model.stack import (
    ModelFactory,
    ModelStack,
    build_model_stacks,
    check_prices,
    model_profiles,
)
from escalator.model.task import Task, load_task
from escalator.observability import tracing as tracing_
from escalator.observability.metrics import Metrics
from escalator.process import Service
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
