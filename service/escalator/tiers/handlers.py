"""What each tier does with one record: the cheap and strong handlers.

Cheap: validate the request, ask the cheap model, accept (-> results) or escalate
(-> escalations, with the cheap answer attached). With tier 0 on (``ESCALATOR_TIER0_FILE``),
a request its certified local classifier is confident about is answered before any model call
(``tier: "tier0"``, docs/CONTRACT.md "Tier 0 answers"). An answer that fails validation counts as
confidence 0 and escalates (``invalid_answer``); a refusal escalates (``cheap_refused``) and
is never retried. When the cheap model is down or rate-limited the record is *held*
(uncommitted, partitions paused), not escalated: escalating would multiply its cost by about
20. ``ESCALATOR_CHEAP_UNAVAILABLE=escalate`` restores escalation (``cheap_unavailable``) for
transient failures that exhaust their retries. A record whose cheap calls keep failing while
others succeed is escalated as ``cheap_unavailable`` after a bounded number of attempts.

With the batch lane on and ESCALATOR_MEASURE_LANE=batch, a drawn shadow goes to the lane's
hand-off topic instead of the escalations topic (the lane answers it with the strong model in
a batch, through :meth:`StrongHandler.answered`), and the cheap decision records the lane its
shadow took (``shadow_lane``).

Strong: answer the escalation and publish the final decision. While the strong model's rate
limit is tight (``admission.py``), shadow escalations are shed at random before any call, and
the kept ones record the sample rate actually applied (the cheap tier's times the probability
kept); real escalations are never shed. Transient failures hold the
record while the breaker pauses the tier; only a record that keeps failing while the API
serves others is dead-lettered, after a bounded number of attempts. Answers that keep failing
validation are dead-lettered as ``model_output_invalid``. A refusal becomes the task's
``refusal_label`` when it names one, else a dead letter ``model_refused``; never retried.

Account-level failures (spend limit, billing, credentials, an unknown or retired model) hold
traffic at both tiers: nothing is dead-lettered or escalated for them (see ``model/caller.py``
and ``model/holds.py``).

Only permanent errors reach the dead-letter topic: malformed input, text over the limit, a
400 for this request while others succeed, a refusal without a refusal label, or the two
bounded cases above.

The handlers decide what an outcome means for their tier; when to retry, hold or give up is
the model caller's (:meth:`escalator.model.caller.ModelCaller.answer` and its
``RetryPolicy``, which holds both bounds). A handler asks the caller (``answer``,
``paused``, ``model``, ``shadow_keep``) and never reaches into its breaker or policy.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from escalator.contract.decisions import TIER0, Decision
from escalator.contract.messages import (
    BATCH,
    H_PREFIX,
    REALTIME,
    Attempt,
    Escalation,
    Headers,
    Request,
    escalation_value,
    parse_escalation,
    parse_request,
    propagated_headers,
    result_value,
)
from escalator.contract.reviews import Queue, ReviewItem, review_item_value
from escalator.engine.dead_letters import dead_letter
from escalator.engine.worker import Output, Record
from escalator.errors import InvalidRequest, ModelUnavailable, PermanentError
from escalator.lane.deadlines import LaneRule
from escalator.lane.handoff import HandOff
from escalator.model.caller import ModelCaller
from escalator.model.task import Task
from escalator.observability import tracing
from escalator.observability.logs import EventLog, log
from escalator.observability.metrics import Metrics
from escalator.tiers.routing import Route, Thresholds, route

logger = logging.getLogger("escalator.decisions")
decision_log = EventLog("escalator.decisions", "decision")


@dataclass(frozen=True, slots=True)
class TierTopics:
    results: str
    escalations: str
    dead_letter: str
    decisions: str
    reviews: str = ""
    adjudications: str = ""


class PromiseWatch(Protocol):
    """The live test of a thresholds file's promise (``calibration/live.py``): one sampled
    unit, its loss (1: the routed answer differs from the reference) and its probability."""

    def observe(self, loss: float, probability: float) -> None: ...


class LocalAnswers(Protocol):
    """Tier 0 as the cheap tier uses it: a certified local classifier (``tier0/artefact.py``,
    ``Loaded``, loaded in ``app.py``: tiers never import tier0, which reads calibration, which
    reads tiers). It answers a request when its confidence is at least ``threshold``, while
    ``active``; a ``sample_rate`` share of its answers is asked of the models too, and
    each request is a unit of its live test (``observe``; ``tier0/watch.py``), which may
    withdraw it (``active`` false: every later request goes to the models)."""

    @property
    def version(self) -> str: ...
    @property
    def threshold(self) -> float: ...
    @property
    def active(self) -> bool: ...
    @property
    def sample_rate(self) -> float: ...
    def predict(self, texts: Sequence[str]) -> list[tuple[str, float]]: ...
    def observe(self, loss: float, probability: float) -> None: ...


class ConfidenceWatch(Protocol):
    """The live test of the cheap confidences against the calibration window's."""

    def observe(self, confidence: float | None) -> None: ...


