"""Wiring: settings -> task, prices, model clients, Kafka clients, tier workers, health port;
plus the lifecycle (signals, drain, commit, flush, leave the group).

On SIGTERM or SIGINT: stop fetching; drain in-flight work within the grace period; commit;
flush the producer; leave the group; return (exit 0).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anthropic
from aiokafka import AIOKafkaProducer, TopicPartition

from escalator.calibration import live
from escalator.calibration.threshold_file import Promise, load_promise, load_threshold_file
from escalator.config import Settings, redacted_url
from escalator.engine.at_least_once import AtLeastOnce
from escalator.engine.delivery import Delivery
from escalator.engine.parking import Parking
from escalator.engine.transactional import Transactional
from escalator.engine.worker import TierWorker, WorkerOptions, stop_reserve_s
from escalator.errors import ConfigError, ModelUnavailable
from escalator.kafka.admin import KafkaLogView
from escalator.kafka.clients import ProducerHandle, make_consumer, make_producer
from escalator.kafka.watch import BrokerWatch, TopicWatch
from escalator.model.admission import Admission, Budget, TokenEstimate, Tuning
from escalator.model.breaker import CircuitBreaker
from escalator.model.caller import AnthropicClassifier, ModelCaller, ModelClient, RetryPolicy
from escalator.model.check import ModelFacts, check_model
from escalator.model.holds import Hold, HoldClock, held_by
from escalator.model.limits import AdaptiveLimit
from escalator.model.prices import PriceTable, load_prices
from escalator.model.profiles import ModelProfile, ProfileTable, load_profiles, rate_limit_group
from escalator.model.task import Task, load_task
from escalator.observability import tracing as tracing_
from escalator.observability.health import HealthServer, TierHealth
from escalator.observability.logs import log
from escalator.observability.metrics import Metrics
from escalator.tiers.handlers import CheapHandler, ReviewPolicy, StrongHandler, TierTopics
from escalator.tiers.routing import Thresholds

logger = logging.getLogger("escalator.app")
TIERS = ("cheap", "strong")
MODEL_VARIABLES = {"cheap": "ESCALATOR_CHEAP_MODEL", "strong": "ESCALATOR_STRONG_MODEL"}
SIM_API_KEY = "simulator-no-key"
CACHE_TTL_S = {"5m": 300.0, "1h": 3600.0}
#: The least max_tokens a model that always thinks (Opus 5.5, Fable 5.1) may be given.
ALWAYS_THINKING_MIN_TOKENS = 1024


def thresholds_from(settings: Settings) -> Thresholds:
    r = settings.routing
    raw = f"{r.threshold}|{sorted(r.label_thresholds.items())}"
    return Thresholds(
        default=r.threshold,
        per_label=dict(r.label_thresholds),
        version="env-" + hashlib.sha256(raw.encode()).hexdigest()[:8],
    )


def anthropic_client(settings: Settings) -> anthropic.AsyncAnthropic:
    m = settings.model
    if m.api_key is None and m.base_url is None:
        raise ConfigError(
            "ANTHROPIC_API_KEY is not set and ANTHROPIC_BASE_URL does not point at a simulator"
        )
    return anthropic.AsyncAnthropic(
        api_key=m.api_key.get() if m.api_key else SIM_API_KEY,
        base_url=m.base_url,
        max_retries=0,  # one retry layer: ours (tenacity), see model.ModelCaller
        timeout=m.timeout_s,
        open_telemetry=False,  # no SDK spans (they may carry text): observability/tracing.py
    )


@dataclass
class Service:
    """Everything one process runs. Build with :func:`build_service`, then ``await run()``."""

    settings: Settings
    metrics: Metrics
    workers: list[TierWorker]
    producer: ProducerHandle
    close_clients: list[Callable[[], object]] = field(default_factory=list)
    health_port: int = 0
    callers: dict[str, ModelCaller] = field(default_factory=dict)
    #: Start-up checks of each configured model (GET /v1/models/{id}); empty with fakes.
    model_checks: list[Callable[[], Awaitable[ModelFacts]]] = field(default_factory=list)
    #: Per tier: its hold now (account or outage), with when it began and ends.
    holds: dict[str, Callable[[], Hold | None]] = field(default_factory=dict)
    #: Whether a broker answers (readiness in an outage); None: not watched (tests).
    broker: BrokerWatch | None = None
    #: The topics this process reads or writes: the tiers start once they all exist.
    topics: TopicWatch | None = None
    #: Warnings about the configuration, logged once at start (e.g. everything escalates).
    notes: list[str] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

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
            caller = self.callers.get(w.tier)
            reason, message = caller.hold() if caller is not None else (None, None)
            watch = self.holds.get(w.tier)
            hold = watch() if watch is not None and reason is not None else None
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
        for check in self.model_checks:
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

    async def run(
        self, *, install_signals: bool = True, on_ready: Callable[[], None] | None = None
    ) -> None:
        loop = asyncio.get_running_loop()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
        try:
            await self.check_models()
        except BaseException:
            # Nothing started: close what was built, so no client is left unclosed.
            for w in self.workers:
                await w.discard()
            await self.producer.get().stop()
            for close in self.close_clients:
                result = close()
                if asyncio.iscoroutine(result):
                    await result
            raise
        for note in self.notes:
            log(logger, "configuration_note", logging.WARNING, note=note)
        producer = self.producer
        tasks: list[asyncio.Task[None]] = []
        helpers: list[asyncio.Task[None]] = []
        try:
            await producer.start()
            if self.broker is not None:
                helpers.append(asyncio.create_task(self.broker.run(), name="broker-watch"))
            async with HealthServer(
                self.metrics,
                host=self.settings.metrics_host,
                port=self.settings.metrics_port,
                live=lambda: all(not t.done() for t in tasks),
                ready=self.health,
            ) as health:
                self.health_port = health.port
                if self.topics is not None and not await self.topics.wait(self._stop):
                    return  # stopped while waiting: no tier ever ran
                tasks = [asyncio.create_task(w.run(), name=f"tier-{w.tier}") for w in self.workers]
                log(
                    logger,
                    "service_started",
                    tiers=[w.tier for w in self.workers],
                    metrics_port=health.port,
                    simulated=self.settings.model.simulated,
                )
                if on_ready is not None:
                    helpers.append(asyncio.create_task(self._notify_ready(on_ready)))
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for t in done:
                    if t.exception() is not None:
                        self.stop()
                await asyncio.gather(*tasks, return_exceptions=True)
                for t in tasks:
                    if t.exception() is not None:
                        raise t.exception()  # type: ignore[misc]
        finally:
            for t in [*tasks, *helpers]:
                if not t.done():
                    t.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            if not tasks:  # never started (stopped early, or the start failed): close them
                for w in self.workers:
                    await w.discard()
            # An eighth of the shutdown reserve each to flush and to stop (engine/worker.py).
            bound = stop_reserve_s(self.settings.pipeline.shutdown_grace_s) / 8
            await producer.stop(flush_timeout_s=bound, stop_timeout_s=max(bound, 0.5))
            for close in self.close_clients:
                result = close()
                if asyncio.iscoroutine(result):
                    await result
            if install_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            log(logger, "service_stopped")

    async def _notify_ready(self, callback: Callable[[], None]) -> None:
        await asyncio.gather(*(w.wait_joined() for w in self.workers))
        callback()


def _count_retry(metrics: Metrics, tier: str) -> Callable[[ModelUnavailable], None]:
    def count(exc: ModelUnavailable) -> None:
        metrics.retries.labels(tier, exc.kind).inc()

    return count


def _hold_gauge(metrics: Metrics, tier: str, clock: HoldClock) -> Callable[[str | None], None]:
    """Keeps ``api_blocked{tier,reason}`` at 1 for the current hold reason, 0 for the last;
    starts the tier's hold clock the moment the account is blocked."""
    last: list[str] = []

    def change(reason: str | None) -> None:
        if reason is not None:
            clock.observe(reason, None)
        for old in last:
            metrics.api_blocked.labels(tier, old).set(0)
        last.clear()
        if reason is not None:
            metrics.api_blocked.labels(tier, reason).set(1)
            last.append(reason)
        log(
            logger,
            "api_hold" if reason else "api_hold_cleared",
            logging.WARNING,
            tier=tier,
            reason=reason,
        )

    return change


