"""The batch lane's handler (tiers/lane.py) against a fake model and fake Batches API.

- A succeeded item is routed as a real-time answer is (results or escalations, a decision that
  says lane batch), with no real-time call; any other result is answered in real time.
- Escalation through the batch lane (issue 24): an unsure cheap batch answer whose request
  still has the slack the lane rule asks for is handed off again (an output of the record
  being answered) for a strong-model batch, with the same deadline; the lane answers it
  through the strong tier's own code at the batch price. Too little slack: the escalations
  topic, in real time. Strong items the batch cannot answer in time are answered in real time.
- Measurement through the batch lane (ESCALATOR_MEASURE_LANE): a shadow the cheap tier draws
  (its hand-off: test_handlers.py) is answered by the strong model in a batch, and recorded as
  the real-time path records it, at the batch price; no result is published for it and no
  real-time call made. Items the batch cannot answer are asked in real time; one lost there
  too is recorded as lost.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition

from escalator.contract.decisions import Decision
from escalator.contract.messages import Attempt, escalation_value, parse_request
from escalator.lane.batches import ItemResult
from escalator.lane.deadlines import CompletionTimes, LaneRule
from escalator.lane.handoff import DEADLINE_HEADER, ESCALATE_HEADER, MEASURE_HEADER, STRONG, HandOff
from escalator.lane.runner import BatchRunner
from escalator.tiers.handlers import CheapHandler, ReviewPolicy, StrongHandler, TierTopics
from escalator.tiers.lane import LaneHandler
from tests.unit.lane.fakes import FakeBatches, FakeState
from tests.unit.lane.test_runner import Clock
from tests.unit.tiers.test_handlers import (
    FakeModel,
    FakeRecord,
    caller,
    handler,
    not_json,
    ok,
    on,
)


class Adapter:
    """The BatchModel: a request body, and a 'message' that is already an Attempt."""

    model = "fake-model"

    def request(self, text: str) -> dict[str, Any]:
        return {
            "model": self.model,
            "max_tokens": 5,
            "messages": [{"role": "user", "content": text}],
        }

    def attempt(self, message: Any) -> Attempt:
        assert isinstance(message, Attempt)
        return message


def batch_answer(confidence: float) -> Attempt:
    return replace(ok(confidence=confidence), service_tier="batch")


async def run(result: ItemResult | None, *, confidence: float = 0.95) -> tuple[list[Any], Any]:
    model = FakeModel(lambda n: ok())
    cheap = handler(CheapHandler, model)

    def answer(cid: str, params: dict[str, Any]) -> ItemResult:
        assert params["messages"][0]["content"] == "some text"
        return result or ItemResult(cid, "succeeded", message=batch_answer(confidence))

    api = FakeBatches(answer)
    async with BatchRunner(api, FakeState(), max_age_s=60, poll_s=0.01, max_requests=1) as r:
        lane = LaneHandler(cheap, r, Adapter(), fallback_s=300)
        record = FakeRecord(orjson.dumps({"id": "r1", "text": "some text"}), topic="handoff")
        work = lane.handle(record)
        assert not isinstance(work, list)
        task = asyncio.create_task(work)
        for _ in range(500):  # the runner's loop submits the batch (cut at one request)
            if api.created:
                break
            await asyncio.sleep(0.01)
        api.finish("b1")
        outputs = await asyncio.wait_for(task, 5)
        lane.delivered(TopicPartition("handoff", 0), 7)
    return outputs, model


@pytest.mark.parametrize(("confidence", "topic"), [(0.95, "results"), (0.4, "escalations")])
async def test_a_batch_answer_is_routed_as_a_real_time_one(confidence: float, topic: str) -> None:
    """Confident: a result; unsure: an escalation; with a decision that says lane batch, and
    no real-time call."""
    outputs, model = await run(None, confidence=confidence)
    assert model.calls == 0
    assert len(on(outputs, topic)) == 1
    [decision] = [orjson.loads(o.value) for o in on(outputs, "decisions")]
    assert decision["lane"] == "batch"


@pytest.mark.parametrize("kind", ["errored", "expired", "canceled"])
async def test_an_item_without_an_answer_is_answered_in_real_time(kind: str) -> None:
    """errored (the real-time failure policy applies), expired and canceled items: one
    real-time call, and the request's result from it, lane realtime."""
    outputs, model = await run(ItemResult("p0o7", kind))  # type: ignore[arg-type]
    assert model.calls == 1
    assert len(on(outputs, "results")) == 1
    [decision] = [orjson.loads(o.value) for o in on(outputs, "decisions")]
    assert decision["lane"] == "realtime"


