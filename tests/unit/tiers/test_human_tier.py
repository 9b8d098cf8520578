"""The human tier at the strong handler: when a request goes to people instead of a result,
how adjudication samples are drawn and recorded, and that with both off nothing changes."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import orjson
import pytest

from escalator.contract.messages import Request, escalation_value, parse_request
from escalator.contract.reviews import (
    ReviewItem,
    Verdict,
    human_decision_value,
    human_result_value,
    parse_review_item,
    review_item_value,
)
from escalator.engine.worker import Output
from escalator.errors import InvalidRequest
from escalator.model.task import load_task
from escalator.tiers.handlers import ReviewPolicy, StrongHandler, TierTopics
from escalator.tiers.routing import Thresholds
from tests.integration.harness import validator
from tests.unit.tiers.test_handlers import FakeModel, FakeRecord, handled, handler, ok, refusal

TASK = load_task(None)
TOPICS = TierTopics("results", "escalations", "dead", "decisions", "reviews", "adjudications")
THRESHOLDS = Thresholds(0.7, strong_default=0.6)


def escalation(cheap_label: str = "safe", shadow: bool = False, rate: float = 1.0) -> bytes:
    req = parse_request(orjson.dumps({"id": "r1", "text": "some text"}), 1000)
    cheap = ok(cheap_label, 0.4)
    reason = "shadow" if shadow else "low_confidence"
    return escalation_value(req, reason, cheap, shadow=shadow, sample_rate=rate)


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
        StrongHandler, strong(label, confidence), topics=TOPICS, thresholds=THRESHOLDS,
        review=human_tier(**extra),
    )  # fmt: skip
    outputs = await handled(h, FakeRecord(escalation(cheap_label), topic="escalations"))
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
        StrongHandler, strong("safe", 0.9), topics=TOPICS, thresholds=THRESHOLDS,
        review=human_tier(on_disagreement=True),
    )  # fmt: skip
    outputs = await handled(h, FakeRecord(escalation("safe"), topic="escalations"))
    assert topics_of(outputs) == ["decisions", "results"]


async def test_without_the_human_tier_nothing_goes_to_people() -> None:
    """The default policy: a low-confidence review-label answer is a result, as before."""
    h = handler(StrongHandler, strong("review-needed", 0.2), topics=TOPICS, thresholds=THRESHOLDS)
    outputs = await handled(h, FakeRecord(escalation("safe"), topic="escalations"))
    assert topics_of(outputs) == ["decisions", "results"]


async def test_a_refusal_goes_to_review_when_the_task_says_so() -> None:
    """The moderation task reviews refusals (review_refusals) instead of mapping them."""
    model = FakeModel(lambda n: refusal("strong"))
    model.tier = "strong"
    h = handler(StrongHandler, model, topics=TOPICS, thresholds=THRESHOLDS, review=human_tier())
    outputs = await handled(h, FakeRecord(escalation("safe"), topic="escalations"))
    assert topics_of(outputs) == ["decisions", "reviews"]
    assert parse_review_item(outputs[-1].value, 1000).reason == "strong_refused"
    h = handler(
        StrongHandler, model, topics=TOPICS, thresholds=THRESHOLDS,
        review=human_tier(refusals=False),
    )  # fmt: skip
    outputs = await handled(h, FakeRecord(escalation("safe"), topic="escalations"))
    assert orjson.loads(on_topic(outputs, "results")[0].value)["label"] == TASK.refusal_label


def on_topic(outputs: list[Output], topic: str) -> list[Output]:
    return [o for o in outputs if o.topic == topic]


async def test_a_shadow_answer_is_never_reviewed_but_may_be_adjudicated() -> None:
    """A shadow request already has its result: no review item, however unsure; with an
    adjudication rate of 1 it is sampled, and the item records both probabilities."""
    h = handler(
        StrongHandler, strong("unsafe", 0.2), topics=TOPICS, thresholds=THRESHOLDS,
        review=human_tier(disagree=1.0),
    )  # fmt: skip
    outputs = await handled(h, FakeRecord(escalation("safe", shadow=True, rate=0.25)))
    assert topics_of(outputs) == ["adjudications", "decisions"]
    item = parse_review_item(on_topic(outputs, "adjudications")[0].value, 1000)
    assert item.queue == "adjudication" and item.reason == "sampled_disagree"
    assert item.sample_rate == 0.25 and item.review_rate == 1.0 and item.inclusion == 0.25


@pytest.mark.parametrize(("cheap_label", "rate"), [("safe", 0.1), ("unsafe", 0.4)])
async def test_adjudication_samples_at_the_rate_for_agreement_or_disagreement(
    cheap_label: str, rate: float
) -> None:
    """Agreeing answers are sampled at the agree rate, differing ones at the disagree rate;
    over 2,000 records the share sampled is within 4 standard errors of it."""
    h = handler(
        StrongHandler, strong("unsafe", 0.9), topics=TOPICS, thresholds=THRESHOLDS,
        review=ReviewPolicy(adjudicate_agree=0.4, adjudicate_disagree=0.1),
        rng=random.Random(7),
    )  # fmt: skip
    n, sampled = 2000, 0
    for _ in range(n):
        outputs = await handled(h, FakeRecord(escalation(cheap_label), topic="escalations"))
        found = on_topic(outputs, "adjudications")
        sampled += len(found)
        assert on_topic(outputs, "results"), "adjudication never replaces the result"
        if found:
            assert parse_review_item(found[0].value, 1000).review_rate == rate
    assert abs(sampled / n - rate) < 4 * (rate * (1 - rate) / n) ** 0.5


def item(queue: str = "review") -> ReviewItem:
    return ReviewItem(
        queue=queue,  # type: ignore[arg-type]
        request=Request("r1", "<b>hi</b>", {"k": 1}),
        reason="strong_low_confidence" if queue == "review" else "sampled_agree",
        cheap=ok("safe", 0.4),
        strong=ok("safe", 0.5, tier="strong"),
        labels=TASK.labels,
        escalation_reason="low_confidence",
        shadow=False,
        sample_rate=0.5,
        review_rate=0.2 if queue == "adjudication" else 1.0,
        threshold_version="v1",
        created_ms=1_700_000_000_000,
    )


@pytest.mark.parametrize("label", ["unsafe", None])
def test_human_outputs_follow_the_schemas(label: str | None) -> None:
    """A review item round-trips; the human decision and result validate, name the reviewer,
    carry the reviewer's label as gold (null for neither) and the inclusion probability."""
    it = item("adjudication")
    assert parse_review_item(review_item_value(it), 1000) == it
    verdict = Verdict("alice", label, "looked twice", 4.5)
    decision = orjson.loads(human_decision_value(it, verdict, "adj/0/3"))
    validator("decision.v1.json").validate(decision)
    assert decision["gold_label"] == label and decision["gold_source"] == "human"
    assert decision["sample_rate"] == pytest.approx(0.1)
    assert decision["review"]["reviewer"] == "alice"
    assert decision["review"]["review_id"] == "adjudication:r1"
    result = orjson.loads(human_result_value(item("review"), verdict))
    validator("result.v1.json").validate(result)
    assert (result["tier"], result["reviewer"], result["label"]) == ("human", "alice", label)