def model_profiles(settings: Settings, tiers: list[str]) -> dict[str, ModelProfile]:
    """The request profile of each tier's model (a start-up error if there is none)."""
    table: ProfileTable = load_profiles(settings.model.profiles_file)
    models = {"cheap": settings.model.cheap_model, "strong": settings.model.strong_model}
    out = {}
    for tier in tiers:
        profile = table.require(models[tier], MODEL_VARIABLES[tier])
        override = settings.model.max_tokens
        if override is not None:
            if profile.always_thinks and override < ALWAYS_THINKING_MIN_TOKENS:
                raise ConfigError(
                    f"ESCALATOR_MODEL_MAX_TOKENS={override} leaves no room for the thinking of "
                    f"{models[tier]}, which always thinks before answering; use at least "
                    f"{ALWAYS_THINKING_MIN_TOKENS}, or leave it unset ({profile.max_tokens})"
                )
            profile = dataclasses.replace(profile, max_tokens=override)
        out[tier] = profile
    return out


@dataclass(frozen=True, slots=True)
class Parts:
    """What the service is built from, once validated: everything checked before a socket
    opens (``escalator config`` runs this too)."""

    task: Task
    prices: PriceTable
    profiles: dict[str, ModelProfile]
    thresholds: Thresholds
    #: What is valid but probably not meant (logged once at start, printed by config).
    notes: tuple[str, ...] = ()
    #: What the thresholds file promises, for the live monitors (None without a file).
    promise: Promise | None = None