def fallbacks(cheap: CheapHandler, result: str) -> float:
    sample = cheap.metrics.registry.get_sample_value(
        "escalator_lane_fallbacks_total", {"result": result}
    )
    return sample or 0.0


def with_deadline(deadline_ms: int, offset: int = 7) -> FakeRecord:
    value = orjson.dumps({"id": f"r{offset}", "text": "some text"})
    headers = [(DEADLINE_HEADER, str(deadline_ms).encode())]
    return FakeRecord(value, topic="handoff", offset=offset, headers=headers)


@pytest.mark.parametrize("max_requests", [1, 10])
async def test_a_batch_that_would_end_too_late_is_answered_in_real_time_in_time(
    max_requests: int,
) -> None:
    """The deadline less the fallback margin comes before the batch's result: the request is
    answered in real time then (one call, lane realtime, a fallback labelled deadline), not
    later; a submitted item's result is then ignored (max_requests 1), and one still being
    assembled leaves its batch, never submitted (10)."""
    clock = Clock()
    model = FakeModel(lambda n: ok())
    cheap = handler(CheapHandler, model)
    api = FakeBatches(lambda cid, p: ItemResult(cid, "succeeded", message=batch_answer(0.95)))
    # 0.2 s of real time is left before the deadline less its 300 s margin.
    deadline = int((clock.now + 300.2) * 1000)
    async with BatchRunner(
        api, FakeState(), max_age_s=60, poll_s=0.01, clock=clock, max_requests=max_requests
    ) as r:
        lane = LaneHandler(cheap, r, Adapter(), fallback_s=300, clock=clock)
        work = lane.handle(with_deadline(deadline))
        assert not isinstance(work, list)
        task = asyncio.create_task(work)
        await asyncio.sleep(0.1)
        assert not task.done() and model.calls == 0
        outputs = await asyncio.wait_for(task, 1)
        assert model.calls == 1 and fallbacks(cheap, "deadline") == 1
        [decision] = [orjson.loads(o.value) for o in on(outputs, "decisions")]
        assert decision["lane"] == "realtime" and len(on(outputs, "results")) == 1
        assert r.waiting() == 0
        clock.now += 60
        await asyncio.sleep(0.05)
        assert len(api.created) == (1 if max_requests == 1 else 0)
        if api.created:
            api.finish("b1")
            await asyncio.sleep(0.05)
            assert model.calls == 1


def misses(cheap: CheapHandler) -> float:
    sample = cheap.metrics.registry.get_sample_value("escalator_lane_deadline_misses_total")
    return sample or 0.0


@pytest.mark.parametrize(("left_s", "missed"), [(299, 0), (-1, 1)])
async def test_a_request_already_inside_its_margin_never_joins_a_batch(
    left_s: int, missed: int
) -> None:
    """Handed off late (its deadline less the margin already past): answered in real time at
    once, no batch created; a deadline miss counted only when the deadline itself had passed
    (the lane worker was that far behind)."""
    clock = Clock()
    model = FakeModel(lambda n: ok())
    cheap = handler(CheapHandler, model)
    api = FakeBatches(lambda cid, p: ItemResult(cid, "succeeded", message=batch_answer(0.95)))
    async with BatchRunner(api, FakeState(), max_age_s=0, poll_s=0.01, clock=clock) as r:
        lane = LaneHandler(cheap, r, Adapter(), fallback_s=300, clock=clock)
        work = lane.handle(with_deadline(int((clock.now + left_s) * 1000)))
        assert not isinstance(work, list)
        outputs = await asyncio.wait_for(work, 1)
        assert model.calls == 1 and fallbacks(cheap, "deadline") == 1
        assert len(on(outputs, "results")) == 1 and misses(cheap) == missed
        await asyncio.sleep(0.05)
        assert api.created == [] and r.waiting() == 0


