"""Reading and writing the decisions log: from the decisions topic (a time window) or JSONL."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import IO, Any

import orjson

from escalator.config import KafkaSettings
from escalator.errors import EscalatorError
from escalator.kafka.clients import read_to_end


async def read_topic(
    kafka: KafkaSettings, topic: str, since_ms: int | None = None, until_ms: int | None = None
) -> list[dict[str, Any]]:
    """Every decision in [since, until), read up to the end offsets seen at the start."""
    out: list[dict[str, Any]] = []
    async for record in read_to_end(kafka, topic, since_ms=since_ms):
        if until_ms is not None and record.timestamp >= until_ms:
            continue
        try:
            value = orjson.loads(record.value or b"")
        except orjson.JSONDecodeError:
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


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


def with_late_decisions(
    records: list[dict[str, Any]], until_ms: int | None
) -> list[dict[str, Any]]:
    """The window's records (before ``until_ms``) plus the human decisions made after it for
    the window's own requests: a person decides minutes or hours after the request, and the
    window is defined by its requests, not by when people got to them. ``records`` is
    everything read from ``--since`` on, ``--until`` not applied."""
    if until_ms is None:
        return records

    def ts(r: dict[str, Any]) -> int:
        value = r.get("ts_ms")
        return int(value) if isinstance(value, int | float) else 0

    window = [r for r in records if ts(r) < until_ms]
    ids = {r.get("id") for r in window if (r.get("attempt") or {}).get("tier") == "cheap"}
    late = [
        r
        for r in records
        if ts(r) >= until_ms
        and (r.get("attempt") or {}).get("tier") == "human"
        and r.get("id") in ids
    ]
    return window + late