def load_parts(settings: Settings, tiers: list[str]) -> Parts:
    """Load and validate the task, prices, model profiles and thresholds for ``tiers``; a
    ConfigError names the variable (or file) at fault."""
    tracing_.check(settings.tracing)  # the otel extra, when tracing is on
    task = load_task(settings.routing.task_file)
    prices = load_prices(settings.routing.prices_file)
    models = {"cheap": settings.model.cheap_model, "strong": settings.model.strong_model}
    profiles = model_profiles(settings, tiers)
    for tier in tiers:
        if models[tier] not in prices.prices:
            raise ConfigError(
                f"{MODEL_VARIABLES[tier]}={models[tier]!r} has no price in price table "
                f"{prices.version}; add it with ESCALATOR_PRICES_FILE"
            )
    promise: Promise | None = None
    if settings.routing.thresholds_file is not None:
        thresholds = load_threshold_file(
            settings.routing.thresholds_file,
            labels=task.labels,
            cheap_model=models["cheap"],
            strong_model=models["strong"],
        )
        promise = load_promise(settings.routing.thresholds_file)
    else:
        thresholds = thresholds_from(settings)
    if thresholds.strong_default is None:
        thresholds = dataclasses.replace(
            thresholds,
            strong_default=settings.review.strong_threshold,
            strong_per_label=dict(settings.review.strong_label_thresholds),
        )
    unknown_strong = set(thresholds.strong_per_label) - set(task.labels)
    if unknown_strong:
        raise ConfigError(
            "ESCALATOR_STRONG_LABEL_THRESHOLDS names labels not in the task: "
            + ", ".join(sorted(unknown_strong))
        )
    unknown = set(thresholds.per_label) - set(task.labels)
    if unknown:
        raise ConfigError(
            f"ESCALATOR_LABEL_THRESHOLDS names labels not in the task: {', '.join(sorted(unknown))}"
        )
    notes = []
    if "cheap" in tiers and min([thresholds.default, *thresholds.per_label.values()]) > 1:
        where = (
            f"ESCALATOR_THRESHOLDS_FILE={settings.routing.thresholds_file}"
            if settings.routing.thresholds_file is not None
            else "the thresholds"
        )
        notes.append(
            f"{where}: every request escalates (every threshold is above 1): each costs a "
            "cheap and a strong call, about 20x the cheap tier alone"
        )
    return Parts(task, prices, profiles, thresholds, tuple(notes), promise)


