"""Measurement at half price, end to end: real broker, real SDK, the emulator's Message
Batches API in its own process. With the lane on and no deadline (every request answered in
real time), each accepted request's shadow is handed off to the lane, answered by the strong
model in a batch, and lands in the decisions log as the real-time shadow does, with lane
batch and the batch price; no strong call for it in real time, no result for it."""

from __future__ import annotations

from typing import Any

import orjson

from escalator.config import Settings, load_settings
from escalator.model.prices import Usage, load_prices
from tests.conftest import running_sim
from tests.integration.harness import (
    collect,
    make_env,
    produce,
    requests,
    running_service,
    setup_topics,
)
from tests.integration.test_batch_lane import sim_stats

N = 12


def measure_settings(bootstrap: str, sim: str, unique: str) -> Settings:
    env = make_env(
        bootstrap,
        sim,
        unique,
        ESCALATOR_SHADOW_RATE="1",
        ESCALATOR_HANDOFF_TOPIC=f"handoff-{unique}",
        ESCALATOR_LANE_STATE_TOPIC=f"lane-state-{unique}",
        ESCALATOR_LANE_GROUP=f"lane-{unique}",
        ESCALATOR_BATCH_MAX_AGE_S="1",
        ESCALATOR_BATCH_POLL_S="0.5",
        ESCALATOR_SHUTDOWN_GRACE_S="2",
        ESCALATOR_BATCH_LANE="on",
    )
    return load_settings(env)


def decisions(records: list[Any]) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in records]


async def test_a_shadow_is_measured_through_a_batch_at_half_the_price(
    kafka_bootstrap: str, unique: str
) -> None:
    """Every accepted request is shadowed (p = 1): one shadow decision each, lane batch,
    service_tier batch, cost half the real-time price of its own tokens, sample rate 1; the
    emulator answered them in a batch and made no real-time strong call but the escalations';
    every request has exactly one result."""
    with running_sim("--batch-latency", "2") as sim:
        settings = measure_settings(kafka_bootstrap, sim, unique)
        t = settings.topics
        await setup_topics(settings)
        values = requests(N, unique, ["a calm note", "you are an idiot", "buy now cheap pills"])

        def measured(c: Any) -> bool:
            got = decisions(c.on(t.decisions))
            accepted = {d["id"] for d in got if d["outcome"] == "accepted"}
            escalated = {d["id"] for d in got if d["outcome"] == "escalated"}
            shadows = {d["id"] for d in got if d["attempt"]["tier"] == "strong" and d["shadow"]}
            return (
                len(accepted) + len(escalated) == N
                and bool(accepted)
                and shadows == accepted
                and len(c.results_by_id(t.results)) == N
            )

        async with running_service(settings, ["cheap", "strong", "lane"]):
            await produce(kafka_bootstrap, t.requests, values)
            got = await collect(
                kafka_bootstrap, [t.results, t.decisions], measured, timeout_s=120, linger_s=3
            )
        stats = await sim_stats(sim)
    by_id = got.results_by_id(t.results)
    assert all(len(results) == 1 for results in by_id.values()), by_id
    every = decisions(got.on(t.decisions))
    cheap = [d for d in every if d["attempt"]["tier"] == "cheap"]
    accepted = [d for d in cheap if d["outcome"] == "accepted"]
    escalated = [d for d in cheap if d["outcome"] == "escalated"]
    assert {d["lane"] for d in cheap} == {"realtime"}  # no deadline: answered in real time
    assert {d.get("shadow_lane") for d in accepted} == {"batch"}
    shadows = [d for d in every if d["attempt"]["tier"] == "strong" and d["shadow"]]
    assert sorted(d["id"] for d in shadows) == sorted(d["id"] for d in accepted)
    prices = load_prices(settings.routing.prices_file)
    strong = settings.model.strong_model
    for d in shadows:
        a = d["attempt"]
        assert d["outcome"] == "shadow" and d["sample_rate"] == 1.0
        assert d["lane"] == "batch" and a["service_tier"] == "batch"
        usage = Usage(
            a["input_tokens"],
            a["output_tokens"],
            a["cache_write_tokens"],
            a["cache_read_tokens"],
            a.get("cache_write_1h_tokens", 0),
            a.get("inference_geo"),
        )
        full = prices.cost_usd(strong, usage)
        assert full > 0 and abs(a["cost_usd"] - full / 2) < 1e-12
    assert stats.get(f"batch_answered:{strong}", 0) == len(accepted)
    assert stats.get(f"charged_requests:{strong}", 0) == len(escalated)
    finals = [d for d in every if d["attempt"]["tier"] == "strong" and d["outcome"] == "final"]
    assert {d["lane"] for d in finals} <= {"realtime"}
