"""What each tier does with one record, against a fake model: refusal policies, holding when
the cheap model is down (and the escalate option), rejection of one request."""

from __future__ import annotations

import ast
import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from escalator.contract.messages import Attempt, escalation_value, parse_request
from escalator.engine.worker import Output
from escalator.errors import ModelRejected, ModelUnavailable
from escalator.lane.deadlines import CompletionTimes, LaneRule
from escalator.lane.handoff import DEADLINE_HEADER, LANE_HEADER, ORIGIN_HEADER, HandOff
from escalator.model.breaker import CircuitBreaker
from escalator.model.caller import ModelCaller, RetryPolicy
from escalator.model.task import load_task
from escalator.observability.metrics import Metrics
from escalator.tiers import handlers as handlers_module
from escalator.tiers.handlers import CheapHandler, StrongHandler, TierTopics
from escalator.tiers.routing import Thresholds

TOPICS = TierTopics("results", "escalations", "dead", "decisions")
TASK = load_task(None)


@dataclass
class FakeRecord:
    value: bytes | None
    topic: str = "requests"
    partition: int = 0
    offset: int = 7
    key: bytes | None = None
    headers: Any = ()
    timestamp: int = 0


class FakeModel:
    tier = "cheap"
    model = "fake-model"

    def __init__(self, answer: Callable[[int], Attempt | Exception]) -> None:
        self.answer = answer
        self.calls = 0
        self.texts: list[str] = []

    async def classify(self, text: str) -> Attempt:
        self.calls += 1
        self.texts.append(text)
        await asyncio.sleep(0)
        out = self.answer(self.calls) if text != "another record" else ok()
        if isinstance(out, Exception):
            raise out
        return out


def refusal(tier: str = "cheap") -> Attempt:
    return Attempt(
        tier, "fake-model", None, 0.0, False, 10, 2, error="refused", stop_reason="refusal",
        refusal_category="cyber",
    )  # fmt: skip


def not_json(tier: str = "strong") -> Attempt:
    return Attempt(
        tier, "fake-model", None, 0.0, False, 10, 5, error="answer_not_json", stop_reason="end_turn"
    )


def ok(label: str = "safe", confidence: float = 0.95, tier: str = "cheap") -> Attempt:
    return Attempt(tier, "fake-model", label, confidence, True, 10, 5, stop_reason="end_turn")


def caller(model: FakeModel, *, poison: int = 4, invalid: int = 3) -> ModelCaller:
    breaker = CircuitBreaker(window=4, failure_ratio=0.5, cooldown_s=0.05, cooldown_max_s=0.1)
    policy = RetryPolicy(
        max_attempts=2,
        initial_s=0.001,
        max_s=0.01,
        poison_max_attempts=poison,
        invalid_answer_attempts=invalid,
    )
    return ModelCaller(model, breaker, policy)


async def handled(h: Any, record: Any) -> list[Any]:
    """The handler's outputs as the engine gets them: at once (a list), or from the
    coroutine it returns for a record that waits for a model."""
    work = h.handle(record)
    return work if isinstance(work, list) else await work


def handler(cls: type[Any], model: FakeModel, **kw: Any) -> Any:
    options: dict[str, Any] = {
        "caller": caller(model),
        "topics": TOPICS,
        "metrics": Metrics(),
        "thresholds": Thresholds(0.7),
        "max_text_chars": 1000,
        "task": TASK,
    }
    options.update(kw)
    return cls(**options)


def request(text: str = "some text") -> bytes:
    return orjson.dumps({"id": "r1", "text": text})


def escalation(reason: str = "low_confidence", shadow: bool = False) -> bytes:
    req = parse_request(request(), 1000)
    return escalation_value(req, reason, ok(confidence=0.4), shadow=shadow, sample_rate=1.0)


def on(outputs: list[Output], topic: str) -> list[Output]:
    return [o for o in outputs if o.topic == topic]


