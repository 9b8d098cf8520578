"""The batch lane end to end: real broker, real SDK, the emulator's Message Batches API in its
own process. A lane worker stopped, or SIGKILLed in its own process, after its batch is
submitted and before its results: the next one polls the same batch (no batch created twice,
each request billed once). Errored and expired items, and a batch that would miss its
deadline, are answered in real time before the deadline. A second lane worker joining and
leaving mid-batch loses and duplicates nothing. Every request ends with exactly one result,
and every batch is closed on the state topic once its members are committed.

The fault tests drive load until the fault has happened (a batch submitted, a rebalance, an
errored and an expired item), then drain: never sized by the machine's speed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2 as httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from escalator.config import Settings, load_settings
from escalator.lane.assembly import custom_id
from escalator.lane.state import BatchState, open_batches
from escalator.model.stack import SIM_API_KEY
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
from tests.reliability.common import ServiceProcess

N = 12


def lane_env(bootstrap: str, sim: str, unique: str, **overrides: str) -> dict[str, str]:
    return make_env(
        bootstrap,
        sim,
        unique,
        **{
            "ESCALATOR_SHADOW_RATE": "0",
            "ESCALATOR_HANDOFF_TOPIC": f"handoff-{unique}",
            "ESCALATOR_LANE_STATE_TOPIC": f"lane-state-{unique}",
            "ESCALATOR_LANE_GROUP": f"lane-{unique}",
            "ESCALATOR_DEADLINE_S": "86400",
            "ESCALATOR_BATCH_EXPECTED_S": "60",
            "ESCALATOR_BATCH_MAX_AGE_S": "2",
            "ESCALATOR_BATCH_POLL_S": "0.5",
            "ESCALATOR_SHUTDOWN_GRACE_S": "2",
            "ESCALATOR_BATCH_LANE": "on",
            **overrides,
        },
    )


def lane_settings(bootstrap: str, sim: str, unique: str) -> Settings:
    return load_settings(lane_env(bootstrap, sim, unique))


async def sim_config(sim: str, **changes: float) -> None:
    """Change the emulator's batch settings (POST /_sim/config): ``batch_advance_s`` moves its
    batch clock forward, ``batch_latency_s`` sets the processing time of batches created next."""
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(f"{sim}/_sim/config", json=changes)
        response.raise_for_status()


async def advance(sim: str, seconds: float) -> None:
    """Move the emulator's batch clock forward."""
    await sim_config(sim, batch_advance_s=seconds)


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


async def emulator_batches(sim: str) -> dict[str, list[tuple[str, str]] | None]:
    """Every batch the emulator holds, through the SDK: its items' (custom id, result type)
    once it has ended, None while it runs."""
    client = anthropic.AsyncAnthropic(base_url=sim, api_key=SIM_API_KEY, max_retries=0)
    out: dict[str, list[tuple[str, str]] | None] = {}
    async with client:
        async for batch in client.messages.batches.list(limit=100):
            if batch.processing_status != "ended":
                out[batch.id] = None
                continue
            lines = await client.messages.batches.results(batch.id)
            out[batch.id] = [(line.custom_id, line.result.type) async for line in lines]
    return out


def billed_once(batches: dict[str, list[tuple[str, str]] | None], stats: dict[str, Any]) -> int:
    """Every batch has ended, no custom id is in two batches (none resubmitted), and the
    emulator answered (billed) each succeeded item once (errored and expired items are not
    billed); how many items there were."""
    items = [(cid, kind) for members in batches.values() for cid, kind in members or []]
    assert None not in batches.values(), batches
    assert len(items) == len({cid for cid, _ in items}), "a request was submitted twice"
    assert stats["batches_created"] == len(batches)
    answered = sum(v for k, v in stats.items() if k.startswith("batch_answered:"))
    assert answered == sum(kind == "succeeded" for _, kind in items)
    return len(items)


async def state_records(bootstrap: str, topic: str) -> list[tuple[bytes, bytes | None]]:
    got = await collect(bootstrap, [topic], lambda c: False, 1.5, read_for_s=True)
    return [(r.key or b"", r.value) for r in got.on(topic)]


