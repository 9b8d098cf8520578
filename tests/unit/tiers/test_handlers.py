"""What each tier's handler (tiers/handlers.py) does with one record, against a fake model.

- Refusal policies, holding when the cheap model is down (and the escalate option), rejection
  of one request; reserved headers; the lane's hand-off of a request that can wait, and of a
  drawn shadow when measurement goes through the batch lane (ESCALATOR_MEASURE_LANE).
- The human tier at the strong handler: when a request goes to people instead of a result,
  how adjudication samples are drawn and recorded, and that with both off nothing changes.
- Real traffic before measurement: the strong tier sheds shadow calls at random while its
  model's budget is tight and records the sample rate actually applied, so that the
  calibration's inverse-probability weights stay right (a known world shows it).
- Tier 0 in the cheap tier (``CheapHandler._tier0``): a confident answer is delivered at once
  with no model call, anything else goes to the model as without tier 0.
"""

from __future__ import annotations

import ast
import asyncio
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from escalator.contract.decisions import Decision
from escalator.contract.messages import Attempt, escalation_value, parse_request
from escalator.contract.reviews import parse_review_item
from escalator.engine.worker import Output
from escalator.errors import ModelRejected, ModelUnavailable
from escalator.lane.deadlines import CompletionTimes, LaneRule
from escalator.lane.handoff import (
    DEADLINE_HEADER,
    LANE_HEADER,
    MEASURE_HEADER,
    ORIGIN_HEADER,
    HandOff,
)
from escalator.model.admission import Admission, Budget, TokenEstimate
from escalator.model.breaker import CircuitBreaker
from escalator.model.caller import ModelCaller, RetryPolicy
from escalator.model.task import load_task
from escalator.observability.metrics import Metrics
from escalator.tiers import handlers as handlers_module
from escalator.tiers.handlers import CheapHandler, ReviewPolicy, StrongHandler, TierTopics
from escalator.tiers.routing import Thresholds
from tests.integration.harness import validator

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


def escalation(
    reason: str | None = None, shadow: bool = False, *, cheap_label: str = "safe", rate: float = 1.0
) -> bytes:
    """``request()`` escalated with a cheap answer ``cheap_label`` at 0.4, for ``reason`` (by
    default shadow or low_confidence), shadow-sampled at ``rate``."""
    req = parse_request(request(), 1000)
    reason = reason or ("shadow" if shadow else "low_confidence")
    return escalation_value(req, reason, ok(cheap_label, 0.4), shadow=shadow, sample_rate=rate)


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


# -- a drawn shadow through the batch lane (ESCALATOR_MEASURE_LANE) --------------------------------
def measuring_handoff(*, measures: bool) -> HandOff:
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
        CheapHandler,
        FakeModel(lambda n: ok()),
        shadow_rate=1.0,
        handoff=measuring_handoff(measures=measures),
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
        CheapHandler,
        FakeModel(lambda n: ok()),
        shadow_rate=0.0,
        handoff=measuring_handoff(measures=True),
    )
    outputs = await handled(h, FakeRecord(orjson.dumps({"id": "r1", "text": "some text"})))
    [decision] = cheap_decisions(outputs)
    assert decision.shadow_lane is None and "shadow_lane" not in orjson.loads(decision.value())
    assert {o.topic for o in outputs} == {"results", "decisions"}


# -- the human tier at the strong handler ----------------------------------------------------------
REVIEW_TOPICS = TierTopics(
    "results", "escalations", "dead", "decisions", "reviews", "adjudications"
)
THRESHOLDS = Thresholds(0.7, strong_default=0.6)


def strong(label: str = "safe", confidence: float = 0.9) -> FakeModel:
    model = FakeModel(lambda n: ok(label, confidence, tier="strong"))
    model.tier = "strong"
    return model


def human_tier(**kw: Any) -> ReviewPolicy:
    return ReviewPolicy(
        human_tier=True,
        review_labels=TASK.review_labels,
        on_disagreement=kw.get("on_disagreement", False),
        refusals=kw.get("refusals", TASK.review_refusals),
        adjudicate_disagree=kw.get("disagree", 0.0),
        adjudicate_agree=kw.get("agree", 0.0),
    )


