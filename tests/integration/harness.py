"""Helpers for pipeline tests: environments, an in-process service, produce/collect/offsets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import jsonschema
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from referencing import Registry, Resource

from escalator.app import build_service
from escalator.config import Settings, load_settings
from escalator.kafka.clients import create_topics
from escalator.process import Service


def make_env(bootstrap: str, sim_url: str, unique: str, **overrides: str) -> dict[str, str]:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "ANTHROPIC_BASE_URL": sim_url,
        "ESCALATOR_REQUESTS_TOPIC": f"req-{unique}",
        "ESCALATOR_ESCALATIONS_TOPIC": f"esc-{unique}",
        "ESCALATOR_RESULTS_TOPIC": f"res-{unique}",
        "ESCALATOR_DEAD_LETTER_TOPIC": f"dlq-{unique}",
        "ESCALATOR_DECISIONS_TOPIC": f"dec-{unique}",
        "ESCALATOR_REVIEWS_TOPIC": f"rev-{unique}",
        "ESCALATOR_ADJUDICATIONS_TOPIC": f"adj-{unique}",
        "ESCALATOR_PARKED_TOPIC": f"parked-{unique}",
        "ESCALATOR_PARKED_REPLAY_GROUP": f"parked-replay-{unique}",
        "ESCALATOR_REVIEW_GROUP": f"review-{unique}",
        "ESCALATOR_CHEAP_GROUP": f"cheap-{unique}",
        "ESCALATOR_STRONG_GROUP": f"strong-{unique}",
        "ESCALATOR_METRICS_PORT": "0",
        "ESCALATOR_COMMIT_INTERVAL_S": "0.5",
        "ESCALATOR_BACKOFF_INITIAL_S": "0.05",
        "ESCALATOR_BACKOFF_MAX_S": "0.5",
        "ESCALATOR_TOPIC_PARTITIONS": "4",
    }
    env.update(overrides)
    return env


async def setup_topics(settings: Settings) -> None:
    t = settings.topics
    await create_topics(
        settings.kafka,
        t.all(),
        settings.topic_partitions,
        1,
    )


@asynccontextmanager
async def running_service(
    env: dict[str, str] | Settings, tiers: list[str]
) -> AsyncIterator[Service]:
    """Run the service in this process until the block ends; wait until it has joined.
    ``env``: the environment, or settings already loaded (and adjusted)."""
    settings = env if isinstance(env, Settings) else load_settings(env)
    await setup_topics(settings)
    service = build_service(settings, tiers)
    ready = asyncio.Event()
    task = asyncio.create_task(service.run(install_signals=False, on_ready=ready.set))
    try:
        await asyncio.wait_for(ready.wait(), 60)
        yield service
    finally:
        service.stop()
        await asyncio.wait_for(task, 60)


async def produce(
    bootstrap: str,
    topic: str,
    values: list[bytes],
    keys: list[bytes | None] | None = None,
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        futures = []
        for i, value in enumerate(values):
            key = keys[i] if keys else None
            futures.append(await producer.send(topic, value, key=key, headers=headers or []))
        for fut in futures:
            await fut
    finally:
        await producer.stop()


def requests(n: int, prefix: str, texts: list[str]) -> list[bytes]:
    return [
        orjson.dumps({"id": f"{prefix}-{i}", "text": texts[i % len(texts)], "metadata": {"i": i}})
        for i in range(n)
    ]


@dataclass
class Collected:
    records: list[Any] = field(default_factory=list)

    def on(self, topic: str) -> list[Any]:
        return [r for r in self.records if r.topic == topic]

    def results_by_id(self, topic: str) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for r in self.on(topic):
            value = orjson.loads(r.value)
            out.setdefault(value["id"], []).append(value)
        return out


async def collect(
    bootstrap: str,
    topics: list[str],
    until: Callable[[Collected], bool],
    timeout_s: float = 60,
    *,
    linger_s: float = 0.0,
    read_for_s: bool = False,
    isolation_level: str = "read_uncommitted",
) -> Collected:
    """Read the topics from the start until ``until`` holds (then linger). A timeout fails the
    test, naming what was read: a test that went on with what it had would check nothing
    about the records that never came. ``read_for_s``: read for ``timeout_s`` and return
    what came (for tests that check that something did not happen)."""
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level=isolation_level,
    )
    await consumer.start()
    got = Collected()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    try:
        while loop.time() < deadline and not until(got):
            batch = await consumer.getmany(timeout_ms=300)
            for records in batch.values():
                got.records.extend(records)
        if not read_for_s and not until(got):
            counts = {t: len(got.on(t)) for t in topics}
            raise AssertionError(f"collect: not done after {timeout_s} s; read {counts}")
        end = loop.time() + linger_s
        while loop.time() < end:
            batch = await consumer.getmany(timeout_ms=300)
            for records in batch.values():
                got.records.extend(records)
    finally:
        await consumer.stop()
    return got


async def committed_total(bootstrap: str, group: str, topic: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset > 0)


async def wait_for(
    check: Callable[[], Any], timeout_s: float = 30, interval_s: float = 0.25
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval_s)


def _schema(name: str) -> dict[str, Any]:
    raw = (resources.files("escalator.contract") / "schemas" / name).read_text()
    loaded: dict[str, Any] = json.loads(raw)
    return loaded


def validator(name: str) -> jsonschema.protocols.Validator:
    """A Draft 2020-12 validator for one of the contract schemas, with $refs resolved."""
    registry: Registry[Any] = Registry()
    for other in (
        "request.v1.json",
        "result.v1.json",
        "escalation.v1.json",
        "decision.v1.json",
        "review.v1.json",
    ):
        schema = _schema(other)
        registry = registry.with_resource(schema["$id"], Resource.from_contents(schema))
    cls = jsonschema.Draft202012Validator
    return cls(_schema(name), registry=registry, format_checker=cls.FORMAT_CHECKER)