def build_service(
    settings: Settings,
    tiers: list[str],
    *,
    metrics: Metrics | None = None,
    model_factory: Callable[[str, str, Task, PriceTable], ModelClient] | None = None,
) -> Service:
    """Validate everything that can be validated before connecting, then build the workers."""
    parts = load_parts(settings, tiers)
    task, prices, profiles, thresholds, promise = (
        parts.task,
        parts.prices,
        parts.profiles,
        parts.thresholds,
        parts.promise,
    )
    models = {"cheap": settings.model.cheap_model, "strong": settings.model.strong_model}
    metrics = metrics or Metrics()
    tracing = tracing_.start(settings.tracing)  # a no-op unless ESCALATOR_TRACING / OTEL_*
    tracing.link(metrics)
    metrics.spend_cap.set(settings.model.monthly_spend_cap_usd)
    if thresholds.expected_escalation is not None:
        for bound, value in zip(
            ("low", "expected", "high"), thresholds.expected_escalation, strict=True
        ):
            metrics.calibrated_escalation.labels(bound, thresholds.version).set(value)
    close: list[Callable[[], object]] = [tracing.shutdown]
    checks: list[Callable[[], Awaitable[ModelFacts]]] = []
    # One admission gate per rate-limit group (shared by the tiers of this process whose
    # models draw from it), fed by the rate-limit headers of every response from its models.
    shares: dict[str, Callable[[], float]] = {}
    admissions: dict[str, Admission] = {}
    for tier in tiers:
        model = models[tier]
        if rate_limit_group(model) in admissions:
            continue
        admissions[rate_limit_group(model)] = Admission(
            Budget(
                Tuning(target=settings.admission.target),
                cap=settings.admission.caps.get(model),
                share=_share_of(shares, model),
            ),
            TokenEstimate(profiles[tier].tokenizer_factor),
            max_tokens=profiles[tier].max_tokens,
            enabled=settings.admission.enabled,
            observer=metrics.admission(tier, model),
            count_cache_reads=settings.admission.count_cache_reads,
        )
        metrics.watch_admission(model, _admitted_rates(admissions[rate_limit_group(model)]))

    def on_rate_limits(model: str, limits: dict[str, tuple[float, float]]) -> None:
        metrics.observe_rate_limits(model, limits)
        gate = admissions.get(rate_limit_group(model))
        if gate is not None:
            gate.observe(limits)

    if model_factory is None:
        client = anthropic_client(settings)
        close.append(client.close)
        if settings.model.check_models:
            for tier in tiers:
                checks.append(_check(client, models[tier], profiles[tier], MODEL_VARIABLES[tier]))

        def model_factory(tier: str, model: str, task: Task, prices: PriceTable) -> ModelClient:
            return AnthropicClassifier(
                client,
                tier=tier,
                model=model,
                task=task,
                prices=prices,
                profile=profiles[tier],
                cache_ttl=settings.model.cache_ttl,
                on_rate_limits=on_rate_limits,
            )

    producer = ProducerHandle(
        lambda: make_producer(settings.kafka),
        on_recreate=lambda reason: metrics.producer_recreated.labels(reason).inc(),
    )
    p = settings.pipeline
    exactly_once = p.processing_guarantee == "exactly_once"
    topics = settings.topics
    tier_topics = TierTopics(
        topics.results,
        topics.escalations,
        topics.dead_letter,
        topics.decisions,
        topics.reviews,
        topics.adjudications,
    )
    rv = settings.review
    review = ReviewPolicy.of(
        task,
        human_tier=rv.human_tier,
        disagree=rv.adjudicate_disagree,
        agree=rv.adjudicate_agree,
    )
    policy = RetryPolicy.from_settings(settings)
    # The live tests of the thresholds file in force (calibration/live.py).
    alpha, shadow_rate = settings.routing.monitor_alpha, settings.routing.shadow_rate
    agreement = (
        live.agreement_watch(promise, alpha=alpha, shadow_rate=shadow_rate, metrics=metrics)
        if "strong" in tiers
        else None
    )
    confidence = (
        live.confidence_watch(promise, alpha=alpha, metrics=metrics) if "cheap" in tiers else None
    )
    workers: list[TierWorker] = []
    callers: dict[str, ModelCaller] = {}
    holds: dict[str, Callable[[], Hold | None]] = {}
    for tier in tiers:
        limit = AdaptiveLimit(p.max_in_flight, enabled=p.adaptive_concurrency)
        clock = HoldClock()
        breaker = CircuitBreaker(
            window=p.breaker_window,
            failure_ratio=p.breaker_failure_ratio,
            cooldown_s=p.breaker_cooldown_s,
            cooldown_max_s=p.breaker_cooldown_max_s,
            blocked_cooldown_s=p.blocked_probe_s,
            on_hold_change=_hold_gauge(metrics, tier, clock),
        )
        model = models[tier]
        caller = callers[tier] = ModelCaller(
            tracing.model_client(model_factory(tier, model, task, prices)),
            breaker,
            policy,
            on_retry=_count_retry(metrics, tier),
            limit=limit,
            warm_ttl_s=0.9 * CACHE_TTL_S[settings.model.cache_ttl],
            on_warmup=metrics.warmups.labels(tier, model).inc,
            admission=admissions[rate_limit_group(model)],
        )
        holds[tier] = held_by(caller, clock)
        handler_cls = CheapHandler if tier == "cheap" else StrongHandler
        handler = handler_cls(
            caller=caller,
            topics=tier_topics,
            metrics=metrics,
            thresholds=thresholds,
            max_text_chars=p.max_text_chars,
            log_text=settings.log_text,
            shadow_rate=settings.routing.shadow_rate,
            task=task,
            escalate_when_unavailable=settings.model.cheap_unavailable == "escalate",
            review=review,
            promise_watch=agreement if tier == "strong" else None,
            confidence_watch=confidence if tier == "cheap" else None,
        )
        if isinstance(handler, CheapHandler):
            topic, group = topics.requests, p.cheap_group
        else:
            topic, group = topics.escalations, p.strong_group
        consumer_kwargs: dict[str, object] = {
            "max_poll_interval_ms": p.max_poll_interval_ms,
            "session_timeout_ms": p.session_timeout_ms,
            # Never act on records of aborted transactions (ours in exactly-once mode, or a
            # transactional upstream producer's).
            "isolation_level": "read_committed",
        }
        if p.group_instance_id:
            consumer_kwargs["group_instance_id"] = f"{p.group_instance_id}-{tier}"
        # The one place the guarantee is looked at: it picks the delivery strategy.
        delivery: Delivery = (
            Transactional(_transactional_factory(settings, group), group)
            if exactly_once
            else AtLeastOnce(producer)
        )
        worker = TierWorker(
            topic=topic,
            consumer=make_consumer(settings.kafka, group, **consumer_kwargs),
            delivery=tracing.delivery(delivery),
            handler=tracing.handler(handler, group=group),
            metrics=metrics,
            options=WorkerOptions.from_settings(p),
            limit=limit,
            parking=_parking(settings, metrics, tier, topic, group, holds),
        )
        shares.setdefault(model, _partition_share(worker))
        workers.append(worker)
    return Service(
        settings,
        metrics,
        workers,
        producer,
        close,
        callers=callers,
        model_checks=checks,
        holds=holds,
        broker=BrokerWatch(settings.kafka),
        topics=TopicWatch(settings.kafka, topics_needed(settings, tiers)),
        notes=list(parts.notes),
    )


