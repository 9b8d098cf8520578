"""Request validation gives stable reason codes; outputs follow the JSON Schemas."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable

import orjson
import pytest

from escalator.contract.messages import (
    UNKNOWN_REASON,
    Attempt,
    DeadLetterInfo,
    Request,
    dead_letter_headers,
    escalation_value,
    parse_escalation,
    parse_request,
    result_value,
    text_json,
)
from escalator.errors import InvalidRequest
from tests.integration.harness import validator


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "empty_value"),
        (b"\xff\xfe", "invalid_utf8"),
        (b"{", "invalid_json"),
        (b"", "invalid_json"),
        (b"null", "wrong_type"),
        (b"42", "wrong_type"),
        (b'{"text": "t"}', "missing_field"),
        (b'{"id": "a"}', "missing_field"),
        (b'{"id": null, "text": "t"}', "missing_field"),
        (b'{"id": "a", "text": ""}', "empty_field"),
        (b'{"id": " ", "text": "t"}', "empty_field"),
        (b'{"id": ["a"], "text": "t"}', "wrong_type"),
        (b'{"id": "a", "text": 5}', "wrong_type"),
        (b'{"id": "a", "text": "t", "metadata": [1]}', "wrong_type"),
        (orjson.dumps({"id": "a" * 257, "text": "t"}), "id_too_long"),
        (orjson.dumps({"id": "a", "text": "x" * 11}), "text_too_long"),
        (b'{"id": "a", "text": "t", "deadline_s": "1h"}', "invalid_deadline"),
        (b'{"id": "a", "text": "t", "deadline_s": true}', "invalid_deadline"),
        (b'{"id": "a", "text": "t", "deadline_s": 0}', "invalid_deadline"),
        (b'{"id": "a", "text": "t", "deadline_s": -5}', "invalid_deadline"),
        (b'{"id": "a", "text": "t", "deadline_s": 2592000.5}', "invalid_deadline"),
        (b'{"id": "a", "text": "t", "deadline_s": 1e306}', "invalid_deadline"),
        (b'{"id": "a", "text": "t", "deadline_s": 1e999}', "invalid_json"),
    ],
)
def test_invalid_requests(value: bytes | None, reason: str) -> None:
    """Every malformed request raises InvalidRequest with its reason code."""
    with pytest.raises(InvalidRequest) as info:
        parse_request(value, max_text_chars=10)
    assert info.value.reason == reason


def test_valid_request_keeps_metadata() -> None:
    """id, text and metadata pass through; 256-char ids and NUL bytes are allowed."""
    meta = {"gold_label": "safe", "nested": {"a": [1, 2.5, None]}}
    req = parse_request(orjson.dumps({"id": "i" * 256, "text": "a\x00b", "metadata": meta}), 10)
    assert req == Request("i" * 256, "a\x00b", meta)


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("", None),
        (', "deadline_s": null', None),
        (', "deadline_s": 90', 90.0),
        (', "deadline_s": 2592000', 2592000.0),
    ],
)
def test_a_deadline_is_optional_and_travels_with_the_escalation(
    field: str, expected: float | None
) -> None:
    """deadline_s (seconds) is read as a float, absent or null is None; an escalation carries
    it (and the key only when set), and both follow their schemas."""
    raw = b'{"id": "a", "text": "t"' + field.encode() + b"}"
    validator("request.v1.json").validate(orjson.loads(raw))
    req = parse_request(raw, 10)
    assert req.deadline_s == expected
    cheap = Attempt("cheap", "claude-haiku-5-5", "safe", 0.4, True, 10, 5, service_tier="batch")
    esc = escalation_value(req, "low_confidence", cheap)
    validator("escalation.v1.json").validate(orjson.loads(esc))
    assert ("deadline_s" in orjson.loads(esc)["request"]) == (expected is not None)
    parsed = parse_escalation(esc, 10)
    assert parsed.request == req and parsed.cheap.service_tier == "batch"


def test_outputs_validate_against_schemas() -> None:
    """Result, escalation and dead-letter headers match their published JSON Schemas."""
    req = Request("r1", "hello", {"k": "v"})
    cheap = Attempt("cheap", "claude-haiku-5-5", "safe", 0.4, True, 10, 5, 0, 1300, 1e-5, 12.5)
    strong = Attempt("strong", "claude-sonnet-5-5", "unsafe", 0.9, True, 10, 5, 1300, 0, 3e-3, 80)
    esc = escalation_value(req, "low_confidence", cheap)
    validator("escalation.v1.json").validate(orjson.loads(esc))
    parsed = parse_escalation(esc, 100)
    assert parsed.request == req and parsed.cheap == cheap
    res = orjson.loads(
        result_value(
            req,
            strong,
            [cheap, strong],
            escalated=True,
            escalation_reason="low_confidence",
            threshold_version="v1",
        )
    )
    validator("result.v1.json").validate(res)
    assert res["cost_usd"] == pytest.approx(1e-5 + 3e-3)
    headers = dead_letter_headers(
        [("traceparent", b"x"), ("x-escalator-reason", b"spoofed")],
        reason="invalid_json",
        error=ValueError("bad"),
        topic="t",
        partition=3,
        offset=9,
        tier="cheap",
    )
    as_dict = {k: v.decode() for k, v in headers}
    validator("dead-letter-headers.v1.json").validate(as_dict)
    assert as_dict["x-escalator-reason"] == "invalid_json"  # an upstream header cannot spoof it
    for reason in ("invalid_deadline", "id_too_long"):
        validator("dead-letter-headers.v1.json").validate({**as_dict, "x-escalator-reason": reason})
    assert ("traceparent", b"x") in headers


def test_dead_letter_info_reads_back_what_dead_letter_headers_wrote() -> None:
    """Every x-escalator-* header comes back typed; the request's own headers, in order."""
    original = [("traceparent", b"t"), ("x-escalator-reason", b"spoofed"), ("b3", b"1")]
    headers = dead_letter_headers(
        original,
        reason="model_refused",
        error=ValueError("refused, no refusal_label"),
        topic="escalator.escalations",
        partition=3,
        offset=9,
        tier="strong",
    )
    info = DeadLetterInfo.from_headers([*headers, ("x-escalator-refusal-category", b"cyber")])
    assert info.reason == "model_refused"
    assert (info.source_topic, info.source_partition, info.source_offset) == (
        "escalator.escalations",
        3,
        9,
    )
    assert info.tier == "strong" and info.refusal_category == "cyber"
    assert info.error_class == "ValueError" and info.error_message == "refused, no refusal_label"
    assert info.failed_at is not None and info.failed_at.endswith("Z")
    assert info.failed_at_ms is not None and info.failed_at_ms > 1_700_000_000_000
    assert info.original == [("traceparent", b"t"), ("b3", b"1")]


