"""The human tier's messages: review items in (reviews and adjudications topics), and the
reviewer's decision out (a result, for the reviews queue, and a decision-log record, for both).

A **review item** carries the request and both model answers. The strong tier writes one to
the reviews topic when it hands a request on to people (``reason``: why), and to the
adjudications topic when it samples a request for measurement. Either way the item records the
probabilities that put it there, so that estimates from human labels can be weighted back to
all traffic (docs/CALIBRATION.md):

- ``sample_rate``: the probability that this request got a strong answer at all (1 when the
  cheap tier escalated it, the shadow rate when it was a shadow sample);
- ``review_rate``: the probability that a request with both answers was put in this queue
  (the adjudication rate for agreeing or disagreeing answers; 1 on the reviews queue, whose
  items are chosen by rule, not by chance).

A **human decision** is one record on the decisions topic with ``attempt.tier == "human"``
and ``outcome == "human"``; its ``gold_label`` is the reviewer's label (null for "neither"),
``gold_source`` is ``"human"``, and ``review`` says who, from which queue, and carries both
model answers, so a human decision is self-contained for calibration. Items of the reviews
queue also yield the request's one result (tier ``human``, with ``reviewer``): the result of a
request handed to review *waits for the reviewer* (docs/CONTRACT.md, "The human tier").

``review_id`` (``<queue>:<request id>``) names the decision: a repeated decision for the same
id (a redelivered item, a duplicate item, a second reviewer on an expired lease) is detected
by it and ignored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from escalator.contract.decisions import HUMAN, Decision, Review
from escalator.contract.messages import (
    SCHEMA_VERSION,
    Attempt,
    Request,
    iso_from,
    request_from_json,
    text_json,
)
from escalator.errors import InvalidRequest

Queue = Literal["review", "adjudication"]
QUEUES: tuple[Queue, ...] = ("review", "adjudication")
#: Why the strong tier handed a request on (reviews queue) or sampled it (adjudications).
REVIEW_REASONS = (
    "strong_low_confidence",
    "review_label",
    "disagreement",
    "strong_refused",
    "sampled_disagree",
    "sampled_agree",
)
#: The reviewer's verdict when no label of the task is right.
NEITHER = "neither"


@dataclass(frozen=True, slots=True)
class ReviewItem:
    queue: Queue
    request: Request
    reason: str
    cheap: Attempt
    strong: Attempt
    labels: tuple[str, ...]
    escalation_reason: str
    shadow: bool
    sample_rate: float
    review_rate: float
    threshold_version: str
    created_ms: int

    @property
    def review_id(self) -> str:
        return f"{self.queue}:{self.request.id}"

    @property
    def agree(self) -> bool:
        return self.cheap.valid and self.strong.valid and self.cheap.label == self.strong.label

    @property
    def inclusion(self) -> float:
        """The probability that this request was put before a person in this queue."""
        return self.sample_rate * self.review_rate


def review_item_value(item: ReviewItem) -> bytes:
    r = item.request
    return text_json(
        {
            "schema_version": SCHEMA_VERSION,
            "queue": item.queue,
            "request": {"id": r.id, "text": r.text, "metadata": r.metadata},
            "reason": item.reason,
            "cheap": item.cheap,
            "strong": item.strong,
            "labels": list(item.labels),
            "escalation_reason": item.escalation_reason,
            "shadow": item.shadow,
            "sample_rate": item.sample_rate,
            "review_rate": item.review_rate,
            "threshold_version": item.threshold_version,
            "created_at": iso_from(item.created_ms / 1000),
            "created_ms": item.created_ms,
        }
    )


def _fail(message: str) -> InvalidRequest:
    return InvalidRequest(message, reason="invalid_review_item")


def _rate(data: dict[str, Any], name: str) -> float:
    value = data.get(name)
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value <= 1:
        raise _fail(f"'{name}' must be a number in (0, 1]")
    return float(value)


def parse_review_item(value: bytes | None, max_text_chars: int) -> ReviewItem:
    """Validate one review item; InvalidRequest (``invalid_review_item``) if it is not one."""
    if value is None:
        raise _fail("record has no value (tombstone)")
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise _fail(f"review item is not JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        raise _fail("review item must be an object with schema_version 1")
    queue = data.get("queue")
    if queue not in QUEUES:
        raise _fail(f"'queue' must be one of {', '.join(QUEUES)}")
    labels = data.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise _fail("'labels' must be a non-empty list of strings")
    created = data.get("created_ms")
    if not isinstance(created, int) or isinstance(created, bool) or created < 0:
        raise _fail("'created_ms' must be a non-negative integer")
    shadow = data.get("shadow", False)
    if not isinstance(shadow, bool):
        raise _fail("'shadow' must be a boolean")
    return ReviewItem(
        queue=queue,
        request=request_from_json(data.get("request"), max_text_chars),
        reason=str(data.get("reason", "")),
        cheap=Attempt.from_json(data.get("cheap")),
        strong=Attempt.from_json(data.get("strong")),
        labels=tuple(labels),
        escalation_reason=str(data.get("escalation_reason", "")),
        shadow=shadow,
        sample_rate=_rate(data, "sample_rate"),
        review_rate=_rate(data, "review_rate"),
        threshold_version=str(data.get("threshold_version", "")),
        created_ms=created,
    )


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a reviewer decided about one item."""

    reviewer: str
    #: One of the item's labels, or None for "neither".
    label: str | None
    note: str | None
    #: From the moment the item was shown to the decision.
    seconds: float


