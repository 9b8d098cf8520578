"""The hand-off (``lane/handoff.py``) on its own: which request the cheap tier hands to the
lane and the copy it writes (the absolute deadline, the origin, the request's headers less
reserved ones), a lane escalation handed off again only while its slack meets the rule, a
measurement's copy, and the headers the lane reads back. Through the cheap tier's handler:
``tiers/test_handlers.py``; through the lane's: ``tiers/test_lane.py``."""

from __future__ import annotations

from typing import Any

import orjson

from escalator.contract.messages import parse_request
from escalator.engine.worker import Output
from escalator.lane.deadlines import CompletionTimes, LaneRule
from escalator.lane.handoff import (
    DEADLINE_HEADER,
    ESCALATE_HEADER,
    LANE_HEADER,
    MEASURE_HEADER,
    ORIGIN_HEADER,
    HandOff,
    deadline_ms,
    escalated,
    flagged_realtime,
    measurement,
)
from tests.unit.tiers.test_handlers import FakeRecord

#: Written at 1,000,000 s (epoch); the lane needs 100 s of slack (the rule below, an expected
#: completion of 100 s).
STAMP_MS = 1_000_000_000
RULE = LaneRule(enabled=True, slack_factor=1.0, max_age_s=0.0, fallback_s=0.0)
ARRIVED = [("traceparent", b"00-abc-01"), ("x-escalator-reason", b"fake")]


def handoff(now_s: float) -> HandOff:
    return HandOff(RULE, CompletionTimes(100.0), "handoff", clock=lambda: now_s)


def record(deadline_s: float | None = None, headers: Any = ARRIVED) -> FakeRecord:
    body: dict[str, Any] = {"id": "r1", "text": "some text"}
    if deadline_s is not None:
        body["deadline_s"] = deadline_s
    return FakeRecord(orjson.dumps(body), offset=9, key=b"k", headers=headers, timestamp=STAMP_MS)


def takes(h: HandOff, r: FakeRecord) -> list[Output] | None:
    return h.takes(r, parse_request(r.value, 1000))


def test_a_request_with_slack_is_copied_with_its_absolute_deadline_and_origin() -> None:
    r = record(deadline_s=1000.0)
    [out] = takes(handoff(STAMP_MS / 1000 + 10), r) or []
    assert (out.topic, out.value, out.key) == ("handoff", r.value, b"k")
    assert out.headers == [
        ("traceparent", b"00-abc-01"),
        (DEADLINE_HEADER, str(STAMP_MS + 1_000_000).encode()),
        (ORIGIN_HEADER, b"requests/0/9"),
    ], "the request's headers less reserved ones, then where the copy came from"
    assert deadline_ms(FakeRecord(out.value, headers=out.headers)) == STAMP_MS + 1_000_000


def test_a_request_without_the_slack_a_deadline_or_flagged_realtime_is_not_taken() -> None:
    h = handoff(STAMP_MS / 1000 + 10)
    assert takes(h, record(deadline_s=105.0)) is None, "95 s left, 100 s needed"
    assert takes(h, record(deadline_s=115.0)) is not None
    assert takes(h, record()) is None, "no deadline: real time"
    sent_back = record(deadline_s=1000.0, headers=[(LANE_HEADER, b"realtime")])
    assert flagged_realtime(sent_back)
    assert takes(h, sent_back) is None, "what the lane sent back is never handed off again"
    waited = handoff(STAMP_MS / 1000 + 901)
    assert takes(waited, record(deadline_s=1000.0)) is None, "the wait counts against it"


def test_an_escalation_is_handed_off_again_only_while_its_deadline_leaves_the_slack() -> None:
    deadline = STAMP_MS + 500_000
    lane_record = FakeRecord(
        b"{}", topic="handoff", offset=3, headers=[(DEADLINE_HEADER, str(deadline).encode())]
    )
    escalation = Output("escalations", b"escalation", b"k", [])
    out = handoff(STAMP_MS / 1000 + 399).escalation(lane_record, escalation)
    assert out is not None
    assert (out.topic, out.value, out.key) == ("handoff", b"escalation", b"k")
    assert escalated(FakeRecord(out.value, headers=out.headers))
    assert dict(out.headers)[DEADLINE_HEADER] == str(deadline).encode(), "the same deadline"
    assert dict(out.headers)[ORIGIN_HEADER] == b"handoff/0/3"
    assert handoff(STAMP_MS / 1000 + 401).escalation(lane_record, escalation) is None
    no_deadline = FakeRecord(b"{}", topic="handoff")
    assert handoff(0.0).escalation(no_deadline, escalation) is None


def test_a_measurement_is_flagged_as_one_and_carries_no_deadline() -> None:
    r = record(deadline_s=1000.0)
    out = handoff(0.0).measurement(r, b"shadow escalation")
    assert (out.topic, out.value, out.key) == ("handoff", b"shadow escalation", b"k")
    back = FakeRecord(out.value, headers=out.headers)
    assert measurement(back) and not escalated(back) and not flagged_realtime(back)
    assert deadline_ms(back) is None
    assert dict(out.headers)[MEASURE_HEADER] == b"shadow"
    assert "x-escalator-reason" not in dict(out.headers)


def test_a_deadline_header_that_is_empty_or_not_a_number_is_no_deadline() -> None:
    assert deadline_ms(FakeRecord(b"", headers=[(DEADLINE_HEADER, b"123")])) == 123
    assert deadline_ms(FakeRecord(b"", headers=[(DEADLINE_HEADER, b"")])) is None
    assert deadline_ms(FakeRecord(b"", headers=[(DEADLINE_HEADER, b"soon")])) is None
    assert deadline_ms(FakeRecord(b"", headers=None)) is None
    assert not escalated(FakeRecord(b"", headers=[(ESCALATE_HEADER, b"weak")]))