def topics_needed(settings: Settings, tiers: list[str]) -> list[str]:
    """The topics ``tiers`` read or write, in Topics' order."""
    t, rv = settings.topics, settings.review
    needed = {t.escalations, t.results, t.dead_letter, t.decisions}
    if "cheap" in tiers:
        needed.add(t.requests)
    if "strong" in tiers and rv.human_tier:
        needed.add(t.reviews)
    if "strong" in tiers and (rv.adjudicate_agree > 0 or rv.adjudicate_disagree > 0):
        needed.add(t.adjudications)
    if settings.parking.enabled:
        needed.add(t.parked)
    return [name for name in t.all() if name in needed]


def _parking(
    settings: Settings,
    metrics: Metrics,
    tier: str,
    topic: str,
    group: str,
    holds: dict[str, Callable[[], Hold | None]],
) -> Parking:
    """The tier's retention watch, and its parking when ESCALATOR_PARKING is on (the watch
    runs either way: the metrics, and the count of records lost, are wanted regardless)."""
    hold = holds[tier]
    metrics.held_since.labels(tier).set_function(lambda: _epoch(hold(), "since_s"))
    metrics.hold_ends.labels(tier).set_function(lambda: _epoch(hold(), "ends_at_s"))
    k = settings.parking
    return Parking(
        tier=tier,
        topic=topic,
        group=group,
        parked_topic=settings.topics.parked,
        log=KafkaLogView(settings.kafka, client_id=f"{settings.kafka.client_id}-retention"),
        metrics=metrics,
        hold=hold,
        park_at=k.park_at,
        check_s=k.check_s,
        enabled=k.enabled,
    )


