"""The tier table (tiers/table.py): one row per tier, resolved from settings, and the handler
each row builds; and the topics a set of rows needs before the service starts."""

from __future__ import annotations

import pytest

from escalator.config import Settings, load_settings
from escalator.errors import ConfigError
from escalator.model.breaker import CircuitBreaker
from escalator.model.caller import ModelCaller, RetryPolicy
from escalator.model.task import load_task
from escalator.observability.metrics import Metrics
from escalator.tiers.handlers import CheapHandler, StrongHandler
from escalator.tiers.routing import Thresholds
from escalator.tiers.table import TIERS, HandlerParts, tier_table, tiers_to_run, topics_needed

TASK = load_task(None)


def settings(**env: str) -> Settings:
    return load_settings({"KAFKA_BOOTSTRAP_SERVERS": "k:9092", **env})


def test_each_tier_reads_its_topic_as_its_group_with_its_model() -> None:
    """The rows, in TIERS order, carry the topic, group, model and model variable that the
    settings name for each tier."""
    s = settings(
        ESCALATOR_REQUESTS_TOPIC="in",
        ESCALATOR_ESCALATIONS_TOPIC="up",
        ESCALATOR_CHEAP_GROUP="g-cheap",
        ESCALATOR_STRONG_GROUP="g-strong",
        ESCALATOR_CHEAP_MODEL="claude-haiku-4-5",
        ESCALATOR_STRONG_MODEL="claude-opus-5-5",
    )
    table = tier_table(s)
    assert tuple(table) == (*TIERS, "lane") and TIERS == ("cheap", "strong")
    cheap, strong = table["cheap"], table["strong"]
    assert (cheap.topic, cheap.group, cheap.model.model) == ("in", "g-cheap", "claude-haiku-4-5")
    assert (strong.topic, strong.group, strong.model.model) == ("up", "g-strong", "claude-opus-5-5")
    assert cheap.model.variable == "ESCALATOR_CHEAP_MODEL"
    assert strong.model.variable == "ESCALATOR_STRONG_MODEL"
    assert all(row.model.tier == name for name, row in table.items() if name in TIERS)


def test_the_lane_reads_the_handoff_topic_on_the_cheap_model_stack() -> None:
    """The batch lane's row: the hand-off topic as its own group, the cheap model (its
    real-time fallback shares the cheap stack), its own bound of waiting records, a Holder;
    the cheap row needs the hand-off topic only with the lane on."""
    s = settings(
        ESCALATOR_HANDOFF_TOPIC="h",
        ESCALATOR_LANE_GROUP="g-lane",
        ESCALATOR_CHEAP_MODEL="claude-haiku-4-5",
    )
    lane = tier_table(s)["lane"]
    assert (lane.topic, lane.group, lane.model.tier, lane.model.model) == (
        "h",
        "g-lane",
        "cheap",
        "claude-haiku-4-5",
    )
    assert lane.max_in_flight == 10_000 and lane.holds
    # ESCALATOR_LANE_MAX_WAITING bounds what one worker holds (its memory: OPERATIONS).
    assert tier_table(settings(ESCALATOR_LANE_MAX_WAITING="500"))["lane"].max_in_flight == 500
    assert lane.needs == {"h", s.topics.lane_state}
    assert "h" not in tier_table(s)["cheap"].needs
    # Its strong batch answers go to review as the strong tier's do (StrongHandler.answered).
    human = settings(ESCALATOR_HUMAN_TIER="on")
    assert human.topics.reviews in tier_table(human)["lane"].needs
    assert human.topics.reviews in tier_table(human)["strong"].needs


def test_run_all_runs_the_lane_only_when_it_is_on() -> None:
    """`--tier all`: cheap and strong, and the lane worker with ESCALATOR_BATCH_LANE on;
    `--tier lane` with the lane off is refused naming the variable; on, it runs the lane."""
    off, on = settings(), settings(ESCALATOR_BATCH_LANE="on")
    assert tiers_to_run("all", off) == ["cheap", "strong"]
    assert tiers_to_run("all", on) == ["cheap", "strong", "lane"]
    assert tiers_to_run("lane", on) == ["lane"] and tiers_to_run("strong", on) == ["strong"]
    with pytest.raises(ConfigError, match="ESCALATOR_BATCH_LANE is off"):
        tiers_to_run("lane", off)
    assert (
        "h"
        in tier_table(settings(ESCALATOR_BATCH_LANE="on", ESCALATOR_HANDOFF_TOPIC="h"))[
            "cheap"
        ].needs
    )


