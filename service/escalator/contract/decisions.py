"""The decisions-log record (schemas/decision.v1.json), written and read through one class.

The tiers write one :class:`Decision` per model answer (:meth:`Decision.of_answer`), the
review console one per reviewer's decision (``contract/reviews.py``); calibration, the
report, ``escalator export`` and the review console's recovery scan read them back with
:meth:`Decision.from_json` / :meth:`Decision.from_dict`. Reading is lenient, as the log
outlives the versions that wrote it: a field added within version 1 (``adjudication``...) may
be absent, a value of the wrong type reads as absent, and keys this version does not know are
kept (``extra``) and written back. A record read keeps the object it was read from (``raw``):
``export`` writes that, byte for byte as orjson re-encodes it, so it changes nothing (nested
unknown keys, wrong-typed values and the schema version included). What is not a decision at
all (no ``id``, no ``attempt`` object) raises :class:`NotADecision`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from escalator.contract.messages import (
    BATCH,
    LANES,
    REALTIME,
    SCHEMA_VERSION,
    Attempt,
    Request,
    attempt_json,
    gold_label,
    iso_from,
)
from escalator.errors import InvalidRequest

#: ``outcome`` of a reviewer's decision, and ``attempt.tier`` and ``gold_source`` with it.
HUMAN = "human"
#: ``attempt.tier`` of tier 0's answers: the cheap tier's local classifier, no model call.
TIER0 = "tier0"

_KNOWN = frozenset(
    {
        "schema_version",
        "id",
        "attempt",
        "outcome",
        "threshold_version",
        "threshold",
        "shadow_rate",
        "shadow",
        "sample_rate",
        "gold_label",
        "gold_source",
        "review",
        "ts",
        "ts_ms",
        "adjudication",
        "lane",
        "deadline_s",
        "tier0_version",
        "shadow_lane",
    }
)


class NotADecision(ValueError):
    """A record of the decisions topic (or a line of an export) that is not a decision."""


@dataclass(frozen=True, slots=True)
class Adjudication:
    """The strong tier's adjudication draw: put before people (``sampled``) with ``rate``."""

    sampled: bool
    rate: float


