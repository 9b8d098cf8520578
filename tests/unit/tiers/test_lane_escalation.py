"""Escalation through the batch lane (issue 24): an unsure cheap batch answer whose request
still has the slack the lane rule asks for is handed off again (an output of the record being
answered) for a strong-model batch, with the same deadline; the lane answers it through the
strong tier's own code at the batch price. Too little slack: the escalations topic, in real
time. Strong items the batch cannot answer in time are answered in real time."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition

from escalator.contract.decisions import Decision
from escalator.contract.messages import escalation_value, parse_request
from escalator.lane.batches import ItemResult
from escalator.lane.deadlines import CompletionTimes, LaneRule
from escalator.lane.handoff import DEADLINE_HEADER, ESCALATE_HEADER, STRONG, HandOff
from escalator.lane.runner import BatchRunner
from escalator.tiers.handlers import CheapHandler, ReviewPolicy, StrongHandler, TierTopics
from escalator.tiers.lane import LaneHandler
from tests.unit.lane.fakes import FakeBatches, FakeState
from tests.unit.lane.test_runner import Clock
from tests.unit.tiers.test_handlers import FakeModel, FakeRecord, handler, ok, on
from tests.unit.tiers.test_lane import Adapter, batch_answer
from tests.unit.tiers.test_lane_measurement import StrongAdapter, strong_answer

#: The rule's slack for a strong batch: 2 x (60 s assembly + 60 s expected) + 300 s = 540 s.
REQUIRED_S = 540


def lane_of(
    clock: Clock, runner: BatchRunner, cheap_model: FakeModel, strong_model: FakeModel, **kw: Any
) -> LaneHandler:
    rule = LaneRule(enabled=True, slack_factor=2.0, fallback_s=300, max_age_s=60)
    handoff = HandOff(rule, CompletionTimes(60.0), "handoff", clock=clock)
    cheap = handler(CheapHandler, cheap_model, handoff=handoff, lane=rule)
    strong = handler(StrongHandler, strong_model, record_lost=True, lane=rule, **kw)
    return LaneHandler(
        cheap, runner, Adapter(), fallback_s=300, strong=strong,
        strong_model=StrongAdapter(), clock=clock,
    )  # fmt: skip


async def answered(
    lane: LaneHandler, api: FakeBatches, record: FakeRecord, clock: Clock
) -> list[Any]:
    """``record``'s outputs once its one-item batch (cut at one request) ends."""
    work = lane.handle(record)
    assert not isinstance(work, list)
    task = asyncio.create_task(work)
    for _ in range(500):
        if api.created:
            break
        await asyncio.sleep(0.01)
    api.finish(f"b{len(api.created)}")
    outputs = await asyncio.wait_for(task, 5)
    lane.delivered(TopicPartition("handoff", 0), record.offset)
    return outputs


def counted(h: LaneHandler, name: str, **labels: str) -> float:
    sample = h.cheap.metrics.registry.get_sample_value(name, labels)
    return sample or 0.0


def cheap_record(deadline_ms: int, offset: int = 7) -> FakeRecord:
    value = orjson.dumps({"id": "r1", "text": "some text"})
    headers = [(DEADLINE_HEADER, str(deadline_ms).encode())]
    return FakeRecord(value, topic="handoff", offset=offset, headers=headers)


@pytest.mark.parametrize(
    ("left_s", "lane"), [(REQUIRED_S + 1, "batch"), (REQUIRED_S - 1, "realtime")]
)
async def test_an_unsure_batch_answer_escalates_by_the_lane_rule(left_s: int, lane: str) -> None:
    """Slack at least the rule's: the escalation goes to the hand-off topic flagged for a
    strong batch, with the same deadline (none to escalations); a second less: the
    escalations topic as before. Either way an output of the record, no model called."""
    clock = Clock()
    cheap_model, strong_model = FakeModel(lambda n: ok()), FakeModel(lambda n: ok())
    api = FakeBatches(lambda cid, p: ItemResult(cid, "succeeded", message=batch_answer(0.4)))
    deadline = int((clock.now + left_s) * 1000)
    async with BatchRunner(
        api, FakeState(), max_age_s=60, poll_s=0.01, clock=clock, max_requests=1
    ) as r:
        h = lane_of(clock, r, cheap_model, strong_model)
        outputs = await answered(h, api, cheap_record(deadline), clock)
    assert cheap_model.calls == 0 and strong_model.calls == 0 and not on(outputs, "results")
    handed, escalated = on(outputs, "handoff"), on(outputs, "escalations")
    assert len(handed + escalated) == 1 and len(handed) == (lane == "batch")
    [decision] = [Decision.from_json(o.value) for o in on(outputs, "decisions")]
    assert decision.outcome == "escalated" and decision.lane == "batch"
    body = orjson.loads((handed + escalated)[0].value)
    assert body["reason"] == "low_confidence" and body["cheap"]["service_tier"] == "batch"
    if handed:
        headers = dict(handed[0].headers)
        assert headers[ESCALATE_HEADER] == STRONG
        assert headers[DEADLINE_HEADER] == str(deadline).encode()
    assert counted(h, "escalator_lane_escalations_total", lane=lane) == 1


def escalation_record(deadline_ms: int, offset: int = 9) -> FakeRecord:
    request = parse_request(orjson.dumps({"id": "r1", "text": "some text"}), 1000)
    value = escalation_value(request, "low_confidence", batch_answer(0.4))
    headers = [(DEADLINE_HEADER, str(deadline_ms).encode()), (ESCALATE_HEADER, STRONG)]
    return FakeRecord(value, topic="handoff", offset=offset, headers=headers)