async def test_cheap_refusal_escalates_once_with_its_reason_and_category() -> None:
    """A cheap refusal is escalated as cheap_refused, with the refused attempt attached; it is
    not retried, and the decision records the category."""
    model = FakeModel(lambda n: refusal())
    h = handler(CheapHandler, model)
    outputs = await handled(h, FakeRecord(request()))
    assert model.calls == 1
    (esc,) = on(outputs, "escalations")
    body = orjson.loads(esc.value)
    assert body["reason"] == "cheap_refused"
    assert body["cheap"]["refusal_category"] == "cyber"
    (decision,) = on(outputs, "decisions")
    assert orjson.loads(decision.value)["attempt"]["stop_reason"] == "refusal"
    assert not on(outputs, "results") and not on(outputs, "dead")
    exposition = h.metrics.exposition().decode()
    assert 'escalator_refusals_total{category="cyber",model="fake-model",tier="cheap"} 1.0' in (
        exposition
    )


async def test_strong_refusal_becomes_the_tasks_refusal_label() -> None:
    """With refusal_label (moderation: unsafe), a strong refusal is a result with that label,
    its category on the result; one call."""
    model = FakeModel(lambda n: refusal("strong"))
    h = handler(StrongHandler, model)
    outputs = await handled(h, FakeRecord(escalation()))
    assert model.calls == 1
    (result,) = on(outputs, "results")
    body = orjson.loads(result.value)
    assert body["label"] == TASK.refusal_label == "unsafe"
    assert body["refusal_category"] == "cyber" and body["tier"] == "strong"
    assert not on(outputs, "dead")


async def test_strong_refusal_without_a_refusal_label_is_dead_lettered_once() -> None:
    """No refusal_label: dead letter model_refused with the category header; one call."""
    model = FakeModel(lambda n: refusal("strong"))
    h = handler(StrongHandler, model, task=replace(TASK, refusal_label=None))
    outputs = await handled(h, FakeRecord(escalation()))
    assert model.calls == 1
    (dead,) = on(outputs, "dead")
    headers = dict(dead.headers)
    assert headers["x-escalator-reason"] == b"model_refused"
    assert headers["x-escalator-refusal-category"] == b"cyber"
    assert not on(outputs, "results")


async def test_a_shadow_refusal_never_dead_letters() -> None:
    """A measurement call refused: its decision is logged; no dead letter, no result."""
    model = FakeModel(lambda n: refusal("strong"))
    h = handler(StrongHandler, model, task=replace(TASK, refusal_label=None))
    outputs = await handled(h, FakeRecord(escalation("shadow", shadow=True)))
    assert on(outputs, "decisions") and not on(outputs, "dead") and not on(outputs, "results")


async def test_cheap_tier_holds_through_an_outage_by_default() -> None:
    """529s from the cheap model: the record waits (no escalation to the 20x model) and is
    answered at the cheap tier when the model comes back."""
    model = FakeModel(lambda n: ModelUnavailable("529", kind="overloaded") if n <= 8 else ok())
    h = handler(CheapHandler, model)
    outputs = await asyncio.wait_for(h.handle(FakeRecord(request())), 10)
    (result,) = on(outputs, "results")
    assert orjson.loads(result.value)["tier"] == "cheap"
    assert not on(outputs, "escalations") and model.calls > 8


async def test_cheap_unavailable_escalates_only_when_asked() -> None:
    """ESCALATOR_CHEAP_UNAVAILABLE=escalate: retries exhausted -> cheap_unavailable."""
    model = FakeModel(lambda n: ModelUnavailable("529", kind="overloaded"))
    h = handler(CheapHandler, model, escalate_when_unavailable=True)
    outputs = await asyncio.wait_for(h.handle(FakeRecord(request())), 10)
    (esc,) = on(outputs, "escalations")
    assert orjson.loads(esc.value)["reason"] == "cheap_unavailable"


@pytest.mark.parametrize("cls", [CheapHandler, StrongHandler])
async def test_a_request_rejected_alone_is_dead_lettered_with_the_api_status(
    cls: type[Any],
) -> None:
    """A 400 for this record while other calls succeed: dead letter api_400."""
    model = FakeModel(lambda n: ModelRejected("bad", reason="api_400"))
    h = handler(cls, model)
    value = request() if cls is CheapHandler else escalation()
    task = asyncio.create_task(h.handle(FakeRecord(value)))

    async def others() -> None:
        # Other records' successes between its rejections are what mark this one as bad.
        while not task.done():
            await h.caller.answer("another record")

    other = asyncio.create_task(others())
    outputs = await asyncio.wait_for(task, 10)
    await other
    (dead,) = on(outputs, "dead")
    assert dict(dead.headers)["x-escalator-reason"] == b"api_400"
    assert model.texts.count("some text") == 2


