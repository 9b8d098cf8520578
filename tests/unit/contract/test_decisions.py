"""The decisions-log record (contract/decisions.py): what is written is read back equal, it
follows decision.v1.json, reading is lenient with old and partial records and loses nothing
on export, and the review console's recovery scan goes through it. The JSONL reader and
writer and the late decisions of a window: tests/unit/calibration/test_decisions_log.py."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
import pytest

from escalator.contract.decisions import Adjudication, Decision, NotADecision
from escalator.contract.messages import Attempt, Request
from escalator.contract.reviews import Verdict, human_decision
from escalator.review.ledger import review_id_of
from tests.integration.harness import validator
from tests.unit.review.fakes import make_item

CHEAP = Attempt(
    "cheap",
    "claude-haiku-5-5",
    "safe",
    0.83,
    True,
    120,
    9,
    0,
    1300,
    2.1e-5,
    412.5,
    stop_reason="end_turn",
    request_id="req_1",
)
STRONG = Attempt("strong", "claude-sonnet-5-5", "unsafe", 0.7, True, 130, 12, 0, 0, 4e-4, 900.0)
REQUEST = Request("r1", "some text", {"gold_label": "unsafe", "source": "x"})


def cheap_decision() -> Decision:
    return Decision.of_answer(
        REQUEST,
        CHEAP,
        outcome="accepted",
        threshold_version="env-1234abcd",
        threshold=0.8,
        shadow_rate=0.05,
    )


def strong_decision() -> Decision:
    return Decision.of_answer(
        REQUEST,
        STRONG,
        outcome="final",
        threshold_version="env-1234abcd",
        sample_rate=1.0,
        adjudication=(True, 0.1),
    )


def tier0_decision() -> Decision:
    local = Attempt("tier0", "t0-0123456789", "safe", 0.97, True, latency_ms=0.02)
    return Decision.of_answer(
        REQUEST,
        local,
        outcome="accepted",
        threshold_version="env-1234abcd",
        threshold=0.9,
        tier0_version="t0-0123456789",
    )


def human() -> Decision:
    item = make_item("r1", "some text", queue="adjudication", reason="sampled_disagree")
    return human_decision(item, Verdict("alice", None, "neither fits", 4.25), "adj/0/3")


@pytest.mark.parametrize("make", [cheap_decision, strong_decision, human, tier0_decision])
def test_what_is_written_is_read_back_equal_and_follows_the_schema(make: Any) -> None:
    """write -> read equals, for each kind of record the service writes; the bytes validate
    against decision.v1.json."""
    decision = make()
    raw = decision.value()
    validator("decision.v1.json").validate(orjson.loads(raw))
    assert Decision.from_json(raw) == decision
    assert Decision.from_json(Decision.from_json(raw).value()) == decision


def test_the_fields_calibration_needs_are_written() -> None:
    """The cheap record carries its threshold and shadow rate and the request's gold label;
    the strong one its draw; only the human one its review block and gold source."""
    c = orjson.loads(cheap_decision().value())
    assert (c["threshold"], c["shadow_rate"], c["gold_label"]) == (0.8, 0.05, "unsafe")
    assert "adjudication" not in c and "review" not in c and "gold_source" not in c
    s = strong_decision()
    assert s.adjudication == Adjudication(True, 0.1)
    assert orjson.loads(s.value())["adjudication"] == {"sampled": True, "rate": 0.1}
    h = human()
    assert h.tier == "human" and h.gold_label is None and h.gold_source == "human"
    assert h.review is not None and h.review.review_id == "adjudication:r1"
    assert h.review.cheap is not None and h.review.cheap.label == "safe"


def test_old_and_partial_records_read_with_defaults_and_unknown_keys_survive() -> None:
    """A record written before ``adjudication``, ``threshold`` or ``ts`` existed reads with
    them absent; a value of the wrong type reads as absent; a key this version does not know
    is kept and written back."""
    old: dict[str, Any] = {
        "schema_version": 1,
        "id": "r9",
        "attempt": {
            "tier": "strong",
            "model": "m",
            "label": "safe",
            "confidence": 1,
            "valid": True,
        },
        "outcome": "shadow",
        "threshold_version": "v0",
        "shadow": True,
        "sample_rate": "0.25",
        "gold_label": 3,
        "ts_ms": 1_700_000_000_000,
        "future_field": {"x": 1},
    }
    d = Decision.from_dict(old)
    assert (d.threshold, d.adjudication, d.review, d.ts) == (None, None, None, "")
    assert d.sample_rate is None and d.gold_label is None
    assert d.attempt.confidence == 1.0 and d.ts_ms == 1_700_000_000_000
    written = orjson.loads(d.value())
    assert written["future_field"] == {"x": 1}
    assert Decision.from_json(d.value()) == d


def batch_decision() -> Decision:
    """A strong answer from the Message Batches API (billed at 50%)."""
    return Decision.of_answer(
        REQUEST,
        replace(STRONG, service_tier="batch"),
        outcome="shadow",
        threshold_version="env-1234abcd",
        shadow=True,
        sample_rate=0.2,
    )


def test_the_lane_is_written_and_read_back() -> None:
    """Every record says its lane: realtime by default, batch for a batch-billed answer;
    the attempt keeps its service tier; both validate against the schema."""
    assert orjson.loads(cheap_decision().value())["lane"] == "realtime"
    raw = batch_decision().value()
    validator("decision.v1.json").validate(orjson.loads(raw))
    back = Decision.from_json(raw)
    assert back.lane == "batch" and back.attempt.service_tier == "batch"
    assert Decision.from_json(back.value()) == back
    forced = Decision.of_answer(
        REQUEST, STRONG, outcome="final", threshold_version="v", lane="batch"
    )
    assert Decision.from_json(forced.value()).lane == "batch"


@pytest.mark.parametrize(
    ("lane", "tier", "expected"),
    [
        (None, None, "realtime"),
        (None, "standard", "realtime"),
        (None, "batch", "batch"),
        ("batch", None, "batch"),
        ("realtime", "batch", "realtime"),
        ("warp", "batch", "batch"),
        (7, None, "realtime"),
    ],
)
def test_a_record_without_a_known_lane_reads_as_its_billing_says(
    lane: Any, tier: str | None, expected: str
) -> None:
    """Older records (no ``lane``) and unknown values fall back to the attempt's
    ``service_tier``: batch-billed means the batch lane, anything else real time."""
    data = orjson.loads(cheap_decision().value())
    data["attempt"]["service_tier"] = tier
    if lane is None:
        del data["lane"]
    else:
        data["lane"] = lane
    assert Decision.from_dict(data).lane == expected


@pytest.mark.parametrize(
    "value",
    [b"not json", b"[1, 2]", b'{"attempt": {}}', b'{"id": "x"}', b'{"id": "x", "attempt": 3}'],
)
def test_what_is_not_a_decision_says_so(value: bytes) -> None:
    with pytest.raises(NotADecision):
        Decision.from_json(value)


def test_the_review_console_recognises_human_decisions_only() -> None:
    assert review_id_of(human().value()) == "adjudication:r1"
    assert review_id_of(strong_decision().value()) is None
    assert review_id_of(b"garbage") is None
    assert review_id_of(None) is None


@pytest.mark.parametrize("request_", [REQUEST, Request("r2", "t", {}, deadline_s=30.0)])
@pytest.mark.parametrize(
    "attempt",
    [
        CHEAP,
        STRONG,
        replace(CHEAP, service_tier="batch"),
        Attempt("tier0", "t0-0123456789", "safe", 0.97, True, latency_ms=0.02),
        Attempt("strong", "claude-sonnet-5-5", None, 0.0, False, error="measurement_lost:x"),
    ],
)
@pytest.mark.parametrize(
    "kwargs",
    [
        {"outcome": "accepted", "threshold": 0.8, "shadow_rate": 0.05},
        {"outcome": "accepted", "threshold": 0.8, "shadow_rate": 0.05, "shadow_lane": "batch"},
        {"outcome": "final", "sample_rate": 1.0, "adjudication": (True, 0.1)},
        {"outcome": "shadow", "shadow": True, "sample_rate": 0.05, "deadline_s": 600.0},
        {"outcome": "accepted", "threshold": 0.9, "tier0_version": "t0-01", "lane": "realtime"},
    ],
)
def test_answer_value_writes_the_bytes_of_of_answer(
    monkeypatch: pytest.MonkeyPatch, request_: Request, attempt: Attempt, kwargs: dict[str, Any]
) -> None:
    """The tiers write ``answer_value``; readers and ``export`` go through ``Decision``: the
    two must be the same record, byte for byte, whatever is given."""
    clock = iter([1_796_000_000.1234, 1_796_000_000.1234])
    monkeypatch.setattr("escalator.contract.decisions.time.time", lambda: next(clock))
    fast = Decision.answer_value(request_, attempt, threshold_version="env-1", **kwargs)
    slow = Decision.of_answer(request_, attempt, threshold_version="env-1", **kwargs).value()
    assert fast == slow
    assert Decision.from_json(fast).value() == slow  # and reads back the same
