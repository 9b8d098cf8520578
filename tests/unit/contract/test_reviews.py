"""The review contract (contract/reviews.py): a review item round-trips, the human decision and
result it leads to follow the schemas, and anything that is not a review item is refused."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
import pytest

from escalator.contract.messages import Request
from escalator.contract.reviews import (
    ReviewItem,
    Verdict,
    human_decision_value,
    human_result_value,
    parse_review_item,
    review_item_value,
)
from escalator.errors import InvalidRequest
from escalator.model.task import load_task
from tests.integration.harness import validator
from tests.unit.contract.test_messages import held_size
from tests.unit.tiers.test_handlers import ok

TASK = load_task(None)


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


def test_a_review_item_is_held_at_its_own_size() -> None:
    """A review item carries the request's text and waits for its acknowledgement or its
    transaction: copied to its size (contract/messages.py's text_json)."""
    long = replace(item(), request=Request("r1", "x" * 20_000, {}))
    held, value = held_size(lambda: review_item_value(long))
    assert held < len(value) + 1024, f"{held} bytes held for a value of {len(value)}"
    assert parse_review_item(value, 20_000) == long
    verdict = Verdict("alice", "safe", "looked twice", 4.5)
    noted = replace(item(), request=Request("r1", "t", {"notes": "x" * 15_000}))
    held, value = held_size(lambda: human_result_value(noted, verdict))
    assert held < len(value) + 1024, f"{held} bytes held for the human result of {len(value)}"
