"""The tier table: one row (:class:`TierSpec`) per tier this service can run, resolved from
settings by :func:`tier_table`. A row names the tier's input topic and consumer group, the
model it calls, the topics it needs, the factory of its handler, and what it runs beside its
worker (the lane: its batches); ``app.build_service`` builds each row the same way. Adding a
tier, or a lane, is adding a row (and a handler).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from escalator.config import Settings
from escalator.engine.worker import Handler
from escalator.errors import ConfigError
from escalator.kafka.clients import ProducerHandle
from escalator.lane.assemble import lane_runner
from escalator.lane.deadlines import LaneRule
from escalator.lane.handoff import HandOff
from escalator.lane.runner import BatchRunner
from escalator.model.caller import ModelCaller
from escalator.model.stack import ModelChoice, ModelStacks
from escalator.model.task import Task
from escalator.observability.metrics import Metrics
from escalator.tiers.handlers import (
    CheapHandler,
    ConfidenceWatch,
    LocalAnswers,
    PromiseWatch,
    ReviewPolicy,
    StrongHandler,
    TierTopics,
)
from escalator.tiers.lane import BatchModel, LaneHandler
from escalator.tiers.routing import Thresholds

#: The tiers, in the order ``--tier all`` runs them.
TIERS = ("cheap", "strong")


class Watches(Protocol):
    """The live tests of the thresholds file in force that a tier's handler may carry
    (``calibration.live.TierWatches``), built when its tier asks."""

    def agreement(self) -> PromiseWatch | None: ...
    def confidence(self) -> ConfidenceWatch | None: ...


class NoWatches:
    """No live tests (no thresholds file, or tests)."""

    def agreement(self) -> PromiseWatch | None:
        return None

    def confidence(self) -> ConfidenceWatch | None:
        return None


@dataclass(frozen=True, slots=True)
class HandlerParts:
    """What every tier's handler is built from, besides its model caller."""

    topics: TierTopics
    metrics: Metrics
    thresholds: Thresholds
    task: Task
    review: ReviewPolicy
    max_text_chars: int
    log_text: bool
    shadow_rate: float
    escalate_when_unavailable: bool
    watches: Watches
    #: Deadlines and the lane rule (every decision records the deadline in force).
    lane: LaneRule = field(default_factory=LaneRule)
    #: The batch lane's hand-off (ESCALATOR_BATCH_LANE), None: everything in real time.
    handoff: HandOff | None = None
    #: The lane worker's batches (built by the service when it runs the lane).
    runner: BatchRunner | None = None
    #: The strong model's caller, for the shadows the lane measures (the service hands it to
    #: the lane row, whose ``also`` names the strong model), and with tier 0 on, for the
    #: cheap row's sampled tier-0 answers its model would escalate.
    strong: ModelCaller | None = None
    #: Tier 0 (ESCALATOR_TIER0_FILE, loaded and checked in ``app.load_parts``): the cheap
    #: tier answers with it first; None: off.
    tier0: LocalAnswers | None = None

    @classmethod
    def of(
        cls,
        settings: Settings,
        *,
        task: Task,
        thresholds: Thresholds,
        metrics: Metrics,
        watches: Watches | None = None,
        tier0: LocalAnswers | None = None,
    ) -> HandlerParts:
        t, rv = settings.topics, settings.review
        return cls(
            topics=TierTopics(
                t.results, t.escalations, t.dead_letter, t.decisions, t.reviews, t.adjudications
            ),
            metrics=metrics,
            thresholds=thresholds,
            task=task,
            review=ReviewPolicy.of(
                task,
                human_tier=rv.human_tier,
                disagree=rv.adjudicate_disagree,
                agree=rv.adjudicate_agree,
            ),
            max_text_chars=settings.pipeline.max_text_chars,
            log_text=settings.log_text,
            shadow_rate=settings.routing.shadow_rate,
            escalate_when_unavailable=settings.model.cheap_unavailable == "escalate",
            watches=watches or NoWatches(),
            lane=LaneRule.of(settings.lane),
            handoff=HandOff.of(settings.lane, t.handoff) if settings.lane.enabled else None,
            tier0=tier0,
        )


#: Builds a tier's handler from the shared parts and the tier's model caller.
HandlerFactory = Callable[[HandlerParts, ModelCaller], Handler]