async def test_a_batch_answer_after_the_deadline_is_counted_as_a_miss() -> None:
    """A batch answer that comes after the deadline (the clock jumped past it while the
    batch ran: a worker that could not fall back in time) is delivered, and counted."""
    clock = Clock()
    model = FakeModel(lambda n: ok())
    cheap = handler(CheapHandler, model)
    api = FakeBatches(lambda cid, p: ItemResult(cid, "succeeded", message=batch_answer(0.95)))
    async with BatchRunner(
        api, FakeState(), max_age_s=0, poll_s=0.01, clock=clock, max_requests=1
    ) as r:
        lane = LaneHandler(cheap, r, Adapter(), fallback_s=300, clock=clock)
        work = lane.handle(with_deadline(int((clock.now + 3600) * 1000)))
        assert not isinstance(work, list)
        task = asyncio.create_task(work)
        for _ in range(500):
            if api.created:
                break
            await asyncio.sleep(0.01)
        clock.now += 7200
        api.finish("b1")
        outputs = await asyncio.wait_for(task, 5)
    [decision] = [orjson.loads(o.value) for o in on(outputs, "decisions")]
    assert decision["lane"] == "batch" and model.calls == 0 and misses(cheap) == 1


async def test_a_request_held_back_by_the_queue_limit_past_its_deadline_goes_real_time() -> None:
    """The processing queue is full (limit 1, a batch in flight); a request whose deadline,
    30 s after its margin, is too close for a batch sent now (the lane expects an hour) is
    answered in real time at once, by the deadline fallback (counted so), not 30 s later and
    not in a batch."""
    clock = Clock()
    model = FakeModel(lambda n: ok())
    cheap = handler(CheapHandler, model)
    api = FakeBatches(lambda cid, p: ItemResult(cid, "succeeded", message=batch_answer(0.95)))
    async with BatchRunner(
        api, FakeState(), max_age_s=0, poll_s=0.01, clock=clock, max_requests=1, queue_limit=1,
        fallback_s=300,
    ) as r:  # fmt: skip
        lane = LaneHandler(cheap, r, Adapter(), fallback_s=300, clock=clock)
        first = lane.handle(with_deadline(int((clock.now + 86400) * 1000), offset=1))
        assert not isinstance(first, list)
        waiting = asyncio.create_task(first)
        for _ in range(500):
            if api.created:
                break
            await asyncio.sleep(0.01)
        work = lane.handle(with_deadline(int((clock.now + 330) * 1000), offset=2))
        assert not isinstance(work, list)
        outputs = await asyncio.wait_for(work, 1)
        assert model.calls == 1 and fallbacks(cheap, "deadline") == 1
        [decision] = [orjson.loads(o.value) for o in on(outputs, "decisions")]
        assert decision["lane"] == "realtime" and len(api.created) == 1
        waiting.cancel()


# -- escalation through the batch lane -------------------------------------------------------------
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


# -- measurement through the batch lane ------------------------------------------------------------
RATE = 0.25


class StrongAdapter(Adapter):
    model = "fake-strong"


def shadow_record(offset: int = 3) -> FakeRecord:
    request = parse_request(orjson.dumps({"id": "r1", "text": "some text"}), 1000)
    value = escalation_value(request, "shadow", ok(), shadow=True, sample_rate=RATE)
    return FakeRecord(value, topic="handoff", offset=offset, headers=[(MEASURE_HEADER, b"shadow")])


def strong_answer(label: str = "unsafe", valid: bool = True) -> Attempt:
    answer = replace(ok(label=label, tier="strong"), model="fake-strong", service_tier="batch")
    return replace(answer, valid=valid) if valid else replace(answer, valid=False, label=None)


