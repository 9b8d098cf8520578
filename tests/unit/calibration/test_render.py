"""What a calibration looks like to a person (calibration/render.py): the guarantee sentence,
the refusal lines and the reason each gives, the assumptions, the undecided-adjudication line.
The tables printed through ``escalator calibrate``: ``test_workflow.py``."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from escalator.calibration import render, sizing
from escalator.calibration.adjudications import Backlog
from escalator.calibration.curves import Curve
from escalator.calibration.search import Calibration, HumanCalibration, LabelResult


def _calibration(status: str = "refused", **fields: object) -> Calibration:
    t = np.asarray([0.5, 0.9, 1.5])
    curve = Curve(
        thresholds=t,
        escalated=np.asarray([1, 5, 10]),
        requests=10,
        escalation=np.asarray([0.1, 0.5, 1.0]),
        agreement=np.asarray([0.9, 0.95, 1.0]),
        agreement_lower=np.asarray([0.8, 0.9, 1.0]),
        cost_per_1k=np.asarray([0.1, 0.2, 0.3]),
        accuracy=None,
        delta=0.05,
    )
    base = Calibration(
        objective="quality",
        target=0.95,
        delta=0.05,
        margin=0.02,
        curve=curve,
        chosen=2,
        certified=2,
        best=1,
        status=status,  # type: ignore[arg-type]
        reason="no threshold that accepts anything can be certified",
    )
    return replace(base, **fields)  # type: ignore[arg-type]


def _need(**fields: object) -> sizing.Need:
    base = sizing.Need(
        requests=12_000,
        shadowed=600,
        hours=5.0,
        per_hour=2400.0,
        tau=0.8,
        p=0.05,
        goal_threshold=0.9,
        goal_escalation=0.25,
    )
    return replace(base, **fields)  # type: ignore[arg-type]


def _label(certified: bool) -> LabelResult:
    return LabelResult("A", 0.8, certified, 100, 10, 0.2, 0.96, 0.8, 0.2)


def test_the_guarantee_is_none_when_refused_and_per_label_when_labels_were_certified() -> None:
    """A refused calibration promises nothing; a certified one states 1 - delta and the
    target, scoped to each cheap label when it was certified per label."""
    assert render.guarantee(_calibration("refused"), 0.05) == "none: refused"
    overall = render.guarantee(_calibration("certified"), 0.05)
    assert overall.startswith("with probability at least 0.95 over the measurement window")
    assert "agreement with the strong model" in overall and overall.endswith("at least 0.95")
    per_label = render.guarantee(_calibration("certified", labels=(_label(True),)), 0.05)
    assert "for each cheap label, agreement among that label's answers" in per_label


def test_a_refusal_says_how_big_a_fresh_window_would_certify() -> None:
    """One line: the target and delta, the reason, the fresh window's requests, shadowed
    answers, duration at the observed rate, the goal threshold, and the fallback tail."""
    line = render.refusal(_calibration(), _need())
    assert "\n" not in line
    assert line.startswith("calibrate: cannot certify agreement >= 0.95 at delta 0.05: no thr")
    assert "about 12,000 requests with 600 shadowed answers" in line
    assert "(shadow rate 0.05, threshold 0.8; 5.0 h at 2,400 requests/h)" in line
    assert "to certify t=0.90 (escalating about 25%)" in line
    assert line.endswith(render.REFUSAL_TAIL)
    assert "requests/h" not in render.refusal(_calibration(), _need(per_hour=None))


def test_a_refusal_that_cannot_be_sized_says_why() -> None:
    """No window size: with no shadow sampling, no data can help; with no goal threshold, the
    size cannot be estimated; otherwise the window would exceed the largest size tried."""
    unsized = {"requests": None, "shadowed": None, "hours": None}
    no_shadow = render.refusal(_calibration(), _need(**unsized, p=0.0))
    assert "no shadow sampling in force (ESCALATOR_SHADOW_RATE=0)" in no_shadow
    no_goal = render.refusal(_calibration(), _need(**unsized, goal_threshold=None))
    assert "the size of a window that would certify one cannot be estimated" in no_goal
    too_big = render.refusal(_calibration(), _need(**unsized))
    assert f"more than {sizing.MAX_REQUESTS:,} requests" in too_big
    for line in (no_shadow, no_goal, too_big):
        assert line.endswith(render.REFUSAL_TAIL) and "\n" not in line


def _human(status: str = "refused", **fields: object) -> HumanCalibration:
    grid = np.asarray([0.5, 0.9])
    pair = np.zeros((2, 2))
    base = HumanCalibration(
        target=0.97,
        budget=0.05,
        delta=0.05,
        review_cost=1.0,
        cheap_grid=grid,
        strong_grid=grid,
        accuracy=pair,
        accuracy_lower=pair,
        human=pair,
        escalation=np.zeros(2),
        cost_per_1k=pair,
        passed=np.zeros((2, 2), bool),
        status=status,  # type: ignore[arg-type]
        chosen=None,
        best=None,
        reason="no pair passes",
    )
    return replace(base, **fields)  # type: ignore[arg-type]


def test_a_human_refusal_names_undecided_ones_and_the_window_that_would_certify() -> None:
    """Undecided adjudications are named in the head; the tail is the fresh window (requests,
    adjudicated answers, factor, duration, the pair), or how many times larger it would have to
    be, or why it cannot be sized."""
    sized = sizing.HumanNeed(factor=2.5, requests=5000, adjudicated=250, hours=30.0, goal=(1, 0))
    line = render.human_refusal(_human(pending=3), sized)
    assert line.startswith("calibrate: cannot certify accuracy against people >= 0.97 at delta")
    assert "within a human budget of 5.0%: no pair passes" in line
    assert "(3 undecided adjudication(s) counted as wrong" in line
    assert "about 5,000 requests with 250 adjudicated answers (about 2.5 times" in line
    assert "30.0 h) to certify t_c=0.90, t_s=0.50" in line
    assert line.endswith(render.REFUSAL_TAIL)
    beyond = sizing.HumanNeed(None, None, None, None, beyond=1000.0)
    line = render.human_refusal(_human(), beyond)
    assert "undecided" not in line
    assert "needs a fresh window more than 1,000 times this one's" in line
    why = sizing.HumanNeed(None, None, None, None, why="no adjudication is sampled")
    assert "; no adjudication is sampled" + render.REFUSAL_TAIL in render.human_refusal(
        _human(), why
    )


def test_the_human_guarantee_states_its_assumptions_and_none_when_refused() -> None:
    """Certified: 1 - delta, the target and every assumption, the undecided count among them;
    refused: none."""
    assert render.human_guarantee(_human("refused")) == "none: refused"
    line = render.human_guarantee(_human("certified", pending=2))
    assert line.startswith("with probability at least 0.95 over the measurement window")
    assert "is at least 0.97; assuming requests independent" in line
    assert "2 sampled adjudication(s) without a decision counted as wrong" in line


def test_undecided_adjudications_say_when_to_try_again_or_that_nobody_decides() -> None:
    """--undecided refuse: how many of how many are pending, since when, and when they should
    be decided at the recent pace; with no pace, asks whether anyone is reviewing."""

    class Sample:
        backlog = Backlog(
            sampled=10,
            pending=4,
            oldest_pending_ms=1_800_000_000_000,
            newest_pending_ms=1_800_000_000_000,
            last_decision_ms=1_800_000_000_000,
            per_hour=2.0,
        )

    line = render.pending_refusal(Sample())  # type: ignore[arg-type]
    assert "4 of the window's 10 sampled adjudications have no decision yet" in line
    assert "the oldest sampled at 2027-01-15T08:00:00Z" in line
    assert "(2.0 decisions/h) they should be decided by about 2027-01-15T10:00:00Z" in line
    Sample.backlog = replace(Sample.backlog, per_hour=None, oldest_pending_ms=None)
    line = render.pending_refusal(Sample())  # type: ignore[arg-type]
    assert "is anyone reviewing?" in line and "oldest" not in line
