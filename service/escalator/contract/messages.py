"""The message contract, version 1: requests in; escalations, results and dead letters out.

orjson in, typed objects out. JSON Schemas for each message live in ``schemas/`` and the tests
validate what the service writes against them. See docs/CONTRACT.md.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from escalator.errors import InvalidRequest

SCHEMA_VERSION = 1
ID_MAX_CHARS = 256
Headers = list[tuple[str, bytes]]
#: Headers that start with this are reserved: the service writes them, upstream may not.
H_PREFIX = "x-escalator-"
#: Set by ``escalator dead-letters replay`` on what it republishes to an input topic:
#: ``<topic>/<partition>/<offset>`` of the dead letter.
REPLAY_HEADER = H_PREFIX + "replay-of"
#: The reserved headers the contract defines on the input topics (requests, escalations).
#: They travel on to results and escalations; every other reserved header that arrives is
#: dropped from every output. (The cheap tier writes no reserved header on an escalation:
#: the strong tier reads everything it needs from the escalation's value.)
INPUT_HEADERS = frozenset({REPLAY_HEADER})
#: The lanes a model call can go by: the Messages API, or the Message Batches API (half the
#: price, answers within 24 hours; ESCALATOR_BATCH_LANE). ``Decision.lane`` records which.
REALTIME = "realtime"
BATCH = "batch"
LANES = (REALTIME, BATCH)


@dataclass(frozen=True, slots=True)
class Request:
    id: str
    text: str
    metadata: dict[str, Any] | None = None
    #: How long the answer may take, in seconds from the request record's timestamp (the
    #: optional ``deadline_s`` field); None: the requests topic's default (ESCALATOR_DEADLINE_S)
    #: applies. The batch lane takes only what can wait (``lane/deadlines.py``).
    deadline_s: float | None = None


@dataclass(frozen=True, slots=True)
class Attempt:
    """One model call's answer and what it cost."""

    tier: str
    model: str
    label: str | None
    confidence: float
    valid: bool
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    error: str | None = None
    #: The API's ``stop_reason`` (``end_turn``, ``max_tokens``, ``refusal``...); None when
    #: no response came back.
    stop_reason: str | None = None
    #: ``stop_details.category`` of a refusal (``cyber``, ``bio``, ``general_harms``...), or
    #: ``uncategorized`` when the API names none; None unless ``stop_reason`` is ``refusal``.
    refusal_category: str | None = None
    #: The 1-hour-TTL part of ``cache_write_tokens`` (priced apart from 5-minute writes).
    cache_write_1h_tokens: int = 0
    #: ``usage.inference_geo`` (``us`` is priced higher on the models that support it).
    inference_geo: str | None = None
    #: The ``request-id`` header: what Anthropic's support asks for.
    request_id: str | None = None
    #: A refusal's ``stop_details.fallback_credit_token`` (Fallback credit): the strong tier
    #: echoes it when it answers the escalation, so that the retry is billed as if the
    #: request had been on the strong model all along. Opaque; expires 5 minutes after the
    #: refusal; usable only by the same organisation and workspace.
    fallback_credit_token: str | None = None
    #: What happened to a fallback credit token this call presented: ``redeemed``, or
    #: ``not_applied:<reason>`` (``usage.fallback_credit``); None when it presented none.
    fallback_credit: str | None = None
    #: ``usage.service_tier``: ``standard``, ``priority`` or ``batch`` (a Message Batches
    #: answer, billed at 50%); None when the call returned no usage or predates the field.
    #: Prices (``model/prices.py``) and ``escalator report`` read it, so that a batch answer
    #: is never re-priced at the real-time rate.
    service_tier: str | None = None

    @property
    def refused(self) -> bool:
        return self.stop_reason == "refusal"

    @classmethod
    def from_json(cls, data: Any) -> Attempt:
        if not isinstance(data, dict):
            raise InvalidRequest("attempt must be an object", reason="invalid_escalation")
        try:
            return cls(
                tier=str(data["tier"]),
                model=str(data["model"]),
                label=None if data.get("label") is None else str(data["label"]),
                confidence=float(data["confidence"]),
                valid=bool(data["valid"]),
                input_tokens=_tokens(data, "input_tokens"),
                output_tokens=_tokens(data, "output_tokens"),
                cache_write_tokens=_tokens(data, "cache_write_tokens"),
                cache_read_tokens=_tokens(data, "cache_read_tokens"),
                cost_usd=float(data.get("cost_usd", 0.0)),
                latency_ms=float(data.get("latency_ms", 0.0)),
                error=_opt_str(data.get("error")),
                stop_reason=_opt_str(data.get("stop_reason")),
                refusal_category=_opt_str(data.get("refusal_category")),
                cache_write_1h_tokens=_tokens(data, "cache_write_1h_tokens"),
                inference_geo=_opt_str(data.get("inference_geo")),
                request_id=_opt_str(data.get("request_id")),
                fallback_credit_token=_opt_str(data.get("fallback_credit_token")),
                fallback_credit=_opt_str(data.get("fallback_credit")),
                service_tier=_opt_str(data.get("service_tier")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidRequest(f"bad attempt: {exc}", reason="invalid_escalation") from exc


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _tokens(data: dict[str, Any], key: str) -> int:
    """A token count: a whole number from 0 to 2**63 - 1 (what every writer can carry)."""
    value = int(data.get(key, 0))
    if not 0 <= value < 2**63:
        raise ValueError(f"{key} must be a count of tokens, got {value}")
    return value


@dataclass(frozen=True, slots=True)
class Escalation:
    request: Request
    reason: str
    cheap: Attempt
    # A shadow escalation was *accepted* at the cheap tier and sampled with probability
    # ``sample_rate`` for measurement: its strong answer goes to the decisions log only.
    shadow: bool = False
    sample_rate: float = 1.0


#: Dead-letter reasons that describe the record's own bytes (not JSON, not UTF-8, a field
#: missing or of the wrong type, an id too long): replaying the same bytes fails the same way.
#: (``text_too_long`` is not one of them: raising ESCALATOR_MAX_TEXT_CHARS fixes it.)
MALFORMED_REASONS = frozenset(
    {
        "empty_value",
        "invalid_utf8",
        "invalid_json",
        "wrong_type",
        "missing_field",
        "empty_field",
        "id_too_long",
        "invalid_deadline",
        "invalid_escalation",
        "invalid_review_item",
    }
)


def _fail(reason: str, message: str) -> InvalidRequest:
    return InvalidRequest(message, reason=reason)


def parse_request(value: bytes | None, max_text_chars: int) -> Request:
    """Validate one request record. Raises InvalidRequest with a stable reason code."""
    if value is None:
        raise _fail("empty_value", "record has no value (tombstone)")
    try:
        data = orjson.loads(value)  # orjson also rejects invalid UTF-8
    except orjson.JSONDecodeError as exc:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as utf8:
            raise _fail("invalid_utf8", f"value is not valid UTF-8 at byte {utf8.start}") from exc
        raise _fail("invalid_json", f"value is not JSON: {exc}") from exc
    return request_from_json(data, max_text_chars)


def request_from_json(data: Any, max_text_chars: int) -> Request:
    if not isinstance(data, dict):
        raise _fail("wrong_type", f"value must be a JSON object, got {type(data).__name__}")
    for name in ("id", "text"):
        if name not in data or data[name] is None:
            raise _fail("missing_field", f"'{name}' is required")
        if not isinstance(data[name], str):
            raise _fail("wrong_type", f"'{name}' must be a string, got {type(data[name]).__name__}")
        if not data[name].strip():
            raise _fail("empty_field", f"'{name}' must not be empty")
    rid: str = data["id"]
    text: str = data["text"]
    if len(rid) > ID_MAX_CHARS:
        raise _fail("id_too_long", f"'id' has {len(rid)} chars, at most {ID_MAX_CHARS} allowed")
    if len(text) > max_text_chars:
        raise _fail("text_too_long", f"'text' has {len(text)} chars, limit {max_text_chars}")
    metadata = data.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise _fail("wrong_type", f"'metadata' must be an object, got {type(metadata).__name__}")
    return Request(id=rid, text=text, metadata=metadata, deadline_s=_deadline(data))


#: The longest deadline a request (or ESCALATOR_DEADLINE_S) may set: 30 days. The batch lane
#: waits at most 24 hours, so anything longer changes nothing but is most likely milliseconds
#: sent as seconds; and a deadline must stay a number of milliseconds (x-escalator-deadline-ms).
MAX_DEADLINE_S = 30 * 86400


def _deadline(data: dict[str, Any]) -> float | None:
    """The optional ``deadline_s``: a positive number of seconds, at most MAX_DEADLINE_S
    (null: absent)."""
    value = data.get("deadline_s")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(
            "invalid_deadline", f"'deadline_s' must be a number, got {type(value).__name__}"
        )
    if not 0 < value <= MAX_DEADLINE_S:
        raise _fail(
            "invalid_deadline",
            f"'deadline_s' must be a positive number of seconds, at most {MAX_DEADLINE_S} "
            f"(30 days), got {value}",
        )
    return float(value)


#: Below this many bytes a value keeps orjson's reservation (8,145 bytes for a 700-byte
#: result, 16,257 at most: some MB for every output of ``ESCALATOR_MAX_UNCOMMITTED``
#: records), so that the usual result pays no copy on the hot path.
_COPY_FROM = 1024


def text_json(doc: Any) -> bytes:
    """orjson's bytes for a value that carries a request's text or metadata, copied to their
    own size when they are long.

    orjson reserves room for the worst escaping and keeps it: a 20,000-character text's
    escalation holds 259,617 bytes (519,201 for 2-byte characters, 1,038,369 for 4-byte
    ones; tracemalloc, orjson 3.13). Held for microseconds that is nothing; but a record's
    outputs wait for their acknowledgement (minutes while the broker is away, up to
    ``ESCALATOR_MAX_UNCOMMITTED`` records) or for their transaction (exactly-once), and the
    lane keeps thousands for hours. The copy costs 1.4 µs for such a text (timeit,
    2026-12-08); 0.6 µs for a short result, which is why those are not copied."""
    out = orjson.dumps(doc)
    return out if len(out) < _COPY_FROM else bytes(memoryview(out))


def request_json(request: Request) -> dict[str, Any]:
    """A request as the escalation and review item embed it (``deadline_s`` only when set)."""
    out: dict[str, Any] = {"id": request.id, "text": request.text, "metadata": request.metadata}
    if request.deadline_s is not None:
        out["deadline_s"] = request.deadline_s
    return out


def parse_escalation(value: bytes | None, max_text_chars: int) -> Escalation:
    if value is None:
        raise _fail("empty_value", "record has no value (tombstone)")
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise _fail("invalid_json", f"escalation is not JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        raise _fail("invalid_escalation", "escalation must be an object with schema_version 1")
    request = request_from_json(data.get("request"), max_text_chars)
    shadow = data.get("shadow", False)
    rate = data.get("sample_rate", 1.0)
    if not isinstance(shadow, bool) or not isinstance(rate, int | float) or not 0 < rate <= 1:
        raise _fail("invalid_escalation", "shadow must be a boolean, sample_rate in (0, 1]")
    return Escalation(
        request=request,
        reason=str(data.get("reason", "low_confidence")),
        cheap=Attempt.from_json(data.get("cheap")),
        shadow=shadow,
        sample_rate=float(rate),
    )


class _AttemptJson:
    """An attempt's JSON, made once for the records that carry it (a cheap answer is in its
    decision, its result and maybe its shadow or escalation, written one after another): orjson
    writes a slotted dataclass field by field, about 2 µs, and copies a ``Fragment`` as it is.
    The last attempt's is kept; an Attempt is frozen, so it cannot go stale. Called on the
    event loop's thread only (the service writes no record from another thread)."""

    __slots__ = ("_attempt", "_json")

    def __init__(self) -> None:
        self._attempt: Attempt | None = None
        self._json = orjson.Fragment(b"null")

    def __call__(self, attempt: Attempt) -> orjson.Fragment:
        if attempt is not self._attempt:
            self._attempt, self._json = attempt, orjson.Fragment(orjson.dumps(attempt))
        return self._json


#: ``attempt_json(attempt)``: what orjson would write for it, as a Fragment.
attempt_json = _AttemptJson()


def escalation_value(
    request: Request, reason: str, cheap: Attempt, *, shadow: bool = False, sample_rate: float = 1.0
) -> bytes:
    return text_json(
        {
            "schema_version": SCHEMA_VERSION,
            "request": request_json(request),
            "reason": reason,
            "cheap": attempt_json(cheap),
            "shadow": shadow,
            "sample_rate": sample_rate,
        }
    )


def gold_label(request: Request) -> str | None:
    """The optional ``metadata.gold_label``: used by calibrate, never shown to a model."""
    gold = (request.metadata or {}).get("gold_label")
    return gold if isinstance(gold, str) else None


def result_value(
    request: Request,
    final: Attempt,
    attempts: list[Attempt],
    *,
    escalated: bool,
    escalation_reason: str | None,
    threshold_version: str,
) -> bytes:
    return text_json(  # its metadata is the request's, as long as the record allows
        {
            "schema_version": SCHEMA_VERSION,
            "id": request.id,
            "label": final.label,
            "confidence": final.confidence,
            "tier": final.tier,
            "model": final.model,
            "escalated": escalated,
            "escalation_reason": escalation_reason,
            "attempts": [attempt_json(a) for a in attempts],
            "cost_usd": round(sum(a.cost_usd for a in attempts), 10),
            "refusal_category": final.refusal_category,
            "metadata": request.metadata,
            "threshold_version": threshold_version,
            "decided_at": now_iso(),
        }
    )


def now_iso() -> str:
    return iso_from(time.time())


def iso_ms(epoch_ms: int) -> str:
    """:func:`iso_from` for epoch milliseconds, exact (no float rounding of the fraction)."""
    return f"{_second(epoch_ms // 1000)}.{epoch_ms % 1000:03d}Z"


def iso_from(epoch_s: float) -> str:
    """UTC ISO-8601 with milliseconds and a Z, e.g. 2026-11-28T01:40:00.123Z (truncated, as
    datetime.isoformat does). The seconds part is cached: this runs several times per record."""
    seconds = int(epoch_s)
    return f"{_second(seconds)}.{int((epoch_s - seconds) * 1000):03d}Z"


@functools.lru_cache(maxsize=4)
def _second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def propagated_headers(arrived: Iterable[tuple[str, bytes | None]] | None) -> Headers:
    """What an output carries of the headers its input record arrived with: all of them
    (``traceparent``...), except reserved ``x-escalator-*`` headers that the contract does not
    define for an input topic, so that upstream cannot make a result or an escalation say
    something that the service did not (``x-escalator-reason: fake``)."""
    # Kafka allows a header without a value: it travels on as an empty one.
    return [
        (k, b"" if v is None else bytes(v))
        for k, v in arrived or ()
        if not k.lower().startswith(H_PREFIX) or k in INPUT_HEADERS
    ]


def dead_letter_headers(
    original: Headers,
    *,
    reason: str,
    error: BaseException,
    topic: str,
    partition: int,
    offset: int,
    tier: str,
) -> Headers:
    """The original headers, plus why and where from. Messages are cut to stay header-sized.

    Every incoming ``x-escalator-*`` header is dropped here, ``x-escalator-replay-of`` too: a
    dead letter's reserved headers are the ones below and nothing else."""
    ours: Headers = [
        (H_PREFIX + "reason", reason.encode()),
        (H_PREFIX + "error-class", type(error).__name__.encode()),
        (H_PREFIX + "error-message", str(error)[:1000].encode("utf-8", "replace")),
        (H_PREFIX + "source-topic", topic.encode()),
        (H_PREFIX + "source-partition", str(partition).encode()),
        (H_PREFIX + "source-offset", str(offset).encode()),
        (H_PREFIX + "tier", tier.encode()),
        (H_PREFIX + "failed-at", now_iso().encode()),
        (H_PREFIX + "failed-at-ms", str(int(time.time() * 1000)).encode()),
    ]
    return [h for h in original if not h[0].lower().startswith(H_PREFIX)] + ours


#: What a dead letter says when it carries no ``x-escalator-reason`` (not one of ours).
UNKNOWN_REASON = "?"


@dataclass(frozen=True, slots=True)
class DeadLetterInfo:
    """The ``x-escalator-*`` headers of a dead letter, read back (see dead_letter_headers).

    A header that is missing (or null), or a number that does not parse, is None (the reason is
    ``UNKNOWN_REASON``). Where a header repeats, the last one counts. ``original`` is every
    header that is not ours, in order: what a replay sends back.
    """

    reason: str
    source_topic: str | None
    source_partition: int | None
    source_offset: int | None
    tier: str | None
    error_class: str | None
    error_message: str | None
    failed_at: str | None
    failed_at_ms: int | None
    refusal_category: str | None
    original: Headers

    @classmethod
    def from_headers(cls, headers: Iterable[tuple[str, bytes]] | None) -> DeadLetterInfo:
        pairs = list(headers or ())
        # A Kafka header may have a null value: for ours, that is the same as missing.
        ours = {k[len(H_PREFIX) :]: v for k, v in pairs if k.startswith(H_PREFIX) and v is not None}

        def text(name: str) -> str | None:
            raw = ours.get(name)
            return None if raw is None else bytes(raw).decode("utf-8", "replace")

        def number(name: str) -> int | None:
            try:
                return int(ours[name])
            except (KeyError, ValueError):
                return None

        return cls(
            reason=text("reason") or UNKNOWN_REASON,
            source_topic=text("source-topic"),
            source_partition=number("source-partition"),
            source_offset=number("source-offset"),
            tier=text("tier"),
            error_class=text("error-class"),
            error_message=text("error-message"),
            failed_at=text("failed-at"),
            failed_at_ms=number("failed-at-ms"),
            refusal_category=text("refusal-category"),
            original=[(k, v) for k, v in pairs if not k.startswith(H_PREFIX)],
        )