async def measure(
    result: ItemResult | None, strong_model: FakeModel, strong_caller: Any = None
) -> tuple[list[Any], FakeBatches, LaneHandler]:
    cheap_model = FakeModel(lambda n: ok())
    cheap = handler(CheapHandler, cheap_model)
    options = {"caller": strong_caller} if strong_caller is not None else {}
    strong = handler(StrongHandler, strong_model, record_lost=True, **options)

    def answer(cid: str, params: dict[str, Any]) -> ItemResult:
        assert params["model"] == "fake-strong"
        return result or ItemResult(cid, "succeeded", message=strong_answer())

    api = FakeBatches(answer)
    async with BatchRunner(api, FakeState(), max_age_s=60, poll_s=0.01, max_requests=1) as r:
        lane = LaneHandler(
            cheap, r, Adapter(), fallback_s=300, strong=strong, strong_model=StrongAdapter()
        )
        work = lane.handle(shadow_record())
        assert not isinstance(work, list)
        task = asyncio.create_task(work)
        for _ in range(500):
            if api.created:
                break
            await asyncio.sleep(0.01)
        api.finish("b1")
        outputs = await asyncio.wait_for(task, 5)
        lane.delivered(TopicPartition("handoff", 0), 3)
    assert cheap_model.calls == 0
    return outputs, api, lane


def measured(lane: LaneHandler, result: str) -> float:
    sample = lane.cheap.metrics.registry.get_sample_value(
        "escalator_lane_measurements_total", {"result": result}
    )
    return sample or 0.0


async def test_a_batch_answer_is_recorded_as_the_shadow_decision_at_the_batch_price() -> None:
    """One strong batch item, no real-time call: exactly one decision, outcome shadow, with
    the sample rate the cheap tier drew at and lane batch; nothing on results."""
    strong_model = FakeModel(lambda n: ok(tier="strong"))
    outputs, api, lane = await measure(None, strong_model)
    assert strong_model.calls == 0 and len(api.created) == 1
    assert [o.topic for o in outputs] == ["decisions"]
    [decision] = [Decision.from_json(o.value) for o in outputs]
    assert decision.outcome == "shadow" and decision.shadow
    assert decision.sample_rate == RATE and decision.lane == "batch"
    assert decision.attempt.service_tier == "batch" and decision.attempt.label == "unsafe"
    assert measured(lane, "succeeded") == 1


@pytest.mark.parametrize("kind", ["errored", "expired", "canceled"])
async def test_an_item_the_batch_did_not_answer_is_measured_in_real_time(kind: str) -> None:
    """errored, expired, canceled: one real-time strong call, its shadow decision lane
    realtime (the only full-price measurement), counted by result."""
    strong_model = FakeModel(lambda n: ok(tier="strong"))
    outputs, _, lane = await measure(ItemResult("p0o3", kind), strong_model)  # type: ignore[arg-type]
    assert strong_model.calls == 1
    [decision] = [Decision.from_json(o.value) for o in on(outputs, "decisions")]
    assert decision.outcome == "shadow" and decision.lane == "realtime"
    assert decision.sample_rate == RATE and not on(outputs, "results")
    assert measured(lane, kind) == 1


async def test_an_invalid_batch_answer_is_recorded_and_asked_again() -> None:
    """As the real-time caller does: the invalid answer's decision, then a real-time one."""
    strong_model = FakeModel(lambda n: ok(tier="strong"))
    item = ItemResult("p0o3", "succeeded", message=strong_answer(valid=False))
    outputs, _, lane = await measure(item, strong_model)
    assert strong_model.calls == 1
    outcomes = [Decision.from_json(o.value).outcome for o in on(outputs, "decisions")]
    assert outcomes == ["invalid", "shadow"]
    assert measured(lane, "invalid") == 1


async def test_a_measurement_lost_for_good_is_recorded_so() -> None:
    """The batch errored and the real-time answers keep failing validation: no dead letter
    (the request has its result), the invalid answers' decisions, then one that says the
    measurement is lost, which calibration counts as a disagreement."""
    strong_model = FakeModel(lambda n: not_json())
    outputs, _, _ = await measure(
        ItemResult("p0o3", "errored"), strong_model, caller(strong_model, invalid=2)
    )
    assert strong_model.calls == 2
    assert not on(outputs, "dead") and not on(outputs, "results")
    decisions = [Decision.from_json(o.value) for o in on(outputs, "decisions")]
    assert [d.outcome for d in decisions] == ["invalid", "invalid", "shadow"]
    lost = decisions[-1]
    assert lost.shadow and lost.sample_rate == RATE and lost.lane == "realtime"
    assert not lost.attempt.valid and lost.attempt.label is None
    assert lost.attempt.error == "measurement_lost:model_output_invalid"
    assert lost.attempt.cost_usd == 0