@pytest.mark.parametrize("limit", [1, 2, 5])
async def test_strong_invalid_answers_are_dead_lettered_at_the_policys_limit(limit: int) -> None:
    """Answers that keep failing validation: asked exactly invalid_answer_attempts times (the
    caller's policy, not a number of the handler's), each logged as an invalid decision, then
    one dead letter model_output_invalid and no result."""
    model = FakeModel(lambda n: not_json())
    h = handler(StrongHandler, model, caller=caller(model, invalid=limit))
    outputs = await asyncio.wait_for(h.handle(FakeRecord(escalation())), 10)
    assert model.calls == limit
    (dead,) = on(outputs, "dead")
    assert dict(dead.headers)["x-escalator-reason"] == b"model_output_invalid"
    outcomes = [orjson.loads(d.value)["outcome"] for d in on(outputs, "decisions")]
    assert outcomes == ["invalid"] * limit
    assert not on(outputs, "results")


async def test_strong_invalid_answers_below_the_limit_are_kept_with_the_result() -> None:
    """Two invalid answers, then a valid one, with a limit of 3: a result whose attempts are
    the cheap one, both invalid ones and the final one; three decisions."""
    model = FakeModel(lambda n: not_json() if n <= 2 else ok(tier="strong"))
    h = handler(StrongHandler, model, caller=caller(model, invalid=3))
    outputs = await asyncio.wait_for(h.handle(FakeRecord(escalation())), 10)
    assert model.calls == 3
    (result,) = on(outputs, "results")
    attempts = orjson.loads(result.value)["attempts"]
    assert [a["error"] for a in attempts] == [None, "answer_not_json", "answer_not_json", None]
    outcomes = [orjson.loads(d.value)["outcome"] for d in on(outputs, "decisions")]
    assert outcomes == ["invalid", "invalid", "final"]
    assert not on(outputs, "dead")


async def test_shadow_invalid_answers_at_the_limit_never_dead_letter() -> None:
    """A measurement call whose answers keep failing validation: counted as a shadow failure,
    its decisions logged; no dead letter, no result."""
    model = FakeModel(lambda n: not_json())
    h = handler(StrongHandler, model, caller=caller(model, invalid=2))
    outputs = await asyncio.wait_for(h.handle(FakeRecord(escalation("shadow", shadow=True))), 10)
    assert model.calls == 2
    assert len(on(outputs, "decisions")) == 2 and not on(outputs, "dead")
    exposition = h.metrics.exposition().decode()
    assert 'escalator_shadow_failures_total{reason="model_output_invalid"} 1.0' in exposition


async def test_a_cheap_invalid_answer_is_escalated_at_once_whatever_the_limit() -> None:
    """The cheap tier never asks again for an invalid answer: it escalates it (confidence 0)."""
    model = FakeModel(lambda n: not_json("cheap"))
    h = handler(CheapHandler, model, caller=caller(model, invalid=5))
    outputs = await asyncio.wait_for(h.handle(FakeRecord(request())), 10)
    assert model.calls == 1
    (esc,) = on(outputs, "escalations")
    assert orjson.loads(esc.value)["reason"] == "invalid_answer"


@pytest.mark.parametrize("cls", [CheapHandler, StrongHandler])
@pytest.mark.parametrize("poison", [4, 8])
async def test_a_record_failing_alone_is_given_up_at_the_policys_poison_limit(
    cls: type[Any], poison: int
) -> None:
    """500s for this record while others are answered: after exactly poison_max_attempts calls
    the cheap tier escalates it (cheap_unavailable), the strong tier dead-letters it
    (model_unavailable)."""
    model = FakeModel(lambda n: ModelUnavailable("500", kind="server_error"))
    h = handler(cls, model, caller=caller(model, poison=poison))
    value = request() if cls is CheapHandler else escalation()
    task = asyncio.create_task(h.handle(FakeRecord(value)))

    async def others() -> None:
        while not task.done():
            await h.caller.answer("another record")

    other = asyncio.create_task(others())
    outputs = await asyncio.wait_for(task, 10)
    await other
    assert model.texts.count("some text") == poison
    if cls is CheapHandler:
        (esc,) = on(outputs, "escalations")
        assert orjson.loads(esc.value)["reason"] == "cheap_unavailable"
    else:
        (dead,) = on(outputs, "dead")
        assert dict(dead.headers)["x-escalator-reason"] == b"model_unavailable"