@dataclass(frozen=True, slots=True)
class Review:
    """The ``review`` block of a human decision: who decided, from which queue, and both
    model answers (None where the record lacks one)."""

    queue: str
    review_id: str
    reason: str
    reviewer: str
    verdict: str
    note: str | None
    seconds: float | None
    cheap: Attempt | None
    strong: Attempt | None
    agree: bool
    escalation_reason: str
    strong_sample_rate: float | None
    review_rate: float | None
    item: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "review_id": self.review_id,
            "reason": self.reason,
            "reviewer": self.reviewer,
            "verdict": self.verdict,
            "note": self.note,
            "seconds": self.seconds,
            "cheap": self.cheap,
            "strong": self.strong,
            "agree": self.agree,
            "escalation_reason": self.escalation_reason,
            "strong_sample_rate": self.strong_sample_rate,
            "review_rate": self.review_rate,
            "item": self.item,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Review:
        return cls(
            queue=_str(data.get("queue")),
            review_id=_str(data.get("review_id")),
            reason=_str(data.get("reason")),
            reviewer=_str(data.get("reviewer")),
            verdict=_str(data.get("verdict")),
            note=_opt_str(data.get("note")),
            seconds=_opt_num(data.get("seconds")),
            cheap=_opt_attempt(data.get("cheap")),
            strong=_opt_attempt(data.get("strong")),
            agree=bool(data.get("agree")),
            escalation_reason=_str(data.get("escalation_reason")),
            strong_sample_rate=_opt_num(data.get("strong_sample_rate")),
            review_rate=_opt_num(data.get("review_rate")),
            item=_str(data.get("item")),
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """One record of the decisions log."""

    id: str
    attempt: Attempt
    #: accepted, escalated (cheap); final, shadow, invalid, refused, review (strong); human.
    outcome: str
    threshold_version: str
    #: Cheap tier: the threshold its label was routed by, and the shadow rate in force.
    threshold: float | None = None
    shadow_rate: float | None = None
    shadow: bool = False
    #: Strong tier: the probability this request got a strong answer; human: of review.
    sample_rate: float | None = None
    gold_label: str | None = None
    ts: str = ""
    ts_ms: int = 0
    adjudication: Adjudication | None = None
    gold_source: str | None = None
    review: Review | None = None
    #: ``realtime`` or ``batch``: the lane that answered (added within version 1; see
    #: :func:`lane_of` for records without it).
    lane: str = REALTIME
    #: The deadline in force, seconds from the request record's timestamp: the request's
    #: own ``deadline_s``, else the topic default; None: none (added within version 1).
    deadline_s: float | None = None
    #: Tier 0's answers only: the version of the artefact that answered (added within
    #: version 1; absent on every other record).
    tier0_version: str | None = None
    #: Cheap accepted decisions whose shadow (the strong model's measurement) was drawn: the
    #: lane it travels by, ``batch`` or ``realtime``; None: none drawn (added within
    #: version 1). Calibration knows from it which batch measurements are still pending.
    shadow_lane: str | None = None
    #: Keys this version does not know, kept so that what is read can be written back whole.
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: The object this record was read from (None when written by this process): what
    #: ``export`` writes back, unchanged.
    raw: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def tier(self) -> str:
        return self.attempt.tier

    @classmethod
    def of_answer(
        cls,
        request: Request,
        attempt: Attempt,
        *,
        outcome: str,
        threshold_version: str,
        shadow: bool = False,
        sample_rate: float | None = None,
        threshold: float | None = None,
        shadow_rate: float | None = None,
        adjudication: tuple[bool, float] | None = None,
        lane: str | None = None,
        deadline_s: float | None = None,
        tier0_version: str | None = None,
        shadow_lane: str | None = None,
    ) -> Decision:
        """One model call's record, stamped now.

        A cheap decision also records the threshold it was routed by and the shadow rate in
        force, so that calibration knows, for every request, whether a strong answer was
        certain (confidence below the threshold) or sampled with that rate. The strong
        tier's final answer records its adjudication draw, ``(sampled, rate)``: calibration
        then knows which requests were put before people, decided or not yet (added within
        version 1; absent elsewhere). ``lane`` defaults to what the call was billed as, and
        ``deadline_s`` (the deadline in force) to the request's own."""
        now = time.time()
        return cls(
            id=request.id,
            attempt=attempt,
            outcome=outcome,
            threshold_version=threshold_version,
            threshold=threshold,
            shadow_rate=shadow_rate,
            shadow=shadow,
            sample_rate=sample_rate,
            gold_label=gold_label(request),
            ts=iso_from(now),
            ts_ms=int(now * 1000),
            adjudication=Adjudication(*adjudication) if adjudication is not None else None,
            lane=lane if lane is not None else lane_of(attempt, None),
            deadline_s=deadline_s if deadline_s is not None else request.deadline_s,
            tier0_version=tier0_version,
            shadow_lane=shadow_lane,
        )

    @classmethod
    def answer_value(
        cls,
        request: Request,
        attempt: Attempt,
        *,
        outcome: str,
        threshold_version: str,
        shadow: bool = False,
        sample_rate: float | None = None,
        threshold: float | None = None,
        shadow_rate: float | None = None,
        adjudication: tuple[bool, float] | None = None,
        lane: str | None = None,
        deadline_s: float | None = None,
        tier0_version: str | None = None,
        shadow_lane: str | None = None,
    ) -> bytes:
        """``of_answer(...).value()``, the same bytes (tests/unit/contract pin it), without
        building the record: the tiers write one per answer, and a frozen record of twenty
        fields costs more to build than its JSON does to write."""
        now = time.time()
        value: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "id": request.id,
            "attempt": attempt_json(attempt),
            "outcome": outcome,
            "threshold_version": threshold_version,
            "threshold": threshold,
            "shadow_rate": shadow_rate,
            "shadow": shadow,
            "sample_rate": sample_rate,
            "gold_label": gold_label(request),
            "ts": iso_from(now),
            "ts_ms": int(now * 1000),
            "lane": lane if lane is not None else lane_of(attempt, None),
            "deadline_s": deadline_s if deadline_s is not None else request.deadline_s,
        }
        if tier0_version is not None:
            value["tier0_version"] = tier0_version
        if shadow_lane is not None:
            value["shadow_lane"] = shadow_lane
        if adjudication is not None:
            value["adjudication"] = {"sampled": adjudication[0], "rate": adjudication[1]}
        return orjson.dumps(value)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, to write (the attempt is already JSON: ``attempt_json``)."""
        value: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "id": self.id,
            "attempt": attempt_json(self.attempt),
            "outcome": self.outcome,
            "threshold_version": self.threshold_version,
            "threshold": self.threshold,
            "shadow_rate": self.shadow_rate,
            "shadow": self.shadow,
            "sample_rate": self.sample_rate,
            "gold_label": self.gold_label,
        }
        if self.gold_source is not None:
            value["gold_source"] = self.gold_source
        if self.review is not None:
            value["review"] = self.review.to_dict()
        value["ts"] = self.ts
        value["ts_ms"] = self.ts_ms
        value["lane"] = self.lane
        value["deadline_s"] = self.deadline_s
        if self.tier0_version is not None:
            value["tier0_version"] = self.tier0_version
        if self.shadow_lane is not None:
            value["shadow_lane"] = self.shadow_lane
        if self.adjudication is not None:
            value["adjudication"] = {
                "sampled": self.adjudication.sampled,
                "rate": self.adjudication.rate,
            }
        for key, extra in self.extra.items():
            value.setdefault(key, extra)
        return value

    def value(self) -> bytes:
        """The record's bytes, as the decisions topic and ``export`` carry them."""
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_json(cls, raw: bytes | str) -> Decision:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise NotADecision(f"not JSON ({exc})") from exc
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> Decision:
        """Read one record leniently (see the module docstring)."""
        if not isinstance(data, Mapping):
            raise NotADecision("not a JSON object")
        rid = data.get("id")
        if not isinstance(rid, str):
            raise NotADecision("no id")
        try:
            attempt = Attempt.from_json(data.get("attempt"))
        except InvalidRequest as exc:
            raise NotADecision(f"no attempt ({exc})") from exc
        draw = data.get("adjudication")
        review = data.get("review")
        ts_ms = data.get("ts_ms")
        return cls(
            id=rid,
            attempt=attempt,
            outcome=_str(data.get("outcome")),
            threshold_version=_str(data.get("threshold_version")),
            threshold=_opt_num(data.get("threshold")),
            shadow_rate=_opt_num(data.get("shadow_rate")),
            shadow=bool(data.get("shadow")),
            sample_rate=_opt_num(data.get("sample_rate")),
            gold_label=_opt_str_only(data.get("gold_label")),
            ts=_str(data.get("ts")),
            ts_ms=int(ts_ms) if isinstance(ts_ms, int | float) and ts_ms is not True else 0,
            adjudication=(
                Adjudication(bool(draw.get("sampled")), _opt_num(draw.get("rate")) or 0.0)
                if isinstance(draw, Mapping)
                else None
            ),
            gold_source=_opt_str(data.get("gold_source")),
            review=Review.from_dict(review) if isinstance(review, Mapping) else None,
            lane=lane_of(attempt, data.get("lane")),
            deadline_s=_positive(data.get("deadline_s")),
            tier0_version=_opt_str_only(data.get("tier0_version")),
            shadow_lane=_lane_or_none(data.get("shadow_lane")),
            extra={k: v for k, v in data.items() if k not in _KNOWN},
            raw=data,
        )


def lane_of(attempt: Attempt, recorded: Any) -> str:
    """The lane a record names, or for one that names none (older records, or a value this
    version does not know), the lane its call was billed as: ``batch`` for a Message Batches
    answer (``service_tier: "batch"``), else ``realtime``."""
    if recorded in LANES:
        return str(recorded)
    return BATCH if attempt.service_tier == BATCH else REALTIME


def _lane_or_none(value: Any) -> str | None:
    return str(value) if value in LANES else None


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _positive(value: Any) -> float | None:
    number = _opt_num(value)
    return number if number is not None and 0 < number < float("inf") else None


def _opt_num(value: Any) -> float | None:
    return float(value) if _is_num(value) else None


def _str(value: Any) -> str:
    return "" if value is None else str(value)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _opt_str_only(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _opt_attempt(value: Any) -> Attempt | None:
    try:
        return Attempt.from_json(value)
    except InvalidRequest:
        return None