@dataclass(frozen=True, slots=True)
class ReviewPolicy:
    """When the strong tier hands a request on to people, and how often it samples one for
    adjudication (docs/OPERATIONS.md, "The human tier"). The default does neither: exactly the
    behaviour without a human tier."""

    human_tier: bool = False
    review_labels: tuple[str, ...] = ()
    on_disagreement: bool = False
    refusals: bool = False
    adjudicate_disagree: float = 0.0
    adjudicate_agree: float = 0.0

    @classmethod
    def of(cls, task: Task, *, human_tier: bool, disagree: float, agree: float) -> ReviewPolicy:
        return cls(
            human_tier=human_tier,
            review_labels=task.review_labels,
            on_disagreement=task.review_on_disagreement,
            refusals=task.review_refusals,
            adjudicate_disagree=disagree,
            adjudicate_agree=agree,
        )

    def review_reason(self, cheap: Attempt, strong: Attempt, thresholds: Thresholds) -> str | None:
        """Why this strong answer goes to people, or None to decide it."""
        if not self.human_tier:
            return None
        if strong.refused:
            return "strong_refused" if self.refusals else None
        if strong.label in self.review_labels:
            return "review_label"
        if strong.confidence < thresholds.strong_for(strong.label):
            return "strong_low_confidence"
        if self.on_disagreement and cheap.valid and cheap.label != strong.label:
            return "disagreement"
        return None

    def adjudication_rate(self, cheap: Attempt, strong: Attempt) -> float:
        """The probability that a request with these two answers is put before a person: the
        agree rate when both are valid with the same label, else the disagree rate (an invalid,
        refused or missing cheap answer, or a strong refusal, differs), so that every request
        the strong tier answered has a known chance (calibration/estimators.py relies on it)."""
        if cheap.valid and strong.valid and cheap.label == strong.label:
            return self.adjudicate_agree
        return self.adjudicate_disagree


def _headers(record: Record) -> Headers:
    """The headers every output of this record carries (no upstream ``x-escalator-*``)."""
    return propagated_headers(record.headers)