@dataclass(frozen=True, slots=True)
class Process:
    """What the service builds once and a row's ``beside`` may use."""

    settings: Settings
    models: ModelStacks
    producer: ProducerHandle


#: What runs beside the workers (entered once the producer runs, before any tier consumes),
#: and its effect on the handler parts every row's handler is then built from.
Besides = list[contextlib.AbstractAsyncContextManager[Any]]
BesideFactory = Callable[[Process, HandlerParts], tuple[HandlerParts, Besides]]


@dataclass(frozen=True, slots=True)
class TierSpec:
    """One tier: what it reads, as which group, with which model, and what it does."""

    name: str
    handler: HandlerFactory
    #: The topic it consumes, and its consumer group.
    topic: str
    group: str
    model: ModelChoice
    #: The topics it needs beyond those every tier writes (results, escalations, dead
    #: letters, decisions): the service starts once they all exist.
    needs: frozenset[str] = frozenset()
    #: Records it may wait on at once (None: ESCALATOR_MAX_IN_FLIGHT). The lane's wait for
    #: their batch, not for a model slot: up to a batch's documented size.
    max_in_flight: int | None = None
    #: Whether its handler is also the worker's Holder (told of assignments and deliveries).
    holds: bool = False
    #: Models it calls besides its own (the lane: the strong one, for shadows): the service
    #: builds and checks their stacks too.
    also: tuple[ModelChoice, ...] = ()
    #: What it runs beside its worker (None: nothing), built before any handler.
    beside: BesideFactory | None = None


def models_of(rows: Sequence[TierSpec]) -> list[ModelChoice]:
    """The models ``rows`` call, one per model tier, in order."""
    every = [m for row in rows for m in (row.model, *row.also)]
    return list({m.tier: m for m in every}.values())


def cheap_handler(parts: HandlerParts, caller: ModelCaller) -> CheapHandler:
    return CheapHandler(
        caller=caller,
        topics=parts.topics,
        metrics=parts.metrics,
        thresholds=parts.thresholds,
        max_text_chars=parts.max_text_chars,
        log_text=parts.log_text,
        shadow_rate=parts.shadow_rate,
        task=parts.task,
        escalate_when_unavailable=parts.escalate_when_unavailable,
        review=parts.review,
        confidence_watch=parts.watches.confidence(),
        lane=parts.lane,
        handoff=parts.handoff,
        tier0=parts.tier0,
        strong=parts.strong if parts.tier0 is not None else None,
    )


def strong_handler(parts: HandlerParts, caller: ModelCaller) -> StrongHandler:
    return StrongHandler(
        caller=caller,
        topics=parts.topics,
        metrics=parts.metrics,
        thresholds=parts.thresholds,
        max_text_chars=parts.max_text_chars,
        log_text=parts.log_text,
        shadow_rate=parts.shadow_rate,
        task=parts.task,
        escalate_when_unavailable=parts.escalate_when_unavailable,
        review=parts.review,
        promise_watch=parts.watches.agreement(),
        lane=parts.lane,
    )


def lane_handler(parts: HandlerParts, caller: ModelCaller) -> LaneHandler:
    """The lane worker: the cheap tier's routing and real-time fallback over ``caller``, the
    batches of ``parts.runner``, the request body and answer parse of the cheap adapter; and
    for the shadows it measures, the strong tier's code over ``parts.strong`` (with no live
    agreement test: it would see the shadow units without the escalations, docs/OPERATIONS.md)
    which records a measurement lost for good."""
    if parts.runner is None:
        raise ConfigError("ESCALATOR_BATCH_LANE: the lane worker was built without its batches")
    if parts.strong is None:
        raise ConfigError(
            "ESCALATOR_BATCH_LANE: the lane worker was built without the strong model"
        )
    adapter, strong_adapter = _batch_model(caller), _batch_model(parts.strong)
    strong = strong_handler(dataclasses.replace(parts, watches=NoWatches()), parts.strong)
    strong.record_lost = True
    return LaneHandler(
        cheap_handler(parts, caller),
        parts.runner,
        adapter,
        fallback_s=parts.lane.fallback_s,
        strong=strong,
        strong_model=strong_adapter,
    )


