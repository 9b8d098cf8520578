"""What the recovery scan reads from the logs (review/ledger.py): a human decision's review id
and whether its result must be found too, and a human result's request id."""

from __future__ import annotations

import orjson

from escalator.contract.reviews import Verdict, human_decision_value, human_result_value
from escalator.review.ledger import SeenIds, human_decision_of, human_result_id
from tests.unit.review.fakes import make_item

VERDICT = Verdict(reviewer="ana", label="safe", note=None, seconds=3.0)


def test_a_decision_on_the_reviews_queue_needs_its_result() -> None:
    review = make_item("r-1", "text")
    judged = make_item("j-1", "text", queue="adjudication")
    assert human_decision_of(human_decision_value(review, VERDICT, "t/0/0")) == (
        review.review_id,
        "r-1",
    )
    assert human_decision_of(human_decision_value(judged, VERDICT, "t/0/1")) == (
        judged.review_id,
        None,
    )
    assert human_decision_of(b"garbage") is None
    assert human_decision_of(orjson.dumps({"id": "x", "outcome": "final"})) is None


def test_only_a_human_result_names_its_request() -> None:
    review = make_item("r-1", "text")
    assert human_result_id(human_result_value(review, VERDICT)) == "r-1"
    assert human_result_id(orjson.dumps({"id": "r-2", "tier": "strong"})) is None
    assert human_result_id(b"[1, 2]") is None
    assert human_result_id(b"not json") is None
    assert human_result_id(None) is None


def test_the_memory_of_decided_ids_forgets_the_oldest_first() -> None:
    seen = SeenIds(2)
    for review_id in ("a", "b", "a", "c"):
        seen.add(review_id)
    assert (seen.seen("a"), seen.seen("b"), seen.seen("c"), len(seen)) == (True, False, True, 2)
