"""The demo's lane phase (``escalator_dev/demo_lane.py``): its settings send every request to
the batch lane, and its side-by-side figures are the recorded costs, per model, per 1,000."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from escalator.config import load_settings
from escalator.contract.messages import BATCH, Request
from escalator.lane.deadlines import LaneRule
from escalator_dev.demo_lane import LaneFigures, lane_env, side_by_side

DEMO_ENV = {
    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
    "ANTHROPIC_BASE_URL": "http://127.0.0.1:8765",
    "ESCALATOR_REQUESTS_TOPIC": "escalator.demo-abc123.requests",
    "ESCALATOR_RESULTS_TOPIC": "escalator.demo-abc123.results",
    "ESCALATOR_CHEAP_GROUP": "escalator-cheap-demo-abc123",
}


def result(cheap_usd: float, strong_usd: float | None, service_tier: str | None) -> dict[str, Any]:
    attempts = [{"tier": "cheap", "cost_usd": cheap_usd, "service_tier": service_tier}]
    if strong_usd is not None:
        attempts.append({"tier": "strong", "cost_usd": strong_usd, "service_tier": "standard"})
    return {"attempts": attempts}


def test_the_phase_settings_send_a_request_without_a_deadline_of_its_own_to_the_lane(
    tmp_path: Path,
) -> None:
    """With the phase's environment (checked by the service's own loader), a request that
    says nothing gets a day's deadline and the lane rule sends it to the batch lane, even
    before any batch is observed (the prior completion time); the lane's topics and group are
    the demo's own, apart from every other demo run's."""
    env = lane_env(DEMO_ENV, tmp_path / "thresholds.json")
    settings = load_settings({**env, "ESCALATOR_THRESHOLDS_FILE": ""})
    assert settings.lane.enabled and settings.lane.deadline_s == 86400
    rule = LaneRule.of(settings.lane)
    choice = rule.choose(
        Request("r-1", "a text"), waited_s=5.0, expected_s=settings.lane.expected_s
    )
    assert choice.lane == BATCH
    assert settings.topics.handoff == "escalator.demo-abc123.handoff"
    assert settings.topics.lane_state == "escalator.demo-abc123.lane-state"
    assert settings.lane.group == "escalator-demo-abc123-lane"
    assert env["ESCALATOR_SHADOW_RATE"] == "0"


def test_figures_are_the_recorded_costs_per_model_per_1000_requests() -> None:
    """Two results, one escalated: cheap and strong costs per 1,000, the batch answers counted,
    and the times to result in seconds."""
    results = [result(0.0001, None, "batch"), result(0.0003, 0.002, None)]
    figures = LaneFigures.of(results, [1000.0, 2000.0, 3000.0, 101000.0])
    assert figures.requests == 2
    assert figures.cheap_per_1k == pytest.approx(0.2)
    assert figures.strong_per_1k == pytest.approx(1.0)
    assert figures.total_per_1k == pytest.approx(1.2)
    assert figures.batch_answers == 1
    assert figures.p50_s == 2.5 and figures.p99_s == pytest.approx(98.06)


def test_side_by_side_shows_each_lane_and_their_ratio() -> None:
    """The cheap model at half price and the same escalations: the lines carry both lanes'
    figures and lane / real time per row, and say how many answers came from batches."""
    realtime = LaneFigures.of([result(0.0002, None, None), result(0.0002, 0.001, None)], [500.0])
    lane = LaneFigures.of([result(0.0001, None, "batch"), result(0.0001, 0.001, "batch")], [9e3])
    lines = list(side_by_side(realtime, lane))
    cheap = next(line for line in lines if line.lstrip().startswith("cheap model"))
    assert "$0.2000" in cheap and "$0.1000" in cheap and cheap.endswith("50%")
    strong = next(line for line in lines if line.lstrip().startswith("strong model"))
    assert strong.endswith("100%")
    total = next(line for line in lines if line.lstrip().startswith("total"))
    assert "$0.7000" in total and "$0.6000" in total and total.endswith("86%")
    assert any("0.5 s / 0.5 s" in line and "9.0 s / 9.0 s" in line for line in lines)
    assert lines[-1].lstrip().startswith("2 of 2 cheap answers came from batches")