def topics_of(outputs: list[Output]) -> list[str]:
    return sorted(o.topic for o in outputs)


@pytest.mark.parametrize(
    ("label", "confidence", "cheap_label", "extra", "reason"),
    [
        ("safe", 0.5, "safe", {}, "strong_low_confidence"),
        ("review-needed", 0.95, "safe", {}, "review_label"),
        ("unsafe", 0.95, "safe", {"on_disagreement": True}, "disagreement"),
    ],
)
async def test_a_strong_answer_goes_to_review_instead_of_results(
    label: str, confidence: float, cheap_label: str, extra: dict[str, Any], reason: str
) -> None:
    """Below the strong threshold, a review label, or a disagreement (when the task asks):
    a review item with both answers and no result; the decision says review."""
    h = handler(
        StrongHandler, strong(label, confidence), topics=REVIEW_TOPICS, thresholds=THRESHOLDS,
        review=human_tier(**extra),
    )  # fmt: skip
    outputs = await handled(h, FakeRecord(escalation(cheap_label=cheap_label), topic="escalations"))
    assert topics_of(outputs) == ["decisions", "reviews"]
    item = parse_review_item(next(o.value for o in outputs if o.topic == "reviews"), 1000)
    assert item.reason == reason and item.queue == "review"
    assert (item.cheap.label, item.strong.label) == (cheap_label, label)
    assert item.sample_rate == 1.0 and item.review_rate == 1.0
    assert item.labels == TASK.labels
    decision = orjson.loads(next(o.value for o in outputs if o.topic == "decisions"))
    assert decision["outcome"] == "review"
    validator("decision.v1.json").validate(decision)
    validator("review.v1.json").validate(orjson.loads(outputs[-1].value))


async def test_a_confident_strong_answer_is_decided_as_before() -> None:
    """Above the strong threshold, not a review label, agreeing: a result, no review item."""
    h = handler(
        StrongHandler, strong("safe", 0.9), topics=REVIEW_TOPICS, thresholds=THRESHOLDS,
        review=human_tier(on_disagreement=True),
    )  # fmt: skip
    outputs = await handled(h, FakeRecord(escalation(cheap_label="safe"), topic="escalations"))
    assert topics_of(outputs) == ["decisions", "results"]


async def test_without_the_human_tier_nothing_goes_to_people() -> None:
    """The default policy: a low-confidence review-label answer is a result, as before."""
    h = handler(
        StrongHandler, strong("review-needed", 0.2), topics=REVIEW_TOPICS, thresholds=THRESHOLDS
    )
    outputs = await handled(h, FakeRecord(escalation(cheap_label="safe"), topic="escalations"))
    assert topics_of(outputs) == ["decisions", "results"]


async def test_a_refusal_goes_to_review_when_the_task_says_so() -> None:
    """The moderation task reviews refusals (review_refusals) instead of mapping them."""
    model = FakeModel(lambda n: refusal("strong"))
    model.tier = "strong"
    h = handler(
        StrongHandler, model, topics=REVIEW_TOPICS, thresholds=THRESHOLDS, review=human_tier()
    )
    outputs = await handled(h, FakeRecord(escalation(cheap_label="safe"), topic="escalations"))
    assert topics_of(outputs) == ["decisions", "reviews"]
    assert parse_review_item(outputs[-1].value, 1000).reason == "strong_refused"
    h = handler(
        StrongHandler, model, topics=REVIEW_TOPICS, thresholds=THRESHOLDS,
        review=human_tier(refusals=False),
    )  # fmt: skip
    outputs = await handled(h, FakeRecord(escalation(cheap_label="safe"), topic="escalations"))
    assert orjson.loads(on(outputs, "results")[0].value)["label"] == TASK.refusal_label


