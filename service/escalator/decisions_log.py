"""Reading and writing the decisions log: from the decisions topic (a time window) or JSONL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from escalator.config import KafkaSettings
from escalator.errors import EscalatorError
from escalator.kafka_io import make_consumer, security_kwargs


def parse_time(value: str | None, name: str) -> int | None:
    """``--since``/``--until``: ISO-8601 (UTC if no zone) or epoch milliseconds -> epoch ms."""
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise EscalatorError(f"{name} {value!r} is not ISO-8601 or epoch milliseconds") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


async def read_topic(
    kafka: KafkaSettings, topic: str, since_ms: int | None = None, until_ms: int | None = None
) -> list[dict[str, Any]]:
    """Every decision in [since, until), read up to the end offsets seen at the start."""
    consumer = make_consumer(kafka, group_id=None, enable_auto_commit=False)  # type: ignore[arg-type]
    try:
        await consumer.start()
        partitions = await topic_partitions(kafka, topic)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        if since_ms is not None:
            found = await consumer.offsets_for_times({tp: since_ms for tp in tps})
            for tp in tps:
                hit = found.get(tp)
                consumer.seek(tp, hit.offset if hit is not None else end[tp])
        else:
            await consumer.seek_to_beginning(*tps)
        out: list[dict[str, Any]] = []
        remaining = {tp for tp in tps if await consumer.position(tp) < end[tp]}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batch.items():
                for r in records:
                    if r.offset >= end[tp]:
                        continue
                    if until_ms is not None and r.timestamp >= until_ms:
                        continue
                    try:
                        value = orjson.loads(r.value)
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(value, dict):
                        out.append(value)
            for tp in list(remaining):
                if await consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
        return out
    finally:
        await consumer.stop()


async def topic_partitions(kafka: KafkaSettings, topic: str) -> list[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers, **security_kwargs(kafka))
    try:
        await admin.start()
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    for entry in described:
        if entry.get("topic") == topic and entry.get("error_code", 0) == 0:
            found = [int(p["partition"]) for p in entry.get("partitions", [])]
            if found:
                return found
    raise EscalatorError(f"topic {topic!r} does not exist")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise EscalatorError(f"{path}: no such file")
    out: list[dict[str, Any]] = []
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise EscalatorError(f"{path}:{number}: not JSON ({exc})") from exc
            if isinstance(value, dict):
                out.append(value)
    return out


def write_jsonl(records: list[dict[str, Any]], stream: IO[bytes]) -> None:
    for rec in records:
        stream.write(orjson.dumps(rec) + b"\n")


def load(
    kafka: KafkaSettings | None,
    topic: str,
    path: Path | None,
    since_ms: int | None,
    until_ms: int | None,
) -> list[dict[str, Any]]:
    if path is not None:
        return [
            r
            for r in read_jsonl(path)
            if (since_ms is None or int(r.get("ts_ms", 0)) >= since_ms)
            and (until_ms is None or int(r.get("ts_ms", 0)) < until_ms)
        ]
    if kafka is None:
        raise EscalatorError("give --input FILE, or set KAFKA_BOOTSTRAP_SERVERS to read the topic")
    return asyncio.run(read_topic(kafka, topic, since_ms, until_ms))