class Watches:
    def __init__(self) -> None:
        self.asked: list[str] = []

    def agreement(self) -> object:
        self.asked.append("agreement")
        return "agreement-watch"

    def confidence(self) -> object:
        self.asked.append("confidence")
        return "confidence-watch"


def caller() -> ModelCaller:
    policy = RetryPolicy(
        max_attempts=1, initial_s=0.0, max_s=0.0, poison_max_attempts=1, invalid_answer_attempts=1
    )
    return ModelCaller(object(), CircuitBreaker(), policy)  # type: ignore[arg-type]


def test_each_row_builds_its_handler_with_the_watch_it_runs() -> None:
    """The cheap row builds a CheapHandler that runs the confidence test, the strong row a
    StrongHandler that runs the agreement test; each asks only for its own."""
    s = settings(ESCALATOR_THRESHOLD="0.7", ESCALATOR_SHADOW_RATE="0.05")
    watches = Watches()
    parts = HandlerParts.of(
        s,
        task=TASK,
        thresholds=Thresholds(default=0.7),
        metrics=Metrics(),
        watches=watches,  # type: ignore[arg-type]
    )
    table = tier_table(s)
    c = caller()
    cheap = table["cheap"].handler(parts, c)
    assert isinstance(cheap, CheapHandler) and cheap.caller is c
    assert cheap.confidence_watch == "confidence-watch" and cheap.promise_watch is None
    assert cheap.shadow_rate == 0.05 and cheap.thresholds.default == 0.7
    strong = table["strong"].handler(parts, c)
    assert isinstance(strong, StrongHandler)
    assert strong.promise_watch == "agreement-watch" and strong.confidence_watch is None
    assert watches.asked == ["confidence", "agreement"]


BASE = {"esc", "res", "dlq", "dec"}
TOPICS = {
    "ESCALATOR_REQUESTS_TOPIC": "req",
    "ESCALATOR_ESCALATIONS_TOPIC": "esc",
    "ESCALATOR_RESULTS_TOPIC": "res",
    "ESCALATOR_DEAD_LETTER_TOPIC": "dlq",
    "ESCALATOR_DECISIONS_TOPIC": "dec",
    "ESCALATOR_REVIEWS_TOPIC": "rev",
    "ESCALATOR_ADJUDICATIONS_TOPIC": "adj",
    "ESCALATOR_PARKED_TOPIC": "park",
    "ESCALATOR_PARKING": "false",
}


@pytest.mark.parametrize(
    ("tiers", "env", "expected"),
    [
        (["cheap"], {}, BASE | {"req"}),
        (["strong"], {}, BASE),
        (["strong"], {"ESCALATOR_HUMAN_TIER": "true"}, BASE | {"rev"}),
        (["strong"], {"ESCALATOR_ADJUDICATE_AGREE": "0.1"}, BASE | {"adj"}),
        (["cheap"], {"ESCALATOR_ADJUDICATE_DISAGREE": "0.5"}, BASE | {"req"}),
        (["cheap", "strong"], {"ESCALATOR_PARKING": "true"}, BASE | {"req", "park"}),
    ],
)
def test_the_service_waits_for_the_topics_its_rows_need(
    tiers: list[str], env: dict[str, str], expected: set[str]
) -> None:
    """Every tier writes results, escalations, dead letters and decisions; the cheap tier
    reads requests; the strong tier writes reviews and adjudications only when they are on;
    parking (on by default) adds the parked topic. In the settings' topic order."""
    s = settings(**{**TOPICS, **env})
    table = tier_table(s)
    needed = topics_needed(s, [table[t] for t in tiers])
    assert set(needed) == expected
    assert needed == [t for t in s.topics.all() if t in expected]
