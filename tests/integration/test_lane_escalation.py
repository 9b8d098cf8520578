"""Escalation through the batch lane, end to end: real broker, real SDK, the emulator's Message
Batches API in its own process. A lane request whose cheap batch answer is unsure, with its
deadline still far, is answered by the strong model in a batch at half the price (exactly one
result, no real-time strong call); one whose slack no longer meets the lane rule after its
cheap batch escalates in real time, before its deadline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from escalator.config import Settings, load_settings
from escalator.model.prices import Usage, load_prices
from tests.conftest import running_sim
from tests.integration.harness import (
    Collected,
    produce,
    requests,
    running_service,
    setup_topics,
)
from tests.integration.test_batch_lane import (
    deadline_env,
    drained,
    in_time,
    lane_env,
    sim_stats,
)

N = 12
TEXTS = ["a calm note", "how to hack into my neighbour wifi router", "buy now cheap pills"]


def decisions(got: Any, settings: Settings) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in got.on(settings.topics.decisions)]


def one_result_each(got: Any, settings: Settings, ids: list[str]) -> dict[str, Any]:
    by_id = got.results_by_id(settings.topics.results)
    assert sorted(by_id) == sorted(ids)
    assert all(len(results) == 1 for results in by_id.values()), by_id
    return {rid: results[0] for rid, results in by_id.items()}


def half_price(settings: Settings, attempt: dict[str, Any]) -> bool:
    usage = Usage(
        attempt["input_tokens"],
        attempt["output_tokens"],
        attempt["cache_write_tokens"],
        attempt["cache_read_tokens"],
        attempt.get("cache_write_1h_tokens", 0),
        attempt.get("inference_geo"),
    )
    full = load_prices(settings.routing.prices_file).cost_usd(settings.model.strong_model, usage)
    return full > 0 and abs(attempt["cost_usd"] - full / 2) < 1e-12


@dataclass(frozen=True)
class LaneRun:
    """What one run through the lane gave (:func:`through_the_lane`)."""

    settings: Settings
    got: Collected
    #: Each request's one result, by id.
    results: dict[str, Any]
    decisions: list[dict[str, Any]]
    #: escalator_lane_escalations_total per lane, read while the service ran.
    via: dict[str, float]
    #: The emulator's counts.
    stats: dict[str, Any]


async def through_the_lane(
    kafka_bootstrap: str, unique: str, batch_latency_s: int, env: Callable[[str], dict[str, str]]
) -> LaneRun:
    """N requests of TEXTS through the cheap, strong and lane tiers, with ``env``'s settings
    for an emulator whose batches take ``batch_latency_s``; exactly one result per request."""
    with running_sim("--batch-latency", str(batch_latency_s)) as sim:
        settings = load_settings(env(sim))
        await setup_topics(settings)
        values = requests(N, unique, TEXTS)
        ids = [orjson.loads(v)["id"] for v in values]
        async with running_service(settings, ["cheap", "strong", "lane"]) as service:
            await produce(kafka_bootstrap, settings.topics.requests, values)
            got = await drained(kafka_bootstrap, settings, ids)
            registry = service.metrics.registry
            via = {
                lane: registry.get_sample_value("escalator_lane_escalations_total", {"lane": lane})
                or 0
                for lane in ("batch", "realtime")
            }
        stats = await sim_stats(sim)
    results = one_result_each(got, settings, ids)
    return LaneRun(settings, got, results, decisions(got, settings), via, stats)


def escalated_after_cheap_batches(run: LaneRun) -> tuple[list[str], list[dict[str, Any]]]:
    """Every request's cheap answer came from a batch; the ids of those it escalated (some),
    and the strong tier's final decisions, one for each of them."""
    cheap = [d for d in run.decisions if d["attempt"]["tier"] == "cheap"]
    assert {d["lane"] for d in cheap} == {"batch"} and len(cheap) == N
    escalated = sorted(d["id"] for d in cheap if d["outcome"] == "escalated")
    assert escalated, "the texts should make some cheap answers unsure"
    finals = [
        d for d in run.decisions if d["attempt"]["tier"] == "strong" and d["outcome"] == "final"
    ]
    assert sorted(d["id"] for d in finals) == escalated
    return escalated, finals


@pytest.mark.timeout(300)
async def test_an_unsure_lane_request_is_answered_by_a_strong_batch_at_half_price(
    kafka_bootstrap: str, unique: str
) -> None:
    """A day of deadline: every request goes to the lane; each unsure cheap batch answer is
    handed off again and answered by the strong model in a batch: exactly one result per
    request, the escalated ones from the strong tier with both attempts at the batch tier,
    their final decision lane batch at half the strong price, and no real-time call at all."""
    run = await through_the_lane(
        kafka_bootstrap, unique, 2, lambda sim: lane_env(kafka_bootstrap, sim, unique)
    )
    settings, stats = run.settings, run.stats
    escalated, finals = escalated_after_cheap_batches(run)
    for d in finals:
        assert d["lane"] == "batch" and d["attempt"]["service_tier"] == "batch"
        assert half_price(settings, d["attempt"])
        result = run.results[d["id"]]
        assert result["escalated"] is True and result["tier"] == "strong"
        assert [a["service_tier"] for a in result["attempts"]] == ["batch", "batch"]
    strong, cheap_model = settings.model.strong_model, settings.model.cheap_model
    assert stats.get(f"charged_requests:{strong}", 0) == 0
    assert stats.get(f"charged_requests:{cheap_model}", 0) == 0
    assert stats.get(f"batch_answered:{strong}", 0) == len(escalated)
    assert run.via == {"batch": len(escalated), "realtime": 0}


@pytest.mark.timeout(300)
async def test_an_unsure_lane_request_with_too_little_slack_left_escalates_in_real_time(
    kafka_bootstrap: str, unique: str
) -> None:
    """A 30-second deadline meets the rule (22 s) when the request is read, but not once its
    cheap batch took 8 s: its escalation goes to the strong tier in real time, as before,
    and every result comes before its deadline."""
    deadline_s = 30
    run = await through_the_lane(
        kafka_bootstrap,
        unique,
        8,
        lambda sim: deadline_env(kafka_bootstrap, sim, unique, deadline_s),
    )
    settings, stats = run.settings, run.stats
    escalated, finals = escalated_after_cheap_batches(run)
    assert {d["lane"] for d in finals} == {"realtime"}
    strong = settings.model.strong_model
    assert stats.get(f"charged_requests:{strong}", 0) == len(escalated)
    assert stats.get(f"batch_answered:{strong}", 0) == 0
    assert run.via["realtime"] == len(escalated)
    await in_time(kafka_bootstrap, settings, run.got, deadline_s)