@pytest.mark.parametrize(
    "headers",
    [
        None,
        [],
        [("x-escalator-reason", b"")],
        [("x-escalator-reason", None), ("x-escalator-failed-at-ms", b"soon")],
        [("traceparent", None), ("x-escalator-source-offset", b"-")],
    ],
)
def test_dead_letter_info_of_a_record_that_is_not_one_of_ours(
    headers: list[tuple[str, bytes | None]] | None,
) -> None:
    """Missing, empty, null or unparsable headers read as unknown, never as an error."""
    info = DeadLetterInfo.from_headers(headers)
    assert info.reason == UNKNOWN_REASON
    assert info.source_topic is None and info.source_offset is None
    assert info.failed_at_ms is None and info.refusal_category is None
    assert info.original == [h for h in headers or () if not h[0].startswith("x-escalator-")]


def test_dead_letter_info_takes_the_last_of_a_repeated_header_and_survives_bad_utf8() -> None:
    """Kafka allows a header twice: the last one counts (as a dict of the headers would)."""
    info = DeadLetterInfo.from_headers(
        [("x-escalator-reason", b"invalid_json"), ("x-escalator-reason", b"text_too_\xff")]
    )
    assert info.reason == "text_too_\ufffd"


def test_a_header_without_a_value_travels_on_as_an_empty_one() -> None:
    """Kafka allows null header values; a producer that sends one must not break the tier."""
    from escalator.contract.messages import propagated_headers

    assert propagated_headers([("trace", None), ("x-escalator-reason", None)]) == [("trace", b"")]