def _batch_model(caller: ModelCaller) -> BatchModel:
    adapter = caller.client
    if not isinstance(adapter, BatchModel):
        raise ConfigError(
            f"ESCALATOR_BATCH_LANE: the model {caller.model}'s client cannot build batch "
            f"requests ({type(adapter).__name__})"
        )
    return adapter


def lane_beside(process: Process, parts: HandlerParts) -> tuple[HandlerParts, Besides]:
    """The lane's batches (``lane/assemble.py``), and the strong model's caller for the
    shadows it measures."""
    runner = lane_runner(
        process.settings,
        process.models.client,
        process.producer,
        handoff=parts.handoff,
        metrics=parts.metrics,
    )
    parts = dataclasses.replace(parts, runner=runner, strong=process.models["strong"].caller)
    return parts, [runner]


def tiers_to_run(role: str, settings: Settings) -> list[str]:
    """The rows ``run --tier role`` runs: ``all`` is every tier of :data:`TIERS` and, with
    ESCALATOR_BATCH_LANE on, the lane worker; a name is that row alone (the lane only when the
    lane is on: off, nothing is handed off for it to answer)."""
    if role == "all":
        return [*TIERS, "lane"] if settings.lane.enabled else list(TIERS)
    if role == "lane" and not settings.lane.enabled:
        raise ConfigError(
            "ESCALATOR_BATCH_LANE is off: `--tier lane` runs the batch lane's worker, which "
            "needs it on"
        )
    return [role]


def tier_table(settings: Settings) -> dict[str, TierSpec]:
    """Every tier, by name, in :data:`TIERS` order."""
    t, p, m, rv = settings.topics, settings.pipeline, settings.model, settings.review
    strong_needs = {t.reviews} if rv.human_tier else set()
    adjudicates = (
        {t.adjudications} if rv.adjudicate_agree > 0 or rv.adjudicate_disagree > 0 else set()
    )
    strong_needs |= adjudicates
    strong = ModelChoice("strong", m.strong_model, "ESCALATOR_STRONG_MODEL")
    rows = (
        TierSpec(
            "cheap",
            cheap_handler,
            topic=t.requests,
            group=p.cheap_group,
            model=ModelChoice("cheap", m.cheap_model, "ESCALATOR_CHEAP_MODEL"),
            # With the lane on, the cheap tier hands what can wait to the hand-off topic; with
            # tier 0 on, it records tier 0's withdrawals (tier0/state.py).
            needs=frozenset(
                {t.requests}
                | ({t.handoff} if settings.lane.enabled else set())
                | ({t.tier0_state} if settings.routing.tier0_file is not None else set())
            ),
            # With tier 0 on, a sampled tier-0 answer the cheap model would escalate is asked
            # of the strong model too (its live test's reference: the final routed answer).
            also=(strong,) if settings.routing.tier0_file is not None else (),
        ),
        TierSpec(
            "strong",
            strong_handler,
            topic=t.escalations,
            group=p.strong_group,
            model=strong,
            needs=frozenset(strong_needs),
        ),
        # The batch lane (issue 24): not in TIERS; run by name, or by `all` with the lane on
        # (tiers_to_run). Its real-time fallback is the cheap tier's, on the same model stack;
        # the shadows it measures (ESCALATOR_MEASURE_LANE) are the strong model's, and may be
        # sampled for adjudication as the strong tier samples them.
        TierSpec(
            "lane",
            lane_handler,
            topic=t.handoff,
            group=settings.lane.group,
            model=ModelChoice("cheap", m.cheap_model, "ESCALATOR_CHEAP_MODEL"),
            # It answers escalations with the strong tier's code: reviews too, with the
            # human tier on.
            needs=frozenset({t.handoff, t.lane_state} | strong_needs),
            max_in_flight=settings.lane.max_waiting,
            holds=True,
            also=(strong,),
            beside=lane_beside,
        ),
    )
    return {row.name: row for row in rows}


def topics_needed(settings: Settings, rows: Sequence[TierSpec]) -> list[str]:
    """The topics ``rows`` read or write, in Topics' order."""
    t = settings.topics
    needed = {t.escalations, t.results, t.dead_letter, t.decisions}
    for row in rows:
        needed |= row.needs
    if settings.parking.enabled:
        needed.add(t.parked)
    return [name for name in t.all() if name in needed]