def _epoch(hold: Hold | None, name: str) -> float:
    value = getattr(hold, name, None) if hold is not None else None
    return float(value) if value is not None else 0.0


def _admitted_rates(admission: Admission) -> Callable[[], dict[str, float] | None]:
    def rates() -> dict[str, float] | None:
        return admission.budget.rates_per_minute() if admission.enabled else None

    return rates


def _share_of(shares: dict[str, Callable[[], float]], model: str) -> Callable[[], float]:
    """The share of the model's work this process does, once its worker exists."""

    def share() -> float:
        found = shares.get(model)
        return found() if found is not None else 1.0

    return share


def _partition_share(worker: TierWorker) -> Callable[[], float]:
    return lambda: worker.partition_share


def _check(
    client: anthropic.AsyncAnthropic, model: str, profile: ModelProfile, variable: str
) -> Callable[[], Awaitable[ModelFacts]]:
    return lambda: check_model(client, model, profile, variable)


def _transactional_factory(
    settings: Settings, group: str
) -> Callable[[TopicPartition], AIOKafkaProducer]:
    """One transactional id per input partition, stable across restarts and owners.

    A new owner of a partition reuses its id, so ``init_transactions`` fences the previous
    owner and aborts its open transaction. aiokafka sends TxnOffsetCommit v0 (no KIP-447
    generation fencing), which is why the id is per partition, not per process.
    """
    prefix = settings.pipeline.transactional_id_prefix

    def make(tp: TopicPartition) -> AIOKafkaProducer:
        return make_producer(
            settings.kafka,
            transactional_id=f"{prefix}-{group}-{tp.topic}-{tp.partition}",
            transaction_timeout_ms=60_000,
        )

    return make