def test_reserved_headers_are_recognised_in_any_case() -> None:
    """Header names are often compared case-insensitively downstream (HTTP bridges)."""
    from escalator.contract.messages import propagated_headers

    arrived = [("X-Escalator-Reason", b"fake"), ("X-ESCALATOR-TIER", b"x"), ("Trace", b"t")]
    assert propagated_headers(arrived) == [("Trace", b"t")]


def test_an_attempts_json_is_what_orjson_writes_for_it_whichever_came_last() -> None:
    from escalator.contract.messages import attempt_json

    a = Attempt("cheap", "m", "safe", 0.9, True, 10, 2)
    b = Attempt("strong", "n", "toxic", 0.8, True, 20, 3)
    for attempt in (a, b, a, a, b):
        assert orjson.dumps(attempt_json(attempt)) == orjson.dumps(attempt)


@pytest.mark.parametrize("tokens", [b"9223372036854775808", b"1e30", b"-1", b'"12x"'])
def test_an_escalation_whose_attempt_counts_no_writer_can_carry_is_invalid(tokens: bytes) -> None:
    """A foreign or corrupt escalation whose cheap attempt says 10**30 tokens would pass as
    read, then fail when its result or decision is written (orjson stops at 64 bits): the
    strong tier would stop on it. It is an invalid escalation, dead-lettered as such."""
    req = Request("r1", "hello", {})
    cheap = Attempt("cheap", "claude-haiku-5-5", "safe", 0.4, True, 10, 5, 0, 1300, 1e-5, 12.5)
    esc = escalation_value(req, "low_confidence", cheap)
    assert esc.count(b'"output_tokens":5,') == 1
    with pytest.raises(InvalidRequest) as err:
        parse_escalation(
            esc.replace(b'"output_tokens":5,', b'"output_tokens":' + tokens + b","), 100
        )
    assert err.value.reason == "invalid_escalation"
    # The largest count that can be written is kept, and written.
    largest = esc.replace(b'"output_tokens":5,', b'"output_tokens":9223372036854775807,')
    parsed = parse_escalation(largest, 100)
    assert parsed.cheap.output_tokens == 2**63 - 1
    result_value(
        req,
        parsed.cheap,
        [parsed.cheap],
        escalated=False,
        escalation_reason=None,
        threshold_version="v1",
    )


def held_size(make: Callable[[], bytes]) -> tuple[int, bytes]:
    """The bytes still allocated after ``make()`` (its value alive), and the value. Made once
    untraced first: what outlives the value is not counted (the attempt's JSON, cached for
    the next output; the UTF-8 form CPython keeps with a text that is not ASCII)."""
    make()
    tracemalloc.start()
    try:
        value = make()
        return tracemalloc.get_traced_memory()[0], value
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    "text",
    ["x" * 20_000, "\u00e9" * 20_000, "\x01" * 20_000, "<&>" * 6_000 + "\U0001f600"],
    ids=["ascii", "two-byte", "control", "escaped-and-emoji"],
)
def test_a_value_carrying_a_text_is_held_at_its_own_size(text: str) -> None:
    """orjson's bytes keep what it reserved for the worst escaping (259,617 bytes for this
    20,000-character ASCII text's escalation); an escalation waits for its acknowledgement
    or its transaction, so it is copied to its size (text_json). Fails on plain orjson.dumps
    (held: 259,617 to 1,038,369 bytes here)."""
    req = Request("r1", text, {})
    cheap = Attempt("cheap", "claude-haiku-5-5", "safe", 0.4, True, 10, 5)
    held, value = held_size(lambda: escalation_value(req, "low_confidence", cheap))
    assert held < len(value) + 1024, f"{held} bytes held for a value of {len(value)}"
    assert orjson.loads(value)["request"]["text"] == text
    assert text_json({"t": text}) == orjson.dumps({"t": text})


def test_a_result_is_held_at_its_own_size() -> None:
    """A result carries the request's metadata, bounded only by the record's size."""
    req = Request("r1", "t", {"notes": "x" * 15_000})
    cheap = Attempt("cheap", "claude-haiku-5-5", "safe", 0.9, True, 10, 5)
    held, value = held_size(
        lambda: result_value(
            req, cheap, [cheap], escalated=False, escalation_reason=None, threshold_version="v"
        )
    )
    assert held < len(value) + 1024, f"{held} bytes held for a value of {len(value)}"
