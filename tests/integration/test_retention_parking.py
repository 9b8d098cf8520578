"""Holds that outlast retention, on the real broker: the account is capped (the emulator's
documented spend-cap 429) while the requests topic keeps records for 12 seconds.

Without parking the broker deletes the held requests and they are lost (the danger is real,
and it is counted). With parking the service copies them to the parked topic before the broker
can delete them, commits past them, reports when the hold began and when the API says it ends
(/readyz, doctor), and after the hold ``escalator parked replay`` sends them back: every
request ends with exactly one result.

The broker deletes within seconds because the session broker checks retention every second
(``tests/conftest.py``: SESSION_BROKER_PROPS). Against a cluster that checks less often
(``KAFKA_BOOTSTRAP_SERVERS`` set to one), this module starts a broker of its own.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from escalator.cli.doctor import check_kafka, check_service
from escalator.config import Settings, load_settings
from escalator.contract.messages import REPLAY_HEADER
from escalator.kafka.admin import config_entries
from escalator.model.holds import first_of_next_month
from escalator.process import Service
from escalator_dev.kafka_local import LocalKafkaCluster
from tests.conftest import SESSION_BROKER_PROPS, running_sim
from tests.integration.harness import (
    collect,
    committed_total,
    make_env,
    produce,
    requests,
    running_service,
    wait_for,
)
from tests.integration.test_measure import run_cli

pytestmark = pytest.mark.integration

RETENTION_MS = 12_000
N = 30
TEXTS = ["a friendly note about the weather", "how do I bake bread", "a question about taxes"]


@pytest.fixture(scope="module")
def retention_bootstrap(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A broker that checks retention every second or so: the session's, or one of our own."""
    if _check_interval_ms(kafka_bootstrap) <= 2000:
        yield kafka_bootstrap
        return
    cluster = LocalKafkaCluster(
        tmp_path_factory.mktemp("kafka-retention"), nodes=1, extra_props=SESSION_BROKER_PROPS
    )
    cluster.start()
    try:
        yield cluster.bootstrap_servers
    finally:
        cluster.stop()


def _check_interval_ms(bootstrap: str) -> int:
    async def read() -> int:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            node = (await admin.describe_cluster())["brokers"][0]["node_id"]
            found = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.BROKER, str(node))]
            )
        finally:
            await admin.close()
        for response in found:
            for configs in config_entries(response).values():
                value = configs.get("log.retention.check.interval.ms")
                if value is not None:
                    return int(value)
        return 300_000

    return asyncio.run(read())


def environment(bootstrap: str, sim: str, unique: str, **extra: str) -> dict[str, str]:
    return make_env(
        bootstrap,
        sim,
        unique,
        ESCALATOR_TOPIC_PARTITIONS="2",
        ESCALATOR_MAX_IN_FLIGHT="4",
        ESCALATOR_SHADOW_RATE="0",
        ESCALATOR_BLOCKED_PROBE_S="0.5",
        ESCALATOR_RETENTION_CHECK_S="0.3",
        ESCALATOR_PARK_AT="0.4",
        **extra,
    )


async def short_retention_requests(settings: Settings) -> None:
    """The requests topic keeps records RETENTION_MS; segments roll every second (Kafka 4
    refuses segment.bytes below 1 MiB, so they roll by time)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    await admin.start()
    try:
        configs = {
            "retention.ms": str(RETENTION_MS),
            "segment.ms": "1000",
            "segment.bytes": str(1024 * 1024),
        }
        topic = NewTopic(settings.topics.requests, 2, 1, topic_configs=configs)
        response = await admin.create_topics([topic])
        assert all(e[1] == 0 for e in response.topic_errors), response.topic_errors
    finally:
        await admin.close()


async def sim_faults(sim: str, faults: dict[str, float]) -> None:
    async with aiohttp.ClientSession() as session:
        response = await session.post(f"{sim}/_sim/config", json={"faults": faults})
        assert response.status == 200, await response.text()


async def bounds(bootstrap: str, topic: str) -> tuple[int, int]:
    """(records deleted by the broker, records ever written), summed over partitions."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in (0, 1)]
        start = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    return sum(start.values()), sum(end.values())


def metric(service: Service, name: str, **labels: str) -> float:
    return service.metrics.registry.get_sample_value(name, labels) or 0.0


async def readyz(service: Service) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{service.health_port}/readyz") as response,
    ):
        body: dict[str, Any] = await response.json()
        assert response.status == 503
        return body


@asynccontextmanager
async def capped(env: dict[str, str], sim: str) -> AsyncIterator[tuple[Service, Settings]]:
    """The service running with both tiers, N requests produced, the account capped."""
    settings = load_settings(env)
    await short_retention_requests(settings)
    async with running_service(env, ["cheap", "strong"]) as service:
        await sim_faults(sim, {"spend-cap": 1.0})
        await produce(
            settings.kafka.bootstrap_servers,
            settings.topics.requests,
            requests(N, env["ESCALATOR_REQUESTS_TOPIC"], TEXTS),
            keys=[f"k{i}".encode() for i in range(N)],
            headers=[("traceparent", b"00-abc-01")],
        )
        await wait_for(lambda: any(h.held for h in service.health()), 60)
        yield service, settings