async def test_a_shadow_answer_is_never_reviewed_but_may_be_adjudicated() -> None:
    """A shadow request already has its result: no review item, however unsure; with an
    adjudication rate of 1 it is sampled, and the item records both probabilities."""
    h = handler(
        StrongHandler, strong("unsafe", 0.2), topics=REVIEW_TOPICS, thresholds=THRESHOLDS,
        review=human_tier(disagree=1.0),
    )  # fmt: skip
    outputs = await handled(h, FakeRecord(escalation(cheap_label="safe", shadow=True, rate=0.25)))
    assert topics_of(outputs) == ["adjudications", "decisions"]
    item = parse_review_item(on(outputs, "adjudications")[0].value, 1000)
    assert item.queue == "adjudication" and item.reason == "sampled_disagree"
    assert item.sample_rate == 0.25 and item.review_rate == 1.0 and item.inclusion == 0.25


@pytest.mark.parametrize(("cheap_label", "rate"), [("safe", 0.1), ("unsafe", 0.4)])
async def test_adjudication_samples_at_the_rate_for_agreement_or_disagreement(
    cheap_label: str, rate: float
) -> None:
    """Agreeing answers are sampled at the agree rate, differing ones at the disagree rate;
    over 2,000 records the share sampled is within 4 standard errors of it."""
    h = handler(
        StrongHandler, strong("unsafe", 0.9), topics=REVIEW_TOPICS, thresholds=THRESHOLDS,
        review=ReviewPolicy(adjudicate_agree=0.4, adjudicate_disagree=0.1),
        rng=random.Random(7),
    )  # fmt: skip
    n, sampled = 2000, 0
    for _ in range(n):
        outputs = await handled(
            h, FakeRecord(escalation(cheap_label=cheap_label), topic="escalations")
        )
        found = on(outputs, "adjudications")
        sampled += len(found)
        assert on(outputs, "results"), "adjudication never replaces the result"
        if found:
            assert parse_review_item(found[0].value, 1000).review_rate == rate
    assert abs(sampled / n - rate) < 4 * (rate * (1 - rate) / n) ** 0.5


@pytest.mark.parametrize(
    ("label", "confidence", "shadow", "outcome"),
    [
        ("unsafe", 0.9, False, "final"),
        ("unsafe", 0.9, True, "shadow"),
        ("unsafe", 0.2, False, "review"),
    ],
)
async def test_the_final_strong_decision_records_the_adjudication_draw(
    label: str, confidence: float, shadow: bool, outcome: str
) -> None:
    """Every final strong answer carries its draw, sampled or not, with the rate it had, so
    the log knows what was put before people before anyone decides; the record validates."""
    for rng_seed in (1, 2):
        sampled_first = random.Random(rng_seed).random() < 0.5  # the handler's first draw
        h = handler(
            StrongHandler, strong(label, confidence), topics=REVIEW_TOPICS, thresholds=THRESHOLDS,
            review=human_tier(disagree=0.5, agree=0.1), rng=random.Random(rng_seed),
        )  # fmt: skip
        outputs = await handled(
            h, FakeRecord(escalation(cheap_label="safe", shadow=shadow, rate=0.25))
        )
        decision = orjson.loads(on(outputs, "decisions")[-1].value)
        assert decision["outcome"] == outcome
        validator("decision.v1.json").validate(decision)
        assert decision["adjudication"] == {"sampled": sampled_first, "rate": 0.5}
        assert bool(on(outputs, "adjudications")) == sampled_first


async def test_with_adjudication_off_the_draw_says_rate_zero() -> None:
    """Adjudication off: the draw is still recorded (not sampled, rate 0), so a window that
    began before adjudication was turned on is recognised by calibration."""
    h = handler(StrongHandler, strong("safe", 0.9), topics=REVIEW_TOPICS, thresholds=THRESHOLDS)
    outputs = await handled(h, FakeRecord(escalation(cheap_label="safe"), topic="escalations"))
    decision = orjson.loads(on(outputs, "decisions")[-1].value)
    assert decision["adjudication"] == {"sampled": False, "rate": 0.0}


