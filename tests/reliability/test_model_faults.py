"""Scenarios 3-5: the model API down, rate-limited, or slow. The service runs in this
process (so its metrics can be sampled), against a simulator whose faults change live."""

from __future__ import annotations

import asyncio
import time

import pytest

from escalator.config import load_settings
from tests.conftest import running_sim
from tests.integration.harness import make_env, running_service, setup_topics
from tests.reliability.common import (
    Sampler,
    ledger_row,
    metric_sum,
    paced_produce,
    read_ledger,
    report,
    request_values,
    scaled,
    set_sim,
)


@pytest.mark.timeout(900)
async def test_api_outage_pauses_then_drains_and_dead_letters_nothing(
    kafka_bootstrap: str, unique: str
) -> None:
    """Every model call answers 529 for a while, during paced production: the breaker opens,
    the cheap tier pauses, commit lag rises, then drains; nothing lost or dead-lettered."""
    outage_s = scaled(60, 20)
    rate = 40.0
    n = int(rate * (outage_s + 20))
    with running_sim() as sim_url:
        env = make_env(kafka_bootstrap, sim_url, unique, ESCALATOR_SHADOW_RATE="0")
        settings = load_settings(env)
        await setup_topics(settings)
        ids = {f"{unique}-{i}" for i in range(n)}
        async with running_service(env, ["cheap", "strong"]) as service:
            sampler = Sampler(
                service,
                {
                    "open_cheap": ("escalator_circuit_open", {"tier": "cheap"}),
                    "open_strong": ("escalator_circuit_open", {"tier": "strong"}),
                    "lag": ("escalator_commit_lag", {"tier": "cheap"}),
                    "paused": ("escalator_paused_partitions", {"tier": "cheap"}),
                },
            )
            sampler.start()
            producing = asyncio.create_task(
                paced_produce(
                    kafka_bootstrap, settings.topics.requests, request_values(n, unique), rate
                )
            )
            started = time.monotonic()
            await asyncio.sleep(8)
            await set_sim(sim_url, faults={"529": 1.0})
            await asyncio.sleep(outage_s)
            # Production is paced: on any machine, requests arrived all through the outage.
            assert not producing.done(), "production ended before the outage did"
            await set_sim(sim_url, faults={})
            await producing
            ledger = await read_ledger(
                kafka_bootstrap,
                settings.topics.results,
                settings.topics.dead_letter,
                ids,
                timeout_s=240,
            )
            elapsed = time.monotonic() - started
            await sampler.stop()
            retries = metric_sum(service, "escalator_retries_total")
    lag = sampler.column("lag")
    report(
        "API outage",
        load=f"{n} requests at {rate:g}/s",
        fault=f"every model call answers 529 for {outage_s}s",
        duration_s=round(elapsed, 1),
        max_commit_lag=max(lag),
        final_commit_lag=lag[-1],
        breaker_opened=max(sampler.column("open_cheap")) == 1,
        retries=retries,
        **ledger_row(ledger),
    )
    assert max(sampler.column("open_cheap")) == 1, "the breaker never opened"
    assert max(sampler.column("paused")) > 0, "the cheap tier never paused its partitions"
    assert not ledger.dead, f"an outage must not dead-letter: {dict(ledger.dead)}"
    assert ledger.lost == [], f"lost {len(ledger.lost)}"
    assert max(lag) > 2 * rate, "lag should rise during the outage"
    assert lag[-1] < max(lag) / 4, "lag should drain after the outage"