@pytest.mark.timeout(240)
async def test_without_parking_the_broker_deletes_held_requests(
    retention_bootstrap: str, unique: str
) -> None:
    """The danger: a hold longer than retention loses the requests the tier never fetched;
    the watch counts them, and only those it held in memory get a result."""
    with running_sim() as sim:
        env = environment(retention_bootstrap, sim, unique, ESCALATOR_PARKING="false")
        async with capped(env, sim) as (service, settings):
            topic = settings.topics.requests
            await wait_for(lambda: _all_deleted(retention_bootstrap, topic), 90, 1.0)
            await wait_for(
                lambda: (
                    metric(service, "escalator_retention_lost_total", tier="cheap", topic=topic) > 0
                ),
                30,
            )
            await sim_faults(sim, {})
            await wait_for(lambda: not any(h.held for h in service.health()), 60)
            lost = metric(service, "escalator_retention_lost_total", tier="cheap", topic=topic)
            # What the tier held in memory is answered after the hold; the rest is gone.
            got = await collect(
                retention_bootstrap,
                [settings.topics.results, settings.topics.escalations],
                lambda c: len(_answered(c, settings)) >= N - lost,
                timeout_s=60,
                linger_s=2,
            )
            parked = metric(service, "escalator_parked_total", tier="cheap", topic=topic)
    answered = _answered(got, settings)
    assert parked == 0
    assert 0 < len(answered) < N, "some requests never got an answer: the broker deleted them"
    assert lost == N - len(answered), "every request without an answer was counted as lost"


def _answered(got: Any, settings: Settings) -> set[str]:
    """Request ids with a result, or handed on to the strong tier (answered by the cheap one)."""
    return {
        orjson.loads(r.value)["id"] if r.topic == settings.topics.results
        else orjson.loads(r.value)["request"]["id"]
        for r in got.records
    }  # fmt: skip


async def _all_deleted(bootstrap: str, topic: str) -> bool:
    deleted, written = await bounds(bootstrap, topic)
    return written == N and deleted == written


async def _committed(bootstrap: str, group: str, topic: str, written: int) -> bool:
    return await committed_total(bootstrap, group, topic) >= written


@pytest.mark.timeout(300)
@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_with_parking_nothing_is_lost_and_replay_answers_each_request_once(
    retention_bootstrap: str, unique: str, guarantee: str
) -> None:
    """Parked before the broker deletes (under either guarantee); the hold's start and end
    reported; after the hold, one replay; each request ends with exactly one result, traceable
    to its parked copy."""
    with running_sim() as sim:
        env = environment(
            retention_bootstrap,
            sim,
            unique,
            ESCALATOR_PROCESSING_GUARANTEE=guarantee,
            ESCALATOR_TRANSACTIONAL_ID_PREFIX=f"tx-{unique}",
        )
        async with capped(env, sim) as (service, settings):
            topic = settings.topics.requests
            body = await readyz(service)
            cheap = next(t for t in body["tiers"] if t["tier"] == "cheap")
            assert cheap["held"] == "spend_limit" and cheap["held_since"]
            ends = first_of_next_month(time.time())
            assert cheap["hold_ends"] == time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(ends))
            await wait_for(
                lambda: metric(service, "escalator_parked_total", tier="cheap", topic=topic) >= N,
                60,
            )
            group = env["ESCALATOR_CHEAP_GROUP"]
            await wait_for(lambda: _committed(retention_bootstrap, group, topic, N), 30)
            # Retention does delete them now, and nothing is lost: the copies are safe.
            await wait_for(lambda: _all_deleted(retention_bootstrap, topic), 90, 1.0)
            assert metric(service, "escalator_retention_lost_total", tier="cheap", topic=topic) == 0

            doctor = {c.name: c for c in await check_kafka(settings)}
            parked_check = doctor[f"topic {settings.topics.parked}"]
            assert not parked_check.ok and f"{N} parked record(s) wait" in parked_check.detail
            assert "(spend_limit) that began at" in parked_check.detail
            held = await check_service(
                load_settings({**env, "ESCALATOR_METRICS_PORT": str(service.health_port)})
            )
            line = next(c for c in held if c.name == "service cheap")
            assert not line.ok and "held (spend_limit) since" in line.detail
            assert "the API says it ends at" in line.detail

            # The cap is raised. Every held record was parked, so no call is left to probe the
            # API with: the tier notices when replayed (or new) records call it.
            await sim_faults(sim, {})
            refused = await asyncio.to_thread(run_cli, env, "parked", "replay")
            assert refused.returncode == 2, refused.stdout + refused.stderr
            assert len(refused.stderr.strip().splitlines()) == 1
            assert "the API said the hold ends at" in refused.stderr
            replay = await asyncio.to_thread(run_cli, env, "parked", "replay", "--force")
            assert replay.returncode == 0, replay.stderr
            assert f"replayed {N} record(s)" in replay.stdout
            again = await asyncio.to_thread(run_cli, env, "parked", "summary")
            passed = re.search(
                r"0 waiting to be replayed; the replay group is past (\d+)", again.stdout
            )
            # Offsets, not records: exactly-once parking leaves transaction markers among them.
            assert passed is not None and int(passed.group(1)) >= N, again.stdout

            got = await collect(
                retention_bootstrap,
                [settings.topics.results, settings.topics.dead_letter],
                lambda c: len(c.results_by_id(settings.topics.results)) >= N,
                timeout_s=120,
                linger_s=2,
                isolation_level="read_committed",
            )
            assert not any(h.held for h in service.health()), service.health()
    results = got.results_by_id(settings.topics.results)
    ids = {f"{env['ESCALATOR_REQUESTS_TOPIC']}-{i}" for i in range(N)}
    assert set(results) == ids
    assert all(len(v) == 1 for v in results.values()), "exactly one result per request"
    assert got.on(settings.topics.dead_letter) == []
    for record in got.on(settings.topics.results):
        headers = dict(record.headers)
        assert headers["traceparent"] == b"00-abc-01"
        assert headers[REPLAY_HEADER].startswith(settings.topics.parked.encode() + b"/")