async def strong_batch(
    result: ItemResult | None, **kw: Any
) -> tuple[list[Any], FakeModel, FakeBatches, LaneHandler]:
    clock = Clock()
    cheap_model = FakeModel(lambda n: ok())
    strong_model = FakeModel(lambda n: ok(label="unsafe", tier="strong"))

    def answer(cid: str, params: dict[str, Any]) -> ItemResult:
        assert params["model"] == "fake-strong"
        return result or ItemResult(cid, "succeeded", message=strong_answer())

    api = FakeBatches(answer)
    async with BatchRunner(
        api, FakeState(), max_age_s=60, poll_s=0.01, clock=clock, max_requests=1
    ) as r:
        h = lane_of(clock, r, cheap_model, strong_model, **kw)
        record = escalation_record(int((clock.now + 3600) * 1000))
        outputs = await answered(h, api, record, clock)
    assert cheap_model.calls == 0
    return outputs, strong_model, api, h


async def test_a_strong_batch_answer_is_the_final_result_at_the_batch_price() -> None:
    """One strong batch item, no real-time call: the result with the strong tier's contract
    (escalated, both attempts), its final decision lane batch with the adjudication draw."""
    outputs, strong_model, api, _ = await strong_batch(None)
    assert strong_model.calls == 0 and len(api.created) == 1
    [result] = [orjson.loads(o.value) for o in on(outputs, "results")]
    assert result["label"] == "unsafe" and result["escalated"] is True
    assert result["escalation_reason"] == "low_confidence"
    assert [a["tier"] for a in result["attempts"]] == ["cheap", "strong"]
    assert [a["service_tier"] for a in result["attempts"]] == ["batch", "batch"]
    [decision] = [Decision.from_json(o.value) for o in on(outputs, "decisions")]
    assert decision.outcome == "final" and decision.lane == "batch" and not decision.shadow
    assert (
        decision.attempt.service_tier == "batch"
        and decision.adjudication is not None
        and decision.adjudication.rate == 0.0
    )
    assert not on(outputs, "handoff") and not on(outputs, "escalations")


@pytest.mark.parametrize("kind", ["errored", "expired", "canceled"])
async def test_a_strong_item_the_batch_did_not_answer_is_answered_in_real_time(kind: str) -> None:
    """One real-time strong call: the result and a final decision lane realtime, a fallback
    counted by its result."""
    outputs, strong_model, _, h = await strong_batch(ItemResult("p0o9", kind))  # type: ignore[arg-type]
    assert strong_model.calls == 1 and len(on(outputs, "results")) == 1
    [decision] = [Decision.from_json(o.value) for o in on(outputs, "decisions")]
    assert decision.outcome == "final" and decision.lane == "realtime"
    assert counted(h, "escalator_lane_fallbacks_total", result=kind) == 1


async def test_an_invalid_strong_batch_answer_is_recorded_and_asked_again() -> None:
    item = ItemResult("p0o9", "succeeded", message=strong_answer(valid=False))
    outputs, strong_model, _, _ = await strong_batch(item)
    assert strong_model.calls == 1 and len(on(outputs, "results")) == 1
    outcomes = [Decision.from_json(o.value).outcome for o in on(outputs, "decisions")]
    assert outcomes == ["invalid", "final"]


async def test_with_the_human_tier_a_strong_batch_answer_goes_to_review_as_in_real_time() -> None:
    """A review label: no result, a review item and a decision outcome review, lane batch;
    and the adjudication draw is made as the strong tier makes it (rate 1: sampled)."""
    review = ReviewPolicy(human_tier=True, review_labels=("unsafe",), adjudicate_disagree=1.0)
    topics = TierTopics("results", "escalations", "dead", "decisions", "reviews", "adjudications")
    outputs, strong_model, _, _ = await strong_batch(None, review=review, topics=topics)
    assert strong_model.calls == 0 and not on(outputs, "results")
    assert len(on(outputs, "reviews")) == 1 and len(on(outputs, "adjudications")) == 1
    [decision] = [Decision.from_json(o.value) for o in on(outputs, "decisions")]
    assert decision.outcome == "review" and decision.lane == "batch"
    assert decision.adjudication is not None and decision.adjudication.sampled
    assert decision.adjudication.rate == 1.0


async def test_a_strong_batch_that_would_end_too_late_is_answered_in_real_time_in_time() -> None:
    """The deadline less the margin comes first: one real-time strong call then, the batch
    item withdrawn and its result (if any) ignored."""
    clock = Clock()
    strong_model = FakeModel(lambda n: ok(label="unsafe", tier="strong"))
    api = FakeBatches(lambda cid, p: ItemResult(cid, "succeeded", message=strong_answer()))
    async with BatchRunner(
        api, FakeState(), max_age_s=60, poll_s=0.01, clock=clock, max_requests=1
    ) as r:
        h = lane_of(clock, r, FakeModel(lambda n: ok()), strong_model)
        work = h.handle(escalation_record(int((clock.now + 300.2) * 1000)))
        assert not isinstance(work, list)
        task = asyncio.create_task(work)
        await asyncio.sleep(0.1)
        assert not task.done() and strong_model.calls == 0
        outputs = await asyncio.wait_for(task, 1)
        assert strong_model.calls == 1 and len(on(outputs, "results")) == 1
        assert counted(h, "escalator_lane_fallbacks_total", result="deadline") == 1
        if api.created:
            api.finish("b1")
            await asyncio.sleep(0.05)
        assert strong_model.calls == 1