@pytest.mark.timeout(900)
async def test_rate_limits_shrink_then_restore_the_in_flight_limit(
    kafka_bootstrap: str, unique: str
) -> None:
    """40 % of calls answer 429 for a while, during paced production: the in-flight limit
    halves (AIMD), then grows back to the configured maximum; nothing lost or dead-lettered."""
    limited_s = scaled(30, 12)
    rate = 60.0
    n = int(rate * (limited_s + 30))
    max_in_flight = 16
    with running_sim("--latency", "uniform:20:60") as sim_url:
        env = make_env(
            kafka_bootstrap,
            sim_url,
            unique,
            ESCALATOR_SHADOW_RATE="0",
            ESCALATOR_MAX_IN_FLIGHT=str(max_in_flight),
            # A higher ratio than the 429 share: this scenario is about AIMD, not the breaker.
            ESCALATOR_BREAKER_FAILURE_RATIO="0.9",
        )
        settings = load_settings(env)
        await setup_topics(settings)
        ids = {f"{unique}-{i}" for i in range(n)}
        async with running_service(env, ["cheap", "strong"]) as service:
            sampler = Sampler(
                service,
                {
                    "limit": ("escalator_in_flight_limit", {"tier": "cheap"}),
                    "in_flight": ("escalator_in_flight", {"tier": "cheap"}),
                    "rate_limited": (
                        "escalator_retries_total",
                        {"tier": "cheap", "error": "rate_limit"},
                    ),
                },
                every_s=0.25,
            )
            sampler.start()
            producing = asyncio.create_task(
                paced_produce(
                    kafka_bootstrap, settings.topics.requests, request_values(n, unique), rate
                )
            )
            started = time.monotonic()
            await asyncio.sleep(5)
            await set_sim(sim_url, faults={"429": 0.4}, retry_after_s=1)
            await asyncio.sleep(limited_s)
            # Production is paced: on any machine, requests arrived all through the 429s, and
            # the rest (rate x 30 s of them) give the limit its successes to grow back on.
            assert not producing.done(), "production ended before the rate limits did"
            low_point = len(sampler.rows)
            await set_sim(sim_url, faults={})
            await producing
            ledger = await read_ledger(
                kafka_bootstrap,
                settings.topics.results,
                settings.topics.dead_letter,
                ids,
                timeout_s=180,
            )
            elapsed = time.monotonic() - started
            await sampler.stop()
    limit = sampler.column("limit")
    lowest = min(limit[:low_point])
    report(
        "rate limits",
        load=f"{n} requests at {rate:g}/s, in-flight limit {max_in_flight}",
        fault=f"40% of calls answer 429 with retry-after 1s, for {limited_s}s",
        duration_s=round(elapsed, 1),
        in_flight_limit=f"{max_in_flight} -> {lowest:g} -> {limit[-1]:g}",
        rate_limited_retries=sampler.column("rate_limited")[-1],
        **ledger_row(ledger),
    )
    assert sampler.column("rate_limited")[-1] > 0
    assert lowest <= max_in_flight / 2, f"AIMD never decreased the limit: {limit}"
    assert limit[-1] == max_in_flight, f"the limit did not recover: {limit[low_point:]}"
    assert not ledger.dead and ledger.lost == []


@pytest.mark.timeout(900)
async def test_slow_model_causes_no_rebalance(kafka_bootstrap: str, unique: str) -> None:
    """Every call takes 10-30 s against a 10 s max.poll.interval: no member leaves its group,
    and some work gets done. The latency is the simulator's, so the backlog outlasts the run
    on any machine."""
    run_s = scaled(120, 45)
    with running_sim("--latency", "uniform:10000:30000") as sim_url:
        env = make_env(
            kafka_bootstrap,
            sim_url,
            unique,
            ESCALATOR_SHADOW_RATE="0",
            ESCALATOR_MAX_IN_FLIGHT="4",
            ESCALATOR_MAX_POLL_INTERVAL_MS="10000",
            ESCALATOR_SESSION_TIMEOUT_MS="10000",
            ESCALATOR_MODEL_TIMEOUT_S="60",
            ESCALATOR_SHUTDOWN_GRACE_S="1",
        )
        settings = load_settings(env)
        await setup_topics(settings)
        n = 200
        await paced_produce(
            kafka_bootstrap, settings.topics.requests, request_values(n, unique), 1000
        )
        async with running_service(env, ["cheap", "strong"]) as service:
            await asyncio.sleep(run_s)
            rebalances = {
                event: metric_sum(service, "escalator_rebalances_total", event=event)
                for event in ("assigned", "revoked")
            }
            done = metric_sum(service, "escalator_decisions_total")
    report(
        "slow model",
        load=f"{n}-request backlog, in-flight limit 4, max.poll.interval 10s",
        fault="every model call takes 10-30 s",
        duration_s=run_s,
        rebalances=rebalances,
        decisions=done,
        lost="n/a (backlog not drained by design)",
    )
    assert done > 0, "no progress at all"
    # One assignment per tier at start-up; any revocation would be a rebalance we caused.
    assert rebalances == {"assigned": 2, "revoked": 0}, rebalances
