"""The adjudication sample: pending rows, draws, repeats, design (calibration/adjudications.py)."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from escalator.calibration import adjudications, estimators, render
from escalator.calibration.dataset import (
    STRONG_ONLY,
    CalibrationError,
    pair_decisions,
)
from tests.unit.calibration.logs import (
    cheap_record,
    human_record,
    read,
    strong_record,
    tiny_log,
    without_draws,
)


def test_a_sampled_adjudication_without_a_decision_is_pending_and_counted_wrong() -> None:
    """r3 sampled (its draw is on the strong record) but not decided: a pending row with no
    label, left out of the point estimate, counted wrong by the bound, and reported."""
    recs = [r for r in tiny_log() if not (r["id"] == "r3" and r["attempt"]["tier"] == "human")]
    d = pair_decisions(read(recs))
    h = adjudications.human_sample(read(recs), d)
    assert h is not None and h.m == 3 and h.decided == 2 and int(h.pending.sum()) == 1
    assert h.backlog is not None and h.backlog.pending == 1 and h.backlog.sampled == 3
    assert h.neither == 0
    top = np.asarray([STRONG_ONLY])
    strong_only = estimators.wrong(h, top, np.asarray([0.0]), human_tier=False)
    assert strong_only[h.pending].all()  # wrong whatever the strong answer
    assert not estimators.wrong(h, top, top)[h.pending].any()  # sent to people: right
    line = render.pending_refusal(h)
    assert "1 of the window's 3 sampled adjudications have no decision yet" in line


def test_a_window_with_strong_answers_missing_their_draw_is_refused() -> None:
    """Some strong records carry the draw and some do not (an upgrade inside the window): the
    pending ones cannot be counted, so the sample is refused, naming --since."""
    recs = tiny_log()
    for r in recs:
        if r["id"] == "r2" and r["attempt"]["tier"] == "strong":
            del r["adjudication"]
    d = pair_decisions(read(recs))
    with pytest.raises(CalibrationError, match="--since"):
        adjudications.human_sample(read(recs), d)


def test_adjudication_turned_on_inside_the_window_is_refused() -> None:
    """A draw at rate 0 beside draws at 0.5 for agreeing answers: adjudication was off for part
    of the window, whose requests had no chance; refused naming the variable."""
    recs = tiny_log()
    extra = [
        cheap_record("r5", "A", 0.55, "escalated"),
        strong_record("r5", "A", 0.9, False, (False, 0.0)),
    ]
    d = pair_decisions(read([*recs, *extra]))
    with pytest.raises(CalibrationError, match="ESCALATOR_ADJUDICATE_AGREE was off"):
        adjudications.human_sample(read([*recs, *extra]), d)


def test_a_repeated_review_id_counts_once_and_review_items_are_no_sample() -> None:
    """A redelivered decision (same review_id) is ignored, the first kept; review-queue items
    are counted by reason and never enter the estimates."""
    recs = tiny_log()
    again = orjson.loads(orjson.dumps(recs[-1]))
    again["gold_label"] = "A"  # a second reviewer's different verdict: the first one stands
    cheap, strong = recs[3], strong_record("r4", "B", 0.3, False, (False, 0.5))
    review = human_record(
        "r4", "B", cheap, strong, s_rate=1.0, q=1.0, queue="review", reason="strong_low_confidence"
    )
    d = pair_decisions(read([*recs, again, strong, review]))
    h = adjudications.human_sample(read([*recs, again, strong, review]), d)
    assert h is not None and h.m == 3 and h.repeats == 1 and h.neither == 1
    assert h.review_items == {"strong_low_confidence": 1}


def test_a_design_without_agreeing_adjudications_is_refused_in_one_line() -> None:
    """A log without draws and with no adjudicated agreeing answers: q_agree is unknown, an
    error, never a guess."""
    kept = [r for r in tiny_log() if (r["id"] != "r2" and r["id"] != "r3") or "review" not in r]
    recs = without_draws(kept)
    d = pair_decisions(read(recs))
    with pytest.raises(CalibrationError, match="ESCALATOR_ADJUDICATE_AGREE"):
        adjudications.human_sample(read(recs), d)


def test_a_window_whose_adjudication_rate_changed_is_refused() -> None:
    """Two adjudication rates for agreeing answers in one window (on the draws; on the
    decisions, for a log without draws): the design is not one design, and the sample is
    refused naming the variable, rather than weighted wrongly."""
    changed = [dict(r) for r in tiny_log()]
    data = pair_decisions(read(changed))
    for r in changed:
        if r["id"] == "r3" and r["attempt"]["tier"] == "strong":
            r["adjudication"] = {**r["adjudication"], "rate": 0.25}
    with pytest.raises(CalibrationError, match="ESCALATOR_ADJUDICATE_AGREE changed"):
        adjudications.human_sample(read(changed), data)
    legacy = without_draws([dict(r) for r in tiny_log()])
    for r in legacy:
        block = r.get("review")
        if isinstance(block, dict) and block.get("agree") and block.get("queue") == "adjudication":
            r["review"] = {**block, "review_rate": block["review_rate"] / 2}
            break
    with pytest.raises(CalibrationError, match="ESCALATOR_ADJUDICATE_AGREE changed"):
        adjudications.human_sample(read(legacy), data)