def test_handlers_ask_the_caller_and_never_reach_into_it() -> None:
    """In tiers/handlers.py every use of ``self.caller`` is one of the caller's own questions:
    never its breaker, its policy or a private attribute."""
    allowed = {"answer", "paused", "model", "shadow_keep"}
    tree = ast.parse(Path(handlers_module.__file__).read_text())
    used = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "caller"
    }
    assert used and used <= allowed, used - allowed


UPSTREAM = [
    ("traceparent", b"00-abc-def-01"),
    ("x-escalator-reason", b"fake"),
    ("x-escalator-tier", b"fake"),
    ("x-escalator-replay-of", b"escalator.dead-letter/0/5"),
]
PASSED_ON = [
    ("traceparent", b"00-abc-def-01"),
    ("x-escalator-replay-of", b"escalator.dead-letter/0/5"),
]


def _cheap_accepts() -> tuple[type[Any], FakeModel, bytes, dict[str, Any]]:
    return CheapHandler, FakeModel(lambda n: ok()), request(), {"shadow_rate": 1.0}


def _cheap_escalates() -> tuple[type[Any], FakeModel, bytes, dict[str, Any]]:
    return CheapHandler, FakeModel(lambda n: ok(confidence=0.3)), request(), {}


def _strong_decides() -> tuple[type[Any], FakeModel, bytes, dict[str, Any]]:
    return StrongHandler, FakeModel(lambda n: ok("unsafe", 0.9, "strong")), escalation(), {}


@pytest.mark.parametrize(
    ("case", "topics"),
    [
        (_cheap_accepts, {"results", "escalations", "decisions"}),  # result and a shadow
        (_cheap_escalates, {"escalations", "decisions"}),
        (_strong_decides, {"results", "decisions"}),
    ],
    ids=["cheap-result-and-shadow", "cheap-escalation", "strong-result"],
)
async def test_upstream_reserved_headers_never_reach_results_escalations_or_decisions(
    case: Callable[[], tuple[type[Any], FakeModel, bytes, dict[str, Any]]], topics: set[str]
) -> None:
    """A request (or escalation) that arrives with x-escalator-reason: fake: no output says so;
    traceparent and the replay tool's x-escalator-replay-of travel on; decisions carry none."""
    cls, model, value, kw = case()
    outputs = await handler(cls, model, **kw).handle(FakeRecord(value, headers=UPSTREAM))
    assert {o.topic for o in outputs} == topics
    for out in outputs:
        expected = [] if out.topic == "decisions" else PASSED_ON
        assert out.headers == expected, out.topic


@pytest.mark.parametrize(
    ("cls", "value", "reason", "tier"),
    [
        (CheapHandler, b"{not json", "invalid_json", "cheap"),
        (StrongHandler, b"{not json", "invalid_json", "strong"),
    ],
)
async def test_a_dead_letter_carries_only_its_own_reserved_headers(
    cls: type[Any], value: bytes, reason: str, tier: str
) -> None:
    """Upstream's fake reason and tier are replaced by ours, each header once; replay-of is
    dropped from dead letters too (replay sets a fresh one)."""
    h = handler(cls, FakeModel(lambda n: ok()))
    (dead,) = await handled(h, FakeRecord(value, headers=UPSTREAM))
    assert dead.topic == "dead"
    names = [k for k, _ in dead.headers]
    assert len(names) == len(set(names))
    headers = dict(dead.headers)
    assert headers["x-escalator-reason"] == reason.encode()
    assert headers["x-escalator-tier"] == tier.encode()
    assert "x-escalator-replay-of" not in headers
    assert headers["traceparent"] == b"00-abc-def-01"