class Units:
    """A PromiseWatch that records what it is fed."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, float]] = []

    def observe(self, loss: float, probability: float) -> None:
        self.seen.append((loss, probability))


@pytest.mark.parametrize(
    ("cheap_label", "strong_label", "shadow", "unit"),
    [
        ("safe", "unsafe", False, (0.0, 1.0)),  # escalated: the strong answer is routed
        ("safe", "safe", True, (0.0, 0.25)),  # a shadow that agrees
        ("safe", "unsafe", True, (1.0, 0.25)),  # a shadow that differs
    ],
)
async def test_the_strong_tier_feeds_the_promise_monitor_one_unit_per_answer(
    cheap_label: str, strong_label: str, shadow: bool, unit: tuple[float, float]
) -> None:
    """Escalations are units that agree by definition (probability 1); shadows agree or not,
    at their shadow rate."""
    watch = Units()
    h = handler(
        StrongHandler, strong(strong_label, 0.9), topics=REVIEW_TOPICS, thresholds=THRESHOLDS,
        promise_watch=watch,
    )  # fmt: skip
    await handled(h, FakeRecord(escalation(cheap_label=cheap_label, shadow=shadow, rate=0.25)))
    assert watch.seen == [unit]


async def test_a_failed_shadow_call_is_a_differing_unit() -> None:
    """A shadow whose strong answers keep failing validation counts as differing, as
    calibration counts it; the request already has its result, so nothing is dead-lettered."""
    model = FakeModel(lambda n: replace(ok("safe", 0.9, tier="strong"), valid=False))
    model.tier = "strong"
    watch = Units()
    h = handler(
        StrongHandler, model, topics=REVIEW_TOPICS, thresholds=THRESHOLDS, promise_watch=watch
    )
    outputs = await handled(h, FakeRecord(escalation(cheap_label="safe", shadow=True, rate=0.5)))
    assert not on(outputs, "dead")
    assert watch.seen == [(1.0, 0.5)]


# -- shadows shed while the strong model's budget is tight -----------------------------------------
class KnownWorld:
    """The strong model's answer for each request is known in advance."""

    tier = "strong"
    model = "fake-strong"

    def __init__(self) -> None:
        self.labels: dict[str, str] = {}
        self.calls = 0

    async def classify(self, text: str) -> Attempt:
        self.calls += 1
        return Attempt("strong", self.model, self.labels[text], 0.9, True, 10, 5)


def _strong(world: KnownWorld, budget: Budget, rng: random.Random) -> StrongHandler:
    gate = Admission(budget, TokenEstimate(1.0), max_tokens=128)
    caller = ModelCaller(
        world,
        CircuitBreaker(),
        RetryPolicy(
            max_attempts=1,
            initial_s=0.5,
            max_s=20.0,
            poison_max_attempts=12,
            invalid_answer_attempts=3,
        ),
        admission=gate,
    )
    return StrongHandler(
        caller=caller,
        topics=TOPICS,
        metrics=Metrics(),
        thresholds=Thresholds(0.7),
        max_text_chars=1000,
        task=TASK,
        rng=rng,
    )


def _tight(budget: Budget, pressure: float) -> None:
    """A budget with headers (so it is active; a limit far above these calls) and the given
    pressure."""
    budget.observe({"requests": (1e6, 1e6)})
    budget.pressure = pressure


def _shadow(rid: str, text: str, rate: float) -> bytes:
    request = parse_request(orjson.dumps({"id": rid, "text": text}), 1000)
    cheap = Attempt("cheap", "fake-cheap", "safe", 0.9, True, 10, 5)
    return escalation_value(request, "shadow", cheap, shadow=True, sample_rate=rate)


async def test_shadows_are_shed_when_tight_and_real_escalations_never() -> None:
    """With pressure 0.8 (keep 0.2), about a fifth of shadows are called, each decision
    records sample_rate = 0.5 x 0.2; every real escalation is answered."""
    world = KnownWorld()
    budget = Budget()
    handler = _strong(world, budget, random.Random(3))
    kept = []
    for i in range(500):
        world.labels[f"t{i}"] = "safe"
        _tight(budget, 0.8)  # each answer brings headers
        outputs = await handled(handler, FakeRecord(_shadow(f"r{i}", f"t{i}", 0.5)))
        kept += [orjson.loads(o.value) for o in outputs if o.topic == "decisions"]
    assert 70 <= len(kept) <= 130 and world.calls == len(kept)
    assert {round(d["sample_rate"], 9) for d in kept} == {0.1}
    assert "escalator_shadows_shed_total" in handler.metrics.exposition().decode()
    calls = world.calls
    for i in range(20):  # p = 1: the calibration counts these as certain, never shed
        world.labels[f"c{i}"] = "safe"
        _tight(budget, 0.8)
        await handled(handler, FakeRecord(_shadow(f"c{i}", f"c{i}", 1.0)))
    assert world.calls == calls + 20
    world.labels["real"] = "unsafe"
    request = parse_request(orjson.dumps({"id": "x", "text": "real"}), 1000)
    cheap = Attempt("cheap", "fake-cheap", "safe", 0.4, True, 10, 5)
    for _ in range(50):
        outputs = await handled(handler, FakeRecord(escalation_value(request, "low", cheap)))
        assert [o.topic for o in outputs].count("results") == 1