def human_attempt(item: ReviewItem, verdict: Verdict) -> Attempt:
    return Attempt(
        tier=HUMAN,
        model=HUMAN,
        label=verdict.label,
        confidence=1.0,
        valid=verdict.label is not None,
        latency_ms=verdict.seconds * 1000,
    )


def _review_block(item: ReviewItem, verdict: Verdict, source: str) -> Review:
    return Review(
        queue=item.queue,
        review_id=item.review_id,
        reason=item.reason,
        reviewer=verdict.reviewer,
        verdict="label" if verdict.label is not None else NEITHER,
        note=verdict.note,
        seconds=round(verdict.seconds, 3),
        cheap=item.cheap,
        strong=item.strong,
        agree=item.agree,
        escalation_reason=item.escalation_reason,
        strong_sample_rate=item.sample_rate,
        review_rate=item.review_rate,
        item=source,
    )


def human_decision(item: ReviewItem, verdict: Verdict, source: str) -> Decision:
    """The decisions-log record of a reviewer's decision (schemas/decision.v1.json).

    ``source`` is the item's ``topic/partition/offset``."""
    now = time.time()
    return Decision(
        id=item.request.id,
        attempt=human_attempt(item, verdict),
        outcome=HUMAN,
        threshold_version=item.threshold_version,
        shadow=item.shadow,
        sample_rate=item.inclusion,
        gold_label=verdict.label,
        gold_source=HUMAN,
        review=_review_block(item, verdict, source),
        ts=iso_from(now),
        ts_ms=int(now * 1000),
    )


def human_decision_value(item: ReviewItem, verdict: Verdict, source: str) -> bytes:
    """:func:`human_decision`'s bytes."""
    return human_decision(item, verdict, source).value()


def human_result_value(item: ReviewItem, verdict: Verdict) -> bytes:
    """The request's one result, decided by a person (reviews queue only).

    A "neither" verdict is published with ``label`` null: no label of the task applies."""
    now = time.time()
    attempts = [item.cheap, item.strong, human_attempt(item, verdict)]
    return text_json(  # the request's metadata
        {
            "schema_version": SCHEMA_VERSION,
            "id": item.request.id,
            "label": verdict.label,
            "confidence": 1.0,
            "tier": HUMAN,
            "model": HUMAN,
            "escalated": True,
            "escalation_reason": item.escalation_reason,
            "attempts": attempts,
            "cost_usd": round(sum(a.cost_usd for a in attempts), 10),
            # A refusal handed on (strong_refused) keeps its category for downstream.
            "refusal_category": item.strong.refusal_category,
            "metadata": item.request.metadata,
            "threshold_version": item.threshold_version,
            "decided_at": iso_from(now),
            "reviewer": verdict.reviewer,
            "review_reason": item.reason,
        }
    )