async def test_a_strong_refusal_dead_letter_drops_upstream_reserved_headers() -> None:
    """The strong tier's model_refused dead letter, from an escalation that arrived with a fake
    refusal category and reason: ours only."""
    model = FakeModel(lambda n: refusal("strong"))
    h = handler(StrongHandler, model, task=replace(TASK, refusal_label=None))
    arrived = [*UPSTREAM, ("x-escalator-refusal-category", b"fake")]
    outputs = await handled(h, FakeRecord(escalation(), headers=arrived))
    (dead,) = on(outputs, "dead")
    reserved = [(k, v) for k, v in dead.headers if k.startswith("x-escalator-")]
    assert ("x-escalator-reason", b"model_refused") in reserved
    assert ("x-escalator-refusal-category", b"cyber") in reserved
    assert all(v != b"fake" for _, v in reserved)


@pytest.mark.parametrize(
    ("own", "default", "expected"), [(None, None, None), (None, 600.0, 600.0), (60.0, 600.0, 60.0)]
)
async def test_every_decision_records_its_lane_and_the_deadline_in_force(
    own: float | None, default: float | None, expected: float | None
) -> None:
    """Cheap and strong decisions say realtime and the deadline in force: the request's own
    (carried by the escalation), else the topic default, else null."""
    rule = LaneRule(default_deadline_s=default)
    body: dict[str, Any] = {"id": "r1", "text": "some text"}
    if own is not None:
        body["deadline_s"] = own
    cheap = handler(CheapHandler, FakeModel(lambda n: ok(confidence=0.4)), lane=rule)
    outputs = await cheap.handle(FakeRecord(orjson.dumps(body)))
    [escalated] = on(outputs, "escalations")
    strong = handler(StrongHandler, FakeModel(lambda n: ok(tier="strong")), lane=rule)
    outputs += await strong.handle(FakeRecord(escalated.value, topic="escalations"))
    decisions = [orjson.loads(o.value) for o in on(outputs, "decisions")]
    assert [d["attempt"]["tier"] for d in decisions] == ["cheap", "strong"]
    assert {(d["lane"], d["deadline_s"]) for d in decisions} == {("realtime", expected)}


@pytest.mark.parametrize(("deadline_s", "handed"), [(None, False), (60.0, False), (86400.0, True)])
async def test_a_request_that_can_wait_is_handed_off_at_once_without_a_model_call(
    deadline_s: float | None, handed: bool
) -> None:
    """With the lane on, a request whose slack passes the lane rule is answered at once (a
    list) by its copy on the hand-off topic, with its absolute deadline and origin; no model
    call. One with no deadline, or too short a one, waits for the model as before."""
    rule = LaneRule(enabled=True, fallback_s=300.0, max_age_s=60.0)
    now_s = 1_000_000.0
    handoff = HandOff(rule, CompletionTimes(3600.0), "handoff", clock=lambda: now_s)
    model = FakeModel(lambda n: ok())
    h = handler(CheapHandler, model, lane=rule, handoff=handoff)
    body: dict[str, Any] = {"id": "r1", "text": "some text"}
    if deadline_s is not None:
        body["deadline_s"] = deadline_s
    stamp_ms = int(now_s * 1000) - 5_000
    record = FakeRecord(orjson.dumps(body), offset=9, headers=[("traceparent", b"t")])
    record.timestamp = stamp_ms
    work = h.handle(record)
    if not handed:
        assert not isinstance(work, list)
        outputs = await work
        assert model.calls == 1 and on(outputs, "results")
        return
    assert isinstance(work, list) and model.calls == 0
    [out] = work
    assert (out.topic, out.value) == ("handoff", record.value)
    headers = dict(out.headers)
    assert headers["traceparent"] == b"t"
    assert headers[DEADLINE_HEADER] == str(stamp_ms + 86_400_000).encode()
    assert headers[ORIGIN_HEADER] == b"requests/0/9"


async def test_a_request_the_lane_sent_back_is_answered_in_real_time() -> None:
    """A record flagged x-escalator-lane: realtime (the lane's fallback) is never handed off
    again, however much slack it has."""
    rule = LaneRule(enabled=True, default_deadline_s=86400.0)
    handoff = HandOff(rule, CompletionTimes(60.0), "handoff", clock=lambda: 0.0)
    model = FakeModel(lambda n: ok())
    h = handler(CheapHandler, model, lane=rule, handoff=handoff)
    record = FakeRecord(request(), headers=[(LANE_HEADER, b"realtime")])
    outputs = await handled(h, record)
    assert model.calls == 1 and on(outputs, "results") and not on(outputs, "handoff")