async def recorded_ids(bootstrap: str, topic: str) -> set[str]:
    """The batch ids recorded on the state topic."""
    return {
        s.batch_id
        for _, v in await state_records(bootstrap, topic)
        if v is not None and (s := BatchState.from_value(v)).batch_id
    }


async def all_closed(bootstrap: str, topic: str) -> bool:
    return open_batches(await state_records(bootstrap, topic)) == {}


class Feeder:
    """Produces requests a few at a time until stopped: the load a fault test drives until its
    fault has happened. ``ids`` are those sent (acknowledged)."""

    def __init__(self, bootstrap: str, topic: str, prefix: str) -> None:
        self.bootstrap, self.topic, self.prefix = bootstrap, topic, prefix
        self.ids: list[str] = []
        self.stop = asyncio.Event()

    async def run(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, enable_idempotence=True)
        await producer.start()
        texts = ["a calm note", "you are an idiot", "buy now cheap pills"]
        try:
            while not self.stop.is_set():
                for _ in range(3):
                    i = len(self.ids)
                    rid = f"{self.prefix}-{i}"
                    value = orjson.dumps({"id": rid, "text": texts[i % len(texts)]})
                    await producer.send_and_wait(self.topic, value)
                    self.ids.append(rid)
                await asyncio.sleep(0.2)
        finally:
            await producer.stop()


@contextlib.asynccontextmanager
async def feeding(bootstrap: str, topic: str, prefix: str) -> AsyncIterator[Feeder]:
    feeder = Feeder(bootstrap, topic, prefix)
    task = asyncio.create_task(feeder.run())
    try:
        yield feeder
    finally:
        feeder.stop.set()  # the send under way completes: ``ids`` is exactly what was sent
        await asyncio.wait_for(task, 30)
    assert feeder.ids, "nothing was produced"


async def drained(bootstrap: str, settings: Settings, ids: list[str]) -> Collected:
    """Results and decisions once every id has a result (then 2 s more, to see duplicates);
    exactly one result per id."""
    t = settings.topics
    got = await collect(
        bootstrap,
        [t.results, t.decisions],
        lambda c: len(c.results_by_id(t.results)) >= len(ids),
        timeout_s=120,
        linger_s=2,
    )
    by_id = got.results_by_id(t.results)
    assert sorted(by_id) == sorted(ids)
    assert all(len(results) == 1 for results in by_id.values()), "a request answered twice"
    return got


def cheap_lanes(got: Collected, settings: Settings) -> dict[str, list[str]]:
    """The lane of each request's cheap decisions, by request id."""
    out: dict[str, list[str]] = {}
    for r in got.on(settings.topics.decisions):
        d = orjson.loads(r.value)
        if d["attempt"]["tier"] == "cheap":
            out.setdefault(d["id"], []).append(d["lane"])
    return out