class _Base:
    tier: str

    def __init__(
        self,
        *,
        caller: ModelCaller,
        topics: TierTopics,
        metrics: Metrics,
        thresholds: Thresholds,
        max_text_chars: int,
        log_text: bool = False,
        shadow_rate: float = 0.0,
        rng: random.Random | None = None,
        task: Task | None = None,
        escalate_when_unavailable: bool = False,
        review: ReviewPolicy | None = None,
        promise_watch: PromiseWatch | None = None,
        confidence_watch: ConfidenceWatch | None = None,
        lane: LaneRule | None = None,
        tier0: LocalAnswers | None = None,
    ) -> None:
        self.tier0 = tier0
        self.lane = lane or LaneRule()
        self.review = review or ReviewPolicy()
        self.promise_watch = promise_watch
        self.confidence_watch = confidence_watch
        self.labels = task.labels if task is not None else ()
        self.refusal_label = task.refusal_label if task is not None else None
        self.escalate_when_unavailable = escalate_when_unavailable
        self.shadow_rate = shadow_rate
        self.rng = rng or random.Random()
        self.caller = caller
        self.topics = topics
        self.metrics = metrics
        self.thresholds = thresholds
        self.max_text_chars = max_text_chars
        self.log_text = log_text

    def should_pause(self) -> bool:
        return self.caller.paused

    def dead_letter(
        self,
        record: Record,
        error: PermanentError,
        label: str = "",
        extra: Headers | None = None,
    ) -> list[Output]:
        self.metrics.dead_letters.labels(self.tier, error.reason).inc()
        self.metrics.decision(self.tier, label, "dead_lettered")
        out = dead_letter(
            record, error, tier=self.tier, topic=self.topics.dead_letter, logger=logger,
            extra=extra or (),
        )  # fmt: skip
        return [out]

    def decision(
        self,
        request: Request,
        attempt: Attempt,
        key: bytes,
        *,
        outcome: str,
        shadow: bool = False,
        sample_rate: float | None = None,
        adjudication: tuple[bool, float] | None = None,
        shadow_lane: str | None = None,
    ) -> Output:
        """The decisions-log record of one model answer (counted in metrics here, once). A
        cheap answer records its threshold and the shadow rate; the strong model's answer to a
        sampled tier-0 request, made by the cheap tier, does not, as in the strong tier."""
        self.metrics.observe_attempt(attempt, shadow=shadow)
        cheap = self.tier == "cheap" and attempt.tier == "cheap"
        value = Decision.answer_value(
            request,
            attempt,
            outcome=outcome,
            threshold_version=self.thresholds.version,
            shadow=shadow,
            sample_rate=sample_rate,
            threshold=self.thresholds.for_label(attempt.label) if cheap else None,
            shadow_rate=self.shadow_rate if cheap else None,
            adjudication=adjudication,
            deadline_s=self.lane.deadline_s(request),
            shadow_lane=shadow_lane,
        )
        return Output(self.topics.decisions, value, key)

    def result(
        self,
        record: Record,
        request: Request,
        final: Attempt,
        attempts: list[Attempt],
        key: bytes,
        headers: Headers | None = None,
        *,
        escalated: str | None = None,
    ) -> Output:
        """The results-topic record of a decided request: answered by ``final`` after
        ``attempts``; ``escalated`` is the escalation's reason (None: decided where it came
        in, by tier 0 or the cheap model)."""
        value = result_value(
            request,
            final,
            attempts,
            escalated=escalated is not None,
            escalation_reason=escalated,
            threshold_version=self.thresholds.version,
        )
        return Output(
            self.topics.results, value, key, _headers(record) if headers is None else headers
        )

    def log_decision(self, request: Request, attempt: Attempt, *, escalated: bool) -> None:
        fields: dict[str, object] = {
            "id": request.id,
            "tier": attempt.tier,
            "model": attempt.model,
            "label": attempt.label,
            "confidence": attempt.confidence,
            "valid": attempt.valid,
            "escalated": escalated,
            "input_tokens": attempt.input_tokens,
            "output_tokens": attempt.output_tokens,
            "cache_write_tokens": attempt.cache_write_tokens,
            "cache_read_tokens": attempt.cache_read_tokens,
            "cost_usd": round(attempt.cost_usd, 10),
            "latency_ms": round(attempt.latency_ms, 2),
        }
        if attempt.error:
            fields["error"] = attempt.error
        if attempt.refusal_category:
            fields["refusal_category"] = attempt.refusal_category
        if attempt.request_id:
            fields["request_id"] = attempt.request_id
        if self.log_text:
            fields["text"] = request.text
        decision_log(fields)


