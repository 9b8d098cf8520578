"""Reading and writing the decisions log: from the decisions topic (a time window) or JSONL,
as :class:`~escalator.contract.decisions.Decision` records (what is not a decision is
skipped)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import IO

import orjson

from escalator.config import KafkaSettings
from escalator.contract.decisions import HUMAN, Decision, NotADecision
from escalator.errors import EscalatorError
from escalator.kafka.clients import read_to_end


async def read_topic(
    kafka: KafkaSettings, topic: str, since_ms: int | None = None, until_ms: int | None = None
) -> list[Decision]:
    """Every decision in [since, until), read up to the end offsets seen at the start."""
    out: list[Decision] = []
    async for record in read_to_end(kafka, topic, since_ms=since_ms):
        if until_ms is not None and record.timestamp >= until_ms:
            continue
        try:
            out.append(Decision.from_json(record.value or b""))
        except NotADecision:
            continue
    return out


def read_jsonl(path: Path) -> list[Decision]:
    if not path.is_file():
        raise EscalatorError(f"{path}: no such file")
    out: list[Decision] = []
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise EscalatorError(f"{path}:{number}: not JSON ({exc})") from exc
            try:
                out.append(Decision.from_dict(value))
            except NotADecision:
                continue
    return out


def write_jsonl(records: list[Decision], stream: IO[bytes]) -> None:
    """One line per record: as it was read (``Decision.raw``), or as this version writes it."""
    for rec in records:
        line = orjson.dumps(rec.raw) if rec.raw is not None else rec.value()
        stream.write(line + b"\n")


def load(
    kafka: KafkaSettings | None,
    topic: str,
    path: Path | None,
    since_ms: int | None,
    until_ms: int | None,
) -> list[Decision]:
    if path is not None:
        return [
            r
            for r in read_jsonl(path)
            if (since_ms is None or r.ts_ms >= since_ms)
            and (until_ms is None or r.ts_ms < until_ms)
        ]
    if kafka is None:
        raise EscalatorError("give --input FILE, or set KAFKA_BOOTSTRAP_SERVERS to read the topic")
    return asyncio.run(read_topic(kafka, topic, since_ms, until_ms))


def with_late_decisions(records: list[Decision], until_ms: int | None) -> list[Decision]:
    """The window's records (before ``until_ms``) plus the human decisions and the shadow
    (measurement) decisions made after it for the window's own requests: a person decides
    minutes or hours after the request, a shadow measured through the batch lane lands up to
    a day after it, and the window is defined by its requests, not by when their measurement
    came. ``records`` is everything read from ``--since`` on, ``--until`` not applied."""
    if until_ms is None:
        return records
    window = [r for r in records if r.ts_ms < until_ms]
    ids = {r.id for r in window if r.tier == "cheap" and not r.shadow}
    late = [r for r in records if r.ts_ms >= until_ms and r.id in ids and _late_kind(r)]
    return window + late


def _late_kind(record: Decision) -> bool:
    """A person's decision, or a strong answer made for measurement (shadow)."""
    return record.tier == HUMAN or (record.tier == "strong" and record.shadow)