@pytest.mark.timeout(400)
async def test_a_lane_worker_sigkilled_mid_batch_resumes_the_same_batch(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    """The lane worker runs in its own process while requests keep coming; once one of its
    batches is submitted and recorded it is SIGKILLed (no drain, no commit), before any
    result. A new worker polls those batches (and adopts any created but not recorded): every
    request ends with exactly one result, a batch answer; no request is submitted in two
    batches and each batch item is answered (billed) once; every batch ends closed."""
    with running_sim("--batch-latency", "3600") as sim:
        env = lane_env(kafka_bootstrap, sim, unique)
        settings = load_settings(env)
        t = settings.topics
        await setup_topics(settings)
        async with running_service(settings, ["cheap", "strong"]):
            killed = ServiceProcess(env, "lane", tmp_path / "lane-killed.log")
            killed.start()
            try:
                async with feeding(kafka_bootstrap, t.requests, unique) as feeder:

                    async def submitted() -> bool:
                        return bool(await recorded_ids(kafka_bootstrap, t.lane_state))

                    await wait_for(submitted, timeout_s=90)
                    killed.kill()
            finally:
                if killed.alive():
                    killed.kill()
            before = await recorded_ids(kafka_bootstrap, t.lane_state)
            running = await emulator_batches(sim)
            assert before and all(running[b] is None for b in before), "killed before results"
            # From here batches end: the killed worker's at once, new ones within a second.
            await sim_config(sim, batch_latency_s=1, batch_advance_s=2 * 3600)
            resumed = ServiceProcess(env, "lane", tmp_path / "lane-resumed.log")
            resumed.start()
            try:
                got = await drained(kafka_bootstrap, settings, feeder.ids)
                await wait_for(lambda: all_closed(kafka_bootstrap, t.lane_state), timeout_s=60)
            finally:
                assert resumed.terminate() == 0
        batches = await emulator_batches(sim)
        stats = await sim_stats(sim)
    assert billed_once(batches, stats) == len(feeder.ids)
    assert before <= set(batches)
    lanes = cheap_lanes(got, settings)
    assert lanes == {rid: ["batch"] for rid in feeder.ids}


@pytest.mark.timeout(400)
async def test_lane_workers_joining_and_leaving_mid_batch_lose_and_duplicate_nothing(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    """Requests keep coming while a lane worker has a batch in flight; a second worker joins
    (the hand-off partitions are split: records waiting for a batch move with them), submits
    a batch of its own and leaves (they move back); a third joins. The batches end while two
    workers share them: every request has exactly one result, a batch answer; no request was
    in two batches, each item billed once; every batch, its members answered and committed by
    two workers, ends closed on the state topic."""
    with running_sim("--batch-latency", "3600") as sim:
        env = lane_env(kafka_bootstrap, sim, unique)
        settings = load_settings(env)
        t = settings.topics
        await setup_topics(settings)
        first = ServiceProcess(env, "lane", tmp_path / "lane-first.log")
        second = ServiceProcess(env, "lane", tmp_path / "lane-second.log")
        third = ServiceProcess(env, "lane", tmp_path / "lane-third.log")
        async with running_service(settings, ["cheap", "strong"]):
            first.start()
            try:
                async with feeding(kafka_bootstrap, t.requests, unique) as feeder:

                    async def submitted(more_than: int) -> bool:
                        ids = await recorded_ids(kafka_bootstrap, t.lane_state)
                        return len(ids) > more_than

                    await wait_for(lambda: submitted(0), timeout_s=90)
                    joined_at = len(await recorded_ids(kafka_bootstrap, t.lane_state))
                    second.start()
                    await wait_for(
                        lambda: second.assignments() >= 1 and first.assignments() >= 2,
                        timeout_s=90,
                    )
                    await wait_for(lambda: submitted(joined_at), timeout_s=90)
                    assert second.terminate() == 0  # leaves the group: a second rebalance
                    await wait_for(lambda: first.assignments() >= 3, timeout_s=90)
                    third.start()
                    await wait_for(
                        lambda: third.assignments() >= 1 and first.assignments() >= 4,
                        timeout_s=90,
                    )
                assert not any((await emulator_batches(sim)).values()), "ended mid-test"
                await sim_config(sim, batch_latency_s=1, batch_advance_s=2 * 3600)
                got = await drained(kafka_bootstrap, settings, feeder.ids)
                await wait_for(lambda: all_closed(kafka_bootstrap, t.lane_state), timeout_s=60)
            finally:
                codes = [first.terminate(), second.terminate(), third.terminate()]
        assert codes == [0, 0, 0]
        batches = await emulator_batches(sim)
        stats = await sim_stats(sim)
    assert billed_once(batches, stats) == len(feeder.ids)
    assert len(batches) >= 2
    lanes = cheap_lanes(got, settings)
    assert lanes == {rid: ["batch"] for rid in feeder.ids}


def deadline_env(bootstrap: str, sim: str, unique: str, deadline_s: int) -> dict[str, str]:
    """A deadline of ``deadline_s``, short enough to check and long enough for the rule
    (slack 2 x (1 + 5) + 10 = 22 s) to send each request to the lane."""
    return lane_env(
        bootstrap,
        sim,
        unique,
        ESCALATOR_DEADLINE_S=str(deadline_s),
        ESCALATOR_BATCH_EXPECTED_S="5",
        ESCALATOR_BATCH_MAX_AGE_S="1",
        ESCALATOR_BATCH_FALLBACK_S="10",
    )


async def in_time(bootstrap: str, settings: Settings, got: Collected, deadline_s: int) -> None:
    """Every result was written before its request's deadline (its record's timestamp plus
    its own ``deadline_s``, else ``deadline_s``)."""
    t = settings.topics
    sent = await collect(bootstrap, [t.requests], lambda c: False, 2, read_for_s=True)
    due = {
        v["id"]: r.timestamp + v.get("deadline_s", deadline_s) * 1000
        for r in sent.records
        for v in [orjson.loads(r.value)]
    }
    late = [
        (rid, r.timestamp - due[rid])
        for r in got.on(t.results)
        for rid in [orjson.loads(r.value)["id"]]
        if r.timestamp > due[rid]
    ]
    assert late == [], f"results after their deadline (id, ms late): {late}"


@pytest.mark.timeout(300)
async def test_errored_and_expired_items_are_answered_in_real_time_before_their_deadline(
    kafka_bootstrap: str, unique: str
) -> None:
    """Batches whose items partly error (500) and partly expire (not processed in 24 hours):
    requests come a few at a time, and each batch is taken past its 24 hours once created,
    until an errored and an expired item have both happened. Each errored or expired item's
    request is answered by the real-time path, each succeeded one by the batch, all before
    the request's 60-second deadline; one result and one cheap decision per request; every
    batch item billed once; the fallbacks counted by result."""
    deadline_s = 60
    faults = ("--batch-fault", "errored:0.3", "--batch-fault", "expired:0.3")
    with running_sim("--batch-latency", "3600", *faults) as sim:
        settings = load_settings(deadline_env(kafka_bootstrap, sim, unique, deadline_s))
        t = settings.topics
        await setup_topics(settings)
        ids: list[str] = []
        async with running_service(settings, ["cheap", "strong", "lane"]) as service:
            kinds: set[str] = set()
            for n in range(40):
                if {"errored", "expired"} <= kinds:
                    break
                chunk = [f"{unique}-{n}-{i}" for i in range(4)]
                texts = ["a calm note", "you are an idiot", "buy now cheap pills"]
                await produce(
                    kafka_bootstrap,
                    t.requests,
                    [orjson.dumps({"id": r, "text": texts[i % 3]}) for i, r in enumerate(chunk)],
                )
                ids += chunk
                seen = await sim_stats(sim)

                async def created(before: int = seen.get("batches_created", 0)) -> bool:
                    return (await sim_stats(sim)).get("batches_created", 0) > before

                await wait_for(created, timeout_s=30)
                await advance(sim, 25 * 3600)  # past the 24 hours of every batch so far
                kinds = {k for b in (await emulator_batches(sim)).values() for _, k in b or []}
            else:
                raise AssertionError(f"no errored and expired item in 40 rounds: {kinds}")

            async def every_batch_ended() -> bool:
                await advance(sim, 25 * 3600)  # a batch cut late is taken past its hours too
                return None not in (await emulator_batches(sim)).values()

            got = await drained(kafka_bootstrap, settings, ids)
            await wait_for(every_batch_ended, timeout_s=30)
            fallbacks = {
                kind: service.metrics.registry.get_sample_value(
                    "escalator_lane_fallbacks_total", {"result": kind}
                )
                or 0
                for kind in ("errored", "expired", "deadline")
            }
            missed = service.metrics.registry.get_sample_value(
                "escalator_lane_deadline_misses_total"
            )
        batches = await emulator_batches(sim)
        stats = await sim_stats(sim)
        handed = await collect(kafka_bootstrap, [t.handoff], lambda c: False, 2, read_for_s=True)
    assert billed_once(batches, stats) == len(ids)
    request_of = {
        custom_id(r.partition, r.offset): orjson.loads(r.value)["id"] for r in handed.records
    }
    kind_of = {request_of[cid]: kind for b in batches.values() for cid, kind in b or []}
    lanes = cheap_lanes(got, settings)
    assert sorted(kind_of) == sorted(lanes) == sorted(ids)
    expected = {
        rid: ["batch" if kind == "succeeded" else "realtime"] for rid, kind in kind_of.items()
    }
    assert lanes == expected
    counted = list(kind_of.values())
    assert fallbacks == {
        "errored": counted.count("errored"),
        "expired": counted.count("expired"),
        "deadline": 0,
    }
    assert missed == 0
    await in_time(kafka_bootstrap, settings, got, deadline_s)


@pytest.mark.timeout(300)
async def test_a_batch_that_would_miss_the_deadline_is_answered_in_real_time_in_time(
    kafka_bootstrap: str, unique: str
) -> None:
    """A batch that does not end (the emulator's clock stands still): each request waits for
    it only until its 30-second deadline less the 10-second fallback margin, then is answered
    in real time, before the deadline; one result per request; the fallbacks counted."""
    deadline_s = 30
    with running_sim("--batch-latency", "3600") as sim:
        settings = load_settings(deadline_env(kafka_bootstrap, sim, unique, deadline_s))
        t = settings.topics
        await setup_topics(settings)
        values = requests(N, unique, ["a calm note", "you are an idiot", "buy now cheap pills"])
        ids = [orjson.loads(v)["id"] for v in values]
        async with running_service(settings, ["cheap", "strong", "lane"]) as service:
            await produce(kafka_bootstrap, t.requests, values)
            got = await drained(kafka_bootstrap, settings, ids)
            registry = service.metrics.registry
            deadline = registry.get_sample_value(
                "escalator_lane_fallbacks_total", {"result": "deadline"}
            )
            missed = registry.get_sample_value("escalator_lane_deadline_misses_total")
        stats = await sim_stats(sim)
    assert stats["batches_created"] >= 1 and deadline == N and missed == 0
    assert cheap_lanes(got, settings) == {rid: ["realtime"] for rid in ids}
    await in_time(kafka_bootstrap, settings, got, deadline_s)


@pytest.mark.timeout(300)
async def test_the_lane_keeps_the_processing_queue_under_its_limit_and_the_rpm_budget(
    kafka_bootstrap: str, unique: str
) -> None:
    """The emulated organisation allows 30 batch requests in the processing queue and 60
    requests a minute to the batch endpoints (``--batch-limits 60:30``); the lane is told 30
    and 50 (ESCALATOR_LANE_QUEUE_LIMIT, ESCALATOR_LANE_RPM). 90 requests at once, a third of
    them due within 40 s: the lane cuts batches of at most 30 and sends the next only once the
    one before has ended (held, counted), paces its calls, and never meets a 429 (the emulator
    counts none, for the queue or the rate); each batch item billed once; every request has
    exactly one result, before its deadline (the urgent ones the held batches cannot serve in
    time go real time by the deadline fallback)."""
    deadline_s, urgent_s, n = 86400, 40, 90
    with running_sim("--batch-latency", "3", "--batch-limits", "60:30") as sim:
        env = deadline_env(kafka_bootstrap, sim, unique, deadline_s)
        env.update(ESCALATOR_LANE_QUEUE_LIMIT="30", ESCALATOR_LANE_RPM="50")
        settings = load_settings(env)
        t = settings.topics
        await setup_topics(settings)
        texts = ["a calm note", "you are an idiot", "buy now cheap pills"]
        values = [
            orjson.dumps(
                {"id": f"{unique}-{i}", "text": texts[i % 3]}
                | ({"deadline_s": urgent_s} if i % 3 == 0 else {})
            )
            for i in range(n)
        ]
        ids = [orjson.loads(v)["id"] for v in values]
        async with running_service(settings, ["cheap", "strong", "lane"]) as service:
            await produce(kafka_bootstrap, t.requests, values)
            got = await drained(kafka_bootstrap, settings, ids)
            registry = service.metrics.registry
            holds = registry.get_sample_value("escalator_lane_queue_holds_total")
            limited = registry.get_sample_value("escalator_lane_rate_limited_total")
            missed = registry.get_sample_value("escalator_lane_deadline_misses_total")
        batches = await emulator_batches(sim)
        stats = await sim_stats(sim)
    refused = {k: v for k, v in stats.items() if k in ("batch_rate_limited", "batch_status:429")}
    assert refused == {} and limited == 0, stats
    assert holds is not None and holds >= 1
    assert len(batches) >= 3 and all(len(b or []) <= 30 for b in batches.values())
    in_batches = billed_once(batches, stats)
    lanes = cheap_lanes(got, settings)
    assert sorted(lanes) == sorted(ids) and all(len(v) == 1 for v in lanes.values())
    answered_by_batch = sum(v == ["batch"] for v in lanes.values())
    assert answered_by_batch >= n - n // 3 and in_batches >= answered_by_batch
    assert missed == 0
    await in_time(kafka_bootstrap, settings, got, deadline_s)