@pytest.mark.parametrize(
    "change",
    [
        {"queue": "other"},
        {"labels": []},
        {"sample_rate": 0},
        {"review_rate": 1.5},
        {"created_ms": -1},
        {"request": {"id": "x"}},
        {"cheap": 3},
    ],
)
def test_a_malformed_review_item_is_refused_with_its_reason(change: dict[str, Any]) -> None:
    """Anything that is not a review item raises invalid_review_item (or the request's own
    reason), never another exception."""
    value = {**orjson.loads(review_item_value(item())), **change}
    with pytest.raises(InvalidRequest):
        parse_review_item(orjson.dumps(value), 1000)


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
            StrongHandler, strong(label, confidence), topics=TOPICS, thresholds=THRESHOLDS,
            review=human_tier(disagree=0.5, agree=0.1), rng=random.Random(rng_seed),
        )  # fmt: skip
        outputs = await handled(h, FakeRecord(escalation("safe", shadow=shadow, rate=0.25)))
        decision = orjson.loads(on_topic(outputs, "decisions")[-1].value)
        assert decision["outcome"] == outcome
        validator("decision.v1.json").validate(decision)
        assert decision["adjudication"] == {"sampled": sampled_first, "rate": 0.5}
        assert bool(on_topic(outputs, "adjudications")) == sampled_first


async def test_with_adjudication_off_the_draw_says_rate_zero() -> None:
    """Adjudication off: the draw is still recorded (not sampled, rate 0), so a window that
    began before adjudication was turned on is recognised by calibration."""
    h = handler(StrongHandler, strong("safe", 0.9), topics=TOPICS, thresholds=THRESHOLDS)
    outputs = await handled(h, FakeRecord(escalation("safe"), topic="escalations"))
    decision = orjson.loads(on_topic(outputs, "decisions")[-1].value)
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
        StrongHandler, strong(strong_label, 0.9), topics=TOPICS, thresholds=THRESHOLDS,
        promise_watch=watch,
    )  # fmt: skip
    await handled(h, FakeRecord(escalation(cheap_label, shadow=shadow, rate=0.25)))
    assert watch.seen == [unit]


async def test_a_failed_shadow_call_is_a_differing_unit() -> None:
    """A shadow whose strong answers keep failing validation counts as differing, as
    calibration counts it; the request already has its result, so nothing is dead-lettered."""
    model = FakeModel(lambda n: replace(ok("safe", 0.9, tier="strong"), valid=False))
    model.tier = "strong"
    watch = Units()
    h = handler(StrongHandler, model, topics=TOPICS, thresholds=THRESHOLDS, promise_watch=watch)
    outputs = await handled(h, FakeRecord(escalation("safe", shadow=True, rate=0.5)))
    assert not on_topic(outputs, "dead")
    assert watch.seen == [(1.0, 0.5)]
