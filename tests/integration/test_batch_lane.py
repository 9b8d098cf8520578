"""The batch lane end to end: real broker, real SDK, the emulator's Message Batches API in its
own process. A lane worker killed after its batch is submitted and before its results: the next
one polls the same batch (one batch created, no second bill) and every request ends with
exactly one result."""

from __future__ import annotations

from typing import Any

import httpx2 as httpx
import orjson
import pytest

from escalator.config import Settings, load_settings
from escalator.lane.state import BatchState
from tests.conftest import running_sim
from tests.integration.harness import (
    Collected,
    collect,
    make_env,
    produce,
    requests,
    running_service,
    setup_topics,
    wait_for,
)

N = 12


def lane_settings(bootstrap: str, sim: str, unique: str) -> Settings:
    env = make_env(
        bootstrap,
        sim,
        unique,
        ESCALATOR_SHADOW_RATE="0",
        ESCALATOR_HANDOFF_TOPIC=f"handoff-{unique}",
        ESCALATOR_LANE_STATE_TOPIC=f"lane-state-{unique}",
        ESCALATOR_LANE_GROUP=f"lane-{unique}",
        ESCALATOR_DEADLINE_S="86400",
        ESCALATOR_BATCH_EXPECTED_S="60",
        ESCALATOR_BATCH_MAX_AGE_S="2",
        ESCALATOR_BATCH_POLL_S="0.5",
        ESCALATOR_SHUTDOWN_GRACE_S="2",
        ESCALATOR_BATCH_LANE="on",
    )
    return load_settings(env)


async def advance(sim: str, seconds: float) -> None:
    """Move the emulator's batch clock forward (POST /_sim/config batch_advance_s)."""
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(f"{sim}/_sim/config", json={"batch_advance_s": seconds})
        response.raise_for_status()


async def answered(bootstrap: str, settings: Settings) -> Collected:
    """Results and decisions, read until every request has a result (then a little more)."""
    t = settings.topics
    return await collect(
        bootstrap,
        [t.results, t.decisions],
        lambda c: len(c.results_by_id(t.results)) >= N,
        timeout_s=90,
        linger_s=2,
    )


def cheap_decisions(got: Collected, settings: Settings, values: list[bytes]) -> list[Any]:
    """Every request has exactly one result; the cheap decisions."""
    t = settings.topics
    by_id = got.results_by_id(t.results)
    assert sorted(by_id) == sorted(orjson.loads(v)["id"] for v in values)
    assert all(len(results) == 1 for results in by_id.values()), by_id
    return [
        d for d in (orjson.loads(r.value) for r in got.on(t.decisions))
        if d["attempt"]["tier"] == "cheap"
    ]  # fmt: skip


async def sim_stats(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(f"{url}/_sim/config")
        response.raise_for_status()
        stats: dict[str, Any] = response.json()["stats"]
        return stats


@pytest.mark.parametrize("id_lost", [False, True])
async def test_a_lane_worker_killed_after_submission_resumes_the_same_batch(
    kafka_bootstrap: str, unique: str, id_lost: bool
) -> None:
    """Requests with a day to spare go to the lane; its worker submits one batch and is
    stopped before the batch ends (its records uncommitted). The batch ends; a new worker reads
    the state topic, polls that same batch, and every request gets exactly one result (a batch
    answer, lane batch in the decisions); the emulator created exactly one batch.

    ``id_lost``: the state topic is left as a kill between the create call and the batch id's
    record leaves it (the intent written again over the id): the new worker lists the API's
    batches and adopts the one whose results name the intent's custom ids, creating none."""
    with running_sim("--batch-latency", "3600") as sim:
        settings = lane_settings(kafka_bootstrap, sim, unique)
        t = settings.topics
        await setup_topics(settings)
        values = requests(N, unique, ["a calm note", "you are an idiot", "buy now cheap pills"])
        async with running_service(settings, ["cheap", "strong", "lane"]):
            await produce(kafka_bootstrap, t.requests, values)

            async def submitted() -> bool:
                return (await sim_stats(sim)).get("batches_created", 0) >= 1

            await wait_for(submitted, timeout_s=60)
            state = await collect(
                kafka_bootstrap,
                [t.lane_state],
                lambda c: any(
                    BatchState.from_value(r.value).batch_id for r in c.on(t.lane_state) if r.value
                ),
            )
        # Killed before results: nothing was answered, the batch is still open.
        early = await collect(kafka_bootstrap, [t.results], lambda c: False, 2, read_for_s=True)
        assert early.on(t.results) == []
        [batch_id] = {
            s.batch_id for r in state.on(t.lane_state) if r.value
            for s in [BatchState.from_value(r.value)] if s.batch_id
        }  # fmt: skip
        if id_lost:
            [intent] = [
                r for r in state.on(t.lane_state)
                if r.value and BatchState.from_value(r.value).batch_id is None
            ]  # fmt: skip
            await produce(kafka_bootstrap, t.lane_state, [intent.value], [intent.key])
        await advance(sim, 2 * 3600)
        async with running_service(settings, ["cheap", "strong", "lane"]):
            got = await answered(kafka_bootstrap, settings)
        stats = await sim_stats(sim)
    assert stats["batches_created"] == 1
    cheap = cheap_decisions(got, settings, values)
    assert len(cheap) == N and {d["lane"] for d in cheap} == {"batch"}
    assert {d["attempt"].get("service_tier") for d in cheap} == {"batch"}
    assert batch_id.startswith("msgbatch_")
    if id_lost:
        final = await collect(kafka_bootstrap, [t.lane_state], lambda c: False, 2, read_for_s=True)
        recorded = [BatchState.from_value(r.value) for r in final.on(t.lane_state) if r.value]
        assert recorded[-1].batch_id == batch_id  # adopted: its id under the intent's key


async def test_errored_and_expired_items_are_answered_in_real_time(
    kafka_bootstrap: str, unique: str
) -> None:
    """A batch whose items partly error (500) and partly expire (not processed in 24 hours):
    those are answered by the real-time path, the others by the batch; every request ends with
    exactly one result and one cheap decision, and no batch is created twice."""
    faults = ("--batch-fault", "errored:0.3", "--batch-fault", "expired:0.3")
    with running_sim("--batch-latency", "3600", *faults) as sim:
        settings = lane_settings(kafka_bootstrap, sim, unique)
        t = settings.topics
        await setup_topics(settings)
        values = requests(N, unique, ["a calm note", "you are an idiot", "buy now cheap pills"])
        async with running_service(settings, ["cheap", "strong", "lane"]):
            await produce(kafka_bootstrap, t.requests, values)

            async def submitted() -> bool:
                return (await sim_stats(sim)).get("batches_created", 0) >= 1

            await wait_for(submitted, timeout_s=60)
            await advance(sim, 25 * 3600)  # past the batch's 24 hours: the rest expire
            got = await answered(kafka_bootstrap, settings)
        stats = await sim_stats(sim)
    assert stats["batches_created"] == 1
    cheap = cheap_decisions(got, settings, values)
    # One cheap decision per request: a batch answer, or the real-time one that replaced it.
    assert sorted(d["id"] for d in cheap) == sorted(orjson.loads(v)["id"] for v in values)
    lanes = [d["lane"] for d in cheap]
    assert lanes.count("batch") >= 1 and lanes.count("realtime") >= 1, lanes