class CheapHandler(_Base):
    tier = "cheap"

    def __init__(
        self, *, handoff: HandOff | None = None, strong: ModelCaller | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        #: The batch lane's hand-off (ESCALATOR_BATCH_LANE), None: everything in real time.
        self.handoff = handoff
        #: The strong model's caller, with tier 0 on: it answers a sampled tier-0 request the
        #: cheap model would escalate (:meth:`_sampled`). None: such a sample counts as
        #: differing (a stronger test than the certified promise).
        self.strong = strong

    def handle(self, record: Record) -> list[Output] | Coroutine[Any, Any, list[Output]]:
        """One record: :meth:`handle_batch` of one."""
        return self.handle_batch([record])[0]

    def handle_batch(
        self, records: Sequence[Record]
    ) -> list[list[Output] | Coroutine[Any, Any, list[Output]]]:
        """The records of one fetched partition batch, in order. Bad input is answered at
        once (a dead letter), and so is a request tier 0 answers: tier 0 predicts the whole
        batch in one call (its cost is per call far more than per text); the rest wait for
        the model, or go to the batch lane."""
        parsed: list[Request | InvalidRequest] = []
        for record in records:
            try:
                parsed.append(parse_request(record.value, self.max_text_chars))
            except InvalidRequest as exc:
                parsed.append(exc)
        tier0 = self.tier0
        if tier0 is not None and not tier0.active:
            tier0 = None  # withdrawn by its live test: as without it
        predicted: list[tuple[str, float]] = []
        each_ms = 0.0
        if tier0 is not None:
            texts = [r.text for r in parsed if isinstance(r, Request)]
            if texts:
                start = time.perf_counter()
                predicted = tier0.predict(texts)
                each_ms = (time.perf_counter() - start) * 1000 / len(texts)
        answers = iter(predicted)
        out: list[list[Output] | Coroutine[Any, Any, list[Output]]] = []
        for record, request in zip(records, parsed, strict=True):
            if isinstance(request, InvalidRequest):
                out.append(self.dead_letter(record, request))
                continue
            if tier0 is not None:
                label, confidence = next(answers)
                local = self._tier0(tier0, record, request, label, confidence, each_ms)
                answered = self._watched(tier0, record, request, local)
                if answered is not None:
                    out.append(answered)
                    continue
            if self.handoff is not None:
                handed = self.handoff.takes(record, request)
                if handed is not None:  # the batch lane answers it: committed once handed off
                    out.append(handed)
                    continue
            out.append(self.ask(record, request))
        return out

    def _tier0(
        self,
        tier0: LocalAnswers,
        record: Record,
        request: Request,
        label: str,
        confidence: float,
        latency_ms: float,
    ) -> list[Output] | None:
        """Tier 0's answer, at once (no model call, no task), when it is at least as confident
        as its certified threshold; else None: the model is asked as without it."""
        if confidence < tier0.threshold or label not in self.labels:
            return None
        version = tier0.version
        attempt = Attempt(
            tier=TIER0,
            model=version,
            label=label,
            confidence=confidence,
            valid=True,
            latency_ms=latency_ms,
        )
        key = record.key or request.id.encode()
        self.metrics.observe_attempt(attempt)
        self.metrics.decision(TIER0, label, "accepted")
        self.log_decision(request, attempt, escalated=False)
        decision = Decision.answer_value(
            request,
            attempt,
            outcome="accepted",
            threshold_version=self.thresholds.version,
            threshold=tier0.threshold,
            deadline_s=self.lane.deadline_s(request),
            tier0_version=version,
        )
        return [
            Output(self.topics.decisions, decision, key),
            self.result(record, request, attempt, [attempt], key),
        ]

    def _watched(
        self, tier0: LocalAnswers, record: Record, request: Request, local: list[Output] | None
    ) -> list[Output] | Coroutine[Any, Any, list[Output]] | None:
        """Tier 0's answer as its live test needs it: a request it declined (``local`` None)
        is a unit that agrees by definition; an answer is sampled at its ``sample_rate``, and
        a sampled one goes the coroutine path (:meth:`_sampled`), the rest stay at once."""
        if local is None:
            tier0.observe(0.0, 1.0)
            return None
        if tier0.sample_rate > 0 and self.rng.random() < tier0.sample_rate:
            return self._sampled(tier0, record, request, local)
        return local

    async def _sampled(
        self, tier0: LocalAnswers, record: Record, request: Request, local: list[Output]
    ) -> list[Output]:
        """A sampled tier-0 answer: still tier 0's outputs, plus the cheap model's answer as a
        ``shadow`` decision with the sample rate, and a unit of tier 0's test of its certified
        promise, agreement with the final routed answer: routed by the thresholds in force, an
        accepted cheap answer is final; one the cheap tier would escalate (or a refusal) is
        asked of the strong model too (:meth:`_final_strong`, another shadow decision). The unit
        agrees when the final label is tier 0's. A sample a model cannot answer for this record
        alone is no unit (counted ``failed``); account-level trouble holds it like any call."""
        decided = local[0].value  # _tier0's decision record: its label is tier 0's
        assert decided is not None
        label = Decision.from_json(decided).attempt.label
        try:
            attempt = await self.caller.answer(request.text, give_up_when_unavailable=True)
        except (ModelUnavailable, PermanentError):
            self.metrics.tier0_samples.labels("failed").inc()
            return local
        rate = tier0.sample_rate
        key = record.key or request.id.encode()
        outputs = [
            *local,
            self.decision(request, attempt, key, outcome="shadow", shadow=True, sample_rate=rate),
        ]
        routed, _ = route(attempt, self.thresholds)
        final: str | None = attempt.label
        if attempt.refused or routed != "accept":
            if self.strong is None:
                final = None  # the strong answer is not asked: counts as differing
            else:
                strong = await self._final_strong(request, key, rate)
                if strong is None:
                    self.metrics.tier0_samples.labels("failed").inc()
                    return outputs
                final, measured = strong
                outputs.append(measured)
        agree = final is not None and final == label
        self.metrics.tier0_samples.labels("agree" if agree else "differ").inc()
        tier0.observe(0.0 if agree else 1.0, rate)
        return outputs

    async def _final_strong(
        self, request: Request, key: bytes, rate: float
    ) -> tuple[str | None, Output] | None:
        """The strong tier's final label for a sampled tier-0 request the cheap tier would
        escalate (a refusal: the task's ``refusal_label``; an invalid answer: none, so the unit
        differs), with the strong answer as a shadow decision at the tier-0 sample rate; None
        when the strong model cannot answer it (for this record alone, or past retries)."""
        assert self.strong is not None
        try:
            attempt = await self.strong.answer(
                request.text, give_up_when_unavailable=True, shadow=True
            )
        except (ModelUnavailable, PermanentError):
            return None
        measured = self.decision(
            request, attempt, key, outcome="shadow", shadow=True, sample_rate=rate
        )
        if attempt.refused:
            return self.refusal_label, measured
        return (attempt.label if attempt.valid else None), measured

    async def ask(self, record: Record, request: Request) -> list[Output]:
        """The real-time path: ask the cheap model, route its answer."""
        try:
            attempt = await self.caller.answer(
                request.text, give_up_when_unavailable=self.escalate_when_unavailable
            )
        except ModelUnavailable as exc:
            return self.routed(record, request, self._unavailable(f"unavailable:{exc.kind}"))
        except PermanentError as exc:
            if exc.reason != "model_unavailable":
                return self.dead_letter(record, exc)  # a 400 for this request alone
            return self.routed(record, request, self._unavailable("unavailable:poison"))
        return self.routed(record, request, attempt)

    def routed(
        self,
        record: Record,
        request: Request,
        attempt: Attempt,
        escalate: Callable[[Output], Output | None] | None = None,
    ) -> list[Output]:
        """The outputs of a cheap answer, real-time or from the batch lane (whose answers say
        ``service_tier: batch``, so their decisions record ``lane: batch``): accepted to
        results (maybe shadowed), or escalated. An attempt made by :meth:`_unavailable`
        escalates as ``cheap_unavailable`` with no decision record (no answer was had).
        ``escalate`` (the lane's) may send the escalation elsewhere: what it returns replaces
        the escalations-topic output, None keeps it."""
        key = record.key or request.id.encode()
        headers = _headers(record)
        decision: Route
        reason: str | None
        outputs: list[Output] = []
        if attempt.error is not None and attempt.error.startswith("unavailable:"):
            decision, reason = "escalate", "cheap_unavailable"
        else:
            if self.confidence_watch is not None:
                valid = attempt.valid and not attempt.refused and attempt.label is not None
                self.confidence_watch.observe(attempt.confidence if valid else None)
            if attempt.refused:
                decision, reason = "escalate", "cheap_refused"
            else:
                decision, reason = route(attempt, self.thresholds)
            outcome = "accepted" if decision == "accept" else "escalated"
            # The shadow draw first: the decision records it (``shadow_lane``), so that
            # calibration knows which measurements are still on their way.
            drawn = (
                decision == "accept"
                and self.shadow_rate > 0
                and self.rng.random() < self.shadow_rate
            )
            via = self._shadow_lane() if drawn else None
            outputs.append(self.decision(request, attempt, key, outcome=outcome, shadow_lane=via))
        self.log_decision(request, attempt, escalated=decision == "escalate")
        if decision == "accept":
            self.metrics.decision(self.tier, attempt.label or "", "accepted")
            outputs.append(self.result(record, request, attempt, [attempt], key, headers))
            if via is not None:
                # Measurement: the strong model answers this one too, for the decisions log
                # only. The rate travels with it so estimates can be weighted by 1/rate. Through
                # the batch lane at half the price (ESCALATOR_MEASURE_LANE), else the strong tier.
                shadow = escalation_value(
                    request, "shadow", attempt, shadow=True, sample_rate=self.shadow_rate
                )
                if via == BATCH and self.handoff is not None:
                    outputs.append(self.handoff.measurement(record, shadow))
                else:
                    outputs.append(Output(self.topics.escalations, shadow, key, headers))
            return outputs
        self.metrics.decision(self.tier, attempt.label or "", "escalated")
        tracing.escalated(reason or "low_confidence")
        value = escalation_value(request, reason or "low_confidence", attempt)
        escalation = Output(self.topics.escalations, value, key, headers)
        moved = escalate(escalation) if escalate is not None else None
        outputs.append(moved or escalation)
        return outputs

    def _shadow_lane(self) -> str:
        """The lane a shadow drawn now travels by."""
        return BATCH if self.handoff is not None and self.handoff.measures else REALTIME

    def _unavailable(self, error: str) -> Attempt:
        return Attempt(
            tier=self.tier,
            model=self.caller.model,
            label=None,
            confidence=0.0,
            valid=False,
            error=error,
        )


class StrongHandler(_Base):
    tier = "strong"

    def __init__(self, *, record_lost: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        #: Write a decision for a shadow whose strong call failed for good (the batch lane's
        #: measurements: the cheap decision said one is on its way, and calibration waits for
        #: it; the record counts as a disagreement there, docs/CALIBRATION.md).
        self.record_lost = record_lost

    def _give_up(
        self,
        record: Record,
        error: PermanentError,
        decisions: list[Output],
        shadow: bool,
        extra: Headers | None = None,
    ) -> list[Output]:
        if shadow:
            # A measurement call never dead-letters a request that already has its result.
            self.metrics.shadow_failures.labels(error.reason).inc()
            log(logger, "shadow_failed", logging.WARNING, reason=error.reason, offset=record.offset)
            return decisions
        return decisions + self.dead_letter(record, error, extra=extra)

    def handle(self, record: Record) -> list[Output] | Coroutine[Any, Any, list[Output]]:
        """Bad input is answered at once (a dead letter), and so is a shadow escalation shed
        while the strong model's budget is tight; the rest wait for the model."""
        try:
            escalation = parse_escalation(record.value, self.max_text_chars)
        except InvalidRequest as exc:
            return self.dead_letter(record, exc)
        shadow = escalation.shadow
        tracing.escalated(escalation.reason)
        nominal = escalation.sample_rate  # before shedding: the live monitor's probability
        if shadow:
            # Real traffic before measurement: while the strong model's budget is tight, shed
            # shadow calls at random, and record the rate actually applied (the cheap tier's
            # rate times the probability kept), so 1/sample_rate stays the right weight.
            # At p = 1 every accepted request is shadowed and the calibration counts its strong
            # answer as certain: those are never shed (they still yield at the gate).
            keep = self.caller.shadow_keep() if escalation.sample_rate < 1.0 else 1.0
            if keep < 1.0:
                if self.rng.random() >= keep:
                    self.metrics.shadows_shed.labels(self.caller.model).inc()
                    return []
                escalation = replace(escalation, sample_rate=escalation.sample_rate * keep)
        return self._ask(record, escalation, nominal)

    async def ask_now(
        self, record: Record, escalation: Escalation, decisions: list[Output]
    ) -> list[Output]:
        """A shadow or escalation the batch lane could not answer (errored, expired, canceled,
        an invalid answer, or a deadline too near): asked in real time, after ``decisions``
        (never shed: a shadow was drawn already)."""
        return await self._ask(record, escalation, escalation.sample_rate, decisions)

    def invalid(self, record: Record, escalation: Escalation, attempt: Attempt) -> Output:
        """The decision of an answer that failed validation (logged too)."""
        request = escalation.request
        self.log_decision(request, attempt, escalated=True)
        return self.decision(
            request,
            attempt,
            record.key or request.id.encode(),
            outcome="invalid",
            shadow=escalation.shadow,
            sample_rate=escalation.sample_rate,
        )

    def _lost(self, record: Record, escalation: Escalation, reason: str) -> Output:
        """The decision of a measurement that failed for good: no answer, nothing billed."""
        request = escalation.request
        attempt = Attempt(
            tier=self.tier,
            model=self.caller.model,
            label=None,
            confidence=0.0,
            valid=False,
            error=f"measurement_lost:{reason}",
        )
        value = Decision.answer_value(
            request,
            attempt,
            outcome="shadow",
            threshold_version=self.thresholds.version,
            shadow=True,
            sample_rate=escalation.sample_rate,
            deadline_s=self.lane.deadline_s(request),
        )
        return Output(self.topics.decisions, value, record.key or request.id.encode())

    async def _ask(
        self,
        record: Record,
        escalation: Escalation,
        nominal: float,
        decisions: list[Output] | None = None,
    ) -> list[Output]:
        request = escalation.request
        shadow = escalation.shadow
        decisions = [] if decisions is None else decisions
        attempts: list[Attempt] = [escalation.cheap]

        def invalid(attempt: Attempt) -> None:
            # The caller asks again, up to its policy's limit; each answer is logged.
            attempts.append(attempt)
            decisions.append(self.invalid(record, escalation, attempt))

        # A refused cheap answer carries the API's fallback credit token: the strong call
        # echoes it, so the request is billed as if it had been on the strong model all along.
        credit = escalation.cheap.fallback_credit_token if escalation.cheap.refused else None
        try:
            attempt = await self.caller.answer(
                request.text, shadow=shadow, on_invalid=invalid, credit_token=credit
            )
        except PermanentError as exc:  # poison, a 400 for it alone, or invalid answers
            self._watch(escalation, None, nominal)
            if shadow and self.record_lost:
                decisions.append(self._lost(record, escalation, exc.reason))
            return self._give_up(record, exc, decisions, shadow)
        attempts.append(attempt)
        self._watch(escalation, attempt, nominal)
        return self.answered(record, escalation, attempt, attempts, decisions)

    def answered(
        self,
        record: Record,
        escalation: Escalation,
        attempt: Attempt,
        attempts: list[Attempt] | None = None,
        decisions: list[Output] | None = None,
    ) -> list[Output]:
        """The outputs of a strong answer, real-time or from the batch lane (a shadow's, whose
        ``service_tier: batch`` makes its decision say ``lane: batch``): the adjudication
        draw, then people, the refusal policy or the final (or shadow) decision."""
        request = escalation.request
        attempts = [escalation.cheap, attempt] if attempts is None else attempts
        decisions = [] if decisions is None else decisions
        outputs, draw = self._adjudicate(record, escalation, attempt)
        if not escalation.shadow:
            reason = self.review.review_reason(escalation.cheap, attempt, self.thresholds)
            if reason is not None:
                handed = self._to_review(record, escalation, attempt, reason, draw)
                return decisions + handed + outputs
        if attempt.refused:
            # Never asked again: retrying a refusal usually refuses again, and each is billed.
            refused = self._refused(record, request, escalation, attempt, attempts, decisions, draw)
            return refused + outputs
        return (
            self._final(record, request, escalation, attempt, attempts, decisions, draw) + outputs
        )

    def _watch(self, escalation: Escalation, strong: Attempt | None, probability: float) -> None:
        """The live test of a quality thresholds file: an escalated request agrees by
        definition (its answer is the strong one); a shadow one agrees when both answers are
        valid with the same label (a failed or refused shadow call differs, as calibration
        counts it). ``probability``: the shadow rate before shedding (a kept shadow's weight
        ``1/p`` rather than ``1/(p k)`` only makes the test more cautious)."""
        if self.promise_watch is None:
            return
        if not escalation.shadow:
            self.promise_watch.observe(0.0, 1.0)
            return
        cheap = escalation.cheap
        agree = (
            strong is not None
            and cheap.valid
            and strong.valid
            and not strong.refused
            and cheap.label == strong.label
        )
        self.promise_watch.observe(0.0 if agree else 1.0, probability)

    def _item(
        self, escalation: Escalation, strong: Attempt, queue: Queue, reason: str, rate: float
    ) -> bytes:
        return review_item_value(
            ReviewItem(
                queue=queue,
                request=escalation.request,
                reason=reason,
                cheap=escalation.cheap,
                strong=strong,
                labels=self.labels,
                escalation_reason=escalation.reason,
                shadow=escalation.shadow,
                sample_rate=escalation.sample_rate,
                review_rate=rate,
                threshold_version=self.thresholds.version,
                created_ms=int(time.time() * 1000),
            )
        )

    def _to_review(
        self,
        record: Record,
        escalation: Escalation,
        attempt: Attempt,
        reason: str,
        draw: tuple[bool, float] | None = None,
    ) -> list[Output]:
        """The human tier: the request's result waits for a reviewer (docs/CONTRACT.md)."""
        request = escalation.request
        key = record.key or request.id.encode()
        self.log_decision(request, attempt, escalated=True)
        self.metrics.decision(self.tier, attempt.label or "", "reviewed")
        self.metrics.review_handoffs.labels(reason).inc()
        decision = self.decision(
            request,
            attempt,
            key,
            outcome="review",
            sample_rate=escalation.sample_rate,
            adjudication=draw,
        )
        value = self._item(escalation, attempt, "review", reason, 1.0)
        return [decision, Output(self.topics.reviews, value, key, _headers(record))]

    def _adjudicate(
        self, record: Record, escalation: Escalation, attempt: Attempt
    ) -> tuple[list[Output], tuple[bool, float]]:
        """Measurement: a random sample of requests with both answers goes before a person,
        with its probability recorded (more often where the answers differ). Returns the item
        and the draw, ``(sampled, rate)``, which the final decision record carries."""
        rate = self.review.adjudication_rate(escalation.cheap, attempt)
        if rate <= 0.0 or self.rng.random() >= rate:
            return [], (False, rate)
        cheap = escalation.cheap
        agree = cheap.valid and attempt.valid and cheap.label == attempt.label
        reason = "sampled_agree" if agree else "sampled_disagree"
        self.metrics.adjudications_sampled.labels(reason).inc()
        value = self._item(escalation, attempt, "adjudication", reason, rate)
        key = record.key or escalation.request.id.encode()
        return [Output(self.topics.adjudications, value, key, _headers(record))], (True, rate)

    def _final(
        self,
        record: Record,
        request: Request,
        escalation: Escalation,
        attempt: Attempt,
        attempts: list[Attempt],
        decisions: list[Output],
        draw: tuple[bool, float] | None = None,
    ) -> list[Output]:
        key = record.key or request.id.encode()
        shadow = escalation.shadow
        self.log_decision(request, attempt, escalated=True)
        decisions.append(
            self.decision(
                request,
                attempt,
                key,
                outcome="shadow" if shadow else "final",
                shadow=shadow,
                sample_rate=escalation.sample_rate,
                adjudication=draw,
            )
        )
        if shadow:
            return decisions  # one decision per request, always: shadow answers never go to results
        self.metrics.decision(self.tier, attempt.label or "", "accepted")
        result = self.result(record, request, attempt, attempts, key, escalated=escalation.reason)
        return [*decisions, result]

    def _refused(
        self,
        record: Record,
        request: Request,
        escalation: Escalation,
        attempt: Attempt,
        attempts: list[Attempt],
        decisions: list[Output],
        draw: tuple[bool, float] | None = None,
    ) -> list[Output]:
        """The task's refusal policy: its ``refusal_label``, or a dead letter."""
        category = attempt.refusal_category or "uncategorized"
        if self.refusal_label is not None:
            decided = replace(attempt, label=self.refusal_label, confidence=1.0, valid=True)
            attempts[-1] = decided
            return self._final(record, request, escalation, decided, attempts, decisions, draw)
        key = record.key or request.id.encode()
        self.log_decision(request, attempt, escalated=True)
        decisions.append(
            self.decision(
                request,
                attempt,
                key,
                outcome="refused",
                shadow=escalation.shadow,
                sample_rate=escalation.sample_rate,
                adjudication=draw,
            )
        )
        error = PermanentError(
            f"the strong model refused ({category}) and the task names no refusal_label",
            reason="model_refused",
        )
        extra = [(H_PREFIX + "refusal-category", category.encode())]
        return self._give_up(record, error, decisions, escalation.shadow, extra)
