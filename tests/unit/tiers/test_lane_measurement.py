"""Measurement through the batch lane (ESCALATOR_MEASURE_LANE): a shadow the cheap tier
draws is handed off (an output of its request, so committed only once durable), answered by
the strong model in a batch, and recorded as the real-time path records it, at the batch
price; no result is published for it and no real-time call made. Items the batch cannot
answer are asked in real time; one lost there too is recorded as lost."""

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
from escalator.lane.handoff import MEASURE_HEADER, HandOff
from escalator.lane.runner import BatchRunner
from escalator.tiers.handlers import CheapHandler, StrongHandler
from escalator.tiers.lane import LaneHandler
from tests.unit.lane.fakes import FakeBatches, FakeState
from tests.unit.tiers.test_handlers import (
    FakeModel,
    FakeRecord,
    caller,
    handled,
    handler,
    not_json,
    ok,
    on,
)
from tests.unit.tiers.test_lane import Adapter

RATE = 0.25


class StrongAdapter(Adapter):
    model = "fake-strong"


def handoff(*, measures: bool) -> HandOff:
    """The lane on (no default deadline: requests stay real-time), shadows by ``measures``."""
    return HandOff(LaneRule(enabled=True), CompletionTimes(60.0), "handoff", measures=measures)


def cheap_decisions(outputs: list[Any]) -> list[Decision]:
    return [Decision.from_json(o.value) for o in on(outputs, "decisions")]


@pytest.mark.parametrize(("measures", "lane"), [(True, "batch"), (False, "realtime")])
async def test_a_drawn_shadow_is_handed_off_with_the_request_and_its_decision_says_so(
    measures: bool, lane: str
) -> None:
    """With measurement through batches, the shadow escalation goes to the hand-off topic
    flagged as a measurement (none to escalations), an output of the request's record; the
    cheap decision records the lane its measurement took. Realtime: escalations, as before."""
    h = handler(
        CheapHandler, FakeModel(lambda n: ok()), shadow_rate=1.0, handoff=handoff(measures=measures)
    )
    outputs = await handled(h, FakeRecord(orjson.dumps({"id": "r1", "text": "some text"})))
    assert len(on(outputs, "results")) == 1
    [decision] = cheap_decisions(outputs)
    assert decision.outcome == "accepted" and decision.shadow_lane == lane
    moved = on(outputs, "handoff" if measures else "escalations")
    assert len(moved) == 1 and len(on(outputs, "escalations" if measures else "handoff")) == 0
    body = orjson.loads(moved[0].value)
    assert body["shadow"] is True and body["sample_rate"] == 1.0
    flagged = (MEASURE_HEADER, b"shadow") in list(moved[0].headers)
    assert flagged is measures


async def test_an_undrawn_decision_says_nothing_of_a_shadow() -> None:
    """No shadow drawn: no shadow_lane on the decision, and nothing but the result."""
    h = handler(
        CheapHandler, FakeModel(lambda n: ok()), shadow_rate=0.0, handoff=handoff(measures=True)
    )
    outputs = await handled(h, FakeRecord(orjson.dumps({"id": "r1", "text": "some text"})))
    [decision] = cheap_decisions(outputs)
    assert decision.shadow_lane is None and "shadow_lane" not in orjson.loads(decision.value())
    assert {o.topic for o in outputs} == {"results", "decisions"}


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