async def test_weighted_agreement_stays_unbiased_when_shadows_are_shed() -> None:
    """A known world: 400 accepted requests per repetition, the cheap tier samples shadows at
    rate 0.5; in the first half the budget is loose (all kept) and the cheap model agrees with
    the strong one 90% of the time, in the second it is tight (keep 0.2) and they agree 50% of
    the time: true agreement 0.70. Over 150 repetitions the inverse-probability-weighted
    estimate with the recorded sample rates is unbiased; weighting by the cheap tier's rate
    alone (ignoring the shedding) is not, and neither is the unweighted share."""
    rng = random.Random(11)
    world = KnownWorld()
    weighted, hajek, naive, unweighted = [], [], [], []
    n, rate = 400, 0.5
    for rep in range(150):
        budget = Budget()
        handler = _strong(world, budget, rng)
        agree_of: dict[str, bool] = {}
        decisions = []
        for i in range(n):
            tight = i >= n // 2
            agrees = rng.random() < (0.5 if tight else 0.9)
            rid, text = f"{rep}-{i}", f"text {rep} {i}"
            world.labels[text] = "safe" if agrees else "unsafe"  # the cheap label is "safe"
            agree_of[rid] = agrees
            if rng.random() >= rate:
                continue  # the cheap tier did not shadow it
            _tight(budget, 0.8 if tight else 0.0)
            for out in await handled(handler, FakeRecord(_shadow(rid, text, rate))):
                decisions.append(orjson.loads(out.value))
        w = [1 / d["sample_rate"] for d in decisions]
        a = [1.0 if d["attempt"]["label"] == "safe" else 0.0 for d in decisions]
        assert all(agree_of[d["id"]] == bool(x) for d, x in zip(decisions, a, strict=True))
        weighted.append(sum(wi * ai for wi, ai in zip(w, a, strict=True)) / n)
        hajek.append(sum(wi * ai for wi, ai in zip(w, a, strict=True)) / sum(w))
        naive.append(sum(a) / rate / n)
        unweighted.append(sum(a) / len(a))
    truth = 0.70
    assert abs(statistics.fmean(weighted) - truth) < 0.02
    assert abs(statistics.fmean(hajek) - truth) < 0.02
    assert abs(statistics.fmean(naive) - truth) > 0.1
    assert abs(statistics.fmean(unweighted) - truth) > 0.05


# -- tier 0 in the cheap tier ----------------------------------------------------------------------
@dataclass
class FakeTier0:
    """A LocalAnswers: fixed answers per text, and the batches it was asked."""

    answers: dict[str, tuple[str, float]]
    version: str = "t0-0123456789"
    threshold: float = 0.9
    sample_rate: float = 0.0
    active: bool = True
    asked: list[list[str]] = field(default_factory=list)
    observed: list[tuple[float, float]] = field(default_factory=list)

    def observe(self, loss: float, probability: float) -> None:
        self.observed.append((loss, probability))

    def predict(self, texts: Sequence[str]) -> list[tuple[str, float]]:
        self.asked.append(list(texts))
        return [self.answers[t] for t in texts]


def _cheap(tier0: FakeTier0, model: FakeModel, metrics: Metrics | None = None) -> CheapHandler:
    h: CheapHandler = handler(CheapHandler, model, tier0=tier0, metrics=metrics or Metrics())
    return h


