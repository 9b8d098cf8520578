"""The batch lane's handler: a row of the tier table reading the hand-off topic
(``tiers/table.py``), through the engine like every tier.

Each hand-off record waits (a coroutine under the engine) for its request's result from the
Message Batches API (``lane/runner.py``), so its offset commits only once what the result led
to is delivered. A ``succeeded`` item is parsed as a real-time answer is
(``model/answers.py``) and routed by the cheap tier's own code (:meth:`CheapHandler.routed`):
confident to results, unsure to escalations, the same contract, metrics and decisions, whose
``lane`` says ``batch`` (the answer's ``service_tier``). Any other item (``errored``,
``expired``, ``canceled``, a batch refused whole) is answered by the real-time path, which
applies the real-time failure policy (retries, holds, a dead letter for a 400 of its own).

Nothing waits past its deadline silently: a record that carries its absolute deadline
(``x-escalator-deadline-ms``, written at hand-off) waits for its batch only until that
deadline less the fallback margin (ESCALATOR_BATCH_FALLBACK_S); then it leaves the batch being
assembled if it is still there and is answered in real time
(``escalator_lane_fallbacks{result="deadline"}``). Its batch item, if already submitted, is
paid for at the batch price and its result ignored. A request answered after its deadline all
the same (it reached the lane too late, or its real-time answer took longer than the margin)
is counted (``escalator_lane_deadline_misses``, alert EscalatorLaneDeadlineMissed).

Measurement (a hand-off record flagged ``x-escalator-measure: shadow``, ``lane/handoff.py``):
a shadow the cheap tier drew, as its escalation value. It joins a batch of the strong model
and has no deadline (no reader waits for it). A ``succeeded`` answer is handled by the strong
tier's own code (:meth:`StrongHandler.answered`): the shadow decision with its sample rate,
``lane: batch`` and the batch price, the adjudication draw, and no result (the request has
its result already). An invalid answer is recorded and asked again in real time, as the
real-time caller asks again; ``errored``, ``expired`` and ``canceled`` items are asked in real
time (:meth:`StrongHandler.ask_now`, full price, never shed), and one that fails there
too is recorded as lost (``measurement_lost:<reason>``), which calibration counts as a
disagreement (docs/CALIBRATION.md, "Measurement through the batch lane").
``escalator_lane_measurements_total{result}`` counts them.

Escalation (issue 24): an unsure cheap batch answer is routed as in real time, except that
while its request's slack (its deadline less now) still meets the lane rule
(:meth:`HandOff.escalation`, the rule and completion times of the hand-off) its escalation is
handed off again, an output of the record being answered (so durable before that offset
commits), flagged ``x-escalator-escalate: strong`` with the same deadline. The lane answers
it with the strong model in a batch through the strong tier's own code
(:meth:`StrongHandler.answered`): the final result with the strong tier's contract, its
decision with ``lane: batch`` and the batch price, the adjudication draw, and the review
hand-off with the human tier on. Its errored, expired and canceled items, an invalid answer,
and a batch whose result would come after the deadline less the fallback margin are answered
in real time (:meth:`StrongHandler.ask_now`, the real-time failure policy), counted in
``escalator_lane_fallbacks`` like the cheap items. Too little slack: the escalations topic, as
before. ``escalator_lane_escalations_total{lane}`` counts the two ways.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, runtime_checkable

from aiokafka import TopicPartition

from escalator.contract.messages import (
    Attempt,
    Escalation,
    Request,
    parse_escalation,
    parse_request,
)
from escalator.engine.worker import Output, Record
from escalator.errors import InvalidRequest
from escalator.lane.batches import ItemResult
from escalator.lane.handoff import deadline_ms, escalated, measurement
from escalator.lane.runner import BatchRunner
from escalator.tiers.handlers import CheapHandler, StrongHandler

#: The fallback's label when the deadline comes before the batch's result (the other labels
#: are the batch result kinds).
DEADLINE = "deadline"


@runtime_checkable
class BatchModel(Protocol):
    """What the lane needs of the cheap model's adapter (``model.adapter.AnthropicClassifier``):
    the request body it sends in real time, and its reading of an answer."""

    model: str

    def request(self, text: str) -> dict[str, Any]: ...

    def attempt(self, message: Any) -> Attempt: ...


class LaneHandler:
    """Handler and :class:`~escalator.engine.worker.Holder` of the hand-off topic."""

    tier = "lane"

    def __init__(
        self,
        cheap: CheapHandler,
        runner: BatchRunner,
        model: BatchModel,
        *,
        fallback_s: float,
        strong: StrongHandler | None = None,
        strong_model: BatchModel | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cheap = cheap
        self.runner = runner
        self.model = model
        self.fallback_s = fallback_s
        #: The strong tier's code and adapter, for the shadows measured here.
        self.strong = strong
        self.strong_model = strong_model
        self._clock = clock

    def should_pause(self) -> bool:
        return self.cheap.should_pause()

    def handle(self, record: Record) -> list[Output] | Coroutine[Any, Any, list[Output]]:
        if (measurement(record) or escalated(record)) and self.strong is not None:
            try:
                parse_escalation(record.value, self.strong.max_text_chars)
            except InvalidRequest as exc:  # the lane or cheap tier wrote it: only a foreign one
                return self.strong.dead_letter(record, exc)
            return self._on_time(record, self._strong(record))
        try:
            parse_request(record.value, self.cheap.max_text_chars)
        except InvalidRequest as exc:  # the cheap tier read it before: only a foreign record
            return self.cheap.dead_letter(record, exc)
        return self._on_time(record, self._wait(record))

    async def _on_time(
        self, record: Record, answering: Coroutine[Any, Any, list[Output]]
    ) -> list[Output]:
        """The outputs of ``answering``, counted as a deadline miss when they come after the
        record's deadline."""
        outputs = await answering
        deadline = deadline_ms(record)
        if deadline is not None and self._clock() * 1000 > deadline:
            self.cheap.metrics.lane_deadline_misses.inc()
        return outputs

    async def _wait(self, record: Record) -> list[Output]:
        """A handed-off request's answer from its batch. While it waits, only the record is
        held here (its bytes, as fetched): the runner keeps the params encoded, and the request
        is read from the record again when the result comes. A parsed text is a Python string,
        at up to 4 bytes a character (docs/OPERATIONS.md, "The batch lane's memory")."""
        deadline = deadline_ms(record)
        join = self.runner.join(
            self.model.model,
            record.partition,
            record.offset,
            self.model.request(self._request(record).text),
            deadline,
        )
        result = await self._in_time(join, deadline)
        request = self._request(record)
        if result is None:
            # The deadline less the margin for a real-time answer: that answer, now.
            self.runner.withdraw(record.partition, record.offset)
            self.cheap.metrics.lane_fallbacks.labels(DEADLINE).inc()
            return await self.cheap.ask(record, request)
        if result.kind == "succeeded":
            attempt = self.model.attempt(result.message)
            return self.cheap.routed(
                record, request, attempt, lambda out: self._escalate(record, out)
            )
        self.cheap.metrics.lane_fallbacks.labels(result.kind).inc()
        return await self.cheap.ask(record, request)

    def _escalate(self, record: Record, escalation: Output) -> Output | None:
        """The hand-off of an unsure batch answer's ``escalation`` for a strong batch when
        its slack allows (None: the escalations topic, in real time)."""
        handoff = self.cheap.handoff
        moved = None
        if handoff is not None and self.strong is not None:
            moved = handoff.escalation(record, escalation)
        lane = "batch" if moved is not None else "realtime"
        self.cheap.metrics.lane_escalations.labels(lane).inc()
        return moved

    async def _strong(self, record: Record) -> list[Output]:
        """A shadow (no deadline: no reader waits) or an escalation (by its deadline),
        answered by the strong model in a batch, or in real time when the batch cannot. Held
        while it waits: the record only, as in :meth:`_wait`."""
        strong, model = self.strong, self.strong_model
        assert strong is not None and model is not None  # handle() checked; built together
        deadline = deadline_ms(record)
        join = self.runner.join(
            model.model,
            record.partition,
            record.offset,
            model.request(self._escalation(record).request.text),
            deadline,
        )
        result = await self._in_time(join, deadline)
        escalation = self._escalation(record)
        metrics = self.cheap.metrics
        # Shadows count by their batch result; escalations as the cheap items' fallbacks.
        counted = metrics.lane_measurements if escalation.shadow else metrics.lane_fallbacks
        if result is None:
            self.runner.withdraw(record.partition, record.offset)
            counted.labels(DEADLINE).inc()
            return await strong.ask_now(record, escalation, [])
        if result.kind != "succeeded":
            counted.labels(result.kind).inc()
            return await strong.ask_now(record, escalation, [])
        attempt = model.attempt(result.message)
        if not attempt.valid and not attempt.refused:
            # As the real-time caller does with an answer that fails validation: recorded,
            # and asked again (in real time: the batch's answer was had).
            if escalation.shadow:
                counted.labels("invalid").inc()
            invalid = strong.invalid(record, escalation, attempt)
            return await strong.ask_now(record, escalation, [invalid])
        if escalation.shadow:
            counted.labels("succeeded").inc()
        return strong.answered(record, escalation, attempt)

    def _request(self, record: Record) -> Request:
        """The record's request, read again (:meth:`handle` read it first: it parses)."""
        return parse_request(record.value, self.cheap.max_text_chars)

    def _escalation(self, record: Record) -> Escalation:
        """The record's escalation, read again (:meth:`handle` read it first: it parses)."""
        assert self.strong is not None
        return parse_escalation(record.value, self.strong.max_text_chars)

    async def _in_time(
        self, join: Coroutine[Any, Any, ItemResult | None], deadline: int | None
    ) -> ItemResult | None:
        """The batch's result, or None when it has not come by ``deadline`` (epoch ms) less
        the fallback margin, or when the runner says it will not (its batch held back by the
        queue limit past what the deadline allows): the deadline fallback either way."""
        if deadline is None:
            return await join
        left_s = deadline / 1000 - self.fallback_s - self._clock()
        if left_s <= 0:
            join.close()
            return None
        try:
            async with asyncio.timeout(left_s):
                return await join
        except TimeoutError:
            return None

    # Holder: the engine tells which hand-off partitions are ours, and what is delivered.
    def assigned(self, partitions: set[TopicPartition]) -> None:
        self.runner.refresh()

    def revoking(self, partitions: set[TopicPartition]) -> None:
        self.runner.give_up({tp.partition for tp in partitions})

    def delivered(self, tp: TopicPartition, offset: int) -> None:
        self.runner.delivered(tp.partition, offset)
