"""The batch lane's handler (tiers/lane.py) against a fake model and fake Batches API: a
succeeded item is routed as a real-time answer is (results or escalations, a decision that
says lane batch), with no real-time call; any other result is answered in real time."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition

from escalator.contract.messages import Attempt
from escalator.lane.batches import ItemResult
from escalator.lane.handoff import DEADLINE_HEADER
from escalator.lane.runner import BatchRunner
from escalator.tiers.handlers import CheapHandler
from escalator.tiers.lane import LaneHandler
from tests.unit.lane.fakes import FakeBatches, FakeState
from tests.unit.lane.test_runner import Clock
from tests.unit.tiers.test_handlers import FakeModel, FakeRecord, handler, ok, on


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