def test_a_confident_answer_is_delivered_at_once_with_no_model_call() -> None:
    """Above the threshold: a list (no coroutine, so no task), a result with tier tier0 and a
    decision with the artefact's version, both valid against the schemas; the model is never
    asked; the decisions counter counts it under tier tier0."""
    model, metrics = FakeModel(lambda _: ok()), Metrics()
    tier0 = FakeTier0({"hello friend": ("safe", 0.97)})
    h = _cheap(tier0, model, metrics)
    out = h.handle(FakeRecord(request("hello friend"), key=b"k"))
    assert isinstance(out, list)
    assert model.calls == 0 and tier0.asked == [["hello friend"]]
    (result,) = on(out, "results")
    (decided,) = on(out, "decisions")
    assert on(out, "escalations") == []
    value = orjson.loads(result.value)
    validator("result.v1.json").validate(value)
    assert (value["tier"], value["label"], value["model"]) == ("tier0", "safe", tier0.version)
    assert value["escalated"] is False and value["cost_usd"] == 0
    assert result.key == b"k" and decided.key == b"k"
    record = orjson.loads(decided.value)
    validator("decision.v1.json").validate(record)
    d = Decision.from_json(decided.value)
    assert (d.tier, d.outcome, d.tier0_version, d.threshold) == (
        "tier0",
        "accepted",
        tier0.version,
        0.9,
    )
    text = metrics.exposition().decode()
    assert 'escalator_decisions_total{label="safe",outcome="accepted",tier="tier0"} 1.0' in text


@pytest.mark.parametrize(
    "answer",
    [("safe", 0.89), ("not-a-label", 0.99)],
    ids=["below-threshold", "label-not-in-task"],
)
async def test_anything_else_goes_to_the_model_as_without_tier0(answer: tuple[str, float]) -> None:
    """Below the certified threshold (or a label the task does not have): the model is asked
    and the result is the cheap tier's, exactly as without tier 0."""
    model = FakeModel(lambda _: ok(confidence=0.95))
    h = _cheap(FakeTier0({"hello friend": answer}), model)
    work = h.handle(FakeRecord(request("hello friend")))
    assert not isinstance(work, list)
    out = await work
    assert model.calls == 1
    (result,) = on(out, "results")
    assert orjson.loads(result.value)["tier"] == "cheap"
    assert all(Decision.from_json(o.value).tier0_version is None for o in on(out, "decisions"))


def test_bad_input_is_dead_lettered_before_tier0_is_asked() -> None:
    tier0 = FakeTier0({})
    out = _cheap(tier0, FakeModel(lambda _: ok())).handle(FakeRecord(b"not json"))
    assert isinstance(out, list) and len(on(out, "dead")) == 1
    assert tier0.asked == []


async def test_a_fetched_batch_is_predicted_in_one_call_and_answered_in_order() -> None:
    """handle_batch (what the engine calls per partition of a fetched batch): bad input is
    dead-lettered without a prediction, tier 0 is asked once for the other texts together,
    and each record gets what ``handle`` would give it, in order: a list for tier 0's
    confident answers and the dead letter, a coroutine (a model call) for the rest."""
    model = FakeModel(lambda _: ok())
    tier0 = FakeTier0({"a": ("safe", 0.95), "b": ("safe", 0.5), "c": ("unsafe", 0.99)})
    h = _cheap(tier0, model)
    records = [
        FakeRecord(request("a"), offset=0),
        FakeRecord(b"{not json", offset=1),
        FakeRecord(request("b"), offset=2),
        FakeRecord(request("c"), offset=3),
    ]
    works = h.handle_batch(records)
    assert tier0.asked == [["a", "b", "c"]], "one prediction for the batch, bad input left out"
    assert [isinstance(w, list) for w in works] == [True, True, False, True]
    assert on(works[0], "results") and on(works[3], "results")  # type: ignore[arg-type]
    assert [o.topic for o in works[1]] == ["dead"]  # type: ignore[union-attr]
    assert model.calls == 0
    outputs = await works[2]  # type: ignore[misc]
    assert model.calls == 1 and on(outputs, "results")
